//! The reconciler's cluster side: other nodes' sandboxes for the name tables, other nodes'
//! endpoints for the overlay data path, and this node's endpoints on swarm networks published
//! for the others (as `peers/…` records under this node's lease, so they vanish with it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sdnet_resolver::model;
use tracing::{info, warn};

use super::sandbox::RealSb;
use crate::daemon::Node;
use crate::daemon::drivers::Peer;
use crate::daemon::state::Desired;
use crate::daemon::store::schema::{self, PeerRec, PeerTask, Scope};
use crate::daemon::store::{Compare, StoreError, Txn};

/// Another node's sandbox as the name tables see it (None: no endpoint of it is left).
pub fn remote_model(d: &Desired, me: &str, sandbox: &str) -> Option<model::Sandbox> {
    let peers: Vec<&PeerRec> = d
        .remote_endpoints(sandbox)
        .into_iter()
        .map(|p| p.rec.as_ref())
        .filter(|p| p.node != me && d.networks.contains_key(p.network.as_str()))
        .collect();
    let first = peers.first()?;
    Some(model::Sandbox {
        id: sandbox.to_string(),
        name: first.name.clone(),
        hostname: Some(first.hostname.clone()),
        endpoints: peers
            .iter()
            .map(|p| model::Endpoint {
                network: p.network.clone(),
                ipv4: p.ipv4,
                ipv6: p.ipv6,
                aliases: p.aliases.clone(),
            })
            .collect(),
        upstreams: Vec::new(),
        task: first.task.as_ref().map(|t| model::TaskInfo {
            service: t.service.clone(),
            slot: t.slot,
            healthy: t.healthy,
        }),
        links: Vec::new(),
    })
}

/// Every sandbox of another node (for a full pass).
pub fn remote_sandboxes(d: &Desired, me: &str) -> BTreeSet<String> {
    d.peers
        .values()
        .flat_map(|m| m.values())
        .filter(|p| p.rec.node != me)
        .map(|p| p.rec.sandbox.clone())
        .collect()
}

/// Other nodes' endpoints on a network, with their nodes' tunnel endpoints.
pub fn peers_of(d: &Desired, me: &str, net: &str) -> Vec<Peer> {
    d.peers
        .get(net)
        .into_iter()
        .flat_map(|m| m.values())
        .map(|p| p.rec.as_ref())
        .filter(|p| p.node != me)
        .filter_map(|p| {
            let vtep = d.nodes.get(p.node.as_str())?.rec.addr;
            Some(Peer {
                mac: p.mac,
                ips: [p.ipv4.map(IpAddr::V4), p.ipv6.map(IpAddr::V6)]
                    .into_iter()
                    .flatten()
                    .collect(),
                vtep,
            })
        })
        .collect()
}

/// This node's realized endpoints on swarm networks, as the other nodes must see them.
pub fn wanted(
    me: &str,
    sbs: &std::collections::HashMap<String, RealSb>,
    d: &Desired,
) -> BTreeMap<String, PeerRec> {
    let mut out = BTreeMap::new();
    for (id, r) in sbs {
        let Some(sb) = d.sandboxes.get(id.as_str()) else {
            continue;
        };
        for (net, (ep, _, n)) in &r.eps {
            if n.scope != Scope::Swarm {
                continue;
            }
            out.insert(
                schema::peer(net, me, id),
                PeerRec {
                    network: net.clone(),
                    node: me.to_string(),
                    sandbox: id.clone(),
                    name: sb.rec.name.clone(),
                    hostname: sb.rec.hostname.clone(),
                    order: ep.order,
                    ipv4: ep.ipv4,
                    ipv6: ep.ipv6,
                    mac: ep.mac,
                    aliases: ep.aliases.clone(),
                    task: sb.rec.task.as_ref().map(|t| PeerTask {
                        service: t.service.clone(),
                        slot: t.slot,
                        healthy: d.visible(id),
                        version: t.version,
                    }),
                },
            );
        }
    }
    out
}

