//! The host zone's content: the same model objects the name tables get (every `Change` the
//! reconciler applies to them is fed here too), and the records each of them contributes under
//! the zone's origin and in the reverse zones of the served networks' subnets. The feed notes
//! which objects changed, so `zones.rs` touches only their records. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, PTR, SRV};
use hickory_proto::rr::{Name, RData};
use ipnet::IpNet;
use sdnet_resolver::Change;
use sdnet_resolver::model::{
    DEFAULT_TTL, DEFAULT_VIP_TTL, EndpointMode, Network, Sandbox, Service,
};

/// Negative answers are cached this long (the SOA's minimum and its own TTL): short, because
/// a sandbox's name must answer as soon as `sdctl run` returns.
pub const NEGATIVE_TTL: u32 = 5;
/// TTL of the SOA and NS records at the apex.
pub const APEX_TTL: u32 = 3600;

/// What the host zone needs of a network beyond the name tables' model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetExtra {
    /// Served from the host (not internal, not created with `--host-dns=false`).
    pub served: bool,
    pub subnets: Vec<IpNet>,
}

/// Who contributes records. Sandboxes sort before services: the first claim on an address
/// (its PTR) goes to the first holder in this order, as in the name tables.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Holder {
    /// The zone's own NS and name server address.
    Apex,
    Sandbox(String),
    Service(String),
}

/// One record a holder contributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub name: Name,
    pub ttl: u32,
    pub data: RData,
}

/// What changed since the zones last followed the feed.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Dirty {
    #[default]
    Nothing,
    /// These holders' records may have changed.
    Holders(BTreeSet<Holder>),
    /// A network or service changed (names, served subnets, tasks' records): everything.
    All,
}

/// The model objects the name tables hold, mirrored from their change batches.
#[derive(Default)]
pub struct Feed {
    nets: BTreeMap<String, Network>,
    extra: HashMap<String, NetExtra>,
    sandboxes: BTreeMap<String, Sandbox>,
    services: BTreeMap<String, Service>,
    dirty: Dirty,
}

impl Feed {
    /// Applies one change of a batch the name tables got.
    pub fn apply(&mut self, c: &Change) {
        match c {
            Change::UpsertNetwork(n) => {
                self.nets.insert(n.id.clone(), n.clone());
                self.dirty = Dirty::All;
            }
            Change::RemoveNetwork(id) => {
                self.nets.remove(id);
                self.extra.remove(id);
                self.dirty = Dirty::All;
            }
            Change::UpsertSandbox(s) => {
                self.sandboxes.insert(s.id.clone(), s.clone());
                self.touch(Holder::Sandbox(s.id.clone()));
            }
            Change::RemoveSandbox(id) => {
                self.sandboxes.remove(id);
                self.touch(Holder::Sandbox(id.clone()));
            }
            Change::UpsertService(s) => {
                self.services.insert(s.id.clone(), s.clone());
                self.dirty = Dirty::All;
            }
            Change::RemoveService(id) => {
                self.services.remove(id);
                self.dirty = Dirty::All;
            }
        }
    }

    fn touch(&mut self, h: Holder) {
        match &mut self.dirty {
            Dirty::All => {}
            Dirty::Holders(set) => {
                set.insert(h);
            }
            d @ Dirty::Nothing => *d = Dirty::Holders(BTreeSet::from([h])),
        }
    }

    /// What changed since the last call.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Sets a network's host-zone facts; true if they changed.
    pub fn set_extra(&mut self, id: &str, e: NetExtra) -> bool {
        if self.extra.get(id) == Some(&e) {
            return false;
        }
        self.extra.insert(id.to_string(), e);
        self.dirty = Dirty::All;
        true
    }

    /// Every holder, in claim order.
    pub fn holders(&self) -> impl Iterator<Item = Holder> + '_ {
        self.sandboxes
            .keys()
            .map(|id| Holder::Sandbox(id.clone()))
            .chain(self.services.keys().map(|id| Holder::Service(id.clone())))
    }

    /// A holder's records now (none once it is gone).
    pub fn records(&self, h: &Holder, origin: &Name) -> Vec<Rec> {
        let mut out = Vec::new();
        match h {
            Holder::Apex => {}
            Holder::Sandbox(id) => {
                if let Some(sb) = self.sandboxes.get(id) {
                    sandbox_records(self, sb, origin, &mut out);
                }
            }
            Holder::Service(id) => {
                if let Some(s) = self.services.get(id) {
                    service_records(self, s, origin, &mut out);
                }
            }
        }
        out
    }

    /// The zones' origins: the forward zone and one per served subnet, sorted.
    pub fn origins(&self, origin: &Name) -> Vec<Name> {
        let mut origins: Vec<Name> = vec![origin.clone()];
        for n in self.nets.values() {
            if let Some(e) = self.extra.get(&n.id).filter(|e| e.served) {
                origins.extend(e.subnets.iter().filter_map(reverse_origin));
            }
        }
        origins.sort();
        origins.dedup();
        origins
    }

    fn net(&self, key: &str) -> Option<&Network> {
        self.nets
            .get(key)
            .or_else(|| self.nets.values().find(|n| n.name == key))
    }

    fn service(&self, key: &str) -> Option<&Service> {
        self.services
            .get(key)
            .or_else(|| self.services.values().find(|s| s.name == key))
    }

    /// A served network by ID or name, with its name as a DNS label.
    fn served(&self, key: &str) -> Option<&Network> {
        let n = self.net(key)?;
        self.extra.get(&n.id).is_some_and(|e| e.served).then_some(n)
    }
}

