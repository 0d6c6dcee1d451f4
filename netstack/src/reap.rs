//! Closing some kernel sockets is slow: releasing a netfilter netlink socket after a commit
//! that deleted objects, or a packet socket, waits for the kernel to synchronize (~7-18 ms
//! measured). Nothing needs to wait for that, so such descriptors are closed on one
//! background thread.

use std::os::fd::OwnedFd;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};

use tracing::{debug, warn};

/// Descriptors waiting to be closed; past this the caller closes its own (slowly) rather
/// than let descriptors, and the namespaces they pin, pile up.
const BACKLOG: usize = 256;

fn closer() -> Option<&'static Mutex<SyncSender<OwnedFd>>> {
    static TX: OnceLock<Option<Mutex<SyncSender<OwnedFd>>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel::<OwnedFd>(BACKLOG);
        std::thread::Builder::new()
            .name("fd-reaper".into())
            .spawn(move || {
                while let Ok(fd) = rx.recv() {
                    drop(fd);
                }
            })
            .map_err(|e| warn!("cannot start the fd reaper thread: {e}"))
            .ok()?;
        Some(Mutex::new(tx))
    })
    .as_ref()
}

/// Closes `fd` in the background (or right here if the reaper is busy or gone).
pub fn close_later(fd: OwnedFd) {
    let Some(tx) = closer() else {
        return;
    };
    let tx = tx.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(fd) {
        // The descriptor came back inside the error and is closed as it drops here.
        debug!("fd reaper busy; closing inline");
    }
}
