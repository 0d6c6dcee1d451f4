//! What readers see: per-network maps of names, SRV sets and PTR entries, and the per-sandbox
//! views. Values are small because the maps store them inline in their slots (dense slots mean
//! fewer cache misses per lookup in big tables); who contributes to a value is recorded in
//! padding (`holder`) or, for the rare shared entry, by the writer (`holders.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use smallvec::SmallVec;

use super::{HolderId, Map, NetIdx};
use crate::model::Network;
use crate::nameindex::{FlatIndex, NameIndex, NameKey, SmallBytes};

/// Addresses answering one name on one network: what readers see. Kept small (24 bytes, the
/// common single IPv4 address inline) because the maps store values inline in their nodes:
/// small entries mean dense nodes and fewer cache misses per lookup in big tables.
#[derive(Clone, Debug)]
pub struct AddrSet {
    addrs: Addrs,
    pub ttl: u32,
    /// The only holder of the name, or `SHARED` when several hold it (the writer then keeps
    /// their contributions aside). Sits in what would be padding.
    pub(super) holder: HolderId,
}

const _: () = assert!(size_of::<AddrSet>() == 24);

/// `holder` of an entry that several holders contribute to.
pub(super) const SHARED: HolderId = HolderId::MAX;

#[derive(Clone, Debug)]
enum Addrs {
    One4(Ipv4Addr),
    Lists(Arc<AddrLists>),
}

#[derive(Debug, Default)]
struct AddrLists {
    v4: SmallVec<[Ipv4Addr; 4]>,
    v6: SmallVec<[Ipv6Addr; 2]>,
}

/// One holder's contribution to a name: its TTL and addresses.
pub(super) type Contribution = (HolderId, u32, SmallVec<[IpAddr; 2]>);

impl AddrSet {
    pub fn v4(&self) -> &[Ipv4Addr] {
        match &self.addrs {
            Addrs::One4(a) => std::slice::from_ref(a),
            Addrs::Lists(l) => &l.v4,
        }
    }
    pub fn v6(&self) -> &[Ipv6Addr] {
        match &self.addrs {
            Addrs::One4(_) => &[],
            Addrs::Lists(l) => &l.v6,
        }
    }

    /// All addresses, IPv4 first.
    pub(super) fn ips(&self) -> SmallVec<[IpAddr; 2]> {
        let v4 = self.v4().iter().map(|a| IpAddr::V4(*a));
        v4.chain(self.v6().iter().map(|a| IpAddr::V6(*a))).collect()
    }

    /// What a name answers given its holders' contributions (addresses deduplicated in holder
    /// order, the smallest TTL), marked as held by `holder`; None when nobody holds it.
    pub(super) fn union(holders: &[Contribution], holder: HolderId) -> Option<AddrSet> {
        let mut lists = AddrLists::default();
        let mut ttl = u32::MAX;
        let total: usize = holders.iter().map(|(_, _, ips)| ips.len()).sum();
        // A linear scan for the usual handful; a set for `tasks.web` with many tasks.
        let mut seen = (total > 16).then(std::collections::HashSet::new);
        for (_, t, ips) in holders {
            ttl = ttl.min(*t);
            for ip in ips {
                let new = match &mut seen {
                    Some(seen) => seen.insert(*ip),
                    None => match ip {
                        IpAddr::V4(a) => !lists.v4.contains(a),
                        IpAddr::V6(a) => !lists.v6.contains(a),
                    },
                };
                if new {
                    match ip {
                        IpAddr::V4(a) => lists.v4.push(*a),
                        IpAddr::V6(a) => lists.v6.push(*a),
                    }
                }
            }
        }
        let addrs = match (&lists.v4[..], &lists.v6[..]) {
            ([], []) => return None,
            ([one], []) => Addrs::One4(*one),
            _ => Addrs::Lists(Arc::new(lists)),
        };
        Some(AddrSet { addrs, ttl, holder })
    }
}

/// One SRV target: a task and a declared port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvTarget {
    pub port: u16,
    /// Wire-format target name (`task.network.`).
    pub target: Arc<[u8]>,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    pub ttl: u32,
}

