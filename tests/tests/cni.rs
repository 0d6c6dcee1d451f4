//! `-d cni`: sandboxes attached by Debian's real containernetworking-plugins (bridge,
//! host-local, portmap, macvlan, static) run by the daemon, their addresses served by the
//! embedded DNS; failures that leave nothing behind; restarts that keep the endpoints.
//! Every daemon has its own namespace (so bridge names cannot collide) and host-local keeps
//! its leases in the test's temporary directory.

// `[ip.clone()]` reads better in an assertion than `slice::from_ref(&ip)`.
#![allow(clippy::cloned_ref_to_slice_refs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use sdnet_tests::{Daemon, Ns, ask_tcp, wait_for};

const PLUGINS: &str = "/usr/lib/cni";

/// A bridge + host-local (+ portmap) configuration list; leases under `leases`.
fn bridge_conflist(
    name: &str,
    bridge: &str,
    subnet: &str,
    leases: &Path,
    range: Option<(&str, &str)>,
) -> String {
    let range = match range {
        Some((a, b)) => format!(r#","rangeStart":"{a}","rangeEnd":"{b}""#),
        None => String::new(),
    };
    format!(
        r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[
        {{"type":"bridge","bridge":"{bridge}","isGateway":true,
          "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"{subnet}"{range}}}]],
                  "routes":[{{"dst":"0.0.0.0/0"}}]}}}},
        {{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#,
        leases.display()
    )
}

/// `network create -d cni --cni-conf CONF NAME`.
fn cni_network(d: &Daemon, conf: &Path, name: &str) {
    d.ok(&[
        "network",
        "create",
        "-d",
        "cni",
        "--cni-conf",
        conf.to_str().unwrap(),
        name,
    ]);
}

fn write(d: &Daemon, file: &str, text: &str) -> PathBuf {
    let p = d.dir.path().join(file);
    std::fs::write(&p, text).unwrap();
    p
}

/// The addresses host-local has leased on network `name` (its files named by address).
fn leases(dir: &Path, name: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join(name))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits (60 s at most: a loaded machine runs plugins slowly) until host-local's leases on `name` are `want`: DEL runs in the
/// background part of a removal.
fn leases_become(dir: &Path, name: &str, want: &[String]) -> bool {
    wait_for(Duration::from_secs(60), || {
        (leases(dir, name) == want).then_some(())
    })
    .is_some()
}

/// The CNI driver's cache records.
fn cached(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(d.dir.path().join("state").join("cni"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// veth host ends in the daemon's namespace (the bridge plugin's).
fn veths(ns: &Ns) -> Vec<String> {
    ns.run_ok("ip", &["-o", "link", "show", "type", "veth"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn names(d: &Daemon) -> Vec<String> {
    d.try_ps()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn bridge_host_local_portmap_names_traffic_ports_and_nothing_left() {
    let mut d = Daemon::start_with("cnib", &["--resync-interval", "1s"]);
    let lease_dir = d.dir.path().join("leases");
    let conf = write(
        &d,
        "cn1.conflist",
        &bridge_conflist("cn1", "cnibr1", "10.231.0.0/24", &lease_dir, None),
    );
    cni_network(&d, &conf, "cn1");
    // The configuration is stored, not the path: the file may go.
    std::fs::remove_file(&conf).unwrap();
    let net = d.ok(&["network", "inspect", "cn1"]);
    assert!(net.contains("\"driver\": \"cni\""), "{net}");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "alpha",
        "--network",
        "cn1",
        "-p",
        "8080:80",
        "--",
        "socat",
        "TCP-LISTEN:80,fork,reuseaddr",
        "SYSTEM:echo alpha saw $SOCAT_PEERADDR",
    ]);
    d.ok(&["run", "-d", "--name", "beta", "--network", "cn1"]);
    let (ia, ib) = (d.ip("alpha", "cn1"), d.ip("beta", "cn1"));
    assert!(
        ia.starts_with("10.231.0.") && ib.starts_with("10.231.0."),
        "{ia} {ib}"
    );
    assert_ne!(ia, ib);
    // The addresses are host-local's leases and sit on the sandboxes' eth0.
    let mut want = vec![ia.clone(), ib.clone()];
    want.sort();
    assert_eq!(leases(&lease_dir, "cn1"), want);
    let addr = d.exec_ok("alpha", &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains(&format!("{ia}/24")), "{addr}");

    // Names answer with the plugins' addresses, right after `run` returned.
    let got = d.dig("beta", &["@127.0.0.11", "alpha"]);
    assert_eq!(got.data("A"), [ia.clone()], "{got:?}\n{}", d.log());
    assert_eq!(
        d.dig("alpha", &["@127.0.0.11", "beta.cn1"]).data("A"),
        [ib.clone()]
    );
    // TCP between the two, by name.
    let up = wait_for(Duration::from_secs(60), || {
        let out = d.exec(
            "beta",
            &["socat", "-T2", "-", "TCP:alpha:80,connect-timeout=2"],
        );
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.starts_with("alpha saw").then_some(s)
    })
    .expect("beta reaches alpha by name");
    assert_eq!(up.trim(), format!("alpha saw {ib}"));
    // The published port (portmap) from the daemon's namespace, to its bridge address.
    let r = ask_tcp(&d.ns, "10.231.0.1:8080");
    assert!(r.starts_with("alpha saw"), "published port: {r:?}");

    // Healthy endpoints are CHECKed and not repaired. beta passes; alpha passes too with a
    // portmap whose CHECK is right — Debian's 1.1.1 fails an endpoint with published ports
    // and no IPv6 address (containernetworking/plugins#819): such a failure, right after
    // the ADD, is shown but not "repaired" over and over.
    let checked = wait_for(Duration::from_secs(30), || {
        (last_check(&d, "cn1", "beta")["result"] == "passed"
            && last_check(&d, "cn1", "alpha")["result"].is_string())
        .then_some(())
    });
    assert!(checked.is_some(), "{}", d.log());
    std::thread::sleep(Duration::from_secs(3)); // three more passes
    let a = last_check(&d, "cn1", "alpha");
    assert_eq!(a["repairs"], 0, "{a}");
    assert!(a.get("broken").is_none(), "{a}");
    if a["result"] != "passed" {
        assert_eq!(a["result"], "failed", "{a}");
        assert!(a["message"].as_str().unwrap().contains("portmap"), "{a}");
    }
    assert_eq!(d.log().matches("CNI ADD").count(), 2, "{}", d.log());
    // Nor by a restarted daemon: such a failure is kept with the endpoint's cached record.
    d.kill9_and_restart();
    let checked = wait_for(Duration::from_secs(30), || {
        last_check(&d, "cn1", "alpha")["result"]
            .is_string()
            .then_some(())
    });
    assert!(checked.is_some(), "{}", d.log());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(last_check(&d, "cn1", "alpha")["repairs"], 0);
    assert_eq!(d.log().matches("CNI ADD").count(), 2, "{}", d.log());

    // rm: DEL ran (lease, veth, portmap's chain and the cache record gone).
    assert_eq!(veths(&d.ns).len(), 2);
    assert!(
        d.ns.run_ok("iptables-save", &["-t", "nat"])
            .contains("CNI-DN-")
    );
    d.ok(&["rm", "-f", "alpha"]);
    assert!(
        leases_become(&lease_dir, "cn1", &[ib.clone()]),
        "{:?}\n{}",
        leases(&lease_dir, "cn1"),
        d.log()
    );
    let gone = wait_for(Duration::from_secs(60), || {
        (veths(&d.ns).len() == 1 && cached(&d).len() == 1).then_some(())
    });
    assert!(gone.is_some(), "{:?} {:?}", veths(&d.ns), cached(&d));
    assert!(
        !d.ns
            .run_ok("iptables-save", &["-t", "nat"])
            .contains("CNI-DN-")
    );
    assert_eq!(ask_tcp(&d.ns, "10.231.0.1:8080"), "");
    d.ok(&["rm", "-f", "beta"]);
    d.ok(&["network", "rm", "cn1"]);
    assert!(leases_become(&lease_dir, "cn1", &[]));
    let gone = wait_for(Duration::from_secs(60), || {
        (veths(&d.ns).is_empty() && cached(&d).is_empty()).then_some(())
    });
    assert!(gone.is_some(), "{:?} {:?}", veths(&d.ns), cached(&d));
}

#[test]
fn restart_keeps_cni_endpoints_and_rm_after_restart_dels() {
    let mut d = Daemon::start("cnir");
    let lease_dir = d.dir.path().join("leases");
    let conf = write(
        &d,
        "cn2.conflist",
        &bridge_conflist("cn2", "cnibr2", "10.232.0.0/24", &lease_dir, None),
    );
    cni_network(&d, &conf, "cn2");
    d.ok(&["run", "-d", "--name", "r1", "--network", "cn2"]);
    let ip = d.ip("r1", "cn2");
    let adds = |d: &Daemon| d.log().matches("CNI ADD").count();
    assert_eq!(adds(&d), 1);
    d.kill9_and_restart();
    // Same address, no second ADD; a sandbox made after the restart finds it by name.
    assert_eq!(d.ip("r1", "cn2"), ip);
    d.ok(&["run", "-d", "--name", "r2", "--network", "cn2"]);
    assert_eq!(d.dig("r2", &["@127.0.0.11", "r1"]).data("A"), [ip.clone()]);
    assert_eq!(adds(&d), 2, "{}", d.log());
    assert_eq!(leases(&lease_dir, "cn2").len(), 2);
    // rm after the restart still runs DEL (from the cached result).
    d.ok(&["rm", "-f", "r1"]);
    let r2 = d.ip("r2", "cn2");
    assert!(
        leases_become(&lease_dir, "cn2", &[r2]),
        "{:?}",
        leases(&lease_dir, "cn2")
    );
    d.kill9_and_restart();
    d.ok(&["rm", "-f", "r2"]);
    assert!(leases_become(&lease_dir, "cn2", &[]));
    // --cleanup DELs what is cached (the store keeps the sandbox for the next start).
    d.ok(&["run", "-d", "--name", "r3", "--network", "cn2"]);
    assert_eq!(leases(&lease_dir, "cn2").len(), 1);
    d.stop_and_cleanup();
    assert!(leases(&lease_dir, "cn2").is_empty());
    assert!(cached(&d).is_empty());
}

#[test]
fn unknown_plugins_and_failing_plugins_leave_nothing_behind() {
    let bin = sdnet_tests::TempDir::new("cnibin");
    for p in ["bridge", "host-local", "portmap"] {
        std::os::unix::fs::symlink(Path::new(PLUGINS).join(p), bin.path().join(p)).unwrap();
    }
    let d = Daemon::start_with("cnif", &["--cni-bin-dir", bin.path().to_str().unwrap()]);
    let lease_dir = d.dir.path().join("leases");
    let bindir = bin.path().display().to_string();

    // An unknown plugin type: refused at create, naming the plugin and the directory.
    let bad = write(
        &d,
        "bad.conf",
        r#"{"cniVersion":"1.0.0","name":"bad","type":"nosuchplugin"}"#,
    );
    let err = d.fails(&[
        "network",
        "create",
        "-d",
        "cni",
        "--cni-conf",
        bad.to_str().unwrap(),
        "bad",
    ]);
    assert!(
        err.contains("nosuchplugin") && err.contains(&bindir),
        "{err}"
    );
    assert!(
        d.fails(&["network", "inspect", "bad"])
            .contains("not found")
    );
    // A configuration named in a directory: found by its name, or a clear error.
    let confdir = d.dir.path().join("confs");
    std::fs::create_dir(&confdir).unwrap();
    std::fs::write(
        confdir.join("10-cn3.conflist"),
        bridge_conflist("cn3", "cnibr3", "10.233.0.0/24", &lease_dir, None),
    )
    .unwrap();
    let err = d.fails(&[
        "network",
        "create",
        "-d",
        "cni",
        "--cni-conf-dir",
        confdir.to_str().unwrap(),
        "other",
    ]);
    assert!(
        err.contains("no CNI configuration named \"other\""),
        "{err}"
    );
    d.ok(&[
        "network",
        "create",
        "-d",
        "cni",
        "--cni-conf-dir",
        confdir.to_str().unwrap(),
        "cn3",
    ]);

    // A plugin that went missing after the create: the ADD fails at portmap, after bridge
    // and host-local succeeded; DEL undoes them (no lease, no veth, no sandbox, no namespace).
    std::fs::remove_file(bin.path().join("portmap")).unwrap();
    let err = d.fails(&["run", "-d", "--name", "x", "--network", "cn3"]);
    assert!(err.contains("portmap") && err.contains(&bindir), "{err}");
    assert!(leases(&lease_dir, "cn3").is_empty());
    assert!(veths(&d.ns).is_empty(), "{:?}", veths(&d.ns));
    assert!(cached(&d).is_empty());
    assert!(!names(&d).contains(&"x".to_string()));
    assert!(d.netns_mounts().is_empty(), "{:?}", d.netns_mounts());
    std::os::unix::fs::symlink(
        Path::new(PLUGINS).join("portmap"),
        bin.path().join("portmap"),
    )
    .unwrap();

    // A plugin returning an error: host-local with a range of one address, exhausted.
    let one = write(
        &d,
        "one.conflist",
        &bridge_conflist(
            "one",
            "cnibr4",
            "10.233.1.0/24",
            &lease_dir,
            Some(("10.233.1.10", "10.233.1.10")),
        ),
    );
    cni_network(&d, &one, "one");
    d.ok(&["run", "-d", "--name", "o1", "--network", "one"]);
    assert_eq!(d.ip("o1", "one"), "10.233.1.10");
    let err = d.fails(&["run", "-d", "--name", "o2", "--network", "one"]);
    assert!(err.contains("no IP addresses available"), "{err}");
    assert!(err.contains("CNI plugin bridge ADD failed"), "{err}");
    assert_eq!(leases(&lease_dir, "one"), ["10.233.1.10"]);
    assert_eq!(veths(&d.ns).len(), 1, "{:?}", veths(&d.ns));
    assert_eq!(cached(&d).len(), 1);
    assert!(!names(&d).contains(&"o2".to_string()));
    // Our IPAM flags are refused on a CNI network.
    let err = d.fails(&[
        "network",
        "create",
        "-d",
        "cni",
        "--cni-conf",
        one.to_str().unwrap(),
        "--subnet",
        "10.233.2.0/24",
        "one2",
    ]);
    assert!(err.contains("CNI plugins' business"), "{err}");
}

#[test]
fn macvlan_with_static_ipam_gets_the_configured_address() {
    let d = Daemon::start_with("cnim", &["--resync-interval", "1s"]);
    let nb = Ns::new("cnimnb");
    d.ns.run_ok(
        "ip",
        &[
            "link", "add", "up0", "type", "veth", "peer", "name", "nb0", "netns", &nb.name,
        ],
    );
    d.ns.run_ok("ip", &["link", "set", "up0", "up"]);
    nb.run_ok("ip", &["addr", "add", "192.168.234.50/24", "dev", "nb0"]);
    nb.run_ok("ip", &["link", "set", "nb0", "up"]);
    let conf = write(
        &d,
        "mv.conf",
        r#"{"cniVersion":"1.0.0","name":"cnmv","type":"macvlan","master":"up0","mode":"bridge",
            "ipam":{"type":"static","addresses":[{"address":"192.168.234.20/24"}]}}"#,
    );
    cni_network(&d, &conf, "cnmv");
    d.ok(&["run", "-d", "--name", "m1", "--network", "cnmv"]);
    assert_eq!(d.ip("m1", "cnmv"), "192.168.234.20");
    let link = d.exec_ok("m1", &["ip", "-d", "link", "show", "eth0"]);
    assert!(link.contains("macvlan"), "{link}");
    // The neighbour on the parent's segment answers, and the name answers in the sandbox.
    let ping = d.exec("m1", &["ping", "-c1", "-W2", "192.168.234.50"]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert_eq!(
        d.dig("m1", &["@127.0.0.11", "m1"]).data("A"),
        ["192.168.234.20"]
    );
    // A healthy macvlan endpoint passes CHECK (no repair).
    let passed = wait_for(Duration::from_secs(30), || {
        (last_check(&d, "cnmv", "m1")["result"] == "passed").then_some(())
    });
    assert!(passed.is_some(), "{}", d.log());
    assert_eq!(last_check(&d, "cnmv", "m1")["repairs"], 0);
    d.ok(&["rm", "-f", "m1"]);
    d.ok(&["network", "rm", "cnmv"]);
    assert!(cached(&d).is_empty());
}

/// A plugin directory of wrappers around the real plugins: each call is logged (`COMMAND
/// plugin container-id`) before the real plugin runs with the same environment and stdin.
/// While the file `fail-add` exists in the directory, the bridge wrapper refuses ADD with a
/// CNI error (a repair that cannot succeed).
fn logging_plugins(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let log = dir.join("calls.log");
    let flag = dir.join("fail-add");
    for p in ["bridge", "host-local", "portmap"] {
        let refuse = if p == "bridge" {
            format!(
                "if [ \"$CNI_COMMAND\" = ADD ] && [ -e {} ]; then\n  \
                 echo '{{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"test: ADD refused\"}}'\n  \
                 exit 1\nfi\n",
                flag.display()
            )
        } else {
            String::new()
        };
        let script = format!(
            "#!/bin/sh\necho \"$CNI_COMMAND {p} $CNI_CONTAINERID\" >> {}\n{refuse}exec {PLUGINS}/{p}\n",
            log.display()
        );
        let f = dir.join(p);
        std::fs::write(&f, script).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// The plugin calls logged so far for a container: `COMMAND plugin` each.
fn calls(dir: &Path, container: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_suffix(&format!(" {container}")))
        .map(str::to_string)
        .collect()
}

/// An endpoint's last CNI check as `network inspect` shows it (Null before one).
fn last_check(d: &Daemon, net: &str, sandbox: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&d.ok(&["network", "inspect", net])).expect("inspect JSON");
    v[0]["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["sandbox"] == sandbox))
        .map(|e| e["cni_check"].clone())
        .unwrap_or_default()
}

/// Whether the sandbox has its interface `eth0` with `ip` on it.
fn has_address(d: &Daemon, sandbox: &str, ip: &str) -> bool {
    let out = d.exec(sandbox, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&format!("{ip}/"))
}

fn id_of(d: &Daemon, sandbox: &str) -> String {
    d.inspect(sandbox)["id"].as_str().unwrap().to_string()
}

/// `sbx` answers with its name over TCP port 80 (socat), reached from `from` by name.
fn reaches(d: &Daemon, from: &str, to: &str) -> bool {
    wait_for(Duration::from_secs(20), || {
        let out = d.exec(
            from,
            &[
                "socat",
                "-T2",
                "-",
                &format!("TCP:{to}:80,connect-timeout=2"),
            ],
        );
        String::from_utf8_lossy(&out.stdout)
            .starts_with(&format!("{to}-here"))
            .then_some(())
    })
    .is_some()
}

fn server(d: &Daemon, name: &str, net: &str) {
    d.ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        net,
        "--",
        "socat",
        "TCP-LISTEN:80,fork,reuseaddr",
        &format!("SYSTEM:echo {name}-here"),
    ]);
}

#[test]
fn check_finds_endpoints_broken_from_outside_and_repairs_them() {
    let bin = sdnet_tests::TempDir::new("cnikbin");
    logging_plugins(bin.path());
    let d = Daemon::start_with(
        "cnik",
        &[
            "--cni-bin-dir",
            bin.path().to_str().unwrap(),
            "--resync-interval",
            "1s",
        ],
    );
    let lease_dir = d.dir.path().join("leases");
    // ck1's bridge takes the `ips` capability (a repair keeps the address); ck2's does not
    // (a repair takes a new one); ck3 turns CHECK off.
    let ck1 = bridge_conflist("ck1", "cnibr5", "10.235.0.0/24", &lease_dir, None).replace(
        r#""type":"bridge","#,
        r#""type":"bridge","capabilities":{"ips":true},"#,
    );
    let ck2 = bridge_conflist("ck2", "cnibr6", "10.236.0.0/24", &lease_dir, None);
    let ck3 = bridge_conflist("ck3", "cnibr7", "10.237.0.0/24", &lease_dir, None)
        .replace(r#""name":"ck3","#, r#""name":"ck3","disableCheck":true,"#);
    for (name, text) in [("ck1", &ck1), ("ck2", &ck2), ("ck3", &ck3)] {
        let conf = write(&d, &format!("{name}.conflist"), text);
        cni_network(&d, &conf, name);
    }
    server(&d, "a1", "ck1");
    d.ok(&["run", "-d", "--name", "a2", "--network", "ck1"]);
    server(&d, "b1", "ck2");
    server(&d, "b2", "ck2");
    d.ok(&["run", "-d", "--name", "c1", "--network", "ck3"]);
    let (a1, b1, b2, c1) = (
        id_of(&d, "a1"),
        id_of(&d, "b1"),
        id_of(&d, "b2"),
        id_of(&d, "c1"),
    );
    let (ip_a1, ip_a2) = (d.ip("a1", "ck1"), d.ip("a2", "ck1"));
    let (ip_b1, ip_b2) = (d.ip("b1", "ck2"), d.ip("b2", "ck2"));
    assert!(reaches(&d, "a2", "a1") && reaches(&d, "b2", "b1"));
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let ok = wait_for(Duration::from_secs(60), || f().then_some(()));
        assert!(
            ok.is_some(),
            "{what}\n--- plugin calls ---\n{}\n--- daemon log ---\n{}",
            std::fs::read_to_string(bin.path().join("calls.log")).unwrap_or_default(),
            d.log()
        );
    };

    // Full passes CHECK every endpoint: each plugin of the list, the IPAM plugin too.
    wait("a1 and b1 checked", &|| {
        last_check(&d, "ck1", "a1")["result"] == "passed"
            && last_check(&d, "ck2", "b1")["result"] == "passed"
    });
    let a1_calls = calls(bin.path(), &a1);
    for c in ["CHECK bridge", "CHECK host-local", "CHECK portmap"] {
        assert!(a1_calls.iter().any(|x| x == c), "{c} in {a1_calls:?}");
    }
    // disableCheck: never a CHECK, and inspect says why.
    wait("c1's check skipped", &|| {
        last_check(&d, "ck3", "c1")["result"] == "skipped"
    });
    let c = last_check(&d, "ck3", "c1");
    assert!(
        c["message"].as_str().unwrap().contains("disableCheck"),
        "{c}"
    );
    assert!(
        !calls(bin.path(), &c1)
            .iter()
            .any(|x| x.starts_with("CHECK")),
        "{:?}",
        calls(bin.path(), &c1)
    );

    // (a) a1's interface deleted inside its namespace: CHECK fails, DEL + ADD repair it,
    // with the address it had (the `ips` capability).
    let del = std::process::Command::new("nsenter")
        .arg(format!("--net={}", d.netns_path("a1").display()))
        .args(["ip", "link", "del", "eth0"])
        .output()
        .unwrap();
    assert!(del.status.success(), "{del:?}");
    wait("a1 repaired", &|| {
        last_check(&d, "ck1", "a1")["repairs"] == 1 && has_address(&d, "a1", &ip_a1)
    });
    let log = d.log();
    assert!(
        log.contains("CNI CHECK failed") && log.contains("CNI plugin bridge CHECK failed"),
        "{log}"
    );
    let a1_calls = calls(bin.path(), &a1);
    let failed_at = a1_calls
        .iter()
        .rposition(|x| x == "DEL bridge")
        .expect("DEL after the failed CHECK");
    assert!(
        a1_calls[failed_at..].iter().any(|x| x == "ADD bridge"),
        "{a1_calls:?}"
    );
    assert_eq!(d.ip("a1", "ck1"), ip_a1);
    assert_eq!(
        d.dig("a2", &["@127.0.0.11", "a1"]).data("A"),
        [ip_a1.clone()]
    );
    // (Also at once: the repair announces the kept address with the new MAC.)
    assert!(reaches(&d, "a2", "a1"), "a2 reaches a1 again\n{}", d.log());
    d.exec_ok("a2", &["ping", "-c1", "-W2", &ip_a1]);
    let mut want = vec![ip_a1.clone(), ip_a2.clone()];
    want.sort();
    assert_eq!(leases(&lease_dir, "ck1"), want, "no lease leaked");

    // (b) b1's veth deleted on the host side (its pair goes with it): repaired with a new
    // address (no `ips` capability), which the store and DNS follow.
    let host = d.links();
    let inside = d.links_in(&d.netns_path("b1")).expect("b1's links");
    let peer = inside
        .iter()
        .find(|l| l.name == "eth0")
        .and_then(|l| l.peer)
        .expect("b1's eth0 is a veth");
    let veth = &host
        .iter()
        .find(|l| l.index == peer)
        .expect("host end")
        .name;
    d.ns.run_ok("ip", &["link", "del", veth]);
    wait("b1 repaired", &|| {
        last_check(&d, "ck2", "b1")["repairs"] == 1
    });
    let b1_calls = calls(bin.path(), &b1);
    let last_del = b1_calls.iter().rposition(|x| x == "DEL bridge");
    assert!(
        last_del.is_some_and(|i| b1_calls[..i].iter().any(|x| x == "CHECK bridge")
            && b1_calls[i..].iter().any(|x| x == "ADD bridge")),
        "CHECK, then DEL and ADD: {b1_calls:?}"
    );
    let new_b1 = d.ip("b1", "ck2");
    assert_ne!(new_b1, ip_b1, "host-local gave the next address");
    assert!(has_address(&d, "b1", &new_b1));
    wait("b2 resolves b1's new address", &|| {
        d.dig("b2", &["@127.0.0.11", "b1"]).data("A") == [new_b1.clone()]
    });
    assert!(reaches(&d, "b2", "b1"), "b2 reaches b1 at its new address");
    let mut want = vec![new_b1.clone(), ip_b2.clone()];
    want.sort();
    assert_eq!(
        leases(&lease_dir, "ck2"),
        want,
        "the old lease was released"
    );

    // (c) A repair that fails (ADD refused) leaves the endpoint broken — shown, nothing
    // leaked — and the next passes try again until it succeeds.
    std::fs::write(bin.path().join("fail-add"), "").unwrap();
    let del = std::process::Command::new("nsenter")
        .arg(format!("--net={}", d.netns_path("b2").display()))
        .args(["ip", "link", "del", "eth0"])
        .output()
        .unwrap();
    assert!(del.status.success(), "{del:?}");
    wait("b2's repair failed", &|| {
        last_check(&d, "ck2", "b2")["broken"]
            .as_str()
            .is_some_and(|b| b.contains("test: ADD refused"))
    });
    assert_eq!(
        leases(&lease_dir, "ck2"),
        [new_b1.clone()],
        "b2's lease released"
    );
    assert_eq!(cached(&d).len(), 4, "{:?}", cached(&d));
    let b2_adds = || {
        calls(bin.path(), &b2)
            .iter()
            .filter(|x| *x == "ADD bridge")
            .count()
    };
    let tried = b2_adds();
    wait("b2's repair tried again", &|| b2_adds() > tried);
    std::fs::remove_file(bin.path().join("fail-add")).unwrap();
    wait("b2 repaired", &|| {
        let c = last_check(&d, "ck2", "b2");
        c["repairs"] == 1 && c.get("broken").is_none_or(|b| b.is_null())
    });
    let new_b2 = d.ip("b2", "ck2");
    assert!(has_address(&d, "b2", &new_b2));
    wait("b1 resolves b2", &|| {
        d.dig("b1", &["@127.0.0.11", "b2"]).data("A") == [new_b2.clone()]
    });
    assert!(reaches(&d, "b1", "b2"));
    assert_eq!(leases(&lease_dir, "ck2").len(), 2);
    assert_eq!(cached(&d).len(), 5);
    // One repair each: the repaired endpoints pass their CHECKs again.
    wait("a1 passes again", &|| {
        last_check(&d, "ck1", "a1")["result"] == "passed"
    });
    assert_eq!(last_check(&d, "ck1", "a1")["repairs"], 1);
    assert_eq!(last_check(&d, "ck1", "a2")["repairs"], 0);
}
