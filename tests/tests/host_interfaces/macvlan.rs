//! `-d macvlan -o parent=IF`: endpoints are macvlan links on a parent of the daemon's
//! namespace, moved into the sandboxes.

use sdnet_tests::{Daemon, Ns};

use super::{daemon_on_l2, daemon_on_l2_with, link_names, pings, v4_addrs};

/// The index of `eth0` inside a sandbox (a link made again gets a new one).
fn eth0_index(d: &Daemon, sandbox: &str) -> String {
    let l = d.exec_ok(sandbox, &["ip", "-o", "link", "show", "eth0"]);
    l.split(':').next().unwrap_or_default().trim().to_string()
}

#[test]
fn macvlan_sandboxes_reach_each_other_and_the_segment_by_name_but_not_the_host() {
    let (mut d, nb) = daemon_on_l2("mvl", "192.168.60.50/24");
    // The host has an address on the parent too: it reaches the neighbour over it, never
    // its own macvlan sandboxes.
    d.ns.run_ok("ip", &["addr", "add", "192.168.60.40/24", "dev", "up0"]);
    let links_before = link_names(&d.ns);
    d.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "-o",
        "parent=up0",
        "--subnet",
        "192.168.60.0/24",
        "--gateway",
        "192.168.60.1",
        "mv",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "web1",
        "--network",
        "mv",
        "--ip",
        "192.168.60.200",
        "--",
        "sleep",
        "infinity",
    ]);
    d.ok(&["run", "-d", "--name", "web2", "--network", "mv"]);
    let (ip1, ip2) = (d.ip("web1", "mv"), d.ip("web2", "mv"));
    assert_eq!(ip1, "192.168.60.200");

    // The embedded DNS, as on a bridge network.
    assert_eq!(
        d.dig("web1", &["@127.0.0.11", "web2"]).data("A"),
        [ip2.clone()]
    );
    assert_eq!(
        d.dig("web2", &["@127.0.0.11", "web1.mv"]).data("A"),
        [ip1.clone()]
    );
    let link = d.exec_ok("web1", &["ip", "-d", "link", "show", "eth0"]);
    assert!(link.contains("macvlan mode bridge"), "{link}");
    let routes = d.exec_ok("web1", &["ip", "route"]);
    assert!(
        routes.contains("default via 192.168.60.1 dev eth0"),
        "{routes}"
    );
    let inspect = d.ok(&["network", "inspect", "mv"]);
    assert!(inspect.contains("\"parent\": \"up0\""), "{inspect}");

    // Traffic: sibling to sibling, sandbox to neighbour and back, not host to sandbox.
    assert!(pings(d.exec("web1", &["ping", "-c1", "-W2", &ip2])));
    assert!(pings(
        d.exec("web1", &["ping", "-c1", "-W2", "192.168.60.50"])
    ));
    assert!(pings(nb.run("ping", &["-c1", "-W2", &ip1])));
    assert!(
        pings(nb.run("ping", &["-c1", "-W2", "192.168.60.40"])),
        "the parent itself carries the host's traffic"
    );
    assert!(
        !pings(d.ns.run("ping", &["-c1", "-W1", &ip1])),
        "the host must not reach its own macvlan sandbox over the parent"
    );
    // Nothing of an endpoint lives in the daemon's namespace.
    assert_eq!(link_names(&d.ns), links_before);

    // kill -9 and a restart: the same links (not made again), addresses, names, traffic; a
    // macvlan no endpoint wants (as a disconnect the daemon died in the middle of leaves)
    // is removed.
    let idx = eth0_index(&d, "web1");
    let pid = d.inspect("web1")["pid"]
        .as_u64()
        .expect("web1's pid")
        .to_string();
    d.kill9();
    d.ns.run_ok(
        "ip",
        &[
            "link", "add", "link", "up0", "name", "eth7", "netns", &pid, "type", "macvlan",
        ],
    );
    d.restart();
    let l = d.exec_ok("web1", &["ip", "-o", "link"]);
    assert!(!l.contains("eth7"), "{l}");
    assert_eq!(d.ip("web1", "mv"), ip1);
    assert_eq!(eth0_index(&d, "web1"), idx);
    assert_eq!(
        d.dig("web1", &["@127.0.0.11", "web2"]).data("A"),
        [ip2.clone()]
    );
    assert!(pings(nb.run("ping", &["-c1", "-W2", &ip2])));

    // A disconnect takes the macvlan out of the sandbox, a connect brings one back.
    d.ok(&["network", "disconnect", "mv", "web2"]);
    let l = d.exec_ok("web2", &["ip", "-o", "link"]);
    assert!(!l.contains("eth0"), "{l}");
    assert!(!pings(nb.run("ping", &["-c1", "-W1", &ip2])));
    d.ok(&["network", "connect", "mv", "web2"]);
    let ip2 = d.ip("web2", "mv");
    assert!(pings(nb.run("ping", &["-c1", "-W2", &ip2])));
    assert_eq!(
        d.dig("web1", &["@127.0.0.11", "web2"]).data("A"),
        [ip2.clone()]
    );

    // Removal leaves nothing, and the parent as it was.
    d.ok(&["rm", "-f", "web1", "web2"]);
    d.ok(&["network", "rm", "mv"]);
    assert_eq!(link_names(&d.ns), links_before);
    assert_eq!(v4_addrs(&d.ns, "up0"), ["192.168.60.40/24"]);
    assert!(d.netns_mounts().is_empty(), "{:?}", d.netns_mounts());
}

