//! Traffic: isolation between networks, egress, internal networks, published ports, IPv6.

use std::time::Duration;

use sdnet_tests::{Daemon, Remote, ask_tcp, serve_whoami, wait_for};

#[test]
fn networks_isolate_names_and_traffic_connect_disconnect() {
    let d = Daemon::start("diso");
    d.ok(&["network", "create", "--subnet", "10.72.1.0/24", "front"]);
    d.ok(&["network", "create", "--subnet", "10.72.2.0/24", "back"]);
    d.ok(&["run", "-d", "--name", "web", "--network", "front"]);
    d.ok(&["run", "-d", "--name", "db", "--network", "back"]);
    let db_ip = d.ip("db", "back");
    // A name on a network web does not share never resolves to that network's address.
    let q = d.dig("web", &["db"]);
    assert!(!q.data("A").contains(&db_ip), "leaked: {}", q.raw);
    assert_ne!(q.status, "NOERROR");
    assert!(d.dig("web", &["db.back"]).answer.is_empty());
    // And traffic between networks is dropped.
    assert!(
        !d.exec("web", &["ping", "-c1", "-W1", &db_ip])
            .status
            .success()
    );

    // connect: resolvable before the command returns, with the alias, on that network.
    d.ok(&["network", "connect", "--alias", "api", "back", "web"]);
    let web_back = d.ip("web", "back");
    assert_eq!(d.dig("db", &["web"]).data("A"), [web_back.clone()]);
    assert_eq!(d.dig("db", &["api"]).data("A"), [web_back.clone()]);
    assert_eq!(d.dig("web", &["db"]).data("A"), [db_ip.clone()]);
    d.exec_ok("web", &["ping", "-c1", "-W2", &db_ip]);
    // disconnect: gone at once.
    d.ok(&["network", "disconnect", "back", "web"]);
    assert!(d.dig("db", &["web"]).answer.is_empty());
    assert!(d.dig("db", &["api"]).answer.is_empty());
    let ifs = d.exec_ok("web", &["ip", "-o", "link"]);
    assert!(!ifs.contains("eth1"), "{ifs}");
}

