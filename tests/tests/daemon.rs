//! `sdctl daemon` end to end: a daemon inside its own namespace, driven by the real `sdctl`
//! client; names checked from inside sandboxes with dig, getent (glibc) and busybox nslookup
//! through 127.0.0.11; traffic checked with ping and socat.

// `[ip.clone()]` reads better in an assertion than `slice::from_ref(&ip)`.
#![allow(clippy::cloned_ref_to_slice_refs)]

use std::path::Path;
use std::time::Duration;

use sdnet_tests::{Daemon, Dnsmasq, Ns, Remote, TempDir, ask_tcp, sdctl, serve_whoami, wait_for};

fn has(s: &str, needle: &str) -> bool {
    s.contains(needle)
}

#[test]
fn sandboxes_resolve_each_other_through_127_0_0_11() {
    let d = Daemon::start("dres");
    d.ok(&["network", "create", "--subnet", "10.71.0.0/24", "net1"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "alpha",
        "--hostname",
        "alpha-host",
        "--network",
        "net1",
        "--network-alias",
        "db",
    ]);
    d.ok(&["run", "-d", "--name", "beta", "--network", "net1"]);
    let a_ip = d.ip("alpha", "net1");
    let b_ip = d.ip("beta", "net1");
    assert!(a_ip.starts_with("10.71.0."), "{a_ip}");

    // resolv.conf points at the embedded resolver, with the host's options and ndots:0.
    let rc = d.exec_ok("beta", &["cat", "/etc/resolv.conf"]);
    assert!(has(&rc, "nameserver 127.0.0.11"), "{rc}");
    assert!(has(&rc, "options edns0 ndots:0"), "{rc}");

    // dig: name, alias, hostname, short ID, name.network, PTR, AAAA NODATA, TCP.
    let q = d.dig("beta", &["alpha"]);
    assert_eq!(q.data("A"), [a_ip.clone()]);
    assert!(q.has_flag("aa"));
    assert_eq!(d.dig("beta", &["db"]).data("A"), [a_ip.clone()]);
    assert_eq!(d.dig("beta", &["alpha-host"]).data("A"), [a_ip.clone()]);
    let id = d.inspect("alpha")["id"].as_str().unwrap().to_string();
    assert_eq!(d.dig("beta", &[&id[..12]]).data("A"), [a_ip.clone()]);
    assert_eq!(d.dig("beta", &["alpha.net1"]).data("A"), [a_ip.clone()]);
    assert_eq!(d.dig("beta", &["-x", &a_ip]).data("PTR"), ["alpha.net1."]);
    let q = d.dig("beta", &["alpha", "AAAA"]);
    assert_eq!(q.status, "NOERROR");
    assert!(q.answer.is_empty());
    assert_eq!(d.dig("beta", &["+tcp", "alpha"]).data("A"), [a_ip.clone()]);
    // A program in the sandbox may bind port 53 itself; 127.0.0.11 keeps answering.
    let out = d.exec_ok(
        "beta",
        &[
            "sh",
            "-c",
            "socat -u UDP-RECV:53 - 2>&1 & \
             for i in $(seq 250); do ss -Hlun 'sport = :53' | grep -q . && break; sleep 0.02; done; \
             ss -Hlun 'sport = :53' | grep -q . && echo BOUND53; \
             dig +short +tries=1 +time=2 alpha; dig +short +tcp +tries=1 +time=2 alpha; \
             kill $! 2>/dev/null; true",
        ],
    );
    assert!(has(&out, "BOUND53"), "socat never bound port 53: {out}");
    assert_eq!(out.matches(&a_ip).count(), 2, "{out}");
    // ip netns exec finds the files through <etc-netns-dir>/<name>, a link to the run dir.
    let link = d.dir.path().join("etc-netns").join("beta");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    let rc = std::fs::read_to_string(link.join("resolv.conf")).unwrap();
    assert!(has(&rc, "nameserver 127.0.0.11"), "{rc}");
    // glibc (getent) and busybox nslookup, both through resolv.conf.
    let g = d.exec_ok("beta", &["getent", "hosts", "alpha"]);
    assert!(g.starts_with(&a_ip), "{g}");
    let n = d.exec_ok("alpha", &["busybox", "nslookup", "beta"]);
    assert!(has(&n, &b_ip), "{n}");
    // The sandbox's own hostname comes from its hosts file (and its UTS namespace).
    assert_eq!(d.exec_ok("alpha", &["hostname"]).trim(), "alpha-host");
    // Traffic on the same network works.
    d.exec_ok("beta", &["ping", "-c1", "-W2", &a_ip]);
    // The debugging tool answers the same.
    let out = d.ok(&["dns", "query", "--from", "beta", "alpha"]);
    assert!(has(&out, &a_ip) && has(&out, "status: NOERROR"), "{out}");
}

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
fn bad_input_is_refused_and_changes_nothing() {
    let d = Daemon::start("dbad");
    d.ok(&["network", "create", "--subnet", "10.74.0.0/24", "good"]);
    d.ok(&["run", "-d", "--name", "one", "--network", "good"]);
    let nets_before = d.ok(&["network", "ls", "-q"]);
    let ps_before = d.ok(&["ps", "-a", "-q"]);

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["network", "create", "-bad"], ""),
        (
            vec!["network", "create", "bad name"],
            "invalid network name",
        ),
        (
            vec!["network", "create", "--subnet", "10.74.0.0/33", "x1"],
            "invalid",
        ),
        (
            vec!["network", "create", "--subnet", "10.74.0.128/25", "x2"],
            "overlaps",
        ),
        (
            vec!["network", "create", "--subnet", "10.75.0.1/24", "x3"],
            "host bits",
        ),
        (
            vec![
                "network",
                "create",
                "--subnet",
                "10.76.0.0/24",
                "--gateway",
                "10.77.0.1",
                "x4",
            ],
            "not in any --subnet",
        ),
        (
            vec![
                "network",
                "create",
                "--subnet",
                "10.76.0.0/24",
                "--ip-range",
                "10.76.0.128/24",
                "x5",
            ],
            "",
        ),
        (vec!["network", "create", "good"], "already exists"),
        (vec!["network", "rm", "good"], "in use"),
        (vec!["network", "rm", "bridge"], "pre-defined"),
        (vec!["network", "rm", "nosuchnet"], "not found"),
        (
            vec!["run", "-d", "--name", "one", "--network", "good"],
            "already in use",
        ),
        (
            vec![
                "run",
                "-d",
                "--name",
                "two",
                "--network",
                "good",
                "--ip",
                "10.99.0.5",
            ],
            "not in subnet",
        ),
        (
            vec!["run", "-d", "--name", "two", "--network", "nosuchnet"],
            "not found",
        ),
        (
            vec!["run", "-d", "--name", "t w o", "--network", "good"],
            "invalid sandbox name",
        ),
        (
            vec![
                "run",
                "-d",
                "--name",
                "two",
                "--network",
                "good",
                "-p",
                "99999:80",
            ],
            "invalid port",
        ),
        (
            vec![
                "run",
                "-d",
                "--name",
                "two",
                "--network",
                "host",
                "--network",
                "good",
            ],
            "cannot be combined",
        ),
        (vec!["rm", "nosuchbox"], "not found"),
        (vec!["inspect", "nosuchbox"], "not found"),
        (vec!["exec", "nosuchbox", "--", "true"], "not found"),
        (
            vec!["network", "connect", "good", "one"],
            "already connected",
        ),
        (
            vec!["network", "disconnect", "bridge", "one"],
            "not connected",
        ),
    ];
    for (args, want) in cases {
        let err = d.fails(&args);
        assert!(
            err.to_lowercase().contains(&want.to_lowercase()),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // Fixed IP already taken.
    let ip = d.ip("one", "good");
    let err = d.fails(&[
        "run",
        "-d",
        "--name",
        "two",
        "--network",
        "good",
        "--ip",
        &ip,
    ]);
    assert!(err.contains("in use") || err.contains("allocated"), "{err}");
    assert_eq!(d.ok(&["network", "ls", "-q"]), nets_before);
    assert_eq!(d.ok(&["ps", "-a", "-q"]), ps_before);
    // Nothing half-made left behind by the refused requests.
    assert_eq!(d.our_links().len(), 3, "{:?}", d.our_links()); // 2 bridges + one veth

    // No daemon: a clear message saying how to start it.
    let out = std::process::Command::new(sdnet_tests::sdctl())
        .args(["ps", "--socket", "/nonexistent/sdnet.sock"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("sdctl daemon"),
        "{err}"
    );
}

#[test]
fn processes_exec_logs_and_exit_codes() {
    let d = Daemon::start("dproc");
    d.ok(&["network", "create", "--subnet", "10.78.0.0/24", "n"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "svc",
        "--hostname",
        "svc-host",
        "--network",
        "n",
        "--",
        "sh",
        "-c",
        "echo started; hostname; grep nameserver /etc/resolv.conf; exec sleep 300",
    ]);
    let logs = wait_for(Duration::from_secs(10), || {
        let l = d.ok(&["logs", "svc"]);
        l.contains("nameserver").then_some(l)
    })
    .expect("logs");
    assert!(
        logs.contains("started")
            && logs.contains("svc-host")
            && logs.contains("nameserver 127.0.0.11"),
        "{logs}"
    );
    // exec: exit code passed through, hostname and network of the sandbox.
    assert_eq!(
        d.exec("svc", &["sh", "-c", "exit 7"]).status.code(),
        Some(7)
    );
    assert_eq!(d.exec_ok("svc", &["hostname"]).trim(), "svc-host");
    assert!(d.exec_ok("svc", &["ip", "-o", "addr"]).contains("10.78.0."));
    // rm of a running process needs -f.
    assert!(d.fails(&["rm", "svc"]).contains("-f"));
    let ps = d.ok(&["ps"]);
    assert!(
        ps.lines().any(|l| l.contains("svc") && l.contains(" Up ")),
        "{ps}"
    );
    // Foreground run: output, exit code, --rm removes it.
    let out = d.sdctl(&[
        "run",
        "--rm",
        "--name",
        "once",
        "--network",
        "n",
        "--",
        "sh",
        "-c",
        "echo hi from once; exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hi from once"));
    assert!(!d.ok(&["ps", "-a"]).contains("once"));
    // A process that exits: the sandbox shows Exited with its code; -d --rm is removed.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "short",
        "--network",
        "n",
        "--",
        "sh",
        "-c",
        "exit 5",
    ]);
    let exited = wait_for(Duration::from_secs(10), || {
        let ps = d.ok(&["ps", "-a"]);
        ps.lines()
            .any(|l| l.contains("short") && l.contains("Exited (5)"))
            .then_some(())
    });
    assert!(exited.is_some(), "{}", d.ok(&["ps", "-a"]));
    d.ok(&[
        "run",
        "-d",
        "--rm",
        "--name",
        "gone",
        "--network",
        "n",
        "--",
        "true",
    ]);
    let removed = wait_for(Duration::from_secs(10), || {
        (!d.ok(&["ps", "-a"]).contains("gone")).then_some(())
    });
    assert!(removed.is_some());
    d.ok(&["rm", "-f", "svc", "short"]);
}

