//! Services: create, update (scale, roll), remove, and the reads. Tasks are the scheduler's
//! business (`daemon::services`); these handlers write the service and, where the call must
//! not return before the tasks reacted (scale down, update, removal), wait for the scheduler.

use std::net::IpAddr;

use sdnet_resolver::model::{self, EndpointMode};
use tracing::info;

use super::sandboxes::{delete_txn, port_owner};
use super::{ApiError, ApiResult, bad, lookup_err, now, random_id, settle_in, views, write_in};
use crate::api::*;
use crate::daemon::Node;
use crate::daemon::state::{Dirty, Source};
use crate::daemon::store::schema::{
    self, ConstraintRec, DeclaredPortRec, DriverKind, HealthRec, PlacementRec, PublishRec, Scope,
    ServiceNetRec, ServiceRec,
};
use crate::daemon::store::{Compare, Txn};

fn check_health(h: &Option<HealthSpec>) -> ApiResult<()> {
    if let Some(h) = h
        && (h.cmd.trim().is_empty() || h.interval_ms == 0)
    {
        return bad("--health-cmd needs a command and a non-zero --health-interval");
    }
    Ok(())
}

pub async fn create(node: &Node, req: ServiceCreate) -> ApiResult<ServiceInfo> {
    model::check_object_name("service", &req.name)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if req.command.is_empty() {
        return bad("a service needs a command (after --)");
    }
    if req.networks.is_empty() {
        return bad("a service needs at least one --network");
    }
    check_health(&req.health)?;
    for p in &req.ports {
        model::check_dns_name("port name", &p.name)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    let publish: Vec<PublishRec> = req.publish.iter().map(PublishRec::from).collect();
    for (i, p) in publish.iter().enumerate() {
        if publish[..i].iter().any(|q| p.same_binding(q)) {
            return bad(format!("port {} given twice", req.publish[i]));
        }
    }
    let mut constraints = Vec::new();
    for c in &req.constraints {
        constraints.push(ConstraintRec::parse(c).map_err(ApiError::BadRequest)?);
    }
    let src = scope_of(node, &req)?;
    if src == Source::Local && !constraints.is_empty() {
        return bad(
            "--constraint places tasks on the nodes of a cluster: only services on overlay networks have them",
        );
    }
    // Ports through the routing mesh: the tasks join the `ingress` overlay.
    let mesh = src == Source::Cluster && publish.iter().any(|p| !p.host_mode);
    if mesh {
        super::overlay::ensure_ingress(node).await?;
    }
    let id = random_id();
    let rev = write_in(node, src, |d| {
        if d.service_by_name(&req.name).is_some() {
            return Err(ApiError::Conflict(format!(
                "service {} already exists",
                req.name
            )));
        }
        let mut claim = node.ipam.claim();
        let mut nets: Vec<ServiceNetRec> = Vec::new();
        let mut txn = Txn::new();
        for n in &req.networks {
            let nid = d
                .network_id(&n.network)
                .map_err(|e| lookup_err("network", &n.network, e))?;
            let net = &d.networks[nid];
            let fits = match src {
                Source::Local => net.rec.driver == DriverKind::Bridge,
                Source::Cluster => net.rec.driver == DriverKind::Overlay,
            };
            if !fits || net.rec.predefined {
                return bad(format!(
                    "network {}: services need a user-defined bridge or overlay network",
                    net.rec.name
                ));
            }
            if nets.iter().any(|x| &x.network == nid) {
                return bad(format!("network {} given twice", net.rec.name));
            }
            for a in &n.aliases {
                model::check_dns_name("alias", a)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            }
            // One VIP per network, from the network's own pool.
            let vip = match req.endpoint_mode {
                EndpointMode::Vip => Some(node.ipam.vip(d, &net.rec, &mut claim)?),
                EndpointMode::Dnsrr => None,
            };
            txn = txn
                .when(Compare::ModRev(schema::network(nid), net.rev))
                .put(schema::service_net(nid, &id), Vec::new());
            if let Some(v) = vip {
                let k = schema::ipam(nid, IpAddr::V4(v));
                txn = txn
                    .when(Compare::Absent(k.clone()))
                    .put(k, format!("vip:{id}").into_bytes());
            }
            nets.push(ServiceNetRec {
                network: nid.clone(),
                aliases: n.aliases.clone(),
                vip,
            });
        }
        if mesh {
            let ing = d
                .network_by_name(super::overlay::INGRESS)
                .ok_or_else(|| ApiError::Conflict("the ingress network was removed".into()))?;
            txn = txn
                .when(Compare::ModRev(schema::network(&ing.rec.id), ing.rev))
                .put(schema::service_net(&ing.rec.id, &id), Vec::new());
            nets.push(ServiceNetRec {
                network: ing.rec.id.clone(),
                aliases: Vec::new(),
                vip: None,
            });
        }
        for (i, p) in publish.iter().enumerate() {
            if let Some(owner) = port_owner(d, p) {
                return Err(ApiError::Conflict(format!(
                    "host port {} is already published by {owner}",
                    req.publish[i]
                )));
            }
        }
        let rec = ServiceRec {
            id: id.clone(),
            name: req.name.clone(),
            created: now(),
            command: req.command.clone(),
            env: req.env.clone(),
            replicas: req.replicas,
            mode: req.endpoint_mode,
            networks: nets,
            ports: req.ports.iter().map(DeclaredPortRec::from).collect(),
            publish: publish.clone(),
            health: req.health.as_ref().map(HealthRec::from),
            restart: req.restart.into(),
            drain_ms: req.drain_ms,
            version: 1,
            placement: PlacementRec {
                global: req.global,
                constraints: constraints.clone(),
            },
        };
        Ok(txn
            .when(Compare::Absent(schema::service_name(&req.name)))
            .put(schema::service(&id), schema::encode(&rec))
            .put(schema::service_name(&req.name), id.as_bytes().to_vec()))
    })
    .await?;
    if let Err(e) = settle_in(node, src, rev, &Dirty::Service(id.clone())).await {
        let _ = remove_by_id(node, &id).await;
        return Err(e);
    }
    info!(service = %req.name, replicas = req.replicas, "service created");
    // The scheduler starts the tasks; the client follows their progress.
    views::service(node, &node.cache.read(), &id)
        .ok_or_else(|| ApiError::NotFound(format!("service {} was removed meanwhile", req.name)))
}

/// Which store a new service goes to: this node's for bridge networks, the cluster's for
/// overlay networks (a service is on one kind or the other).
fn scope_of(node: &Node, req: &ServiceCreate) -> ApiResult<Source> {
    let d = node.cache.read();
    let mut kinds = Vec::new();
    for n in &req.networks {
        let nid = d
            .network_id(&n.network)
            .map_err(|e| lookup_err("network", &n.network, e))?;
        kinds.push(d.networks[nid].rec.scope);
    }
    let swarm = kinds.iter().filter(|k| **k == Scope::Swarm).count();
    match swarm {
        0 => Ok(Source::Local),
        n if n == kinds.len() => Ok(Source::Cluster),
        _ => bad("a service is on overlay networks or on bridge networks, not both"),
    }
}

/// The store a service lives in.
fn source_of(d: &crate::daemon::state::Desired, id: &str) -> Source {
    match d.services.get(id) {
        Some(s) if d.swarm_service(&s.rec) => Source::Cluster,
        _ => Source::Local,
    }
}

pub fn list(node: &Node) -> Vec<ServiceInfo> {
    let d = node.cache.read();
    let mut v: Vec<ServiceInfo> = d
        .services
        .keys()
        .filter_map(|id| views::service(node, &d, id))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

pub fn inspect(node: &Node, r: &str) -> ApiResult<ServiceInfo> {
    let d = node.cache.read();
    let id = d.service_id(r).map_err(|e| lookup_err("service", r, e))?;
    views::service(node, &d, id).ok_or_else(|| ApiError::NotFound(format!("service {r} not found")))
}

pub async fn update(node: &Node, r: &str, u: ServiceUpdate) -> ApiResult<ServiceInfo> {
    if let Some(h) = &u.health {
        check_health(h)?;
    }
    if u.command.as_ref().is_some_and(|c| c.is_empty()) {
        return bad("the command cannot be empty");
    }
    let mut id = String::new();
    let src = {
        let d = node.cache.read();
        let sid = d.service_id(r).map_err(|e| lookup_err("service", r, e))?;
        source_of(&d, sid)
    };
    let rev = write_in(node, src, |d| {
        let sid = d.service_id(r).map_err(|e| lookup_err("service", r, e))?;
        let cur = &d.services[sid];
        let mut rec = (*cur.rec).clone();
        let mut roll = false;
        if let Some(n) = u.replicas {
            rec.replicas = n;
        }
        if let Some(c) = &u.command {
            roll |= *c != rec.command;
            rec.command = c.clone();
        }
        if let Some(e) = &u.env {
            roll |= *e != rec.env;
            rec.env = e.clone();
        }
        if let Some(h) = &u.health {
            rec.health = h.as_ref().map(HealthRec::from);
        }
        if let Some(r) = u.restart {
            rec.restart = r.into();
        }
        if let Some(dm) = u.drain_ms {
            rec.drain_ms = dm;
        }
        if roll {
            rec.version += 1;
        }
        id = sid.clone();
        Ok(Txn::new()
            .when(Compare::ModRev(schema::service(sid), cur.rev))
            .put(schema::service(sid), schema::encode(&rec)))
    })
    .await?;
    settle_in(node, src, rev, &Dirty::Service(id.clone())).await?;
    // Scale-down drains and the first step of a roll happen before the call returns (on
    // this node; other nodes' tasks follow the dispatcher's assignments).
    node.scheduler_pass(src, rev).await?;
    let d = node.cache.read();
    if let Some(s) = d.services.get(id.as_str()) {
        info!(service = %s.rec.name, replicas = s.rec.replicas, version = s.rec.version, "service updated");
    }
    views::service(node, &d, &id)
        .ok_or_else(|| ApiError::NotFound(format!("service {r} not found")))
}

/// The transaction removing a service, its tasks and what it holds in the store. A swarm
/// service's tasks are sandboxes of the nodes that run them: each node's scheduler removes
/// its own once the service is gone.
fn delete_service(d: &crate::daemon::state::Desired, id: &str) -> Option<Txn> {
    let s = d.services.get(id)?;
    let mut txn = Txn::new()
        .when(Compare::ModRev(schema::service(id), s.rev))
        .delete(schema::service(id))
        .delete(schema::service_name(&s.rec.name));
    for n in &s.rec.networks {
        txn = txn.delete(schema::service_net(&n.network, id));
        if let Some(v) = n.vip {
            txn = txn.delete(schema::ipam(&n.network, IpAddr::V4(v)));
        }
    }
    if d.swarm_service(&s.rec) {
        return Some(txn.delete_prefix(schema::assigns_of(id)));
    }
    // Tasks go with it (out of DNS and the LB in the same revision).
    for t in d.tasks_of(id) {
        if let Some(del) = delete_txn(d, t) {
            txn.compares.extend(del.compares);
            txn.ops.extend(del.ops);
        }
    }
    Some(txn)
}

pub async fn remove(node: &Node, r: &str) -> ApiResult<String> {
    let mut name = String::new();
    let src = {
        let d = node.cache.read();
        let id = d.service_id(r).map_err(|e| lookup_err("service", r, e))?;
        source_of(&d, id)
    };
    let rev = write_in(node, src, |d| {
        let id = d.service_id(r).map_err(|e| lookup_err("service", r, e))?;
        name = d.services[id].rec.name.clone();
        delete_service(d, id).ok_or_else(|| ApiError::NotFound(format!("service {r} not found")))
    })
    .await?;
    super::applied_in(node, src, rev).await?;
    info!(service = %name, "service removed");
    Ok(name)
}

async fn remove_by_id(node: &Node, id: &str) -> ApiResult<()> {
    let src = source_of(&node.cache.read(), id);
    let rev = write_in(node, src, |d| Ok(delete_service(d, id).unwrap_or_default())).await?;
    super::applied_in(node, src, rev).await
}
