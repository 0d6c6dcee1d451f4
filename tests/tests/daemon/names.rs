//! Names from inside sandboxes: 127.0.0.11, forwarding, the host's search domains.

use sdnet_tests::{Daemon, Dnsmasq};

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
