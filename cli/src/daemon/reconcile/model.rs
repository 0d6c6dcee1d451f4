//! Desired state as the resolver's model: what the name tables get for each object.

use sdnet_resolver::model::{self, Upstream};

use crate::daemon::config::short;
use crate::daemon::state::Desired;
use crate::daemon::store::schema::{NetworkRec, ServiceRec};

pub fn network(n: &NetworkRec) -> model::Network {
    model::Network {
        id: n.id.clone(),
        name: n.name.clone(),
        internal: n.internal,
        dns: n.dns_on(),
        upstreams: n.dns_servers.iter().copied().map(Upstream).collect(),
        ttl: n.ttl,
        vip_ttl: None,
    }
}

pub fn service(s: &ServiceRec) -> model::Service {
    model::Service {
        id: s.id.clone(),
        name: s.name.clone(),
        mode: s.mode,
        networks: s
            .networks
            .iter()
            .map(|n| model::ServiceNetwork {
                network: n.network.clone(),
                vip: n.vip,
                aliases: n.aliases.clone(),
            })
            .collect(),
        ports: s
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

/// A sandbox with its endpoints in attachment order; None if it does not exist.
pub fn sandbox(d: &Desired, id: &str) -> Option<model::Sandbox> {
    let sb = d.sandboxes.get(id)?;
    let r = &sb.rec;
    Some(model::Sandbox {
        id: r.id.clone(),
        name: r.name.clone(),
        hostname: Some(r.hostname.clone()),
        endpoints: d
            .endpoints_of(id)
            .into_iter()
            .filter(|e| d.networks.contains_key(e.rec.network.as_str()))
            .map(|e| model::Endpoint {
                network: e.rec.network.clone(),
                ipv4: e.rec.ipv4,
                ipv6: e.rec.ipv6,
                aliases: e.rec.aliases.clone(),
            })
            .collect(),
        upstreams: r.dns.iter().copied().map(Upstream).collect(),
        task: r.task.as_ref().map(|t| model::TaskInfo {
            service: t.service.clone(),
            slot: t.slot,
            healthy: d.visible(id),
        }),
        links: super::legacy_links::view_aliases(d, r),
    })
}

/// The names a sandbox answers on a network (for `inspect`).
pub fn dns_names(d: &Desired, sandbox: &str, net: &str) -> Vec<String> {
    let (Some(sb), Some(n)) = (d.sandboxes.get(sandbox), d.networks.get(net)) else {
        return Vec::new();
    };
    if !n.rec.dns_on() {
        return Vec::new();
    }
    let r = &sb.rec;
    let mut names = vec![r.name.clone()];
    if let Some(e) = d.endpoints.get(sandbox).and_then(|m| m.get(net)) {
        names.extend(e.rec.aliases.iter().cloned());
    }
    names.push(short(&r.id).to_string());
    if r.hostname != short(&r.id) {
        names.push(r.hostname.clone());
    }
    names
}
