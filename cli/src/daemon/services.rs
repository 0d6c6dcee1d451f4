//! Swarm-style services on one node. A service is desired state (command, replicas, networks
//! with a VIP each, ports, health check); its tasks are ordinary sandboxes named
//! `svc.slot.taskid` with a task record. `converge` makes the tasks match the service: fill
//! empty slots, replace exited tasks as the restart policy says, roll tasks over to a new
//! version one slot at a time, drain surplus ones. A task is in DNS and in every client's LB
//! only while running, healthy and not draining; every change of that is pushed at once to
//! the resolver tables and, per client sandbox, as an incremental nftables change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use sdnet_lb::VipLb;
use sdnet_netstack::netns::Netns;
use sdnet_resolver::Change;
use sdnet_resolver::model::{self, EndpointMode};
use tracing::{debug, info, warn};

use crate::api::*;
use crate::daemon::core::{
    ApiError, ApiResult, Daemon, Event, Inner, Svc, now, sandbox_model, visible,
};
use crate::daemon::process;
use crate::daemon::store::{NetMode, Op, ServiceNetRec, ServiceRec, TaskRec};
use crate::enter::Enter;

fn bad<T>(msg: impl Into<String>) -> ApiResult<T> {
    Err(ApiError::BadRequest(msg.into()))
}

