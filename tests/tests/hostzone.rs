//! The host zone (`sdctl daemon --host-dns`): every record kind asked with dig from the
//! daemon's namespace (the "host"), over UDP, TCP and with EDNS; negative answers with the SOA;
//! the zone following `sdctl run` before it returns; AXFR allowed from loopback and refused from
//! elsewhere; BIND as a secondary that transfers the zone, is NOTIFYed of changes and answers
//! the same; names on internal and `--host-dns=false` networks absent.

// `[ip.clone()]` reads better in an assertion than `slice::from_ref(&ip)`.
#![allow(clippy::cloned_ref_to_slice_refs)]

use std::path::Path;
use std::time::Duration;

use sdnet_tests::{Daemon, Dig, Ns, wait_for};

const PORT: &str = "5353";

fn q(d: &Daemon, server: &str, args: &[&str]) -> Dig {
    let mut a = vec!["+tries=1", "+time=2", server, "-p", PORT];
    a.extend_from_slice(args);
    d.ns.dig(&a)
}

fn local(d: &Daemon, args: &[&str]) -> Dig {
    q(d, "@127.0.0.1", args)
}

fn serial(d: &Daemon) -> u64 {
    let r = local(d, &["sdnet", "SOA"]);
    let soa = r.data("SOA");
    assert_eq!(soa.len(), 1, "{}", r.raw);
    soa[0].split_whitespace().nth(2).unwrap().parse().unwrap()
}

fn net_field(d: &Daemon, net: &str, f: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&d.ok(&["network", "inspect", net])).unwrap();
    v[0][f].clone()
}

fn ip6(d: &Daemon, sandbox: &str, network: &str) -> String {
    let v = d.inspect(sandbox);
    v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["network"] == network)
        .and_then(|e| e["ipv6"].as_str())
        .unwrap_or_else(|| panic!("{sandbox} has no IPv6 on {network}: {v}"))
        .to_string()
}

fn task_ips(d: &Daemon, svc: &str) -> Vec<String> {
    let mut v: Vec<String> = d
        .tasks(svc)
        .iter()
        .filter(|t| t["state"] == "running")
        .flat_map(|t| t["ips"].as_array().cloned().unwrap_or_default())
        .filter_map(|ip| {
            ip.as_str()
                .and_then(|s| s.split('=').nth(1))
                .map(str::to_string)
        })
        .collect();
    v.sort();
    v
}

/// `dig AXFR` output (records only, no header): the lines, or the failure dig printed.
fn axfr(d: &Daemon, server: &str, zone: &str) -> String {
    xfr(d, server, zone, "AXFR")
}