#[test]
fn private_mode_keeps_siblings_apart_and_internal_has_no_default_route() {
    let (d, nb) = daemon_on_l2("mvp", "192.168.61.50/24");
    d.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "-o",
        "parent=up0",
        "-o",
        "macvlan_mode=private",
        "--subnet",
        "192.168.61.0/24",
        "--internal",
        "mvp",
    ]);
    d.ok(&["run", "-d", "--name", "p1", "--network", "mvp"]);
    d.ok(&["run", "-d", "--name", "p2", "--network", "mvp"]);
    let (ip1, ip2) = (d.ip("p1", "mvp"), d.ip("p2", "mvp"));
    let link = d.exec_ok("p1", &["ip", "-d", "link", "show", "eth0"]);
    assert!(link.contains("macvlan mode private"), "{link}");
    let routes = d.exec_ok("p1", &["ip", "route"]);
    assert!(!routes.contains("default"), "{routes}");
    // Names are served inside each sandbox; private mode drops sibling traffic.
    assert_eq!(d.dig("p1", &["@127.0.0.11", "p2"]).data("A"), [ip2.clone()]);
    assert!(!pings(d.exec("p1", &["ping", "-c1", "-W1", &ip2])));
    assert!(pings(nb.run("ping", &["-c1", "-W2", &ip1])));
    assert!(pings(nb.run("ping", &["-c1", "-W2", &ip2])));
    d.ok(&["rm", "-f", "p1", "p2"]);
    d.ok(&["network", "rm", "mvp"]);
}

/// Whether this kernel has link kind `kind`, asked with `ip` in a namespace of the test's own
/// (what the daemon's answer must agree with).
fn kernel_has(kind: &str) -> bool {
    let ns = Ns::new("mvprobe");
    ns.run_ok(
        "ip",
        &["link", "add", "p0", "type", "veth", "peer", "name", "p1"],
    );
    let out = match kind {
        "dummy" => ns.run("ip", &["link", "add", "p2", "type", "dummy"]),
        "vlan" => ns.run(
            "ip",
            &[
                "link", "add", "link", "p0", "name", "p2", "type", "vlan", "id", "2",
            ],
        ),
        k => ns.run(
            "ip",
            &["link", "add", "link", "p0", "name", "p2", "type", k],
        ),
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("Unknown device type"),
        "{kind}: {err}"
    );
    out.status.success()
}

