//! The reconciler: the one place that changes the kernel and the resolver's tables. It
//! consumes the state cache's change notices (whoever wrote the store: this node's API, the
//! service scheduler, the status writer, another node) and a periodic resync, and for every
//! object that changed diffs desired state against what it last applied:
//!
//! 1. networks first (drivers make bridges), then one batch of name-table changes — names of
//!    new objects exist before their listeners start, removed ones leave DNS before the
//!    kernel objects go;
//! 2. sandboxes, concurrently (namespaces, endpoints, files, listeners, processes); removed
//!    sandboxes lose their namespace now and their links and files in the background;
//! 3. removed networks (after the background work of their sandboxes);
//! 4. service VIP tables in client sandboxes, then the host's firewall table.
//!
//! After a round it publishes the revision it has applied; API handlers wait for it, so a
//! name answers before the call that created it returns. Each object's last result is kept
//! for them ([`Progress`]). A full pass — at start, on every `--resync-interval`, after a
//! relist — also checks the kernel for drift (a deleted veth, bridge or table of ours comes
//! back), removes objects of ours nobody wants, and has CNI endpoints CHECKed beside the
//! next rounds (`cni::Checker`; the broken ones come back as dirty sandboxes to repair).

pub mod cleaner;
pub mod cluster;
pub mod cni;
pub mod files;
pub mod firewall;
pub mod gc;
pub mod ingress;
pub mod lb;
pub mod legacy_links;
pub mod model;
mod names;
pub mod process;
pub mod sandbox;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::daemon::Node;
use crate::daemon::state::{Changes, Desired, Dirty, Revs, Source};
use crate::daemon::store::Rev;
use crate::daemon::store::schema::{DriverKind, NetworkRec, PublishRec, Scope, ServiceRec};
use sandbox::{Kept, RealSb};

/// How many sandboxes are realized at once.
const PARALLEL: usize = 1;

/// Why an object could not be applied: the request's fault (a command that does not exist,
/// a host port taken by another program) or ours.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl Failure {
    fn of(e: &anyhow::Error) -> Failure {
        match e.downcast_ref::<Failure>() {
            Some(Failure::BadRequest(m)) => Failure::BadRequest(m.clone()),
            Some(Failure::Conflict(m)) => Failure::Conflict(m.clone()),
            _ => Failure::Internal(format!("{e:#}")),
        }
    }
}

/// What the reconciler has applied, for API handlers waiting on their writes.
pub struct Progress {
    applied: watch::Sender<Revs>,
    outcomes: Mutex<HashMap<Dirty, (Revs, Option<Failure>)>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            applied: watch::channel([0, 0]).0,
            outcomes: Mutex::new(HashMap::new()),
        }
    }
}

fn idx(src: Source) -> usize {
    match src {
        Source::Local => 0,
        Source::Cluster => 1,
    }
}

impl Progress {
    /// The revisions applied so far (local, cluster).
    pub fn applied_revs(&self) -> Revs {
        *self.applied.borrow()
    }

    /// Waits until revision `rev` of store `src` is applied (false: not within `limit`).
    pub async fn wait(&self, src: Source, rev: Rev, limit: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|r| r[idx(src)] >= rev))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The error of the last attempt on `obj` at or after revision `rev` of `src`, if it
    /// failed.
    pub fn error(&self, obj: &Dirty, src: Source, rev: Rev) -> Option<Failure> {
        let o = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        o.get(obj)
            .filter(|(r, _)| r[idx(src)] >= rev)
            .and_then(|(_, e)| e.clone())
    }

    fn record(&self, obj: Dirty, rev: Revs, err: Option<Failure>) {
        let mut o = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        o.insert(obj, (rev, err));
    }

    fn forget(&self, obj: &Dirty) {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(obj);
    }
}

/// Realized facts the API shows (the resolver's ports inside each sandbox).
#[derive(Default)]
pub struct Live {
    dns: Mutex<HashMap<String, (u16, u16)>>,
}

