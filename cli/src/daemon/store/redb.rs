//! The embedded store backend: one redb file. Keys and values live in one table, each value
//! prefixed with its revisions and lease; the store's revision counter is written in the same
//! write transaction as the keys it stamps, so a `kill -9` leaves either the whole transaction
//! or none of it. Watches are an in-process broadcast with a bounded history of recent
//! transactions (a watch from before that history gets [`StoreError::Compacted`], like etcd
//! after compaction). Leases expire on the wall clock, so keys of a lease nobody renewed while
//! the daemon was down are deleted right after it starts again.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, mpsc};
use tracing::warn;

use super::{
    Compare, Event, EventKind, KeyValue, LeaseId, Op, Rev, Store, StoreError, Txn, TxnResult,
    Watch, WatchBatch,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// lease → (ttl ms, expiry in ms since the epoch).
const LEASES: TableDefinition<i64, (u64, u64)> = TableDefinition::new("leases");
/// "<lease as 16 hex digits>/<key>" for every key put with a lease.
const LEASE_KEYS: TableDefinition<&str, ()> = TableDefinition::new("lease_keys");

const HEADER: usize = 24;
/// Transactions kept for watches that resume from a past revision.
const HISTORY: usize = 4096;
/// Batches buffered per watcher before the watcher counts as too slow.
const WATCH_BUFFER: usize = 1024;

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn encode(mod_rev: Rev, create_rev: Rev, lease: LeaseId, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + value.len());
    v.extend_from_slice(&mod_rev.to_le_bytes());
    v.extend_from_slice(&create_rev.to_le_bytes());
    v.extend_from_slice(&lease.to_le_bytes());
    v.extend_from_slice(value);
    v
}

fn decode(key: &str, raw: &[u8]) -> Result<KeyValue, StoreError> {
    if raw.len() < HEADER {
        return Err(StoreError::Backend(format!("record {key} is truncated")));
    }
    let n = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[i * 8..i * 8 + 8]);
        i64::from_le_bytes(b)
    };
    Ok(KeyValue {
        key: key.to_string(),
        mod_rev: n(0),
        create_rev: n(1),
        lease: n(2),
        value: raw[HEADER..].to_vec(),
    })
}

fn lease_key(lease: LeaseId, key: &str) -> String {
    format!("{lease:016x}/{key}")
}

/// A lease to end with a transaction.
#[derive(Clone, Copy)]
enum Revoke {
    Now(LeaseId),
    /// Only if it is still expired (a keep-alive may have come since the reaper looked).
    Expired(LeaseId),
}

struct Hub {
    /// Recent transactions, oldest first; they cover revisions (floor, rev].
    history: VecDeque<Arc<WatchBatch>>,
    floor: Rev,
    rev: Rev,
    tx: broadcast::Sender<Arc<WatchBatch>>,
}

struct Inner {
    db: Database,
    hub: Mutex<Hub>,
    next_lease: Mutex<LeaseId>,
}

pub struct RedbStore {
    inner: Arc<Inner>,
}

