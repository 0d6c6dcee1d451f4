//! Compiled name tables. Readers take a lock-free snapshot (`ArcSwap`) per batch of queries;
//! one writer at a time turns model changes into record changes. The maps are persistent
//! (`imbl`) or flat with a persistent delta (`FlatIndex`): a new snapshot shares everything
//! but the paths it changed, so an update costs O(size of the change · log n) amortized,
//! never O(all names), and readers never wait.
//!
//! - `entries.rs`: what readers see (per-network maps, views);
//! - `holders.rs`: records, and who holds the names and addresses several holders share;
//! - `sandboxes.rs`: the writer's compact copy of the sandboxes;
//! - `records.rs`: the derivation of a holder's records and a sandbox's view from the model;
//! - `writer.rs`: the changes.

mod entries;
mod holders;
mod records;
mod sandboxes;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::{ArcSwap, Guard};

pub use entries::{
    AddrSet, Forwarding, LinkEntry, NetTable, PtrEntry, SrvSet, SrvTarget, UpstreamSet, View,
};

pub use crate::model::Policy;
use crate::model::{ModelError, Network, Sandbox, Service, State};
use crate::nameindex::FlatIndex;
use sandboxes::SbId;
use writer::Writer;

pub(crate) type Map<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

pub type NetIdx = u32;
pub type ViewIdx = u32;
/// A sandbox (its view index) or a service.
type HolderId = u32;

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
    /// One per sandbox: flat, like the name maps, for the same reason (dense slots).
    views: FlatIndex<ViewIdx, Arc<View>>,
    by_source: FlatIndex<IpAddr, ViewIdx>,
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
            views: FlatIndex::default(),
            by_source: FlatIndex::default(),
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

fn table_mut(snap: &mut Snapshot, net: NetIdx) -> Option<&mut NetTable> {
    snap.nets.get_mut(&net).map(Arc::make_mut)
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
            writer: Mutex::new(Writer::with_policy(policy)),
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
        self.publish(&mut w, changes.into_iter().map(Step::Owned))
    }

    /// Replaces the whole state (SIGHUP reload of `dns serve`): only what differs is changed.
    /// Sandboxes are applied from `state` by reference: a load of 100,000 never holds a second
    /// copy of them (nor leaves the holes freeing one would leave among the tables).
    pub fn replace_all(&self, state: &State) -> Result<(), ModelError> {
        let mut w = self.writer();
        state.validate_for(&w.policy)?;
        let steps = diff(&w, state);
        self.publish(&mut w, steps.into_iter())
    }

    fn publish<'a>(
        &self,
        w: &mut Writer,
        steps: impl Iterator<Item = Step<'a>>,
    ) -> Result<(), ModelError> {
        let mut snap = (**self.current.load()).clone();
        let mut result = Ok(());
        for step in steps {
            let r = match step {
                Step::Owned(c) => w.apply(&mut snap, c),
                Step::Sandbox(sb) => w.upsert_sandbox(&mut snap, sb),
            };
            if let Err(e) = r {
                result = Err(e);
                break;
            }
        }
        snap.generation += 1;
        self.current.store(Arc::new(snap));
        result
    }

    /// The view index of a sandbox (for its listener).
    pub fn view_of(&self, sandbox_id: &str) -> Option<ViewIdx> {
        self.writer().sandbox(sandbox_id).map(|sb| sb.view)
    }

    /// The model currently served.
    pub fn state(&self) -> State {
        let w = self.writer();
        let mut s = State {
            networks: w.networks.values().cloned().collect(),
            sandboxes: w
                .sandboxes
                .by_id
                .iter()
                .map(|(id, sb)| sb.to_model(id))
                .collect(),
            services: w.services.values().map(|s| s.service.clone()).collect(),
        };
        s.networks.sort_by(|a, b| a.name.cmp(&b.name));
        s.sandboxes.sort_by(|a, b| a.name.cmp(&b.name));
        s.services.sort_by(|a, b| a.name.cmp(&b.name));
        s
    }
}

/// One step of an update: a change, or a sandbox of a new state to upsert.
enum Step<'a> {
    Owned(Change),
    Sandbox(&'a Sandbox),
}

/// The steps that turn the writer's model into `state`.
fn diff<'a>(w: &Writer, state: &'a State) -> Vec<Step<'a>> {
    let mut out = Vec::new();
    for n in &state.networks {
        if w.networks.get(&n.id) != Some(n) {
            out.push(Step::Owned(Change::UpsertNetwork(n.clone())));
        }
    }
    for s in &state.services {
        if w.services.get(&s.id).map(|r| &r.service) != Some(s) {
            out.push(Step::Owned(Change::UpsertService(s.clone())));
        }
    }
    // Sandboxes that go away first, so that names they free can be taken by new ones.
    let sb_ids: HashSet<SbId> = state
        .sandboxes
        .iter()
        .filter_map(|s| SbId::parse(&s.id))
        .collect();
    for id in w.sandboxes.by_id.keys() {
        if !sb_ids.contains(id) {
            out.push(Step::Owned(Change::RemoveSandbox(id.hex(64))));
        }
    }
    for s in &state.sandboxes {
        if !w.sandbox(&s.id).is_some_and(|sb| sb.is(s)) {
            out.push(Step::Sandbox(s));
        }
    }
    let svc_ids: HashSet<&str> = state.services.iter().map(|s| s.id.as_str()).collect();
    for id in w.services.keys() {
        if !svc_ids.contains(id.as_str()) {
            out.push(Step::Owned(Change::RemoveService(id.clone())));
        }
    }
    let net_ids: HashSet<&str> = state.networks.iter().map(|n| n.id.as_str()).collect();
    for id in w.networks.keys() {
        if !net_ids.contains(id.as_str()) {
            out.push(Step::Owned(Change::RemoveNetwork(id.clone())));
        }
    }
    out
}