#[test]
fn default_bridge_has_no_dns_and_forwarding_works_on_user_networks() {
    let d = Daemon::start("dfwd");
    // An upstream inside the daemon's namespace, named by the daemon's resolv.conf.
    let up = Dnsmasq::start(
        &d.ns,
        d.dir.path(),
        "127.0.0.53",
        53,
        &[
            "--host-record=ext.example.test,198.51.100.7",
            "--local=/example.test/",
        ],
    );
    d.ok(&["network", "create", "--subnet", "10.79.0.0/24", "n"]);
    d.ok(&["run", "-d", "--name", "u", "--network", "n"]);
    d.ok(&["run", "-d", "--name", "plain"]); // default bridge
    assert_eq!(
        d.dig("u", &["ext.example.test"]).data("A"),
        ["198.51.100.7"]
    );
    assert_eq!(d.dig("u", &["nope.example.test"]).status, "NXDOMAIN");
    assert!(up.queries_for("ext.example.test") >= 1);
    // Default bridge: like Docker, no embedded DNS (resolv.conf has no 127.0.0.11).
    let rc = d.exec_ok("plain", &["cat", "/etc/resolv.conf"]);
    assert!(!rc.contains("127.0.0.11"), "{rc}");
    let ps = d.ok(&["ps"]);
    assert!(ps.contains("bridge="), "{ps}");
}

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