impl RedbStore {
    /// Opens (or creates) the store file. Spawns the lease reaper when called inside a tokio
    /// runtime.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        // A child the previous daemon was forking when it died shares the file (and its
        // lock) until it execs: wait a moment for that, not for a second daemon.
        let mut tries = 0;
        let db = loop {
            match Database::create(path) {
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                r => break r.map_err(backend)?,
            }
        };
        let tx = db.begin_write().map_err(backend)?;
        let rev = {
            tx.open_table(KV).map_err(backend)?;
            tx.open_table(LEASES).map_err(backend)?;
            tx.open_table(LEASE_KEYS).map_err(backend)?;
            let meta = tx.open_table(META).map_err(backend)?;
            meta.get("rev")
                .map_err(backend)?
                .map(|v| v.value())
                .unwrap_or(0)
        };
        let max_lease = {
            let leases = tx.open_table(LEASES).map_err(backend)?;
            let last = leases.last().map_err(backend)?;
            last.map(|(k, _)| k.value()).unwrap_or(0)
        };
        tx.commit().map_err(backend)?;
        let (btx, _) = broadcast::channel(HISTORY);
        let inner = Arc::new(Inner {
            db,
            hub: Mutex::new(Hub {
                history: VecDeque::new(),
                floor: rev,
                rev,
                tx: btx,
            }),
            next_lease: Mutex::new(max_lease.max(now_ms() as i64)),
        });
        if let Some(txn) = super::migrate::plan(&inner.db)? {
            // Committed in one transaction; a crash before the old tables are dropped only
            // means they are dropped next time.
            if inner.snapshot(super::schema::ROOT)?.0.is_empty() {
                inner.txn(&txn)?;
            }
            super::migrate::drop_old(&inner.db)?;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&inner);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    if weak.strong_count() == 0 {
                        return;
                    }
                    let w = weak.clone();
                    let r = tokio::task::spawn_blocking(move || match w.upgrade() {
                        Some(inner) => inner.expire_leases(),
                        None => Ok(()),
                    })
                    .await;
                    if let Ok(Err(e)) = r {
                        warn!("expiring leases: {e}");
                    }
                }
            });
        }
        Ok(RedbStore { inner })
    }
}

impl Inner {
    fn hub(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(&self, prefix: &str) -> Result<(Vec<KeyValue>, Rev), StoreError> {
        // The revision is read under the hub lock, which every commit holds while it writes:
        // the read transaction sees exactly the state at that revision.
        let (tx, rev) = {
            let hub = self.hub();
            (self.db.begin_read().map_err(backend)?, hub.rev)
        };
        let table = tx.open_table(KV).map_err(backend)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            out.push(decode(key, v.value())?);
        }
        Ok((out, rev))
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(KV).map_err(backend)?;
        let v = table.get(key).map_err(backend)?;
        v.map(|v| decode(key, v.value())).transpose()
    }

    fn txn(&self, txn: &Txn) -> Result<TxnResult, StoreError> {
        self.apply(txn, None)
    }

