//! Names follow the config directory before SIGHUP is handled. netavark writes a container's
//! line, signals the server and returns at once: the container's first query can arrive before
//! the reload. An inotify watch on the directory queues an event when a file is written,
//! before netavark returns; the resolver asks [`Fresh::apply`] before answering a miss (an
//! unknown client or name), which reloads the names if an event is queued, so that query is
//! already answered from the new file. Listeners are still reconciled on SIGHUP (a new
//! listener cannot have received the query anyway).
//!
//! The SIGHUP reload and this one run under one lock, each draining the queued events before
//! reading the files: whoever reads later applies later, and a write after a drain is seen
//! by the next miss.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use inotify::{Inotify, WatchMask};
use sdnet_resolver::Resolver;
use tracing::{debug, warn};

use super::config::{self, Config, PID_FILE};

pub struct Fresh {
    dir: PathBuf,
    no_proxy: bool,
    /// None once reading events failed (then only SIGHUP reloads).
    inotify: Mutex<Option<Inotify>>,
}

impl Fresh {
    pub fn new(dir: PathBuf, no_proxy: bool) -> io::Result<Fresh> {
        let inotify = Inotify::init()?;
        inotify.watches().add(
            &dir,
            WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::DELETE
                | WatchMask::ONLYDIR,
        )?;
        Ok(Fresh {
            dir,
            no_proxy,
            inotify: Mutex::new(Some(inotify)),
        })
    }

    /// The resolver's freshen hook (holds the resolver weakly: it owns the hook).
    pub fn hook(self: &Arc<Self>, resolver: &Arc<Resolver>) -> sdnet_resolver::Freshen {
        let me = self.clone();
        let resolver: Weak<Resolver> = Arc::downgrade(resolver);
        Box::new(move || resolver.upgrade().is_some_and(|r| me.apply(&r)))
    }

    /// Reloads the names if a network file changed since the last load; true if it did.
    pub fn apply(&self, resolver: &Resolver) -> bool {
        let mut guard = self.inotify.lock().unwrap_or_else(|p| p.into_inner());
        if !drain(&mut guard) {
            return false;
        }
        match config::load(&self.dir) {
            Ok(cfg) if !cfg.listeners.is_empty() => {
                let ok = apply_names(resolver, cfg, self.no_proxy);
                debug!(ok, "config directory changed: names reloaded before SIGHUP");
                ok
            }
            // Nothing left to serve, or unreadable: SIGHUP's reload decides.
            _ => false,
        }
    }

    /// Runs a full reload (`f`: load, apply, reconcile) under the lock, after draining the
    /// events it makes obsolete.
    pub fn locked<T>(&self, f: impl FnOnce() -> T) -> T {
        let mut guard = self.inotify.lock().unwrap_or_else(|p| p.into_inner());
        drain(&mut guard);
        f()
    }
}

/// AARDVARK_NO_PROXY: every network internal, as far as forwarding goes.
pub fn no_proxy(mut state: sdnet_resolver::State, on: bool) -> sdnet_resolver::State {
    if on {
        for n in &mut state.networks {
            n.internal = true;
        }
    }
    state
}

/// Replaces the names with `cfg`'s; false (logged) if the tables refused them.
pub fn apply_names(resolver: &Resolver, cfg: Config, no_proxy_on: bool) -> bool {
    match resolver
        .tables
        .replace_all(&no_proxy(cfg.state, no_proxy_on))
    {
        Ok(()) => true,
        Err(e) => {
            warn!("applying the configuration: {e}; keeping the previous names");
            false
        }
    }
}

/// Reads every queued event; true if one is about a network file (not our pid file).
fn drain(inotify: &mut Option<Inotify>) -> bool {
    let Some(ino) = inotify.as_mut() else {
        return false;
    };
    let mut buf = [0u8; 4096];
    let mut changed = false;
    loop {
        match ino.read_events(&mut buf) {
            Ok(events) => {
                for ev in events {
                    // No name: the queue overflowed (or the directory itself went).
                    changed |= ev.name.is_none_or(|n| n.to_str() != Some(PID_FILE));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return changed,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(error = %e, "watching the config directory failed; reloading on SIGHUP only");
                *inotify = None;
                return changed;
            }
        }
    }
}