#[test]
fn macvlan_requests_that_cannot_be_served_are_refused_and_leave_nothing() {
    let (d, _nb) = daemon_on_l2("mvbad", "192.168.62.50/24");
    d.ns.run_ok("ip", &["link", "add", "hbr0", "type", "bridge"]);
    let nets_before = d.ok(&["network", "ls", "-q"]);
    let links_before = link_names(&d.ns);
    let create = |extra: &[&str]| {
        let mut a = vec!["network", "create", "--subnet", "192.168.62.0/24"];
        a.extend_from_slice(extra);
        a.push("bad");
        let e = d.fails(&a);
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
        e
    };

    let e = create(&["-d", "macvlan", "-o", "parent=up0.10"]);
    if kernel_has("vlan") {
        assert!(e.contains("parent interface up0.10 does not exist"), "{e}");
    } else {
        assert!(
            e.contains("parent up0.10 would be VLAN 10 on up0: this kernel has no 802.1Q VLAN"),
            "{e}"
        );
    }
    let e = create(&["-d", "ipvlan", "-o", "parent=up0"]);
    if kernel_has("ipvlan") {
        assert!(e.contains("driver ipvlan is not supported"), "{e}");
    } else {
        assert!(
            e.contains("driver ipvlan: this kernel has no ipvlan"),
            "{e}"
        );
    }
    let e = create(&["-d", "macvlan"]);
    if kernel_has("dummy") {
        assert!(e.contains("needs a parent interface: -o parent=IF"), "{e}");
    } else {
        assert!(
            e.contains("needs a dummy link as its parent: this kernel has no dummy links"),
            "{e}"
        );
    }
    let e = create(&["-d", "macvlan", "-o", "parent=nosuch0"]);
    assert!(e.contains("parent interface nosuch0 does not exist"), "{e}");
    let e = create(&["-d", "macvlan", "-o", "parent=up0", "-o", "macvlan_mode=l3"]);
    assert!(e.contains("invalid macvlan mode \"l3\""), "{e}");
    let e = create(&["-d", "macvlan", "-o", "parent=up0", "-o", "vlan=5"]);
    assert!(
        e.contains("unknown option \"vlan\" for driver macvlan"),
        "{e}"
    );
    let e = create(&["-d", "macvlan", "-o", "parent=hbr0"]);
    assert!(e.contains("parent interface hbr0 is a bridge"), "{e}");
    let e = create(&["-d", "macvlan", "-o", "parent=a/b"]);
    assert!(e.contains("invalid parent interface name"), "{e}");

    assert_eq!(d.ok(&["network", "ls", "-q"]), nets_before);
    assert_eq!(link_names(&d.ns), links_before);
    // The subnet was not kept either: a good request for it goes through.
    d.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "-o",
        "parent=up0",
        "--subnet",
        "192.168.62.0/24",
        "good",
    ]);
    let e = d.fails(&[
        "run",
        "-d",
        "--name",
        "pub",
        "--network",
        "good",
        "-p",
        "8080:80",
    ]);
    assert!(
        e.contains("published ports need a non-internal bridge network"),
        "{e}"
    );
    d.ok(&["network", "rm", "good"]);
}

#[test]
fn a_passthru_parent_takes_one_sandbox_and_a_second_is_refused_cleanly() {
    let (d, nb) = daemon_on_l2("mvpt", "192.168.63.50/24");
    d.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "-o",
        "parent=up0",
        "-o",
        "macvlan_mode=passthru",
        "--subnet",
        "192.168.63.0/24",
        "pt",
    ]);
    d.ok(&["run", "-d", "--name", "only", "--network", "pt"]);
    let ip = d.ip("only", "pt");
    assert!(pings(nb.run("ping", &["-c1", "-W2", &ip])));
    // The kernel allows one macvlan on a passthru parent: a second sandbox is refused and
    // leaves nothing behind.
    let e = d.fails(&["run", "-d", "--name", "second", "--network", "pt"]);
    assert!(
        e.contains("parent up0 is in passthru mode and already has its one macvlan"),
        "{e}"
    );
    let ps = d.ok(&["ps", "-a", "--format", "json"]);
    assert!(!ps.contains("\"second\""), "{ps}");
    d.ok(&["rm", "-f", "only"]);
    d.ok(&["network", "rm", "pt"]);
}

/// A sandbox's macvlan deleted by hand (or set down) inside the sandbox comes back on the
/// next full pass, with its address: the drift check looks inside sandboxes for endpoints
/// that live there.
#[test]
fn a_macvlan_deleted_inside_its_sandbox_is_made_again() {
    let (d, nb) = daemon_on_l2_with("mvdrift", "192.168.62.50/24", &["--resync-interval", "1s"]);
    d.ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "-o",
        "parent=up0",
        "--subnet",
        "192.168.62.0/24",
        "mvd",
    ]);
    d.ok(&["run", "-d", "--name", "m1", "--network", "mvd"]);
    let ip = d.ip("m1", "mvd");
    assert!(pings(nb.run("ping", &["-c1", "-W2", &ip])));
    let before = eth0_index(&d, "m1");
    d.exec_ok("m1", &["ip", "link", "del", "eth0"]);
    let back = sdnet_tests::wait_for(std::time::Duration::from_secs(15), || {
        let o = d.exec("m1", &["ip", "-o", "link", "show", "eth0"]);
        (o.status.success() && String::from_utf8_lossy(&o.stdout).contains("UP")).then_some(())
    });
    assert!(back.is_some(), "eth0 not made again:\n{}", d.log());
    assert_ne!(eth0_index(&d, "m1"), before);
    let addrs = d.exec_ok("m1", &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("inet {ip}/24")), "{addrs}");
    assert!(pings(nb.run("ping", &["-c1", "-W2", &ip])));
    // Set down by hand: up again.
    d.exec_ok("m1", &["ip", "link", "set", "eth0", "down"]);
    let up = sdnet_tests::wait_for(std::time::Duration::from_secs(15), || {
        let o = d.exec_ok("m1", &["ip", "-o", "link", "show", "eth0"]);
        o.contains(",UP").then_some(())
    });
    assert!(up.is_some(), "eth0 stayed down");
    d.ok(&["rm", "-f", "m1"]);
    d.ok(&["network", "rm", "mvd"]);
}
