//! The host zones kept between changes: every holder's records and, per record set, who
//! claims it, so a change re-derives only the changed holders' records and rewrites only the
//! record sets they touch. The zones' maps are persistent (`imbl`): a published zone is a
//! cheap copy that shares everything but what the next change rewrites. A change of a network
//! or service (rare) rebuilds everything, through the same path.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use hickory_proto::rr::rdata::{NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, RecordSet, RecordType};

use super::build::{APEX_TTL, Apex, Dirty, Feed, Holder, NEGATIVE_TTL, Rec, addr};

/// A name that exists in a zone: the types it owns, and how many record sets it and the
/// names below it own (a name with none of its own but some below is an empty non-terminal).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Node {
    types: Vec<RecordType>,
    below: u32,
}

/// One zone's data, ready for lookups and transfers.
#[derive(Clone)]
pub struct ZoneData {
    pub origin: LowerName,
    pub soa: Arc<RecordSet>,
    pub sets: imbl::HashMap<(LowerName, RecordType), Arc<RecordSet>>,
    names: imbl::HashMap<LowerName, Node>,
}

impl ZoneData {
    fn new(origin: LowerName) -> ZoneData {
        ZoneData {
            soa: Arc::new(RecordSet::with_ttl(Name::from(&origin), RecordType::SOA, 0)),
            origin,
            sets: imbl::HashMap::new(),
            names: imbl::HashMap::new(),
        }
    }

    /// Whether `name` exists (owns records, or names below it do).
    pub fn exists(&self, name: &LowerName) -> bool {
        self.names.contains_key(name)
    }

    /// The types `name` owns, if it exists.
    pub fn types(&self, name: &LowerName) -> Option<&[RecordType]> {
        self.names.get(name).map(|n| n.types.as_slice())
    }

    /// Every record set in a stable order (the apex first, then by name and type): AXFR.
    pub fn ordered(&self) -> Vec<Arc<RecordSet>> {
        let mut all: Vec<(&(LowerName, RecordType), &Arc<RecordSet>)> = self.sets.iter().collect();
        all.sort_unstable_by(|(a, _), (b, _)| {
            (a.0 != self.origin, &a.0, a.1).cmp(&(b.0 != self.origin, &b.0, b.1))
        });
        all.into_iter().map(|(_, s)| s.clone()).collect()
    }

    /// Puts (or, with None, removes) one record set, keeping the names' index.
    fn put(&mut self, name: LowerName, rtype: RecordType, set: Option<RecordSet>) {
        let key = (name, rtype);
        let delta: i64 = match set {
            Some(set) => {
                if self.sets.insert(key.clone(), Arc::new(set)).is_some() {
                    return;
                }
                1
            }
            None => {
                if self.sets.remove(&key).is_none() {
                    return;
                }
                -1
            }
        };
        let (owner, rtype) = key;
        let mut n = owner.clone();
        loop {
            let mut node = self.names.get(&n).cloned().unwrap_or_default();
            node.below = (i64::from(node.below) + delta).max(0) as u32;
            if n == owner {
                if delta > 0 {
                    node.types.push(rtype);
                } else {
                    node.types.retain(|t| *t != rtype);
                }
            }
            if node.below == 0 {
                self.names.remove(&n);
            } else {
                self.names.insert(n.clone(), node);
            }
            if n.num_labels() <= self.origin.num_labels() {
                break;
            }
            n = n.base_name();
        }
    }
}

/// Each holder's contribution to one record set, in claim order.
type Claims = BTreeMap<Holder, Vec<(u32, RData)>>;

/// The zones and what they are made of.
pub struct Zones {
    apex: Apex,
    zones: Vec<ZoneData>,
    held: HashMap<Holder, Vec<Rec>>,
    claims: HashMap<(Name, RecordType), Claims>,
}

impl Zones {
    pub fn new(apex: Apex) -> Zones {
        let mut z = Zones {
            apex,
            zones: Vec::new(),
            held: HashMap::new(),
            claims: HashMap::new(),
        };
        z.rebuild(&Feed::default());
        z
    }

    /// Follows the feed: the changed holders only, or everything after a network or service
    /// change.
    pub fn update(&mut self, feed: &mut Feed) {
        match feed.take_dirty() {
            Dirty::Nothing => {}
            Dirty::All => self.rebuild(feed),
            Dirty::Holders(hs) => {
                for h in hs {
                    let recs = feed.records(&h, &self.apex.origin);
                    self.set_holder(h, recs);
                }
            }
        }
    }

    /// The zones at `serial` (copies that share their maps with this writer).
    pub fn publish(&self, serial: u32) -> Vec<ZoneData> {
        self.zones
            .iter()
            .map(|z| {
                let mut z = z.clone();
                let soa = Arc::new(soa_set(&Name::from(&z.origin), &self.apex, serial));
                z.sets
                    .insert((z.origin.clone(), RecordType::SOA), soa.clone());
                z.soa = soa;
                z
            })
            .collect()
    }

