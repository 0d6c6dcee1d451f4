//! Harness for sdnet's end-to-end tests: throw-away network namespaces, processes started in
//! them (ended by PID when the test ends, pass or fail), real `dig`/`kdig` output parsing, and
//! small upstream fixtures (sockets bound inside a namespace by a thread that entered it).
//!
//! Every name is unique per process and test, so tests run in parallel; everything is torn
//! down in `Drop`.

pub mod cluster;
mod daemon;
mod dig;
mod fixtures;
mod ns;
mod rng;
mod upstreams;

pub use daemon::*;
pub use dig::*;
pub use fixtures::*;
pub use ns::*;
pub use rng::Rng;
pub use upstreams::{Named, Scripted};
