//! The cluster store backend: etcd's v3 API (DESIGN.md §5), through the `etcd-client` crate.
//! Every [`Store`] call maps to one etcd call with etcd's own semantics: revisions are etcd's,
//! a transaction is one etcd `Txn` (compares on version / mod_revision, ops put / delete /
//! delete-range), a watch is an etcd watch from a start revision, leases are etcd leases.
//!
//! Failure model: every unary call is bounded by the timeout given to [`EtcdStore::connect`]
//! and fails with [`StoreError::Unavailable`] when etcd does not answer in time or cannot be
//! reached. A transaction that fails that way may still have been applied (its answer was
//! lost): the caller reads again before retrying. A watch ends with an error (never silently)
//! when its stream breaks, so the caller relists and watches again; a watch whose start
//! revision was compacted ends with [`StoreError::Compacted`].
//!
//! Where etcd differs from the embedded store (the shared contract tests hold for both):
//! - A transaction may not put a key twice, nor put a key that one of its deletes covers
//!   (etcd: "duplicate key given in txn request"); it has at most `--max-txn-ops` operations
//!   (128 by default) and `--max-request-bytes` (1.5 MiB). These fail as
//!   [`StoreError::Backend`]; redb applies such transactions in order.
//! - Revisions are etcd's, shared by every user of that etcd, and start at 1 on a fresh one.
//! - History lasts until etcd compacts it (its `--auto-compaction-*` flags), not for a fixed
//!   number of transactions, and survives restarts; a slow watcher is buffered by etcd rather
//!   than cut off. `watch(_, 0)` means "from now".
//! - Lease TTLs are whole seconds (rounded up), and etcd raises one below its minimum (1.5 ×
//!   the election timeout: 2 s with etcd's defaults). An etcd restart renews every lease.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions, EventType,
    GetOptions, PutOptions, Txn as EtcdTxn, TxnOp, WatchOptions, WatchStream,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{
    Compare, Event, EventKind, KeyValue, LeaseId, Op, Rev, Store, StoreError, Txn, TxnResult,
    Watch, WatchBatch,
};

/// Keys per range request when listing a prefix (etcd answers are kept well under the gRPC
/// message size limit).
const PAGE: i64 = 1000;
/// Batches buffered per watcher; a full buffer slows the etcd stream (gRPC flow control).
const WATCH_BUFFER: usize = 1024;
/// HTTP/2 pings on a connection with open streams, so a watch on a partitioned etcd breaks
/// instead of hanging (etcd refuses pings more often than every 5 s).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How often a listing restarts when etcd compacts its revision away while paging.
const LIST_ATTEMPTS: usize = 3;

/// `etcd://HOST:PORT[,HOST:PORT…]` (the `--cluster-store` flag) → the endpoints, as
/// `HOST:PORT` (a bracketed IPv6 host is kept as is).
pub fn parse_cluster_store(url: &str) -> Result<Vec<String>, String> {
    let rest = url
        .strip_prefix("etcd://")
        .ok_or_else(|| format!("{url:?}: a cluster store is etcd://HOST:PORT[,HOST:PORT...]"))?;
    let mut out = Vec::new();
    for ep in rest.split(',') {
        let ep = ep.trim();
        let (host, port) = ep
            .rsplit_once(':')
            .ok_or_else(|| format!("{url:?}: endpoint {ep:?} has no :PORT"))?;
        if host.is_empty() || host.contains('/') {
            return Err(format!("{url:?}: endpoint {ep:?} has no host"));
        }
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(format!(
                "{url:?}: endpoint {ep:?}: write an IPv6 address in brackets, [ADDR]:PORT"
            ));
        }
        match port.parse::<u16>() {
            Ok(p) if p != 0 => {}
            _ => return Err(format!("{url:?}: endpoint {ep:?} has no valid port")),
        }
        out.push(ep.to_string());
    }
    Ok(out)
}

/// etcd behind the [`Store`] trait. Cheap to clone (one shared gRPC channel).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    timeout: Duration,
    /// The endpoints, for error messages.
    at: String,
    /// Keeps the channel to the members that answer (with more than one endpoint).
    members: Option<std::sync::Arc<members::Watcher>>,
}

