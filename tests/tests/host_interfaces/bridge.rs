//! `-d bridge -o com.docker.network.bridge.name=BR`: an existing bridge is the host's, used
//! as it is and never removed; a missing one is created and owned.

use sdnet_tests::{Daemon, parse_links};

use super::{link_names, pings, v4_addrs};

/// Links of the daemon's namespace enslaved to `bridge`.
fn ports_of(d: &Daemon, bridge: &str) -> usize {
    parse_links(&d.ns.run_ok("ip", &["-o", "link", "show"]))
        .iter()
        .filter(|l| l.master.as_deref() == Some(bridge))
        .count()
}

fn details(d: &Daemon, ifname: &str) -> String {
    d.ns.run_ok("ip", &["-d", "link", "show", ifname])
}

#[test]
fn an_existing_bridge_is_used_as_it_is_and_outlives_its_networks_and_cleanup() {
    let mut d = Daemon::start("hbr");
    d.ns.run_ok("ip", &["link", "add", "hostbr0", "type", "bridge"]);
    d.ns.run_ok("ip", &["addr", "add", "10.71.0.1/24", "dev", "hostbr0"]);
    d.ns.run_ok("ip", &["addr", "add", "10.71.0.254/24", "dev", "hostbr0"]);
    d.ns.run_ok("ip", &["link", "set", "hostbr0", "up"]);
    let addrs = v4_addrs(&d.ns, "hostbr0");

    d.ok(&[
        "network",
        "create",
        "-o",
        "com.docker.network.bridge.name=hostbr0",
        "--subnet",
        "10.71.0.0/24",
        "--gateway",
        "10.71.0.1",
        "hb",
    ]);
    let inspect = d.ok(&["network", "inspect", "hb"]);
    assert!(inspect.contains("\"bridge\": \"hostbr0\""), "{inspect}");
    d.ok(&["run", "-d", "--name", "s1", "--network", "hb"]);
    d.ok(&["run", "-d", "--name", "s2", "--network", "hb"]);
    let ip2 = d.ip("s2", "hb");
    assert_eq!(d.dig("s1", &["@127.0.0.11", "s2"]).data("A"), [ip2.clone()]);
    assert!(pings(d.exec("s1", &["ping", "-c1", "-W2", &ip2])));
    // The host's own addresses on the bridge serve: the gateway, and the other one.
    assert!(pings(d.exec("s1", &["ping", "-c1", "-W2", "10.71.0.254"])));
    assert_eq!(ports_of(&d, "hostbr0"), 2);
    assert_eq!(v4_addrs(&d.ns, "hostbr0"), addrs);
    assert!(!details(&d, "hostbr0").contains("alias"), "not marked ours");

    d.kill9_and_restart();
    assert_eq!(ports_of(&d, "hostbr0"), 2);
    assert!(pings(d.exec("s1", &["ping", "-c1", "-W2", &ip2])));
    assert_eq!(v4_addrs(&d.ns, "hostbr0"), addrs);
    // No bridge of ours was made for it: only the default network's.
    let ours: Vec<String> = link_names(&d.ns)
        .into_iter()
        .filter(|l| l.starts_with("sd-"))
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");

    // network rm leaves the bridge, with its addresses and state.
    d.ok(&["rm", "-f", "s1", "s2"]);
    d.ok(&["network", "rm", "hb"]);
    assert_eq!(ports_of(&d, "hostbr0"), 0);
    assert_eq!(v4_addrs(&d.ns, "hostbr0"), addrs);
    assert!(details(&d, "hostbr0").contains(",UP"), "still up");

    // So does daemon --cleanup, with a network still on it.
    d.ok(&[
        "network",
        "create",
        "-o",
        "com.docker.network.bridge.name=hostbr0",
        "--subnet",
        "10.71.0.0/24",
        "--gateway",
        "10.71.0.1",
        "hb2",
    ]);
    d.ok(&["run", "-d", "--name", "s3", "--network", "hb2"]);
    d.stop_and_cleanup();
    assert!(link_names(&d.ns).contains(&"hostbr0".to_string()));
    assert_eq!(v4_addrs(&d.ns, "hostbr0"), addrs);
    assert_eq!(ports_of(&d, "hostbr0"), 0);
}

