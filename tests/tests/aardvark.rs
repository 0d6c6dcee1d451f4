//! `sdctl aardvark-dns` as Podman runs it: the real netavark sets up throw-away "containers"
//! (namespaces) on bridge networks in a throw-away "host" namespace and starts the DNS server
//! it is given with `-a`, as aardvark-dns's own test suite does; `dig` asks from the
//! containers. The same body runs against Debian's aardvark-dns (the baseline): both must
//! answer the same.
//!
//! Names forwarded out go to a dnsmasq on 127.0.0.1:53 inside the host namespace, set as every
//! network's DNS server, so nothing leaves the namespaces.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sdnet_tests::{Dig, Dnsmasq, Ns, TempDir, netns_id, require_root, sdctl, wait_for};

#[path = "aardvark/resolvconf.rs"]
mod resolvconf;

/// Debian's netavark (the CI path); `SDNET_NETAVARK=/path/to/netavark` tries another build
/// (with `SDNET_NETAVARK_FW=nftables` for 2.x).
fn netavark() -> String {
    std::env::var("SDNET_NETAVARK").unwrap_or_else(|_| "/usr/lib/podman/netavark".into())
}
const REAL_AARDVARK: &str = "/usr/lib/podman/aardvark-dns";

/// A netavark "host": its namespace, its config dir and the DNS binary it starts.
struct Host {
    ns: Ns,
    dir: TempDir,
    aardvark: PathBuf,
}

impl Host {
    fn new(aardvark: PathBuf) -> Host {
        require_root();
        Host {
            ns: Ns::new("avh"),
            dir: TempDir::new("avh"),
            aardvark,
        }
    }

