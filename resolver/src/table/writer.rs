//! The writer: the model the tables are derived from, and the changes to it. A change derives
//! the records of every holder it affects before and after, and applies the difference to the
//! snapshot being built (unchanged records are not touched). Nothing derived is stored: the
//! model, compact (`sandboxes.rs`), is the only per-sandbox state the writer keeps.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use smallvec::SmallVec;

use super::entries::{Forwarding, NetTable, SHARED, View};
use super::holders::{Holders, Record};
use super::sandboxes::{Sandboxes, SbId, SbRec};
use super::{Change, HolderId, NetIdx, Snapshot};
use crate::model::{self, ModelError, Network, Sandbox, Service};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum HolderKey {
    Sandbox(SbId),
    Service(String),
}

pub(super) struct SvcRec {
    pub service: Service,
    pub holder: HolderId,
}

#[derive(Default)]
pub(super) struct Writer {
    /// Docker's or Podman's answers.
    pub policy: model::Policy,
    pub networks: HashMap<String, Network>,
    net_names: HashMap<String, String>,
    pub net_idx: HashMap<String, NetIdx>,
    next_net: NetIdx,
    pub sandboxes: Sandboxes,
    pub services: HashMap<String, SvcRec>,
    svc_names: HashMap<String, String>,
    /// Service ID → its task sandboxes.
    svc_tasks: HashMap<String, HashSet<SbId>>,
    /// Holder ids (sandbox views and services), never reused.
    next_holder: HolderId,
    pub holders: Holders,
}

/// A holder's records before a change, and a sandbox's sources (to move its view's).
struct Before {
    key: HolderKey,
    records: Vec<Record>,
    sources: SmallVec<[IpAddr; 2]>,
}

impl Writer {
    pub(super) fn with_policy(policy: model::Policy) -> Writer {
        Writer {
            policy,
            ..Writer::default()
        }
    }

    pub(super) fn resolve_net(&self, r: &str) -> Option<&Network> {
        self.networks.get(r).or_else(|| {
            self.net_names
                .get(&r.to_ascii_lowercase())
                .and_then(|id| self.networks.get(id))
        })
    }

    pub(super) fn resolve_service(&self, r: &str) -> Option<&SvcRec> {
        self.services.get(r).or_else(|| {
            self.svc_names
                .get(&r.to_ascii_lowercase())
                .and_then(|id| self.services.get(id))
        })
    }

    pub(super) fn sandbox(&self, id: &str) -> Option<&SbRec> {
        self.sandboxes.by_id.get(&SbId::parse(id)?)
    }

    fn new_holder(&mut self) -> HolderId {
        let h = self.next_holder;
        // 2^32 - 1 sandboxes and services created in one process before an id repeats; the
        // last value marks shared entries.
        self.next_holder = if h + 1 == SHARED { 0 } else { h + 1 };
        h
    }

    pub(super) fn apply(&mut self, snap: &mut Snapshot, c: Change) -> Result<(), ModelError> {
        match c {
            Change::UpsertNetwork(n) => self.upsert_network(snap, n),
            Change::RemoveNetwork(id) => self.remove_network(snap, &id),
            Change::UpsertService(s) => self.upsert_service(snap, s),
            Change::RemoveService(id) => self.remove_service(snap, &id),
            Change::UpsertSandbox(s) => self.upsert_sandbox(snap, &s),
            Change::RemoveSandbox(id) => {
                self.remove_sandbox(snap, &id);
                Ok(())
            }
        }
    }

    /// Holders whose records or view depend on a network: the sandboxes and services that
    /// refer to it (a scan: networks change rarely, and a change to a network with many
    /// sandboxes touches all of them anyway).
    fn network_users(&self, id: &str) -> Vec<HolderKey> {
        let on = |r: &str| self.resolve_net(r).is_some_and(|n| n.id == id);
        let sandboxes = self.sandboxes.by_id.iter();
        let sandboxes = sandboxes.filter(|(_, sb)| sb.endpoints.iter().any(|e| on(&e.network)));
        let services = self.services.iter();
        let services = services.filter(|(_, s)| s.service.networks.iter().any(|n| on(&n.network)));
        sandboxes
            .map(|(id, _)| HolderKey::Sandbox(*id))
            .chain(services.map(|(id, _)| HolderKey::Service(id.clone())))
            .collect()
    }

