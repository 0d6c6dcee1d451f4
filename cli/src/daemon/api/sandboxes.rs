//! Sandboxes: create (also the scheduler's way to start a task), list, inspect, remove.

use std::path::PathBuf;

use sdnet_resolver::model;
use tracing::info;

use super::networks::{
    delete_endpoint, plan_endpoint, put_endpoint, put_endpoint_record, swarm_endpoint,
};
use super::{ApiError, ApiResult, bad, lookup_err, now, random_id, views, write};
use super::{links, overlay};
use crate::api::*;
use crate::daemon::Node;
use crate::daemon::config::short;
use crate::daemon::names;
use crate::daemon::state::{Desired, Entry};
use crate::daemon::store::schema::{
    self, DriverKind, NetMode, NetworkRec, PublishRec, SandboxRec, SandboxRestart, Scope, TaskRef,
};
use crate::daemon::store::{Compare, Txn};
use crate::daemon::supervisor::{self, Proc};

/// Who already publishes this host port, if anyone.
pub fn port_owner(d: &Desired, p: &PublishRec) -> Option<String> {
    if let Some(s) = d
        .sandboxes
        .values()
        .find(|s| s.rec.ports.iter().any(|q| p.same_binding(q)))
    {
        return Some(format!("sandbox {}", s.rec.name));
    }
    d.services
        .values()
        .find(|s| s.rec.publish.iter().any(|q| p.same_binding(q)))
        .map(|s| format!("service {}", s.rec.name))
}

/// Creates a sandbox (a task of a service with `task`); returns its ID once it is realized:
/// its names answer, its namespace and endpoints exist, its process runs.
pub async fn create(node: &Node, req: SandboxCreate, task: Option<TaskRef>) -> ApiResult<String> {
    create_as(node, req, task, false).await
}

/// This node's ingress sandbox (the routing mesh's entry, made by the scheduler): a sandbox on
/// the `ingress` overlay, which takes no other sandboxes.
pub async fn create_ingress_sandbox(node: &Node, ingress: &str) -> ApiResult<String> {
    let req = SandboxCreate {
        name: Some(INGRESS_SANDBOX.into()),
        networks: vec![NetworkAttach {
            network: ingress.to_string(),
            ..NetworkAttach::default()
        }],
        ..SandboxCreate::default()
    };
    create_as(node, req, None, true).await
}

/// The name of each node's ingress sandbox.
pub const INGRESS_SANDBOX: &str = "ingress-sbox";

