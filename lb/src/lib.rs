//! Service VIP load balancing and published service ports as nftables rulesets — this kernel
//! has no IPVS. Pure text generation: the caller applies the text (one atomic transaction)
//! with netstack, in each client sandbox's own namespace, so backends see the client's
//! address (no SNAT).
//!
//! Shape of the per-sandbox table:
//! ```text
//! table ip sdnet-lb {
//!   map vips { type ipv4_addr : verdict }     VIP with N backends -> goto spread-N
//!   set dead { type ipv4_addr }               VIPs without a healthy backend
//!   map backends-N { typeof ip daddr . numgen random mod N : ip daddr }
//!                                             (VIP, slot 0..N-1) -> backend
//!   chain spread-N { dnat ip to ip daddr . numgen random mod N map @backends-N }
//!   chain nat-out    (nat output)    ip daddr vmap @vips
//!   chain filter-out (filter output) ip daddr @dead → TCP reset / ICMP unreachable
//!   chain untracked  (raw output)    127.0.0.11 ↔ anything: notrack
//! }
//! ```
//! The NAT chain turns conntrack on in the sandbox's namespace. The embedded resolver's
//! traffic (127.0.0.11, port-rewritten statelessly by the `sdnet-dns` table) must stay
//! untracked: every query would otherwise add conntrack entries that fill the table under
//! load. Loopback packets keep their untracked mark on the receiving side.
//!
//! There is one `spread-N` chain and `backends-N` map per backend count N in use, not one
//! per service: the table's chains and sets do not grow with the number of services. That
//! matters because libnftables loads every chain and set of the table into its cache before
//! it adds an element or a rule; with a chain and an anonymous map per service, one change
//! cost O(services). Now one service's backend change is a few element deletions/additions
//! in `backends-N` (plus moving its `vips` element when N changes): O(its own backends).

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

pub const TABLE: &str = "sdnet-lb";

/// One VIP and its healthy backends (order is irrelevant: it is sorted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipLb {
    pub vip: Ipv4Addr,
    pub backends: Vec<Ipv4Addr>,
}

impl VipLb {
    pub fn new(vip: Ipv4Addr, mut backends: Vec<Ipv4Addr>) -> VipLb {
        backends.sort();
        backends.dedup();
        VipLb { vip, backends }
    }
}

fn spread_chain(n: usize) -> String {
    format!("spread-{n}")
}

fn backends_map(n: usize) -> String {
    format!("backends-{n}")
}

/// The map and chain that spread over N backends (`add` form: idempotent for the map; the
/// chain is flushed and its one rule written again, all inside the caller's transaction).
fn ensure_spread(s: &mut String, n: usize) {
    let t = TABLE;
    let (m, c) = (backends_map(n), spread_chain(n));
    let _ = writeln!(
        s,
        "add map ip {t} {m} {{ typeof ip daddr . numgen random mod {n} : ip daddr; }}"
    );
    let _ = writeln!(s, "add chain ip {t} {c}");
    let _ = writeln!(s, "flush chain ip {t} {c}");
    let _ = writeln!(s, "add rule ip {t} {c} {}", spread_rule(n));
}

fn spread_rule(n: usize) -> String {
    format!(
        "dnat ip to ip daddr . numgen random mod {n} map @{}",
        backends_map(n)
    )
}

/// `dnat ip to …` spreading new connections evenly over `backends` (each keeps its port, or
/// goes to `port` when given).
pub fn dnat(backends: &[IpAddr], port: Option<u16>) -> String {
    let target = |b: &IpAddr| match port {
        Some(p) => format!("{b} . {p}"),
        None => b.to_string(),
    };
    if let [one] = backends {
        return match port {
            Some(p) => format!("dnat ip to {one}:{p}"),
            None => format!("dnat ip to {one}"),
        };
    }
    let elems: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {}", target(b)))
        .collect();
    format!(
        "dnat ip to numgen random mod {} map {{ {} }}",
        backends.len(),
        elems.join(", ")
    )
}