    fn rebuild(&mut self, feed: &Feed) {
        self.held.clear();
        self.claims.clear();
        self.zones = feed
            .origins(&self.apex.origin)
            .iter()
            .map(|o| ZoneData::new(LowerName::new(o)))
            .collect();
        // The apex of every zone: SOA (its serial set at publish) and NS; the name server's
        // address in the forward zone.
        let ns = self.ns_name();
        let mut apex = Vec::new();
        for z in &mut self.zones {
            let o = Name::from(&z.origin);
            z.put(
                z.origin.clone(),
                RecordType::SOA,
                Some(soa_set(&o, &self.apex, 0)),
            );
            apex.push(Rec {
                name: o,
                ttl: APEX_TTL,
                data: RData::NS(NS(ns.clone())),
            });
        }
        if let Some(ip) = self.apex.ns_addr {
            apex.push(Rec {
                name: ns,
                ttl: APEX_TTL,
                data: addr(ip),
            });
        }
        self.set_holder(Holder::Apex, apex);
        for h in feed.holders() {
            let recs = feed.records(&h, &self.apex.origin);
            self.set_holder(h, recs);
        }
    }

    fn ns_name(&self) -> Name {
        Name::from_ascii("ns")
            .and_then(|n| n.append_domain(&self.apex.origin))
            .unwrap_or_else(|_| self.apex.origin.clone())
    }

    /// Replaces a holder's records and rewrites the record sets that changed.
    fn set_holder(&mut self, h: Holder, recs: Vec<Rec>) {
        let old = if recs.is_empty() {
            self.held.remove(&h).unwrap_or_default()
        } else {
            self.held
                .insert(h.clone(), recs.clone())
                .unwrap_or_default()
        };
        if old == recs {
            return;
        }
        let mut touched: BTreeSet<(Name, RecordType)> = BTreeSet::new();
        for r in &old {
            let key = (r.name.clone(), r.data.record_type());
            if let Some(c) = self.claims.get_mut(&key) {
                c.remove(&h);
            }
            touched.insert(key);
        }
        for r in recs {
            let key = (r.name, r.data.record_type());
            self.claims
                .entry(key.clone())
                .or_default()
                .entry(h.clone())
                .or_default()
                .push((r.ttl, r.data));
            touched.insert(key);
        }
        for key in touched {
            let set = self.claims.get(&key).and_then(|c| assemble(&key, c));
            if set.is_none() {
                self.claims.remove(&key);
            }
            let lname = LowerName::new(&key.0);
            // The most specific zone holds the name; none: it is kept, but not served.
            if let Some(z) = self
                .zones
                .iter_mut()
                .filter(|z| z.origin.zone_of(&lname))
                .max_by_key(|z| z.origin.num_labels())
            {
                z.put(lname, key.1, set);
            }
        }
    }
}

/// A record set from its claims: a PTR is the first claim's (as in the name tables), any
/// other type the union of all, at the lowest TTL.
fn assemble((name, rtype): &(Name, RecordType), claims: &Claims) -> Option<RecordSet> {
    let mut all = claims.values().flatten();
    if *rtype == RecordType::PTR {
        let (ttl, data) = all.next()?;
        let mut set = RecordSet::with_ttl(name.clone(), *rtype, *ttl);
        set.add_rdata(data.clone());
        return Some(set);
    }
    let mut set: Option<RecordSet> = None;
    for (ttl, data) in all {
        let s = set.get_or_insert_with(|| RecordSet::with_ttl(name.clone(), *rtype, *ttl));
        if *ttl < s.ttl() {
            s.set_ttl(*ttl);
        }
        s.add_rdata(data.clone());
    }
    set
}

fn soa_set(origin: &Name, apex: &Apex, serial: u32) -> RecordSet {
    let at = |l: &str| {
        Name::from_ascii(l)
            .and_then(|n| n.append_domain(&apex.origin))
            .unwrap_or_else(|_| apex.origin.clone())
    };
    let soa = SOA::new(
        at("ns"),
        at("hostmaster"),
        serial,
        300,
        60,
        86400,
        NEGATIVE_TTL,
    );
    let mut set = RecordSet::with_ttl(origin.clone(), RecordType::SOA, NEGATIVE_TTL);
    set.add_rdata(RData::SOA(soa));
    set
}

/// The zones at `serial` built from scratch (tests compare the incremental path with it).
#[cfg(test)]
pub fn build(feed: &Feed, apex: &Apex, serial: u32) -> Vec<ZoneData> {
    let mut z = Zones::new(apex.clone());
    z.rebuild(feed);
    z.publish(serial)
}
