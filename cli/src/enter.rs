//! Entering a sandbox the way `ip netns exec` does: its network namespace, a private mount
//! namespace where the sandbox's resolv.conf and hosts cover /etc's, /sys remounted for the
//! namespace, and its own UTS namespace with the sandbox's hostname. Used by the daemon for
//! supervised processes (in the forked child) and by `sdctl exec` (in the client, which must
//! be single-threaded by then: unshare(CLONE_NEWNS) refuses shared filesystem state).

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::unistd::sethostname;

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

    /// Performs the switch in the calling process. Async-signal-safe: only system calls (nix's
    /// wrappers, given prepared C strings and descriptors, neither allocate nor lock).
    pub fn apply(&self) -> io::Result<()> {
        const NONE: Option<&CStr> = None;
        if let Some(fd) = &self.netns {
            setns(fd, CloneFlags::CLONE_NEWNET)?;
        }
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)?;
        // Our mounts must not propagate back to the host.
        mount(NONE, c"/", NONE, MsFlags::MS_REC | MsFlags::MS_SLAVE, NONE)?;
        for (src, dst) in &self.binds {
            mount(
                Some(src.as_c_str()),
                dst.as_c_str(),
                NONE,
                MsFlags::MS_BIND,
                NONE,
            )?;
        }
        if self.sysfs {
            // /sys shows the namespace that mounted it: remount it for the sandbox's
            // (as ip netns exec does). Not fatal: some tools simply see less.
            if umount2(c"/sys", MntFlags::MNT_DETACH).is_ok() {
                let _ = mount(
                    Some(c"sysfs"),
                    c"/sys",
                    Some(c"sysfs"),
                    MsFlags::empty(),
                    NONE,
                );
            }
        }
        sethostname(OsStr::from_bytes(self.hostname.as_bytes()))?;
        Ok(())
    }
}
