//! Processes the daemon runs in sandboxes. Output goes straight to a log file (not a pipe), and
//! exits are watched through a pidfd, so a process outlives a daemon restart and the new
//! daemon adopts it again (a pidfd works for processes that are no longer our children; only
//! their exit code is then unknown).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use tokio::io::unix::AsyncFd;

use crate::daemon::store::ProcRec;
use crate::enter::Enter;

/// Starts `argv` inside a sandbox, appending its output to `log`.
pub fn spawn(enter: Enter, argv: &[String], env: &[String], log: &Path) -> io::Result<ProcRec> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    for kv in env {
        match kv.split_once('=') {
            Some((k, v)) => cmd.env(k, v),
            None => cmd.env(kv, ""),
        };
    }
    // SAFETY: the closure only makes system calls (Enter::apply is async-signal-safe) and
    // setsid; everything it touches was prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            enter.apply()?;
            // Its own session: signals for the daemon's process group do not reach it.
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id();
    // The Child handle is not needed: exits are observed through the pidfd and reaped with
    // waitpid. Dropping it neither kills nor reaps.
    drop(child);
    Ok(ProcRec {
        pid,
        start_time: start_time(pid).unwrap_or(0),
    })
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True if `p` still names the process we started (not a later one reusing the PID).
pub fn alive(p: &ProcRec) -> bool {
    start_time(p.pid).is_some_and(|t| t == p.start_time)
}

/// Waits until the process exits; returns its exit code when it was our child (a signal
/// death is 128 + signal, as shells report it), None when it is not ours to reap.
pub async fn wait(p: ProcRec) -> io::Result<Option<i32>> {
    // SAFETY: pidfd_open has no memory arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p.pid as libc::c_int, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(reap(p.pid));
        }
        return Err(e);
    }
    // SAFETY: fd was just returned by pidfd_open and is owned by nobody else.
    let pidfd = sdnet_netstack::nft::move_fd_high(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    if !alive(&p) {
        return Ok(reap(p.pid));
    }
    // SAFETY: the File owns the pidfd and keeps it open for as long as the AsyncFd lives.
    let afd = unsafe {
        AsyncFd::register_with_interest(File::from(pidfd), tokio::io::Interest::READABLE)
    }
    .map_err(|e| io::Error::other(e.to_string()))?;
    let _ = afd.readable().await?;
    Ok(reap(p.pid))
}

fn reap(pid: u32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid on a PID; ECHILD (not our child) is an ordinary answer.
    let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    if r != pid as libc::pid_t {
        return None;
    }
    if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Some(128 + libc::WTERMSIG(status))
    } else {
        None
    }
}

/// Sends a signal to a process we started (checked against its start time).
pub fn signal(p: &ProcRec, sig: i32) {
    if alive(p) {
        // SAFETY: kill on a PID verified to be our process.
        unsafe { libc::kill(p.pid as libc::pid_t, sig) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self() {
        let me = std::process::id();
        assert!(start_time(me).unwrap() > 0);
        let p = ProcRec {
            pid: me,
            start_time: start_time(me).unwrap(),
        };
        assert!(alive(&p));
        assert!(!alive(&ProcRec {
            pid: me,
            start_time: 1
        }));
    }
}
