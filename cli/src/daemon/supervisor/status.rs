//! The status writer: turns the supervisor's observations into `status/<sandbox>` records.
//! It is the only writer of those keys besides sandbox removal (which deletes them), and
//! writes with compare-and-swap, so an observation never resurrects a removed sandbox or
//! overwrites a newer process's status.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::daemon::store::schema::{self, StatusRec};
use crate::daemon::store::{Compare, Store, StoreError, Txn, TxnResult};

use super::Observation;

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Observation>) {
    while let Some(o) = rx.recv().await {
        let r = match o {
            Observation::Exited { sandbox, pid, code } => {
                update(&*store, &sandbox, |st| {
                    if st.pid != Some(pid) || st.exited {
                        return false; // a stale report
                    }
                    info!(sandbox = %sandbox, ?code, "process exited");
                    st.exited = true;
                    st.exit_code = code;
                    st.finished_at = Some(now());
                    true
                })
                .await
            }
            Observation::Health { sandbox, healthy } => {
                update(&*store, &sandbox, |st| {
                    if st.healthy == healthy && st.unhealthy != healthy {
                        return false;
                    }
                    info!(sandbox = %sandbox, healthy, "health changed");
                    st.healthy = healthy;
                    st.unhealthy = !healthy;
                    true
                })
                .await
            }
        };
        if let Err(e) = r {
            warn!("recording an observation: {e}");
        }
    }
}

/// Read-modify-write of one status record; `f` returns false when nothing is to change.
pub async fn update(
    store: &dyn Store,
    sandbox: &str,
    f: impl Fn(&mut StatusRec) -> bool,
) -> Result<(), StoreError> {
    let key = schema::status(sandbox);
    for _ in 0..16 {
        let cur = store.get(&key).await?;
        let (mut st, rev) = match &cur {
            Some(kv) => (
                schema::decode::<StatusRec>(&key, &kv.value).unwrap_or_default(),
                kv.mod_rev,
            ),
            None => (StatusRec::default(), 0),
        };
        if !f(&mut st) {
            return Ok(());
        }
        let cmp = if rev == 0 {
            Compare::Absent(key.clone())
        } else {
            Compare::ModRev(key.clone(), rev)
        };
        let txn = Txn::new()
            .when(cmp)
            .when(Compare::Exists(schema::sandbox(sandbox)))
            .put(key.clone(), schema::encode(&st));
        match store.txn(txn).await? {
            TxnResult::Committed(_) => return Ok(()),
            TxnResult::Failed(_) => {
                if store.get(&schema::sandbox(sandbox)).await?.is_none() {
                    return Ok(()); // removed meanwhile: nothing to record
                }
            }
        }
    }
    Err(StoreError::Backend(format!(
        "status of {sandbox}: too many concurrent writers"
    )))
}