fn hex12() -> String {
    let mut b = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Svc {
    pub(super) fn model(&self) -> model::Service {
        let r = &self.rec;
        model::Service {
            id: r.id.clone(),
            name: r.name.clone(),
            mode: r.mode,
            networks: r
                .networks
                .iter()
                .map(|n| model::ServiceNetwork {
                    network: n.network.clone(),
                    vip: n.vip,
                    aliases: n.aliases.clone(),
                })
                .collect(),
            ports: r
                .ports
                .iter()
                .map(|p| model::ServicePort {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: p.protocol,
                })
                .collect(),
        }
    }
}

/// What the per-sandbox LB tables must hold: every VIP with its network and healthy backends.
fn vip_map(inner: &Inner) -> HashMap<Ipv4Addr, (String, Vec<Ipv4Addr>)> {
    let mut out = HashMap::new();
    for svc in inner
        .svcs
        .values()
        .filter(|s| s.rec.mode == EndpointMode::Vip)
    {
        for sn in &svc.rec.networks {
            let Some(vip) = sn.vip else {
                continue;
            };
            let backends: Vec<Ipv4Addr> = inner
                .sbs
                .values()
                .filter(|s| {
                    s.rec.task.as_ref().is_some_and(|t| t.service == svc.rec.id) && visible(&s.rec)
                })
                .filter_map(|s| s.rec.endpoints.iter().find(|e| e.network == sn.network))
                .filter_map(|e| e.ipv4)
                .collect();
            out.insert(vip, (sn.network.clone(), backends));
        }
    }
    out
}

impl Daemon {
    // ------------------------------------------------------------ load balancing

    /// Brings one sandbox's LB table in line (incrementally when its state is known).
    pub(super) async fn sync_lb(&self, inner: &mut Inner, id: &str) {
        let vips = vip_map(inner);
        self.sync_lb_with(inner, id, &vips).await;
    }

    pub(super) async fn sync_lb_all(&self, inner: &mut Inner) {
        let vips = vip_map(inner);
        let ids: Vec<String> = inner.sbs.keys().cloned().collect();
        for id in ids {
            self.sync_lb_with(inner, &id, &vips).await;
        }
    }

    async fn sync_lb_with(
        &self,
        inner: &mut Inner,
        id: &str,
        vips: &HashMap<Ipv4Addr, (String, Vec<Ipv4Addr>)>,
    ) {
        let Some(sb) = inner.sbs.get_mut(id) else {
            return;
        };
        if sb.rec.mode != NetMode::Own {
            return;
        }
        let mut want: BTreeMap<Ipv4Addr, VipLb> = BTreeMap::new();
        for e in &sb.rec.endpoints {
            for (vip, (net, backends)) in vips {
                if *net == e.network {
                    want.insert(*vip, VipLb::new(*vip, backends.clone()));
                }
            }
        }
        let text = match &sb.lb {
            Some(have) if *have == want => return,
            Some(have) => {
                // A spread chain exists for every backend count some VIP in the table has,
                // and for each one an earlier change in this transaction creates.
                let mut loaded: BTreeSet<usize> = have
                    .values()
                    .map(|v| v.backends.len())
                    .filter(|n| *n > 0)
                    .collect();
                let vips: BTreeSet<&Ipv4Addr> = have.keys().chain(want.keys()).collect();
                let mut t = String::new();
                for vip in vips {
                    let new = want.get(vip);
                    let count = new.map_or(0, |n| n.backends.len());
                    let spread_loaded = loaded.contains(&count);
                    if let Some(c) = sdnet_lb::change(have.get(vip), new, spread_loaded) {
                        if count > 0 {
                            loaded.insert(count);
                        }
                        t.push_str(&c);
                    }
                }
                t
            }
            None if want.is_empty() => sdnet_lb::delete_table(),
            None => sdnet_lb::table(&want.values().cloned().collect::<Vec<_>>()),
        };
        // Connections to backends that left are cut, not left to time out.
        let gone: Vec<(Ipv4Addr, Ipv4Addr)> = sb
            .lb
            .iter()
            .flat_map(|have| have.values())
            .flat_map(|v| {
                let keep = want
                    .get(&v.vip)
                    .map(|w| w.backends.clone())
                    .unwrap_or_default();
                v.backends
                    .iter()
                    .filter(move |b| !keep.contains(b))
                    .map(move |b| (v.vip, *b))
            })
            .collect();
        let Ok(ns) = Netns::open(&sb.rec.netns) else {
            return;
        };
        let mut applied = sdnet_netstack::nft::apply(&ns, &text);
        if applied.is_err() && sb.lb.is_some() {
            // Our idea of the table was wrong (someone touched it): load it whole.
            applied = sdnet_netstack::nft::apply(
                &ns,
                &sdnet_lb::table(&want.values().cloned().collect::<Vec<_>>()),
            );
        }
        match applied {
            Ok(()) => sb.lb = Some(want),
            Err(e) => {
                warn!(sandbox = %sb.rec.name, "LB rules: {e}");
                sb.lb = None;
            }
        }
        if !gone.is_empty() {
            tokio::task::spawn_blocking(move || flush_conntrack(&ns, &gone));
        }
    }

    /// A task entered or left DNS/LB: tell the resolver, every LB, and the host's published ports.
    pub(super) async fn task_visibility_changed(&self, inner: &mut Inner, id: &str) {
        let Some(sb) = inner.sbs.get(id) else {
            return;
        };
        let rec = sb.rec.clone();
        if let Err(e) = self
            .resolver
            .tables
            .apply([Change::UpsertSandbox(sandbox_model(&rec))])
        {
            warn!(task = %rec.name, "updating names: {e}");
        }
        self.sync_lb_all(inner).await;
        let published = rec
            .task
            .as_ref()
            .and_then(|t| inner.svcs.get(&t.service))
            .is_some_and(|s| !s.rec.publish.is_empty());
        if published && let Err(e) = self.host.apply_nft(&inner.firewall()) {
            warn!("published service ports: {e:#}");
        }
        debug!(task = %rec.name, visible = visible(&rec), "task visibility");
    }

    // ------------------------------------------------------------ health

    /// Starts the health checker of a task that has one (idempotent).
    pub(super) fn start_health(self: &Arc<Self>, inner: &mut Inner, id: &str) {
        let Some(sb) = inner.sbs.get_mut(id) else {
            return;
        };
        let Some(t) = &sb.rec.task else {
            return;
        };
        let Some(spec) = inner
            .svcs
            .get(&t.service)
            .and_then(|s| s.rec.health.clone())
        else {
            return;
        };
        if sb.health.is_some() || sb.rec.exited {
            return;
        }
        let tx = self.events.clone();
        let sandbox = id.to_string();
        let netns = sb.rec.netns.clone();
        let hostname = sb.rec.hostname.clone();
        let dir = self.cfg.files_dir(&sb.rec.name);
        sb.health = Some(tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let interval = Duration::from_millis(spec.interval_ms.max(50));
            let timeout = Duration::from_millis(spec.timeout_ms.max(50));
            let start_period = Duration::from_millis(spec.start_period_ms);
            // First check right after start (the process needs a moment), then every interval.
            let mut wait = Duration::from_millis(100);
            loop {
                tokio::time::sleep(wait).await;
                wait = interval;
                let ok = run_check(&netns, &hostname, &dir, &spec.cmd, timeout).await;
                if !ok && started.elapsed() < start_period {
                    continue; // failures while starting do not count
                }
                if tx
                    .send(Event::Health {
                        sandbox: sandbox.clone(),
                        ok,
                    })
                    .is_err()
                {
                    return;
                }
            }
        }));
    }

    pub(super) async fn on_health(self: &Arc<Self>, id: &str, ok: bool) {
        let mut inner = self.inner.lock().await;
        let retries = {
            let Some(sb) = inner.sbs.get(id) else {
                return;
            };
            let Some(t) = &sb.rec.task else {
                return;
            };
            inner
                .svcs
                .get(&t.service)
                .and_then(|s| s.rec.health.as_ref())
                .map(|h| h.retries.max(1))
                .unwrap_or(1)
        };
        let Some(sb) = inner.sbs.get_mut(id) else {
            return;
        };
        let Some(t) = sb.rec.task.as_mut() else {
            return;
        };
        let before = (t.healthy, t.unhealthy);
        if ok {
            sb.failures = 0;
            t.healthy = true;
            t.unhealthy = false;
        } else {
            sb.failures += 1;
            if sb.failures >= retries {
                t.healthy = false;
                t.unhealthy = true;
            }
        }
        if before == (t.healthy, t.unhealthy) {
            return;
        }
        info!(task = %sb.rec.name, healthy = t.healthy, "health changed");
        let service = t.service.clone();
        if let Err(e) = self.store.commit(&[Op::PutSandbox(&sb.rec)]) {
            warn!("recording health: {e}");
        }
        self.task_visibility_changed(&mut inner, id).await;
        // A rolling update waits for new tasks to be healthy.
        self.converge(&mut inner, &service).await;
    }

    // ------------------------------------------------------------ converge

    /// Makes a service's tasks match its desired state. Never fails: problems are logged and
    /// the next event or tick tries again.
    pub(super) async fn converge(self: &Arc<Self>, inner: &mut Inner, svc_id: &str) {
        let Some(svc) = inner.svcs.get(svc_id).map(|s| s.rec.clone()) else {
            return;
        };
        struct T {
            id: String,
            slot: u32,
            exited: bool,
            code: Option<i32>,
            draining: bool,
            version: u64,
            visible: bool,
        }
        let tasks = |inner: &Inner| -> Vec<T> {
            inner
                .sbs
                .values()
                .filter_map(|s| {
                    let t = s.rec.task.as_ref().filter(|t| t.service == svc.id)?;
                    Some(T {
                        id: s.rec.id.clone(),
                        slot: t.slot,
                        exited: s.rec.exited,
                        code: s.rec.exit_code,
                        draining: t.draining,
                        version: t.version,
                        visible: visible(&s.rec),
                    })
                })
                .collect()
        };
        // Exited tasks: replaced as the restart policy says (the dead one goes first).
        for t in tasks(inner).iter().filter(|t| t.exited) {
            let replace = match svc.restart {
                RestartPolicy::Any => true,
                RestartPolicy::OnFailure => t.code != Some(0),
                RestartPolicy::None => false,
            };
            if (replace || t.slot > svc.replicas)
                && let Err(e) = self.remove_sandbox_in(inner, &t.id, true).await
            {
                warn!(service = %svc.name, "removing exited task: {e}");
            }
        }
        let all = tasks(inner);
        for slot in 1..=svc.replicas {
            let in_slot: Vec<&T> = all.iter().filter(|t| t.slot == slot).collect();
            if in_slot.is_empty() {
                self.create_task(inner, &svc, slot).await;
            }
        }
        // Rolling update: one slot at a time gets a new-version task; the old one drains once
        // the new one is in DNS.
        let all = tasks(inner);
        let live: Vec<&T> = all.iter().filter(|t| !t.exited && !t.draining).collect();
        let rolling_slot =
            (1..=svc.replicas).find(|s| live.iter().filter(|t| t.slot == *s).count() > 1);
        match rolling_slot {
            Some(slot) => {
                let new_ready = live
                    .iter()
                    .any(|t| t.slot == slot && t.version == svc.version && t.visible);
                if new_ready {
                    for t in live
                        .iter()
                        .filter(|t| t.slot == slot && t.version < svc.version)
                    {
                        self.drain(inner, &t.id, svc.drain_ms);
                    }
                }
            }
            None => {
                if let Some(old) = live
                    .iter()
                    .filter(|t| t.slot <= svc.replicas && t.version < svc.version)
                    .min_by_key(|t| t.slot)
                {
                    self.create_task(inner, &svc, old.slot).await;
                }
            }
        }
        // Scale down: the highest slots drain.
        for t in tasks(inner)
            .iter()
            .filter(|t| t.slot > svc.replicas && !t.draining && !t.exited)
        {
            self.drain(inner, &t.id, svc.drain_ms);
        }
    }

    async fn create_task(self: &Arc<Self>, inner: &mut Inner, svc: &ServiceRec, slot: u32) {
        let name = format!("{}.{}.{}", svc.name, slot, hex12());
        let req = SandboxCreate {
            name: Some(name.clone()),
            networks: svc
                .networks
                .iter()
                .map(|n| NetworkAttach {
                    network: n.network.clone(),
                    ..NetworkAttach::default()
                })
                .collect(),
            command: svc.command.clone(),
            env: svc.env.clone(),
            ..SandboxCreate::default()
        };
        let task = TaskRec {
            service: svc.id.clone(),
            slot,
            healthy: svc.health.is_none(),
            unhealthy: false,
            draining: false,
            version: svc.version,
        };
        match self.create_sandbox_in(inner, req, Some(task)).await {
            Ok(id) => {
                info!(task = %name, "task started");
                self.start_health(inner, &id);
                self.task_visibility_changed(inner, &id).await;
            }
            Err(e) => warn!(service = %svc.name, slot, "starting a task: {e}"),
        }
    }

    /// Takes a task out of DNS and the LB now; stops it after the drain delay.
    fn drain(self: &Arc<Self>, inner: &mut Inner, id: &str, drain_ms: u64) {
        let Some(sb) = inner.sbs.get_mut(id) else {
            return;
        };
        let Some(t) = sb.rec.task.as_mut() else {
            return;
        };
        if t.draining {
            return;
        }
        t.draining = true;
        info!(task = %sb.rec.name, drain_ms, "draining");
        if let Err(e) = self.store.commit(&[Op::PutSandbox(&sb.rec)]) {
            warn!("recording the drain: {e}");
        }
        let me = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            // Out of DNS and the LB first (this runs after the caller releases the lock).
            {
                let mut inner = me.inner.lock().await;
                me.task_visibility_changed(&mut inner, &id).await;
            }
            tokio::time::sleep(Duration::from_millis(drain_ms)).await;
            let _ = me.events.send(Event::Drained { sandbox: id });
        });
    }

    pub(super) async fn on_drained(self: &Arc<Self>, id: &str) {
        let mut inner = self.inner.lock().await;
        let Some(svc) = inner
            .sbs
            .get(id)
            .and_then(|s| s.rec.task.as_ref())
            .map(|t| t.service.clone())
        else {
            return;
        };
        if let Some(p) = inner.sbs.get(id).and_then(|s| s.rec.process) {
            process::signal(&p, libc::SIGTERM);
        }
        if let Err(e) = self.remove_sandbox_in(&mut inner, id, true).await {
            warn!("removing a drained task: {e}");
        }
        self.converge(&mut inner, &svc).await;
    }

    /// Periodic safety net: converge every service.
    pub async fn tick(self: &Arc<Self>) {
        let mut inner = self.inner.lock().await;
        let ids: Vec<String> = inner.svcs.keys().cloned().collect();
        for id in ids {
            self.converge(&mut inner, &id).await;
        }
    }

    // ------------------------------------------------------------ API

    pub async fn create_service(self: &Arc<Self>, req: ServiceCreate) -> ApiResult<ServiceInfo> {
        model::check_object_name("service", &req.name)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if req.command.is_empty() {
            return bad("a service needs a command (after --)");
        }
        if req.networks.is_empty() {
            return bad("a service needs at least one --network");
        }
        if let Some(h) = &req.health
            && (h.cmd.trim().is_empty() || h.interval_ms == 0)
        {
            return bad("--health-cmd needs a command and a non-zero --health-interval");
        }
        for p in &req.ports {
            model::check_dns_name("port name", &p.name)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        }
        let mut inner = self.inner.lock().await;
        if inner.svcs.values().any(|s| s.rec.name == req.name) {
            return Err(ApiError::Conflict(format!(
                "service {} already exists",
                req.name
            )));
        }
        let mut nets: Vec<ServiceNetRec> = Vec::new();
        for n in &req.networks {
            let net = inner.net_by_ref(&n.network)?;
            if net.rec.driver != Driver::Bridge || net.rec.predefined {
                return bad(format!(
                    "network {}: services need a user-defined bridge network",
                    net.rec.name
                ));
            }
            if nets.iter().any(|x| x.network == net.rec.id) {
                return bad(format!("network {} given twice", net.rec.name));
            }
            for a in &n.aliases {
                model::check_dns_name("alias", a)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            }
            nets.push(ServiceNetRec {
                network: net.rec.id.clone(),
                aliases: n.aliases.clone(),
                vip: None,
            });
        }
        for (i, p) in req.publish.iter().enumerate() {
            if req.publish[..i].iter().any(|q| same_binding(p, q)) {
                return bad(format!("port {p} given twice"));
            }
            if let Some(owner) = inner.port_owner(p) {
                return Err(ApiError::Conflict(format!(
                    "host port {p} is already published by {owner}"
                )));
            }
        }
        // One VIP per network, from the network's own pool.
        if req.endpoint_mode == EndpointMode::Vip {
            for sn in nets.iter_mut() {
                let net = inner
                    .nets
                    .get_mut(&sn.network)
                    .ok_or_else(|| ApiError::NotFound("network vanished".into()))?;
                let sub = net
                    .ipam
                    .iter_mut()
                    .find(|s| matches!(s.net(), ipnet::IpNet::V4(_)));
                let vip = match sub.map(|s| s.allocate(None)) {
                    Some(Ok(IpAddr::V4(v))) => v,
                    Some(Err(e)) => {
                        return Err(ApiError::Conflict(format!("network {}: {e}", net.rec.name)));
                    }
                    _ => {
                        return bad(format!(
                            "network {} has no IPv4 subnet for a VIP",
                            net.rec.name
                        ));
                    }
                };
                sn.vip = Some(vip);
            }
        }
        let release = |inner: &mut Inner, nets: &[ServiceNetRec]| {
            for sn in nets {
                if let (Some(v), Some(n)) = (sn.vip, inner.nets.get_mut(&sn.network)) {
                    for s in n.ipam.iter_mut() {
                        s.release(IpAddr::V4(v));
                    }
                }
            }
        };
        let mut reservations = Vec::new();
        for p in &req.publish {
            match crate::daemon::core::reserve(p) {
                Ok(r) => reservations.push(r),
                Err(e) => {
                    release(&mut inner, &nets);
                    return Err(ApiError::Conflict(e));
                }
            }
        }
        let rec = ServiceRec {
            id: crate::daemon::core::random_id(),
            name: req.name.clone(),
            created: now(),
            command: req.command.clone(),
            env: req.env.clone(),
            replicas: req.replicas,
            mode: req.endpoint_mode,
            networks: nets.clone(),
            ports: req.ports.clone(),
            publish: req.publish.clone(),
            health: req.health.clone(),
            restart: req.restart,
            drain_ms: req.drain_ms,
            version: 1,
        };
        let svc = Svc {
            rec: rec.clone(),
            _reservations: reservations,
        };
        if let Err(e) = self
            .resolver
            .tables
            .apply([Change::UpsertService(svc.model())])
        {
            release(&mut inner, &nets);
            return Err(ApiError::BadRequest(e.to_string()));
        }
        if let Err(e) = self.store.commit(&[Op::PutService(&rec)]) {
            let _ = self
                .resolver
                .tables
                .apply([Change::RemoveService(rec.id.clone())]);
            release(&mut inner, &nets);
            return Err(ApiError::Internal(e.into()));
        }
        inner.svcs.insert(rec.id.clone(), svc);
        info!(service = %rec.name, replicas = rec.replicas, "service created");
        // Clients see the VIP (with no backend yet: connections are refused, not hung).
        self.sync_lb_all(&mut inner).await;
        if !rec.publish.is_empty() {
            self.host.apply_nft(&inner.firewall())?;
        }
        self.converge(&mut inner, &rec.id).await;
        Ok(self.service_info(&inner, &rec.id))
    }

    fn svc_id(inner: &Inner, r: &str) -> ApiResult<String> {
        if inner.svcs.contains_key(r) {
            return Ok(r.to_string());
        }
        if let Some(s) = inner.svcs.values().find(|s| s.rec.name == r) {
            return Ok(s.rec.id.clone());
        }
        let hits: Vec<&String> = inner.svcs.keys().filter(|id| id.starts_with(r)).collect();
        match hits.as_slice() {
            [id] if !r.is_empty() => Ok((*id).clone()),
            _ => Err(ApiError::NotFound(format!("service {r} not found"))),
        }
    }

    pub async fn services(&self) -> Vec<ServiceInfo> {
        let inner = self.inner.lock().await;
        let mut v: Vec<ServiceInfo> = inner
            .svcs
            .keys()
            .map(|id| self.service_info(&inner, id))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub async fn service(&self, r: &str) -> ApiResult<ServiceInfo> {
        let inner = self.inner.lock().await;
        let id = Self::svc_id(&inner, r)?;
        Ok(self.service_info(&inner, &id))
    }

    pub async fn update_service(
        self: &Arc<Self>,
        r: &str,
        u: ServiceUpdate,
    ) -> ApiResult<ServiceInfo> {
        let mut inner = self.inner.lock().await;
        let id = Self::svc_id(&inner, r)?;
        let mut rec = inner.svcs[&id].rec.clone();
        let mut roll = false;
        if let Some(n) = u.replicas {
            rec.replicas = n;
        }
        if let Some(c) = u.command {
            if c.is_empty() {
                return bad("the command cannot be empty");
            }
            roll |= c != rec.command;
            rec.command = c;
        }
        if let Some(e) = u.env {
            roll |= e != rec.env;
            rec.env = e;
        }
        let health_changed = u.health.as_ref().is_some_and(|h| *h != rec.health);
        if let Some(h) = u.health {
            rec.health = h;
        }
        if let Some(r) = u.restart {
            rec.restart = r;
        }
        if let Some(d) = u.drain_ms {
            rec.drain_ms = d;
        }
        if roll {
            rec.version += 1;
        }
        self.store
            .commit(&[Op::PutService(&rec)])
            .map_err(anyhow::Error::from)?;
        if let Some(s) = inner.svcs.get_mut(&id) {
            s.rec = rec.clone();
        }
        if health_changed {
            // Checkers restart with the new spec (tasks keep their current health state).
            let tasks: Vec<String> = inner
                .sbs
                .values()
                .filter(|s| s.rec.task.as_ref().is_some_and(|t| t.service == id))
                .map(|s| s.rec.id.clone())
                .collect();
            for t in tasks {
                if let Some(sb) = inner.sbs.get_mut(&t) {
                    if let Some(h) = sb.health.take() {
                        h.abort();
                    }
                    if rec.health.is_none()
                        && let Some(task) = sb.rec.task.as_mut()
                    {
                        task.healthy = true;
                        task.unhealthy = false;
                    }
                }
                self.start_health(&mut inner, &t);
                self.task_visibility_changed(&mut inner, &t).await;
            }
        }
        info!(service = %rec.name, replicas = rec.replicas, version = rec.version, "service updated");
        self.converge(&mut inner, &id).await;
        Ok(self.service_info(&inner, &id))
    }

    pub async fn remove_service(self: &Arc<Self>, r: &str) -> ApiResult<String> {
        let mut inner = self.inner.lock().await;
        let id = Self::svc_id(&inner, r)?;
        let tasks: Vec<String> = inner
            .sbs
            .values()
            .filter(|s| s.rec.task.as_ref().is_some_and(|t| t.service == id))
            .map(|s| s.rec.id.clone())
            .collect();
        // Tasks go first (out of DNS and the LB with them), then the service's names.
        for t in tasks {
            if let Err(e) = self.remove_sandbox_in(&mut inner, &t, true).await {
                warn!("removing a task: {e}");
            }
        }
        self.resolver
            .tables
            .apply([Change::RemoveService(id.clone())])
            .map_err(|e| ApiError::Internal(anyhow!("{e}")))?;
        self.store
            .commit(&[Op::DelService(&id)])
            .map_err(anyhow::Error::from)?;
        let svc = inner
            .svcs
            .remove(&id)
            .ok_or_else(|| ApiError::NotFound("service vanished".into()))?;
        for sn in &svc.rec.networks {
            if let (Some(v), Some(n)) = (sn.vip, inner.nets.get_mut(&sn.network)) {
                for s in n.ipam.iter_mut() {
                    s.release(IpAddr::V4(v));
                }
            }
        }
        self.sync_lb_all(&mut inner).await;
        if !svc.rec.publish.is_empty() {
            self.host.apply_nft(&inner.firewall())?;
        }
        info!(service = %svc.rec.name, "service removed");
        Ok(svc.rec.name.clone())
    }

    fn service_info(&self, inner: &Inner, id: &str) -> ServiceInfo {
        let r = &inner.svcs[id].rec;
        let mut tasks: Vec<TaskView> = inner
            .sbs
            .values()
            .filter_map(|s| {
                let t = s.rec.task.as_ref().filter(|t| t.service == r.id)?;
                let state = if s.rec.exited {
                    "exited"
                } else if t.draining {
                    "draining"
                } else if t.unhealthy {
                    "unhealthy"
                } else if t.healthy {
                    "running"
                } else {
                    "starting"
                };
                let health = match (&r.health, t.healthy, t.unhealthy) {
                    (None, _, _) => "",
                    (Some(_), _, true) => "unhealthy",
                    (Some(_), true, _) => "healthy",
                    (Some(_), false, _) => "starting",
                };
                Some(TaskView {
                    name: s.rec.name.clone(),
                    id: s.rec.id.clone(),
                    slot: t.slot,
                    state: state.into(),
                    health: health.into(),
                    node: hostname(),
                    ips: s
                        .rec
                        .endpoints
                        .iter()
                        .filter_map(|e| {
                            let n = inner.nets.get(&e.network)?;
                            Some(format!("{}={}", n.rec.name, e.ipv4?))
                        })
                        .collect(),
                    exit_code: s.rec.exit_code,
                })
            })
            .collect();
        tasks.sort_by(|a, b| a.slot.cmp(&b.slot).then(a.name.cmp(&b.name)));
        ServiceInfo {
            id: r.id.clone(),
            name: r.name.clone(),
            created: crate::api::rfc3339(r.created),
            mode: r.mode,
            replicas: r.replicas,
            running: tasks.iter().filter(|t| t.state == "running").count() as u32,
            command: r.command.clone(),
            networks: r
                .networks
                .iter()
                .map(|n| ServiceNetworkView {
                    network: inner
                        .nets
                        .get(&n.network)
                        .map(|x| x.rec.name.clone())
                        .unwrap_or_else(|| n.network.clone()),
                    vip: n.vip,
                    aliases: n.aliases.clone(),
                })
                .collect(),
            ports: r.ports.clone(),
            publish: r.publish.clone(),
            health: r.health.clone(),
            restart: r.restart,
            drain_ms: r.drain_ms,
            tasks,
        }
    }
}

