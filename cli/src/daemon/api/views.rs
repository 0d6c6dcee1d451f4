//! Store records ↔ the API model: what requests turn into, and what reads show.

use std::path::PathBuf;

use sdnet_resolver::model::Upstream;

use crate::api::rfc3339;
use crate::api::*;
use crate::daemon::Node;
use crate::daemon::reconcile::model::dns_names;
use crate::daemon::state::Desired;
use crate::daemon::store::schema::{
    DeclaredPortRec, DriverKind, EndpointRec, HealthRec, NetMode, PublishRec, Restart, SandboxRec,
    Scope,
};

impl From<&PortSpec> for PublishRec {
    fn from(p: &PortSpec) -> Self {
        PublishRec {
            host_ip: p.host_ip,
            host_port: p.host_port,
            container_port: p.container_port,
            protocol: p.protocol,
            host_mode: p.host_mode,
        }
    }
}

impl From<&PublishRec> for PortSpec {
    fn from(p: &PublishRec) -> Self {
        PortSpec {
            host_ip: p.host_ip,
            host_port: p.host_port,
            container_port: p.container_port,
            protocol: p.protocol,
            host_mode: p.host_mode,
        }
    }
}

impl From<&HealthSpec> for HealthRec {
    fn from(h: &HealthSpec) -> Self {
        HealthRec {
            cmd: h.cmd.clone(),
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            retries: h.retries,
            start_period_ms: h.start_period_ms,
        }
    }
}

impl From<&HealthRec> for HealthSpec {
    fn from(h: &HealthRec) -> Self {
        HealthSpec {
            cmd: h.cmd.clone(),
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            retries: h.retries,
            start_period_ms: h.start_period_ms,
        }
    }
}

impl From<&DeclaredPort> for DeclaredPortRec {
    fn from(p: &DeclaredPort) -> Self {
        DeclaredPortRec {
            name: p.name.clone(),
            port: p.port,
            protocol: p.protocol,
        }
    }
}

impl From<&DeclaredPortRec> for DeclaredPort {
    fn from(p: &DeclaredPortRec) -> Self {
        DeclaredPort {
            name: p.name.clone(),
            port: p.port,
            protocol: p.protocol,
        }
    }
}

impl From<RestartPolicy> for Restart {
    fn from(r: RestartPolicy) -> Self {
        match r {
            RestartPolicy::Any => Restart::Any,
            RestartPolicy::OnFailure => Restart::OnFailure,
            RestartPolicy::None => Restart::None,
        }
    }
}

impl From<Restart> for RestartPolicy {
    fn from(r: Restart) -> Self {
        match r {
            Restart::Any => RestartPolicy::Any,
            Restart::OnFailure => RestartPolicy::OnFailure,
            Restart::None => RestartPolicy::None,
        }
    }
}

