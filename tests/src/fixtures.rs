//! Peers for the code under test: dnsmasq upstreams, one-line fixture upstreams (fixed
//! rcode, silence), a "remote" host wired to a daemon's namespace, whoami TCP servers and
//! clients, and helper binaries built next to `sdctl`.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Daemon, Ns, run_ok, sdctl, unique, wait_for};

/// A dnsmasq running in a namespace, with its query log.
pub struct Dnsmasq {
    pub addr: String,
    pub port: u16,
    pub pid: u32,
    pub log: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq on `addr:port` with `extra` options (e.g. `--host-record=…`), waits until
    /// it answers.
    pub fn start(ns: &Ns, dir: &Path, addr: &str, port: u16, extra: &[&str]) -> Dnsmasq {
        let log = dir.join(format!("dnsmasq-{addr}-{port}.log"));
        let mut args: Vec<String> = vec![
            "-k".into(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            format!("--listen-address={addr}"),
            "--bind-interfaces".into(),
            format!("--port={port}"),
            "--pid-file=".into(),
            "--log-queries".into(),
            format!("--log-facility={}", log.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let pid = ns.spawn(ns.cmd("dnsmasq", &argv), None);
        let p = port.to_string();
        wait_for(Duration::from_secs(10), || {
            let out = ns.run(
                "dig",
                &[
                    "+tries=1",
                    "+time=1",
                    &format!("@{addr}"),
                    "-p",
                    &p,
                    "probe.invalid",
                ],
            );
            String::from_utf8_lossy(&out.stdout)
                .contains("status:")
                .then_some(())
        })
        .expect("dnsmasq did not start");
        Dnsmasq {
            addr: addr.into(),
            port,
            pid,
            log,
        }
    }

    /// How many queries for `name` dnsmasq has logged.
    pub fn queries_for(&self, name: &str) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("query[") && l.contains(&format!(" {name} ")))
            .count()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling a process this test started.
        unsafe { libc::kill(self.pid as i32, sig) };
    }
}

/// A fixture upstream answering every query with one rcode (e.g. SERVFAIL = 2), on a socket
/// bound inside the namespace. Runs until the process ends (sockets die with the test).
pub fn fixed_rcode_upstream(ns: &Ns, addr: &str, rcode: u8) -> SocketAddr {
    let sock = ns.udp(addr);
    let local = sock.local_addr().expect("local addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            let mut r = buf[..n].to_vec();
            r[2] |= 0x80;
            r[3] = (r[3] & 0xF0) | 0x80 | rcode;
            let _ = sock.send_to(&r, from);
        }
    });
    local
}

/// A fixture upstream that never answers (a black hole: queries time out).
pub fn silent_upstream(ns: &Ns, addr: &str) -> (UdpSocket, SocketAddr) {
    let sock = ns.udp(addr);
    let local = sock.local_addr().expect("local addr");
    (sock, local)
}

/// A "remote" host: a namespace wired to the daemon's namespace by a veth pair on
/// 192.0.2.0/24 (host .1, remote .2), so egress and published ports can be tested.
pub struct Remote {
    pub ns: Ns,
    pub host_ip: &'static str,
    pub ip: &'static str,
}

impl Remote {
    pub fn attach(d: &Daemon) -> Remote {
        let ns = Ns::new("rem");
        let tag = unique();
        let a = format!("rh{tag}");
        let b = format!("rr{tag}");
        run_ok(Command::new("ip").args([
            "link", "add", &a, "netns", &d.ns.name, "type", "veth", "peer", "name", &b, "netns",
            &ns.name,
        ]));
        d.ns.run_ok("ip", &["addr", "add", "192.0.2.1/24", "dev", &a]);
        d.ns.run_ok("ip", &["link", "set", &a, "up"]);
        ns.run_ok("ip", &["addr", "add", "192.0.2.2/24", "dev", &b]);
        ns.run_ok("ip", &["link", "set", &b, "up"]);
        Remote {
            ns,
            host_ip: "192.0.2.1",
            ip: "192.0.2.2",
        }
    }
}

/// A TCP server (socat) that answers every connection with "<tag> saw <peer address>".
pub fn serve_whoami(ns: &Ns, port: u16, tag: &str) -> u32 {
    let listen = format!("TCP-LISTEN:{port},fork,reuseaddr");
    let reply = format!("SYSTEM:echo {tag} saw $SOCAT_PEERADDR");
    let pid = ns.spawn(ns.cmd("socat", &[&listen, &reply]), None);
    std::thread::sleep(Duration::from_millis(200));
    pid
}

/// Connects with socat and returns the first line the server sent ("" on failure).
pub fn ask_tcp(ns: &Ns, addr: &str) -> String {
    let out = ns.run(
        "socat",
        &["-T2", "-", &format!("TCP:{addr},connect-timeout=2")],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// A helper binary built next to sdctl (e.g. `whoami-server`).
pub fn helper_bin(name: &str) -> PathBuf {
    let bin = sdctl().with_file_name(name);
    assert!(
        bin.exists(),
        "{} not found: build the tests crate's binaries",
        bin.display()
    );
    bin
}
