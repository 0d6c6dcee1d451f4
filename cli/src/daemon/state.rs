//! The desired-state cache: every record of the store, decoded, at one revision, with the
//! indexes the API and the reconciler look things up by. One feed task per store fills it — a
//! snapshot, then the watch from the snapshot's revision, a relist (diffed against what it had)
//! when the watch cannot resume — and tells the reconciler and the service scheduler which
//! objects changed. With a cluster, two stores feed it: this node's (local scope) and the
//! cluster's (swarm scope); their revisions are counted apart.
//!
//! The maps are persistent (`imbl`), so a snapshot is one pointer copy: readers load the
//! current `Arc<Desired>` without a lock and keep a consistent view for as long as they like
//! (the reconciler plans a whole round on one); the feed builds the next version next to it.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use imbl::{OrdMap, OrdSet};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::daemon::store::schema::{
    self, AssignRec, EndpointRec, Key, NetworkRec, NodeRec, PeerRec, SandboxRec, Scope, ServiceRec,
    StatusRec,
};
use crate::daemon::store::{Event, EventKind, KeyValue, Rev, Store, StoreError};

/// A record with the revision it was last written at (for compare-and-swap).
#[derive(Debug)]
pub struct Entry<T> {
    pub rec: Arc<T>,
    pub rev: Rev,
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Entry {
            rec: self.rec.clone(),
            rev: self.rev,
        }
    }
}

/// Which store a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// This node's store (redb): local-scope objects, sandboxes, status.
    Local,
    /// The cluster store (etcd): swarm-scope objects, nodes, peers.
    Cluster,
}

impl Source {
    pub fn idx(self) -> usize {
        match self {
            Source::Local => 0,
            Source::Cluster => 1,
        }
    }
}

/// Revisions of both stores.
pub type Revs = [Rev; 2];

/// An object whose desired state changed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dirty {
    Network(String),
    Sandbox(String),
    Service(String),
    /// Another node's endpoints on a network changed.
    Peers(String),
    /// Another node's sandbox (its names) changed.
    Remote(String),
    /// Cluster membership changed.
    Nodes,
}

#[derive(Default, Debug, Clone)]
pub struct Desired {
    /// The local store's revision.
    pub rev: Rev,
    /// The cluster store's revision (0 without a cluster).
    pub cluster_rev: Rev,
    pub networks: OrdMap<String, Entry<NetworkRec>>,
    pub sandboxes: OrdMap<String, Entry<SandboxRec>>,
    /// sandbox → network → endpoint
    pub endpoints: OrdMap<String, OrdMap<String, Entry<EndpointRec>>>,
    pub services: OrdMap<String, Entry<ServiceRec>>,
    pub status: OrdMap<String, Entry<StatusRec>>,
    /// network → address → owner
    pub ipam: OrdMap<String, OrdMap<IpAddr, String>>,
    /// network → sandboxes with an endpoint on it
    members: OrdMap<String, OrdSet<String>>,
    /// service → its task sandboxes
    tasks: OrdMap<String, OrdSet<String>>,
    /// sandbox name → sandboxes with a legacy link to that name
    linkers: OrdMap<String, OrdSet<String>>,
    net_names: OrdMap<String, String>,
    sb_names: OrdMap<String, String>,
    svc_names: OrdMap<String, String>,
    /// Revision of the networks guard (every network create/remove bumps it), per store.
    pub networks_guard: Revs,
    pub nodes: OrdMap<String, Entry<NodeRec>>,
    /// Nodes whose lease is alive.
    pub alive: OrdSet<String>,
    /// VNI → overlay network.
    pub vnis: OrdMap<u32, String>,
    /// network → "node/sandbox" → another node's endpoint (and this node's, as published)
    pub peers: OrdMap<String, OrdMap<String, Entry<PeerRec>>>,
    /// swarm service → slot → the node that runs it
    pub assign: OrdMap<String, OrdMap<u32, Entry<AssignRec>>>,
    /// The node whose dispatcher assigns slots, and the revision of that key.
    pub leader: Option<(String, Rev)>,
    /// Which keys each store holds (to diff a relist).
    keys: [OrdSet<String>; 2],
}

/// How a reference (name, ID or unique ID prefix) failed to resolve.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    NotFound,
    Ambiguous,
}