#[test]
fn connect_starts_dns_for_a_sandbox_that_had_none() {
    let d = Daemon::start("dconn");
    d.ok(&["network", "create", "--subnet", "10.81.0.0/24", "n"]);
    d.ok(&["run", "-d", "--name", "x"]); // only on the default bridge: no DNS
    d.ok(&["run", "-d", "--name", "y", "--network", "n"]);
    d.ok(&["network", "connect", "n", "x"]);
    let rc = d.exec_ok("x", &["cat", "/etc/resolv.conf"]);
    assert!(rc.contains("127.0.0.11"), "{rc}");
    assert_eq!(d.dig("x", &["y"]).data("A"), [d.ip("y", "n")]);
}

#[test]
fn host_search_domains_and_options_reach_sandboxes() {
    let d = Daemon::start_full(
        "dsrch",
        &[],
        "nameserver 127.0.0.53\nsearch corp.example b.example\noptions edns0 ndots:2\n",
    );
    // The host's resolver answers NXDOMAIN for its search domains, as a real one would.
    let _up = Dnsmasq::start(
        &d.ns,
        d.dir.path(),
        "127.0.0.53",
        53,
        &["--local=/example/"],
    );
    d.ok(&["network", "create", "--subnet", "10.82.0.0/24", "n"]);
    d.ok(&["run", "-d", "--name", "one", "--network", "n"]);
    d.ok(&["run", "-d", "--name", "two", "--network", "n"]);
    let rc = d.exec_ok("one", &["cat", "/etc/resolv.conf"]);
    assert!(rc.contains("nameserver 127.0.0.11"), "{rc}");
    assert!(rc.contains("search corp.example b.example"), "{rc}");
    // The host set ndots itself: kept, not replaced by ndots:0.
    assert!(
        rc.contains("options edns0 ndots:2") && !rc.contains("ndots:0"),
        "{rc}"
    );
    // glibc walks the search list, gets NXDOMAIN upstream, then finds the local name.
    let g = d.exec_ok("one", &["getent", "hosts", "two"]);
    assert!(g.starts_with(&d.ip("two", "n")), "{g}");
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

/// A time `inspect` printed: RFC 3339 in UTC, within a few minutes of now.
fn assert_recent_rfc3339(v: &serde_json::Value, what: &str) -> std::time::SystemTime {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v}"));
    assert!(
        s.ends_with('Z') && s.as_bytes().get(10) == Some(&b'T'),
        "{what}: {s}"
    );
    let t = humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{what}: {s}: {e}"));
    let now = std::time::SystemTime::now();
    let off = now.duration_since(t).unwrap_or_else(|e| e.duration());
    assert!(off < Duration::from_secs(300), "{what}: {s} is not now");
    t
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn daemon_socket_follows_its_run_dir_and_cleanup_spares_live_sockets() {
    let d = Daemon::start("dsock");
    let live = d.socket.display().to_string();

    // A second daemon without --socket (and without SDNET_SOCKET): it listens in its run dir.
    let ns = Ns::new("dsock2");
    let dir = TempDir::new("dsock2");
    let p = |x: &str| dir.path().join(x).display().to_string();
    std::fs::write(dir.path().join("resolv.conf"), "nameserver 127.0.0.53\n").unwrap();
    let base = [
        "daemon",
        "--state-dir",
        &p("state"),
        "--run-dir",
        &p("run"),
        "--etc-netns-dir",
        &p("etc-netns"),
        "--no-netns-links",
        "--resolv-conf",
        &p("resolv.conf"),
    ];
    let mut cmd = ns.cmd(sdctl(), &base);
    cmd.env_remove("SDNET_SOCKET");
    let pid = ns.spawn(cmd, Some(&dir.path().join("daemon.log")));
    let own = dir.path().join("run").join("sdnet.sock");
    let up = wait_for(Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&own)
            .ok()
            .map(|_| ())
    });
    assert!(
        up.is_some(),
        "no socket at {}:\n{}",
        own.display(),
        std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
    );
    let own = own.display().to_string();
    let out = d.sdctl_bare(&["--socket", &own, "network", "ls"]);
    assert!(out.status.success(), "{}", stderr_of(&out));

    // Killed: its socket is a leftover now.
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    ns.stop(pid);
    assert!(Path::new(&own).exists());

    // --cleanup of that run dir naming the first daemon's live socket: the socket stays.
    let cleanup = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.push("--cleanup");
        args.extend_from_slice(extra);
        let mut cmd = ns.cmd(sdctl(), &args);
        cmd.env_remove("SDNET_SOCKET");
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "cleanup {extra:?}: {}",
            stderr_of(&out)
        );
    };
    cleanup(&["--socket", &live]);
    assert!(
        Path::new(&live).exists(),
        "a live daemon's socket was removed"
    );
    d.ok(&["ps"]);
    assert!(Path::new(&own).exists(), "not the socket it was told");

    // Without --socket it removes its own run dir's leftover, nothing else.
    cleanup(&[]);
    assert!(!Path::new(&own).exists(), "the leftover socket stayed");
    assert!(Path::new(&live).exists());
    d.ok(&["ps"]);
}

