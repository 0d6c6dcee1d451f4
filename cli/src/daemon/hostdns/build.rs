//! The host zone's content: the same model objects the name tables get (every `Change` the
//! reconciler applies to them is fed here too), turned into record sets under the zone's
//! origin and the reverse zones of the served networks' subnets. Pure: no I/O.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, NS, PTR, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, RecordSet, RecordType};
use ipnet::IpNet;
use sdnet_resolver::Change;
use sdnet_resolver::model::{
    DEFAULT_TTL, DEFAULT_VIP_TTL, EndpointMode, Network, Sandbox, Service,
};

/// Negative answers are cached this long (the SOA's minimum and its own TTL): short, because
/// a sandbox's name must answer as soon as `sdctl run` returns.
pub const NEGATIVE_TTL: u32 = 5;
/// TTL of the SOA and NS records at the apex.
const APEX_TTL: u32 = 3600;

/// What the host zone needs of a network beyond the name tables' model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetExtra {
    /// Served from the host (not internal, not created with `--host-dns=false`).
    pub served: bool,
    pub subnets: Vec<IpNet>,
}

/// The model objects the name tables hold, mirrored from their change batches.
#[derive(Default)]
pub struct Feed {
    nets: BTreeMap<String, Network>,
    extra: HashMap<String, NetExtra>,
    sandboxes: BTreeMap<String, Sandbox>,
    services: BTreeMap<String, Service>,
}

impl Feed {
    /// Applies one change of a batch the name tables got.
    pub fn apply(&mut self, c: &Change) {
        match c {
            Change::UpsertNetwork(n) => {
                self.nets.insert(n.id.clone(), n.clone());
            }
            Change::RemoveNetwork(id) => {
                self.nets.remove(id);
                self.extra.remove(id);
            }
            Change::UpsertSandbox(s) => {
                self.sandboxes.insert(s.id.clone(), s.clone());
            }
            Change::RemoveSandbox(id) => {
                self.sandboxes.remove(id);
            }
            Change::UpsertService(s) => {
                self.services.insert(s.id.clone(), s.clone());
            }
            Change::RemoveService(id) => {
                self.services.remove(id);
            }
        }
    }

    /// Sets a network's host-zone facts; true if they changed.
    pub fn set_extra(&mut self, id: &str, e: NetExtra) -> bool {
        if self.extra.get(id) == Some(&e) {
            return false;
        }
        self.extra.insert(id.to_string(), e);
        true
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

/// One zone's data, ready for lookups and transfers.
pub struct ZoneData {
    pub origin: LowerName,
    pub soa: Arc<RecordSet>,
    pub sets: HashMap<(LowerName, RecordType), Arc<RecordSet>>,
    /// Every name that exists in the zone (owners and the names between them and the apex),
    /// with the types it owns.
    pub names: HashMap<LowerName, Vec<RecordType>>,
    /// Record sets in a stable order (apex first), for AXFR.
    pub order: Vec<Arc<RecordSet>>,
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

#[derive(Default)]
struct Sets(BTreeMap<(Name, RecordType), RecordSet>);

impl Sets {
    fn add(&mut self, name: &Name, ttl: u32, data: RData) {
        let rtype = data.record_type();
        let set = self
            .0
            .entry((name.clone(), rtype))
            .or_insert_with(|| RecordSet::with_ttl(name.clone(), rtype, ttl));
        if ttl < set.ttl() {
            set.set_ttl(ttl);
        }
        set.add_rdata(data);
    }

    /// A PTR: the first claim on an address wins (as in the name tables).
    fn ptr(&mut self, ip: IpAddr, ttl: u32, target: &Name) {
        let name = Name::from(ip);
        if !self.0.contains_key(&(name.clone(), RecordType::PTR)) {
            self.add(&name, ttl, RData::PTR(PTR(target.clone())));
        }
    }
}

/// `label.net.origin`, lowercased; None if it is no valid name.
fn fqdn(label: &str, net: &str, origin: &Name) -> Option<Name> {
    let n = Name::from_ascii(format!("{label}.{net}").to_ascii_lowercase()).ok()?;
    n.append_domain(origin).ok()
}

fn addr(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(a) => RData::A(A(a)),
        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
    }
}

/// The host zone and its reverse zones at `serial`.
pub fn build(feed: &Feed, apex: &Apex, serial: u32) -> Vec<ZoneData> {
    let origin = &apex.origin;
    let mut sets = Sets::default();
    for sb in feed.sandboxes.values() {
        sandbox_records(feed, sb, origin, &mut sets);
    }
    for s in feed.services.values() {
        service_records(feed, s, origin, &mut sets);
    }

    // The zones: the forward one, then one per served subnet (most specific wins).
    let mut origins: Vec<Name> = vec![origin.clone()];
    for n in feed.nets.values() {
        if let Some(e) = feed.extra.get(&n.id).filter(|e| e.served) {
            origins.extend(e.subnets.iter().filter_map(reverse_origin));
        }
    }
    origins.sort();
    origins.dedup();
    let lowers: Vec<LowerName> = origins.iter().map(LowerName::new).collect();
    let mut zones: Vec<(Name, Sets)> = origins
        .iter()
        .map(|o| (o.clone(), Sets::default()))
        .collect();
    for ((name, _), set) in sets.0 {
        let lname = LowerName::new(&name);
        let best = lowers
            .iter()
            .enumerate()
            .filter(|(_, o)| o.zone_of(&lname))
            .max_by_key(|(_, o)| o.num_labels());
        if let Some((i, _)) = best {
            let z = &mut zones[i].1;
            for r in set.records_without_rrsigs() {
                z.add(&name, set.ttl(), r.data.clone());
            }
        }
    }
    zones
        .into_iter()
        .map(|(o, s)| finish(o, s, apex, serial))
        .collect()
}

fn sandbox_records(feed: &Feed, sb: &Sandbox, origin: &Name, out: &mut Sets) {
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
                        out.add(
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
                out.add(&name, ttl, addr(*ip));
            }
        }
        for ip in &ips {
            out.ptr(*ip, ttl, &target);
        }
    }
}

