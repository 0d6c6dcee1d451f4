//! Throw-away network namespaces and the processes started in them (ended by PID), unique
//! names and temporary directories, and what tests read back from the kernel: links,
//! namespace identities, processes by environment marker.

use std::fs::File;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::Dig;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique tag: `<pid mod 10^5><counter>` (fits interface names with a prefix).
pub fn unique() -> String {
    format!(
        "{}{}",
        std::process::id() % 100_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
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
    pub(crate) children: Mutex<Vec<Child>>,
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

pub(crate) fn end(c: &mut Child) {
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

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sdnet-test-{tag}-{}", unique()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    /// In memory (/dev/shm) where there is one: for etcd, whose every write waits for
    /// an fsync that a busy test machine's disk can stretch past the daemon's timeouts.
    /// A killed process's files survive there as on disk.
    pub fn in_memory(tag: &str) -> TempDir {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return TempDir::new(tag);
        }
        let p = shm.join(format!("sdnet-test-{tag}-{}", unique()));
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

#[cfg(test)]
mod tests {
    use super::*;

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