impl Live {
    pub fn dns(&self, sandbox: &str) -> Option<(u16, u16)> {
        self.dns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sandbox)
            .copied()
    }
    fn set_dns(&self, sandbox: &str, ports: Option<(u16, u16)>) {
        let mut m = self.dns.lock().unwrap_or_else(|p| p.into_inner());
        match ports {
            Some(p) => m.insert(sandbox.to_string(), p),
            None => m.remove(sandbox),
        };
    }
}

struct RealSvc {
    publish: Vec<PublishRec>,
    _reservations: Vec<OwnedFd>,
}

pub struct Reconciler {
    node: Arc<Node>,
    nets: HashMap<String, Arc<NetworkRec>>,
    sbs: HashMap<String, RealSb>,
    svcs: HashMap<String, Arc<ServiceRec>>,
    published: HashMap<String, RealSvc>,
    /// Name-table models last applied.
    net_models: HashMap<String, sdnet_resolver::model::Network>,
    /// Other nodes' sandboxes in the name tables.
    remote_models: HashMap<String, sdnet_resolver::model::Sandbox>,
    svc_models: HashMap<String, sdnet_resolver::model::Service>,
    /// What the host zone is built from: the name tables' changes, mirrored.
    host_feed: crate::daemon::hostdns::Feed,
    firewall: Option<String>,
    /// The ingress sandbox and the mesh table last applied in it.
    mesh: Option<(String, String)>,
    vips: Option<lb::VipMap>,
    cleaner: cleaner::Cleaner,
    /// CNI CHECK on full passes, and the sandboxes it found broken endpoints in.
    checker: cni::Checker,
    broken: mpsc::UnboundedReceiver<String>,
    kept: Arc<Mutex<Kept>>,
}

impl Reconciler {
    pub fn new(node: Arc<Node>, kept: Kept) -> Reconciler {
        let (checker, broken) = cni::Checker::new();
        Reconciler {
            node,
            nets: HashMap::new(),
            sbs: HashMap::new(),
            svcs: HashMap::new(),
            published: HashMap::new(),
            net_models: HashMap::new(),
            remote_models: HashMap::new(),
            svc_models: HashMap::new(),
            host_feed: Default::default(),
            firewall: None,
            mesh: None,
            vips: None,
            cleaner: cleaner::Cleaner::start(),
            checker,
            broken,
            kept: Arc::new(Mutex::new(kept)),
        }
    }

