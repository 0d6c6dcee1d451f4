//! Processes the daemon runs in sandboxes, and the health checks of tasks. The supervisor
//! starts and stops what the reconciler asks for and reports what it sees (a process exited,
//! a check passed or failed) as [`Observation`]s; the status writer records those in the
//! store, and everything else reacts to the store — never to the supervisor directly.
//!
//! Output goes straight to a log file (not a pipe) and exits are watched through a pidfd, so
//! a process outlives a daemon restart and the new daemon adopts it again.
//!
//! Start-up is gated: the forked child execs `sdctl __gate PROGRAM ARGS…`, which waits on a
//! pipe before it execs the real program. The reconciler records the PID in the store first
//! and only then opens the gate; a daemon killed in between closes the pipe, and the gated
//! child exits instead of running as a process nobody knows about.

pub mod health;
pub mod lifecycle;
pub mod status;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::enter::Enter;

/// The descriptor number the gate reads from.
const GATE_FD: i32 = 3;

/// Something the supervisor saw; the status writer turns it into a store write.
#[derive(Debug)]
pub enum Observation {
    Exited {
        sandbox: String,
        pid: u32,
        code: Option<i32>,
    },
    Health {
        sandbox: String,
        healthy: bool,
    },
    /// The backoff before a policy restart of the exited process `pid` is over.
    RestartDue {
        sandbox: String,
        pid: u32,
    },
}

/// A process we started: its PID and start time (which tells it from a later process that
/// reuses the PID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub start_ticks: u64,
}

/// A started process still waiting at its gate.
pub struct Gated {
    pub proc: Proc,
    gate: std::fs::File,
}

impl Gated {
    /// Lets the process run its program.
    pub fn open(mut self) -> io::Result<()> {
        self.gate.write_all(b"g")
    }
}

/// What a sandbox's process needs to start.
pub struct SpawnSpec<'a> {
    pub netns: Option<&'a Path>,
    pub hostname: &'a str,
    pub files_dir: &'a Path,
    pub command: &'a [String],
    pub env: &'a [String],
    pub log: &'a Path,
}

pub struct Supervisor {
    obs: mpsc::Sender<Observation>,
    watchers: Mutex<HashMap<String, (Proc, JoinHandle<()>)>>,
    checks: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Stops in progress (signal, then SIGKILL after the timeout).
    stops: Mutex<HashMap<String, (Proc, JoinHandle<()>)>>,
    /// Policy restarts waiting out their backoff, by the PID of the process that exited.
    timers: Mutex<HashMap<String, (u32, JoinHandle<()>)>>,
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True if `p` still names the process we started.
pub fn alive(p: &Proc) -> bool {
    start_ticks(p.pid).is_some_and(|t| t == p.start_ticks)
}

/// Sends a signal to a process we started (checked against its start time).
pub fn signal(p: &Proc, sig: Signal) {
    if alive(p) {
        let _ = nix::sys::signal::kill(Pid::from_raw(p.pid as i32), sig);
    }
}

/// Finds the program like execvp would, so a missing one is an error at `run` time.
pub fn resolve_program(argv0: &str, env: &[String]) -> io::Result<PathBuf> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        })
    };
    if argv0.contains('/') {
        let p = PathBuf::from(argv0);
        return match std::fs::metadata(&p) {
            Ok(_) if executable(&p) => Ok(p),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{argv0}: Permission denied (not an executable file)"),
            )),
            Err(e) => Err(io::Error::new(e.kind(), format!("{argv0}: {e}"))),
        };
    }
    let path: OsString = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH=").map(OsString::from))
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let p = dir.join(argv0);
        if executable(&p) {
            return Ok(p);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{argv0}: executable file not found in PATH"),
    ))
}

/// The arguments of `sdctl __gate`: where to enter, whether to wait at the gate, what to run.
#[derive(Debug, Default, PartialEq, Eq)]
struct GateArgs {
    netns: Option<PathBuf>,
    hostname: String,
    files: Option<PathBuf>,
    wait: bool,
    argv: Vec<OsString>,
}

fn gate_args(args: &[OsString]) -> Option<GateArgs> {
    let mut g = GateArgs {
        wait: true,
        ..GateArgs::default()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--netns") => g.netns = Some(it.next()?.into()),
            Some("--hostname") => g.hostname = it.next()?.to_str()?.to_string(),
            Some("--files") => g.files = Some(it.next()?.into()),
            Some("--no-wait") => g.wait = false,
            Some("--") => {
                g.argv = it.cloned().collect();
                break;
            }
            _ => return None,
        }
    }
    (!g.argv.is_empty() && !g.hostname.is_empty()).then_some(g)
}