    /// Applies a transaction; with `revoke`, also ends that lease and deletes its keys in the
    /// same write transaction, so no keep-alive or put with the lease gets in between.
    fn apply(&self, txn: &Txn, revoke: Option<Revoke>) -> Result<TxnResult, StoreError> {
        let mut hub = self.hub();
        let tx = self.db.begin_write().map_err(backend)?;
        let rev = hub.rev + 1;
        let mut events = Vec::new();
        {
            let mut kv = tx.open_table(KV).map_err(backend)?;
            let mut lease_keys = tx.open_table(LEASE_KEYS).map_err(backend)?;
            let mut leases = tx.open_table(LEASES).map_err(backend)?;
            for c in &txn.compares {
                let holds = match c {
                    Compare::Absent(k) => kv.get(k.as_str()).map_err(backend)?.is_none(),
                    Compare::Exists(k) => kv.get(k.as_str()).map_err(backend)?.is_some(),
                    Compare::ModRev(k, want) => match kv.get(k.as_str()).map_err(backend)? {
                        Some(v) => decode(k, v.value())?.mod_rev == *want,
                        None => *want == 0,
                    },
                    Compare::PrefixEmpty(p) => {
                        match kv.range(p.as_str()..).map_err(backend)?.next() {
                            Some(e) => !e.map_err(backend)?.0.value().starts_with(p.as_str()),
                            None => true,
                        }
                    }
                };
                if !holds {
                    drop((kv, lease_keys, leases));
                    tx.abort().map_err(backend)?;
                    return Ok(TxnResult::Failed(hub.rev));
                }
            }
            for op in &txn.ops {
                match op {
                    Op::Put { key, value, lease } => {
                        if *lease != 0 && leases.get(*lease).map_err(backend)?.is_none() {
                            drop((kv, lease_keys, leases));
                            tx.abort().map_err(backend)?;
                            return Err(StoreError::LeaseNotFound(*lease));
                        }
                        let old = kv
                            .get(key.as_str())
                            .map_err(backend)?
                            .map(|v| decode(key, v.value()))
                            .transpose()?;
                        let create_rev = old.as_ref().map(|o| o.create_rev).unwrap_or(rev);
                        if let Some(o) = &old
                            && o.lease != 0
                            && o.lease != *lease
                        {
                            lease_keys
                                .remove(lease_key(o.lease, key).as_str())
                                .map_err(backend)?;
                        }
                        if *lease != 0 {
                            lease_keys
                                .insert(lease_key(*lease, key).as_str(), ())
                                .map_err(backend)?;
                        }
                        kv.insert(
                            key.as_str(),
                            encode(rev, create_rev, *lease, value).as_slice(),
                        )
                        .map_err(backend)?;
                        events.push(Event {
                            kind: EventKind::Put,
                            kv: KeyValue {
                                key: key.clone(),
                                value: value.clone(),
                                create_rev,
                                mod_rev: rev,
                                lease: *lease,
                            },
                        });
                    }
                    Op::Delete(key) => {
                        if let Some(old) = kv.remove(key.as_str()).map_err(backend)? {
                            let o = decode(key, old.value())?;
                            drop(old);
                            if o.lease != 0 {
                                lease_keys
                                    .remove(lease_key(o.lease, key).as_str())
                                    .map_err(backend)?;
                            }
                            events.push(deleted(key, rev));
                        }
                    }
                    Op::DeletePrefix(p) => {
                        let mut gone = Vec::new();
                        for e in kv.range(p.as_str()..).map_err(backend)? {
                            let (k, v) = e.map_err(backend)?;
                            if !k.value().starts_with(p.as_str()) {
                                break;
                            }
                            gone.push(decode(k.value(), v.value())?);
                        }
                        for o in gone {
                            kv.remove(o.key.as_str()).map_err(backend)?;
                            if o.lease != 0 {
                                lease_keys
                                    .remove(lease_key(o.lease, &o.key).as_str())
                                    .map_err(backend)?;
                            }
                            events.push(deleted(&o.key, rev));
                        }
                    }
                }
            }
            let revoke = match revoke {
                Some(Revoke::Expired(l)) => match leases.get(l).map_err(backend)? {
                    // Renewed since the reaper looked: not expired any more.
                    Some(v) if v.value().1 > now_ms() => None,
                    _ => Some(l),
                },
                Some(Revoke::Now(l)) => Some(l),
                None => None,
            };
            if let Some(lease) = revoke {
                let prefix = format!("{lease:016x}/");
                let mut keys = Vec::new();
                for e in lease_keys.range(prefix.as_str()..).map_err(backend)? {
                    let (k, _) = e.map_err(backend)?;
                    match k.value().strip_prefix(prefix.as_str()) {
                        Some(key) => keys.push(key.to_string()),
                        None => break,
                    }
                }
                for key in keys {
                    lease_keys
                        .remove(lease_key(lease, &key).as_str())
                        .map_err(backend)?;
                    if kv.remove(key.as_str()).map_err(backend)?.is_some() {
                        events.push(deleted(&key, rev));
                    }
                }
                leases.remove(lease).map_err(backend)?;
            }
            if events.is_empty() {
                // Nothing changed: no revision is spent (etcd does the same).
                drop((kv, lease_keys, leases));
                if revoke.is_some() {
                    tx.commit().map_err(backend)?;
                } else {
                    tx.abort().map_err(backend)?;
                }
                return Ok(TxnResult::Committed(hub.rev));
            }
            let mut meta = tx.open_table(META).map_err(backend)?;
            meta.insert("rev", rev).map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        hub.publish(WatchBatch { rev, events });
        Ok(TxnResult::Committed(rev))
    }

    fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let id = {
            let mut n = self.next_lease.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        let ttl_ms = ttl.as_millis() as u64;
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut leases = tx.open_table(LEASES).map_err(backend)?;
            leases
                .insert(id, (ttl_ms, now_ms() + ttl_ms))
                .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok(id)
    }

    fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut leases = tx.open_table(LEASES).map_err(backend)?;
            let ttl = match leases.get(lease).map_err(backend)? {
                Some(v) => v.value().0,
                None => return Err(StoreError::LeaseNotFound(lease)),
            };
            leases
                .insert(lease, (ttl, now_ms() + ttl))
                .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok(())
    }

