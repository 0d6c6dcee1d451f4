//! sdnet's kernel plumbing: network namespaces, links, addresses and routes (rtnetlink),
//! per-namespace sysctls, nftables tables of ours (atomic transactions through libnftables),
//! and IPAM. Every operation is idempotent. This crate knows nothing about DNS or services.

pub mod ipam;
pub mod link;
pub mod netns;
pub mod nft;
pub mod sysctl;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {message}")]
    Netlink { what: String, message: String },
    #[error("nftables: {0}")]
    Nft(String),
    #[error("{0}")]
    Invalid(String),
}