#[derive(Clone, Debug)]
pub struct SrvSet {
    pub(super) holders: SmallVec<[(HolderId, SmallVec<[SrvTarget; 1]>); 2]>,
    pub targets: Arc<[SrvTarget]>,
    pub ttl: u32,
}

impl SrvSet {
    pub(super) fn empty() -> Self {
        SrvSet {
            holders: SmallVec::new(),
            targets: Arc::from([]),
            ttl: 0,
        }
    }

    pub(super) fn recompute(&mut self) {
        let mut all: Vec<SrvTarget> = Vec::new();
        for (_, ts) in &self.holders {
            for t in ts {
                if !all.contains(t) {
                    all.push(t.clone());
                }
            }
        }
        self.ttl = all.iter().map(|t| t.ttl).min().unwrap_or(0);
        self.targets = all.into();
    }
}

/// The name an address points back to, and its TTL: the first claim's (an address claimed
/// twice is an address conflict; the first one stays until it goes away).
#[derive(Clone, Debug)]
pub struct PtrEntry {
    /// Inline when short, so answering copies from the slot the lookup just read.
    target: SmallBytes,
    ttl: u32,
    /// The only claimant, or `SHARED` (in what would be padding).
    pub(super) holder: HolderId,
}

const _: () = assert!(size_of::<PtrEntry>() == 32);

impl PtrEntry {
    pub(super) fn new(target: &Arc<[u8]>, ttl: u32, holder: HolderId) -> Self {
        PtrEntry {
            target: SmallBytes::from_shared(target),
            ttl,
            holder,
        }
    }
    /// The target (wire format) and TTL.
    pub fn target(&self) -> (&[u8], u32) {
        (self.target.as_bytes(), self.ttl)
    }
    /// Under `Policy::Podman` the target is several wire-format names one after another:
    /// each of them (a malformed tail ends the list).
    pub fn targets(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = self.target.as_bytes();
        std::iter::from_fn(move || {
            let mut i = 0;
            loop {
                let len = *rest.get(i)? as usize;
                i += 1 + len;
                if len == 0 {
                    break;
                }
            }
            let (name, tail) = rest.split_at_checked(i)?;
            rest = tail;
            Some(name)
        })
    }
    /// The target as a shared slice (copied when it was inline).
    pub(super) fn shared_target(&self) -> Arc<[u8]> {
        match &self.target {
            SmallBytes::Shared(b) => b.clone(),
            SmallBytes::Inline { .. } => self.target.as_bytes().into(),
        }
    }
    pub(super) fn ttl(&self) -> u32 {
        self.ttl
    }
}

/// Names of one network, split by whether they contain a dot. Most names (sandbox names, IDs,
/// hostnames) have none and live in the big `NameIndex`; a dotted query (`c1.test`) is tried
/// whole before it is split (`c1` on network `test`), and routing by the dot sends that first,
/// usually failing, lookup to the small dotted map (`tasks.web`, dotted aliases).
#[derive(Clone)]
pub(super) struct NameMap<V: Clone> {
    plain: NameIndex<V>,
    dotted: Map<NameKey, V>,
}

impl<V: Clone> Default for NameMap<V> {
    fn default() -> Self {
        NameMap {
            plain: NameIndex::default(),
            dotted: Map::default(),
        }
    }
}

fn dotted(key: &str) -> bool {
    key.as_bytes().contains(&b'.')
}

impl<V: Clone> NameMap<V> {
    #[inline]
    pub(super) fn get(&self, key: &str) -> Option<&V> {
        if dotted(key) {
            self.dotted.get(key)
        } else {
            self.plain.get(key)
        }
    }
    pub(super) fn insert(&mut self, key: &str, v: V) {
        if dotted(key) {
            self.dotted.insert(NameKey::new(key), v);
        } else {
            self.plain.insert(NameKey::new(key), v);
        }
    }
    pub(super) fn remove(&mut self, key: &str) {
        if dotted(key) {
            self.dotted.remove(key);
        } else {
            self.plain.remove(NameKey::new(key));
        }
    }
    fn len(&self) -> usize {
        self.plain.len() + self.dotted.len()
    }
    #[cfg(test)]
    pub(super) fn entries(&self) -> Vec<(String, V)> {
        let plain = self.plain.entries().into_iter();
        let plain = plain.map(|(k, v)| (k.as_str().to_string(), v));
        let dotted = self
            .dotted
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.clone()));
        plain.chain(dotted).collect()
    }
}

