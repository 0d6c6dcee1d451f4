//! Derivation: the records and the view of a holder, from the writer's model. Deterministic,
//! so the records a holder has in the tables are always the ones derived from its current
//! model: the writer derives them before and after a change and applies the difference.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use smallvec::SmallVec;

use super::entries::{Forwarding, LinkEntry, SrvTarget, UpstreamSet, View};
use super::holders::Record;
use super::sandboxes::{SbId, SbRec};
use super::writer::{HolderKey, Writer};
use crate::model::{self, DEFAULT_TTL, DEFAULT_VIP_TTL, EndpointMode, Service};
use crate::wire::encode_name;

impl Writer {
    /// The records a holder has under the current model (none when it is gone).
    pub(super) fn holder_records(&self, key: &HolderKey) -> Vec<Record> {
        match key {
            HolderKey::Sandbox(id) => match self.sandboxes.by_id.get(id) {
                Some(sb) => self.sandbox_records(id, sb),
                None => Vec::new(),
            },
            HolderKey::Service(id) => match self.services.get(id) {
                Some(s) => self.service_records(&s.service),
                None => Vec::new(),
            },
        }
    }

    fn sandbox_records(&self, id: &SbId, sb: &SbRec) -> Vec<Record> {
        if let model::Policy::Podman { .. } = self.policy {
            return self.podman_records(sb);
        }
        let mut out = Vec::new();
        let svc = sb
            .task()
            .and_then(|t| self.resolve_service(&t.service))
            .map(|s| &s.service);
        let visible = sb.task().is_none_or(|t| t.healthy);
        if !visible {
            return out;
        }
        for ep in &sb.endpoints {
            let Some(net) = self.resolve_net(&ep.network) else {
                continue;
            };
            if !net.dns {
                continue;
            }
            let idx = self.net_idx[&net.id];
            let ttl = net.ttl.unwrap_or(DEFAULT_TTL);
            let mut names: Vec<String> = vec![sb.name.to_ascii_lowercase(), id.hex(12)];
            if let Some(h) = sb.hostname() {
                names.push(h.to_ascii_lowercase());
            }
            names.extend(ep.aliases.iter().map(|a| a.to_ascii_lowercase()));
            let target: Option<Arc<[u8]>> =
                encode_name(&format!("{}.{}", sb.name, net.name)).map(Into::into);
            if let Some(svc) = svc
                && let Some(sn) = svc.networks.iter().find(|sn| {
                    self.resolve_net(&sn.network)
                        .is_some_and(|n| n.id == net.id)
                })
            {
                let svc_names: Vec<String> = std::iter::once(&svc.name)
                    .chain(sn.aliases.iter())
                    .map(|n| n.to_ascii_lowercase())
                    .collect();
                for n in &svc_names {
                    names.push(format!("tasks.{n}"));
                    if svc.mode == EndpointMode::Dnsrr {
                        names.push(n.clone());
                    }
                    if let Some(target) = &target {
                        for p in &svc.ports {
                            let key = format!("_{}._{}.{}", p.name, p.protocol, n)
                                .to_ascii_lowercase()
                                .into_boxed_str();
                            out.push(Record::Srv {
                                net: idx,
                                key,
                                target: SrvTarget {
                                    port: p.port,
                                    target: target.clone(),
                                    v4: ep.ipv4,
                                    v6: ep.ipv6,
                                    ttl,
                                },
                            });
                        }
                    }
                }
            }
            names.sort();
            names.dedup();
            let ips: SmallVec<[IpAddr; 2]> = [ep.ipv4.map(IpAddr::V4), ep.ipv6.map(IpAddr::V6)]
                .into_iter()
                .flatten()
                .collect();
            for n in names {
                for ip in &ips {
                    out.push(Record::Addr {
                        net: idx,
                        key: n.clone().into_boxed_str(),
                        ip: *ip,
                        ttl,
                    });
                }
            }
            if let Some(target) = target {
                for ip in &ips {
                    out.push(Record::Ptr {
                        net: idx,
                        ip: *ip,
                        target: target.clone(),
                        ttl,
                    });
                }
            }
        }
        out
    }

