//! Shared test harness: a temporary directory of namespaces removed on drop (even when a test
//! fails), unique names, and commands run inside a namespace with a time bound.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sdnet_netstack::netns::{self, Netns};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A unique short token for this process and call: `<pid>-<n>`.
pub fn uniq() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Tests need root (namespaces, mounts). Without it they are skipped, loudly.
pub fn root() -> bool {
    let ok = nix::unistd::geteuid().is_root();
    if !ok {
        eprintln!("skipping: needs root");
    }
    ok
}

/// A temporary directory holding namespace files; everything in it is unmounted and removed
/// on drop.
pub struct Lab {
    pub dir: PathBuf,
}

impl Lab {
    pub fn new() -> Lab {
        let dir = std::env::temp_dir().join(format!("snt-{}", uniq()));
        std::fs::create_dir_all(&dir).expect("creating the test directory");
        Lab { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A new namespace `<dir>/<name>`.
    pub fn ns(&self, name: &str) -> Netns {
        Netns::create(&self.path(name)).expect("creating a namespace")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in netns::list_netns(&self.dir).unwrap_or_default() {
            let _ = Netns::delete(&p);
        }
        // Nested directories (tests of parent creation).
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    for p in netns::list_netns(&e.path()).unwrap_or_default() {
                        let _ = Netns::delete(&p);
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a command inside the namespace at `ns` (nsenter), bounded to 10 s.
pub fn sh_in(ns: &Path, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("10")
        .arg("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(args)
        .output()
        .expect("running nsenter")
}

/// stdout of a command inside `ns`; panics with its stderr if it failed.
pub fn out_in(ns: &Path, args: &[&str]) -> String {
    let o = sh_in(ns, args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Pings `ip` from inside `ns` (a few tries: the first packets may wait for ARP).
pub fn ping(ns: &Path, ip: &str) -> bool {
    (0..3).any(|_| {
        sh_in(ns, &["ping", "-n", "-c1", "-W1", ip])
            .status
            .success()
    })
}

/// Polls `f` every 20 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether anything is mounted at `path` (per /proc/self/mountinfo).
pub fn mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.to_string_lossy();
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_ref()))
}

/// The namespace inode of a handle, to tell namespaces apart.
pub fn ns_ino(ns: &Netns) -> u64 {
    nix::sys::stat::fstat(ns).expect("fstat").st_ino
}
