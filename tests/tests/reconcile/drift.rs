//! Drift in the kernel (a deleted veth, bridge or nft table) repaired by the periodic resync.

use std::path::Path;
use std::time::Duration;

use sdnet_tests::{Daemon, ask_tcp, wait_for};
use serde_json::Value;

use crate::common::{host_end, nft_tables_in, out_text, s};

#[test]
fn resync_repairs_deleted_veth_bridge_and_nft_tables() {
    let d = Daemon::start_with("rdrift", &["--resync-interval", "1s"]);
    d.ok(&["network", "create", "--subnet", "10.61.0.0/24", "n"]);
    d.ok(&["run", "-d", "--name", "s1", "--network", "n"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "s2",
        "--network",
        "n",
        "-p",
        "18081:80",
        "--",
        "socat",
        "TCP-LISTEN:80,fork,reuseaddr",
        "SYSTEM:echo s2-here",
    ]);
    let s1_ip = d.ip("s1", "n");
    let s2_ip = d.ip("s2", "n");
    let net: Value = serde_json::from_str(&d.ok(&["network", "inspect", "n"])).unwrap();
    let bridge = s(&net[0]["bridge"]);
    assert!(bridge.starts_with("sd-"), "{net}");
    let s1_ns = d.netns_path("s1");
    let mut links_before = d.our_links();
    links_before.sort();

    // Everything works before anything is broken.
    let works = |what: &str| {
        let q = d.dig("s1", &["s2"]);
        assert_eq!(q.data("A"), [s2_ip.clone()], "after {what}: {}", q.raw);
        let q = d.dig("s2", &["s1"]);
        assert_eq!(q.data("A"), [s1_ip.clone()], "after {what}: {}", q.raw);
        d.exec_ok("s1", &["ping", "-c1", "-W2", &s2_ip]);
        d.exec_ok("s2", &["ping", "-c1", "-W2", &s1_ip]);
        let up = wait_for(Duration::from_secs(10), || {
            ask_tcp(&d.ns, "127.0.0.1:18081")
                .starts_with("s2-here")
                .then_some(())
        });
        assert!(
            up.is_some(),
            "after {what}: the published port does not answer"
        );
    };
    works("start");
    let restored = |what: &str, f: &dyn Fn() -> bool| {
        let ok = wait_for(Duration::from_secs(10), || f().then_some(()));
        assert!(
            ok.is_some(),
            "{what} was not restored within 10 s\n--- daemon log ---\n{}",
            d.log()
        );
    };
    let attached = |sb_ns: &Path| {
        let Some(inside) = d.links_in(sb_ns) else {
            return false;
        };
        let host = d.links();
        host_end(&host, &inside, "eth0").is_some_and(|h| {
            h.name.starts_with("sdv") && h.up && h.master.as_deref() == Some(bridge.as_str())
        }) && inside.iter().any(|l| l.name == "eth0" && l.up)
    };

    // (a) A veth host end of a sandbox.
    let host = d.links();
    let inside = d.links_in(&s1_ns).expect("links in s1");
    let veth = host_end(&host, &inside, "eth0")
        .expect("s1's host end")
        .name
        .clone();
    // (ip's success says it is gone; a resync may bring it back before a check here.)
    d.ns.run_ok("ip", &["link", "del", &veth]);
    restored("s1's veth", &|| attached(&s1_ns));
    assert!(
        d.our_links().contains(&veth),
        "a new name for the same endpoint"
    );
    works("deleting s1's veth");

    // (b) The network's bridge (the ports of every sandbox fall off it).
    d.ns.run_ok("ip", &["link", "del", &bridge]);
    let s2_ns = d.netns_path("s2");
    restored("the bridge", &|| attached(&s1_ns) && attached(&s2_ns));
    works("deleting the bridge");

    // (c) The firewall table in the daemon's namespace (published ports go with it).
    // (nft's success says it existed and is gone: the next resync may restore it before
    // any check here could see it missing.)
    d.ns.run_ok("nft", &["delete", "table", "inet", "sdnet"]);
    restored("table inet sdnet", &|| {
        d.nft_tables().contains("table inet sdnet")
    });
    works("deleting table inet sdnet");

    // (d) The DNS redirect table inside a sandbox (127.0.0.11:53 goes with it).
    assert!(nft_tables_in(&s1_ns).contains("table ip sdnet-dns"));
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", s1_ns.display()))
        .args(["nft", "delete", "table", "ip", "sdnet-dns"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", out_text(&out));
    restored("table ip sdnet-dns in s1", &|| {
        nft_tables_in(&s1_ns).contains("table ip sdnet-dns")
    });
    works("deleting s1's DNS redirect table");

    // Nothing duplicated or renamed by the repairs.
    let mut links_after = d.our_links();
    links_after.sort();
    assert_eq!(links_after, links_before);
}

/// The veths of removed sandboxes are the background cleaner's: a full pass while it works
/// through a backlog of removals neither deletes them itself (that made the pass — and every
/// create queued behind it — wait for the whole backlog: 25 s after 1,000 removals) nor calls
/// them unknown.
#[test]
fn a_full_pass_leaves_removed_sandboxes_links_to_the_cleaner() {
    let d = Daemon::start_with("rclean", &["--resync-interval", "100ms"]);
    d.ok(&["network", "create", "--subnet", "10.84.0.0/24", "n"]);
    let names: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
    for n in &names {
        d.ok(&["run", "-d", "--name", n, "--network", "n"]);
    }
    let mut rm = vec!["rm", "-f"];
    rm.extend(names.iter().map(String::as_str));
    d.ok(&rm);
    // A create meanwhile works and answers.
    d.ok(&["run", "-d", "--name", "after", "--network", "n"]);
    let ip = d.ip("after", "n");
    assert_eq!(d.dig("after", &["after"]).data("A"), [ip]);
    // Every removed sandbox's veth goes, the new one's stays.
    let left = wait_for(Duration::from_secs(30), || {
        (d.our_links()
            .iter()
            .filter(|l| l.starts_with("sdv"))
            .count()
            == 1)
            .then_some(())
    });
    assert!(left.is_some(), "links left: {:?}", d.our_links());
    let log = d.log();
    assert!(
        !log.contains("removing an unknown link of ours"),
        "a full pass took removed sandboxes' links for unknown ones:\n{log}"
    );
}
