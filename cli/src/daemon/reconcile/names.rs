//! The name tables' side of a round: one batch of changes (networks and services, then
//! sandboxes, this node's and other nodes', then removals), mirrored into the host zone.

use std::collections::BTreeSet;

use sdnet_resolver::Change;
use tracing::{debug, warn};

use super::{Reconciler, cluster, model};
use crate::daemon::state::Desired;

impl Reconciler {
    /// One batch of name-table changes for the objects of this round.
    pub(super) fn names(
        &mut self,
        d: &Desired,
        nets: &BTreeSet<String>,
        sbs: &BTreeSet<String>,
        svcs: &BTreeSet<String>,
        remotes: &BTreeSet<String>,
        me: &str,
    ) {
        let mut adds = Vec::new();
        let mut removes = Vec::new();
        let mut zone_changed = false;
        for id in nets {
            match d.networks.get(id.as_str()) {
                Some(n) => {
                    let extra = crate::daemon::hostdns::NetExtra {
                        served: n.rec.host_dns_on(),
                        subnets: n.rec.subnets.iter().map(|s| s.subnet).collect(),
                    };
                    zone_changed |= self.host_feed.set_extra(id, extra);
                    let m = model::network(&n.rec);
                    if self.net_models.get(id) != Some(&m) {
                        self.net_models.insert(id.clone(), m.clone());
                        adds.push((None, Change::UpsertNetwork(m)));
                    }
                }
                None => {
                    if self.net_models.remove(id).is_some() {
                        removes.push((None, Change::RemoveNetwork(id.clone())));
                    }
                }
            }
        }
        for id in svcs {
            match d.services.get(id.as_str()) {
                Some(s) => {
                    let m = model::service(&s.rec);
                    if self.svc_models.get(id) != Some(&m) {
                        self.svc_models.insert(id.clone(), m.clone());
                        adds.push((None, Change::UpsertService(m)));
                    }
                }
                None => {
                    if self.svc_models.remove(id).is_some() {
                        removes.push((None, Change::RemoveService(id.clone())));
                    }
                }
            }
        }
        let mut sb_changes = Vec::new();
        for id in sbs {
            let want = model::sandbox(d, id);
            let have = self.sbs.get_mut(id);
            match (want, have) {
                (Some(m), Some(r)) if r.model.as_ref() == Some(&m) => {}
                (Some(m), Some(r)) => {
                    r.model = Some(m.clone());
                    sb_changes.push((Some(id.clone()), Change::UpsertSandbox(m)));
                }
                (Some(m), None) => sb_changes.push((Some(id.clone()), Change::UpsertSandbox(m))),
                (None, Some(r)) => {
                    r.model = None;
                    sb_changes.push((Some(id.clone()), Change::RemoveSandbox(id.clone())));
                }
                (None, None) => {}
            }
        }
        for id in remotes {
            if self.sbs.contains_key(id) {
                continue; // one of ours (its published copy)
            }
            match cluster::remote_model(d, me, id) {
                Some(m) if self.remote_models.get(id) == Some(&m) => {}
                Some(m) => {
                    self.remote_models.insert(id.clone(), m.clone());
                    sb_changes.push((None, Change::UpsertSandbox(m)));
                }
                None => {
                    if self.remote_models.remove(id).is_some() {
                        sb_changes.push((None, Change::RemoveSandbox(id.clone())));
                    }
                }
            }
        }
        // Networks and services first, sandboxes, then removals of services and networks.
        let all: Vec<(Option<String>, Change)> =
            adds.into_iter().chain(sb_changes).chain(removes).collect();
        // The host zone: the same changes, rebuilt before this round's revision is published.
        if let Some(hd) = &self.node.hostdns {
            for (_, c) in &all {
                self.host_feed.apply(c);
            }
            if zone_changed || !all.is_empty() {
                let t = std::time::Instant::now();
                hd.publish(&mut self.host_feed);
                self.node
                    .metrics
                    .hostdns_rebuild_seconds
                    .observe(t.elapsed().as_secs_f64());
            }
        }
        if all.is_empty() {
            return;
        }
        let batch: Vec<Change> = all.iter().map(|(_, c)| c.clone()).collect();
        if let Err(e) = self.node.resolver.tables.apply(batch) {
            // One bad object must not hold back the rest: apply one by one.
            debug!("name batch refused ({e}): applying one by one");
            for (who, c) in all {
                if let Err(e) = self.node.resolver.tables.apply([c]) {
                    warn!(object = ?who, "names: {e}");
                    if let Some(r) = who.as_ref().and_then(|id| self.sbs.get_mut(id)) {
                        r.model = None;
                    }
                }
            }
        }
    }
}
