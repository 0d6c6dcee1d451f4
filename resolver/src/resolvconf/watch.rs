//! inotify on the host resolv.conf: a change marks the cached copy stale, so the next lookup
//! re-reads it (no polling, no delay).
//!
//! Three watches, because the file changes in three ways: rewritten in place (the inode: also
//! seen through a bind mount, where the write happens under another path), replaced by a
//! rename or deleted and created again (the directory, events filtered by name), and, for a
//! symlink such as `/etc/resolv.conf -> /run/.../resolv.conf`, replaced where it points (the
//! target's directory). After every event the inode watch is set again: a rename leaves it on
//! the old file.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use inotify::{Inotify, WatchMask};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

/// A running watch; dropping it stops it.
pub(super) struct Watch {
    task: JoinHandle<()>,
    /// False once the watch has failed (the owner goes back to polling).
    pub alive: Arc<AtomicBool>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const FILE_EVENTS: WatchMask = WatchMask::MODIFY
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);
const DIR_EVENTS: WatchMask = WatchMask::CREATE
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE)
    .union(WatchMask::ONLYDIR);

/// Watches `path`; `stale` is set on every change. Needs a tokio runtime (the caller's).
pub(super) fn start(path: &Path, stale: Arc<AtomicBool>) -> io::Result<Watch> {
    let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    let inotify = Inotify::init()?;
    let mut names: Vec<OsString> = Vec::new();
    for p in std::iter::once(path.to_path_buf()).chain(std::fs::canonicalize(path).ok()) {
        let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
            continue;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        inotify.watches().add(dir, DIR_EVENTS)?;
        names.push(name.to_os_string());
    }
    // The file may be missing for now; the directory watch sees it come.
    let _ = inotify.watches().add(path, FILE_EVENTS);
    // SAFETY: the Inotify owns its descriptor (closed only when the Inotify drops) and
    // always returns that one; the AsyncFd owns the Inotify until it is dropped itself.
    let fd = unsafe { AsyncFd::register_with_interest(inotify, Interest::READABLE) }
        .map_err(io::Error::from)?;
    let path = path.to_path_buf();
    let alive = Arc::new(AtomicBool::new(true));
    let task = handle.spawn(run(fd, path, names, stale, alive.clone()));
    Ok(Watch { task, alive })
}

async fn run(
    mut fd: AsyncFd<Inotify>,
    path: PathBuf,
    names: Vec<OsString>,
    stale: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
) {
    let mut buf = [0u8; 4096];
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "resolv.conf watch failed; polling instead");
                alive.store(false, Ordering::Release);
                return;
            }
        };
        let changed = match guard.try_io(|i| {
            let events = i.get_mut().read_events(&mut buf)?;
            // The buffer holds every event read; the rest need not be looked at.
            Ok(events.into_iter().any(|ev| {
                // An event without a name is about the file's own inode (or the kernel's
                // queue overflowed): always relevant.
                ev.name.is_none_or(|n| names.iter().any(|m| m == n))
            }))
        }) {
            Ok(Ok(changed)) => changed,
            Ok(Err(e)) => {
                // Never spin on a persistent error: from now on the file is polled.
                tracing::warn!(error = %e, "reading resolv.conf events failed; polling instead");
                alive.store(false, Ordering::Release);
                return;
            }
            Err(_would_block) => continue,
        };
        if changed {
            stale.store(true, Ordering::Release);
            let _ = fd.get_mut().watches().add(&path, FILE_EVENTS);
            tracing::debug!(path = %path.display(), "resolv.conf changed");
        }
    }
}
