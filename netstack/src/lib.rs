//! sdnet's kernel plumbing.
//!
//! - [`netns`]: network namespaces kept alive as bind-mounted files, and running code inside
//!   one (on a short-lived thread, never on a runtime worker).
//! - [`link`]: an async rtnetlink handle bound to one namespace: bridges, veth pairs, VXLAN,
//!   addresses, routes, neighbours, FDB entries; unsolicited ARP.
//! - [`sysctl`]: per-namespace `net.*` sysctls.
//! - [`nft`]: nftables commands applied as one atomic transaction inside a namespace, through
//!   libnftables in-process (one reused context per namespace; the `nft` binary as fallback).
//! - [`ipam`]: pure address management: Docker's default pools, per-subnet allocation.
//! - [`probe`]: which link kinds the kernel has (macvlan, ipvlan, VLAN, dummy), found by
//!   creating one in a throwaway namespace.
//! - [`reap`]: closing slow-to-close sockets on a background thread.
//!
//! Every kernel operation is idempotent where the wanted end state allows it ("already exists"
//! and "not found" count as success), so a reconciler can run them on whatever it finds.
//!
//! What this crate must not do: it knows nothing about DNS, services or the daemon's model; it
//! never changes the namespace of a thread it does not own (namespaces are entered only by
//! threads it spawns for that, which then exit); it never flushes a ruleset or touches
//! nftables tables it was not asked to.

pub mod ipam;
pub mod link;
pub mod netns;
pub mod nft;
pub mod probe;
pub mod reap;
pub mod sysctl;

pub use ipam::IpamError;
pub use link::Netlink;
pub use netns::Netns;
pub use nft::Nft;

/// Errors of the kernel-facing modules ([`ipam`] has its own, [`IpamError`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a netlink request (`errno` when it said why) or the connection
    /// failed.
    #[error("{what}: {message}")]
    Netlink {
        what: String,
        errno: Option<i32>,
        message: String,
    },
    /// nftables rejected a command; the text is nft's own error output.
    #[error("nftables: {0}")]
    Nft(String),
    /// Bad input (a name with NUL, a malformed sysctl key, a gateway of the wrong family…).
    #[error("{0}")]
    Invalid(String),
    /// A link exists under the name asked for but is not of the kind asked for.
    #[error("link {name} exists but is a {found}, not a {wanted}")]
    WrongKind {
        name: String,
        found: String,
        wanted: String,
    },
    /// A thread running code inside a namespace panicked.
    #[error("thread inside namespace {0} panicked")]
    Panicked(String),
}

impl Error {
    /// The errno behind a failed system call or netlink request, if known.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Netlink { errno, .. } => *errno,
            _ => None,
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    /// For a failed `nix` call: its errno becomes the [`Error::Io`] source.
    pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
        let io = Error::io(what);
        move |errno| io(std::io::Error::from(errno))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