/// The whole table for a sandbox (idempotent: create, delete, create in one transaction).
pub fn table(vips: &[VipLb]) -> String {
    let t = TABLE;
    let mut s = format!("table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{\n");
    let live: Vec<&VipLb> = vips.iter().filter(|v| !v.backends.is_empty()).collect();
    let dead: Vec<&VipLb> = vips.iter().filter(|v| v.backends.is_empty()).collect();
    let mut counts: Vec<usize> = live.iter().map(|v| v.backends.len()).collect();
    counts.sort_unstable();
    counts.dedup();
    s.push_str("  map vips {\n    type ipv4_addr : verdict\n");
    if !live.is_empty() {
        let e: Vec<String> = live
            .iter()
            .map(|v| format!("{} : goto {}", v.vip, spread_chain(v.backends.len())))
            .collect();
        let _ = writeln!(s, "    elements = {{ {} }}", e.join(", "));
    }
    s.push_str("  }\n  set dead {\n    type ipv4_addr\n");
    if !dead.is_empty() {
        let e: Vec<String> = dead.iter().map(|v| v.vip.to_string()).collect();
        let _ = writeln!(s, "    elements = {{ {} }}", e.join(", "));
    }
    s.push_str("  }\n");
    for &n in &counts {
        let _ = writeln!(
            s,
            "  map {} {{\n    typeof ip daddr . numgen random mod {n} : ip daddr",
            backends_map(n)
        );
        let e: Vec<String> = live
            .iter()
            .filter(|v| v.backends.len() == n)
            .flat_map(|v| {
                v.backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| format!("{} . {i} : {b}", v.vip))
            })
            .collect();
        let _ = writeln!(s, "    elements = {{ {} }}\n  }}", e.join(", "));
        let _ = writeln!(
            s,
            "  chain {} {{\n    {}\n  }}",
            spread_chain(n),
            spread_rule(n)
        );
    }
    s.push_str("  chain nat-out {\n    type nat hook output priority -100; policy accept;\n    ip daddr vmap @vips\n  }\n");
    s.push_str(
        "  chain filter-out {\n    type filter hook output priority 0; policy accept;\n    ip daddr @dead meta l4proto tcp reject with tcp reset\n    ip daddr @dead reject\n  }\n",
    );
    s.push_str(
        "  chain untracked {\n    type filter hook output priority raw; policy accept;\n    ip daddr 127.0.0.11 notrack\n    ip saddr 127.0.0.11 notrack\n  }\n",
    );
    s.push_str("}\n");
    s
}

pub fn delete_table() -> String {
    format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n")
}