/// Whether a call failed before it reached any member (its connection was refused), so that
/// making it again cannot apply it twice.
fn not_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable && s.message().contains("connect error")
        }
        _ => false,
    }
}

/// The first key and the range end etcd needs for "every key under `prefix`".
fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        // "\0".."\0" is etcd's "every key".
        return (vec![0], vec![0]);
    }
    let key = prefix.as_bytes().to_vec();
    let mut end = key.clone();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (key, end);
        }
    }
    // Only 0xff bytes: every key from the prefix on.
    (key, vec![0])
}

fn key_string(k: &[u8]) -> String {
    match std::str::from_utf8(k) {
        Ok(s) => s.to_string(),
        Err(_) => {
            warn!(key = ?k, "etcd key is not UTF-8; read lossily");
            String::from_utf8_lossy(k).into_owned()
        }
    }
}

fn to_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: key_string(kv.key()),
        value: kv.value().to_vec(),
        create_rev: kv.create_revision(),
        mod_rev: kv.mod_revision(),
        lease: kv.lease(),
    }
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>, what: &str) -> Result<Rev, StoreError> {
    h.map(|h| h.revision())
        .ok_or_else(|| StoreError::Backend(format!("etcd {what}: answer without a header")))
}

fn to_compare(c: &Compare) -> EtcdCompare {
    match c {
        // A key that does not exist has version 0 (and mod_revision 0).
        Compare::Absent(k) => EtcdCompare::version(k.as_str(), CompareOp::Equal, 0),
        Compare::Exists(k) => EtcdCompare::version(k.as_str(), CompareOp::Greater, 0),
        Compare::ModRev(k, rev) => EtcdCompare::mod_revision(k.as_str(), CompareOp::Equal, *rev),
        // A compare over a range holds when it holds for every key in it, and over an empty
        // range when it holds for an absent key: "version == 0 over the range" = no key.
        Compare::PrefixEmpty(p) => {
            let (key, end) = prefix_range(p);
            EtcdCompare::version(key, CompareOp::Equal, 0).with_range(end)
        }
    }
}

fn to_op(op: &Op) -> TxnOp {
    match op {
        Op::Put { key, value, lease } => TxnOp::put(
            key.as_str(),
            value.clone(),
            (*lease != 0).then(|| PutOptions::new().with_lease(*lease)),
        ),
        Op::Delete(key) => TxnOp::delete(key.as_str(), None),
        Op::DeletePrefix(p) => {
            let (key, end) = prefix_range(p);
            TxnOp::delete(key, Some(DeleteOptions::new().with_range(end)))
        }
    }
}

/// What an etcd error means for the caller. `lease` names the lease a "lease not found"
/// answer is about (0 when the call involves none).
fn map_err(at: &str, what: &str, lease: LeaseId, e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(s) => {
            let msg = s.message();
            match s.code() {
                Code::NotFound if msg.contains("lease not found") => {
                    StoreError::LeaseNotFound(lease)
                }
                Code::OutOfRange if msg.contains("compacted") => StoreError::Compacted {
                    asked: 0,
                    compacted: 0,
                },
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                    StoreError::Unavailable(format!("etcd at {at}: {what}: {msg}"))
                }
                // tonic reports a broken connection as Unknown with a transport error.
                Code::Unknown if msg.contains("transport") || msg.contains("connect") => {
                    StoreError::Unavailable(format!("etcd at {at}: {what}: {msg}"))
                }
                code => StoreError::Backend(format!("etcd at {at}: {what}: {code:?}: {msg}")),
            }
        }
        E::LeaseKeepAliveError(m) if m.contains("not found") => StoreError::LeaseNotFound(lease),
        E::TransportError(e) => StoreError::Unavailable(format!("etcd at {at}: {what}: {e}")),
        E::IoError(e) => StoreError::Unavailable(format!("etcd at {at}: {what}: {e}")),
        other => StoreError::Backend(format!("etcd at {at}: {what}: {other}")),
    }
}

