//! `sdctl daemon` end to end: a daemon inside its own namespace, driven by the real `sdctl`
//! client; names checked from inside sandboxes with dig, getent (glibc) and busybox nslookup
//! through 127.0.0.11; traffic checked with ping and socat.

// `[ip.clone()]` reads better in an assertion than `slice::from_ref(&ip)`.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod api;
mod cli;
mod isolation;
mod metrics;
mod names;
mod processes;
mod recovery;
mod traffic;