impl From<DriverKind> for Driver {
    fn from(k: DriverKind) -> Self {
        match k {
            DriverKind::Bridge => Driver::Bridge,
            DriverKind::Host => Driver::Host,
            DriverKind::None => Driver::None,
            DriverKind::Overlay => Driver::Overlay,
            DriverKind::Macvlan => Driver::Macvlan,
            DriverKind::Cni => Driver::Cni,
        }
    }
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What the last CNI CHECK found for the endpoint (none for other drivers, or before one).
fn cni_check(node: &Node, d: &Desired, e: &EndpointRec) -> Option<CniCheck> {
    let cni = d
        .networks
        .get(e.network.as_str())
        .is_some_and(|n| n.rec.driver == DriverKind::Cni);
    if !cni {
        return None;
    }
    let h = node.drivers.cni.health.get(&e.network, &e.sandbox)?;
    let (at, outcome) = h.last?;
    Some(CniCheck {
        at: rfc3339(at),
        result: outcome.word().to_string(),
        message: outcome.message().map(str::to_string),
        broken: h.broken,
        repairs: h.repairs,
    })
}

fn endpoint(node: &Node, d: &Desired, sandbox_name: &str, e: &EndpointRec) -> EndpointInfo {
    EndpointInfo {
        cni_check: cni_check(node, d, e),
        sandbox: sandbox_name.to_string(),
        network: d
            .networks
            .get(e.network.as_str())
            .map(|n| n.rec.name.clone())
            .unwrap_or_else(|| e.network.clone()),
        interface: format!("eth{}", e.index),
        ipv4: e.ipv4,
        ipv6: e.ipv6,
        mac: Some(fmt_mac(&e.mac)),
        aliases: e.aliases.clone(),
        dns_names: dns_names(d, &e.sandbox, &e.network),
    }
}

pub fn network(node: &Node, d: &Desired, id: &str) -> Option<NetworkInfo> {
    let n = &d.networks.get(id)?.rec;
    Some(NetworkInfo {
        id: n.id.clone(),
        name: n.name.clone(),
        driver: n.driver.into(),
        scope: match n.scope {
            Scope::Local => "local".into(),
            Scope::Swarm => "swarm".into(),
        },
        created: rfc3339(n.created),
        subnets: n
            .subnets
            .iter()
            .map(|s| SubnetInfo {
                subnet: s.subnet,
                ip_range: s.ip_range,
                gateway: s.gateway,
                aux: s.aux.clone(),
            })
            .collect(),
        internal: n.internal,
        attachable: n.attachable,
        dns: n.dns_on(),
        host_dns: n.host_dns_on(),
        mtu: n.mtu.unwrap_or(1500),
        dns_servers: n.dns_servers.iter().copied().map(Upstream).collect(),
        ttl: n.ttl,
        bridge: (n.driver == DriverKind::Bridge).then(|| n.bridge()),
        vni: n.vni,
        options: n.options.clone(),
        labels: n.labels.clone(),
        endpoints: d
            .members(id)
            .filter_map(|sb| {
                let s = d.sandboxes.get(sb.as_str())?;
                let e = d.endpoints.get(sb.as_str())?.get(id)?;
                Some(endpoint(node, d, &s.rec.name, &e.rec))
            })
            .collect(),
    })
}

pub fn sandbox(node: &Node, d: &Desired, id: &str) -> Option<SandboxInfo> {
    let rec = &d.sandboxes.get(id)?.rec;
    let st = d.status_of(id);
    let dir = node.cfg.files_dir(id);
    let exited = st.is_some_and(|s| s.exited && !s.due);
    let restarting = exited && st.is_some_and(|s| s.restarting) && !rec.stopped;
    Some(SandboxInfo {
        id: rec.id.clone(),
        name: rec.name.clone(),
        hostname: rec.hostname.clone(),
        created: rfc3339(rec.created),
        started_at: st.and_then(|s| s.started_at).map(rfc3339),
        finished_at: st.and_then(|s| s.finished_at).map(rfc3339),
        status: if restarting {
            SandboxStatus::Restarting
        } else if exited {
            SandboxStatus::Exited
        } else if rec.paused {
            SandboxStatus::Paused
        } else {
            SandboxStatus::Running
        },
        netns: match rec.mode {
            NetMode::Own => node.cfg.netns_path(&rec.name),
            NetMode::Host => PathBuf::new(),
        },
        adopted: rec.adopt.is_some(),
        endpoints: d
            .endpoints_of(id)
            .into_iter()
            .map(|e| endpoint(node, d, &rec.name, &e.rec))
            .collect(),
        ports: rec.ports.iter().map(PortSpec::from).collect(),
        dns: rec.dns.iter().copied().map(Upstream).collect(),
        command: rec.command.clone(),
        pid: st.filter(|s| !s.exited).and_then(|s| s.pid),
        exit_code: st.and_then(|s| s.exit_code),
        resolv_conf: Some(dir.join("resolv.conf")),
        hosts_file: Some(dir.join("hosts")),
        dns_ports: node.live.dns(id),
        restart_policy: restart_spec(rec).to_string(),
        restart_count: st.map_or(0, |s| s.restart_count),
        links: rec
            .links
            .iter()
            .map(|l| super::links::shown(&rec.name, l))
            .collect(),
        exposed_ports: rec
            .expose
            .iter()
            .map(|e| format!("{}/{}", e.port, e.protocol))
            .collect(),
    })
}

/// A sandbox record's restart policy in the API's terms.
pub fn restart_spec(rec: &SandboxRec) -> SandboxRestartSpec {
    use crate::daemon::store::schema::SandboxRestart as R;
    SandboxRestartSpec {
        policy: match rec.restart {
            R::No => SandboxRestartPolicy::No,
            R::OnFailure => SandboxRestartPolicy::OnFailure,
            R::Always => SandboxRestartPolicy::Always,
            R::UnlessStopped => SandboxRestartPolicy::UnlessStopped,
        },
        max_retries: rec.restart_max,
    }
}

pub fn service(node: &Node, d: &Desired, id: &str) -> Option<ServiceInfo> {
    let r = &d.services.get(id)?.rec;
    let mut tasks: Vec<TaskView> = d
        .tasks_of(id)
        .filter_map(|tid| {
            let s = &d.sandboxes.get(tid.as_str())?.rec;
            let t = s.task.as_ref()?;
            let st = d.status_of(tid);
            let exited = st.is_some_and(|x| x.exited);
            let (healthy, unhealthy) = st.map_or((false, false), |x| (x.healthy, x.unhealthy));
            let state = if exited {
                "exited"
            } else if t.draining {
                "draining"
            } else if r.health.is_some() && unhealthy {
                "unhealthy"
            } else if r.health.is_none() || healthy {
                "running"
            } else {
                "starting"
            };
            let health = match (&r.health, healthy, unhealthy) {
                (None, _, _) => "",
                (Some(_), _, true) => "unhealthy",
                (Some(_), true, _) => "healthy",
                (Some(_), false, _) => "starting",
            };
            Some(TaskView {
                name: s.name.clone(),
                id: s.id.clone(),
                slot: t.slot,
                state: state.into(),
                health: health.into(),
                node: node.name.clone(),
                ips: d
                    .endpoints_of(tid)
                    .into_iter()
                    .filter_map(|e| {
                        let n = d.networks.get(e.rec.network.as_str())?;
                        Some(format!("{}={}", n.rec.name, e.rec.ipv4?))
                    })
                    .collect(),
                exit_code: st.and_then(|x| x.exit_code),
            })
        })
        .collect();
    // Tasks on other nodes, as they published them.
    let me = node.node_id();
    for p in d.remote_tasks(id, me) {
        let Some(t) = &p.task else { continue };
        let ips = d
            .remote_endpoints(&p.sandbox)
            .into_iter()
            .filter_map(|e| {
                let n = d.networks.get(e.rec.network.as_str())?;
                Some(format!("{}={}", n.rec.name, e.rec.ipv4?))
            })
            .collect();
        tasks.push(TaskView {
            name: p.name.clone(),
            id: p.sandbox.clone(),
            slot: t.slot,
            state: if t.healthy { "running" } else { "not ready" }.into(),
            health: String::new(),
            node: d
                .nodes
                .get(p.node.as_str())
                .map(|n| n.rec.name.clone())
                .unwrap_or_else(|| p.node.clone()),
            ips,
            exit_code: None,
        });
    }
    tasks.sort_by(|a, b| a.slot.cmp(&b.slot).then(a.name.cmp(&b.name)));
    let swarm = d.swarm_service(r);
    // Global: one per live node that satisfies the constraints.
    let replicas = match (swarm, r.placement.global) {
        (true, true) => d
            .nodes
            .values()
            .filter(|n| d.alive.contains(&n.rec.id))
            .filter(|n| r.placement.constraints.iter().all(|c| c.allows(&n.rec)))
            .count() as u32,
        (false, true) => 1,
        (_, false) => r.replicas,
    };
    Some(ServiceInfo {
        id: r.id.clone(),
        name: r.name.clone(),
        created: rfc3339(r.created),
        mode: r.mode,
        replicas,
        global: r.placement.global,
        constraints: r
            .placement
            .constraints
            .iter()
            .map(|c| format!("{}{}{}", c.key, if c.equal { "==" } else { "!=" }, c.value))
            .collect(),
        scope: if swarm { "swarm" } else { "local" }.into(),
        running: tasks.iter().filter(|t| t.state == "running").count() as u32,
        command: r.command.clone(),
        networks: r
            .networks
            .iter()
            .map(|n| ServiceNetworkView {
                network: d
                    .networks
                    .get(n.network.as_str())
                    .map(|x| x.rec.name.clone())
                    .unwrap_or_else(|| n.network.clone()),
                vip: n.vip,
                aliases: n.aliases.clone(),
            })
            .collect(),
        ports: r.ports.iter().map(DeclaredPort::from).collect(),
        publish: r.publish.iter().map(PortSpec::from).collect(),
        health: r.health.as_ref().map(HealthSpec::from),
        restart: r.restart.into(),
        drain_ms: r.drain_ms,
        tasks,
    })
}
