//! The API: validate a request against the desired state, allocate what it needs, write the
//! store in one compare-and-swap transaction, then wait until the reconciler has applied that
//! revision — so a name answers before the call returns. Handlers never touch the kernel or
//! the name tables. A transaction that loses a race (a name or address taken meanwhile, a
//! network changed) is validated and tried again against the newer state; a change the
//! reconciler could not apply is written back out of the store and reported.
//!
//! Reads (`ps`, `inspect`, `ls`) answer from the state cache's current snapshot: they never
//! wait for a write or for kernel work.

pub mod guard;
pub mod lifecycle;
pub mod links;
pub mod networks;
pub mod nodes;
pub mod overlay;
pub mod routes;
pub mod sandboxes;
pub mod services;
pub mod validate;
pub mod views;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::daemon::Node;
use crate::daemon::reconcile::Failure;
use crate::daemon::state::{Dirty, Lookup, Source};
use crate::daemon::store::schema::DriverKind;
use crate::daemon::store::{Rev, StoreError, Txn, TxnResult};

/// How often a transaction that lost a race is validated and tried again.
const ATTEMPTS: usize = 16;
/// How long a handler waits for the reconciler.
const APPLY_LIMIT: Duration = Duration::from_secs(120);

/// A client-facing error with an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The store cannot be reached: nothing was changed.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => ApiError::Unavailable(format!(
                "the store is unavailable ({m}); the change may still take effect when it is back (check before trying again)"
            )),
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<validate::Invalid> for ApiError {
    fn from(e: validate::Invalid) -> Self {
        ApiError::BadRequest(e.0)
    }
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::BadRequest(m) => ApiError::BadRequest(m),
            Failure::Conflict(m) => ApiError::Conflict(m),
            Failure::Internal(m) => ApiError::Internal(anyhow::anyhow!(m)),
        }
    }
}

pub fn bad<T>(msg: impl Into<String>) -> ApiResult<T> {
    Err(ApiError::BadRequest(msg.into()))
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// 64 random hex digits.
pub fn random_id() -> String {
    let mut b = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    if b == [0u8; 32] {
        // No urandom: time and PID (IDs only need to be unique here).
        let seed = format!("{:?}{}", SystemTime::now(), std::process::id());
        let h = crate::daemon::store::schema::stable_hash(&[&seed]);
        b[..8].copy_from_slice(&h.to_be_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn lookup_err(kind: &str, r: &str, e: Lookup) -> ApiError {
    match e {
        Lookup::NotFound => ApiError::NotFound(format!("{kind} {r} not found")),
        Lookup::Ambiguous => ApiError::BadRequest(format!("{kind} ID prefix {r} is ambiguous")),
    }
}

/// Commits `build()`'s transaction in this node's store, rebuilding it against the newer
/// desired state each time it loses a race. `build` validates and may fail with a client
/// error at any attempt.
pub async fn write(
    node: &Node,
    build: impl FnMut(&crate::daemon::state::Desired) -> ApiResult<Txn>,
) -> ApiResult<Rev> {
    write_in(node, Source::Local, build).await
}

/// [`write`] in store `src` (the cluster's for swarm-scope objects).
pub async fn write_in(
    node: &Node,
    src: Source,
    mut build: impl FnMut(&crate::daemon::state::Desired) -> ApiResult<Txn>,
) -> ApiResult<Rev> {
    let store = node.store_of(src)?;
    for _ in 0..ATTEMPTS {
        let d = node.cache.read();
        let txn = build(&d)?;
        match store.txn(txn).await? {
            TxnResult::Committed(rev) => return Ok(rev),
            TxnResult::Failed(current) => {
                // Validate again against the state that beat us.
                node.cache.wait_for(src, current).await;
            }
        }
    }
    Err(ApiError::Conflict(
        "too many concurrent changes to the same objects: try again".into(),
    ))
}

/// Waits until the reconciler applied `rev` of this node's store; the failure it recorded for
/// `obj`, if any.
pub async fn settle(node: &Node, rev: Rev, obj: &Dirty) -> ApiResult<()> {
    settle_in(node, Source::Local, rev, obj).await
}

pub async fn settle_in(node: &Node, src: Source, rev: Rev, obj: &Dirty) -> ApiResult<()> {
    applied_in(node, src, rev).await?;
    match node.progress.error(obj, src, rev) {
        Some(f) => Err(f.into()),
        None => Ok(()),
    }
}

/// [`settle`] for a sandbox; with endpoints on CNI networks, also until the addresses their
/// plugins chose are served: the reconciler writes them into the endpoints' records (a newer
/// revision, already in the state cache when it finishes the round that ran the plugins),
/// and a name must answer when the call returns.
pub async fn settle_sandbox(node: &Node, rev: Rev, sandbox: &str) -> ApiResult<()> {
    settle(node, rev, &Dirty::Sandbox(sandbox.to_string())).await?;
    let cni = {
        let d = node.cache.read();
        d.endpoints_of(sandbox).iter().any(|e| {
            d.networks
                .get(e.rec.network.as_str())
                .is_some_and(|n| n.rec.driver == DriverKind::Cni)
        })
    };
    if cni {
        let now = node.cache.rev(Source::Local);
        if now > rev {
            settle(node, now, &Dirty::Sandbox(sandbox.to_string())).await?;
        }
    }
    Ok(())
}

/// Waits until the reconciler applied `rev` of this node's store (no per-object result).
pub async fn applied(node: &Node, rev: Rev) -> ApiResult<()> {
    applied_in(node, Source::Local, rev).await
}

pub async fn applied_in(node: &Node, src: Source, rev: Rev) -> ApiResult<()> {
    if node.progress.wait(src, rev, APPLY_LIMIT).await {
        Ok(())
    } else {
        Err(ApiError::Internal(anyhow::anyhow!(
            "the change was stored ({src:?} store, revision {rev}) but not applied within {}s; it will be",
            APPLY_LIMIT.as_secs()
        )))
    }
}
