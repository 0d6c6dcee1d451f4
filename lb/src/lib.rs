//! Service VIP load balancing and published service ports as nftables rulesets — this kernel
//! has no IPVS. Pure text generation: the caller applies the text (one atomic transaction)
//! with netstack, in each client sandbox's own namespace, so backends see the client's
//! address (no SNAT).
//!
//! Shape of the per-sandbox table:
//! ```text
//! table ip sdnet-lb {
//!   map vips { type ipv4_addr : verdict }     VIP with backends -> goto its chain
//!   set dead { type ipv4_addr }               VIPs without a healthy backend
//!   chain nat-out    (nat output)    ip daddr vmap @vips
//!   chain filter-out (filter output) ip daddr @dead → TCP reset / ICMP unreachable
//!   chain vip-10-1-0-100 { dnat ip to numgen random mod N map { 0 : b0, 1 : b1, … } }
//! }
//! ```
//! One service's backend change touches only its own chain (flush + one rule) and, when it
//! gains its first or loses its last backend, one element of `vips`/`dead`: the cost does not
//! depend on how many other services the table holds.

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

fn chain(vip: Ipv4Addr) -> String {
    format!("vip-{}", vip.to_string().replace('.', "-"))
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

fn vip_rule(v: &VipLb) -> String {
    let b: Vec<IpAddr> = v.backends.iter().map(|a| IpAddr::V4(*a)).collect();
    dnat(&b, None)
}

/// The whole table for a sandbox (idempotent: create, delete, create in one transaction).
pub fn table(vips: &[VipLb]) -> String {
    let t = TABLE;
    let mut s = format!("table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{\n");
    let live: Vec<&VipLb> = vips.iter().filter(|v| !v.backends.is_empty()).collect();
    let dead: Vec<&VipLb> = vips.iter().filter(|v| v.backends.is_empty()).collect();
    s.push_str("  map vips {\n    type ipv4_addr : verdict\n");
    if !live.is_empty() {
        let e: Vec<String> = live
            .iter()
            .map(|v| format!("{} : goto {}", v.vip, chain(v.vip)))
            .collect();
        let _ = writeln!(s, "    elements = {{ {} }}", e.join(", "));
    }
    s.push_str("  }\n  set dead {\n    type ipv4_addr\n");
    if !dead.is_empty() {
        let e: Vec<String> = dead.iter().map(|v| v.vip.to_string()).collect();
        let _ = writeln!(s, "    elements = {{ {} }}", e.join(", "));
    }
    s.push_str("  }\n");
    s.push_str("  chain nat-out {\n    type nat hook output priority -100; policy accept;\n    ip daddr vmap @vips\n  }\n");
    s.push_str(
        "  chain filter-out {\n    type filter hook output priority 0; policy accept;\n    ip daddr @dead meta l4proto tcp reject with tcp reset\n    ip daddr @dead reject\n  }\n",
    );
    for v in vips {
        let _ = writeln!(s, "  chain {} {{", chain(v.vip));
        if !v.backends.is_empty() {
            let _ = writeln!(s, "    {}", vip_rule(v));
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

pub fn delete_table() -> String {
    format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n")
}

/// The commands that turn one VIP's rules from `old` into `new` (None: absent), or None if
/// nothing changes. Valid only against a table in the `old` state (on failure, reload it
/// whole with [`table`]).
pub fn change(old: Option<&VipLb>, new: Option<&VipLb>) -> Option<String> {
    if old == new {
        return None;
    }
    let t = TABLE;
    let mut s = String::new();
    let vip = new.or(old).map(|v| v.vip)?;
    let c = chain(vip);
    let was_live = old.is_some_and(|o| !o.backends.is_empty());
    let was_dead = old.is_some_and(|o| o.backends.is_empty());
    match new {
        None => {
            if was_live {
                let _ = writeln!(s, "delete element ip {t} vips {{ {vip} }}");
            }
            if was_dead {
                let _ = writeln!(s, "delete element ip {t} dead {{ {vip} }}");
            }
            let _ = writeln!(s, "delete chain ip {t} {c}");
        }
        Some(n) => {
            if old.is_none() {
                let _ = writeln!(s, "add chain ip {t} {c}");
            } else {
                let _ = writeln!(s, "flush chain ip {t} {c}");
            }
            if n.backends.is_empty() {
                if was_live {
                    let _ = writeln!(s, "delete element ip {t} vips {{ {vip} }}");
                }
                if !was_dead {
                    let _ = writeln!(s, "add element ip {t} dead {{ {vip} }}");
                }
            } else {
                let _ = writeln!(s, "add rule ip {t} {c} {}", vip_rule(n));
                if was_dead {
                    let _ = writeln!(s, "delete element ip {t} dead {{ {vip} }}");
                }
                if !was_live {
                    let _ = writeln!(s, "add element ip {t} vips {{ {vip} : goto {c} }}");
                }
            }
        }
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
            v("10.1.0.101", &[]),
        ]);
        assert!(t.contains("elements = { 10.1.0.100 : goto vip-10-1-0-100 }"));
        assert!(t.contains("dnat ip to numgen random mod 2 map { 0 : 10.1.0.10, 1 : 10.1.0.11 }"));
        assert!(t.contains("elements = { 10.1.0.101 }"));
        assert!(t.contains("reject with tcp reset"));
    }

    #[test]
    fn changes() {
        let a = v("10.1.0.100", &["10.1.0.10"]);
        let b = v("10.1.0.100", &["10.1.0.10", "10.1.0.11"]);
        let empty = v("10.1.0.100", &[]);
        assert_eq!(change(Some(&a), Some(&a)), None);
        let c = change(Some(&a), Some(&b)).unwrap();
        assert!(c.starts_with("flush chain ip sdnet-lb vip-10-1-0-100\nadd rule"));
        assert!(!c.contains("element"), "the vmap is untouched: {c}");
        let c = change(Some(&b), Some(&empty)).unwrap();
        assert!(
            c.contains("delete element ip sdnet-lb vips")
                && c.contains("add element ip sdnet-lb dead")
        );
        let c = change(Some(&empty), Some(&a)).unwrap();
        assert!(
            c.contains("delete element ip sdnet-lb dead")
                && c.contains("add element ip sdnet-lb vips")
        );
        let c = change(None, Some(&a)).unwrap();
        assert!(c.starts_with("add chain"));
        let c = change(Some(&a), None).unwrap();
        assert!(c.contains("delete chain"));
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
            format!("{base}{}", change(Some(&a), Some(&b)).unwrap()),
            format!("{base}{}", change(Some(&a), Some(&e)).unwrap()),
            format!("{base}{}", change(Some(&a), None).unwrap()),
            format!(
                "{}{}",
                table(&[e.clone()]),
                change(Some(&e), Some(&a)).unwrap()
            ),
            format!("{}{}", table(&[]), change(None, Some(&b)).unwrap()),
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