fn xfr(d: &Daemon, server: &str, zone: &str, kind: &str) -> String {
    let mut args = vec!["+tries=1", "+time=3", server, "-p", PORT, zone];
    args.extend(kind.split_whitespace());
    let out = d.ns.run("dig", &args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn soa_authority(r: &Dig) -> bool {
    r.authority
        .iter()
        .any(|a| a.rtype == "SOA" && a.name == "sdnet.")
}

#[test]
fn records_negative_answers_and_transfers() {
    let d = Daemon::start_with("hzrec", &["--host-dns", "0.0.0.0:5353"]);
    d.ok(&[
        "network",
        "create",
        "--subnet",
        "10.91.1.0/24",
        "--ipv6",
        "n",
    ]);
    d.ok(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        "10.91.2.0/24",
        "int",
    ]);
    d.ok(&[
        "network",
        "create",
        "--host-dns=false",
        "--subnet",
        "10.91.3.0/24",
        "hid",
    ]);
    assert_eq!(net_field(&d, "hid", "host_dns"), false);
    assert_eq!(net_field(&d, "n", "host_dns"), true);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "a",
        "--hostname",
        "hosta",
        "--network",
        "n",
        "--network-alias",
        "al",
    ]);
    d.ok(&["run", "-d", "--name", "b", "--network", "int"]);
    d.ok(&["run", "-d", "--name", "c", "--network", "hid"]);
    d.ok(&[
        "services",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--network",
        "n",
        "--port",
        "http:80/tcp",
        "--",
        "sleep",
        "300",
    ]);
    d.ok(&[
        "services",
        "create",
        "--name",
        "rr",
        "--replicas",
        "2",
        "--network",
        "n",
        "--endpoint-mode",
        "dnsrr",
        "--",
        "sleep",
        "300",
    ]);
    let a4 = d.ip("a", "n");
    let a6 = ip6(&d, "a", "n");
    let short = d.inspect("a")["id"].as_str().unwrap()[..12].to_string();

    // A and AAAA of the name, its hostname, alias and short ID; authoritative.
    let r = local(&d, &["a.n.sdnet"]);
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert!(r.has_flag("aa"), "{}", r.raw);
    assert_eq!(r.data("A"), [a4.clone()]);
    assert_eq!(local(&d, &["a.n.sdnet", "AAAA"]).data("AAAA"), [a6.clone()]);
    for name in ["hosta.n.sdnet", "al.n.sdnet", &format!("{short}.n.sdnet")] {
        assert_eq!(local(&d, &[name]).data("A"), [a4.clone()], "{name}");
    }
    // Case does not matter.
    assert_eq!(local(&d, &["A.N.SDNET"]).data("A"), [a4.clone()]);
    // PTR of both addresses, in their reverse zones.
    assert_eq!(local(&d, &["-x", &a4]).data("PTR"), ["a.n.sdnet."]);
    assert_eq!(local(&d, &["-x", &a6]).data("PTR"), ["a.n.sdnet."]);

    // Services: the VIP, the tasks, dnsrr, SRV, the VIP's PTR.
    let svc: serde_json::Value =
        serde_json::from_str(&d.ok(&["services", "inspect", "web"])).unwrap();
    let vip = svc[0]["networks"][0]["vip"].as_str().unwrap().to_string();
    let web = task_ips(&d, "web");
    assert_eq!(web.len(), 2);
    assert_eq!(local(&d, &["web.n.sdnet"]).data("A"), [vip.clone()]);
    assert_eq!(local(&d, &["tasks.web.n.sdnet"]).sorted("A"), web);
    assert_eq!(local(&d, &["rr.n.sdnet"]).sorted("A"), task_ips(&d, "rr"));
    assert_eq!(
        local(&d, &["tasks.rr.n.sdnet"]).sorted("A"),
        task_ips(&d, "rr")
    );
    let srv = local(&d, &["_http._tcp.web.n.sdnet", "SRV"]);
    let srv = srv.data("SRV");
    assert_eq!(srv.len(), 2, "{srv:?}");
    let mut targets: Vec<String> = Vec::new();
    for s in &srv {
        let f: Vec<&str> = s.split_whitespace().collect();
        assert_eq!(f[2], "80", "{s}");
        let t = f[3];
        assert!(t.ends_with(".n.sdnet."), "{s}");
        targets.extend(local(&d, &[t]).data("A"));
    }
    targets.sort();
    assert_eq!(targets, web, "SRV targets resolve to the tasks");
    // Their addresses come along in the additional section.
    let mut glue: Vec<String> = local(&d, &["_http._tcp.web.n.sdnet", "SRV"])
        .additional
        .iter()
        .filter(|r| r.rtype == "A")
        .map(|r| r.data.clone())
        .collect();
    glue.sort();
    assert_eq!(glue, web);
    assert_eq!(local(&d, &["-x", &vip]).data("PTR"), ["web.n.sdnet."]);

    // The apex: SOA and NS.
    let s0 = serial(&d);
    let ns = local(&d, &["sdnet", "NS"]);
    assert_eq!(ns.data("NS"), ["ns.sdnet."], "{}", ns.raw);

    // NXDOMAIN and NODATA, both with the SOA for negative caching.
    let r = local(&d, &["nope.n.sdnet"]);
    assert_eq!(r.status, "NXDOMAIN", "{}", r.raw);
    assert!(soa_authority(&r), "{}", r.raw);
    let r = local(&d, &["a.n.sdnet", "TXT"]);
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert!(r.answer.is_empty() && soa_authority(&r), "{}", r.raw);
    // A name with names below it exists (NODATA, not NXDOMAIN).
    let r = local(&d, &["n.sdnet"]);
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert!(r.answer.is_empty(), "{}", r.raw);
    // Outside the zone: refused.
    assert_eq!(local(&d, &["example.com"]).status, "REFUSED");

    // The default bridge (no embedded DNS inside, like Docker's) is served to the host.
    d.ok(&["run", "-d", "--name", "plain"]);
    assert_eq!(
        local(&d, &["plain.bridge.sdnet"]).data("A"),
        [d.ip("plain", "bridge")]
    );

    // Internal and --host-dns=false networks are not served.
    for name in ["b.int.sdnet", "c.hid.sdnet"] {
        let r = local(&d, &[name]);
        assert_eq!(r.status, "NXDOMAIN", "{name}: {}", r.raw);
    }
    assert_eq!(local(&d, &["-x", &d.ip("c", "hid")]).status, "REFUSED");

    // TCP and EDNS.
    let r = local(&d, &["+tcp", "a.n.sdnet"]);
    assert_eq!(r.data("A"), [a4.clone()], "{}", r.raw);
    let r = local(&d, &["+edns=0", "+bufsize=1232", "a.n.sdnet"]);
    assert!(r.opt, "{}", r.raw);
    assert_eq!(r.data("A"), [a4.clone()]);
    let r = local(&d, &["+noedns", "a.n.sdnet"]);
    assert!(!r.opt, "{}", r.raw);
    assert_eq!(r.data("A"), [a4.clone()]);
    let r = local(&d, &["+tcp", "+edns=0", "tasks.web.n.sdnet"]);
    assert!(r.opt, "{}", r.raw);
    assert_eq!(r.sorted("A"), web);

    // A new sandbox answers as soon as `run` returns, under a higher serial.
    d.ok(&["run", "-d", "--name", "late", "--network", "n"]);
    let r = local(&d, &["late.n.sdnet"]);
    assert_eq!(r.data("A"), [d.ip("late", "n")], "{}", r.raw);
    let s1 = serial(&d);
    assert!(s1 > s0, "serial {s0} → {s1}");
    // And is gone when `rm` returns.
    d.ok(&["rm", "-f", "late"]);
    assert_eq!(local(&d, &["late.n.sdnet"]).status, "NXDOMAIN");
    assert!(serial(&d) > s1);

    // AXFR: from loopback the whole zone between two SOAs; from elsewhere refused.
    let z = axfr(&d, "@127.0.0.1", "sdnet");
    let soas = z
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some("SOA"))
        .count();
    assert_eq!(soas, 2, "{z}");
    for want in [
        "a.n.sdnet.",
        "al.n.sdnet.",
        "web.n.sdnet.",
        "_http._tcp.web.n.sdnet.",
    ] {
        assert!(
            z.lines().any(|l| l.starts_with(want)),
            "{want} missing from the transfer:\n{z}"
        );
    }
    assert!(
        !z.contains("c.hid.sdnet") && !z.contains("b.int.sdnet"),
        "{z}"
    );
    // "Elsewhere": an address of the host that is not loopback (on a dummy link of the test's
    // namespace; the bridge's gateway is reachable from the bridge alone).
    d.ns.run_ok(
        "ip",
        &[
            "link", "add", "hzx0", "type", "veth", "peer", "name", "hzx1",
        ],
    );
    d.ns.run_ok("ip", &["addr", "add", "10.250.0.1/32", "dev", "hzx0"]);
    d.ns.run_ok("ip", &["link", "set", "hzx0", "up"]);
    d.ns.run_ok("ip", &["link", "set", "hzx1", "up"]);
    let gw = "10.250.0.1";
    let z = axfr(&d, &format!("@{gw}"), "sdnet");
    assert!(z.contains("Transfer failed"), "{z}");
    // IXFR: the whole zone (no increments kept) over TCP, under the same rule.
    let z = xfr(&d, "@127.0.0.1", "sdnet", "IXFR=1");
    assert!(z.lines().any(|l| l.starts_with("a.n.sdnet.")), "{z}");
    let z = xfr(&d, &format!("@{gw}"), "sdnet", "IXFR=1");
    assert!(z.contains("Transfer failed"), "{z}");
    // Over UDP, IXFR gets the current SOA (come over TCP).
    let z = xfr(&d, "@127.0.0.1", "sdnet", "IXFR=1 +notcp");
    let soas = z
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some("SOA"))
        .count();
    assert_eq!(soas, 1, "{z}");
    assert!(!z.contains("a.n.sdnet."), "{z}");
    assert!(d.log().contains("zone transfer refused"), "{}", d.log());
    // Ordinary queries from there are answered.
    assert_eq!(q(&d, &format!("@{gw}"), &["a.n.sdnet"]).data("A"), [a4]);
}

