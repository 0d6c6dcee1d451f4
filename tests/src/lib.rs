//! Harness for sdnet's end-to-end tests: throw-away network namespaces, processes started in
//! them (ended by PID when the test ends, pass or fail), real `dig`/`kdig` output parsing, and
//! small upstream fixtures (sockets bound inside a namespace by a thread that entered it).
//!
//! Every name is unique per process and test, so tests run in parallel; everything is torn
//! down in `Drop`.

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

mod upstreams;
pub use upstreams::{Named, Scripted};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique tag: `<pid mod 10^5><counter>` (fits interface names with a prefix).
pub fn unique() -> String {
    format!(
        "{}{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `sdctl` binary cargo built next to this test binary.
pub fn sdctl() -> PathBuf {
    if let Ok(p) = std::env::var("SDCTL_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/sdctl
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("sdctl");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p sdctl) or set SDCTL_BIN",
        bin.display()
    );
    bin
}

/// Fails the test early with a clear message when not root (namespaces need it).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "end-to-end tests need root (network namespaces)");
}

/// A network namespace that exists for the life of the value.
pub struct Ns {
    pub name: String,
    children: Mutex<Vec<Child>>,
}

impl Ns {
    pub fn new(tag: &str) -> Ns {
        require_root();
        let name = format!("sdt-{tag}-{}", unique());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Ns {
            name,
            children: Mutex::new(Vec::new()),
        };
        ns.run_ok("ip", &["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, prog: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(prog).args(args);
        c
    }

    /// Runs to completion (bounded by `timeout 30`).
    pub fn run(&self, prog: &str, args: &[&str]) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, "timeout", "30", prog])
            .args(args);
        c.output().unwrap_or_else(|e| panic!("running {prog}: {e}"))
    }

    pub fn run_ok(&self, prog: &str, args: &[&str]) -> String {
        let out = self.run(prog, args);
        assert!(
            out.status.success(),
            "{prog} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a background process in the namespace; it is ended (by PID) with the namespace.
    pub fn spawn(&self, mut cmd: Command, log: Option<&Path>) -> u32 {
        match log {
            Some(p) => {
                let f = File::create(p).expect("log file");
                cmd.stdout(f.try_clone().expect("dup")).stderr(f);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd.spawn().expect("spawn");
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// Ends one process started with `spawn`.
    pub fn stop(&self, pid: u32) {
        let mut kids = self.children.lock().unwrap();
        if let Some(i) = kids.iter().position(|c| c.id() == pid) {
            let mut c = kids.remove(i);
            end(&mut c);
        }
    }

    /// Runs `f` on a thread inside the namespace (to bind fixture sockets there).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                let target = File::open(&path).expect("open netns");
                // SAFETY: setns on this short-lived thread only; it ends after f.
                let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("thread in netns")
        })
    }

    /// Binds a UDP socket inside the namespace.
    pub fn udp(&self, addr: &str) -> UdpSocket {
        let addr = addr.to_string();
        self.enter(move || UdpSocket::bind(addr.as_str()).expect("bind fixture socket"))
    }

    pub fn dig(&self, args: &[&str]) -> Dig {
        let out = self.run("dig", args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Dig::parse(&text).unwrap_or_else(|| panic!("dig {args:?} gave no answer:\n{text}"))
    }

    /// dig, or None if no reply came (timeout).
    pub fn try_dig(&self, args: &[&str]) -> Option<Dig> {
        let out = self.run("dig", args);
        Dig::parse(&String::from_utf8_lossy(&out.stdout))
    }

    pub fn kdig(&self, args: &[&str]) -> Dig {
        let out = self.run("kdig", args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Dig::parse(&text).unwrap_or_else(|| panic!("kdig {args:?} gave no answer:\n{text}"))
    }
}

fn end(c: &mut Child) {
    // SAFETY: kill on a PID we spawned and have not reaped yet.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Ns {
    fn drop(&mut self) {
        let mut kids = self.children.lock().unwrap_or_else(|p| p.into_inner());
        for c in kids.iter_mut() {
            end(c);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` until it returns Some, for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// One resource record as dig prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rr {
    pub name: String,
    pub ttl: u32,
    pub rtype: String,
    pub data: String,
}

/// The parts of a dig/kdig answer tests look at.
#[derive(Debug, Clone, Default)]
pub struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    pub answer: Vec<Rr>,
    pub authority: Vec<Rr>,
    pub additional: Vec<Rr>,
    pub opt: bool,
    pub raw: String,
}

impl Dig {
    /// Parses dig's (or kdig's) default output; None if it holds no reply header.
    pub fn parse(text: &str) -> Option<Dig> {
        let mut d = Dig {
            raw: text.to_string(),
            ..Dig::default()
        };
        let mut section = "";
        let mut seen_header = false;
        for line in text.lines() {
            let l = line.trim();
            if let Some(rest) = l.split("status: ").nth(1) {
                d.status = rest
                    .split([',', ';'])
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                seen_header = true;
                continue;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(rest) = lower.strip_prefix(";; flags:") {
                let flags = rest.split(';').next().unwrap_or("");
                d.flags = flags.split_whitespace().map(str::to_string).collect();
                continue;
            }
            if lower.contains("opt pseudosection") || lower.contains("edns pseudosection") {
                d.opt = true;
            }
            if l.starts_with(";;") && l.ends_with("SECTION:") {
                section = if l.contains("ANSWER") {
                    "answer"
                } else if l.contains("AUTHORITY") {
                    "authority"
                } else if l.contains("ADDITIONAL") {
                    "additional"
                } else {
                    ""
                };
                continue;
            }
            if l.is_empty() || l.starts_with(';') {
                if l.is_empty() {
                    section = "";
                }
                continue;
            }
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 5 || section.is_empty() {
                continue;
            }
            let rr = Rr {
                name: f[0].to_string(),
                ttl: f[1].parse().unwrap_or(0),
                rtype: f[3].to_string(),
                data: f[4..].join(" "),
            };
            match section {
                "answer" => d.answer.push(rr),
                "authority" => d.authority.push(rr),
                _ => d.additional.push(rr),
            }
        }
        seen_header.then_some(d)
    }

    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }

    /// Answer data of one type, in answer order.
    pub fn data(&self, rtype: &str) -> Vec<String> {
        self.answer
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.data.clone())
            .collect()
    }

    pub fn sorted(&self, rtype: &str) -> Vec<String> {
        let mut v = self.data(rtype);
        v.sort();
        v
    }
}

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

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sdnet-test-{tag}-{}", unique()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `sdctl daemon` running inside its own namespace (its "host"), with private state, run,
/// etc and socket paths. Dropping it stops the daemon, runs `daemon --cleanup` and checks
/// nothing of ours is left in its namespace.
pub struct Daemon {
    pub ns: Ns,
    pub dir: TempDir,
    pub pid: u32,
    pub socket: PathBuf,
    args: Vec<String>,
}

impl Daemon {
    pub fn start(tag: &str) -> Daemon {
        Self::start_with(tag, &[])
    }

    /// `extra`: more daemon flags.
    pub fn start_with(tag: &str, extra: &[&str]) -> Daemon {
        // The host resolver is 127.0.0.53 inside the daemon's namespace: nothing answers
        // there unless a test starts an upstream, so unknown names fail fast and stay local.
        Self::start_full(tag, extra, "nameserver 127.0.0.53\noptions edns0\n")
    }

    /// With a given host resolv.conf for the daemon.
    pub fn start_full(tag: &str, extra: &[&str], host_resolv_conf: &str) -> Daemon {
        let ns = Ns::new(tag);
        let dir = TempDir::new(tag);
        let socket = dir.path().join("sdnet.sock");
        let resolv = dir.path().join("host-resolv.conf");
        std::fs::write(&resolv, host_resolv_conf).unwrap();
        let mut args: Vec<String> = vec![
            "daemon".into(),
            "--state-dir".into(),
            dir.path().join("state").display().to_string(),
            "--run-dir".into(),
            dir.path().join("run").display().to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--etc-netns-dir".into(),
            dir.path().join("etc-netns").display().to_string(),
            "--no-netns-links".into(),
            "--resolv-conf".into(),
            resolv.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut d = Daemon {
            ns,
            dir,
            pid: 0,
            socket,
            args,
        };
        d.launch();
        d
    }

    fn launch(&mut self) {
        let argv: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut cmd = self.ns.cmd(sdctl(), &argv);
        cmd.env("RUST_LOG", "info");
        let log = self.dir.path().join("daemon.log");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        cmd.stdout(f.try_clone().unwrap()).stderr(f);
        let child = cmd.spawn().expect("spawn daemon");
        self.pid = child.id();
        self.ns.children.lock().unwrap().push(child);
        let sock = self.socket.clone();
        wait_for(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&sock)
                .ok()
                .map(|_| ())
        })
        .unwrap_or_else(|| panic!("daemon did not start:\n{}", self.log()));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Kills the daemon with SIGKILL (no clean-up at all) and starts it again.
    pub fn kill9_and_restart(&mut self) {
        self.kill9();
        self.restart();
    }

    /// Sends SIGKILL to the daemon (it may be serving calls of other threads meanwhile);
    /// `restart` starts it again.
    pub fn kill9(&self) {
        // SAFETY: signalling the daemon this test started.
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
    }

    /// Reaps the killed daemon and starts it again (waits until its API answers).
    pub fn restart(&mut self) {
        self.kill9();
        let mut kids = self.ns.children.lock().unwrap();
        if let Some(i) = kids.iter().position(|c| c.id() == self.pid) {
            let mut c = kids.remove(i);
            let _ = c.wait();
        }
        drop(kids);
        self.launch();
    }

    /// Runs `sdctl ARGS --socket S` (from the test's own namespace, like a user would).
    pub fn sdctl(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("60")
            .arg(sdctl())
            .args(args)
            .env("SDNET_SOCKET", &self.socket)
            .output()
            .expect("run sdctl")
    }

    /// Runs `sdctl ARGS` with no `SDNET_SOCKET` in its environment (the test names the socket,
    /// or means not to) and stdin from /dev/null.
    pub fn sdctl_bare(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("60")
            .arg(sdctl())
            .args(args)
            .env_remove("SDNET_SOCKET")
            .stdin(Stdio::null())
            .output()
            .expect("run sdctl")
    }

    /// sdctl that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.sdctl(args);
        assert!(
            out.status.success(),
            "sdctl {args:?} failed ({}):\n{}{}\n--- daemon log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// sdctl that must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.sdctl(args);
        assert!(
            !out.status.success(),
            "sdctl {args:?} succeeded but should fail:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs a command inside a sandbox with `sdctl exec`.
    pub fn exec(&self, sandbox: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", sandbox, "--"];
        args.extend_from_slice(cmd);
        self.sdctl(&args)
    }

    pub fn exec_ok(&self, sandbox: &str, cmd: &[&str]) -> String {
        let out = self.exec(sandbox, cmd);
        assert!(
            out.status.success(),
            "exec {sandbox} {cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// dig through the sandbox's resolv.conf (127.0.0.11).
    pub fn dig(&self, sandbox: &str, args: &[&str]) -> Dig {
        let mut cmd = vec!["dig", "+tries=1", "+time=3"];
        cmd.extend_from_slice(args);
        let out = self.exec(sandbox, &cmd);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Dig::parse(&text).unwrap_or_else(|| {
            panic!(
                "dig {args:?} in {sandbox} gave no answer:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    pub fn inspect(&self, sandbox: &str) -> serde_json::Value {
        let out = self.ok(&["inspect", sandbox]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("inspect JSON");
        v[0].clone()
    }

    /// IPv4 address of a sandbox on a network.
    pub fn ip(&self, sandbox: &str, network: &str) -> String {
        let v = self.inspect(sandbox);
        v["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["network"] == network)
            .and_then(|e| e["ipv4"].as_str())
            .unwrap_or_else(|| panic!("{sandbox} has no address on {network}: {v}"))
            .to_string()
    }

    /// Links of ours in the daemon's namespace.
    pub fn our_links(&self) -> Vec<String> {
        let out = self.ns.run_ok("ip", &["-o", "link", "show"]);
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("sd-") || n.starts_with("sdv"))
            .collect()
    }

    pub fn nft_tables(&self) -> String {
        self.ns.run_ok("nft", &["list", "tables"])
    }

    /// Mounted namespaces in the daemon's run dir (as the daemon's mount namespace sees them).
    pub fn netns_mounts(&self) -> Vec<String> {
        let run = self.dir.path().join("run").join("netns");
        let info =
            std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid)).unwrap_or_default();
        info.lines()
            .filter(|l| l.contains(run.to_str().unwrap()))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling the daemon this test started.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        {
            let mut kids = self.ns.children.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = kids.iter().position(|c| c.id() == self.pid) {
                let mut c = kids.remove(i);
                end(&mut c);
            }
        }
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.push("--cleanup");
        let _ = self.ns.cmd(sdctl(), &args).output();
    }
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

impl Daemon {
    /// A sandbox's namespace file as the test process can open it (the daemon may live in
    /// another mount namespace).
    pub fn netns_path(&self, sandbox: &str) -> PathBuf {
        let v = self.inspect(sandbox);
        let p = v["netns"].as_str().expect("netns path");
        PathBuf::from(format!("/proc/{}/root{p}", self.pid))
    }

    /// Opens `count` TCP connections to `addr` from inside `sandbox`, one after the other,
    /// and returns the first line each server sent ("" for a failed connection).
    pub fn connect_many(&self, sandbox: &str, addr: &str, count: usize) -> Vec<String> {
        let path = self.netns_path(sandbox);
        let addr: std::net::SocketAddr = addr.parse().expect("address");
        std::thread::scope(|s| {
            s.spawn(move || {
                let f = File::open(&path).expect("open netns");
                // SAFETY: setns on this short-lived thread only.
                let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns");
                (0..count)
                    .map(|_| {
                        use std::io::BufRead;
                        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                            Ok(c) => {
                                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                                let mut line = String::new();
                                let _ = std::io::BufReader::new(c).read_line(&mut line);
                                line.trim().to_string()
                            }
                            Err(_) => String::new(),
                        }
                    })
                    .collect()
            })
            .join()
            .expect("connect thread")
        })
    }

    /// `services ps` as JSON.
    pub fn tasks(&self, service: &str) -> Vec<serde_json::Value> {
        let out = self.ok(&["services", "ps", service, "--format", "json"]);
        serde_json::from_str::<Vec<serde_json::Value>>(&out).expect("tasks JSON")
    }
}

/// A link as `ip -o link show` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The peer's index (`name@ifN`: a veth whose other end is in another namespace).
    pub peer: Option<u32>,
    pub master: Option<String>,
    /// Administratively up (`UP` among the flags).
    pub up: bool,
}

/// Parses `ip -o link show` output.
pub fn parse_links(text: &str) -> Vec<Link> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ": ");
            let index = parts.next()?.trim().parse().ok()?;
            let full = parts.next()?;
            let rest = parts.next().unwrap_or("");
            let (name, peer) = match full.split_once('@') {
                Some((n, p)) => (n, p.strip_prefix("if").and_then(|i| i.parse().ok())),
                None => (full, None),
            };
            let flags = rest
                .strip_prefix('<')
                .and_then(|r| r.split_once('>'))
                .map(|(f, _)| f)
                .unwrap_or("");
            let words: Vec<&str> = rest.split_whitespace().collect();
            let master = words
                .iter()
                .position(|w| *w == "master")
                .and_then(|i| words.get(i + 1))
                .map(|m| m.to_string());
            Some(Link {
                index,
                name: name.to_string(),
                peer,
                master,
                up: flags.split(',').any(|f| f == "UP"),
            })
        })
        .collect()
}

/// `net:[INODE]` of a namespace file (what `readlink /proc/PID/ns/net` prints for a process
/// in it), None if `path` is not a network namespace.
pub fn netns_id(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs fills the zeroed struct we own from a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 || st.f_type as i64 != NSFS_MAGIC {
        return None;
    }
    let ino = std::fs::metadata(path).ok()?.ino();
    Some(format!("net:[{ino}]"))
}

/// The network namespace a process is in (`net:[INODE]`).
pub fn netns_of_pid(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|p| p.display().to_string())
}

/// Live (not zombie) processes whose environment holds exactly `entry` (`KEY=VALUE`): tests
/// mark the processes they have a daemon start with a unique entry (`run -e`, `services
/// create -e`) to find every one of them, wherever it runs.
pub fn procs_with_env(entry: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if !env.split(|b| *b == 0).any(|kv| kv == entry.as_bytes()) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .unwrap_or("");
        if !state.is_empty() && state != "Z" && state != "X" {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// Kills (SIGKILL, by PID) every process marked with `entry` when dropped: processes a test
/// had a daemon start must not outlive the test, even when the daemon lost track of them.
pub struct KillMarked(pub String);

impl Drop for KillMarked {
    fn drop(&mut self) {
        for _ in 0..10 {
            let pids = procs_with_env(&self.0);
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: a process started for this test (it carries the test's marker).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Daemon {
    /// `ps -a --format json`; Err when the daemon does not answer.
    pub fn try_ps(&self) -> Result<Vec<serde_json::Value>, String> {
        let out = self.sdctl(&["ps", "-a", "--format", "json"]);
        if !out.status.success() {
            return Err(format!(
                "ps failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("ps JSON: {e}"))
    }

    /// Every network, as `network inspect` shows it; Err when the daemon does not answer.
    pub fn try_networks(&self) -> Result<Vec<serde_json::Value>, String> {
        let out = self.sdctl(&["network", "ls", "-q"]);
        if !out.status.success() {
            return Err(format!(
                "network ls failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec!["network", "inspect"];
        args.extend(ids.iter().map(String::as_str));
        let out = self.sdctl(&args);
        if !out.status.success() {
            return Err(format!(
                "network inspect failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("network JSON: {e}"))
    }

    /// Links in the daemon's namespace.
    pub fn links(&self) -> Vec<Link> {
        parse_links(&self.ns.run_ok("ip", &["-o", "link", "show"]))
    }

    /// Links inside a namespace file (e.g. `netns_path`); None if it cannot be entered.
    pub fn links_in(&self, netns: &Path) -> Option<Vec<Link>> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["ip", "-o", "link", "show"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| parse_links(&String::from_utf8_lossy(&out.stdout)))
    }

    /// A path inside the daemon's mount namespace, as the test process can open it.
    pub fn daemon_path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{p}", self.pid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dig_and_kdig() {
        let dig = ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n;; flags: qr aa rd ra; QUERY: 1, ANSWER: 1\n\n;; OPT PSEUDOSECTION:\n; EDNS: version: 0\n;; ANSWER SECTION:\nb.\t\t0\tIN\tA\t10.1.0.3\n\n;; AUTHORITY SECTION:\nb.\t0\tIN\tSOA\tns.sdnet. hostmaster.sdnet. 1 3600 600 86400 0\n";
        let d = Dig::parse(dig).unwrap();
        assert_eq!(d.status, "NOERROR");
        assert!(d.has_flag("aa") && d.opt);
        assert_eq!(d.data("A"), ["10.1.0.3"]);
        assert_eq!(d.authority[0].rtype, "SOA");
        let kdig = ";; ->>HEADER<<- opcode: QUERY; status: NXDOMAIN; id: 5\n;; Flags: qr aa rd; QUERY: 1; ANSWER: 0\n\n;; QUESTION SECTION:\n;; x.\t\tIN\tA\n";
        let k = Dig::parse(kdig).unwrap();
        assert_eq!(k.status, "NXDOMAIN");
        assert!(k.has_flag("aa") && !k.has_flag("ra"));
        assert!(Dig::parse(";; connection timed out; no servers could be reached").is_none());
    }

    #[test]
    fn parses_ip_link() {
        let t = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n7: sdv0123456789ab@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master sd-0123456789ab state UP mode DEFAULT group default qlen 1000\\    link/ether 6a:1b brd ff:ff\n9: sd-0123456789ab: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 state DOWN\n10: eth0@if7: <BROADCAST,MULTICAST> mtu 1500 state DOWN\n";
        let l = parse_links(t);
        assert_eq!(l.len(), 4);
        assert_eq!(l[1].name, "sdv0123456789ab");
        assert_eq!(l[1].peer, Some(2));
        assert_eq!(l[1].master.as_deref(), Some("sd-0123456789ab"));
        assert!(l[1].up && l[2].up && !l[3].up);
        assert_eq!((l[3].index, l[3].peer), (10, Some(7)));
        assert_eq!(l[0].master, None);
    }
}