fn by_ref<'a, T: Clone>(
    map: &'a OrdMap<String, T>,
    names: &OrdMap<String, String>,
    r: &str,
) -> Result<&'a String, Lookup> {
    if let Some((k, _)) = map.get_key_value(r) {
        return Ok(k);
    }
    if let Some(id) = names.get(r)
        && let Some((k, _)) = map.get_key_value(id.as_str())
    {
        return Ok(k);
    }
    if r.is_empty() {
        return Err(Lookup::NotFound);
    }
    let mut hits = map
        .range(r.to_string()..)
        .take_while(|(k, _)| k.starts_with(r));
    match (hits.next(), hits.next()) {
        (Some((k, _)), None) => Ok(k),
        (None, _) => Err(Lookup::NotFound),
        (Some(_), Some(_)) => Err(Lookup::Ambiguous),
    }
}

impl Desired {
    pub fn network_id(&self, r: &str) -> Result<&String, Lookup> {
        by_ref(&self.networks, &self.net_names, r)
    }
    pub fn sandbox_id(&self, r: &str) -> Result<&String, Lookup> {
        by_ref(&self.sandboxes, &self.sb_names, r)
    }
    pub fn service_id(&self, r: &str) -> Result<&String, Lookup> {
        by_ref(&self.services, &self.svc_names, r)
    }
    pub fn network_by_name(&self, name: &str) -> Option<&Entry<NetworkRec>> {
        self.net_names
            .get(name)
            .and_then(|id| self.networks.get(id.as_str()))
    }
    pub fn sandbox_by_name(&self, name: &str) -> Option<&Entry<SandboxRec>> {
        self.sb_names
            .get(name)
            .and_then(|id| self.sandboxes.get(id.as_str()))
    }
    pub fn service_by_name(&self, name: &str) -> Option<&Entry<ServiceRec>> {
        self.svc_names
            .get(name)
            .and_then(|id| self.services.get(id.as_str()))
    }

    /// A sandbox's endpoints in attachment order.
    pub fn endpoints_of(&self, sandbox: &str) -> Vec<&Entry<EndpointRec>> {
        let mut v: Vec<&Entry<EndpointRec>> = self
            .endpoints
            .get(sandbox)
            .map(|m| m.values().collect())
            .unwrap_or_default();
        v.sort_by_key(|e| (e.rec.order, e.rec.index));
        v
    }

    /// Sandboxes with an endpoint on a network.
    pub fn members(&self, net: &str) -> impl Iterator<Item = &String> {
        self.members.get(net).into_iter().flatten()
    }

    /// Sandboxes with a legacy link to the sandbox named `name`.
    pub fn linkers_of(&self, name: &str) -> impl Iterator<Item = &String> {
        self.linkers.get(name).into_iter().flatten()
    }

    /// The task sandboxes of a service.
    pub fn tasks_of(&self, svc: &str) -> impl Iterator<Item = &String> {
        self.tasks.get(svc).into_iter().flatten()
    }

    /// Whether a service lives in the cluster store (its networks are swarm-scope).
    pub fn swarm_service(&self, svc: &ServiceRec) -> bool {
        svc.networks.iter().any(|n| {
            self.networks
                .get(n.network.as_str())
                .is_some_and(|x| x.rec.scope == Scope::Swarm)
        })
    }

