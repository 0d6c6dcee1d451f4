//! Compiled name tables. Readers take a lock-free snapshot (`ArcSwap`) per batch of queries;
//! one writer at a time turns model changes into record changes. The maps are persistent
//! (`imbl`): a new snapshot shares everything but the paths it changed, so an update costs
//! O(size of the change · log n), never O(all names), and readers never wait.
//!
//! Each model object (a sandbox, a service's VIPs) is a *holder* of records. An update removes
//! the records the holder had and adds the ones it has now; a name held by several holders
//! (an alias on many sandboxes, `tasks.web`) answers the union of their addresses.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::{ArcSwap, Guard};
use smallvec::SmallVec;

pub use crate::model::Policy;
use crate::model::{
    self, DEFAULT_TTL, DEFAULT_VIP_TTL, EndpointMode, ModelError, Network, Sandbox, Service, State,
};
use crate::nameindex::{FlatIndex, NameIndex, NameKey, SmallBytes};
use crate::wire::encode_name;

pub(crate) type Map<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

pub type NetIdx = u32;
pub type ViewIdx = u32;
type HolderId = u32;

/// Addresses answering one name on one network: what readers see. Kept small (24 bytes, the
/// common single IPv4 address inline) because the maps store values inline in their nodes:
/// small entries mean dense nodes and fewer cache misses per lookup in big tables. Who holds
/// the name (the union behind it) is the writer's business, see `Holders`.
#[derive(Clone, Debug)]
pub struct AddrSet {
    addrs: Addrs,
    pub ttl: u32,
}

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
    holders: SmallVec<[(HolderId, SmallVec<[SrvTarget; 1]>); 2]>,
    pub targets: Arc<[SrvTarget]>,
    pub ttl: u32,
}

/// The name an address points back to, and its TTL (the first holder's, see `Holders`).
#[derive(Clone, Debug)]
pub struct PtrEntry {
    /// Inline when short, so answering copies from the slot the lookup just read.
    target: SmallBytes,
    ttl: u32,
}

impl PtrEntry {
    fn new(target: &Arc<[u8]>, ttl: u32) -> Self {
        PtrEntry {
            target: SmallBytes::from_shared(target),
            ttl,
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
}

/// Names of one network, split by whether they contain a dot. Most names (sandbox names, IDs,
/// hostnames) have none and live in the big `NameIndex`; a dotted query (`c1.test`) is tried
/// whole before it is split (`c1` on network `test`), and routing by the dot sends that first,
/// usually failing, lookup to the small dotted map (`tasks.web`, dotted aliases).
#[derive(Clone)]
struct NameMap<V: Clone> {
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
    fn get(&self, key: &str) -> Option<&V> {
        if dotted(key) {
            self.dotted.get(key)
        } else {
            self.plain.get(key)
        }
    }
    fn insert(&mut self, key: &str, v: V) {
        if dotted(key) {
            self.dotted.insert(NameKey::new(key), v);
        } else {
            self.plain.insert(NameKey::new(key), v);
        }
    }
    fn remove(&mut self, key: &str) {
        if dotted(key) {
            self.dotted.remove(key);
        } else {
            self.plain.remove(NameKey::new(key));
        }
    }
    fn len(&self) -> usize {
        self.plain.len() + self.dotted.len()
    }
}

/// Everything one network answers.
#[derive(Clone)]
pub struct NetTable {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub internal: bool,
    addrs: NameMap<AddrSet>,
    srv: Map<Box<str>, SrvSet>,
    ptr: FlatIndex<IpAddr, PtrEntry>,
}

impl NetTable {
    fn new(n: &Network) -> Self {
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
        }
    }
}

/// One consistent state of all tables.
#[derive(Clone)]
pub struct Snapshot {
    pub generation: u64,
    pub policy: Policy,
    nets: Map<NetIdx, Arc<NetTable>>,
    /// Per network, the view of a client no sandbox owns that asks on that network's
    /// listener (`ViewSelector::BySourceOrNetwork`): that network's names, default upstreams.
    net_views: Map<NetIdx, Arc<View>>,
    nets_by_name: Map<Box<str>, NetIdx>,
    views: Map<ViewIdx, Arc<View>>,
    by_source: Map<IpAddr, ViewIdx>,
    anonymous: Arc<View>,
}

impl Snapshot {
    fn empty() -> Self {
        Snapshot {
            generation: 0,
            policy: Policy::Docker,
            nets: Map::default(),
            net_views: Map::default(),
            nets_by_name: Map::default(),
            views: Map::default(),
            by_source: Map::default(),
            anonymous: Arc::new(View::anonymous()),
        }
    }
    pub fn net(&self, idx: NetIdx) -> Option<&NetTable> {
        self.nets.get(&idx).map(|t| &**t)
    }
    /// Network by lower-case name.
    pub fn net_by_name(&self, lower: &str) -> Option<NetIdx> {
        self.nets_by_name.get(lower).copied()
    }
    pub fn view(&self, idx: ViewIdx) -> Option<&Arc<View>> {
        self.views.get(&idx)
    }
    /// The sandbox owning a source address, or the anonymous view.
    pub fn view_by_source(&self, ip: IpAddr) -> &Arc<View> {
        self.sandbox_by_source(ip).unwrap_or(&self.anonymous)
    }
    /// The sandbox owning a source address, if any.
    pub fn sandbox_by_source(&self, ip: IpAddr) -> Option<&Arc<View>> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.by_source.get(&ip).and_then(|i| self.views.get(i))
    }
    /// The view of an unknown client asking on a network's listener (lower-case name).
    pub fn network_view(&self, lower: &str) -> Option<&Arc<View>> {
        self.net_by_name(lower).and_then(|i| self.net_views.get(&i))
    }
    pub fn anonymous(&self) -> &Arc<View> {
        &self.anonymous
    }
    pub fn total_names(&self) -> usize {
        self.nets.values().map(|t| t.name_count()).sum()
    }
}

