//! Swarm-scope writes: overlay networks and the addresses of this node's endpoints on them,
//! in the cluster store. A network takes its name, subnet and VNI by create-if-absent keys
//! (guarded by the cluster's networks guard, so two nodes' overlap checks never race); an
//! endpoint's address is claimed there before the sandbox's own record, which stays in this
//! node's store, is written (`sandbox:<id>@<node>` says whose it is, so a claim left by a
//! crash in between can be found and released).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sdnet_netstack::ipam;
use tracing::info;

use super::networks::{check_reqs, guard, put_network, reserved, subnet_reqs};
use super::{ApiError, ApiResult, bad, now, random_id, settle_in, views, write_in};
use crate::api::{NetworkCreate, NetworkInfo};
use crate::daemon::Node;
use crate::daemon::ipam::plan_subnets;
use crate::daemon::state::{Desired, Dirty, Source};
use crate::daemon::store::schema::{self, DriverKind, NetworkRec, Scope};
use crate::daemon::store::{Compare, Txn};

/// VNIs of overlay networks come from here up (outside the 802.1Q range).
const FIRST_VNI: u32 = 4096;
const LAST_VNI: u32 = (1 << 24) - 1;

/// The routing mesh's overlay (Docker's `ingress`): every task of a swarm service with a
/// port published through the mesh is on it, and so is each node's ingress sandbox.
pub const INGRESS: &str = "ingress";

/// Makes the `ingress` overlay if the cluster has none yet (any node may; the name is taken
/// by create-if-absent, so two nodes racing make one).
pub async fn ensure_ingress(node: &Node) -> ApiResult<()> {
    if node.cache.read().network_by_name(INGRESS).is_some() {
        return Ok(());
    }
    let req = NetworkCreate {
        name: INGRESS.into(),
        driver: crate::api::Driver::Overlay,
        ipam: Vec::new(),
        ipv6: false,
        internal: false,
        attachable: false,
        // The mesh needs addresses, not names.
        dns: Some(false),
        mtu: None,
        dns_servers: Vec::new(),
        ttl: None,
        labels: BTreeMap::new(),
        // The mesh's addresses are nobody's names.
        host_dns: Some(false),
        options: BTreeMap::new(),
    };
    match create_net(node, req, true).await {
        Ok(_) => Ok(()),
        Err(_) if node.cache.read().network_by_name(INGRESS).is_some() => Ok(()),
        Err(e) => Err(e),
    }
}

pub async fn create(node: &Node, req: NetworkCreate) -> ApiResult<NetworkInfo> {
    if req.name == INGRESS {
        return bad("the name ingress is the routing mesh's network: choose another");
    }
    create_net(node, req, false).await
}

async fn create_net(node: &Node, req: NetworkCreate, predefined: bool) -> ApiResult<NetworkInfo> {
    if node.cluster.is_none() {
        return bad(
            "driver overlay needs a cluster: start the daemon with --cluster-store etcd://HOST:PORT --advertise-addr IP",
        );
    }
    if let Some(m) = req.mtu
        && !(68..=65535).contains(&m)
    {
        return bad(format!("invalid MTU {m}: must be 68-65535"));
    }
    let reqs = subnet_reqs(&req);
    check_reqs(&reqs)?;
    let reserved = reserved(node).await;
    let id = random_id();
    let rev = write_in(node, Source::Cluster, |d| {
        if d.network_by_name(&req.name).is_some() {
            return Err(ApiError::Conflict(format!(
                "network with name {} already exists",
                req.name
            )));
        }
        let vni = (FIRST_VNI..=LAST_VNI)
            .find(|v| !d.vnis.contains_key(v))
            .ok_or_else(|| ApiError::Conflict("no VNI left".into()))?;
        let rec = NetworkRec {
            id: id.clone(),
            name: req.name.clone(),
            driver: DriverKind::Overlay,
            scope: Scope::Swarm,
            created: now(),
            subnets: plan_subnets(d, &reqs, req.ipv6, &reserved, ipam::Scope::Swarm)?,
            internal: req.internal,
            attachable: req.attachable,
            dns: req.dns.unwrap_or(true),
            mtu: req.mtu,
            dns_servers: req.dns_servers.iter().map(|u| u.0).collect(),
            ttl: req.ttl,
            labels: req.labels.clone(),
            options: BTreeMap::new(),
            predefined,
            vni: Some(vni),
            host_dns: req.host_dns.unwrap_or(true),
        };
        let txn = put_network(Txn::new(), &rec)
            .when(Compare::Absent(schema::vni(vni)))
            .put(schema::vni(vni), id.as_bytes().to_vec());
        Ok(guard(d, Source::Cluster, txn, &id))
    })
    .await?;
    settle_in(node, Source::Cluster, rev, &Dirty::Network(id.clone())).await?;
    info!(network = %req.name, "overlay network created");
    views::network(node, &node.cache.read(), &id)
        .ok_or_else(|| ApiError::Conflict(format!("network {} was removed meanwhile", req.name)))
}

