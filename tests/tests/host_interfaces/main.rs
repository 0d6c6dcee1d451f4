//! Networks on the host's own interfaces: macvlan on a parent the daemon did not make, and a
//! bridge network on a bridge that already exists (netavark's "unmanaged" bridges). The
//! "physical" L2 is a veth pair: one end in the daemon's namespace, the other in a
//! neighbour namespace standing for another machine on the same segment.

// `[ip.clone()]` reads better in an assertion than `slice::from_ref(&ip)`.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod bridge;
mod macvlan;

use sdnet_tests::{Daemon, Ns};

/// A daemon whose namespace has `up0`, an up veth whose other end `nb0` lives in the
/// returned neighbour namespace with `neighbour_addr` (CIDR) on it.
pub fn daemon_on_l2(tag: &str, neighbour_addr: &str) -> (Daemon, Ns) {
    daemon_on_l2_with(tag, neighbour_addr, &[])
}

/// [`daemon_on_l2`] with more daemon flags.
pub fn daemon_on_l2_with(tag: &str, neighbour_addr: &str, extra: &[&str]) -> (Daemon, Ns) {
    let d = Daemon::start_with(tag, extra);
    let nb = Ns::new(&format!("{tag}nb"));
    d.ns.run_ok(
        "ip",
        &[
            "link", "add", "up0", "type", "veth", "peer", "name", "nb0", "netns", &nb.name,
        ],
    );
    d.ns.run_ok("ip", &["link", "set", "up0", "up"]);
    nb.run_ok("ip", &["addr", "add", neighbour_addr, "dev", "nb0"]);
    nb.run_ok("ip", &["link", "set", "nb0", "up"]);
    (d, nb)
}

/// Names of the links in a namespace, sorted.
pub fn link_names(ns: &Ns) -> Vec<String> {
    let mut v: Vec<String> = sdnet_tests::parse_links(&ns.run_ok("ip", &["-o", "link", "show"]))
        .into_iter()
        .map(|l| l.name)
        .collect();
    v.sort();
    v
}

/// The IPv4 addresses of a link (`ip -4 -o addr show dev IF`), sorted.
pub fn v4_addrs(ns: &Ns, ifname: &str) -> Vec<String> {
    let mut v: Vec<String> = ns
        .run_ok("ip", &["-4", "-o", "addr", "show", "dev", ifname])
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.iter()
                .position(|x| *x == "inet")
                .and_then(|i| w.get(i + 1))
                .map(|s| s.to_string())
        })
        .collect();
    v.sort();
    v
}

/// One ping, 2 s at most: did it come back?
pub fn pings(out: std::process::Output) -> bool {
    out.status.success()
}