    /// Podman: a sandbox's names on a network are that endpoint's aliases (the container
    /// name is one of them); the PTR target of each address lists them all, one wire-format
    /// name after another (see `PtrEntry::targets`).
    fn podman_records(&self, sb: &SbRec) -> Vec<Record> {
        let mut out = Vec::new();
        for ep in &sb.endpoints {
            let Some(net) = self.resolve_net(&ep.network) else {
                continue;
            };
            if !net.dns {
                continue;
            }
            let idx = self.net_idx[&net.id];
            let ttl = net.ttl.unwrap_or(DEFAULT_TTL);
            let mut names: Vec<String> = Vec::with_capacity(ep.aliases.len());
            for a in ep.aliases.iter() {
                let a = a.to_ascii_lowercase();
                if !names.contains(&a) {
                    names.push(a);
                }
            }
            let ips: SmallVec<[IpAddr; 2]> = [ep.ipv4.map(IpAddr::V4), ep.ipv6.map(IpAddr::V6)]
                .into_iter()
                .flatten()
                .collect();
            for n in &names {
                for ip in &ips {
                    out.push(Record::Addr {
                        net: idx,
                        key: n.clone().into_boxed_str(),
                        ip: *ip,
                        ttl,
                    });
                }
            }
            let targets: Vec<u8> = names
                .iter()
                .filter_map(|n| encode_name(n))
                .flatten()
                .collect();
            if !targets.is_empty() {
                let targets: Arc<[u8]> = targets.into();
                for ip in &ips {
                    out.push(Record::Ptr {
                        net: idx,
                        ip: *ip,
                        target: targets.clone(),
                        ttl,
                    });
                }
            }
        }
        out
    }

    fn service_records(&self, s: &Service) -> Vec<Record> {
        let mut out = Vec::new();
        for sn in &s.networks {
            let Some(net) = self.resolve_net(&sn.network) else {
                continue;
            };
            let (true, EndpointMode::Vip, Some(vip)) = (net.dns, s.mode, sn.vip) else {
                continue;
            };
            let idx = self.net_idx[&net.id];
            let ttl = net.vip_ttl.unwrap_or(DEFAULT_VIP_TTL);
            for n in std::iter::once(&s.name).chain(sn.aliases.iter()) {
                out.push(Record::Addr {
                    net: idx,
                    key: n.to_ascii_lowercase().into_boxed_str(),
                    ip: IpAddr::V4(vip),
                    ttl,
                });
            }
            if let Some(target) = encode_name(&format!("{}.{}", s.name, net.name)) {
                out.push(Record::Ptr {
                    net: idx,
                    ip: IpAddr::V4(vip),
                    target: target.into(),
                    ttl,
                });
            }
        }
        out
    }

    /// What a sandbox sees: its DNS networks in attachment order, and where its unknown
    /// names go. `inflight` is carried over from its previous view.
    pub(super) fn sandbox_view(&self, sb: &SbRec, inflight: Arc<AtomicU32>) -> View {
        let podman = matches!(self.policy, model::Policy::Podman { .. });
        let mut nets: SmallVec<[super::NetIdx; 4]> = SmallVec::new();
        let mut any_external = false;
        let mut net_upstreams: Vec<model::Upstream> = Vec::new();
        for ep in &sb.endpoints {
            let Some(n) = self.resolve_net(&ep.network) else {
                continue;
            };
            let idx = self.net_idx[&n.id];
            if n.dns && !nets.contains(&idx) {
                nets.push(idx);
            }
            if !n.internal {
                any_external = true;
                // Docker: the first network with servers; Podman: all of them, in order.
                if podman || net_upstreams.is_empty() {
                    for u in &n.upstreams {
                        if !net_upstreams.contains(u) {
                            net_upstreams.push(*u);
                        }
                    }
                }
            }
        }
        let set = |u: &[model::Upstream]| {
            Forwarding::Upstreams(Arc::new(UpstreamSet::new(u.iter().map(|u| u.0).collect())))
        };
        let internal_only = !sb.endpoints.is_empty() && !any_external;
        // Podman never forwards for a sandbox only on internal networks, whatever its own
        // servers; Docker lets the sandbox's own servers win.
        let forwarding = if internal_only && (podman || sb.upstreams().is_empty()) {
            Forwarding::Never
        } else if !sb.upstreams().is_empty() {
            set(sb.upstreams())
        } else if !net_upstreams.is_empty() {
            set(&net_upstreams)
        } else {
            Forwarding::Default
        };
        // Links answer only on a DNS network the view is on.
        let links = sb
            .links()
            .iter()
            .filter_map(|l| {
                let n = self.resolve_net(&l.network)?;
                let idx = self.net_idx[&n.id];
                if !nets.contains(&idx) {
                    return None;
                }
                let ips = [l.ipv4.map(IpAddr::V4), l.ipv6.map(IpAddr::V6)]
                    .into_iter()
                    .flatten()
                    .collect();
                LinkEntry::new(idx, &l.name, n.ttl.unwrap_or(DEFAULT_TTL), ips)
            })
            .collect();
        View {
            sandbox: sb.name.clone(),
            nets,
            forwarding,
            inflight,
            links,
        }
    }
}