/// The commands that turn one VIP's rules from `old` into `new` (None: absent), or None if
/// nothing changes. Valid only against a table in the `old` state (on failure, reload it
/// whole with [`table`]). `spread_loaded`: the table surely holds the chain and map for
/// `new`'s backend count (another VIP in it has that count); otherwise they are (re)created,
/// which is correct either way but costs libnftables a cache load.
pub fn change(old: Option<&VipLb>, new: Option<&VipLb>, spread_loaded: bool) -> Option<String> {
    if old == new {
        return None;
    }
    let t = TABLE;
    let vip = new.or(old).map(|v| v.vip)?;
    let none: &[Ipv4Addr] = &[];
    let old_b = old.map_or(none, |o| &o.backends[..]);
    let new_b = new.map_or(none, |n| &n.backends[..]);
    let (was_dead, is_dead) = (
        old.is_some_and(|o| o.backends.is_empty()),
        new.is_some_and(|n| n.backends.is_empty()),
    );
    let mut s = String::new();
    if old_b.len() == new_b.len() {
        // Same spread chain: only the slots whose backend changed.
        let m = backends_map(new_b.len());
        for (i, (o, n)) in old_b.iter().zip(new_b).enumerate() {
            if o != n {
                let _ = writeln!(s, "delete element ip {t} {m} {{ {vip} . {i} }}");
                let _ = writeln!(s, "add element ip {t} {m} {{ {vip} . {i} : {n} }}");
            }
        }
    } else {
        if !old_b.is_empty() {
            let m = backends_map(old_b.len());
            let keys: Vec<String> = (0..old_b.len()).map(|i| format!("{vip} . {i}")).collect();
            let _ = writeln!(s, "delete element ip {t} {m} {{ {} }}", keys.join(", "));
            let _ = writeln!(s, "delete element ip {t} vips {{ {vip} }}");
        }
        if !new_b.is_empty() {
            let n = new_b.len();
            if !spread_loaded {
                ensure_spread(&mut s, n);
            }
            let e: Vec<String> = new_b
                .iter()
                .enumerate()
                .map(|(i, b)| format!("{vip} . {i} : {b}"))
                .collect();
            let _ = writeln!(
                s,
                "add element ip {t} {} {{ {} }}",
                backends_map(n),
                e.join(", ")
            );
            let _ = writeln!(
                s,
                "add element ip {t} vips {{ {vip} : goto {} }}",
                spread_chain(n)
            );
        }
    }
    if was_dead && !is_dead {
        let _ = writeln!(s, "delete element ip {t} dead {{ {vip} }}");
    }
    if is_dead && !was_dead {
        let _ = writeln!(s, "add element ip {t} dead {{ {vip} }}");
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn v(vip: &str, b: &[&str]) -> VipLb {
        VipLb::new(ip(vip), b.iter().map(|x| ip(x)).collect())
    }

    #[test]
    fn table_shape() {
        let t = table(&[
            v("10.1.0.100", &["10.1.0.11", "10.1.0.10"]),
            v("10.1.0.102", &["10.1.0.12", "10.1.0.13"]),
            v("10.1.0.101", &[]),
        ]);
        assert!(
            t.contains("elements = { 10.1.0.100 : goto spread-2, 10.1.0.102 : goto spread-2 }")
        );
        assert!(t.contains("typeof ip daddr . numgen random mod 2 : ip daddr"));
        assert!(t.contains(
            "elements = { 10.1.0.100 . 0 : 10.1.0.10, 10.1.0.100 . 1 : 10.1.0.11, \
             10.1.0.102 . 0 : 10.1.0.12, 10.1.0.102 . 1 : 10.1.0.13 }"
        ));
        assert_eq!(
            t.matches("chain spread-").count(),
            1,
            "one chain per count:\n{t}"
        );
        assert!(t.contains("dnat ip to ip daddr . numgen random mod 2 map @backends-2"));
        assert!(t.contains("elements = { 10.1.0.101 }"));
        assert!(t.contains("reject with tcp reset"));
        assert!(
            t.contains("ip daddr 127.0.0.11 notrack") && t.contains("ip saddr 127.0.0.11 notrack")
        );
    }

    #[test]
    fn changes() {
        let a = v("10.1.0.100", &["10.1.0.10"]);
        let b = v("10.1.0.100", &["10.1.0.10", "10.1.0.11"]);
        let b2 = v("10.1.0.100", &["10.1.0.10", "10.1.0.12"]);
        let empty = v("10.1.0.100", &[]);
        assert_eq!(change(Some(&a), Some(&a), false), None);
        // Same count: one slot rewritten, nothing else.
        let c = change(Some(&b), Some(&b2), false).unwrap();
        assert_eq!(
            c,
            "delete element ip sdnet-lb backends-2 { 10.1.0.100 . 1 }\n\
             add element ip sdnet-lb backends-2 { 10.1.0.100 . 1 : 10.1.0.12 }\n"
        );
        // Count changes: moves between spread chains.
        let c = change(Some(&a), Some(&b), false).unwrap();
        assert!(c.contains("delete element ip sdnet-lb backends-1 { 10.1.0.100 . 0 }"));
        assert!(c.contains("add element ip sdnet-lb vips { 10.1.0.100 : goto spread-2 }"));
        assert!(!c.contains("dead"), "{c}");
        let c = change(Some(&b), Some(&empty), false).unwrap();
        assert!(
            c.contains("delete element ip sdnet-lb vips")
                && c.contains("add element ip sdnet-lb dead")
        );
        let c = change(Some(&empty), Some(&a), false).unwrap();
        assert!(
            c.contains("delete element ip sdnet-lb dead")
                && c.contains("add element ip sdnet-lb vips")
        );
        let c = change(None, Some(&a), false).unwrap();
        assert!(c.contains("add chain ip sdnet-lb spread-1"));
        let c = change(None, Some(&a), true).unwrap();
        assert!(!c.contains("chain"), "{c}");
        let c = change(Some(&a), None, false).unwrap();
        assert!(c.contains("delete element ip sdnet-lb vips") && !c.contains("add "));
        let c = change(Some(&empty), None, false).unwrap();
        assert_eq!(c, "delete element ip sdnet-lb dead { 10.1.0.100 }\n");
    }

    #[test]
    fn single_backend_and_ports() {
        let one = [IpAddr::V4(ip("10.0.0.2"))];
        assert_eq!(dnat(&one, None), "dnat ip to 10.0.0.2");
        assert_eq!(dnat(&one, Some(80)), "dnat ip to 10.0.0.2:80");
        let two = [IpAddr::V4(ip("10.0.0.2")), IpAddr::V4(ip("10.0.0.3"))];
        assert_eq!(
            dnat(&two, Some(80)),
            "dnat ip to numgen random mod 2 map { 0 : 10.0.0.2 . 80, 1 : 10.0.0.3 . 80 }"
        );
    }

    /// nft itself accepts the full table and every kind of change (check mode, nothing applied).
    #[test]
    fn nft_accepts_it() {
        if std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("nft not installed: skipped");
            return;
        }
        let a = v("10.1.0.100", &["10.1.0.10"]);
        let b = v("10.1.0.100", &["10.1.0.10", "10.1.0.11", "10.1.0.12"]);
        let e = v("10.1.0.100", &[]);
        let base = table(&[a.clone(), v("10.1.0.101", &[])]);
        let texts = [
            base.clone(),
            format!("{base}{}", change(Some(&a), Some(&b), false).unwrap()),
            format!("{base}{}", change(Some(&a), Some(&e), false).unwrap()),
            format!("{base}{}", change(Some(&a), None, false).unwrap()),
            format!(
                "{}{}",
                table(std::slice::from_ref(&e)),
                change(Some(&e), Some(&a), false).unwrap()
            ),
            format!("{}{}", table(&[]), change(None, Some(&b), false).unwrap()),
            // A count already in use: the idempotent map/chain creation must not clash.
            format!(
                "{}{}",
                table(&[v("10.1.0.101", &["10.1.0.20", "10.1.0.21", "10.1.0.22"])]),
                change(None, Some(&b), false).unwrap()
            ),
        ];
        for text in texts {
            use std::io::Write as _;
            let mut child = std::process::Command::new("nft")
                .args(["-c", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "nft -c rejected:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