/// The gate's command line for `argv` entering `netns` (None: stay, `--network host`).
pub(super) fn gate_command(
    netns: Option<&Path>,
    hostname: &str,
    files: &Path,
    wait: bool,
) -> Command {
    // The daemon's own binary, even if an upgrade replaced the file meanwhile.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("__gate");
    if let Some(n) = netns {
        cmd.arg("--netns").arg(n);
    }
    cmd.arg("--hostname")
        .arg(hostname)
        .arg("--files")
        .arg(files);
    if !wait {
        cmd.arg("--no-wait");
    }
    cmd.arg("--");
    cmd
}

/// `sdctl __gate [--netns P] --hostname H [--files DIR] [--no-wait] -- PROGRAM ARGS…`: enters
/// the sandbox (network namespace, hostname, resolv.conf and hosts), waits for the daemon's go
/// on descriptor 3 (unless `--no-wait`), then becomes PROGRAM.
///
/// Entering happens here, after exec, not in the forked child before it: until exec a child
/// shares every descriptor of the daemon — its store's and its run directory's locks among
/// them — and entering can wait on the kernel (remounting /sys while namespaces are being torn
/// down); a daemon killed meanwhile would find its own locks held when it comes back.
pub fn gate_main(args: &[OsString]) -> std::process::ExitCode {
    let Some(g) = gate_args(args) else {
        eprintln!("sdctl __gate: bad arguments");
        return std::process::ExitCode::from(125);
    };
    let files = g.files.unwrap_or_default();
    let resolv = files.join("resolv.conf");
    let hosts = files.join("hosts");
    let enter = Enter::prepare(
        g.netns.as_deref(),
        &g.hostname,
        &[
            (&resolv, Path::new("/etc/resolv.conf")),
            (&hosts, Path::new("/etc/hosts")),
        ],
    )
    .and_then(|e| e.apply());
    if let Err(e) = enter {
        eprintln!("sdctl: entering the sandbox: {e}");
        return std::process::ExitCode::from(126);
    }
    if g.wait {
        let mut gate = {
            // SAFETY: descriptor 3 was set up for us by the daemon (dup2 before exec); we own
            // it.
            let fd: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(GATE_FD) };
            std::fs::File::from(fd)
        };
        let mut b = [0u8; 1];
        match gate.read(&mut b) {
            Ok(1) if b[0] == b'g' => {}
            // The daemon died before it recorded us: run nothing.
            _ => return std::process::ExitCode::from(125),
        }
    }
    let Some((prog, rest)) = g.argv.split_first() else {
        return std::process::ExitCode::from(125);
    };
    let err = Command::new(prog).args(rest).exec();
    eprintln!(
        "sdctl: starting {}: {err}",
        String::from_utf8_lossy(prog.as_bytes())
    );
    std::process::ExitCode::from(127)
}

impl Supervisor {
    pub fn new(obs: mpsc::Sender<Observation>) -> Supervisor {
        Supervisor {
            obs,
            watchers: Mutex::new(HashMap::new()),
            checks: Mutex::new(HashMap::new()),
            stops: Mutex::new(HashMap::new()),
            timers: Mutex::new(HashMap::new()),
        }
    }

