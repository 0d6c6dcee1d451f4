//! The cluster's nodes: list, inspect, and remove a node that is down (with what it held in
//! the cluster store: its record and the addresses its sandboxes had on swarm networks —
//! its peers went with its lease already).

use tracing::info;

use super::{ApiError, ApiResult, bad, write_in};
use crate::api::{NodeInfo, rfc3339};
use crate::daemon::Node;
use crate::daemon::state::{Desired, Source};
use crate::daemon::store::schema::{self, NodeRec};
use crate::daemon::store::{Compare, Txn};

fn info(node: &Node, d: &Desired, n: &NodeRec) -> NodeInfo {
    NodeInfo {
        id: n.id.clone(),
        name: n.name.clone(),
        addr: n.addr,
        data_port: n.data_port,
        status: if d.alive.contains(&n.id) {
            "ready".into()
        } else {
            "down".into()
        },
        is_self: n.id == node.node_id(),
        endpoints: d
            .peers
            .values()
            .flat_map(|m| m.values())
            .filter(|p| p.rec.node == n.id)
            .count(),
        joined: rfc3339(n.joined),
        leader: d.leader.as_ref().is_some_and(|(id, _)| *id == n.id),
        tasks: d
            .assign
            .values()
            .flat_map(|m| m.values())
            .filter(|a| a.rec.node == n.id)
            .count(),
    }
}

fn cluster(node: &Node) -> ApiResult<()> {
    if node.cluster.is_none() {
        return bad("this node is not in a cluster (start the daemon with --cluster-store)");
    }
    Ok(())
}

/// A node by name, ID or unique ID prefix.
fn find<'a>(d: &'a Desired, r: &str) -> ApiResult<&'a NodeRec> {
    if let Some(n) = d.nodes.get(r) {
        return Ok(&n.rec);
    }
    let hits: Vec<&NodeRec> = d
        .nodes
        .values()
        .map(|n| n.rec.as_ref())
        .filter(|n| n.name == r || (!r.is_empty() && n.id.starts_with(r)))
        .collect();
    match hits.as_slice() {
        [n] => Ok(n),
        [] => Err(ApiError::NotFound(format!("node {r} not found"))),
        _ => Err(ApiError::BadRequest(format!(
            "node {r} is ambiguous: use its ID"
        ))),
    }
}

pub fn list(node: &Node) -> ApiResult<Vec<NodeInfo>> {
    cluster(node)?;
    let d = node.cache.read();
    let mut v: Vec<NodeInfo> = d.nodes.values().map(|n| info(node, &d, &n.rec)).collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

pub fn inspect(node: &Node, r: &str) -> ApiResult<NodeInfo> {
    cluster(node)?;
    let d = node.cache.read();
    Ok(info(node, &d, find(&d, r)?))
}

pub async fn remove(node: &Node, r: &str) -> ApiResult<String> {
    cluster(node)?;
    let mut name = String::new();
    let rev = write_in(node, Source::Cluster, |d| {
        let n = find(d, r)?;
        name = n.name.clone();
        if d.alive.contains(&n.id) {
            return Err(ApiError::Conflict(format!(
                "node {} is ready: only a node that is down can be removed",
                n.name
            )));
        }
        let suffix = format!("@{}", n.id);
        let mut txn = Txn::new()
            .when(Compare::Absent(schema::alive(&n.id)))
            .delete(schema::node(&n.id));
        for (net, m) in d.ipam.iter() {
            for (ip, owner) in m.iter() {
                if owner.ends_with(suffix.as_str()) {
                    txn = txn.delete(schema::ipam(net, *ip));
                }
            }
        }
        for m in d.peers.values() {
            for p in m.values().filter(|p| p.rec.node == n.id) {
                txn = txn.delete(schema::peer(&p.rec.network, &n.id, &p.rec.sandbox));
            }
        }
        Ok(txn)
    })
    .await?;
    super::applied_in(node, Source::Cluster, rev).await?;
    info!(node = %name, "node removed");
    Ok(name)
}