/// The owner string of an address this node's sandbox holds on a swarm network.
pub fn owner(node: &Node, sandbox: &str) -> String {
    format!("sandbox:{sandbox}@{}", node.node_id())
}

/// What a sandbox holds on one swarm network.
#[derive(Clone, Debug)]
pub struct Claim {
    pub network: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

fn claim_keys(c: &Claim) -> Vec<String> {
    [c.ipv4.map(IpAddr::V4), c.ipv6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
        .map(|ip| schema::ipam(&c.network, ip))
        .collect()
}

/// Takes addresses for `sandbox` on each swarm network of `nets` (network ID and wanted
/// addresses) in one transaction of the cluster store.
/// `pending` keeps the addresses from other calls on this node until the caller has written
/// the sandbox's record.
pub async fn claim(
    node: &Node,
    sandbox: &str,
    nets: &[(String, Option<Ipv4Addr>, Option<Ipv6Addr>)],
    pending: &mut crate::daemon::ipam::Claim<'_>,
) -> ApiResult<Vec<Claim>> {
    if nets.is_empty() {
        return Ok(Vec::new());
    }
    let who = owner(node, sandbox);
    let mut out = Vec::new();
    write_in(node, Source::Cluster, |d| {
        out.clear();
        pending.clear();
        let mut txn = Txn::new();
        for (net_id, want4, want6) in nets {
            let n = d
                .networks
                .get(net_id.as_str())
                .ok_or_else(|| ApiError::NotFound(format!("network {net_id} not found")))?;
            let (ipv4, ipv6) = node.ipam.endpoint(d, &n.rec, *want4, *want6, pending)?;
            let c = Claim {
                network: net_id.clone(),
                ipv4,
                ipv6,
            };
            txn = txn.when(Compare::ModRev(schema::network(net_id), n.rev));
            for k in claim_keys(&c) {
                txn = txn
                    .when(Compare::Absent(k.clone()))
                    .put(k, who.clone().into_bytes());
            }
            out.push(c);
        }
        Ok(txn)
    })
    .await?;
    Ok(out)
}

/// Gives addresses back (a failed create or connect, a removed sandbox or endpoint).
pub async fn release(node: &Node, sandbox: &str, claims: &[Claim]) -> ApiResult<()> {
    if claims.is_empty() || node.cluster.is_none() {
        return Ok(());
    }
    let who = owner(node, sandbox);
    write_in(node, Source::Cluster, |d: &Desired| {
        let mut txn = Txn::new();
        for c in claims {
            for ip in [c.ipv4.map(IpAddr::V4), c.ipv6.map(IpAddr::V6)]
                .into_iter()
                .flatten()
            {
                // Only our own claim: the address may belong to someone else by now.
                if d.ipam
                    .get(c.network.as_str())
                    .and_then(|m| m.get(&ip))
                    .is_some_and(|o| *o == who)
                {
                    txn = txn.delete(schema::ipam(&c.network, ip));
                }
            }
        }
        Ok(txn)
    })
    .await?;
    Ok(())
}
