//! The `sdctl` binary under test and `Daemon`: a daemon in its own namespace with private
//! paths, driven by the real client, and what tests ask it (inspect, ps, links, namespaces).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::ns::end;
use crate::{Dig, Link, Ns, TempDir, parse_links, wait_for};

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
        Self::start_in(Ns::new(tag), tag, extra, host_resolv_conf)
    }

    /// In a namespace the caller prepared (a cluster node wired to an underlay).
    pub fn start_in(ns: Ns, tag: &str, extra: &[&str], host_resolv_conf: &str) -> Daemon {
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
        // A liveness bound, not a speed target: restoring state waits on the kernel's RTNL
        // lock, which other tests' namespace teardowns can hold for many seconds.
        wait_for(Duration::from_secs(60), || {
            std::os::unix::net::UnixStream::connect(&sock)
                .ok()
                .map(|_| ())
        })
        .unwrap_or_else(|| {
            panic!(
                "daemon did not start:\n{}\n--- its threads ---\n{}",
                self.log(),
                threads(self.pid)
            )
        });
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

    /// Stops the daemon as an upgrade does (SIGTERM, waits for it to exit; SIGKILL after 20 s)
    /// and starts it again (waits until its API answers).
    pub fn stop_and_restart(&mut self) {
        // SAFETY: signalling the daemon this test started.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let child = {
            let mut kids = self.ns.children.lock().unwrap();
            kids.iter()
                .position(|c| c.id() == self.pid)
                .map(|i| kids.remove(i))
        };
        if let Some(mut c) = child {
            let exited = wait_for(Duration::from_secs(20), || c.try_wait().ok().flatten());
            if exited.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.launch();
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

    /// Stops the daemon (SIGTERM) and runs `sdctl daemon --cleanup` with its paths, leaving
    /// its namespace for the test to look at. (Drop does the same again, harmlessly.)
    pub fn stop_and_cleanup(&mut self) {
        {
            let mut kids = self.ns.children.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = kids.iter().position(|c| c.id() == self.pid) {
                let mut c = kids.remove(i);
                end(&mut c);
            }
        }
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.push("--cleanup");
        let out = self.ns.cmd(sdctl(), &args).output().expect("run --cleanup");
        assert!(
            out.status.success(),
            "daemon --cleanup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `sdctl ARGS --socket S` (from the test's own namespace, like a user would).
    pub fn sdctl(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("120")
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
            .arg("120")
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

/// What each thread of a process waits on (state, wait channel, kernel stack): for reports
/// of a daemon that does not answer.
fn threads(pid: u32) -> String {
    let mut out = String::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("(process {pid} is gone)");
    };
    for t in rd.flatten() {
        let p = t.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next().map(str::to_string))
            .unwrap_or_default();
        out.push_str(&format!(
            "{} {} {} {}\n{}",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            state,
            read("wchan"),
            read("stack")
        ));
    }
    out
}