    /// Other nodes' tasks of a service, as they published them (one per task sandbox).
    pub fn remote_tasks<'a>(
        &'a self,
        svc: &'a str,
        me: &'a str,
    ) -> impl Iterator<Item = &'a PeerRec> + 'a {
        let mut seen = std::collections::HashSet::new();
        self.peers
            .values()
            .flat_map(|m| m.values())
            .map(|p| p.rec.as_ref())
            .filter(move |p| {
                p.node != me
                    && p.task.as_ref().is_some_and(|t| t.service == svc)
                    && seen.insert(p.sandbox.clone())
            })
    }

    pub fn status_of(&self, sandbox: &str) -> Option<&StatusRec> {
        self.status.get(sandbox).map(|e| e.rec.as_ref())
    }

    /// In DNS and the LB: a plain sandbox always; a task while running, healthy (or without a
    /// health check) and not draining.
    pub fn visible(&self, sandbox: &str) -> bool {
        let Some(sb) = self.sandboxes.get(sandbox) else {
            return false;
        };
        let Some(t) = &sb.rec.task else {
            return true;
        };
        if t.draining {
            return false;
        }
        let st = self.status_of(sandbox);
        if st.is_some_and(|s| s.exited) {
            return false;
        }
        match self.services.get(t.service.as_str()) {
            Some(svc) if svc.rec.health.is_some() => st.is_some_and(|s| s.healthy && !s.unhealthy),
            _ => true,
        }
    }

    /// The peers of a sandbox of another node, across networks, in attachment order.
    pub fn remote_endpoints(&self, sandbox: &str) -> Vec<&Entry<PeerRec>> {
        let mut v: Vec<&Entry<PeerRec>> = self
            .peers
            .values()
            .flat_map(|m| m.values())
            .filter(|p| p.rec.sandbox == sandbox)
            .collect();
        v.sort_by_key(|p| p.rec.order);
        v
    }

    /// Applies one event of store `src`; records the objects it changes in `dirty`.
    fn apply(&mut self, ev: &Event, src: Source, dirty: &mut BTreeSet<Dirty>) {
        let key = ev.kv.key.as_str();
        let put = ev.kind == EventKind::Put;
        let rev = ev.kv.mod_rev;
        if put {
            self.keys[src.idx()].insert(key.to_string());
        } else {
            self.keys[src.idx()].remove(key);
        }
        if let Some(d) = self.apply_key(ev, src, key, put, rev) {
            dirty.insert(d);
        }
        if let Key::Peer { sandbox, .. } = schema::parse(key) {
            dirty.insert(Dirty::Remote(sandbox.to_string()));
        }
    }

    fn apply_key(
        &mut self,
        ev: &Event,
        src: Source,
        key: &str,
        put: bool,
        rev: Rev,
    ) -> Option<Dirty> {
        match schema::parse(key) {
            Key::Network(id) => {
                if let Some(old) = self.networks.remove(id) {
                    self.net_names.remove(&old.rec.name);
                }
                if put && let Some(rec) = decode::<NetworkRec>(&ev.kv) {
                    self.net_names.insert(rec.name.clone(), id.to_string());
                    self.networks.insert(id.to_string(), entry(rec, rev));
                }
                Some(Dirty::Network(id.to_string()))
            }
            Key::Sandbox(id) => {
                if let Some(old) = self.sandboxes.remove(id) {
                    self.sb_names.remove(&old.rec.name);
                    if let Some(t) = &old.rec.task
                        && let Some(set) = self.tasks.get_mut(&t.service)
                    {
                        set.remove(id);
                        if set.is_empty() {
                            self.tasks.remove(&t.service);
                        }
                    }
                    for l in &old.rec.links {
                        if let Some(set) = self.linkers.get_mut(&l.target) {
                            set.remove(id);
                            if set.is_empty() {
                                self.linkers.remove(&l.target);
                            }
                        }
                    }
                }
                if put && let Some(rec) = decode::<SandboxRec>(&ev.kv) {
                    self.sb_names.insert(rec.name.clone(), id.to_string());
                    if let Some(t) = &rec.task {
                        self.tasks
                            .entry(t.service.clone())
                            .or_default()
                            .insert(id.to_string());
                    }
                    for l in &rec.links {
                        self.linkers
                            .entry(l.target.clone())
                            .or_default()
                            .insert(id.to_string());
                    }
                    self.sandboxes.insert(id.to_string(), entry(rec, rev));
                }
                Some(Dirty::Sandbox(id.to_string()))
            }
            Key::Endpoint { net, sandbox } => {
                let eps = self.endpoints.entry(sandbox.to_string()).or_default();
                eps.remove(net);
                if put && let Some(rec) = decode::<EndpointRec>(&ev.kv) {
                    eps.insert(net.to_string(), entry(rec, rev));
                    self.members
                        .entry(net.to_string())
                        .or_default()
                        .insert(sandbox.to_string());
                } else {
                    if eps.is_empty() {
                        self.endpoints.remove(sandbox);
                    }
                    if let Some(m) = self.members.get_mut(net) {
                        m.remove(sandbox);
                        if m.is_empty() {
                            self.members.remove(net);
                        }
                    }
                }
                Some(Dirty::Sandbox(sandbox.to_string()))
            }
            Key::Ipam { net, ip } => {
                let m = self.ipam.entry(net.to_string()).or_default();
                if put {
                    let owner = String::from_utf8_lossy(&ev.kv.value).into_owned();
                    m.insert(ip, owner);
                } else {
                    m.remove(&ip);
                    if m.is_empty() {
                        self.ipam.remove(net);
                    }
                }
                None
            }
            Key::Service(id) => {
                if let Some(old) = self.services.remove(id) {
                    self.svc_names.remove(&old.rec.name);
                }
                if put && let Some(rec) = decode::<ServiceRec>(&ev.kv) {
                    self.svc_names.insert(rec.name.clone(), id.to_string());
                    self.services.insert(id.to_string(), entry(rec, rev));
                }
                Some(Dirty::Service(id.to_string()))
            }
            Key::Status(id) => {
                self.status.remove(id);
                if put && let Some(rec) = decode::<StatusRec>(&ev.kv) {
                    self.status.insert(id.to_string(), entry(rec, rev));
                }
                Some(Dirty::Sandbox(id.to_string()))
            }
            Key::Node(id) => {
                self.nodes.remove(id);
                if put && let Some(rec) = decode::<NodeRec>(&ev.kv) {
                    self.nodes.insert(id.to_string(), entry(rec, rev));
                }
                Some(Dirty::Nodes)
            }
            Key::Alive(id) => {
                if put {
                    self.alive.insert(id.to_string());
                } else {
                    self.alive.remove(id);
                }
                Some(Dirty::Nodes)
            }
            Key::Vni(v) => {
                if put {
                    let net = String::from_utf8_lossy(&ev.kv.value).into_owned();
                    self.vnis.insert(v, net);
                } else {
                    self.vnis.remove(&v);
                }
                None
            }
            Key::Peer { net, node, sandbox } => {
                let m = self.peers.entry(net.to_string()).or_default();
                let k = format!("{node}/{sandbox}");
                m.remove(&k);
                if put && let Some(rec) = decode::<PeerRec>(&ev.kv) {
                    m.insert(k, entry(rec, rev));
                } else if m.is_empty() {
                    self.peers.remove(net);
                }
                // The network's data path and the sandbox's names; both are told by the
                // caller, which collects every dirty object of a batch.
                let _ = sandbox;
                Some(Dirty::Peers(net.to_string()))
            }
            Key::Assign { svc, slot } => {
                let m = self.assign.entry(svc.to_string()).or_default();
                m.remove(&slot);
                if put && let Some(rec) = decode::<AssignRec>(&ev.kv) {
                    m.insert(slot, entry(rec, rev));
                } else if m.is_empty() {
                    self.assign.remove(svc);
                }
                Some(Dirty::Service(svc.to_string()))
            }
            Key::Leader => {
                self.leader =
                    put.then(|| (String::from_utf8_lossy(&ev.kv.value).into_owned(), rev));
                None
            }
            Key::Other => {
                if key == schema::NETWORKS_GUARD {
                    self.networks_guard[src.idx()] = if put { rev } else { 0 };
                }
                None
            }
        }
    }
}