#[test]
fn global_flags_unknown_flags_and_one_line_errors() {
    let d = Daemon::start("dcli");
    let sock = d.socket.display().to_string();
    let unix = format!("unix://{sock}");

    // Global flags before or after the subcommand (no SDNET_SOCKET here).
    for args in [
        &["--socket", &sock, "ps"][..],
        &["ps", "--socket", &sock],
        &["-H", &unix, "ps", "-a"],
        &["--log-level", "debug", "--socket", &sock, "network", "ls"],
        &["network", "--socket", &sock, "ls", "--log-level", "warn"],
    ] {
        let out = d.sdctl_bare(args);
        assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
    }

    d.ok(&["network", "create", "--subnet", "10.81.0.0/24", "net1"]);
    d.ok(&["run", "-d", "--name", "a1", "--network", "net1"]);
    let logs_dir = d.dir.path().join("state").join("logs");
    let logs = || std::fs::read_dir(&logs_dir).map(|r| r.count()).unwrap_or(0);
    let logs_before = logs();

    // An unknown flag is an error naming it, in one line, exit code 2; nothing is made.
    let usage = |args: &[&str]| {
        let out = d.sdctl(args);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        err.trim_end().to_string()
    };
    assert_eq!(
        usage(&[
            "run",
            "-d",
            "--name",
            "b2",
            "--link",
            "a1",
            "--network",
            "net1"
        ]),
        "sdctl: unexpected argument '--link' found (see 'sdctl run --help')"
    );
    let e = usage(&[
        "services",
        "create",
        "--name",
        "s",
        "--network",
        "net1",
        "--bogus",
        "x",
    ]);
    assert!(
        e.contains("'--bogus'") && e.contains("sdctl services create --help"),
        "{e}"
    );
    let e = usage(&["services", "update", "s", "--bogus", "x"]);
    assert!(
        e.contains("'--bogus'") && e.contains("sdctl services update --help"),
        "{e}"
    );
    let e = usage(&["network", "create", "--subnet", "10.20.0.0/33", "x"]);
    assert!(e.contains("prefix length 33 is longer than 32"), "{e}");
    assert!(!e.contains("invalid IP address syntax"), "{e}");
    // A command that cannot start leaves neither a sandbox nor a log file.
    let err = d.fails(&[
        "run",
        "-d",
        "--name",
        "b3",
        "--network",
        "net1",
        "--",
        "/nonexistent/cmd",
    ]);
    assert!(err.contains("No such file"), "{err}");
    let all = d.ok(&["ps", "-a"]);
    assert!(!all.contains("b2") && !all.contains("b3"), "{all}");
    assert_eq!(logs(), logs_before, "a log file was left behind");

    // Every bridge network is attachable, as --attachable's help says.
    let v: serde_json::Value =
        serde_json::from_str(&d.ok(&["network", "inspect", "net1"])).unwrap();
    assert_eq!(v[0]["attachable"], true, "{v}");

    // Not root: say that root is needed, not how to start a daemon.
    let bin = sdctl();
    let nobody = |bin: &Path| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin)
            .args(["--socket", &sock, "ps"])
            .env_remove("SDNET_SOCKET")
            .output()
            .unwrap()
    };
    let mut out = nobody(&bin);
    let copy = TempDir::new("nobody");
    if stderr_of(&out).contains("Permission denied") && !stderr_of(&out).starts_with("sdctl") {
        // The build's directory is closed to nobody: run a copy they can reach.
        let b = copy.path().join("sdctl");
        std::fs::copy(&bin, &b).unwrap();
        std::fs::set_permissions(
            copy.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        out = nobody(&b);
    }
    assert_eq!(
        stderr_of(&out).trim_end(),
        format!(
            "sdctl: permission denied on {sock}: the sdnet API needs root \
             (run sdctl as root or with sudo)"
        )
    );
    d.ok(&["rm", "-f", "a1"]);
}