    fn before(&self, key: HolderKey) -> Before {
        let sources = match &key {
            HolderKey::Sandbox(id) => self
                .sandboxes
                .by_id
                .get(id)
                .map(|sb| sb.sources())
                .unwrap_or_default(),
            HolderKey::Service(_) => SmallVec::new(),
        };
        Before {
            records: self.holder_records(&key),
            key,
            sources,
        }
    }

    /// Applies the difference between a holder's records before a change and now, and
    /// refreshes a sandbox's view.
    fn after(&mut self, snap: &mut Snapshot, b: Before) {
        let holder = match &b.key {
            HolderKey::Sandbox(id) => self.sandboxes.by_id.get(id).map(|sb| sb.view),
            HolderKey::Service(id) => self.services.get(id).map(|s| s.holder),
        };
        let Some(holder) = holder else {
            return;
        };
        let new = self.holder_records(&b.key);
        for r in &b.records {
            if !new.contains(r) {
                self.holders.remove(snap, holder, r);
            }
        }
        for r in &new {
            if !b.records.contains(r) {
                self.holders.add(snap, holder, r);
            }
        }
        if let HolderKey::Sandbox(id) = &b.key {
            self.refresh_view(snap, id, &b.sources);
        }
    }

    fn refresh_view(&self, snap: &mut Snapshot, id: &SbId, old_sources: &[IpAddr]) {
        let Some(sb) = self.sandboxes.by_id.get(id) else {
            return;
        };
        let inflight = snap
            .views
            .get(&sb.view)
            .map(|v| v.inflight.clone())
            .unwrap_or_default();
        let view = self.sandbox_view(sb, inflight);
        snap.views.insert(sb.view, Arc::new(view));
        for ip in old_sources {
            if snap.by_source.get(ip) == Some(&sb.view) {
                snap.by_source.remove(*ip);
            }
        }
        for ip in sb.sources() {
            snap.by_source.insert(ip, sb.view);
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
        // Everything on this network depends on its name, TTLs, flags and upstreams: derive
        // its users' records before anything changes.
        let mut before = Vec::new();
        if let Some(old) = self.networks.get(&n.id) {
            if *old == n {
                return Ok(());
            }
            let users = self.network_users(&n.id);
            before = users.into_iter().map(|k| self.before(k)).collect();
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
        let inflight = snap
            .net_views
            .get(&idx)
            .map(|v| v.inflight.clone())
            .unwrap_or_default();
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
                inflight,
                links: Box::default(),
            }),
        );
        snap.nets_by_name.insert(lower.clone().into(), idx);
        self.net_names.insert(lower, n.id.clone());
        self.networks.insert(n.id.clone(), n);
        for b in before {
            self.after(snap, b);
        }
        Ok(())
    }

    fn remove_network(&mut self, snap: &mut Snapshot, id: &str) -> Result<(), ModelError> {
        let Some(id) = self.resolve_net(id).map(|n| n.id.clone()) else {
            return Ok(());
        };
        if let Some(u) = self.network_users(&id).first() {
            let what = match u {
                HolderKey::Sandbox(s) => format!("sandbox {}", self.sandboxes.by_id[s].name),
                HolderKey::Service(s) => format!("service {}", self.services[s].service.name),
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
        let (holder, old_name) = match self.services.get(&s.id) {
            Some(old) if old.service == s => return Ok(()),
            Some(old) => (old.holder, Some(old.service.name.to_ascii_lowercase())),
            None => (self.new_holder(), None),
        };
        // The service's VIP records and its tasks' names depend on it: derive them before
        // anything changes.
        let id = s.id.clone();
        let tasks = self.svc_tasks.get(&id).into_iter().flatten();
        let keys: Vec<HolderKey> = std::iter::once(HolderKey::Service(id.clone()))
            .chain(tasks.map(|t| HolderKey::Sandbox(*t)))
            .collect();
        let before: Vec<Before> = keys.into_iter().map(|k| self.before(k)).collect();
        if let Some(name) = old_name {
            self.svc_names.remove(&name);
        }
        self.svc_names.insert(lower, id.clone());
        self.services.insert(id, SvcRec { service: s, holder });
        for b in before {
            self.after(snap, b);
        }
        Ok(())
    }

    fn remove_service(&mut self, snap: &mut Snapshot, id: &str) -> Result<(), ModelError> {
        let Some(id) = self.resolve_service(id).map(|s| s.service.id.clone()) else {
            return Ok(());
        };
        if let Some(tasks) = self.svc_tasks.get(&id)
            && let Some(t) = tasks.iter().next()
        {
            return Err(ModelError::Invalid(format!(
                "service {id} still has task sandbox {}",
                self.sandboxes.by_id[t].name
            )));
        }
        let key = HolderKey::Service(id.clone());
        let records = self.holder_records(&key);
        if let Some(s) = self.services.remove(&id) {
            for r in &records {
                self.holders.remove(snap, s.holder, r);
            }
            self.svc_names.remove(&s.service.name.to_ascii_lowercase());
        }
        self.svc_tasks.remove(&id);
        Ok(())
    }

    pub(super) fn upsert_sandbox(
        &mut self,
        snap: &mut Snapshot,
        sb: &Sandbox,
    ) -> Result<(), ModelError> {
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
        let new_svc = match &sb.task {
            Some(t) => match self.resolve_service(&t.service) {
                Some(svc) => Some(svc.service.id.clone()),
                None => {
                    return Err(ModelError::Unknown {
                        owner: format!("sandbox {}", sb.name),
                        kind: "service",
                        what: t.service.clone(),
                    });
                }
            },
            None => None,
        };
        let Some(id) = SbId::parse(&sb.id) else {
            // check_sandbox_id accepted it, so this does not happen.
            return Err(ModelError::Invalid(format!("sandbox ID {}", sb.id)));
        };
        if let Some(svc) = &new_svc {
            self.svc_tasks.entry(svc.clone()).or_default().insert(id);
        }
        let old = self.sandboxes.by_id.get(&id);
        if old.is_some_and(|o| o.is(sb)) {
            return Ok(());
        }
        // A task may have moved between services (never in practice, but keep the index true).
        if let Some(old_svc) = old
            .and_then(|o| o.task())
            .and_then(|t| self.resolve_service(&t.service))
            .map(|s| s.service.id.clone())
            && Some(&old_svc) != new_svc.as_ref()
            && let Some(set) = self.svc_tasks.get_mut(&old_svc)
        {
            set.remove(&id);
        }
        let view = match old {
            Some(o) => o.view,
            None => self.new_holder(),
        };
        let before = self.before(HolderKey::Sandbox(id));
        let rec = SbRec::new(sb, view, &mut self.sandboxes.interner);
        self.sandboxes.by_id.insert(id, rec);
        self.after(snap, before);
        self.sandboxes.interner.prune_if_grown();
        Ok(())
    }

    fn remove_sandbox(&mut self, snap: &mut Snapshot, id: &str) {
        let Some(id) = SbId::parse(id) else {
            return;
        };
        let key = HolderKey::Sandbox(id);
        let records = self.holder_records(&key);
        let Some(sb) = self.sandboxes.by_id.remove(&id) else {
            return;
        };
        for r in &records {
            self.holders.remove(snap, sb.view, r);
        }
        if let Some(t) = sb.task()
            && let Some(svc) = self
                .resolve_service(&t.service)
                .map(|s| s.service.id.clone())
            && let Some(set) = self.svc_tasks.get_mut(&svc)
        {
            set.remove(&id);
        }
        snap.views.remove(sb.view);
        for ip in sb.sources() {
            if snap.by_source.get(&ip) == Some(&sb.view) {
                snap.by_source.remove(ip);
            }
        }
        drop(sb);
        self.sandboxes.interner.prune_if_grown();
    }
}
