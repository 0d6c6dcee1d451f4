//! Networks: create, remove, prune, connect and disconnect sandboxes.
//!
//! Network creation and removal also bump `meta/networks`, which every network transaction
//! compares: the subnet-overlap check of one create can never race with another's.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use sdnet_resolver::model;
use tracing::info;

use super::{ApiError, ApiResult, bad, lookup_err, now, random_id, settle, views, write};
use crate::api::*;
use crate::daemon::Node;
use crate::daemon::config::{
    BRIDGE_PREFIX, VETH_PREFIX, VXLAN_PREFIX, our_link, v6_mac, valid_ifname,
};
use crate::daemon::drivers::macvlan::{MacvlanDriver, Refusal};
use crate::daemon::ipam::{SubnetReq, plan_subnets};
use crate::daemon::state::{Desired, Dirty, Source};
use crate::daemon::store::schema::{self, DriverKind, EndpointRec, NetworkRec, Scope};
use crate::daemon::store::{Compare, Txn};
use sdnet_netstack::ipam;

/// The networks guard of store `src` (each store has its own).
pub fn guard(d: &Desired, src: Source, txn: Txn, id: &str) -> Txn {
    let rev = match src {
        Source::Local => d.networks_guard[0],
        Source::Cluster => d.networks_guard[1],
    };
    txn.when(Compare::ModRev(schema::NETWORKS_GUARD.into(), rev))
        .put(schema::NETWORKS_GUARD, id.as_bytes().to_vec())
}

/// Host prefixes IPAM must not hand out: routes and nameservers of the daemon's namespace.
pub async fn reserved(node: &Node) -> Vec<IpNet> {
    let mut r = node.host.routes().await;
    r.extend(
        node.host_conf()
            .nameservers
            .iter()
            .filter_map(|ip| IpNet::new(*ip, if ip.is_ipv4() { 32 } else { 128 }).ok()),
    );
    r
}

pub fn put_network(txn: Txn, rec: &NetworkRec) -> Txn {
    let mut txn = txn
        .when(Compare::Absent(schema::network_name(&rec.name)))
        .put(schema::network(&rec.id), schema::encode(rec))
        .put(schema::network_name(&rec.name), rec.id.as_bytes().to_vec());
    for s in &rec.subnets {
        txn = txn
            .when(Compare::Absent(schema::subnet(&s.subnet)))
            .put(schema::subnet(&s.subnet), rec.id.as_bytes().to_vec());
    }
    txn
}

pub fn delete_network(txn: Txn, rec: &NetworkRec) -> Txn {
    let mut txn = txn
        .delete(schema::network(&rec.id))
        .delete(schema::network_name(&rec.name))
        .delete_prefix(schema::ipam_of(&rec.id));
    for s in &rec.subnets {
        txn = txn.delete(schema::subnet(&s.subnet));
    }
    txn
}

/// The subnets a `network create` asks for (one to be picked when none is given).
pub fn subnet_reqs(req: &NetworkCreate) -> Vec<SubnetReq> {
    if req.ipam.is_empty() {
        return vec![SubnetReq {
            subnet: None,
            ip_range: None,
            gateway: None,
            aux: BTreeMap::new(),
        }];
    }
    req.ipam
        .iter()
        .map(|r| SubnetReq {
            subnet: r.subnet,
            ip_range: r.ip_range,
            gateway: r.gateway,
            aux: r.aux.clone(),
        })
        .collect()
}

pub fn check_reqs(reqs: &[SubnetReq]) -> ApiResult<()> {
    if reqs.iter().filter(|r| r.subnet.is_none()).count() > 1 {
        return bad("--ip-range, --gateway and --aux-address need a --subnet each");
    }
    Ok(())
}