/// BIND as a secondary of `sdnet.`, in the daemon's namespace on 127.0.0.1:5454.
struct Secondary {
    pid: u32,
    log: std::path::PathBuf,
}

fn start_bind(ns: &Ns, dir: &Path) -> Secondary {
    let d = dir.join("bind");
    std::fs::create_dir_all(&d).unwrap();
    let log = d.join("named.log");
    let conf = d.join("named.conf");
    std::fs::write(
        &conf,
        format!(
            r#"options {{
    directory "{dir}";
    listen-on port 5454 {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    pid-file none;
    session-keyfile none;
    managed-keys-directory "{dir}";
    notify no;
}};
controls {{ }};
logging {{
    channel all {{ file "{log}"; print-time yes; severity info; }};
    category default {{ all; }};
}};
zone "sdnet" {{
    type secondary;
    primaries {{ 127.0.0.1 port {PORT}; }};
    file "{dir}/sdnet.db";
}};
"#,
            dir = d.display(),
            log = log.display(),
        ),
    )
    .unwrap();
    let conf_s = conf.display().to_string();
    let pid = ns.spawn(
        ns.cmd("/usr/sbin/named", &["-g", "-4", "-n", "1", "-c", &conf_s]),
        Some(&d.join("named.out")),
    );
    Secondary { pid, log }
}