impl EtcdStore {
    /// Connects to etcd (endpoints as `HOST:PORT`) and checks that it answers. `timeout`
    /// bounds this and every later unary call.
    pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<EtcdStore, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Backend("no etcd endpoint given".into()));
        }
        let at = endpoints.join(",");
        // require_leader: a member cut off from its cluster's leader fails calls and ends
        // watches ("no leader") instead of serving a stale view that never changes.
        let opts = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(KEEPALIVE_INTERVAL, timeout)
            .with_require_leader(true);
        // Only members that answer go into the channel (a dead one would take a share of
        // the calls); `members` keeps it so.
        let inside = members::initial(endpoints, timeout.min(Duration::from_secs(2))).await;
        let client = match tokio::time::timeout(timeout, Client::connect(&inside, Some(opts))).await
        {
            Ok(r) => r.map_err(|e| map_err(&at, "connect", 0, e))?,
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "etcd at {at}: no connection within {timeout:?}"
                )));
            }
        };
        let watcher = members::watch(
            client.clone(),
            endpoints,
            inside,
            timeout.min(Duration::from_secs(2)),
        );
        let store = EtcdStore {
            client,
            timeout,
            at,
            members: watcher,
        };
        let m = store.client.maintenance_client();
        let status = store
            .call("status", 0, || {
                let mut m = m.clone();
                async move { m.status().await }
            })
            .await?;
        info!(endpoints = %store.at, version = status.version(), "connected to etcd");
        Ok(store)
    }

    /// Runs one etcd call within the timeout, once (a call that may have been sent).
    async fn once<T>(
        &self,
        what: &str,
        lease: LeaseId,
        f: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(|e| map_err(&self.at, what, lease, e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "etcd at {}: {what}: no answer within {:?}",
                self.at, self.timeout
            ))),
        }
    }

    /// Runs one unary etcd call within the timeout. With several members, a call that found
    /// its member refusing connections was never sent: the member watch is asked to look now
    /// and the call is made again (on a member that answers) until the timeout.
    async fn call<T, F, Fut>(&self, what: &str, lease: LeaseId, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            match tokio::time::timeout_at(deadline, f()).await {
                Ok(Err(e))
                    if not_sent(&e)
                        && tokio::time::Instant::now() + pause < deadline
                        && let Some(m) = &self.members =>
                {
                    debug!(what, error = %e, "etcd member refused the connection: again");
                    m.kick();
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Ok(r) => return r.map_err(|e| map_err(&self.at, what, lease, e)),
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd at {}: {what}: no answer within {:?}",
                        self.at, self.timeout
                    )));
                }
            }
        }
    }

    /// Every key in [key, end), page by page, all pages at the first one's revision; and
    /// that revision.
    async fn list(&self, key: &[u8], end: &[u8]) -> Result<(Vec<KeyValue>, Rev), StoreError> {
        let kv = self.client.kv_client();
        let mut out = Vec::new();
        let mut rev: Rev = 0;
        let mut from = key.to_vec();
        loop {
            let opts = GetOptions::new()
                .with_range(end.to_vec())
                .with_limit(PAGE)
                .with_revision(rev);
            let mut resp = self
                .call("list", 0, || {
                    let (mut kv, from, opts) = (kv.clone(), from.clone(), opts.clone());
                    async move { kv.get(from, Some(opts)).await }
                })
                .await?;
            if rev == 0 {
                rev = header_rev(resp.header(), "list")?;
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            if let Some(last) = kvs.last() {
                from = last.key().to_vec();
                from.push(0);
            }
            let page = kvs.len();
            out.extend(kvs.iter().map(to_kv));
            if !more || page == 0 {
                return Ok((out, rev));
            }
        }
    }

    /// Compacts etcd's history up to `rev` (the daemon relies on etcd's own
    /// `--auto-compaction-*`; tests use this).
    #[cfg(test)]
    async fn compact(&self, rev: Rev) -> Result<(), StoreError> {
        let kv = self.client.kv_client();
        self.call("compact", 0, || {
            let mut kv = kv.clone();
            async move { kv.compact(rev, None).await }
        })
        .await
        .map(|_| ())
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn snapshot(&self, prefix: &str) -> Result<(Vec<KeyValue>, Rev), StoreError> {
        let (key, end) = prefix_range(prefix);
        // The pages after the first are read at the first one's revision; a compaction past
        // it in between makes them fail: start over at the new current revision.
        let mut attempt = 0;
        loop {
            match self.list(&key, &end).await {
                Err(StoreError::Compacted { .. }) => {
                    attempt += 1;
                    if attempt == LIST_ATTEMPTS {
                        return Err(StoreError::Backend(format!(
                            "etcd at {}: listing {prefix}: compacted under the listing \
                             {LIST_ATTEMPTS} times",
                            self.at
                        )));
                    }
                    debug!(prefix, "etcd compacted while listing; listing again");
                }
                other => return other,
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let kv = self.client.kv_client();
        let resp = self
            .call("get", 0, || {
                let mut kv = kv.clone();
                async move { kv.get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(to_kv))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        // The lease a "lease not found" answer is about (etcd does not say which).
        let lease = txn
            .ops
            .iter()
            .find_map(|op| match op {
                Op::Put { lease, .. } if *lease != 0 => Some(*lease),
                _ => None,
            })
            .unwrap_or(0);
        let t = EtcdTxn::new()
            .when(txn.compares.iter().map(to_compare).collect::<Vec<_>>())
            .and_then(txn.ops.iter().map(to_op).collect::<Vec<_>>());
        let kv = self.client.kv_client();
        let resp = self
            .call("txn", lease, || {
                let (mut kv, t) = (kv.clone(), t.clone());
                async move { kv.txn(t).await }
            })
            .await?;
        let rev = header_rev(resp.header(), "txn")?;
        Ok(if resp.succeeded() {
            TxnResult::Committed(rev)
        } else {
            TxnResult::Failed(rev)
        })
    }

    async fn watch(&self, prefix: &str, from: Rev) -> Result<Watch, StoreError> {
        let (key, end) = prefix_range(prefix);
        let opts = WatchOptions::new()
            .with_range(end.clone())
            .with_start_revision(from.max(0));
        let wc = self.client.watch_client();
        let mut stream = self
            .call("watch", 0, || {
                let (mut wc, key, opts) = (wc.clone(), key.clone(), opts.clone());
                async move { wc.watch(key, Some(opts)).await }
            })
            .await?;
        // etcd answers a new watch with a "created" response first.
        let created = self.once("watch", 0, stream.message()).await?;
        match created {
            Some(r) if r.created() && !r.canceled() => {}
            Some(r) if r.compact_revision() > 0 => {
                return Err(StoreError::Compacted {
                    asked: from,
                    compacted: r.compact_revision(),
                });
            }
            Some(r) => {
                return Err(StoreError::Backend(format!(
                    "etcd at {}: watch not created: {}",
                    self.at,
                    r.cancel_reason()
                )));
            }
            None => {
                return Err(StoreError::Unavailable(format!(
                    "etcd at {}: watch stream closed before it started",
                    self.at
                )));
            }
        }
        // Tell a compacted start revision now rather than in the stream (like the embedded
        // store): a read at `from` fails the same way. A future revision is fine (the watch
        // waits for it).
        if from > 0 {
            let kv = self.client.kv_client();
            let probe = GetOptions::new()
                .with_range(end)
                .with_revision(from)
                .with_count_only();
            if let Err(StoreError::Compacted { .. }) = self
                .call("watch", 0, || {
                    let (mut kv, key, probe) = (kv.clone(), key.clone(), probe.clone());
                    async move { kv.get(key, Some(probe)).await }
                })
                .await
            {
                // The watch itself reports the compaction revision shortly after.
                let compacted = self.compaction_of(&mut stream).await.unwrap_or(from);
                return Err(StoreError::Compacted {
                    asked: from,
                    compacted,
                });
            }
        }
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let at = self.at.clone();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            pump(stream, tx, from, &at, &prefix).await;
        });
        Ok(Watch::new(rx))
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        // etcd leases count whole seconds (and etcd raises a TTL below its minimum).
        let secs = ttl.as_millis().div_ceil(1000).max(1) as i64;
        let l = self.client.lease_client();
        let resp = self
            .call("lease grant", 0, || {
                let mut l = l.clone();
                async move { l.grant(secs, None).await }
            })
            .await?;
        if !resp.error().is_empty() {
            return Err(StoreError::Backend(format!(
                "etcd at {}: lease grant: {}",
                self.at,
                resp.error()
            )));
        }
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        // One keep-alive on a short-lived stream: the client sends it and waits for the
        // answer, whose TTL is 0 when the lease is gone.
        let l = self.client.lease_client();
        self.call("lease keep-alive", lease, || {
            let mut l = l.clone();
            async move { l.keep_alive(lease).await }
        })
        .await
        .map(|_| ())
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let l = self.client.lease_client();
        match self
            .call("lease revoke", lease, || {
                let mut l = l.clone();
                async move { l.revoke(lease).await }
            })
            .await
        {
            // Already ended (expired or revoked): its keys are gone, as asked.
            Ok(_) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl EtcdStore {
    /// Reads a watch stream until etcd cancels it for compaction; its compaction revision.
    async fn compaction_of(&self, stream: &mut WatchStream) -> Option<Rev> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(r))) if r.compact_revision() > 0 => return Some(r.compact_revision()),
                Ok(Ok(Some(r))) if r.canceled() => return None,
                Ok(Ok(Some(_))) => continue,
                _ => return None,
            }
        }
    }
}

/// Forwards a watch stream as one batch per revision until the receiver goes away or the
/// stream ends; it always ends with an error, so the caller relists.
async fn pump(
    mut stream: WatchStream,
    tx: mpsc::Sender<Result<WatchBatch, StoreError>>,
    from: Rev,
    at: &str,
    prefix: &str,
) {
    // The next revision the caller expects; a batch below it was delivered already.
    let mut next = from;
    let end = loop {
        let msg = tokio::select! {
            _ = tx.closed() => return,
            m = stream.message() => m,
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => {
                break StoreError::Unavailable(format!("etcd at {at}: watch stream closed"));
            }
            Err(e) => {
                break match map_err(at, "watch", 0, e) {
                    StoreError::Compacted { compacted, .. } => StoreError::Compacted {
                        asked: next,
                        compacted,
                    },
                    other => other,
                };
            }
        };
        if resp.compact_revision() > 0 {
            break StoreError::Compacted {
                asked: next,
                compacted: resp.compact_revision(),
            };
        }
        if resp.canceled() {
            break StoreError::Backend(format!(
                "etcd at {at}: watch canceled: {}",
                resp.cancel_reason()
            ));
        }
        // etcd keeps a revision's events together in one response (fragmenting is off)
        // but may put several revisions in one response: group them.
        let mut batches: Vec<WatchBatch> = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let event = match ev.event_type() {
                EventType::Put => Event {
                    kind: EventKind::Put,
                    kv: to_kv(kv),
                },
                EventType::Delete => Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: key_string(kv.key()),
                        value: Vec::new(),
                        create_rev: 0,
                        mod_rev: kv.mod_revision(),
                        lease: 0,
                    },
                },
            };
            let rev = event.kv.mod_rev;
            match batches.last_mut() {
                Some(b) if b.rev == rev => b.events.push(event),
                _ => batches.push(WatchBatch {
                    rev,
                    events: vec![event],
                }),
            }
        }
        for b in batches {
            if b.rev < next {
                debug!(
                    prefix,
                    rev = b.rev,
                    "etcd watch repeated a revision; skipped"
                );
                continue;
            }
            next = b.rev + 1;
            if tx.send(Ok(b)).await.is_err() {
                return;
            }
        }
    };
    warn!(prefix, "etcd watch ended: {end}");
    let _ = tx.send(Err(end)).await;
}

mod members;

#[cfg(test)]
mod tests;