#[test]
fn docker_habits_version_prune_ps_status_and_times() {
    let d = Daemon::start("dhab");
    d.ok(&["network", "create", "--subnet", "10.83.0.0/24", "net1"]);
    d.ok(&["run", "-d", "--name", "a1", "--network", "net1"]);
    let v: serde_json::Value =
        serde_json::from_str(&d.ok(&["network", "inspect", "net1"])).unwrap();
    assert_recent_rfc3339(&v[0]["created"], "network created");

    // version: the client's and the daemon's.
    let v = d.ok(&["version"]);
    assert!(
        v.starts_with("Client:\n Version:") && v.contains("\nServer:\n Version:"),
        "{v}"
    );
    assert!(v.contains(&format!(" PID:          {}", d.pid)), "{v}");
    let out = d.sdctl_bare(&["version", "--socket", "/nonexistent/sdnet.sock"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Client:"));
    assert!(
        stderr_of(&out).contains("sdctl daemon"),
        "{}",
        stderr_of(&out)
    );

    // network prune asks; with nobody to ask (stdin is not a terminal) it refuses.
    d.ok(&["network", "create", "--subnet", "10.82.0.0/24", "spare"]);
    let err = d.fails(&["network", "prune"]);
    assert!(err.contains("-f") && err.lines().count() == 1, "{err}");
    assert!(d.ok(&["network", "ls"]).contains("spare"));
    let pruned = d.ok(&["network", "prune", "-f"]);
    assert!(
        pruned.contains("spare") && !pruned.contains("net1"),
        "{pruned}"
    );

    // ps: Docker's STATUS and CREATED; inspect: RFC 3339 times of the process.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "up1",
        "--network",
        "net1",
        "--",
        "sleep",
        "300",
    ]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "ex3",
        "--network",
        "net1",
        "--",
        "sh",
        "-c",
        "exit 3",
    ]);
    let ps = wait_for(Duration::from_secs(10), || {
        let ps = d.ok(&["ps", "-a"]);
        ps.lines()
            .any(|l| l.contains("ex3") && l.contains("Exited (3) ") && l.contains(" ago   net1"))
            .then_some(ps)
    })
    .unwrap_or_else(|| panic!("{}", d.ok(&["ps", "-a"])));
    for name in ["a1", "up1"] {
        let line = ps.lines().find(|l| l.contains(name)).unwrap();
        assert!(line.contains(" ago ") && line.contains(" Up "), "{ps}");
    }
    let up = d.inspect("up1");
    let created = assert_recent_rfc3339(&up["created"], "created");
    let started = assert_recent_rfc3339(&up["started_at"], "started_at");
    assert!(started >= created, "{up}");
    assert!(up["finished_at"].is_null(), "{up}");
    let ex = d.inspect("ex3");
    let started = assert_recent_rfc3339(&ex["started_at"], "started_at");
    let finished = assert_recent_rfc3339(&ex["finished_at"], "finished_at");
    assert!(finished >= started, "{ex}");
    assert!(d.inspect("a1")["started_at"].is_null());
    d.ok(&[
        "services",
        "create",
        "-d",
        "--name",
        "s",
        "--network",
        "net1",
        "--",
        "sleep",
        "300",
    ]);
    let v: serde_json::Value = serde_json::from_str(&d.ok(&["services", "inspect", "s"])).unwrap();
    assert_recent_rfc3339(&v[0]["created"], "service created");

    d.ok(&["services", "rm", "s"]);
    d.ok(&["rm", "-f", "a1", "up1", "ex3"]);
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