/// Runs a health command inside a task (its network, mounts and hostname).
async fn run_check(netns: &Path, hostname: &str, etc: &Path, cmd: &str, timeout: Duration) -> bool {
    let resolv = etc.join("resolv.conf");
    let hosts = etc.join("hosts");
    let enter = match Enter::prepare(
        Some(netns),
        hostname,
        &[
            (&resolv, Path::new("/etc/resolv.conf")),
            (&hosts, Path::new("/etc/hosts")),
        ],
    ) {
        Ok(e) => e,
        Err(_) => return false,
    };
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    // SAFETY: Enter::apply only makes system calls prepared before fork.
    unsafe {
        c.pre_exec(move || enter.apply());
    }
    let Ok(mut child) = c.spawn() else {
        return false;
    };
    matches!(tokio::time::timeout(timeout, child.wait()).await, Ok(Ok(s)) if s.success())
}

/// Deletes conntrack entries from `vip` to backends that left, inside a client sandbox.
fn flush_conntrack(ns: &Netns, gone: &[(Ipv4Addr, Ipv4Addr)]) {
    let gone = gone.to_vec();
    let _ = ns.run(move || {
        for (vip, backend) in gone {
            let _ = std::process::Command::new("conntrack")
                .args(["-D", "-d", &vip.to_string(), "-r", &backend.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    });
}

fn hostname() -> String {
    nix_hostname().unwrap_or_else(|| "localhost".into())
}

fn nix_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

pub(super) fn same_binding(a: &PortSpec, b: &PortSpec) -> bool {
    crate::daemon::core::same_binding(a, b)
}
