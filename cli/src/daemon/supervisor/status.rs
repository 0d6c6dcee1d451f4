//! The status writer: turns the supervisor's observations into `status/<sandbox>` records.
//! It is the only writer of those keys besides sandbox removal (which deletes them), and
//! writes with compare-and-swap, so an observation never resurrects a removed sandbox or
//! overwrites a newer process's status.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::daemon::store::schema::{self, SandboxRec, SandboxRestart, StatusRec};
use crate::daemon::store::{Compare, Store, StoreError, Txn, TxnResult};

use super::{Observation, lifecycle};

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
                let rec = sandbox_rec(&*store, &sandbox).await;
                update(&*store, &sandbox, |st| {
                    if st.pid != Some(pid) || st.exited {
                        return false; // a stale report
                    }
                    info!(sandbox = %sandbox, ?code, "process exited");
                    st.exited = true;
                    st.exit_code = code;
                    st.finished_at = Some(now());
                    st.restarting = rec.as_ref().is_some_and(|r| wants_restart(r, st));
                    if st.restarting {
                        let up = st
                            .finished_at
                            .unwrap_or(0)
                            .saturating_sub(st.started_at.unwrap_or(0));
                        st.backoff_ms =
                            lifecycle::next_backoff(st.backoff_ms, Duration::from_secs(up))
                                .as_millis() as u64;
                    }
                    true
                })
                .await
            }
            Observation::RestartDue { sandbox, pid } => {
                let rec = sandbox_rec(&*store, &sandbox).await;
                update(&*store, &sandbox, |st| {
                    if st.pid != Some(pid) || !st.exited || !st.restarting {
                        return false; // started otherwise meanwhile
                    }
                    st.restarting = false;
                    if rec.as_ref().is_some_and(|r| !r.stopped && st.run == r.runs) {
                        st.due = true;
                        st.restart_count += 1;
                        info!(sandbox = %sandbox, count = st.restart_count, "restarting the process");
                    }
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

/// Whether the restart policy starts the process again after this exit.
pub fn wants_restart(rec: &SandboxRec, st: &StatusRec) -> bool {
    if rec.stopped || st.run != rec.runs || rec.task.is_some() {
        return false;
    }
    match rec.restart {
        SandboxRestart::No => false,
        SandboxRestart::OnFailure => {
            st.exit_code != Some(0) && (rec.restart_max == 0 || st.restart_count < rec.restart_max)
        }
        SandboxRestart::Always | SandboxRestart::UnlessStopped => true,
    }
}

async fn sandbox_rec(store: &dyn Store, id: &str) -> Option<SandboxRec> {
    let key = schema::sandbox(id);
    let kv = store.get(&key).await.ok()??;
    schema::decode::<SandboxRec>(&key, &kv.value).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(restart: SandboxRestart, max: u32) -> SandboxRec {
        SandboxRec {
            id: "s".into(),
            name: "s".into(),
            hostname: "s".into(),
            created: 0,
            mode: Default::default(),
            adopt: None,
            ports: vec![],
            dns: vec![],
            command: vec!["true".into()],
            env: vec![],
            auto_remove: false,
            task: None,
            restart,
            restart_max: max,
            stopped: false,
            stop_timeout_ms: schema::default_stop_ms(),
            runs: 0,
            paused: false,
            links: vec![],
            expose: vec![],
        }
    }

    fn exited(code: i32, count: u32) -> StatusRec {
        StatusRec {
            exited: true,
            exit_code: Some(code),
            restart_count: count,
            ..StatusRec::default()
        }
    }

    #[test]
    fn restart_policies_decide_like_docker() {
        use SandboxRestart::*;
        assert!(!wants_restart(&rec(No, 0), &exited(1, 0)));
        assert!(wants_restart(&rec(OnFailure, 0), &exited(1, 50)));
        assert!(!wants_restart(&rec(OnFailure, 0), &exited(0, 0)));
        assert!(wants_restart(&rec(OnFailure, 2), &exited(137, 1)));
        assert!(!wants_restart(&rec(OnFailure, 2), &exited(1, 2)));
        assert!(wants_restart(&rec(Always, 0), &exited(0, 9)));
        assert!(wants_restart(&rec(UnlessStopped, 0), &exited(0, 0)));
        // Stopped by the user, or replaced by a newer run: never.
        let mut r = rec(Always, 0);
        r.stopped = true;
        assert!(!wants_restart(&r, &exited(1, 0)));
        let mut r = rec(Always, 0);
        r.runs = 1;
        assert!(!wants_restart(&r, &exited(1, 0)));
    }
}