async fn create_as(
    node: &Node,
    req: SandboxCreate,
    task: Option<TaskRef>,
    mesh: bool,
) -> ApiResult<String> {
    let started = std::time::Instant::now();
    let id = random_id();
    if let Some(n) = &req.name {
        model::check_object_name("sandbox", n).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    let hostname = req
        .hostname
        .clone()
        .unwrap_or_else(|| short(&id).to_string());
    model::check_dns_name("hostname", &hostname)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    for e in &req.env {
        if e.is_empty() || e.starts_with('=') {
            return bad(format!(
                "invalid environment entry {e:?}: expected KEY=VALUE"
            ));
        }
    }
    if let Some(p) = req.ports.iter().find(|p| p.host_mode) {
        return bad(format!(
            "port {p}: mode=host is for services; a sandbox publishes with [IP:]HOSTPORT:PORT"
        ));
    }
    let ports: Vec<PublishRec> = req.ports.iter().map(PublishRec::from).collect();
    for (i, p) in ports.iter().enumerate() {
        if ports[..i].iter().any(|q| p.same_binding(q)) {
            return bad(format!("port {} given twice", req.ports[i]));
        }
    }
    if let Some(p) = &req.netns
        && !p.exists()
    {
        return bad(format!("namespace {} does not exist", p.display()));
    }
    if req.restart.policy != SandboxRestartPolicy::No {
        if req.auto_remove {
            return bad("conflicting options: --restart and --rm");
        }
        if req.command.is_empty() {
            return bad("--restart needs a command to restart");
        }
    }
    if !req.command.is_empty() {
        // A command that cannot start is refused before anything is made.
        supervisor::resolve_program(&req.command[0], &req.env)
            .map_err(|e| ApiError::BadRequest(format!("starting {:?}: {e}", req.command)))?;
    }
    let attaches = if req.networks.is_empty() {
        vec![NetworkAttach {
            network: "bridge".into(),
            ..NetworkAttach::default()
        }]
    } else {
        req.networks.clone()
    };
    // Addresses on swarm (overlay) networks are claimed in the cluster store first.
    let mut pending = node.ipam.claim();
    let swarm: Vec<(
        String,
        Option<std::net::Ipv4Addr>,
        Option<std::net::Ipv6Addr>,
    )> = {
        let d = node.cache.read();
        let mut v = Vec::new();
        for a in &attaches {
            let Ok(nid) = d.network_id(&a.network) else {
                continue; // reported below, with the others
            };
            let n = &d.networks[nid];
            if n.rec.scope == Scope::Swarm {
                if !n.rec.attachable && task.is_none() && !mesh {
                    return bad(format!(
                        "network {} is not attachable: create it with --attachable to run sandboxes on it",
                        n.rec.name
                    ));
                }
                v.push((nid.clone(), a.ipv4, a.ipv6));
            }
        }
        v
    };
    let claims = overlay::claim(node, &id, &swarm, &mut pending).await?;
    let mut name = String::new();
    let written = write(node, |d| {
        name = match &req.name {
            Some(n) => n.clone(),
            None => loop {
                let n = names::generate();
                if d.sandbox_by_name(&n).is_none() {
                    break n;
                }
            },
        };
        if d.sandbox_by_name(&name).is_some() {
            return Err(ApiError::Conflict(format!(
                "the sandbox name {name} is already in use"
            )));
        }
        // Networks: default bridge; host and none stand alone.
        let mut mode = NetMode::Own;
        let mut nets: Vec<(&Entry<NetworkRec>, &NetworkAttach)> = Vec::new();
        for a in &attaches {
            let nid = d
                .network_id(&a.network)
                .map_err(|e| lookup_err("network", &a.network, e))?;
            let n = &d.networks[nid];
            match n.rec.driver {
                DriverKind::Host | DriverKind::None if attaches.len() > 1 => {
                    return Err(ApiError::Conflict(format!(
                        "network {} cannot be combined with other networks",
                        n.rec.name
                    )));
                }
                DriverKind::Host => mode = NetMode::Host,
                DriverKind::None => {}
                DriverKind::Bridge
                | DriverKind::Overlay
                | DriverKind::Macvlan
                | DriverKind::Cni => {
                    if nets.iter().any(|(x, _)| x.rec.id == n.rec.id) {
                        return bad(format!("network {} given twice", n.rec.name));
                    }
                    if n.rec.predefined && !a.aliases.is_empty() {
                        return bad(
                            "network-scoped aliases are only supported for user-defined networks",
                        );
                    }
                    nets.push((n, a));
                }
            }
        }
        if mode == NetMode::Host && (req.netns.is_some() || !ports.is_empty()) {
            return bad("--network host shares the daemon's namespace: no --netns, no -p");
        }
        let links = links::plan(d, &name, mode, &nets, &req.links)?;
        for (i, p) in ports.iter().enumerate() {
            if let Some(owner) = port_owner(d, p) {
                return Err(ApiError::Conflict(format!(
                    "host port {} is already published by {owner}",
                    req.ports[i]
                )));
            }
        }
        // (Not a macvlan: the host cannot reach its macvlan sandboxes, nor DNAT to them.)
        if !ports.is_empty()
            && !nets
                .iter()
                .any(|(n, _)| !n.rec.internal && n.rec.driver != DriverKind::Macvlan)
        {
            return bad("published ports need a non-internal bridge network");
        }
        // Egress of a sandbox only on overlays: the gateway bridge, last in order.
        let gw = (node.cluster.is_some()
            && nets
                .iter()
                .any(|(n, _)| n.rec.driver == DriverKind::Overlay && !n.rec.internal)
            && !nets
                .iter()
                .any(|(n, _)| n.rec.driver == DriverKind::Bridge && !n.rec.internal))
        .then(|| d.network_by_name(super::networks::GWBRIDGE))
        .flatten();
        let gw_attach = NetworkAttach::default();
        if let Some(g) = gw {
            nets.push((g, &gw_attach));
        }
        let mut claim = node.ipam.claim();
        let mut eps = Vec::new();
        for (i, (n, a)) in nets.iter().enumerate() {
            let ep = match claims.iter().find(|c| c.network == n.rec.id) {
                Some(c) => swarm_endpoint(&id, &n.rec, i as u32, a, c),
                None => plan_endpoint(node, d, &id, &n.rec, i as u32, i as u64, a, &mut claim)?,
            };
            eps.push(ep);
        }
        let rec = SandboxRec {
            id: id.clone(),
            name: name.clone(),
            hostname: hostname.clone(),
            created: now(),
            mode,
            adopt: req.netns.clone(),
            ports: ports.clone(),
            dns: req.dns.iter().map(|u| u.0).collect(),
            command: req.command.clone(),
            env: req.env.clone(),
            auto_remove: req.auto_remove,
            task: task.clone(),
            restart: restart_rec(req.restart.policy),
            restart_max: req.restart.max_retries,
            stopped: false,
            stop_timeout_ms: schema::default_stop_ms(),
            runs: 0,
            paused: false,
            links,
            expose: links::exposed(&req.expose, &ports),
        };
        let mut txn = Txn::new()
            .when(Compare::Absent(schema::sandbox_name(&name)))
            .when(Compare::Absent(schema::sandbox(&id)))
            .put(schema::sandbox(&id), schema::encode(&rec))
            .put(schema::sandbox_name(&name), id.as_bytes().to_vec());
        for (n, _) in nets.iter().filter(|(n, _)| n.rec.scope == Scope::Local) {
            txn = txn.when(Compare::ModRev(schema::network(&n.rec.id), n.rev));
        }
        if let Some(t) = &task {
            let svc = d
                .services
                .get(t.service.as_str())
                .ok_or_else(|| ApiError::NotFound("service vanished".into()))?;
            // The service's record is written again (unchanged): a removal of the service
            // decided on a state without this task then fails its compare and is decided
            // again, instead of leaving the task behind without its service. (A swarm
            // service lives in the cluster store: a task that outlives it there is removed
            // by its node's scheduler.)
            if !d.swarm_service(&svc.rec) {
                txn = txn
                    .when(Compare::ModRev(schema::service(&t.service), svc.rev))
                    .put(schema::service(&t.service), schema::encode(&*svc.rec));
            }
        }
        for ep in &eps {
            txn = if claims.iter().any(|c| c.network == ep.network) {
                put_endpoint_record(txn, ep)
            } else {
                put_endpoint(txn, ep)
            };
        }
        Ok(txn)
    })
    .await;
    drop(pending);
    let rev = match written {
        Ok(r) => r,
        Err(e) => {
            let _ = overlay::release(node, &id, &claims).await;
            return Err(e);
        }
    };
    let stored = started.elapsed();
    if let Err(e) = super::settle_sandbox(node, rev, &id).await {
        // Undo: a sandbox the kernel refused must not exist at all.
        let _ = remove_by_id(node, &id).await;
        return Err(match e {
            ApiError::Internal(e) => {
                ApiError::Internal(e.context(format!("creating sandbox {name}")))
            }
            other => other,
        });
    }
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    info!(
        sandbox = %name,
        total_ms = ms(started.elapsed()),
        stored_ms = ms(stored),
        "sandbox created"
    );
    Ok(id)
}

pub fn restart_rec(p: SandboxRestartPolicy) -> SandboxRestart {
    match p {
        SandboxRestartPolicy::No => SandboxRestart::No,
        SandboxRestartPolicy::OnFailure => SandboxRestart::OnFailure,
        SandboxRestartPolicy::Always => SandboxRestart::Always,
        SandboxRestartPolicy::UnlessStopped => SandboxRestart::UnlessStopped,
    }
}

pub fn list(node: &Node, all: bool) -> Vec<SandboxInfo> {
    let d = node.cache.read();
    let mut v: Vec<SandboxInfo> = d
        .sandboxes
        .keys()
        .filter_map(|id| views::sandbox(node, &d, id))
        .filter(|s| all || s.status != SandboxStatus::Exited)
        .collect();
    v.sort_by(|a, b| b.created.cmp(&a.created).then(a.name.cmp(&b.name)));
    v
}

pub fn inspect(node: &Node, r: &str) -> ApiResult<SandboxInfo> {
    let d = node.cache.read();
    let id = d.sandbox_id(r).map_err(|e| lookup_err("sandbox", r, e))?;
    views::sandbox(node, &d, id).ok_or_else(|| ApiError::NotFound(format!("sandbox {r} not found")))
}

fn running(d: &Desired, id: &str) -> Option<Proc> {
    let st = d.status_of(id)?;
    let p = Proc {
        pid: st.pid?,
        start_ticks: st.start_ticks,
    };
    (!st.exited && supervisor::alive(&p)).then_some(p)
}

/// The transaction removing a sandbox and everything it holds in the store.
pub fn delete_txn(d: &Desired, id: &str) -> Option<Txn> {
    let sb = d.sandboxes.get(id)?;
    let mut txn = Txn::new()
        .when(Compare::ModRev(schema::sandbox(id), sb.rev))
        .delete(schema::sandbox(id))
        .delete(schema::sandbox_name(&sb.rec.name))
        .delete(schema::status(id));
    for e in d.endpoints_of(id) {
        txn = delete_endpoint(txn, &e.rec);
    }
    Some(txn)
}

/// What a sandbox holds on swarm networks (released after its removal).
pub fn swarm_claims(d: &Desired, id: &str) -> Vec<overlay::Claim> {
    d.endpoints_of(id)
        .into_iter()
        .filter(|e| {
            d.networks
                .get(e.rec.network.as_str())
                .is_some_and(|n| n.rec.scope == Scope::Swarm)
        })
        .map(|e| overlay::Claim {
            network: e.rec.network.clone(),
            ipv4: e.rec.ipv4,
            ipv6: e.rec.ipv6,
        })
        .collect()
}

/// Removes a sandbox (its process is killed); returns once it is out of DNS and its
/// namespace is gone.
pub async fn remove(node: &Node, r: &str, force: bool) -> ApiResult<String> {
    let mut name = String::new();
    let mut claims = Vec::new();
    let mut sb_id = String::new();
    let rev = write(node, |d| {
        let id = d.sandbox_id(r).map_err(|e| lookup_err("sandbox", r, e))?;
        let sb = &d.sandboxes[id];
        name = sb.rec.name.clone();
        claims = swarm_claims(d, id);
        sb_id = id.clone();
        if running(d, id).is_some() && !force {
            return Err(ApiError::Conflict(format!(
                "sandbox {} has a running process: stop it or use -f",
                sb.rec.name
            )));
        }
        delete_txn(d, id).ok_or_else(|| ApiError::NotFound(format!("sandbox {r} not found")))
    })
    .await?;
    super::applied(node, rev).await?;
    overlay::release(node, &sb_id, &claims).await?;
    Ok(name)
}

/// Removal by ID, for the daemon's own use (undo, the scheduler, `--rm`): nothing to refuse.
pub async fn remove_by_id(node: &Node, id: &str) -> ApiResult<()> {
    let mut claims = Vec::new();
    let rev = write(node, |d| {
        claims = swarm_claims(d, id);
        Ok(delete_txn(d, id).unwrap_or_default())
    })
    .await?;
    super::applied(node, rev).await?;
    overlay::release(node, id, &claims).await
}

pub fn exec_info(node: &Node, r: &str) -> ApiResult<ExecInfo> {
    let d = node.cache.read();
    let id = d.sandbox_id(r).map_err(|e| lookup_err("sandbox", r, e))?;
    let rec = &d.sandboxes[id].rec;
    let dir = node.cfg.files_dir(id);
    Ok(ExecInfo {
        daemon_pid: std::process::id(),
        netns: match rec.mode {
            NetMode::Own => node.cfg.netns_path(&rec.name),
            NetMode::Host => PathBuf::new(),
        },
        hostname: rec.hostname.clone(),
        resolv_conf: Some(dir.join("resolv.conf")),
        hosts_file: Some(dir.join("hosts")),
    })
}

/// A sandbox's log file and whether its process still runs.
pub fn log_file(node: &Node, r: &str) -> ApiResult<(PathBuf, bool)> {
    let d = node.cache.read();
    let id = d.sandbox_id(r).map_err(|e| lookup_err("sandbox", r, e))?;
    let st = d.status_of(id);
    let running = st.is_some_and(|s| s.pid.is_some() && !s.exited);
    Ok((node.cfg.log_path(id), running))
}