/// Everything one network answers.
#[derive(Clone)]
pub struct NetTable {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub internal: bool,
    pub(super) addrs: NameMap<AddrSet>,
    pub(super) srv: Map<Box<str>, SrvSet>,
    pub(super) ptr: FlatIndex<IpAddr, PtrEntry>,
}

impl NetTable {
    pub(super) fn new(n: &Network) -> Self {
        NetTable {
            id: n.id.as_str().into(),
            name: n.name.as_str().into(),
            internal: n.internal,
            addrs: NameMap::default(),
            srv: Map::default(),
            ptr: FlatIndex::default(),
        }
    }
    pub fn addrs(&self, key: &str) -> Option<&AddrSet> {
        self.addrs.get(key)
    }
    pub fn srv(&self, key: &str) -> Option<&SrvSet> {
        self.srv.get(key)
    }
    pub fn ptr(&self, ip: &IpAddr) -> Option<&PtrEntry> {
        self.ptr.get(ip)
    }
    pub fn name_count(&self) -> usize {
        self.addrs.len() + self.srv.len()
    }
}

/// An upstream server list; `id` identifies it in the cache.
#[derive(Debug, PartialEq, Eq)]
pub struct UpstreamSet {
    pub id: u64,
    pub servers: Vec<SocketAddr>,
}

impl UpstreamSet {
    pub fn new(servers: Vec<SocketAddr>) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        servers.hash(&mut h);
        UpstreamSet {
            id: h.finish(),
            servers,
        }
    }
}

/// Where a view's unknown names go.
#[derive(Clone, Debug)]
pub enum Forwarding {
    /// Only on internal networks: unknown names are NXDOMAIN, never forwarded.
    Never,
    /// The sandbox's or its network's own servers.
    Upstreams(Arc<UpstreamSet>),
    /// The default servers (the host's resolv.conf, or `--upstream`).
    Default,
}

/// What one sandbox sees: its DNS networks in attachment order and where to forward.
#[derive(Debug)]
pub struct View {
    pub sandbox: Arc<str>,
    pub nets: SmallVec<[NetIdx; 4]>,
    pub forwarding: Forwarding,
    /// Upstream exchanges in flight for this sandbox (bounded; REFUSED past the bound).
    pub inflight: Arc<AtomicU32>,
    /// Its legacy links on user-defined networks (empty for nearly every sandbox).
    pub links: Box<[LinkEntry]>,
}

/// A name only one view answers: a legacy link's alias, with the target's addresses on
/// one of the view's networks.
#[derive(Debug)]
pub struct LinkEntry {
    pub net: NetIdx,
    /// Lower case.
    pub name: Box<str>,
    pub addrs: AddrSet,
}

impl LinkEntry {
    /// None without addresses (nothing to answer).
    pub(super) fn new(
        net: NetIdx,
        name: &str,
        ttl: u32,
        ips: SmallVec<[IpAddr; 2]>,
    ) -> Option<Self> {
        Some(LinkEntry {
            net,
            name: name.to_ascii_lowercase().into_boxed_str(),
            addrs: AddrSet::union(&[(0, ttl, ips)], 0)?,
        })
    }
}

impl View {
    pub fn can_forward(&self) -> bool {
        !matches!(self.forwarding, Forwarding::Never)
    }
    /// The view of a client that is no sandbox (dns serve, unknown source): no local names.
    pub fn anonymous() -> View {
        View {
            sandbox: "".into(),
            nets: SmallVec::new(),
            forwarding: Forwarding::Default,
            inflight: Arc::default(),
            links: Box::default(),
        }
    }
}