/// Writes the difference between what this node should publish and what the cluster store
/// holds of it. A failure (the store unreachable) is retried at the next round.
pub async fn publish(node: &Node, d: &Desired, want: BTreeMap<String, PeerRec>) {
    let Some(c) = &node.cluster else { return };
    let me = c.id.as_str();
    let have: BTreeMap<String, &PeerRec> = d
        .peers
        .values()
        .flat_map(|m| m.values())
        .filter(|p| p.rec.node == me)
        .map(|p| {
            (
                schema::peer(&p.rec.network, me, &p.rec.sandbox),
                p.rec.as_ref(),
            )
        })
        .collect();
    // Twice at most: a lease found gone (it expired while the store was out of reach) is
    // replaced at once and everything published under the new one, not at the next resync.
    for _ in 0..2 {
        let lease = c.lease();
        let mut txn = Txn::new();
        let mut n = 0;
        for (k, p) in &want {
            if have.get(k) != Some(&p) {
                txn = txn.put_leased(k.clone(), schema::encode(p), lease);
                n += 1;
            }
        }
        for k in have.keys() {
            if !want.contains_key(k) {
                txn = txn.delete(k.clone());
                n += 1;
            }
        }
        if n == 0 {
            return;
        }
        match c.store.txn(txn).await {
            Ok(_) => {
                info!(changes = n, "published this node's endpoints");
                return;
            }
            Err(StoreError::LeaseNotFound(_)) => {
                if let Err(e) = c.renew(lease).await {
                    warn!("publishing this node's endpoints: registering again: {e}");
                    return;
                }
            }
            Err(e) => {
                warn!("publishing this node's endpoints: {e}");
                return;
            }
        }
    }
}

/// Addresses this node claimed on swarm networks for sandboxes it no longer has (a crash
/// between the claim and the sandbox's record, or between a removal and the release).
pub async fn release_orphans(node: &Node, d: &Desired) {
    let Some(c) = &node.cluster else { return };
    let suffix = format!("@{}", c.id);
    let mut txn = Txn::new();
    let mut n = 0;
    for (net, m) in d.ipam.iter() {
        for (ip, owner) in m.iter() {
            let Some(sb) = owner
                .strip_prefix("sandbox:")
                .and_then(|o| o.strip_suffix(suffix.as_str()))
            else {
                continue;
            };
            if d.sandboxes.contains_key(sb) || node.ipam.is_pending(net, *ip) {
                continue;
            }
            let k = schema::ipam(net, *ip);
            txn = txn.when(Compare::Exists(k.clone())).delete(k);
            n += 1;
        }
    }
    if n > 0 {
        match c.store.txn(txn).await {
            Ok(_) => info!(
                addresses = n,
                "released addresses of sandboxes this node no longer has"
            ),
            Err(e) => warn!("releasing orphaned addresses: {e}"),
        }
    }
}

/// Addresses this node's sandboxes hold on swarm networks that the cluster store no longer
/// records (the node was removed with `node rm` while it was down, then came back): claimed
/// again, so no other node hands them out. One already taken by another owner meanwhile is
/// reported; the endpoint keeps it until it is reconnected.
pub async fn reclaim(node: &Node, d: &Desired, sbs: &std::collections::HashMap<String, RealSb>) {
    let Some(c) = &node.cluster else { return };
    let mut txn = Txn::new();
    let mut n = 0;
    for (id, r) in sbs {
        if !d.sandboxes.contains_key(id.as_str()) {
            continue;
        }
        let owner = crate::daemon::api::overlay::owner(node, id);
        for (net, (ep, _, rec)) in &r.eps {
            if rec.scope != Scope::Swarm {
                continue;
            }
            let ips = [ep.ipv4.map(IpAddr::V4), ep.ipv6.map(IpAddr::V6)];
            for ip in ips.into_iter().flatten() {
                match d.ipam.get(net.as_str()).and_then(|m| m.get(&ip)) {
                    Some(o) if *o == owner => {}
                    Some(o) => warn!(
                        sandbox = %id, network = %rec.name, %ip, holder = %o,
                        "this sandbox's address is held by another owner in the cluster store"
                    ),
                    None => {
                        let k = schema::ipam(net, ip);
                        txn = txn
                            .when(Compare::Absent(k.clone()))
                            .put(k, owner.clone().into_bytes());
                        n += 1;
                    }
                }
            }
        }
    }
    if n > 0 {
        match c.store.txn(txn).await {
            Ok(_) => info!(addresses = n, "claimed this node's addresses again"),
            Err(e) => warn!("claiming this node's addresses again: {e}"),
        }
    }
}