fn bind_q(d: &Daemon, args: &[&str]) -> Option<Dig> {
    let mut a = vec!["+tries=1", "+time=1", "@127.0.0.1", "-p", "5454"];
    a.extend_from_slice(args);
    d.ns.try_dig(&a)
}

#[test]
fn bind_secondary_transfers_and_follows() {
    let d = Daemon::start_with(
        "hzbind",
        &[
            "--host-dns",
            "127.0.0.1:5353",
            "--host-dns-notify",
            "127.0.0.1:5454",
        ],
    );
    d.ok(&["network", "create", "--subnet", "10.92.1.0/24", "n"]);
    d.ok(&[
        "run",
        "-d",
        "--name",
        "a",
        "--network",
        "n",
        "--network-alias",
        "al",
    ]);
    d.ok(&[
        "services",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--network",
        "n",
        "--port",
        "http:80/tcp",
        "--",
        "sleep",
        "300",
    ]);
    // A zone past 64 KiB, which no single message holds: 1,500 aliases of 40 characters, on
    // 25 sandboxes (the API takes at most 64 aliases per network and sandbox).
    let aliases: Vec<String> = (0..1500).map(|i| format!("{i:040}")).collect();
    for (k, chunk) in aliases.chunks(60).enumerate() {
        let name = format!("big{k}");
        let mut run = vec!["run", "-d", "--name", name.as_str(), "--network", "n"];
        for a in chunk {
            run.extend(["--network-alias", a]);
        }
        d.ok(&run);
    }
    let a4 = d.ip("a", "n");
    let big = d.ip("big24", "n");
    let z = axfr(&d, "@127.0.0.1", "sdnet");
    let size = z
        .lines()
        .find(|l| l.starts_with(";; XFR size"))
        .unwrap_or_else(|| panic!("no transfer:\n{z}"));
    let messages: u32 = size
        .split("messages ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("{size}"));
    assert!(messages > 1, "{size}");
    let bytes: u32 = size
        .split("bytes ")
        .nth(1)
        .and_then(|r| r.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("{size}"));
    assert!(bytes > 65535, "{size}");
    let bind = start_bind(&d.ns, d.dir.path());
    let dump = |b: &Secondary| {
        format!(
            "{}\n{}",
            std::fs::read_to_string(&b.log).unwrap_or_default(),
            std::fs::read_to_string(b.log.with_file_name("named.out")).unwrap_or_default()
        )
    };
    // The first transfer.
    wait_for(Duration::from_secs(20), || {
        bind_q(&d, &["a.n.sdnet"]).filter(|r| r.data("A") == [a4.clone()])
    })
    .unwrap_or_else(|| panic!("BIND did not get the zone:\n{}", dump(&bind)));
    // It answers the same as the primary, authoritatively.
    for (name, t) in [
        ("a.n.sdnet", "A"),
        ("al.n.sdnet", "A"),
        ("web.n.sdnet", "A"),
        ("tasks.web.n.sdnet", "A"),
        ("_http._tcp.web.n.sdnet", "SRV"),
        ("sdnet", "SOA"),
    ] {
        let ours = local(&d, &[name, t]);
        let theirs = bind_q(&d, &[name, t]).expect("BIND answers");
        assert!(theirs.has_flag("aa"), "{}", theirs.raw);
        assert_eq!(ours.sorted(t), theirs.sorted(t), "{name} {t}");
    }
    assert_eq!(bind_q(&d, &["nope.n.sdnet"]).unwrap().status, "NXDOMAIN");
    let last = format!("{}.n.sdnet", aliases[1499]);
    assert_eq!(bind_q(&d, &[&last]).unwrap().data("A"), [big]);

    // A change: NOTIFY brings it to BIND (its refresh is minutes away).
    d.ok(&["run", "-d", "--name", "late", "--network", "n"]);
    let late = d.ip("late", "n");
    let s = serial(&d);
    wait_for(Duration::from_secs(15), || {
        bind_q(&d, &["late.n.sdnet"]).filter(|r| r.data("A") == [late.clone()])
    })
    .unwrap_or_else(|| panic!("BIND did not follow the change:\n{}", dump(&bind)));
    let theirs = bind_q(&d, &["sdnet", "SOA"]).unwrap();
    let their_serial: u64 = theirs.data("SOA")[0]
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert!(their_serial >= s, "{their_serial} < {s}");
    d.ns.stop(bind.pid);
}

/// With a cluster store every node serves the whole cluster's names: a sandbox on one node is
/// in the host zone of the others (and leaves it with its removal).
#[test]
fn every_node_serves_the_cluster() {
    let c = sdnet_tests::cluster::Cluster::start("hzcl", 2, &["--host-dns", "127.0.0.1:5353"]);
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    n0.ok(&["network", "create", "-d", "overlay", "--attachable", "ov"]);
    wait_for(Duration::from_secs(10), || {
        n1.ok(&["network", "ls"]).contains("ov").then_some(())
    })
    .expect("the overlay reaches n1");
    n0.ok(&["run", "-d", "--name", "far", "--network", "ov"]);
    n1.ok(&["run", "-d", "--name", "near", "--network", "ov"]);
    let far = n0.ip("far", "ov");
    let near = n1.ip("near", "ov");
    for (node, name, ip) in [(n1, "far", &far), (n0, "near", &near), (n1, "near", &near)] {
        let fqdn = format!("{name}.ov.sdnet");
        wait_for(Duration::from_secs(10), || {
            local(node, &[&fqdn]).data("A").contains(ip).then_some(())
        })
        .unwrap_or_else(|| panic!("{fqdn} not served by {}", node.ns.name));
    }
    assert_eq!(local(n1, &["-x", &far]).data("PTR"), ["far.ov.sdnet."]);
    n0.ok(&["rm", "-f", "far"]);
    wait_for(Duration::from_secs(10), || {
        (local(n1, &["far.ov.sdnet"]).status == "NXDOMAIN").then_some(())
    })
    .expect("far leaves n1's zone");
}

/// The serial never goes back, even across a restart after changes ran it ahead of the clock
/// (a secondary would ignore the zone until it expired).
#[test]
fn serial_rises_across_restarts() {
    let mut d = Daemon::start_with("hzser", &["--host-dns", "127.0.0.1:5353"]);
    for i in 0..40 {
        let subnet = format!("10.93.{i}.0/24");
        d.ok(&["network", "create", "--subnet", &subnet, &format!("s{i}")]);
    }
    let before = serial(&d);
    d.restart();
    let after = wait_for(Duration::from_secs(10), || {
        let r = local(&d, &["sdnet", "SOA"]);
        r.data("SOA").first().map(|s| {
            s.split_whitespace()
                .nth(2)
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0)
        })
    })
    .expect("the zone is served again");
    assert!(
        after > before,
        "serial {before} → {after} across the restart"
    );
    for i in 0..40 {
        d.ok(&["network", "rm", &format!("s{i}")]);
    }
}