#[test]
fn a_named_bridge_that_does_not_exist_is_created_and_owned() {
    let mut d = Daemon::start("obr");
    let before = link_names(&d.ns);
    d.ok(&[
        "network",
        "create",
        "-o",
        "com.docker.network.bridge.name=ownbr0",
        "--subnet",
        "10.72.0.0/24",
        "own",
    ]);
    assert_eq!(v4_addrs(&d.ns, "ownbr0"), ["10.72.0.1/24"]);
    assert!(
        details(&d, "ownbr0").contains("alias sdnet:"),
        "marked ours"
    );
    d.ok(&["run", "-d", "--name", "o1", "--network", "own"]);
    assert!(pings(d.exec("o1", &["ping", "-c1", "-W2", "10.72.0.1"])));
    assert_eq!(ports_of(&d, "ownbr0"), 1);

    // A restart finds it ours (no second bridge, no temporary name left).
    d.kill9_and_restart();
    let mut want = before.clone();
    want.push("ownbr0".into());
    want.sort();
    let now: Vec<String> = link_names(&d.ns)
        .into_iter()
        .filter(|l| !l.starts_with("sdv"))
        .collect();
    assert_eq!(now, want);
    assert!(pings(d.exec("o1", &["ping", "-c1", "-W2", "10.72.0.1"])));

    d.ok(&["rm", "-f", "o1"]);
    d.ok(&["network", "rm", "own"]);
    assert_eq!(link_names(&d.ns), before);

    // --cleanup removes a bridge of ours whatever its name.
    d.ok(&[
        "network",
        "create",
        "-o",
        "com.docker.network.bridge.name=ownbr1",
        "--subnet",
        "10.72.1.0/24",
        "own1",
    ]);
    assert!(link_names(&d.ns).contains(&"ownbr1".to_string()));
    d.stop_and_cleanup();
    assert!(!link_names(&d.ns).contains(&"ownbr1".to_string()));
}

#[test]
fn bad_bridge_names_are_refused_and_change_nothing() {
    let d = Daemon::start("bbr");
    d.ns.run_ok(
        "ip",
        &["link", "add", "ve0", "type", "veth", "peer", "name", "ve1"],
    );
    d.ns.run_ok("ip", &["link", "add", "taken0", "type", "bridge"]);
    d.ok(&[
        "network",
        "create",
        "-o",
        "com.docker.network.bridge.name=taken0",
        "--subnet",
        "10.73.0.0/24",
        "first",
    ]);
    let nets_before = d.ok(&["network", "ls", "-q"]);
    let links_before = link_names(&d.ns);
    let create = |opt: &str| {
        let e = d.fails(&[
            "network",
            "create",
            "-o",
            opt,
            "--subnet",
            "10.73.1.0/24",
            "bad",
        ]);
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
        e
    };
    let e = create("com.docker.network.bridge.name=ve0");
    assert!(
        e.contains("interface ve0 exists and is a veth, not a bridge"),
        "{e}"
    );
    let e = create("com.docker.network.bridge.name=sd-mine");
    assert!(e.contains("are sdnet's own"), "{e}");
    let e = create("com.docker.network.bridge.name=taken0");
    assert!(
        e.contains("bridge taken0 is already used by network first"),
        "{e}"
    );
    let e = create("com.docker.network.bridge.name=a/b");
    assert!(e.contains("invalid bridge name"), "{e}");
    let e = create("com.docker.network.bridge.enable_ip_masquerade=false");
    assert!(e.contains("unknown option"), "{e}");
    assert_eq!(d.ok(&["network", "ls", "-q"]), nets_before);
    assert_eq!(link_names(&d.ns), links_before);
    d.ok(&["network", "rm", "first"]);
    assert!(link_names(&d.ns).contains(&"taken0".to_string()));
}