pub async fn create(node: &Node, req: NetworkCreate) -> ApiResult<NetworkInfo> {
    model::check_object_name("network", &req.name)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (driver, options) = match req.driver {
        Driver::Bridge => (
            DriverKind::Bridge,
            bridge_options(node, &req.options).await?,
        ),
        Driver::Macvlan => (
            DriverKind::Macvlan,
            node.drivers
                .macvlan
                .check(&req.options)
                .await
                .map_err(refused)?,
        ),
        Driver::Cni => (DriverKind::Cni, cni_options(node, &req)?),
        Driver::Ipvlan => return Err(refused(MacvlanDriver::check_ipvlan().await)),
        Driver::Overlay => {
            if let Some(k) = req.options.keys().next() {
                return bad(format!("unknown option {k:?} for driver overlay"));
            }
            return super::overlay::create(node, req).await;
        }
        Driver::Host | Driver::None => {
            return bad(format!(
                "only one {} network may exist, and it already does",
                req.driver
            ));
        }
    };
    if let Some(m) = req.mtu
        && !(68..=65535).contains(&m)
    {
        return bad(format!("invalid MTU {m}: must be 68-65535"));
    }
    let reqs = subnet_reqs(&req);
    check_reqs(&reqs)?;
    let reserved = reserved(node).await;
    let id = random_id();
    let rev = write(node, |d| {
        if d.network_by_name(&req.name).is_some() {
            return Err(ApiError::Conflict(format!(
                "network with name {} already exists",
                req.name
            )));
        }
        if let Some(br) = options.get(schema::BRIDGE_NAME_OPTION)
            && let Some(other) = d
                .networks
                .values()
                .find(|n| n.rec.driver == DriverKind::Bridge && n.rec.bridge() == *br)
        {
            return Err(ApiError::Conflict(format!(
                "bridge {br} is already used by network {}",
                other.rec.name
            )));
        }
        let rec = NetworkRec {
            id: id.clone(),
            name: req.name.clone(),
            driver,
            scope: Scope::Local,
            created: now(),
            // A CNI network's addresses are its plugins'.
            subnets: if driver == DriverKind::Cni {
                Vec::new()
            } else {
                plan_subnets(d, &reqs, req.ipv6, &reserved, ipam::Scope::Local)?
            },
            internal: req.internal,
            // On one node every local network is attachable (by `run` and `connect`).
            attachable: true,
            dns: req.dns.unwrap_or(true),
            mtu: req.mtu,
            dns_servers: req.dns_servers.iter().map(|u| u.0).collect(),
            ttl: req.ttl,
            labels: req.labels.clone(),
            options: options.clone(),
            predefined: false,
            vni: None,
            host_dns: req.host_dns.unwrap_or(true),
        };
        Ok(guard(d, Source::Local, put_network(Txn::new(), &rec), &id))
    })
    .await?;
    if let Err(e) = settle(node, rev, &Dirty::Network(id.clone())).await {
        // The kernel refused: the network must not exist at all.
        let d = node.cache.read();
        if let Some(n) = d.networks.get(id.as_str()) {
            let txn = guard(&d, Source::Local, delete_network(Txn::new(), &n.rec), &id);
            if let Ok(crate::daemon::store::TxnResult::Committed(r)) = node.store.txn(txn).await {
                let _ = super::applied(node, r).await;
            }
        }
        return Err(match e {
            ApiError::Internal(e) => {
                ApiError::Internal(e.context(format!("creating network {}", req.name)))
            }
            other => other,
        });
    }
    info!(network = %req.name, "network created");
    views::network(node, &node.cache.read(), &id)
        .ok_or_else(|| ApiError::Conflict(format!("network {} was removed meanwhile", req.name)))
}

/// A driver's refusal as the API answers it.
fn refused(r: Refusal) -> ApiError {
    match r {
        Refusal::Failed(e) => ApiError::Internal(e),
        other => ApiError::BadRequest(other.to_string()),
    }
}