    /// Runs until the change feed ends.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Changes>) {
        let mut tick = tokio::time::interval(self.node.cfg.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let mut all = false;
            let mut full = false;
            let mut dirty = BTreeSet::new();
            let mut rev: [Option<Rev>; 2] = [None, None];
            tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => take(c, &mut rev, &mut dirty, &mut all),
                    None => return,
                },
                _ = tick.tick() => { all = true; full = true; }
                Some(id) = self.broken.recv() => {
                    // A CNI endpoint CHECK found broken: the round repairs it.
                    dirty.insert(Dirty::Sandbox(id));
                }
            }
            // Everything already queued joins this round.
            while let Ok(c) = rx.try_recv() {
                take(c, &mut rev, &mut dirty, &mut all);
            }
            while let Ok(id) = self.broken.try_recv() {
                dirty.insert(Dirty::Sandbox(id));
            }
            if all && rev.iter().any(Option::is_some) {
                // Start-up: check the kernel too.
                full = true;
            }
            self.round(if all { None } else { Some(dirty) }, full).await;
            self.node.progress.applied.send_modify(|a| {
                for (i, r) in rev.iter().enumerate() {
                    if let Some(r) = r {
                        a[i] = a[i].max(*r);
                    }
                }
            });
        }
    }

    async fn round(&mut self, dirty: Option<BTreeSet<Dirty>>, full: bool) {
        let started = std::time::Instant::now();
        let d = self.node.cache.read();
        let (mut nets, mut sbs, mut svcs) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        let me = self.node.node_id().to_string();
        let (mut remotes, mut peer_nets) = (BTreeSet::new(), BTreeSet::new());
        match &dirty {
            None => {
                remotes.extend(cluster::remote_sandboxes(&d, &me));
                remotes.extend(self.remote_models.keys().cloned());
                peer_nets.extend(
                    d.networks
                        .values()
                        .filter(|n| n.rec.scope == Scope::Swarm)
                        .map(|n| n.rec.id.clone()),
                );
                nets.extend(d.networks.keys().cloned());
                nets.extend(self.nets.keys().cloned());
                sbs.extend(d.sandboxes.keys().cloned());
                sbs.extend(self.sbs.keys().cloned());
                svcs.extend(d.services.keys().cloned());
                svcs.extend(self.svcs.keys().cloned());
            }
            Some(set) => {
                for x in set {
                    match x {
                        Dirty::Network(id) => {
                            nets.insert(id.clone());
                            sbs.extend(d.members(id).cloned());
                        }
                        Dirty::Sandbox(id) => {
                            sbs.insert(id.clone());
                        }
                        Dirty::Service(id) => {
                            svcs.insert(id.clone());
                            // Visibility of its tasks follows its health check.
                            sbs.extend(d.tasks_of(id).cloned());
                        }
                        Dirty::Peers(net) => {
                            peer_nets.insert(net.clone());
                        }
                        Dirty::Remote(id) => {
                            remotes.insert(id.clone());
                        }
                        Dirty::Nodes => {
                            // A node's tunnel endpoint may have moved.
                            peer_nets.extend(
                                d.networks
                                    .values()
                                    .filter(|n| n.rec.scope == Scope::Swarm)
                                    .map(|n| n.rec.id.clone()),
                            );
                        }
                    }
                }
            }
        }
        if dirty.is_some() {
            // Sandboxes linking to a changed one follow it (by name: the one it had when
            // last applied, and the one it has now).
            let names: BTreeSet<&str> = sbs
                .iter()
                .flat_map(|id| {
                    let now = d.sandboxes.get(id.as_str()).map(|s| s.rec.name.as_str());
                    [now, self.sbs.get(id).map(|r| r.name.as_str())]
                })
                .flatten()
                .collect();
            let linkers: Vec<String> = names
                .into_iter()
                .flat_map(|n| d.linkers_of(n))
                .cloned()
                .collect();
            sbs.extend(linkers);
        }
        let links = if full {
            match self.node.host.links().await {
                Ok(l) => Some(l),
                Err(e) => {
                    warn!("listing links: {e:#}");
                    None
                }
            }
        } else {
            None
        };

        // 1. Networks that exist: their drivers' objects.
        for id in &nets {
            let Some(n) = d.networks.get(id.as_str()) else {
                continue;
            };
            let driver = self.node.drivers.get(n.rec.driver);
            let same = self.nets.get(id).is_some_and(|r| **r == *n.rec);
            let intact = links
                .as_ref()
                .is_none_or(|l| driver.network_intact(&n.rec, l));
            if same && intact {
                continue;
            }
            if !intact {
                info!(network = %n.rec.name, "repairing the network");
            }
            let r = driver.ensure_network(&n.rec).await;
            let err = r.as_ref().err().map(Failure::of);
            if let Some(e) = &err {
                warn!(network = %n.rec.name, "{e}");
            } else {
                self.nets.insert(id.clone(), n.rec.clone());
            }
            self.node
                .progress
                .record(Dirty::Network(id.clone()), [d.rev, d.cluster_rev], err);
        }

        // 2. Names: additions and changes before kernel work, removals before teardown.
        self.names(&d, &nets, &sbs, &svcs, &remotes, &me);

        // Overlay networks whose local membership may change this round.
        let swarm = |net: &str| {
            d.networks
                .get(net)
                .is_some_and(|n| n.rec.scope == Scope::Swarm)
                || self.nets.get(net).is_some_and(|n| n.scope == Scope::Swarm)
        };
        for id in &sbs {
            peer_nets.extend(
                d.endpoints_of(id)
                    .into_iter()
                    .map(|e| e.rec.network.clone())
                    .filter(|n| swarm(n)),
            );
            if let Some(r) = self.sbs.get(id) {
                peer_nets.extend(r.eps.keys().filter(|n| swarm(n)).cloned());
            }
        }

        // 3. Sandboxes.
        let mut work = Vec::new();
        for id in &sbs {
            match (d.sandboxes.get(id.as_str()), self.sbs.remove(id)) {
                (Some(rec), r) => {
                    let r = r.unwrap_or_else(|| RealSb::new(&rec.rec));
                    work.push((id.clone(), r));
                }
                (None, Some(r)) => {
                    let left = sandbox::teardown(&self.node, id, r).await;
                    self.cleaner.push(self.node.clone(), left).await;
                    self.node.progress.forget(&Dirty::Sandbox(id.clone()));
                    info!(sandbox = %id, "sandbox removed");
                }
                (None, None) => {}
            }
        }
        let node = self.node.clone();
        let kept = self.kept.clone();
        let links_ref = links.as_ref();
        let d_ref = &d;
        let done: Vec<(String, RealSb, anyhow::Result<()>)> = futures::stream::iter(work)
            .map(|(id, mut r)| {
                let (node, kept) = (node.clone(), kept.clone());
                async move {
                    let res = sandbox::realize(&node, d_ref, &id, &mut r, links_ref, kept).await;
                    (id, r, res)
                }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        for (id, r, res) in done {
            let err = res.err().map(|e| Failure::of(&e));
            if let Some(e) = &err {
                warn!(sandbox = %r.name, "{e}");
            }
            self.node
                .progress
                .record(Dirty::Sandbox(id.clone()), [d.rev, d.cluster_rev], err);
            self.sbs.insert(id, r);
        }

        // 3b. Overlay data paths (made with the first local endpoint, gone with the last), then
        // this node's endpoints published for the others.
        if self.node.cluster.is_some() {
            for net in &peer_nets {
                let Some(n) = d
                    .networks
                    .get(net.as_str())
                    .map(|n| n.rec.clone())
                    .or_else(|| self.nets.get(net).cloned())
                else {
                    continue;
                };
                let local = self
                    .sbs
                    .values()
                    .filter(|r| r.eps.contains_key(net))
                    .count();
                let peers = cluster::peers_of(&d, &me, net);
                if let Err(e) = self
                    .node
                    .drivers
                    .get(n.driver)
                    .sync_peers(&n, local, &peers)
                    .await
                {
                    warn!(network = %n.name, "overlay data path: {e:#}");
                }
            }
            cluster::publish(&self.node, &d, cluster::wanted(&me, &self.sbs, &d)).await;
            if full {
                cluster::release_orphans(&self.node, &d).await;
                cluster::reclaim(&self.node, &d, &self.sbs).await;
            }
        }

        // 4. Services' published ports, then removed networks.
        for id in &svcs {
            self.service(&d, id);
        }
        for id in &nets {
            if d.networks.contains_key(id.as_str()) {
                continue;
            }
            if let Some(n) = self.nets.remove(id) {
                // A barrier: the links of removed sandboxes go before their bridge.
                self.cleaner.barrier().await;
                if let Err(e) = self.node.drivers.get(n.driver).remove_network(&n).await {
                    warn!(network = %n.name, "{e:#}");
                }
                info!(network = %n.name, "network removed");
            }
            self.node.progress.forget(&Dirty::Network(id.clone()));
        }

        // 5. VIP tables in client sandboxes, then the firewall.
        self.load_balancers(&d, &sbs, full).await;
        self.ingress(&d).await;
        let text = firewall::for_desired(
            &d,
            self.node.cluster.as_ref().map(|c| c.data_port),
            self.node.node_id(),
        );
        if full || self.firewall.as_ref() != Some(&text) {
            let host = self.node.host.clone();
            let t = text.clone();
            match tokio::task::spawn_blocking(move || host.apply_nft(&t)).await {
                Ok(Ok(())) => self.firewall = Some(text),
                Ok(Err(e)) => {
                    warn!("firewall: {e:#}");
                    self.firewall = None;
                }
                Err(e) => warn!("firewall thread: {e}"),
            }
        }
        if full {
            // Overlay data paths in use: those with a local endpoint.
            let overlays: HashSet<String> = self
                .sbs
                .values()
                .flat_map(|r| r.eps.values())
                .filter(|(_, _, n)| n.scope == Scope::Swarm)
                .map(|(_, _, n)| crate::daemon::config::short(&n.id).to_string())
                .collect();
            let unknown = gc::collect(
                &self.node,
                &d,
                &self.kept,
                &overlays,
                &self.cleaner.pending(),
            )
            .await;
            // Deleted in the background: never a reason for a create to wait.
            self.cleaner.remove_links(self.node.clone(), unknown).await;
            self.rehold().await;
            // CNI endpoints: CHECK, beside the next rounds.
            let jobs: Vec<cni::Job> = self
                .sbs
                .iter()
                .flat_map(|(id, r)| {
                    r.eps
                        .values()
                        .filter(|(_, _, n)| n.driver == DriverKind::Cni)
                        .map(|(_, _, n)| cni::Job {
                            sandbox: id.clone(),
                            network: n.id.clone(),
                        })
                })
                .collect();
            self.checker.sweep(self.node.clone(), jobs);
        }
        self.node.metrics.reconciled(started.elapsed());
        debug!(
            rev = d.rev,
            networks = nets.len(),
            sandboxes = sbs.len(),
            full,
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "reconciled"
        );
    }

    /// Gives the keeper again whatever it lost (it was killed, and restarted on our next call).
    async fn rehold(&self) {
        let mut want: Vec<(String, Arc<dyn AsRawFd + Send + Sync>)> = Vec::new();
        for (id, r) in &self.sbs {
            if let Some(ns) = &r.ns {
                want.push((sandbox::kept_key(id, "netns"), ns.clone()));
            }
            if let Some(l) = &r.dns {
                want.push((sandbox::kept_key(id, "udp"), l.sockets.0.clone()));
                want.push((sandbox::kept_key(id, "tcp"), l.sockets.1.clone()));
            }
            if let Some(p) = r.proc.filter(crate::daemon::supervisor::alive)
                && let Ok(fd) = crate::daemon::supervisor::pidfd_open(p.pid)
            {
                want.push((sandbox::kept_key(id, "proc"), Arc::new(fd)));
            }
        }
        let keeper = self.node.keeper.clone();
        let r = tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
            let held: std::collections::HashSet<String> = keeper.keys("sb/")?.into_iter().collect();
            let mut n = 0;
            for (key, fd) in want {
                if !held.contains(&key) {
                    keeper.hold(&key, fd.as_raw_fd())?;
                    n += 1;
                }
            }
            Ok(n)
        })
        .await;
        match r {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(descriptors = n, "handed the keeper what it had lost"),
            Ok(Err(e)) => warn!("keeper: {e:#}"),
            Err(e) => warn!("keeper thread: {e}"),
        }
    }

    /// Reserves (or releases) a service's published host ports.
    fn service(&mut self, d: &Desired, id: &str) {
        let Some(s) = d.services.get(id) else {
            self.svcs.remove(id);
            self.published.remove(id);
            self.node.progress.forget(&Dirty::Service(id.to_string()));
            return;
        };
        self.svcs.insert(id.to_string(), s.rec.clone());
        if self
            .published
            .get(id)
            .is_some_and(|p| p.publish == s.rec.publish)
        {
            self.node
                .progress
                .record(Dirty::Service(id.to_string()), [d.rev, d.cluster_rev], None);
            return;
        }
        self.published.remove(id);
        let mut res = Vec::new();
        let mut err = None;
        for p in &s.rec.publish {
            match sandbox::reserve(p) {
                Ok(fd) => res.push(fd),
                Err(e) => {
                    err = Some(Failure::of(&e));
                    break;
                }
            }
        }
        if let Some(e) = &err {
            warn!(service = %s.rec.name, "{e}");
        } else {
            self.published.insert(
                id.to_string(),
                RealSvc {
                    publish: s.rec.publish.clone(),
                    _reservations: res,
                },
            );
        }
        self.node
            .progress
            .record(Dirty::Service(id.to_string()), [d.rev, d.cluster_rev], err);
    }

    /// The routing mesh's table in this node's ingress sandbox (made whole when it changes).
    async fn ingress(&mut self, d: &Arc<Desired>) {
        let Some((id, ifname, _)) = ingress::sandbox(d) else {
            self.mesh = None;
            return;
        };
        let Some(ns) = self.sbs.get(&id).and_then(|r| r.ns.clone()) else {
            return;
        };
        let text = ingress::ruleset(&ingress::ports(d, self.node.node_id()), &ifname);
        if self.mesh.as_ref() == Some(&(id.clone(), text.clone())) {
            return;
        }
        let t = text.clone();
        let done = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            sdnet_netstack::sysctl::set(&ns, "net.ipv4.ip_forward", "1")?;
            sdnet_netstack::nft::apply(&ns, &t)?;
            Ok(())
        })
        .await;
        match done {
            Ok(Ok(())) => self.mesh = Some((id, text)),
            Ok(Err(e)) => {
                warn!("routing mesh: {e:#}");
                self.mesh = None;
            }
            Err(e) => warn!("routing mesh thread: {e}"),
        }
    }

    /// Brings every affected sandbox's VIP table in line with the visible tasks.
    async fn load_balancers(&mut self, d: &Arc<Desired>, sbs: &BTreeSet<String>, full: bool) {
        let vips = lb::vip_map(d, self.node.node_id());
        let changed = self.vips.as_ref() != Some(&vips);
        let ids: Vec<String> = if changed || full {
            self.sbs.keys().cloned().collect()
        } else {
            sbs.iter()
                .filter(|i| self.sbs.contains_key(*i))
                .cloned()
                .collect()
        };
        let mut work = Vec::new();
        for id in ids {
            let Some(r) = self.sbs.get_mut(&id) else {
                continue;
            };
            let Some(ns) = r.ns.clone() else { continue };
            let want = lb::want(d, &id, &vips);
            let verify = full && r.lb.as_ref().is_some_and(|h| !h.is_empty());
            if !verify && r.lb.as_ref() == Some(&want) {
                continue;
            }
            work.push((id, ns, r.name.clone(), r.lb.take(), want, verify));
        }
        let results: Vec<(String, Option<_>)> = futures::stream::iter(work)
            .map(|(id, ns, name, have, want, verify)| async move {
                let now = tokio::task::spawn_blocking(move || {
                    // A table deleted by hand is loaded again, whole.
                    let have = if verify && !lb::table_exists(&ns) {
                        info!(sandbox = %name, "restoring the LB table");
                        None
                    } else {
                        have
                    };
                    lb::sync(&ns, &name, have, want)
                })
                .await
                .ok()
                .flatten();
                (id, now)
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        for (id, now) in results {
            if let Some(r) = self.sbs.get_mut(&id) {
                r.lb = now;
            }
        }
        self.vips = Some(vips);
    }
}

fn take(c: Changes, rev: &mut [Option<Rev>; 2], dirty: &mut BTreeSet<Dirty>, all: &mut bool) {
    let r = &mut rev[idx(c.source)];
    *r = Some(r.map_or(c.rev, |x| x.max(c.rev)));
    match c.dirty {
        Some(set) => dirty.extend(set),
        None => *all = true,
    }
}