fn service_records(feed: &Feed, s: &Service, origin: &Name, out: &mut Sets) {
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
                out.add(&name, ttl, RData::A(A(vip)));
            }
        }
        if let Some(target) = fqdn(&s.name, &net.name, origin) {
            out.ptr(IpAddr::V4(vip), ttl, &target);
        }
    }
}

/// Adds the apex (SOA, NS, the name server's address) and indexes a zone.
fn finish(origin: Name, mut sets: Sets, apex: &Apex, serial: u32) -> ZoneData {
    let ns = Name::from_ascii("ns")
        .and_then(|n| n.append_domain(&apex.origin))
        .unwrap_or_else(|_| apex.origin.clone());
    let hostmaster = Name::from_ascii("hostmaster")
        .and_then(|n| n.append_domain(&apex.origin))
        .unwrap_or_else(|_| apex.origin.clone());
    let soa = SOA::new(ns.clone(), hostmaster, serial, 300, 60, 86400, NEGATIVE_TTL);
    let mut soa_set = RecordSet::with_ttl(origin.clone(), RecordType::SOA, NEGATIVE_TTL);
    soa_set.add_rdata(RData::SOA(soa));
    sets.0.insert((origin.clone(), RecordType::SOA), soa_set);
    sets.add(&origin, APEX_TTL, RData::NS(NS(ns.clone())));
    if origin == apex.origin
        && let Some(ip) = apex.ns_addr
    {
        sets.add(&ns, APEX_TTL, addr(ip));
    }

    let lorigin = LowerName::new(&origin);
    let mut data = ZoneData {
        origin: lorigin.clone(),
        soa: Arc::new(RecordSet::with_ttl(origin.clone(), RecordType::SOA, 0)),
        sets: HashMap::with_capacity(sets.0.len()),
        names: HashMap::with_capacity(sets.0.len()),
        order: Vec::with_capacity(sets.0.len()),
    };
    // The apex first, then the rest in name order.
    let mut all: Vec<((Name, RecordType), RecordSet)> = sets.0.into_iter().collect();
    all.sort_by_key(|((n, _), _)| *n != origin);
    for ((name, rtype), set) in all {
        let set = Arc::new(set);
        let lname = LowerName::new(&name);
        if rtype == RecordType::SOA {
            data.soa = set.clone();
        }
        data.names.entry(lname.clone()).or_default().push(rtype);
        // The names between an owner and the apex exist too (empty non-terminals).
        let mut up = lname.base_name();
        while up.num_labels() > lorigin.num_labels() && !data.names.contains_key(&up) {
            data.names.insert(up.clone(), Vec::new());
            up = up.base_name();
        }
        data.sets.insert((lname, rtype), set.clone());
        data.order.push(set);
    }
    data
}

#[cfg(test)]
mod tests;