#[test]
fn egress_internal_and_published_ports() {
    let d = Daemon::start("dport");
    let remote = Remote::attach(&d);
    d.ok(&["network", "create", "--subnet", "10.73.0.0/24", "pub"]);
    d.ok(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        "10.73.1.0/24",
        "priv",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "srv",
        "--network",
        "pub",
        "-p",
        "8080:80",
        "-p",
        "127.0.0.1:8081:81",
        "--",
        "socat",
        "TCP-LISTEN:80,fork,reuseaddr",
        "SYSTEM:echo srv saw $SOCAT_PEERADDR",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "srv81",
        "--network",
        "pub",
        "-p",
        "127.0.0.1:8082:81",
        "--",
        "socat",
        "TCP-LISTEN:81,fork,reuseaddr",
        "SYSTEM:echo srv81 saw $SOCAT_PEERADDR",
    ]);
    d.ok(&["run", "-d", "--name", "cli", "--network", "pub"]);
    d.ok(&["run", "-d", "--name", "hidden", "--network", "priv"]);
    let srv_ip = d.ip("srv", "pub");

    // Egress: masqueraded to the host's address.
    serve_whoami(&remote.ns, 9000, "remote");
    let seen = d.exec_ok(
        "cli",
        &["socat", "-T2", "-", "TCP:192.0.2.2:9000,connect-timeout=2"],
    );
    assert!(seen.starts_with("remote saw 192.0.2.1"), "{seen}");
    // Internal: no default route, no egress.
    assert!(
        !d.exec("hidden", &["ping", "-c1", "-W1", remote.ip])
            .status
            .success()
    );
    let routes = d.exec_ok("hidden", &["ip", "route"]);
    assert!(!routes.contains("default"), "{routes}");

    let srv_up = wait_for(Duration::from_secs(10), || {
        (!ask_tcp(&d.ns, &format!("{srv_ip}:80")).is_empty()).then_some(())
    });
    assert!(srv_up.is_some(), "srv not listening");
    // From another host: the published port, the client address kept.
    let r = ask_tcp(&remote.ns, &format!("{}:8080", remote.host_ip));
    assert!(r.starts_with("srv saw 192.0.2.2"), "from remote: {r:?}");
    // From the host itself, to its own address and to 127.0.0.1.
    assert!(ask_tcp(&d.ns, "192.0.2.1:8080").starts_with("srv saw"));
    assert!(ask_tcp(&d.ns, "127.0.0.1:8080").starts_with("srv saw"));
    assert!(ask_tcp(&d.ns, "127.0.0.1:8082").starts_with("srv81 saw"));
    // Loopback-only publishing is not reachable from outside.
    assert_eq!(ask_tcp(&remote.ns, &format!("{}:8082", remote.host_ip)), "");
    // Hairpin: from a sandbox on the same network, and from the sandbox to itself.
    let h = d.exec_ok(
        "cli",
        &["socat", "-T2", "-", "TCP:192.0.2.1:8080,connect-timeout=2"],
    );
    assert!(h.starts_with("srv saw"), "hairpin: {h}");
    let own = d.exec_ok(
        "srv",
        &["socat", "-T2", "-", "TCP:192.0.2.1:8080,connect-timeout=2"],
    );
    assert!(own.starts_with("srv saw"), "to own port: {own}");
    // Direct access to a sandbox address from outside is dropped.
    remote
        .ns
        .run_ok("ip", &["route", "add", "10.73.0.0/24", "via", "192.0.2.1"]);
    assert_eq!(ask_tcp(&remote.ns, &format!("{srv_ip}:80")), "");
    // The host port is reserved: nobody else can bind it, and no second sandbox can publish it.
    let b =
        d.ns.run("socat", &["-T1", "TCP-LISTEN:8080", "OPEN:/dev/null"]);
    assert!(!b.status.success(), "port 8080 was not reserved");
    let err = d.fails(&[
        "run",
        "-d",
        "--name",
        "dup",
        "--network",
        "pub",
        "-p",
        "8080:80",
    ]);
    assert!(err.contains("already published"), "{err}");
    // Removing the sandbox frees it.
    d.ok(&["rm", "-f", "srv"]);
    assert_eq!(ask_tcp(&remote.ns, &format!("{}:8080", remote.host_ip)), "");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "again",
        "--network",
        "pub",
        "-p",
        "8080:80",
    ]);
}

#[test]
fn ipv6_only_on_networks_that_have_it() {
    let d = Daemon::start("dv6");
    d.ok(&["network", "create", "--subnet", "10.72.0.0/24", "v4only"]);
    d.ok(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.73.0.0/24",
        "--subnet",
        "fd00:73::/64",
        "dual",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "a",
        "--network",
        "v4only",
        "--network",
        "dual",
    ]);
    d.ok(&["run", "-d", "--name", "b", "--network", "dual"]);
    let off = |sb: &str, ifname: &str| {
        d.exec_ok(
            sb,
            &[
                "cat",
                &format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
            ],
        )
        .trim()
        .to_string()
    };
    // No IPv6 chatter (DAD, router and MLD solicitations) where the network has none.
    assert_eq!(off("a", "eth0"), "1");
    assert_eq!(off("a", "eth1"), "0");
    assert_eq!(off("b", "eth0"), "0");
    // The bridge-side ends of the veth pairs have no addresses of their own.
    let host = d.ns.run_ok(
        "sh",
        &[
            "-c",
            "cat /proc/sys/net/ipv6/conf/sdv*/disable_ipv6 | sort -u",
        ],
    );
    assert_eq!(host.trim(), "1", "{host}");
    // IPv6 still works on the dual-stack network.
    let b6 = d.inspect("b")["endpoints"][0]["ipv6"]
        .as_str()
        .expect("b has an IPv6 address")
        .to_string();
    let pinged = wait_for(Duration::from_secs(5), || {
        d.exec("a", &["ping", "-6", "-c1", "-W1", &b6])
            .status
            .success()
            .then_some(())
    });
    assert!(pinged.is_some(), "no IPv6 ping from a to b ({b6})");
}