    /// Deletes a lease and its keys (one transaction, one revision if any key existed).
    fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.apply(&Txn::new(), Some(Revoke::Now(lease)))
            .map(|_| ())
    }

    fn expire_leases(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let expired: Vec<LeaseId> = {
            let tx = self.db.begin_read().map_err(backend)?;
            let leases = tx.open_table(LEASES).map_err(backend)?;
            let mut out = Vec::new();
            for e in leases.iter().map_err(backend)? {
                let (k, v) = e.map_err(backend)?;
                if v.value().1 <= now {
                    out.push(k.value());
                }
            }
            out
        };
        for l in expired {
            self.apply(&Txn::new(), Some(Revoke::Expired(l)))?;
        }
        Ok(())
    }

    fn watch(&self, prefix: &str, from: Rev) -> Result<Watch, StoreError> {
        let (replay, mut live) = {
            let hub = self.hub();
            if from <= hub.floor && from <= hub.rev {
                return Err(StoreError::Compacted {
                    asked: from,
                    compacted: hub.floor,
                });
            }
            let replay: Vec<Arc<WatchBatch>> = hub
                .history
                .iter()
                .filter(|b| b.rev >= from)
                .cloned()
                .collect();
            (replay, hub.tx.subscribe())
        };
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let filter = |b: &WatchBatch| -> Option<WatchBatch> {
                let events: Vec<Event> = b
                    .events
                    .iter()
                    .filter(|e| e.kv.key.starts_with(&prefix))
                    .cloned()
                    .collect();
                (!events.is_empty()).then_some(WatchBatch { rev: b.rev, events })
            };
            let mut last = from - 1;
            for b in replay {
                last = b.rev;
                if let Some(f) = filter(&b)
                    && tx.send(Ok(f)).await.is_err()
                {
                    return;
                }
            }
            loop {
                match live.recv().await {
                    Ok(b) => {
                        if b.rev <= last {
                            continue; // already replayed
                        }
                        last = b.rev;
                        if let Some(f) = filter(&b)
                            && tx.send(Ok(f)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx
                            .send(Err(StoreError::Compacted {
                                asked: last + 1,
                                compacted: last + 1,
                            }))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Watch::new(rx))
    }
}

fn deleted(key: &str, rev: Rev) -> Event {
    Event {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: key.to_string(),
            value: Vec::new(),
            create_rev: 0,
            mod_rev: rev,
            lease: 0,
        },
    }
}

impl Hub {
    fn publish(&mut self, batch: WatchBatch) {
        self.rev = batch.rev;
        let b = Arc::new(batch);
        if self.history.len() == HISTORY
            && let Some(old) = self.history.pop_front()
        {
            self.floor = old.rev;
        }
        self.history.push_back(b.clone());
        let _ = self.tx.send(b);
    }
}

async fn blocking<T: Send + 'static>(
    inner: &Arc<Inner>,
    f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let inner = inner.clone();
    tokio::task::spawn_blocking(move || f(&inner))
        .await
        .map_err(|e| StoreError::Backend(format!("store thread: {e}")))?
}

#[async_trait]
impl Store for RedbStore {
    async fn snapshot(&self, prefix: &str) -> Result<(Vec<KeyValue>, Rev), StoreError> {
        let p = prefix.to_string();
        blocking(&self.inner, move |i| i.snapshot(&p)).await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let k = key.to_string();
        blocking(&self.inner, move |i| i.get(&k)).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        blocking(&self.inner, move |i| i.txn(&txn)).await
    }