fn entry<T>(rec: T, rev: Rev) -> Entry<T> {
    Entry {
        rec: Arc::new(rec),
        rev,
    }
}

fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match schema::decode(&kv.key, &kv.value) {
        Ok(r) => Some(r),
        Err(e) => {
            // A record this version cannot read is skipped, not fatal: it stays in the store.
            warn!("skipping {e}");
            None
        }
    }
}

/// What changed at one revision of one store (sent to the reconciler).
#[derive(Debug, Clone)]
pub struct Changes {
    pub source: Source,
    pub rev: Rev,
    /// None: everything may have changed (the first listing).
    pub dirty: Option<BTreeSet<Dirty>>,
}

pub struct StateCache {
    current: ArcSwap<Desired>,
    revs: watch::Sender<Revs>,
    /// Serializes the feeds' writes (each builds the next version from the latest).
    write: std::sync::Mutex<()>,
    /// `sdctl events`, derived from the changes as they are applied.
    pub events: crate::daemon::events::EventLog,
}

impl StateCache {
    pub fn new() -> Arc<StateCache> {
        Arc::new(StateCache {
            current: ArcSwap::from_pointee(Desired::default()),
            revs: watch::channel([0, 0]).0,
            write: std::sync::Mutex::new(()),
            events: Default::default(),
        })
    }

    /// The current desired state: a consistent snapshot, kept as long as the caller likes.
    pub fn read(&self) -> Arc<Desired> {
        self.current.load_full()
    }

    /// The revision of a store the cache has seen.
    pub fn rev(&self, src: Source) -> Rev {
        self.revs.borrow()[src.idx()]
    }

    /// Notified on every new revision of the cache (either store).
    pub fn subscribe(&self) -> watch::Receiver<Revs> {
        self.revs.subscribe()
    }

    /// Waits until the cache has seen revision `rev` of store `src`.
    pub async fn wait_for(&self, src: Source, rev: Rev) {
        let mut rx = self.revs.subscribe();
        let _ = rx.wait_for(|r| r[src.idx()] >= rev).await;
    }

