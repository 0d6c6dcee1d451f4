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
    let d = Daemon::start("cnib");
    let lease_dir = d.dir.path().join("leases");
    let conf = write(
        &d,
        "cn1.conflist",
        &bridge_conflist("cn1", "cnibr1", "10.231.0.0/24", &lease_dir, None),
    );
    d.ok(&[
        "network",
        "create",
        "-d",
        "cni",
        "--cni-conf",
        conf.to_str().unwrap(),
        "cn1",
    ]);
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
    d.ok(&[
        "network",
        "create",
        "-d",
        "cni",
        "--cni-conf",
        conf.to_str().unwrap(),
        "cn2",
    ]);
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
    d.ok(&[
        "network",
        "create",
        "-d",
        "cni",
        "--cni-conf",
        one.to_str().unwrap(),
        "one",
    ]);
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
    let d = Daemon::start("cnim");
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
    d.ok(&[
        "network",
        "create",
        "-d",
        "cni",
        "--cni-conf",
        conf.to_str().unwrap(),
        "cnmv",
    ]);
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
    d.ok(&["rm", "-f", "m1"]);
    d.ok(&["network", "rm", "cnmv"]);
    assert!(cached(&d).is_empty());
}