    async fn watch(&self, prefix: &str, from: Rev) -> Result<Watch, StoreError> {
        self.inner.watch(prefix, from)
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        blocking(&self.inner, move |i| i.grant(ttl)).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        blocking(&self.inner, move |i| i.keep_alive(lease)).await
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        blocking(&self.inner, move |i| i.revoke(lease)).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract::{self, put};
    use super::*;

    struct Tmp(std::path::PathBuf);
    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let d = std::env::temp_dir().join(format!(
                "sdnet-redb-{tag}-{}-{}",
                std::process::id(),
                now_ms()
            ));
            std::fs::create_dir_all(&d).unwrap();
            Tmp(d)
        }
        fn file(&self) -> std::path::PathBuf {
            self.0.join("store.redb")
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn contract_compare_and_swap() {
        let t = Tmp::new("cas");
        contract::compare_and_swap(&RedbStore::open(&t.file()).unwrap()).await;
    }

    #[tokio::test]
    async fn contract_watch_replays_then_follows() {
        let t = Tmp::new("watch");
        contract::watch_replays_then_follows(&RedbStore::open(&t.file()).unwrap()).await;
    }

    #[tokio::test]
    async fn contract_leases() {
        let t = Tmp::new("lease");
        contract::leases(&RedbStore::open(&t.file()).unwrap()).await;
    }

    #[tokio::test]
    async fn contract_concurrent_create_if_absent() {
        let t = Tmp::new("race");
        contract::concurrent_create_if_absent(Arc::new(RedbStore::open(&t.file()).unwrap())).await;
    }

    #[tokio::test]
    async fn revisions_persist_across_reopen() {
        let t = Tmp::new("reopen");
        {
            let s = RedbStore::open(&t.file()).unwrap();
            assert_eq!(
                s.txn(put("/a/1", "x")).await.unwrap(),
                TxnResult::Committed(1)
            );
            s.txn(put("/b", "1")).await.unwrap();
            s.txn(put("/a/2", "y").delete("/b")).await.unwrap();
        }
        // Reopened: same keys, same revision, the counter continues.
        let s = RedbStore::open(&t.file()).unwrap();
        let (items, rev) = s.snapshot("/a/").await.unwrap();
        assert_eq!(rev, 3);
        let keys: Vec<&str> = items.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["/a/1", "/a/2"]);
        assert!(s.get("/b").await.unwrap().is_none());
        assert_eq!(
            s.txn(put("/c", "1")).await.unwrap(),
            TxnResult::Committed(4)
        );
    }

    #[tokio::test]
    async fn a_reopened_store_has_no_watch_history() {
        let t = Tmp::new("history");
        {
            let s = RedbStore::open(&t.file()).unwrap();
            for i in 0..3 {
                s.txn(put(&format!("/n/{i}"), "a")).await.unwrap();
            }
        }
        // Resuming from before the reopen is a relist.
        let s = RedbStore::open(&t.file()).unwrap();
        assert!(matches!(
            s.watch("/n/", 3).await,
            Err(StoreError::Compacted { .. })
        ));
        let (_, rev) = s.snapshot("/n/").await.unwrap();
        let mut w = s.watch("/n/", rev + 1).await.unwrap();
        s.txn(put("/n/3", "c")).await.unwrap();
        assert_eq!(contract::next_batch(&mut w).await.rev, rev + 1);
    }

    #[tokio::test]
    async fn a_slow_watcher_is_told_to_relist() {
        let t = Tmp::new("slow");
        let s = RedbStore::open(&t.file()).unwrap();
        let mut w = s.watch("/", 1).await.unwrap();
        // More transactions than the watcher buffer and the broadcast history can hold.
        for i in 0..(WATCH_BUFFER + HISTORY + 10) {
            s.inner.txn(&put("/k", &i.to_string())).unwrap();
        }
        let mut saw_compacted = false;
        while let Some(r) = w.next().await {
            if let Err(StoreError::Compacted { .. }) = r {
                saw_compacted = true;
                break;
            }
        }
        assert!(saw_compacted);
    }
}
