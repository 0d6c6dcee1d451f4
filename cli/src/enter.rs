//! Entering a sandbox the way `ip netns exec` does: its network namespace, a private mount
//! namespace where the sandbox's resolv.conf and hosts cover /etc's, /sys remounted for the
//! namespace, and its own UTS namespace with the sandbox's hostname. Used by the daemon for
//! supervised processes (in the forked child) and by `sdctl exec` (in the client, which must
//! be single-threaded by then: unshare(CLONE_NEWNS) refuses shared filesystem state).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Everything prepared before fork: no allocation happens in `apply`.
pub struct Enter {
    netns: Option<OwnedFd>,
    hostname: CString,
    binds: Vec<(CString, CString)>,
    sysfs: bool,
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

impl Enter {
    /// `netns`: the namespace file to enter (None: stay in the current one, `--network host`).
    /// `files`: (source, target) pairs to bind over, e.g. (resolv.conf, /etc/resolv.conf);
    /// missing sources are skipped.
    pub fn prepare(
        netns: Option<&Path>,
        hostname: &str,
        files: &[(&Path, &Path)],
    ) -> io::Result<Enter> {
        let netns = match netns {
            Some(p) => Some(OwnedFd::from(File::open(p).map_err(|e| {
                io::Error::new(e.kind(), format!("opening namespace {}: {e}", p.display()))
            })?)),
            None => None,
        };
        let mut binds = Vec::new();
        for (src, dst) in files {
            if src.exists() && dst.exists() {
                binds.push((cstr(src)?, cstr(dst)?));
            }
        }
        Ok(Enter {
            sysfs: netns.is_some(),
            netns,
            hostname: CString::new(hostname).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "hostname contains NUL")
            })?,
            binds,
        })
    }

    /// Performs the switch in the calling process. Async-signal-safe: only system calls.
    pub fn apply(&self) -> io::Result<()> {
        fn check(rc: libc::c_int) -> io::Result<()> {
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
        // SAFETY: plain system calls on descriptors and C strings owned by self.
        unsafe {
            if let Some(fd) = &self.netns {
                check(libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET))?;
            }
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
            // Our mounts must not propagate back to the host.
            check(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ))?;
            for (src, dst) in &self.binds {
                check(libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            if self.sysfs {
                // /sys shows the namespace that mounted it: remount it for the sandbox's
                // (as ip netns exec does). Not fatal: some tools simply see less.
                if libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH) == 0 {
                    libc::mount(
                        c"sysfs".as_ptr(),
                        c"/sys".as_ptr(),
                        c"sysfs".as_ptr(),
                        0,
                        std::ptr::null(),
                    );
                }
            }
            let h = self.hostname.as_bytes();
            check(libc::sethostname(h.as_ptr().cast(), h.len()))?;
        }
        Ok(())
    }
}