    /// Applies events (a batch of one revision, or a relist's diff) of store `src`.
    /// `batch`: the watched changes applied, for the events they make (none for a listing).
    fn update(
        &self,
        src: Source,
        rev: Rev,
        batch: Option<&[Event]>,
        f: impl FnOnce(&mut Desired, &mut BTreeSet<Dirty>),
    ) -> BTreeSet<Dirty> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut dirty = BTreeSet::new();
        let prev = self.current.load_full();
        let mut d = Desired::clone(&prev);
        f(&mut d, &mut dirty);
        match src {
            Source::Local => d.rev = rev,
            Source::Cluster => d.cluster_rev = rev,
        }
        if let Some(b) = batch {
            self.events
                .emit(crate::daemon::events::derive(&prev, &d, b));
        }
        self.current.store(Arc::new(d));
        self.revs.send_modify(|r| r[src.idx()] = rev);
        dirty
    }

    /// A fresh listing of store `src`, diffed against what the cache had from it: what is
    /// gone is deleted, everything listed is put.
    fn reset(&self, src: Source, items: Vec<KeyValue>, rev: Rev) -> BTreeSet<Dirty> {
        self.update(src, rev, None, |d, dirty| {
            let listed: std::collections::HashSet<&str> =
                items.iter().map(|kv| kv.key.as_str()).collect();
            let gone: Vec<String> = d.keys[src.idx()]
                .iter()
                .filter(|k| !listed.contains(k.as_str()))
                .cloned()
                .collect();
            for key in gone {
                let ev = Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key,
                        value: Vec::new(),
                        create_rev: 0,
                        mod_rev: rev,
                        lease: 0,
                    },
                };
                d.apply(&ev, src, dirty);
            }
            for kv in items {
                d.apply(
                    &Event {
                        kind: EventKind::Put,
                        kv,
                    },
                    src,
                    dirty,
                );
            }
        })
    }

    /// Loads store `src` and keeps following it; every change goes to `out` (bounded: a slow
    /// reconciler slows the feed, the watch buffers, and past that the feed relists).
    /// Returns after the first listing is in the cache, the following runs in a task.
    pub async fn start_feed(
        self: &Arc<Self>,
        src: Source,
        store: Arc<dyn Store>,
        out: mpsc::Sender<Changes>,
    ) -> Result<(), StoreError> {
        let (items, rev) = store.snapshot(schema::ROOT).await?;
        self.reset(src, items, rev);
        let _ = out
            .send(Changes {
                source: src,
                rev,
                dirty: None,
            })
            .await;
        let me = self.clone();
        tokio::spawn(async move { me.feed(src, store, out, rev).await });
        Ok(())
    }

    async fn feed(
        self: Arc<Self>,
        src: Source,
        store: Arc<dyn Store>,
        out: mpsc::Sender<Changes>,
        mut rev: Rev,
    ) {
        let mut backoff = Duration::from_millis(100);
        let mut relist = false;
        loop {
            if relist {
                match store.snapshot(schema::ROOT).await {
                    Ok((items, r)) => {
                        let dirty = self.reset(src, items, r);
                        rev = r;
                        relist = false;
                        if out
                            .send(Changes {
                                source: src,
                                rev,
                                dirty: Some(dirty),
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(store = ?src, "relisting the store: {e}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let mut w = match store.watch(schema::ROOT, rev + 1).await {
                Ok(w) => w,
                Err(StoreError::Compacted { .. }) => {
                    relist = true;
                    continue;
                }
                Err(e) => {
                    warn!(store = ?src, "watching the store: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            loop {
                match w.next().await {
                    Some(Ok(b)) => {
                        rev = b.rev;
                        let dirty = self.update(src, b.rev, Some(&b.events), |d, dirty| {
                            for ev in &b.events {
                                d.apply(ev, src, dirty);
                            }
                        });
                        if out
                            .send(Changes {
                                source: src,
                                rev: b.rev,
                                dirty: Some(dirty),
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Some(Err(StoreError::Compacted { .. })) => {
                        info!(store = ?src, "store watch cannot resume: relisting");
                        relist = true;
                        break;
                    }
                    Some(Err(e)) => {
                        // The store went away: watch again from the last revision (etcd
                        // keeps history), or relist if that is gone.
                        warn!(store = ?src, "store watch: {e}");
                        tokio::time::sleep(backoff).await;
                        break;
                    }
                    None => return,
                }
            }
        }
    }
}
