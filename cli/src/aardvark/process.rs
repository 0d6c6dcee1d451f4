//! aardvark-dns's process contract with netavark: inherited descriptors closed, a fork, and
//! a readiness pipe from the child (ready only once every listener is bound).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use anyhow::{Context, Result};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork, pipe, setsid};

/// Closes every descriptor from 3 up: netavark's pipes must not stay open in a long-lived
/// server (netavark would wait for their EOF).
pub fn close_inherited_fds() {
    // SAFETY: close_range only closes descriptors; nothing of ours is open above 2 yet.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r == 0 {
        return;
    }
    // Kernels before 5.9: close what /proc lists.
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(rd) => rd
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect(),
        Err(_) => (3..1024).collect(),
    };
    for fd in fds {
        // SAFETY: closing a descriptor we do not use; errors (EBADF for the listing's own
        // descriptor, already closed) are harmless.
        unsafe { libc::close(fd) };
    }
}

/// Forks. The child runs `child` with the pipe's write end (it writes one byte once ready)
/// and exits with its result: an error goes to stderr (still the caller's) with exit 1. The
/// parent returns 0 once the byte arrives, else the child's exit code.
pub fn fork_and_wait(child: impl FnOnce(OwnedFd) -> Result<()>) -> Result<u8> {
    let (rx, tx) = pipe().context("creating the readiness pipe")?;
    // SAFETY: no other thread exists yet (no runtime has been built); the child goes on to
    // build its own.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(rx);
            let code = match child(tx) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    1
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(tx);
            let mut byte = [0u8; 1];
            let mut rx = std::fs::File::from(rx);
            if matches!(rx.read(&mut byte), Ok(1)) {
                return Ok(0);
            }
            // The child ended before it was ready: its exit code (it said why).
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code.clamp(0, 255) as u8),
                    Ok(WaitStatus::Signaled(..)) => return Ok(1),
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e).context("waiting for the server process"),
                }
            }
        }
    }
}

/// Leaves the caller's session and stdio (after the listeners are bound, before saying ready).
pub fn daemonize() -> Result<()> {
    setsid().context("setsid")?;
    super::log::detach();
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")?;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors, from a descriptor we own.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) } < 0 {
            return Err(std::io::Error::last_os_error()).context("redirecting stdio");
        }
    }
    Ok(())
}

/// Tells the parent we are ready.
pub fn signal_ready(ready: OwnedFd) -> Result<()> {
    std::fs::File::from(ready)
        .write_all(b"1")
        .context("telling the parent we are ready")
}
