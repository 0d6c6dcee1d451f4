//! The store: a revisioned key/value space with compare-and-swap transactions, watches from a
//! revision and leases — the shape of etcd's v3 API, so that the embedded backend (`redb`, one
//! node) and the cluster backend (etcd) are interchangeable behind one trait.
//!
//! Semantics every backend keeps:
//! - Every committed transaction gets the next revision; every key written by it carries that
//!   revision as `mod_rev` (and as `create_rev` when the key is new). Deleting a key is an
//!   event at the deleting transaction's revision.
//! - A transaction either applies all its operations or none: it commits only when every
//!   compare holds, otherwise it fails and reports the current revision.
//! - `watch(prefix, from)` delivers every change under `prefix` with revision ≥ `from`, one
//!   batch per transaction, in revision order. A watch that cannot resume (history compacted,
//!   the watcher too slow) ends with [`StoreError::Compacted`]: list again, diff, watch again.
//! - A key put with a lease is deleted (an event like any other) when the lease expires or is
//!   revoked.

#[cfg(test)]
mod contract;
#[allow(dead_code)] // used by the cluster (issue 11)
pub mod etcd;
mod migrate;
pub mod redb;
pub mod schema;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

/// A store revision. 0 = before anything was written.
pub type Rev = i64;
/// A lease; 0 = no lease.
pub type LeaseId = i64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_rev: Rev,
    pub mod_rev: Rev,
    pub lease: LeaseId,
}

/// A condition of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists.
    Exists(String),
    /// The key exists and was last written at this revision.
    ModRev(String, Rev),
    /// No key starts with this prefix.
    PrefixEmpty(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: LeaseId,
    },
    Delete(String),
    /// Deletes every key that starts with the prefix.
    DeletePrefix(String),
}

/// Compares, then operations — all or nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }
    pub fn when(mut self, c: Compare) -> Txn {
        self.compares.push(c);
        self
    }
    pub fn put(mut self, key: impl Into<String>, value: Vec<u8>) -> Txn {
        self.ops.push(Op::Put {
            key: key.into(),
            value,
            lease: 0,
        });
        self
    }
    #[allow(dead_code)] // the cluster's node and endpoint keys
    pub fn put_leased(mut self, key: impl Into<String>, value: Vec<u8>, lease: LeaseId) -> Txn {
        self.ops.push(Op::Put {
            key: key.into(),
            value,
            lease,
        });
        self
    }
    pub fn delete(mut self, key: impl Into<String>) -> Txn {
        self.ops.push(Op::Delete(key.into()));
        self
    }
    pub fn delete_prefix(mut self, prefix: impl Into<String>) -> Txn {
        self.ops.push(Op::DeletePrefix(prefix.into()));
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnResult {
    /// Applied at this revision.
    Committed(Rev),
    /// A compare did not hold; nothing was written. The store's current revision.
    Failed(Rev),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change. For a delete, `kv.value` is empty and `kv.mod_rev` is the deleting revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// The changes of one transaction, as far as they fall under the watched prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    pub rev: Rev,
    pub events: Vec<Event>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The watch cannot resume from the asked revision: list again and diff.
    #[error("revision {asked} is no longer available (compacted up to {compacted}): relist")]
    Compacted { asked: Rev, compacted: Rev },
    /// The store cannot be reached (etcd down or partitioned).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    #[error("store: {0}")]
    Backend(String),
}

/// A stream of watch batches; ends (None) when the store shuts down, or with an error.
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchBatch, StoreError>>,
}

impl Watch {
    pub fn new(rx: mpsc::Receiver<Result<WatchBatch, StoreError>>) -> Watch {
        Watch { rx }
    }
    pub async fn next(&mut self) -> Option<Result<WatchBatch, StoreError>> {
        self.rx.recv().await
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every key under `prefix` (sorted by key) and the revision they were read at.
    async fn snapshot(&self, prefix: &str) -> Result<(Vec<KeyValue>, Rev), StoreError>;
    /// One key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Applies a transaction (see [`Txn`]).
    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError>;
    /// Changes under `prefix` from revision `from` on (see the module docs).
    async fn watch(&self, prefix: &str, from: Rev) -> Result<Watch, StoreError>;
    // Leases carry a cluster node's registration and its endpoints (DESIGN.md §5); one node
    // on redb has no use for them yet, but the backend and its tests keep the contract.
    /// A new lease that expires `ttl` after its last keep-alive.
    #[allow(dead_code)]
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError>;
    /// Renews a lease once (call it every third of the TTL or so).
    #[allow(dead_code)]
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// Ends a lease now; its keys are deleted.
    #[allow(dead_code)]
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError>;
}
