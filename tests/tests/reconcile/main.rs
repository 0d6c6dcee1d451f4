//! The daemon as a reconciler (issue 10), end to end: drift in the kernel repaired by the
//! periodic resync, concurrent API clients that lose no update, store and kernel agreeing
//! after `kill -9` at random points of a random churn, recovery of namespaces and processes
//! wherever the daemon runs, and a published port of a service without tasks refusing at once.

// `[ip.clone()]` reads better in an assertion than `slice::from_ref(&ip)`.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;
mod concurrency;
mod crash;
mod drift;
mod ports;
mod recovery;
