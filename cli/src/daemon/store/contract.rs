//! The contract every [`Store`] backend keeps, as assertions shared by the backends' tests
//! (redb's and etcd's run the same functions). Revisions are compared relative to what the
//! store reported, never as absolute numbers: a fresh etcd starts at revision 1 with nothing
//! written, a fresh redb at 0.

use std::sync::Arc;
use std::time::Duration;

use super::{Compare, EventKind, Store, StoreError, Txn, TxnResult, Watch, WatchBatch};

pub fn put(k: &str, v: &str) -> Txn {
    Txn::new().put(k, v.as_bytes().to_vec())
}

fn committed(r: TxnResult) -> i64 {
    match r {
        TxnResult::Committed(rev) => rev,
        TxnResult::Failed(rev) => panic!("transaction failed at revision {rev}"),
    }
}

/// The next batch, or a panic after 10 s (a watch that should deliver but hangs).
pub async fn next_batch(w: &mut Watch) -> WatchBatch {
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Some(Ok(b))) => b,
        Ok(Some(Err(e))) => panic!("watch ended with an error: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch batch within 10 s"),
    }
}

/// Compare-and-swap, every kind of compare, all-or-nothing, deletes, snapshots.
pub async fn compare_and_swap(s: &dyn Store) {
    let (_, base) = s.snapshot("/").await.unwrap();
    let r1 = committed(s.txn(put("/a/1", "x")).await.unwrap());
    assert!(r1 > base);
    // Create-if-absent fails on an existing key, writes nothing, reports the revision.
    let r = s
        .txn(put("/a/1", "y").when(Compare::Absent("/a/1".into())))
        .await
        .unwrap();
    assert_eq!(r, TxnResult::Failed(r1));
    let kv = s.get("/a/1").await.unwrap().unwrap();
    assert_eq!(
        (kv.value, kv.create_rev, kv.mod_rev),
        (b"x".to_vec(), r1, r1)
    );
    assert_eq!(kv.lease, 0);
    // ModRev: only the writer that saw revision r1 wins.
    let r2 = committed(
        s.txn(put("/a/1", "z").when(Compare::ModRev("/a/1".into(), r1)))
            .await
            .unwrap(),
    );
    assert!(r2 > r1);
    let kv = s.get("/a/1").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_rev, kv.mod_rev, kv.value),
        (r1, r2, b"z".to_vec())
    );
    let r = s
        .txn(put("/a/1", "w").when(Compare::ModRev("/a/1".into(), r1)))
        .await
        .unwrap();
    assert_eq!(r, TxnResult::Failed(r2));
    // Exists.
    let r = s
        .txn(put("/e", "1").when(Compare::Exists("/nope".into())))
        .await
        .unwrap();
    assert_eq!(r, TxnResult::Failed(r2));
    let r3 = committed(
        s.txn(
            Txn::new()
                .when(Compare::Exists("/a/1".into()))
                .put("/e", b"1".to_vec()),
        )
        .await
        .unwrap(),
    );
    assert!(r3 > r2);
    // PrefixEmpty guards "no key under /a/"; a key equal to the prefix counts too.
    let r = s
        .txn(put("/b", "1").when(Compare::PrefixEmpty("/a/".into())))
        .await
        .unwrap();
    assert_eq!(r, TxnResult::Failed(r3));
    let r = s
        .txn(put("/b", "1").when(Compare::PrefixEmpty("/e".into())))
        .await
        .unwrap();
    assert_eq!(r, TxnResult::Failed(r3));
    let r4 = committed(
        s.txn(put("/b", "1").when(Compare::PrefixEmpty("/c/".into())))
            .await
            .unwrap(),
    );
    assert!(r4 > r3);
    // All or nothing: one failing compare blocks every op.
    let r = s
        .txn(
            Txn::new()
                .when(Compare::Absent("/x".into()))
                .when(Compare::Absent("/b".into()))
                .put("/x", b"1".to_vec())
                .delete("/e"),
        )
        .await
        .unwrap();
    assert_eq!(r, TxnResult::Failed(r4));
    assert!(s.get("/x").await.unwrap().is_none());
    assert!(s.get("/e").await.unwrap().is_some());
    // Several ops, one revision.
    let r5 = committed(s.txn(put("/a/2", "y").delete("/b")).await.unwrap());
    assert!(r5 > r4);
    assert_eq!(s.get("/a/2").await.unwrap().unwrap().create_rev, r5);
    assert!(s.get("/b").await.unwrap().is_none());
    let (items, rev) = s.snapshot("/a/").await.unwrap();
    assert_eq!(rev, r5);
    let keys: Vec<&str> = items.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["/a/1", "/a/2"]);
    // A transaction that changes nothing spends no revision.
    assert_eq!(
        s.txn(Txn::new().delete("/nope")).await.unwrap(),
        TxnResult::Committed(r5)
    );
    // ModRev of an absent key is 0.
    assert_eq!(
        s.txn(Txn::new().when(Compare::ModRev("/nope".into(), 0)))
            .await
            .unwrap(),
        TxnResult::Committed(r5)
    );
    // DeletePrefix deletes exactly the keys under the prefix.
    let r6 = committed(s.txn(Txn::new().delete_prefix("/a/")).await.unwrap());
    assert!(r6 > r5);
    assert!(s.snapshot("/a/").await.unwrap().0.is_empty());
    assert!(s.get("/e").await.unwrap().is_some());
    let (all, rev) = s.snapshot("").await.unwrap();
    assert_eq!(rev, r6);
    assert_eq!(
        all.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        ["/e"]
    );
}

