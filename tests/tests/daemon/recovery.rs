//! Recovery: kill -9 and restart, a killed keeper refilled, nothing left after `rm`.

use std::path::Path;
use std::time::Duration;

use sdnet_tests::{Daemon, wait_for};

#[test]
fn kill9_restart_recovers_everything_and_rm_leaves_nothing() {
    let mut d = Daemon::start("dkill");
    d.ok(&["network", "create", "--subnet", "10.80.0.0/24", "n"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "a",
        "--network",
        "n",
        "--network-alias",
        "alias-a",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "b",
        "--network",
        "n",
        "--",
        "sleep",
        "300",
    ]);
    let a_ip = d.ip("a", "n");
    let b_pid = d.inspect("b")["pid"].as_u64().unwrap();
    let links_before = {
        let mut l = d.our_links();
        l.sort();
        l
    };
    let tables_before = d.nft_tables();

    d.kill9_and_restart();
    // Same sandboxes, same addresses, DNS answering again, the process adopted.
    assert_eq!(d.ip("a", "n"), a_ip);
    assert_eq!(d.dig("b", &["alias-a"]).data("A"), [a_ip.clone()]);
    assert_eq!(d.inspect("b")["pid"].as_u64(), Some(b_pid));
    let mut links_after = d.our_links();
    links_after.sort();
    assert_eq!(links_after, links_before, "nothing duplicated or lost");
    assert_eq!(d.nft_tables(), tables_before);
    // Objects of ours the store does not know are removed at start.
    d.ns.run_ok("ip", &["link", "add", "sd-stale0000001", "type", "bridge"]);
    d.kill9_and_restart();
    assert!(!d.our_links().contains(&"sd-stale0000001".to_string()));
    assert_eq!(d.dig("a", &["b"]).data("A"), [d.ip("b", "n")]);

    // Remove everything: only the default bridge of the daemon remains.
    d.ok(&["rm", "-f", "a", "b"]);
    d.ok(&["network", "rm", "n"]);
    assert_eq!(d.our_links().len(), 1, "{:?}", d.our_links());
    assert!(d.netns_mounts().is_empty(), "{:?}", d.netns_mounts());
    let etc = std::fs::read_dir(d.dir.path().join("etc-netns"))
        .unwrap()
        .count();
    assert_eq!(etc, 0);
    // SIGTERM keeps things; --cleanup removes every kernel object of ours.
    drop(d);
}

/// The keeper, killed while the daemon runs, is started again and given back every sandbox's
/// namespace and sockets, so a daemon restart after that still finds the same namespaces.
#[test]
fn a_killed_keeper_is_restarted_and_refilled() {
    let mut d = Daemon::start_with("dkeep", &["--resync-interval", "1s"]);
    d.ok(&["network", "create", "--subnet", "10.83.0.0/24", "n"]);
    d.ok(&["run", "-d", "--name", "a", "--network", "n"]);
    d.ok(&["run", "-d", "--name", "b", "--network", "n"]);
    let ns_of = |d: &Daemon, s: &str| d.exec_ok(s, &["readlink", "/proc/self/ns/net"]);
    let before = (ns_of(&d, "a"), ns_of(&d, "b"));
    let pid_file = d.dir.path().join("run").join("keeper.pid");
    let keeper_pid = || -> Option<u32> {
        std::fs::read_to_string(&pid_file)
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let old = keeper_pid().expect("the keeper's pid file");
    // SAFETY: the keeper is a process of the daemon this test started.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    // The next resync notices, starts a new keeper and hands it everything again.
    let new = wait_for(Duration::from_secs(15), || {
        keeper_pid().filter(|p| *p != old && Path::new(&format!("/proc/{p}")).exists())
    });
    assert!(new.is_some(), "no new keeper:\n{}", d.log());
    let refilled = wait_for(Duration::from_secs(15), || {
        d.log()
            .contains("handed the keeper what it had lost")
            .then_some(())
    });
    assert!(refilled.is_some(), "{}", d.log());
    d.kill9_and_restart();
    assert_eq!((ns_of(&d, "a"), ns_of(&d, "b")), before);
    assert_eq!(d.dig("a", &["b"]).data("A"), [d.ip("b", "n")]);
    d.ok(&["rm", "-f", "a", "b"]);
}
