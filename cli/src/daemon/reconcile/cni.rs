//! What CNI plugins chose for an endpoint, written back into its record: the addresses (and
//! MAC) from the cached ADD result go into `endpoints/<net>/<sandbox>` like an address IPAM
//! picked, so the name tables, `inspect`, hosts files, a restarted daemon and every other
//! reader see them through the store. The write is a compare-and-swap on the record as
//! this round saw it; one that loses (the endpoint changed meanwhile) is done again by the
//! round that applies the change.

use std::time::Duration;

use anyhow::{Context, Result};
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