/// Where the zone's name server is: `ns.<origin>`, with its address when it has one.
#[derive(Clone, Debug)]
pub struct Apex {
    pub origin: Name,
    pub ns_addr: Option<IpAddr>,
}

/// The reverse zone of a subnet, cut at the label boundary at or above its prefix.
pub fn reverse_origin(net: &IpNet) -> Option<Name> {
    let mut labels: Vec<String> = match net {
        IpNet::V4(n) => {
            let keep = (n.prefix_len() / 8).max(1) as usize;
            n.network().octets()[..keep]
                .iter()
                .map(u8::to_string)
                .collect()
        }
        IpNet::V6(n) => {
            let keep = (n.prefix_len() / 4).max(1) as usize;
            n.network()
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 0xf])
                .take(keep)
                .map(|x| format!("{x:x}"))
                .collect()
        }
    };
    labels.reverse();
    let suffix = match net {
        IpNet::V4(_) => "in-addr.arpa.",
        IpNet::V6(_) => "ip6.arpa.",
    };
    Name::from_ascii(format!("{}.{suffix}", labels.join("."))).ok()
}

fn push(out: &mut Vec<Rec>, name: &Name, ttl: u32, data: RData) {
    out.push(Rec {
        name: name.clone(),
        ttl,
        data,
    });
}

/// `label.net.origin`, lowercased; None if it is no valid name.
fn fqdn(label: &str, net: &str, origin: &Name) -> Option<Name> {
    let n = Name::from_ascii(format!("{label}.{net}").to_ascii_lowercase()).ok()?;
    n.append_domain(origin).ok()
}

pub fn addr(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(a) => RData::A(A(a)),
        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
    }
}

fn sandbox_records(feed: &Feed, sb: &Sandbox, origin: &Name, out: &mut Vec<Rec>) {
    if sb.task.as_ref().is_some_and(|t| !t.healthy) {
        return;
    }
    let svc = sb.task.as_ref().and_then(|t| feed.service(&t.service));
    for ep in &sb.endpoints {
        let Some(net) = feed.served(&ep.network) else {
            continue;
        };
        let ttl = net.ttl.unwrap_or(DEFAULT_TTL);
        let ips: Vec<IpAddr> = [ep.ipv4.map(IpAddr::V4), ep.ipv6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
            .collect();
        let mut labels: Vec<String> = vec![sb.name.clone(), sb.short_id().to_string()];
        labels.extend(sb.hostname.iter().cloned());
        labels.extend(ep.aliases.iter().cloned());
        let Some(target) = fqdn(&sb.name, &net.name, origin) else {
            continue;
        };
        if let Some(svc) = svc
            && let Some(sn) = svc
                .networks
                .iter()
                .find(|sn| feed.net(&sn.network).is_some_and(|n| n.id == net.id))
        {
            for n in std::iter::once(&svc.name).chain(sn.aliases.iter()) {
                labels.push(format!("tasks.{n}"));
                if svc.mode == EndpointMode::Dnsrr {
                    labels.push(n.clone());
                }
                for p in &svc.ports {
                    let label = format!("_{}._{}.{n}", p.name, p.protocol);
                    if let Some(name) = fqdn(&label, &net.name, origin) {
                        push(
                            out,
                            &name,
                            ttl,
                            RData::SRV(SRV::new(0, 1, p.port, target.clone())),
                        );
                    }
                }
            }
        }
        for l in &labels {
            let Some(name) = fqdn(l, &net.name, origin) else {
                continue;
            };
            for ip in &ips {
                push(out, &name, ttl, addr(*ip));
            }
        }
        for ip in &ips {
            push(out, &Name::from(*ip), ttl, RData::PTR(PTR(target.clone())));
        }
    }
}

fn service_records(feed: &Feed, s: &Service, origin: &Name, out: &mut Vec<Rec>) {
    if s.mode != EndpointMode::Vip {
        return;
    }
    for sn in &s.networks {
        let (Some(net), Some(vip)) = (feed.served(&sn.network), sn.vip) else {
            continue;
        };
        let ttl = net.vip_ttl.unwrap_or(DEFAULT_VIP_TTL);
        for n in std::iter::once(&s.name).chain(sn.aliases.iter()) {
            if let Some(name) = fqdn(n, &net.name, origin) {
                push(out, &name, ttl, RData::A(A(vip)));
            }
        }
        if let Some(target) = fqdn(&s.name, &net.name, origin) {
            push(
                out,
                &Name::from(IpAddr::V4(vip)),
                ttl,
                RData::PTR(PTR(target)),
            );
        }
    }
}

#[cfg(test)]
mod tests;
