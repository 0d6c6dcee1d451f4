//! CNI endpoints in the reconciler.
//!
//! What CNI plugins chose for an endpoint, written back into its record: the addresses (and
//! MAC) from the cached ADD result go into `endpoints/<net>/<sandbox>` like an address IPAM
//! picked, so the name tables, `inspect`, hosts files, a restarted daemon and every other
//! reader see them through the store. The write is a compare-and-swap on the record as
//! this round saw it; one that loses (the endpoint changed meanwhile) is done again by the
//! round that applies the change. A repaired endpoint's new addresses go the same way.
//!
//! The drift check of CNI endpoints, [`Checker`]: CHECK on every full pass, beside the
//! rounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::debug;

use crate::daemon::Node;
use crate::daemon::state::{Desired, Source};
use crate::daemon::store::schema::{self, EndpointRec};
use crate::daemon::store::{Compare, Txn, TxnResult};

/// How long a round waits for the state cache to see its own write (the API handler that
/// waits for this round then finds the addresses served).
const SEEN_LIMIT: Duration = Duration::from_secs(10);

pub async fn write_back(node: &Node, d: &Desired, ep: &EndpointRec) -> Result<()> {
    let Some(a) = node.drivers.cni.assigned(&ep.network, &ep.sandbox).await? else {
        return Ok(());
    };
    let mut want = ep.clone();
    want.ipv4 = a.ipv4;
    want.ipv6 = a.ipv6;
    if let Some(mac) = a.mac {
        want.mac = mac;
    }
    if want == *ep {
        return Ok(());
    }
    let Some(entry) = d
        .endpoints
        .get(ep.sandbox.as_str())
        .and_then(|m| m.get(ep.network.as_str()))
    else {
        return Ok(());
    };
    let key = schema::endpoint(&ep.network, &ep.sandbox);
    let txn = Txn::new()
        .when(Compare::ModRev(key.clone(), entry.rev))
        .put(key, schema::encode(&want));
    match node
        .store
        .txn(txn)
        .await
        .context("recording the CNI plugins' addresses")?
    {
        TxnResult::Committed(rev) => {
            debug!(sandbox = %ep.sandbox, ipv4 = ?want.ipv4, ipv6 = ?want.ipv6, "CNI addresses recorded");
            let _ = tokio::time::timeout(SEEN_LIMIT, node.cache.wait_for(Source::Local, rev)).await;
        }
        TxnResult::Failed(_) => {}
    }
    Ok(())
}

/// How many endpoints are CHECKed at once (each CHECK is one exec per plugin, one after the
/// other).
const CHECKS_AT_ONCE: usize = 2;

/// One endpoint to CHECK.
pub struct Job {
    pub sandbox: String,
    pub network: String,
}

/// CNI CHECK beside the reconciler: every full pass hands it the CNI endpoints it has
/// realized, and it CHECKs each of them once, a few at a time, while rounds go on (a pass
/// over a thousand endpoints is thousands of plugin execs: no round may wait for that).
/// A sweep starts only when the previous one has finished, so no endpoint is checked twice
/// in one pass. The sandboxes of endpoints found broken are sent back to the reconciler,
/// whose next round repairs them (the driver says they need it).
pub struct Checker {
    busy: Arc<AtomicBool>,
    broken: mpsc::UnboundedSender<String>,
}

/// Clears the busy flag when a sweep ends, however it ends.
struct Done(Arc<AtomicBool>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Checker {
    /// The checker and where the sandboxes with broken endpoints come out.
    pub fn new() -> (Checker, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let c = Checker {
            busy: Arc::new(AtomicBool::new(false)),
            broken: tx,
        };
        (c, rx)
    }

    /// Starts a sweep over `jobs`, unless the previous one still runs.
    pub fn sweep(&self, node: Arc<Node>, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        if self.busy.swap(true, Ordering::AcqRel) {
            debug!("the previous CNI CHECK sweep still runs: none this pass");
            return;
        }
        let done = Done(self.busy.clone());
        let tx = self.broken.clone();
        tokio::spawn(async move {
            let _done = done;
            let started = Instant::now();
            let total = jobs.len();
            let broken = futures::stream::iter(jobs)
                .map(|j| {
                    let node = node.clone();
                    async move {
                        let bad = node
                            .drivers
                            .cni
                            .check_endpoint(&j.network, &j.sandbox)
                            .await;
                        bad.then_some(j.sandbox)
                    }
                })
                .buffer_unordered(CHECKS_AT_ONCE)
                .filter_map(std::future::ready)
                .map(|sb| {
                    // The reconciler is gone only when the daemon stops.
                    let _ = tx.send(sb);
                })
                .count()
                .await;
            debug!(
                endpoints = total,
                broken,
                ms = started.elapsed().as_secs_f64() * 1000.0,
                "CNI CHECK sweep"
            );
        });
    }
}