/// A record a holder contributes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Record {
    Addr {
        net: NetIdx,
        key: Box<str>,
        ip: IpAddr,
        ttl: u32,
    },
    Ptr {
        net: NetIdx,
        ip: IpAddr,
        target: Arc<[u8]>,
        ttl: u32,
    },
    Srv {
        net: NetIdx,
        key: Box<str>,
        target: SrvTarget,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum HolderKey {
    Sandbox(String),
    Service(String),
}

/// A change to the served state.
#[derive(Clone, Debug)]
pub enum Change {
    UpsertNetwork(Network),
    RemoveNetwork(String),
    UpsertSandbox(Sandbox),
    RemoveSandbox(String),
    UpsertService(Service),
    RemoveService(String),
}

#[derive(Default)]
struct Writer {
    policy: Policy,
    networks: HashMap<String, Network>,
    net_names: HashMap<String, String>,
    sandboxes: HashMap<String, Sandbox>,
    services: HashMap<String, Service>,
    svc_names: HashMap<String, String>,
    net_idx: HashMap<String, NetIdx>,
    next_net: NetIdx,
    view_idx: HashMap<String, ViewIdx>,
    next_view: ViewIdx,
    holder_ids: HashMap<HolderKey, HolderId>,
    next_holder: HolderId,
    records: HashMap<HolderId, Vec<Record>>,
    holders: Holders,
    /// Networks each holder is on (the reverse of `net_users`).
    holder_nets: HashMap<HolderId, Vec<String>>,
    sources: HashMap<String, Vec<IpAddr>>,
    /// Network ID → holders with records or views on it.
    net_users: HashMap<String, HashSet<HolderKey>>,
    /// Service ID → task sandbox IDs.
    svc_tasks: HashMap<String, HashSet<String>>,
    inflight: HashMap<String, Arc<AtomicU32>>,
}

/// The resolver's tables: lock-free reads, serialized writes.
pub struct Tables {
    current: ArcSwap<Snapshot>,
    writer: Mutex<Writer>,
}

impl Default for Tables {
    fn default() -> Self {
        Self::new()
    }
}

impl Tables {
    pub fn new() -> Self {
        Self::with_policy(Policy::Docker)
    }

    /// Empty tables that answer with `policy`'s semantics.
    pub fn with_policy(policy: Policy) -> Self {
        let mut snap = Snapshot::empty();
        snap.policy = policy.clone();
        Tables {
            current: ArcSwap::from_pointee(snap),
            writer: Mutex::new(Writer {
                policy,
                ..Writer::default()
            }),
        }
    }

    /// The current snapshot, for a batch of queries.
    #[inline]
    pub fn snapshot(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the lock cannot leave the model half-applied in a way that
        // matters to readers (they only see stored snapshots), so keep going.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies changes in order and publishes one new snapshot. Every change is checked before
    /// it touches anything; if one fails, the ones before it stay applied (and published) and
    /// the error is returned.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) -> Result<(), ModelError> {
        let mut w = self.writer();
        let mut snap = (**self.current.load()).clone();
        let mut result = Ok(());
        for c in changes {
            if let Err(e) = w.apply(&mut snap, c) {
                result = Err(e);
                break;
            }
        }
        snap.generation += 1;
        self.current.store(Arc::new(snap));
        result
    }

    /// Replaces the whole state (SIGHUP reload of `dns serve`): only what differs is changed.
    pub fn replace_all(&self, state: &State) -> Result<(), ModelError> {
        let changes = {
            let w = self.writer();
            state.validate_for(&w.policy)?;
            diff(&w, state)
        };
        self.apply(changes)
    }

    /// The view index of a sandbox (for its listener).
    pub fn view_of(&self, sandbox_id: &str) -> Option<ViewIdx> {
        self.writer().view_idx.get(sandbox_id).copied()
    }

    /// The model currently served.
    pub fn state(&self) -> State {
        let w = self.writer();
        let mut s = State {
            networks: w.networks.values().cloned().collect(),
            sandboxes: w.sandboxes.values().cloned().collect(),
            services: w.services.values().cloned().collect(),
        };
        s.networks.sort_by(|a, b| a.name.cmp(&b.name));
        s.sandboxes.sort_by(|a, b| a.name.cmp(&b.name));
        s.services.sort_by(|a, b| a.name.cmp(&b.name));
        s
    }
}

/// The changes that turn the writer's model into `state`.
fn diff(w: &Writer, state: &State) -> Vec<Change> {
    let mut out = Vec::new();
    for n in &state.networks {
        if w.networks.get(&n.id) != Some(n) {
            out.push(Change::UpsertNetwork(n.clone()));
        }
    }
    for s in &state.services {
        if w.services.get(&s.id) != Some(s) {
            out.push(Change::UpsertService(s.clone()));
        }
    }
    // Sandboxes that go away first, so that names they free can be taken by new ones.
    let sb_ids: HashSet<&str> = state.sandboxes.iter().map(|s| s.id.as_str()).collect();
    for id in w.sandboxes.keys() {
        if !sb_ids.contains(id.as_str()) {
            out.push(Change::RemoveSandbox(id.clone()));
        }
    }
    for s in &state.sandboxes {
        if w.sandboxes.get(&s.id) != Some(s) {
            out.push(Change::UpsertSandbox(s.clone()));
        }
    }
    let svc_ids: HashSet<&str> = state.services.iter().map(|s| s.id.as_str()).collect();
    for id in w.services.keys() {
        if !svc_ids.contains(id.as_str()) {
            out.push(Change::RemoveService(id.clone()));
        }
    }
    let net_ids: HashSet<&str> = state.networks.iter().map(|n| n.id.as_str()).collect();
    for id in w.networks.keys() {
        if !net_ids.contains(id.as_str()) {
            out.push(Change::RemoveNetwork(id.clone()));
        }
    }
    out
}

impl Writer {
    fn resolve_net(&self, r: &str) -> Option<&Network> {
        self.networks.get(r).or_else(|| {
            self.net_names
                .get(&r.to_ascii_lowercase())
                .and_then(|id| self.networks.get(id))
        })
    }

    fn resolve_service(&self, r: &str) -> Option<&Service> {
        self.services.get(r).or_else(|| {
            self.svc_names
                .get(&r.to_ascii_lowercase())
                .and_then(|id| self.services.get(id))
        })
    }

    fn holder_id(&mut self, k: &HolderKey) -> HolderId {
        if let Some(h) = self.holder_ids.get(k) {
            return *h;
        }
        let h = self.next_holder;
        self.next_holder += 1;
        self.holder_ids.insert(k.clone(), h);
        h
    }

    fn apply(&mut self, snap: &mut Snapshot, c: Change) -> Result<(), ModelError> {
        match c {
            Change::UpsertNetwork(n) => self.upsert_network(snap, n),
            Change::RemoveNetwork(id) => self.remove_network(snap, &id),
            Change::UpsertService(s) => self.upsert_service(snap, s),
            Change::RemoveService(id) => self.remove_service(snap, &id),
            Change::UpsertSandbox(s) => self.upsert_sandbox(snap, s),
            Change::RemoveSandbox(id) => {
                self.remove_sandbox(snap, &id);
                Ok(())
            }
        }
    }

    fn upsert_network(&mut self, snap: &mut Snapshot, n: Network) -> Result<(), ModelError> {
        model::check_object_name("network", &n.name)?;
        let lower = n.name.to_ascii_lowercase();
        if let Some(other) = self.net_names.get(&lower)
            && *other != n.id
        {
            return Err(ModelError::Duplicate {
                kind: "network name",
                what: n.name.clone(),
            });
        }
        let idx = match self.net_idx.get(&n.id) {
            Some(i) => *i,
            None => {
                let i = self.next_net;
                self.next_net += 1;
                self.net_idx.insert(n.id.clone(), i);
                i
            }
        };
        if let Some(old) = self.networks.get(&n.id) {
            if *old == n {
                return Ok(());
            }
            let old_lower = old.name.to_ascii_lowercase();
            self.net_names.remove(&old_lower);
            snap.nets_by_name.remove(old_lower.as_str());
        }
        let table = match snap.nets.get(&idx) {
            Some(t) => {
                let mut t = (**t).clone();
                t.name = n.name.as_str().into();
                t.internal = n.internal;
                t
            }
            None => NetTable::new(&n),
        };
        snap.nets.insert(idx, Arc::new(table));
        snap.net_views.insert(
            idx,
            Arc::new(View {
                sandbox: n.name.as_str().into(),
                nets: smallvec::smallvec![idx],
                forwarding: if n.internal {
                    Forwarding::Never
                } else {
                    Forwarding::Default
                },
                inflight: self
                    .inflight
                    .entry(format!("net:{}", n.id))
                    .or_default()
                    .clone(),
            }),
        );
        snap.nets_by_name.insert(lower.clone().into(), idx);
        self.net_names.insert(lower, n.id.clone());
        let id = n.id.clone();
        self.networks.insert(id.clone(), n);
        // Everything on this network depends on its name, TTLs, flags and upstreams.
        let users: Vec<HolderKey> = self
            .net_users
            .get(&id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for u in users {
            self.refresh(snap, &u);
        }
        Ok(())
    }

    fn remove_network(&mut self, snap: &mut Snapshot, id: &str) -> Result<(), ModelError> {
        let Some(id) = self.resolve_net(id).map(|n| n.id.clone()) else {
            return Ok(());
        };
        if let Some(users) = self.net_users.get(&id)
            && let Some(u) = users.iter().next()
        {
            let what = match u {
                HolderKey::Sandbox(s) => format!("sandbox {}", self.sandboxes[s].name),
                HolderKey::Service(s) => format!("service {}", self.services[s].name),
            };
            return Err(ModelError::Invalid(format!(
                "network {id} is still used by {what}"
            )));
        }
        if let Some(n) = self.networks.remove(&id) {
            let lower = n.name.to_ascii_lowercase();
            self.net_names.remove(&lower);
            snap.nets_by_name.remove(lower.as_str());
        }
        if let Some(idx) = self.net_idx.remove(&id) {
            snap.nets.remove(&idx);
            snap.net_views.remove(&idx);
        }
        self.inflight.remove(&format!("net:{id}"));
        self.net_users.remove(&id);
        Ok(())
    }

    fn upsert_service(&mut self, snap: &mut Snapshot, s: Service) -> Result<(), ModelError> {
        model::check_object_name("service", &s.name)?;
        let lower = s.name.to_ascii_lowercase();
        if let Some(other) = self.svc_names.get(&lower)
            && *other != s.id
        {
            return Err(ModelError::Duplicate {
                kind: "service name",
                what: s.name.clone(),
            });
        }
        for sn in &s.networks {
            if self.resolve_net(&sn.network).is_none() {
                return Err(ModelError::Unknown {
                    owner: format!("service {}", s.name),
                    kind: "network",
                    what: sn.network.clone(),
                });
            }
            for a in &sn.aliases {
                model::check_dns_name("service alias", a)?;
            }
        }
        if let Some(old) = self.services.get(&s.id) {
            if *old == s {
                return Ok(());
            }
            self.svc_names.remove(&old.name.to_ascii_lowercase());
        }
        self.svc_names.insert(lower, s.id.clone());
        let id = s.id.clone();
        self.services.insert(id.clone(), s);
        self.refresh(snap, &HolderKey::Service(id.clone()));
        let tasks: Vec<String> = self
            .svc_tasks
            .get(&id)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        for t in tasks {
            self.refresh(snap, &HolderKey::Sandbox(t));
        }
        Ok(())
    }

    fn remove_service(&mut self, snap: &mut Snapshot, id: &str) -> Result<(), ModelError> {
        let Some(id) = self.resolve_service(id).map(|s| s.id.clone()) else {
            return Ok(());
        };
        if let Some(tasks) = self.svc_tasks.get(&id)
            && let Some(t) = tasks.iter().next()
        {
            return Err(ModelError::Invalid(format!(
                "service {id} still has task sandbox {}",
                self.sandboxes[t].name
            )));
        }
        let key = HolderKey::Service(id.clone());
        self.drop_holder(snap, &key);
        if let Some(s) = self.services.remove(&id) {
            self.svc_names.remove(&s.name.to_ascii_lowercase());
        }
        self.svc_tasks.remove(&id);
        Ok(())
    }

    fn upsert_sandbox(&mut self, snap: &mut Snapshot, sb: Sandbox) -> Result<(), ModelError> {
        model::check_sandbox_id(&sb.id)?;
        model::check_object_name("sandbox", &sb.name)?;
        if let Some(h) = &sb.hostname {
            model::check_dns_name("hostname", h)?;
        }
        for ep in &sb.endpoints {
            if self.resolve_net(&ep.network).is_none() {
                return Err(ModelError::Unknown {
                    owner: format!("sandbox {}", sb.name),
                    kind: "network",
                    what: ep.network.clone(),
                });
            }
            for a in &ep.aliases {
                model::check_dns_name("alias", a)?;
            }
        }
        if let Some(t) = &sb.task {
            let Some(svc) = self.resolve_service(&t.service) else {
                return Err(ModelError::Unknown {
                    owner: format!("sandbox {}", sb.name),
                    kind: "service",
                    what: t.service.clone(),
                });
            };
            let svc_id = svc.id.clone();
            self.svc_tasks
                .entry(svc_id)
                .or_default()
                .insert(sb.id.clone());
        }
        if let Some(old) = self.sandboxes.get(&sb.id)
            && *old == sb
        {
            return Ok(());
        }
        // A task may have moved between services (never in practice, but keep the index true).
        if let Some(old_task) = self.sandboxes.get(&sb.id).and_then(|o| o.task.clone()) {
            let new_svc = sb
                .task
                .as_ref()
                .and_then(|t| self.resolve_service(&t.service))
                .map(|s| s.id.clone());
            if let Some(old_svc) = self
                .resolve_service(&old_task.service)
                .map(|s| s.id.clone())
                && Some(&old_svc) != new_svc.as_ref()
                && let Some(set) = self.svc_tasks.get_mut(&old_svc)
            {
                set.remove(&sb.id);
            }
        }
        let id = sb.id.clone();
        self.sandboxes.insert(id.clone(), sb);
        self.refresh(snap, &HolderKey::Sandbox(id));
        Ok(())
    }

    fn remove_sandbox(&mut self, snap: &mut Snapshot, id: &str) {
        let key = HolderKey::Sandbox(id.to_string());
        self.drop_holder(snap, &key);
        if let Some(sb) = self.sandboxes.remove(id)
            && let Some(t) = &sb.task
            && let Some(svc) = self.resolve_service(&t.service).map(|s| s.id.clone())
            && let Some(set) = self.svc_tasks.get_mut(&svc)
        {
            set.remove(id);
        }
        if let Some(v) = self.view_idx.remove(id) {
            snap.views.remove(&v);
        }
        for ip in self.sources.remove(id).unwrap_or_default() {
            snap.by_source.remove(&ip);
        }
        self.inflight.remove(id);
    }

    /// Removes every record of a holder and its network-user entries.
    fn drop_holder(&mut self, snap: &mut Snapshot, key: &HolderKey) {
        let hid = self.holder_id(key);
        for r in self.records.remove(&hid).unwrap_or_default() {
            self.holders.remove(snap, hid, &r);
        }
        self.set_holder_nets(hid, key, Vec::new());
        self.holder_ids.remove(key);
    }

    fn set_holder_nets(&mut self, hid: HolderId, key: &HolderKey, nets: Vec<String>) {
        for n in self.holder_nets.remove(&hid).unwrap_or_default() {
            if let Some(users) = self.net_users.get_mut(&n) {
                users.remove(key);
            }
        }
        for n in &nets {
            self.net_users
                .entry(n.clone())
                .or_default()
                .insert(key.clone());
        }
        if !nets.is_empty() {
            self.holder_nets.insert(hid, nets);
        }
    }

    /// Recomputes a holder's records (and a sandbox's view) from the model.
    fn refresh(&mut self, snap: &mut Snapshot, key: &HolderKey) {
        let hid = self.holder_id(key);
        let (new, nets) = match key {
            HolderKey::Sandbox(id) => match self.sandboxes.get(id) {
                Some(sb) => self.sandbox_records(sb),
                None => (Vec::new(), Vec::new()),
            },
            HolderKey::Service(id) => match self.services.get(id) {
                Some(s) => self.service_records(s),
                None => (Vec::new(), Vec::new()),
            },
        };
        let old = self.records.remove(&hid).unwrap_or_default();
        // Remove what went away, add what is new; unchanged records are not touched.
        for r in &old {
            if !new.contains(r) {
                self.holders.remove(snap, hid, r);
            }
        }
        for r in &new {
            if !old.contains(r) {
                self.holders.add(snap, hid, r);
            }
        }
        self.records.insert(hid, new);
        self.set_holder_nets(hid, key, nets);
        if let HolderKey::Sandbox(id) = key {
            self.refresh_view(snap, id);
        }
    }

    fn refresh_view(&mut self, snap: &mut Snapshot, id: &str) {
        let Some(sb) = self.sandboxes.get(id) else {
            return;
        };
        let idx = match self.view_idx.get(id) {
            Some(i) => *i,
            None => {
                let i = self.next_view;
                self.next_view += 1;
                self.view_idx.insert(id.to_string(), i);
                i
            }
        };
        let podman = matches!(self.policy, Policy::Podman { .. });
        let mut nets: SmallVec<[NetIdx; 4]> = SmallVec::new();
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
        let forwarding = if internal_only && (podman || sb.upstreams.is_empty()) {
            Forwarding::Never
        } else if !sb.upstreams.is_empty() {
            set(&sb.upstreams)
        } else if !net_upstreams.is_empty() {
            set(&net_upstreams)
        } else {
            Forwarding::Default
        };
        let inflight = self.inflight.entry(id.to_string()).or_default().clone();
        let view = View {
            sandbox: sb.name.as_str().into(),
            nets,
            forwarding,
            inflight,
        };
        let sources: Vec<IpAddr> = sb
            .endpoints
            .iter()
            .flat_map(|e| [e.ipv4.map(IpAddr::V4), e.ipv6.map(IpAddr::V6)])
            .flatten()
            .collect();
        snap.views.insert(idx, Arc::new(view));
        for ip in self.sources.remove(id).unwrap_or_default() {
            if snap.by_source.get(&ip) == Some(&idx) {
                snap.by_source.remove(&ip);
            }
        }
        for ip in &sources {
            snap.by_source.insert(*ip, idx);
        }
        self.sources.insert(id.to_string(), sources);
    }

    /// Records of a sandbox, and the networks it uses.
    fn sandbox_records(&self, sb: &Sandbox) -> (Vec<Record>, Vec<String>) {
        if let Policy::Podman { .. } = self.policy {
            return self.podman_records(sb);
        }
        let mut out = Vec::new();
        let mut nets = Vec::new();
        let svc = sb
            .task
            .as_ref()
            .and_then(|t| self.resolve_service(&t.service));
        let visible = sb.task.as_ref().is_none_or(|t| t.healthy);
        for ep in &sb.endpoints {
            let Some(net) = self.resolve_net(&ep.network) else {
                continue;
            };
            nets.push(net.id.clone());
            if !visible || !net.dns {
                continue;
            }
            let idx = self.net_idx[&net.id];
            let ttl = net.ttl.unwrap_or(DEFAULT_TTL);
            let mut names: Vec<String> = vec![sb.name.to_ascii_lowercase(), sb.short_id().into()];
            if let Some(h) = &sb.hostname {
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
        (out, nets)
    }

    /// Podman: a sandbox's names on a network are that endpoint's aliases (the container
    /// name is one of them); the PTR target of each address lists them all, one wire-format
    /// name after another (see `PtrEntry::targets`).
    fn podman_records(&self, sb: &Sandbox) -> (Vec<Record>, Vec<String>) {
        let mut out = Vec::new();
        let mut nets = Vec::new();
        for ep in &sb.endpoints {
            let Some(net) = self.resolve_net(&ep.network) else {
                continue;
            };
            if !nets.contains(&net.id) {
                nets.push(net.id.clone());
            }
            if !net.dns {
                continue;
            }
            let idx = self.net_idx[&net.id];
            let ttl = net.ttl.unwrap_or(DEFAULT_TTL);
            let mut names: Vec<String> = Vec::with_capacity(ep.aliases.len());
            for a in &ep.aliases {
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
        (out, nets)
    }

    fn service_records(&self, s: &Service) -> (Vec<Record>, Vec<String>) {
        let mut out = Vec::new();
        let mut nets = Vec::new();
        for sn in &s.networks {
            let Some(net) = self.resolve_net(&sn.network) else {
                continue;
            };
            nets.push(net.id.clone());
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
        (out, nets)
    }
}

fn table_mut(snap: &mut Snapshot, net: NetIdx) -> Option<&mut NetTable> {
    snap.nets.get_mut(&net).map(Arc::make_mut)
}

type AddrHolders = SmallVec<[(HolderId, u32, SmallVec<[IpAddr; 2]>); 1]>;
type PtrHolders = SmallVec<[(HolderId, Arc<[u8]>, u32); 1]>;

/// Who contributes to each name and address of each network. Readers only see the union
/// (`AddrSet`) or the first claim (`PtrEntry`); keeping the contributions here, out of the
/// readers' maps, keeps those maps small and lets one holder leave without disturbing others.
#[derive(Default)]
struct Holders {
    addrs: HashMap<NetIdx, HashMap<Box<str>, AddrHolders>>,
    ptrs: HashMap<NetIdx, HashMap<IpAddr, PtrHolders>>,
}

impl Holders {
    fn add(&mut self, snap: &mut Snapshot, h: HolderId, r: &Record) {
        match r {
            Record::Addr { net, key, ip, ttl } => {
                let Some(t) = table_mut(snap, *net) else {
                    return;
                };
                let hs = self
                    .addrs
                    .entry(*net)
                    .or_default()
                    .entry(key.clone())
                    .or_default();
                match hs.iter_mut().find(|e| e.0 == h) {
                    Some(e) => {
                        e.1 = (*ttl).min(e.1);
                        e.2.push(*ip);
                    }
                    None => hs.push((h, *ttl, smallvec::smallvec![*ip])),
                }
                match AddrSet::union(hs) {
                    Some(set) => t.addrs.insert(key, set),
                    None => t.addrs.remove(key),
                }
            }
            Record::Ptr {
                net,
                ip,
                target,
                ttl,
            } => {
                let Some(t) = table_mut(snap, *net) else {
                    return;
                };
                let hs = self.ptrs.entry(*net).or_default().entry(*ip).or_default();
                hs.push((h, target.clone(), *ttl));
                if hs.len() == 1 {
                    t.ptr.insert(*ip, PtrEntry::new(target, *ttl));
                }
            }
            Record::Srv { net, key, target } => {
                let Some(t) = table_mut(snap, *net) else {
                    return;
                };
                let mut set = t.srv.get(&**key).cloned().unwrap_or_else(|| SrvSet {
                    holders: SmallVec::new(),
                    targets: Arc::from([]),
                    ttl: 0,
                });
                match set.holders.iter_mut().find(|e| e.0 == h) {
                    Some(e) => e.1.push(target.clone()),
                    None => set.holders.push((h, smallvec::smallvec![target.clone()])),
                }
                set.recompute();
                t.srv.insert(key.clone(), set);
            }
        }
    }

    fn remove(&mut self, snap: &mut Snapshot, h: HolderId, r: &Record) {
        match r {
            Record::Addr { net, key, ip, .. } => {
                let Some(t) = table_mut(snap, *net) else {
                    return;
                };
                let Some(names) = self.addrs.get_mut(net) else {
                    return;
                };
                let Some(hs) = names.get_mut(&**key) else {
                    return;
                };
                if let Some(pos) = hs.iter().position(|e| e.0 == h) {
                    let ips = &mut hs[pos].2;
                    if let Some(i) = ips.iter().position(|x| x == ip) {
                        ips.remove(i);
                    }
                    if ips.is_empty() {
                        hs.remove(pos);
                    }
                }
                match AddrSet::union(hs) {
                    Some(set) => t.addrs.insert(key, set),
                    None => {
                        t.addrs.remove(key);
                        names.remove(&**key);
                        if names.is_empty() {
                            self.addrs.remove(net);
                        }
                    }
                }
            }
            Record::Ptr {
                net, ip, target, ..
            } => {
                let Some(t) = table_mut(snap, *net) else {
                    return;
                };
                let Some(ips) = self.ptrs.get_mut(net) else {
                    return;
                };
                let Some(hs) = ips.get_mut(ip) else {
                    return;
                };
                let Some(pos) = hs.iter().position(|x| x.0 == h && x.1 == *target) else {
                    return;
                };
                hs.remove(pos);
                match hs.first() {
                    // The first claim answers; only a change of the first touches the map.
                    Some((_, target, ttl)) if pos == 0 => {
                        t.ptr.insert(*ip, PtrEntry::new(target, *ttl));
                    }
                    Some(_) => {}
                    None => {
                        t.ptr.remove(*ip);
                        ips.remove(ip);
                        if ips.is_empty() {
                            self.ptrs.remove(net);
                        }
                    }
                }
            }
            Record::Srv { net, key, target } => {
                let Some(t) = table_mut(snap, *net) else {
                    return;
                };
                let Some(mut set) = t.srv.get(&**key).cloned() else {
                    return;
                };
                if let Some(pos) = set.holders.iter().position(|e| e.0 == h) {
                    let ts = &mut set.holders[pos].1;
                    if let Some(i) = ts.iter().position(|x| x == target) {
                        ts.remove(i);
                    }
                    if ts.is_empty() {
                        set.holders.remove(pos);
                    }
                }
                if set.holders.is_empty() {
                    t.srv.remove(&**key);
                } else {
                    set.recompute();
                    t.srv.insert(key.clone(), set);
                }
            }
        }
    }
}

impl AddrSet {
    /// What a name answers given its holders (addresses deduplicated in holder order, the
    /// smallest TTL); None when nobody holds it any more.
    fn union(holders: &AddrHolders) -> Option<AddrSet> {
        let mut lists = AddrLists::default();
        let mut ttl = u32::MAX;
        let total: usize = holders.iter().map(|(_, _, ips)| ips.len()).sum();
        // A linear scan for the usual handful; a set for `tasks.web` with many tasks.
        let mut seen = (total > 16).then(HashSet::new);
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
        Some(AddrSet { addrs, ttl })
    }
}

impl SrvSet {
    fn recompute(&mut self) {
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
