//! sdnet's embedded DNS resolver: name tables per network, the answer engine, forwarding with
//! a cache, and UDP/TCP serving on sockets handed in by the caller.

pub mod cache;
pub mod engine;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
mod nameindex;
pub mod relay;
pub mod resolvconf;
pub mod server;
pub mod stats;
pub mod table;
pub mod wire;

pub use forward::{DefaultUpstreams, ForwardConfig};
pub use model::State;
pub use server::{Freshen, Resolver, ResolverConfig, TcpConfig, ViewSelector};
pub use table::{Change, Tables};