    fn dns_dir(&self) -> PathBuf {
        self.dir.path().join("aardvark-dns")
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dns_dir().join("aardvark.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `netavark setup|teardown NS` with `json` on stdin, inside the host namespace.
    fn netavark(&self, verb: &str, ctr: &Ns, json: &str) {
        let mut c = self.ns.cmd(
            "timeout",
            &[
                "60",
                &netavark(),
                "--config",
                &self.dir.path().display().to_string(),
                "-a",
                &self.aardvark.display().to_string(),
                verb,
                &ctr.path().display().to_string(),
            ],
        );
        // netavark 1.4 knows iptables and firewalld only; its rules go to the host namespace,
        // which is ours.
        // (2.x has only nftables: `SDNET_NETAVARK_FW=nftables`.)
        let fw = std::env::var("SDNET_NETAVARK_FW").unwrap_or_else(|_| "iptables".into());
        c.env("NETAVARK_FW", fw)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("netavark");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(json.as_bytes()).expect("netavark stdin");
        }
        let out = child.wait_with_output().expect("netavark");
        assert!(
            out.status.success(),
            "netavark {verb} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        stop_server(&self.dns_dir(), &self.ns);
    }
}

/// Ends the DNS server whose pid file is in `dir`, if it runs in `ns` (so it is the one this
/// test started, never anything else).
fn stop_server(dir: &Path, ns: &Ns) {
    let Some(pid) = std::fs::read_to_string(dir.join("aardvark.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|p| p.display().to_string());
    if pid > 1 && theirs.is_some() && theirs == netns_id(&ns.path()) {
        // SAFETY: signalling the DNS server this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

struct Net {
    name: &'static str,
    /// The first three octets of its /24.
    prefix: &'static str,
    bridge: &'static str,
    internal: bool,
}

const A: Net = Net {
    name: "neta",
    prefix: "10.89.1",
    bridge: "avbra",
    internal: false,
};
const B: Net = Net {
    name: "netb",
    prefix: "10.89.2",
    bridge: "avbrb",
    internal: false,
};
const I: Net = Net {
    name: "neti",
    prefix: "10.89.3",
    bridge: "avbri",
    internal: true,
};

/// netavark's setup/teardown input for one container on `nets` (host part `host` on each).
fn options(id: &str, name: &str, nets: &[&Net], host: u8, aliases: &[&str]) -> String {
    let mut networks = serde_json::Map::new();
    let mut infos = serde_json::Map::new();
    for (i, n) in nets.iter().enumerate() {
        networks.insert(
            n.name.into(),
            serde_json::json!({
                "static_ips": [format!("{}.{host}", n.prefix)],
                "aliases": aliases,
                "interface_name": format!("eth{i}"),
            }),
        );
        infos.insert(
            n.name.into(),
            serde_json::json!({
                "name": n.name,
                "id": format!("{:x>64}", n.bridge),
                "driver": "bridge",
                "network_interface": n.bridge,
                "subnets": [{"subnet": format!("{}.0/24", n.prefix), "gateway": format!("{}.1", n.prefix)}],
                "ipv6_enabled": false,
                "internal": n.internal,
                "dns_enabled": true,
                "network_dns_servers": ["127.0.0.1"],
                "ipam_options": {"driver": "host-local"},
            }),
        );
    }
    serde_json::json!({
        "container_id": id,
        "container_name": name,
        "networks": networks,
        "network_info": infos,
    })
    .to_string()
}

fn id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn dig(ctr: &Ns, server: &str, args: &[&str]) -> Dig {
    let mut a = vec!["+tries=1", "+time=3", server];
    a.extend_from_slice(args);
    ctr.dig(&a)
}

fn a_records(ctr: &Ns, server: &str, name: &str) -> (String, Vec<String>) {
    let d = dig(ctr, server, &[name, "A"]);
    (d.status.clone(), d.sorted("A"))
}

/// Waits (bounded) until `name` has (or no longer has) an address for `ctr`.
fn settle(ctr: &Ns, server: &str, name: &str, present: bool) {
    let ok = wait_for(Duration::from_secs(10), || {
        let d = ctr.try_dig(&["+tries=1", "+time=1", server, name, "A"])?;
        (d.answer.is_empty() != present).then_some(())
    });
    assert!(
        ok.is_some(),
        "{name} still {}",
        if present { "missing" } else { "there" }
    );
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The whole scenario, against the DNS server at `aardvark`.
fn scenario(aardvark: PathBuf, ours: bool) {
    let host = Host::new(aardvark);
    let up = Dnsmasq::start(
        &host.ns,
        host.dir.path(),
        "127.0.0.1",
        53,
        &[
            "--host-record=outside.example,192.0.2.99",
            "--address=/nx.example/",
        ],
    );
    let (c1, c2, c3, c4) = (
        Ns::new("avc"),
        Ns::new("avc"),
        Ns::new("avc"),
        Ns::new("avc"),
    );
    let o1 = options(&id(1), "c1", &[&A], 2, &["web"]);
    let o2 = options(&id(2), "c2", &[&A, &B], 3, &[]);
    let o3 = options(&id(3), "c3", &[&B], 4, &[]);
    let o4 = options(&id(4), "c4", &[&I], 5, &[]);
    host.netavark("setup", &c1, &o1);
    host.netavark("setup", &c2, &o2);
    if ours {
        // The server runs: netavark wrote c2's lines, signalled and returned. c2's very first
        // query already gets its name (aardvark-dns 1.4 often answers NXDOMAIN here).
        let d = dig(&c2, "@10.89.1.1", &["c2", "A"]);
        assert_eq!(d.sorted("A"), ["10.89.1.3", "10.89.2.3"], "{}", d.raw);
    }
    host.netavark("setup", &c3, &o3);
    host.netavark("setup", &c4, &o4);
    let pid = host.pid().expect("the DNS server wrote its pid file");
    let (ga, gb, gi) = ("@10.89.1.1", "@10.89.2.1", "@10.89.3.1");
    // netavark signals a running server (SIGHUP) and returns without waiting for the reload:
    // the last container's name shows when every setup has been read.
    settle(&c4, gi, "c4", true);

    // One network: names and aliases, with and without the search domain, TTL 0.
    let d = dig(&c1, ga, &["c2", "A"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.sorted("A"), ["10.89.1.3"]);
    if ours {
        // TTL 0 as aardvark-dns 2.x (containers come and go); 1.4 still said 86400.
        assert!(d.answer.iter().all(|r| r.ttl == 0), "{}", d.raw);
    }
    assert_eq!(a_records(&c2, ga, "web.dns.podman").1, ["10.89.1.2"]);
    assert_eq!(a_records(&c2, ga, "C1").1, ["10.89.1.2"]);

    // Two networks: c2 sees both; a name on both answers both addresses.
    assert_eq!(a_records(&c2, gb, "c3").1, ["10.89.2.4"]);
    assert_eq!(a_records(&c2, ga, "c3").1, ["10.89.2.4"], "any listener");
    assert_eq!(
        a_records(&c1, ga, "c2").1,
        ["10.89.1.3"],
        "c1 shares only neta with c2"
    );
    assert_eq!(a_records(&c3, gb, "c2").1, ["10.89.2.3"]);
    assert_eq!(
        a_records(&c2, ga, "c2").1,
        ["10.89.1.3", "10.89.2.3"],
        "the union over every shared network"
    );

    // Isolation: c1 and c3 share no network; under the search domain that is NXDOMAIN and
    // never leaves; a bare name goes upstream (dnsmasq refuses names it does not know).
    let d = dig(&c1, ga, &["c3.dns.podman", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    assert_eq!(up.queries_for("c3.dns.podman"), 0);
    for (ctr, server, name) in [(&c1, ga, "c3"), (&c3, gb, "c1")] {
        // Refused upstream: aardvark-dns 1.4 may stay silent; either way no address.
        if let Some(d) = ctr.try_dig(&["+tries=1", "+time=3", server, name, "A"]) {
            assert!(d.answer.is_empty(), "{}", d.raw);
        }
    }

    // PTR: every name of the address, for containers that share the network.
    let d = dig(&c2, ga, &["-x", "10.89.1.2"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.sorted("PTR"), ["c1.", "web."]);
    assert_eq!(dig(&c3, gb, &["-x", "10.89.2.3"]).sorted("PTR"), ["c2."]);

    // Upstreams: the network's servers (dnsmasq in the host namespace).
    assert_eq!(
        a_records(&c1, ga, "outside.example"),
        ("NOERROR".into(), strings(&["192.0.2.99"]))
    );
    assert_eq!(a_records(&c3, gb, "nx.example").0, "NXDOMAIN");

    // Internal network: its own names answer. (netavark 1.4 does not mark internal networks
    // in the file name — `%int` came with 1.5 — so forwarding from them is tested with a
    // config directory written as netavark 2.x writes it, below.)
    assert_eq!(a_records(&c4, gi, "c4").1, ["10.89.3.5"]);
    assert!(dig(&c4, gi, &["c1", "A"]).answer.is_empty());

    if ours {
        // REFUSED from upstream is relayed as is. (aardvark-dns 1.4 turns it into SERVFAIL:
        // its resolver library treats REFUSED as a failed lookup; 2.x relays it as we do.)
        assert_eq!(a_records(&c1, ga, "refused.example").0, "REFUSED");
    }

    // Teardown: c1's names go at once; the server keeps serving the rest.
    host.netavark("teardown", &c1, &o1);
    // netavark 1.4 leaves the bridge's MAC address to the kernel, which takes the lowest of
    // its ports': c1's veth gone, it may change under c2's neighbour entry for the gateway.
    c2.run_ok("ip", &["neigh", "flush", "all"]);
    settle(&c2, ga, "c1.dns.podman", false);
    let d = dig(&c2, ga, &["c1.dns.podman", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    assert_eq!(a_records(&c2, ga, "c2").1, ["10.89.1.3", "10.89.2.3"]);
    // The last container of every network gone: the server removes its pid file and exits.
    host.netavark("teardown", &c2, &o2);
    host.netavark("teardown", &c3, &o3);
    host.netavark("teardown", &c4, &o4);
    let gone = wait_for(Duration::from_secs(10), || {
        // SAFETY: probing (signal 0) the server this test's netavark started.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false);
        (!alive).then_some(())
    });
    assert!(
        gone.is_some(),
        "the DNS server still runs after the last teardown"
    );
    assert!(!host.dns_dir().join("aardvark.pid").exists());
}

/// An `aardvark-dns` symlink to the sdctl under test (what Podman users install).
fn our_aardvark(dir: &Path) -> PathBuf {
    let link = dir.join("aardvark-dns");
    std::os::unix::fs::symlink(sdctl(), &link).expect("symlink");
    link
}

#[test]
fn netavark_with_sdctl_as_aardvark_dns() {
    let bin = TempDir::new("avbin");
    scenario(our_aardvark(bin.path()), true);
}

#[test]
fn netavark_with_real_aardvark_dns_baseline() {
    assert!(
        Path::new(REAL_AARDVARK).exists(),
        "{REAL_AARDVARK} missing: apt-get install aardvark-dns"
    );
    scenario(PathBuf::from(REAL_AARDVARK), false);
}

/// The command line netavark uses, started directly on a config directory written as
/// netavark 2.x writes it: the source address picks the container; an internal network
/// (`%int`) never forwards, whatever servers its lines name; container servers win over the
/// network's; a bind failure is reported by the parent (exit 1, the address named) and leaves
/// the running server's pid file alone; SIGHUP with no network left ends the server.
#[test]
fn config_dir_started_directly() {
    require_root();
    let ns = Ns::new("avb");
    let dir = TempDir::new("avb");
    struct Stop<'a>(&'a Path, &'a Ns);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            stop_server(self.0, self.1);
        }
    }
    let bin = TempDir::new("avbin");
    let exe = our_aardvark(bin.path());
    let up = Dnsmasq::start(
        &ns,
        dir.path(),
        "127.0.0.1",
        53,
        &["--host-record=outside.example,192.0.2.99"],
    );
    let up2 = Dnsmasq::start(
        &ns,
        dir.path(),
        "127.0.0.3",
        53,
        &["--host-record=outside.example,192.0.2.33"],
    );
    let cfg = dir.path().join("cfg");
    std::fs::create_dir(&cfg).unwrap();
    std::fs::write(
        cfg.join("neti%int"),
        "127.0.0.1 127.0.0.1\nAbC 127.0.0.5  Web 127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(
        cfg.join("netx"),
        "127.0.0.2 127.0.0.1\ndef 127.0.0.6  other\nfff 127.0.0.7  own 127.0.0.3\n",
    )
    .unwrap();
    std::fs::write(cfg.join("broken"), "127.0.0.9\nonly three fields\n").unwrap();
    let dir = TempDir(cfg);
    let run = || {
        ns.cmd(
            "timeout",
            &[
                "20",
                &exe.display().to_string(),
                "--config",
                &dir.path().display().to_string(),
                "-p",
                "5399",
                "run",
            ],
        )
        .output()
        .expect("aardvark-dns")
    };
    let _stop = Stop(dir.path(), &ns);
    let first = run();
    assert!(first.status.success(), "{first:?}");
    let pid: i32 = std::fs::read_to_string(dir.path().join("aardvark.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let second = run();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("failed to bind udp listener on 127.0.0.1:5399"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("aardvark.pid")).unwrap(),
        pid.to_string()
    );
    let ask = |src: &str, server: &str, name: &str| {
        ns.dig(&[
            "+tries=1", "+time=3", "-b", src, server, "-p", "5399", name, "A",
        ])
    };
    assert_eq!(
        ask("127.0.0.5", "@127.0.0.1", "web").sorted("A"),
        ["127.0.0.5"]
    );
    // Internal only: not forwarded (dnsmasq would know the name).
    let d = ask("127.0.0.5", "@127.0.0.1", "outside.example");
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    assert_eq!(up.queries_for("outside.example"), 0);
    // On netx: forwarded to the network's server; a container's own server wins.
    let d = ask("127.0.0.6", "@127.0.0.2", "outside.example");
    assert_eq!(d.sorted("A"), ["192.0.2.99"], "{}", d.raw);
    let d = ask("127.0.0.7", "@127.0.0.2", "outside.example");
    assert_eq!(d.sorted("A"), ["192.0.2.33"], "{}", d.raw);
    assert_eq!(up2.queries_for("outside.example"), 1);
    // No shared network: web is not other's, and an unknown source on netx's listener sees
    // netx's names.
    assert!(
        ask("127.0.0.6", "@127.0.0.2", "web.dns.podman")
            .answer
            .is_empty()
    );
    assert_eq!(
        ask("127.0.0.1", "@127.0.0.2", "own").sorted("A"),
        ["127.0.0.7"]
    );
    // The broken file is skipped, its listener never bound; the rest is served.
    assert!(
        ns.try_dig(&["+tries=1", "+time=1", "@127.0.0.9", "-p", "5399", "x"])
            .is_none()
    );
    // A file rewritten, no SIGHUP yet (netavark signals and returns without waiting): the
    // first query that misses already sees it.
    std::fs::remove_file(dir.path().join("netx")).unwrap();
    std::fs::write(
        dir.path().join("neti%int"),
        "127.0.0.1 127.0.0.1\nabc 127.0.0.5  web,www\n",
    )
    .unwrap();
    let d = ask("127.0.0.5", "@127.0.0.1", "www");
    assert_eq!(d.sorted("A"), ["127.0.0.5"], "{}", d.raw);
    // SIGHUP: listeners of removed networks stopped.
    // SAFETY: signalling the server this test started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let stopped = wait_for(Duration::from_secs(10), || {
        ns.try_dig(&["+tries=1", "+time=1", "@127.0.0.2", "-p", "5399", "own"])
            .is_none()
            .then_some(())
    });
    assert!(
        stopped.is_some(),
        "netx's listener still answers after SIGHUP"
    );
    // Everything removed + SIGHUP: the server exits and removes its pid file.
    std::fs::remove_file(dir.path().join("neti%int")).unwrap();
    std::fs::remove_file(dir.path().join("broken")).unwrap();
    // SAFETY: signalling the server this test started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let gone = wait_for(Duration::from_secs(10), || {
        (!dir.path().join("aardvark.pid").exists() && unsafe { libc::kill(pid, 0) } != 0)
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "server still running after its last network went"
    );
}