/// A CNI network's configuration, checked: it parses and its plugins are in the plugin
/// directory. What sdnet's IPAM would do is the plugins' business: refused here.
fn cni_options(node: &Node, req: &NetworkCreate) -> ApiResult<BTreeMap<String, String>> {
    if let Some(k) = req.options.keys().find(|k| *k != CNI_CONFIG_OPTION) {
        return bad(format!(
            "unknown option {k:?} for driver cni (use --cni-conf FILE or --cni-conf-dir DIR)"
        ));
    }
    let Some(text) = req.options.get(CNI_CONFIG_OPTION) else {
        return bad("a CNI network needs its configuration: --cni-conf FILE or --cni-conf-dir DIR");
    };
    if !req.ipam.is_empty() || req.ipv6 || req.mtu.is_some() || req.internal {
        return bad(
            "--subnet, --ip-range, --gateway, --aux-address, --ipv6, --mtu and --internal are the \
             CNI plugins' business on a CNI network: set them in its configuration",
        );
    }
    let list = node.drivers.cni.check(text).map_err(ApiError::BadRequest)?;
    Ok(BTreeMap::from([(
        schema::CNI_CONFIG_OPTION.to_string(),
        list.to_json(),
    )]))
}

/// A bridge network's options, checked: `com.docker.network.bridge.name` (an existing bridge
/// is used as it is; another kind of link of that name is refused).
async fn bridge_options(
    node: &Node,
    opts: &BTreeMap<String, String>,
) -> ApiResult<BTreeMap<String, String>> {
    for (k, v) in opts {
        if k != schema::BRIDGE_NAME_OPTION {
            return bad(format!(
                "unknown option {k:?} for driver bridge (supported: {})",
                schema::BRIDGE_NAME_OPTION
            ));
        }
        if !valid_ifname(v) {
            return bad(format!("invalid bridge name {v:?}"));
        }
        if our_link(v) {
            return bad(format!(
                "bridge name {v}: names starting with {BRIDGE_PREFIX}, {VETH_PREFIX} or \
                 {VXLAN_PREFIX} are sdnet's own"
            ));
        }
        match node.host.nl.link(v).await {
            Ok(Some(l)) if l.kind.as_deref() != Some("bridge") => {
                return bad(format!(
                    "interface {v} exists and is a {}, not a bridge",
                    l.kind.as_deref().unwrap_or("plain device")
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(ApiError::Internal(e.into())),
        }
    }
    Ok(opts.clone())
}

/// The name of the gateway bridge that gives sandboxes on overlay networks their egress
/// (Docker's docker_gwbridge): a pre-defined bridge network of every cluster node.
pub const GWBRIDGE: &str = "gwbridge";
/// The option that turns communication between a bridge's sandboxes off (Docker's name).
pub const ICC_OPTION: &str = "com.docker.network.bridge.enable_icc";

/// The pre-defined networks (`bridge`, `host`, `none`; `gwbridge` in a cluster), created on
/// first start.
pub async fn ensure_defaults(node: &Node) -> anyhow::Result<()> {
    let mut defaults = vec![
        ("bridge", DriverKind::Bridge),
        ("host", DriverKind::Host),
        ("none", DriverKind::None),
    ];
    if node.cluster.is_some() {
        defaults.push((GWBRIDGE, DriverKind::Bridge));
    }
    for (name, driver) in defaults {
        if node.cache.read().network_by_name(name).is_some() {
            continue;
        }
        let reserved = if driver == DriverKind::Bridge {
            reserved(node).await
        } else {
            Vec::new()
        };
        let id = random_id();
        let r = write(node, |d| {
            if d.network_by_name(name).is_some() {
                return Ok(Txn::new());
            }
            let subnets = if driver == DriverKind::Bridge {
                let req = SubnetReq {
                    subnet: node.cfg.default_bridge_subnet.filter(|_| name == "bridge"),
                    ip_range: None,
                    gateway: None,
                    aux: BTreeMap::new(),
                };
                plan_subnets(d, &[req], false, &reserved, ipam::Scope::Local)?
            } else {
                Vec::new()
            };
            let mut options = BTreeMap::new();
            if name == GWBRIDGE {
                // Sandboxes meet on their overlays, never through the gateway bridge.
                options.insert(ICC_OPTION.to_string(), "false".to_string());
            }
            let rec = NetworkRec {
                id: id.clone(),
                name: name.into(),
                driver,
                scope: Scope::Local,
                created: now(),
                subnets,
                internal: false,
                attachable: false,
                dns: false,
                mtu: None,
                dns_servers: Vec::new(),
                ttl: None,
                labels: BTreeMap::new(),
                options,
                predefined: true,
                vni: None,
                host_dns: true,
            };
            Ok(guard(d, Source::Local, put_network(Txn::new(), &rec), &id))
        })
        .await;
        r.map_err(|e| anyhow::anyhow!("creating the {name} network: {e}"))?;
    }
    Ok(())
}

pub fn list(node: &Node) -> Vec<NetworkInfo> {
    let d = node.cache.read();
    let mut v: Vec<NetworkInfo> = d
        .networks
        .keys()
        .filter_map(|id| views::network(node, &d, id))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

pub fn inspect(node: &Node, r: &str) -> ApiResult<NetworkInfo> {
    let d = node.cache.read();
    let id = d.network_id(r).map_err(|e| lookup_err("network", r, e))?;
    views::network(node, &d, id).ok_or_else(|| ApiError::NotFound(format!("network {r} not found")))
}

pub async fn remove(node: &Node, r: &str) -> ApiResult<String> {
    let src = {
        let d = node.cache.read();
        let id = d.network_id(r).map_err(|e| lookup_err("network", r, e))?;
        match d.networks[id].rec.scope {
            Scope::Local => Source::Local,
            Scope::Swarm => Source::Cluster,
        }
    };
    let mut name = String::new();
    let rev = super::write_in(node, src, |d| {
        let id = d.network_id(r).map_err(|e| lookup_err("network", r, e))?;
        let n = &d.networks[id];
        name = n.rec.name.clone();
        if n.rec.predefined {
            return Err(ApiError::Conflict(format!(
                "{} is a pre-defined network and cannot be removed",
                n.rec.name
            )));
        }
        let users: Vec<&str> = d
            .members(id)
            .filter_map(|s| d.sandboxes.get(s.as_str()).map(|x| x.rec.name.as_str()))
            .collect();
        if !users.is_empty() {
            return Err(ApiError::Conflict(format!(
                "network {} is in use by sandbox(es): {}",
                n.rec.name,
                users.join(", ")
            )));
        }
        let remote: std::collections::BTreeSet<String> = d
            .peers
            .get(id.as_str())
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|p| p.rec.node != node.node_id())
            .map(|p| {
                d.nodes
                    .get(p.rec.node.as_str())
                    .map(|x| x.rec.name.clone())
                    .unwrap_or_else(|| p.rec.node.clone())
            })
            .collect();
        if !remote.is_empty() {
            return Err(ApiError::Conflict(format!(
                "network {} is in use by sandboxes on node(s): {}",
                n.rec.name,
                remote.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        let svcs: Vec<&str> = d
            .services
            .values()
            .filter(|s| s.rec.networks.iter().any(|x| &x.network == id))
            .map(|s| s.rec.name.as_str())
            .collect();
        if !svcs.is_empty() {
            return Err(ApiError::Conflict(format!(
                "network {} is in use by service(s): {}",
                n.rec.name,
                svcs.join(", ")
            )));
        }
        let mut txn = Txn::new()
            .when(Compare::ModRev(schema::network(id), n.rev))
            .when(Compare::PrefixEmpty(schema::service_nets_of(id)));
        txn = match src {
            Source::Local => txn.when(Compare::PrefixEmpty(schema::endpoints_of(id))),
            // Every node's endpoint holds an address there: none may be left.
            Source::Cluster => txn.when(Compare::PrefixEmpty(schema::ipam_of(id))),
        };
        if let Some(v) = n.rec.vni {
            txn = txn.delete(schema::vni(v));
        }
        Ok(guard(d, src, delete_network(txn, &n.rec), id))
    })
    .await?;
    // The reconciler removes the bridge after the links of removed sandboxes: a barrier.
    super::applied_in(node, src, rev).await?;
    info!(network = %name, "network removed");
    Ok(name)
}

pub async fn prune(node: &Node) -> ApiResult<Vec<String>> {
    let candidates: Vec<String> = {
        let d = node.cache.read();
        d.networks
            .values()
            .filter(|n| !n.rec.predefined && d.members(&n.rec.id).next().is_none())
            .map(|n| n.rec.id.clone())
            .collect()
    };
    let mut removed = Vec::new();
    for id in candidates {
        if let Ok(name) = remove(node, &id).await {
            removed.push(name);
        }
    }
    Ok(removed)
}

/// An endpoint record for `sandbox` on `net`, with addresses picked (and claimed).
#[allow(clippy::too_many_arguments)]
pub fn plan_endpoint(
    node: &Node,
    d: &Desired,
    sandbox: &str,
    net: &NetworkRec,
    index: u32,
    order: u64,
    a: &NetworkAttach,
    claim: &mut crate::daemon::ipam::Claim<'_>,
) -> ApiResult<EndpointRec> {
    for al in &a.aliases {
        model::check_dns_name("alias", al).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    if net.driver == DriverKind::Cni && (a.ipv4.is_some() || a.ipv6.is_some()) {
        return bad(format!(
            "network {} is a CNI network: its plugins pick the addresses (no --ip/--ip6)",
            net.name
        ));
    }
    let (ipv4, ipv6) = node.ipam.endpoint(d, net, a.ipv4, a.ipv6, claim)?;
    let mac = match ipv4 {
        Some(v4) => sdnet_netstack::ipam::mac_from_ipv4(v4),
        None => v6_mac(sandbox, &net.id),
    };
    Ok(EndpointRec {
        network: net.id.clone(),
        sandbox: sandbox.to_string(),
        index,
        order,
        ipv4,
        ipv6,
        mac,
        aliases: a.aliases.clone(),
    })
}

/// The endpoint of a sandbox on a swarm network, with the addresses claimed for it.
pub fn swarm_endpoint(
    sandbox: &str,
    net: &NetworkRec,
    index: u32,
    a: &NetworkAttach,
    c: &super::overlay::Claim,
) -> EndpointRec {
    EndpointRec {
        network: net.id.clone(),
        sandbox: sandbox.to_string(),
        index,
        order: index as u64,
        ipv4: c.ipv4,
        ipv6: c.ipv6,
        mac: match c.ipv4 {
            Some(v4) => sdnet_netstack::ipam::mac_from_ipv4(v4),
            None => v6_mac(sandbox, &net.id),
        },
        aliases: a.aliases.clone(),
    }
}

/// Puts an endpoint whose addresses are held elsewhere (a swarm network's, in the cluster
/// store).
pub fn put_endpoint_record(txn: Txn, ep: &EndpointRec) -> Txn {
    let key = schema::endpoint(&ep.network, &ep.sandbox);
    txn.when(Compare::Absent(key.clone()))
        .put(key, schema::encode(ep))
}

/// Puts an endpoint and takes its addresses (only if nobody has them).
pub fn put_endpoint(mut txn: Txn, ep: &EndpointRec) -> Txn {
    let key = schema::endpoint(&ep.network, &ep.sandbox);
    txn = txn
        .when(Compare::Absent(key.clone()))
        .put(key, schema::encode(ep));
    for ip in [ep.ipv4.map(IpAddr::V4), ep.ipv6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
    {
        let k = schema::ipam(&ep.network, ip);
        txn = txn
            .when(Compare::Absent(k.clone()))
            .put(k, format!("sandbox:{}", ep.sandbox).into_bytes());
    }
    txn
}

pub fn delete_endpoint(mut txn: Txn, ep: &EndpointRec) -> Txn {
    txn = txn.delete(schema::endpoint(&ep.network, &ep.sandbox));
    for ip in [ep.ipv4.map(IpAddr::V4), ep.ipv6.map(IpAddr::V6)]
        .into_iter()
        .flatten()
    {
        txn = txn.delete(schema::ipam(&ep.network, ip));
    }
    txn
}

pub async fn connect(node: &Node, net_ref: &str, req: ConnectRequest) -> ApiResult<SandboxInfo> {
    // A swarm network's address is claimed in the cluster store first.
    let mut pending = node.ipam.claim();
    let claims = {
        let (net_id, sb_id) = {
            let d = node.cache.read();
            let net_id = d
                .network_id(net_ref)
                .map_err(|e| lookup_err("network", net_ref, e))?;
            let n = &d.networks[net_id];
            let sb_id = d
                .sandbox_id(&req.sandbox)
                .map_err(|e| lookup_err("sandbox", &req.sandbox, e))?
                .clone();
            if n.rec.scope == Scope::Swarm && !n.rec.attachable {
                return bad(format!(
                    "network {} is not attachable: create it with --attachable to connect sandboxes",
                    n.rec.name
                ));
            }
            ((n.rec.scope == Scope::Swarm).then(|| net_id.clone()), sb_id)
        };
        match net_id {
            Some(n) => {
                let c =
                    super::overlay::claim(node, &sb_id, &[(n, req.ipv4, req.ipv6)], &mut pending)
                        .await?;
                Some((sb_id, c))
            }
            None => None,
        }
    };
    let mut ids = (String::new(), String::new(), String::new());
    let written = write(node, |d| {
        let net_id = d
            .network_id(net_ref)
            .map_err(|e| lookup_err("network", net_ref, e))?;
        let net = &d.networks[net_id];
        if !matches!(
            net.rec.driver,
            DriverKind::Bridge | DriverKind::Overlay | DriverKind::Macvlan | DriverKind::Cni
        ) {
            return bad(format!(
                "cannot connect to network {} (driver {})",
                net.rec.name,
                Driver::from(net.rec.driver)
            ));
        }
        let sb_id = d
            .sandbox_id(&req.sandbox)
            .map_err(|e| lookup_err("sandbox", &req.sandbox, e))?;
        let sb = &d.sandboxes[sb_id];
        if sb.rec.mode == schema::NetMode::Host {
            return bad(format!(
                "sandbox {} uses the host network and cannot be connected",
                sb.rec.name
            ));
        }
        let eps = d.endpoints_of(sb_id);
        if eps.iter().any(|e| &e.rec.network == net_id) {
            return Err(ApiError::Conflict(format!(
                "sandbox {} is already connected to network {}",
                sb.rec.name, net.rec.name
            )));
        }
        let index = (0u32..)
            .find(|i| !eps.iter().any(|e| e.rec.index == *i))
            .unwrap_or(0);
        let order = eps.iter().map(|e| e.rec.order + 1).max().unwrap_or(0);
        let attach = NetworkAttach {
            network: net_id.clone(),
            aliases: req.aliases.clone(),
            ipv4: req.ipv4,
            ipv6: req.ipv6,
        };
        let ep = match claims.as_ref().and_then(|(_, c)| c.first()) {
            Some(c) => {
                let mut ep = swarm_endpoint(sb_id, &net.rec, index, &attach, c);
                ep.order = order;
                ep
            }
            None => {
                let mut claim = node.ipam.claim();
                plan_endpoint(node, d, sb_id, &net.rec, index, order, &attach, &mut claim)?
            }
        };
        ids = (sb_id.clone(), sb.rec.name.clone(), net.rec.name.clone());
        // The sandbox's record is written again (unchanged): a removal of the sandbox decided
        // on a state without this endpoint then fails its compare and is decided again,
        // instead of leaving the endpoint (and its address) behind without a sandbox.
        let mut txn = Txn::new()
            .when(Compare::ModRev(schema::sandbox(sb_id), sb.rev))
            .put(schema::sandbox(sb_id), schema::encode(&*sb.rec));
        if net.rec.scope == Scope::Local {
            // (A swarm network's record is in the cluster store: the claim compared it.)
            txn = txn.when(Compare::ModRev(schema::network(net_id), net.rev));
        }
        Ok(if claims.is_some() {
            put_endpoint_record(txn, &ep)
        } else {
            put_endpoint(txn, &ep)
        })
    })
    .await;
    drop(pending);
    let rev = match written {
        Ok(r) => r,
        Err(e) => {
            if let Some((sb, c)) = &claims {
                let _ = super::overlay::release(node, sb, c).await;
            }
            return Err(e);
        }
    };
    let (sb_id, sb_name, net_name) = ids;
    if let Err(e) = super::settle_sandbox(node, rev, &sb_id).await {
        // Undo: the endpoint must not stay in the store if the kernel refused it.
        let d = node.cache.read();
        let ep = d
            .networks
            .values()
            .find(|n| n.rec.name == net_name)
            .and_then(|n| {
                d.endpoints
                    .get(sb_id.as_str())?
                    .get(n.rec.id.as_str())
                    .cloned()
            });
        if let Some(ep) = ep
            && let Ok(crate::daemon::store::TxnResult::Committed(r)) =
                node.store.txn(delete_endpoint(Txn::new(), &ep.rec)).await
        {
            let _ = super::applied(node, r).await;
        }
        if let Some((sb, c)) = &claims {
            let _ = super::overlay::release(node, sb, c).await;
        }
        return Err(match e {
            ApiError::Internal(e) => {
                ApiError::Internal(e.context(format!("connecting to {net_name}")))
            }
            other => other,
        });
    }
    info!(sandbox = %sb_name, network = %net_name, "connected");
    views::sandbox(node, &node.cache.read(), &sb_id)
        .ok_or_else(|| ApiError::NotFound(format!("sandbox {sb_name} was removed meanwhile")))
}

pub async fn disconnect(
    node: &Node,
    net_ref: &str,
    req: DisconnectRequest,
) -> ApiResult<SandboxInfo> {
    let mut sb_id = String::new();
    let mut claims = Vec::new();
    let rev = write(node, |d| {
        let net_id = d
            .network_id(net_ref)
            .map_err(|e| lookup_err("network", net_ref, e))?;
        let net = &d.networks[net_id];
        claims.clear();
        let id = d
            .sandbox_id(&req.sandbox)
            .map_err(|e| lookup_err("sandbox", &req.sandbox, e))?;
        let sb = &d.sandboxes[id];
        let Some(ep) = d
            .endpoints
            .get(id.as_str())
            .and_then(|m| m.get(net_id.as_str()))
        else {
            return Err(ApiError::NotFound(format!(
                "sandbox {} is not connected to network {}",
                sb.rec.name, net.rec.name
            )));
        };
        sb_id = id.clone();
        if net.rec.scope == Scope::Swarm {
            claims.push(super::overlay::Claim {
                network: net_id.clone(),
                ipv4: ep.rec.ipv4,
                ipv6: ep.rec.ipv6,
            });
        }
        let txn = Txn::new().when(Compare::ModRev(schema::endpoint(net_id, id), ep.rev));
        Ok(delete_endpoint(txn, &ep.rec))
    })
    .await?;
    settle(node, rev, &Dirty::Sandbox(sb_id.clone())).await?;
    super::overlay::release(node, &sb_id, &claims).await?;
    views::sandbox(node, &node.cache.read(), &sb_id)
        .ok_or_else(|| ApiError::NotFound(format!("sandbox {} not found", req.sandbox)))
}