/// A watch replays from a revision, then follows; one batch per transaction, only the
/// events under the prefix, in operation order.
pub async fn watch_replays_then_follows(s: &dyn Store) {
    let r1 = committed(s.txn(put("/n/1", "a")).await.unwrap());
    let r2 = committed(s.txn(put("/other", "a")).await.unwrap());
    let r3 = committed(s.txn(put("/n/2", "b").delete("/n/1")).await.unwrap());
    assert!(r1 < r2 && r2 < r3);
    let mut w = s.watch("/n/", r2).await.unwrap();
    let b = next_batch(&mut w).await;
    assert_eq!(b.rev, r3);
    let kinds: Vec<(EventKind, &str)> = b
        .events
        .iter()
        .map(|e| (e.kind, e.kv.key.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [(EventKind::Put, "/n/2"), (EventKind::Delete, "/n/1")]
    );
    assert_eq!(b.events[0].kv.value, b"b");
    assert_eq!(b.events[0].kv.mod_rev, r3);
    assert_eq!(b.events[0].kv.create_rev, r3);
    // A delete carries the deleting revision and no value.
    assert_eq!(b.events[1].kv.mod_rev, r3);
    assert!(b.events[1].kv.value.is_empty());
    committed(s.txn(put("/other", "b")).await.unwrap()); // not under /n/
    let r5 = committed(s.txn(Txn::new().delete_prefix("/n/")).await.unwrap());
    let b = next_batch(&mut w).await;
    assert_eq!(b.rev, r5);
    assert_eq!(b.events.len(), 1);
    assert_eq!(b.events[0].kind, EventKind::Delete);
    assert_eq!(b.events[0].kv.key, "/n/2");
    // Several transactions in a row: one batch each, in order.
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(committed(
            s.txn(put(&format!("/n/{i}"), "c")).await.unwrap(),
        ));
    }
    for want in revs {
        let b = next_batch(&mut w).await;
        assert_eq!((b.rev, b.events.len()), (want, 1));
    }
    // List, then watch from the listed revision + 1: nothing missed, nothing twice.
    let (items, rev) = s.snapshot("/n/").await.unwrap();
    assert_eq!(items.len(), 5);
    let mut w2 = s.watch("/n/", rev + 1).await.unwrap();
    let r = committed(s.txn(put("/n/9", "d")).await.unwrap());
    let b = next_batch(&mut w2).await;
    assert_eq!((b.rev, b.events[0].kv.key.as_str()), (r, "/n/9"));
    assert_eq!(next_batch(&mut w).await.rev, r);
}

/// Leased keys live while the lease is kept alive, vanish (with an event) when it expires or
/// is revoked; an ended lease cannot be renewed nor used. Revoking an ended lease is a no-op.
pub async fn leases(s: &dyn Store) {
    let short = s.grant(Duration::from_secs(1)).await.unwrap();
    let long = s.grant(Duration::from_secs(60)).await.unwrap();
    assert_ne!(short, long);
    s.txn(Txn::new().put_leased("/l/short", b"1".to_vec(), short))
        .await
        .unwrap();
    s.txn(Txn::new().put_leased("/l/long", b"1".to_vec(), long))
        .await
        .unwrap();
    assert_eq!(s.get("/l/long").await.unwrap().unwrap().lease, long);
    let (_, rev) = s.snapshot("/l/").await.unwrap();
    let mut w = s.watch("/l/", rev + 1).await.unwrap();
    // Kept alive well past its TTL, it stays.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        s.keep_alive(short).await.unwrap();
    }
    assert!(s.get("/l/short").await.unwrap().is_some());
    // Not renewed: deleted, and watchers see it.
    let b = next_batch(&mut w).await;
    assert_eq!(b.events.len(), 1);
    assert_eq!(b.events[0].kind, EventKind::Delete);
    assert_eq!(b.events[0].kv.key, "/l/short");
    assert!(s.get("/l/short").await.unwrap().is_none());
    assert!(matches!(
        s.keep_alive(short).await,
        Err(StoreError::LeaseNotFound(l)) if l == short
    ));
    assert!(matches!(
        s.txn(Txn::new().put_leased("/l/x", b"1".to_vec(), short))
            .await,
        Err(StoreError::LeaseNotFound(l)) if l == short
    ));
    assert!(s.get("/l/x").await.unwrap().is_none());
    s.revoke(long).await.unwrap();
    assert!(s.snapshot("/l/").await.unwrap().0.is_empty());
    let b = next_batch(&mut w).await;
    assert_eq!(
        (b.events[0].kind, b.events[0].kv.key.as_str()),
        (EventKind::Delete, "/l/long")
    );
    s.revoke(long).await.unwrap();
}

/// Sixteen writers race to create the same key: exactly one wins.
pub async fn concurrent_create_if_absent(s: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.txn(
                put("/ipam/n/10.0.0.2", &format!("sb{i}"))
                    .when(Compare::Absent("/ipam/n/10.0.0.2".into())),
            )
            .await
            .unwrap()
        }));
    }
    let mut won = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        if matches!(t.await.unwrap(), TxnResult::Committed(_)) {
            won.push(i);
        }
    }
    assert_eq!(won.len(), 1);
    let kv = s.get("/ipam/n/10.0.0.2").await.unwrap().unwrap();
    assert_eq!(kv.value, format!("sb{}", won[0]).into_bytes());
}