    /// Forks the process, stopped at its gate (blocking: call it off the runtime).
    pub fn spawn(spec: &SpawnSpec<'_>) -> io::Result<Gated> {
        let (argv0, args) = spec
            .command
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let program = resolve_program(argv0, spec.env)?;
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.log)?;
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // Above the gate's number, so the child's dup2 always makes a fresh descriptor 3
        // (without close-on-exec).
        let rd = nix::fcntl::fcntl(&rd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(GATE_FD + 7)).map(
            |fd| {
                // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
                unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
            },
        )?;
        let mut cmd = gate_command(spec.netns, spec.hostname, spec.files_dir, true);
        cmd.arg(&program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for kv in spec.env {
            match kv.split_once('=') {
                Some((k, v)) => cmd.env(k, v),
                None => cmd.env(kv, ""),
            };
        }
        let rd_raw = rd.as_raw_fd();
        // SAFETY: the closure makes two system calls (setsid, dup2) on values prepared before
        // fork.
        unsafe {
            cmd.pre_exec(move || {
                // Its own session: signals for the daemon's process group do not reach it.
                let _ = nix::unistd::setsid();
                libc_dup2(rd_raw, GATE_FD)?;
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(rd);
        let pid = child.id();
        // Exits are observed through the pidfd and reaped with waitpid: the Child handle is
        // not needed (dropping it neither kills nor reaps).
        drop(child);
        Ok(Gated {
            proc: Proc {
                pid,
                start_ticks: start_ticks(pid).unwrap_or(0),
            },
            gate: std::fs::File::from(wr),
        })
    }

    /// Watches a process until it exits (idempotent per sandbox and process).
    pub fn watch(&self, sandbox: &str, p: Proc) {
        let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((q, h)) = w.get(sandbox)
            && *q == p
            && !h.is_finished()
        {
            return;
        }
        let tx = self.obs.clone();
        let id = sandbox.to_string();
        let h = tokio::spawn(async move {
            let code = wait(p).await.unwrap_or(None);
            let _ = tx
                .send(Observation::Exited {
                    sandbox: id,
                    pid: p.pid,
                    code,
                })
                .await;
        });
        if let Some((_, old)) = w.insert(sandbox.to_string(), (p, h)) {
            old.abort();
        }
    }

    /// Stops watching and checking a sandbox (its process is killed by the caller).
    pub fn forget(&self, sandbox: &str) {
        if let Some((_, h)) = self
            .watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sandbox)
        {
            h.abort();
        }
        self.stop_health(sandbox);
        self.forget_lifecycle(sandbox);
    }
}

fn libc_dup2(from: i32, to: i32) -> io::Result<()> {
    // nix's dup2 takes owned descriptors in 0.31; in a forked child we only have numbers.
    // SAFETY: dup2 on two descriptor numbers valid in this (forked) process.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until the process exits; its exit code when it was our child (a signal death is
/// 128 + signal, as shells report it), None when it is not ours to reap.
pub async fn wait(p: Proc) -> io::Result<Option<i32>> {
    let pidfd = match pidfd_open(p.pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(reap(p.pid)),
        Err(e) => return Err(e),
    };
    let pidfd = sdnet_netstack::nft::move_fd_high(pidfd);
    if !alive(&p) {
        return Ok(reap(p.pid));
    }
    // SAFETY: the pidfd is owned by the AsyncFd for as long as it is registered.
    let afd = unsafe {
        AsyncFd::register_with_interest(std::fs::File::from(pidfd), tokio::io::Interest::READABLE)
    }?;
    let _ = afd.readable().await?;
    Ok(reap(p.pid))
}

/// A pidfd: it names that very process, never a later one that reuses its PID.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open has no memory arguments; a non-negative result is a new descriptor
    // that nothing else owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) })
}

/// SIGKILL to the process a pidfd names, if it still runs.
pub fn kill_pidfd(fd: &OwnedFd) {
    // SAFETY: pidfd_send_signal reads a descriptor, a signal number and no siginfo (null).
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

fn reap(pid: u32) -> Option<i32> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => Some(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_of_self() {
        let me = std::process::id();
        let p = Proc {
            pid: me,
            start_ticks: start_ticks(me).unwrap(),
        };
        assert!(p.start_ticks > 0 && alive(&p));
        assert!(!alive(&Proc {
            pid: me,
            start_ticks: 1
        }));
    }

    #[test]
    fn gate_arguments_round_trip() {
        let cmd = gate_command(
            Some(Path::new("/run/x/netns/a")),
            "h1",
            Path::new("/run/x/etc/1"),
            false,
        );
        let args: Vec<OsString> = cmd
            .get_args()
            .skip(1)
            .map(OsString::from)
            .chain(["/bin/sh", "-c", "true"].map(OsString::from))
            .collect();
        let g = gate_args(&args).unwrap();
        assert_eq!(g.netns.as_deref(), Some(Path::new("/run/x/netns/a")));
        assert_eq!((g.hostname.as_str(), g.wait), ("h1", false));
        assert_eq!(g.argv.len(), 3);
        assert!(gate_args(&["--bogus".into()]).is_none());
        assert!(gate_args(&["--hostname".into(), "h".into(), "--".into()]).is_none());
    }

    #[test]
    fn programs_resolve_like_execvp() {
        assert!(resolve_program("sh", &[]).unwrap().is_absolute());
        assert!(resolve_program("/bin/sh", &[]).is_ok());
        let e = resolve_program("--link", &[]).unwrap_err();
        assert!(e.to_string().contains("not found in PATH"), "{e}");
        assert!(resolve_program("sh", &["PATH=/nonexistent".into()]).is_err());
        assert!(resolve_program("/nonexistent/x", &[]).is_err());
    }
}
