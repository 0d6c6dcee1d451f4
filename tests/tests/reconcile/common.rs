//! Helpers the tests share: JSON facts, names and links seen from inside sandboxes, a seeded RNG.

use std::collections::BTreeMap;
use std::path::Path;

use sdnet_tests::{Daemon, Link};
use serde_json::Value;

/// `readlink /proc/self/ns/net` through `sdctl exec`.
pub fn exec_net(d: &Daemon, sb: &str) -> String {
    d.exec_ok(sb, &["readlink", "/proc/self/ns/net"])
        .trim()
        .to_string()
}

pub fn out_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A sandbox's IPv4 address on a network, from a `ps`/`inspect` entry.
pub fn ip_on(sb: &Value, network: &str) -> Option<String> {
    sb["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["network"] == network)
        .and_then(|e| e["ipv4"].as_str())
        .map(str::to_string)
}

pub fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// Names from inside `asker`, in one `sdctl exec`: name → the A records dig answered.
pub fn resolve_all(
    d: &Daemon,
    asker: &str,
    names: &[String],
) -> Result<BTreeMap<String, Vec<String>>, String> {
    let script = format!(
        "for n in {}; do echo \"$n $(dig +short +tries=2 +time=2 $n A | tr '\\n' ' ')\"; done",
        names.join(" ")
    );
    let out = d.exec(asker, &["sh", "-c", &script]);
    if !out.status.success() {
        return Err(format!("exec in {asker}: {}", out_text(&out)));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let n = w.next()?.to_string();
            // Addresses only (a timeout prints an error: no address).
            let mut ips: Vec<String> = w
                .filter(|x| x.parse::<std::net::Ipv4Addr>().is_ok())
                .map(str::to_string)
                .collect();
            ips.sort();
            Some((n, ips))
        })
        .collect())
}

/// The host end of a sandbox's `ifname` (via the peer index inside the sandbox).
pub fn host_end<'a>(host: &'a [Link], inside: &[Link], ifname: &str) -> Option<&'a Link> {
    let peer = inside.iter().find(|l| l.name == ifname)?.peer?;
    host.iter().find(|l| l.index == peer)
}

pub fn nft_tables_in(netns: &Path) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["nft", "list", "tables"])
        .output()
        .expect("nsenter nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// xorshift64: the churn's choices and delays, reproducible from a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut r = Rng((seed ^ 0x5DEE_CE66_D1CE_4E5B).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
