//! The dispatcher: which node runs each task slot of the swarm services (services on overlay
//! networks, kept in the cluster store). One node at a time dispatches: the one holding the
//! `leader` key, which it puts under its own lease — when that node dies, the key goes with
//! its lease and another node takes it within the TTL.
//!
//! It writes `assign/<service>/<slot>` records only; each node's scheduler runs the slots
//! assigned to it (and drains tasks of slots that are no longer its own), and publishes its
//! tasks with its endpoints. A slot whose node is down, or no longer satisfies the service's
//! constraints, moves to the eligible node with the fewest tasks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::daemon::Node;
use crate::daemon::cluster::Cluster;
use crate::daemon::state::Desired;
use crate::daemon::store::schema::{self, AssignRec, NodeRec, ServiceRec};
use crate::daemon::store::{Compare, Rev, Txn};

/// Runs for the daemon's life (with a cluster store).
pub async fn run(node: Arc<Node>, c: Arc<Cluster>) {
    let mut rx = node.cache.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = false;
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
        let d = node.cache.read();
        match d.leader.clone() {
            None => {
                leading = false;
                // Nobody dispatches (first start, or the last one died): try to.
                let txn = Txn::new()
                    .when(Compare::Absent(schema::LEADER.to_string()))
                    .put_leased(schema::LEADER, c.id.as_bytes().to_vec(), c.lease());
                if let Err(e) = c.store.txn(txn).await {
                    warn!("taking the dispatcher's role: {e}");
                }
            }
            Some((id, rev)) if id == c.id => {
                if !leading {
                    info!(node = %c.name, "this node dispatches the swarm services' tasks");
                    leading = true;
                }
                dispatch(&c, &d, rev).await;
            }
            Some(_) => leading = false,
        }
    }
}

/// Brings every swarm service's assignments in line with its replicas, placement and the live
/// nodes. `leader_rev`: the leader key as this node holds it (every write is conditional on
/// it, so a node that lost the role meanwhile writes nothing).
async fn dispatch(c: &Cluster, d: &Desired, leader_rev: Rev) {
    let mut live: Vec<&NodeRec> = d
        .nodes
        .values()
        .map(|n| n.rec.as_ref())
        .filter(|n| d.alive.contains(&n.id))
        .collect();
    live.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    // Tasks per node over every swarm service, as assigned now.
    let mut load: HashMap<String, usize> = HashMap::new();
    for m in d.assign.values() {
        for a in m.values() {
            *load.entry(a.rec.node.clone()).or_default() += 1;
        }
    }
    for svc in d.services.values().map(|s| s.rec.as_ref()) {
        if !d.swarm_service(svc) {
            continue;
        }
        let have: BTreeMap<u32, String> = d
            .assign
            .get(svc.id.as_str())
            .into_iter()
            .flat_map(|m| m.iter())
            .map(|(slot, a)| (*slot, a.rec.node.clone()))
            .collect();
        let want = placement(svc, &have, &live, &mut load);
        let mut txn = Txn::new().when(Compare::ModRev(schema::LEADER.to_string(), leader_rev));
        let mut n = 0;
        for (slot, node) in &want {
            if have.get(slot) != Some(node) {
                let rec = AssignRec { node: node.clone() };
                txn = txn.put(schema::assign(&svc.id, *slot), schema::encode(&rec));
                n += 1;
            }
        }
        for slot in have.keys().filter(|s| !want.contains_key(s)) {
            txn = txn.delete(schema::assign(&svc.id, *slot));
            n += 1;
        }
        if n == 0 {
            continue;
        }
        // Only while the service is as read (a removal meanwhile leaves no assignments).
        if let Some(e) = d.services.get(svc.id.as_str()) {
            txn = txn.when(Compare::ModRev(schema::service(&svc.id), e.rev));
        }
        match c.store.txn(txn).await {
            Ok(_) => info!(service = %svc.name, changes = n, "task slots assigned"),
            Err(e) => warn!(service = %svc.name, "assigning task slots: {e}"),
        }
    }
}

/// Where each slot of `svc` should run: a slot stays on its node while that node is live and
/// eligible; the others go to the eligible node with the fewest tasks (`load`, updated).
/// Global services get one slot per eligible node.
pub fn placement(
    svc: &ServiceRec,
    have: &BTreeMap<u32, String>,
    live: &[&NodeRec],
    load: &mut HashMap<String, usize>,
) -> BTreeMap<u32, String> {
    let eligible: Vec<&NodeRec> = live
        .iter()
        .copied()
        .filter(|n| svc.placement.constraints.iter().all(|c| c.allows(n)))
        .collect();
    let ok = |id: &str| eligible.iter().any(|n| n.id == id);
    let mut want: BTreeMap<u32, String> = BTreeMap::new();
    let leave = |node: &str, load: &mut HashMap<String, usize>| {
        if let Some(l) = load.get_mut(node) {
            *l = l.saturating_sub(1);
        }
    };
    if svc.placement.global {
        for (slot, node) in have {
            if ok(node) && !want.values().any(|n| n == node) {
                want.insert(*slot, node.clone());
            } else {
                leave(node, load);
            }
        }
        let mut next = 1;
        for n in &eligible {
            if want.values().any(|x| *x == n.id) {
                continue;
            }
            while want.contains_key(&next) {
                next += 1;
            }
            want.insert(next, n.id.clone());
            *load.entry(n.id.clone()).or_default() += 1;
        }
        return want;
    }
    for (slot, node) in have {
        if *slot <= svc.replicas && ok(node) {
            want.insert(*slot, node.clone());
        } else {
            leave(node, load);
        }
    }
    for slot in 1..=svc.replicas {
        if want.contains_key(&slot) {
            continue;
        }
        let Some(n) = eligible
            .iter()
            .min_by_key(|n| load.get(n.id.as_str()).copied().unwrap_or(0))
        else {
            break;
        };
        want.insert(slot, n.id.clone());
        *load.entry(n.id.clone()).or_default() += 1;
    }
    want
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::store::schema::{ConstraintRec, PlacementRec};

    fn node(name: &str) -> NodeRec {
        NodeRec {
            id: format!("id-{name}"),
            name: name.into(),
            addr: "10.0.0.1".parse().unwrap(),
            data_port: 4789,
            joined: 0,
        }
    }

    fn svc(replicas: u32, global: bool, constraints: &[&str]) -> ServiceRec {
        ServiceRec {
            id: "s".into(),
            name: "web".into(),
            created: 0,
            command: vec!["true".into()],
            env: vec![],
            replicas,
            mode: Default::default(),
            networks: vec![],
            ports: vec![],
            publish: vec![],
            health: None,
            restart: Default::default(),
            drain_ms: 0,
            version: 1,
            placement: PlacementRec {
                global,
                constraints: constraints
                    .iter()
                    .map(|c| ConstraintRec::parse(c).unwrap())
                    .collect(),
            },
        }
    }

    fn count(w: &BTreeMap<u32, String>, id: &str) -> usize {
        w.values().filter(|n| *n == id).count()
    }

    #[test]
    fn replicas_spread_over_nodes_and_stay_put() {
        let (a, b, c) = (node("a"), node("b"), node("c"));
        let live = [&a, &b, &c];
        let mut load = HashMap::new();
        let w = placement(&svc(6, false, &[]), &BTreeMap::new(), &live, &mut load);
        assert_eq!(w.len(), 6);
        for n in &live {
            assert_eq!(count(&w, &n.id), 2, "{w:?}");
        }
        // Scaling to 7 keeps the six where they are.
        let mut load2 = HashMap::new();
        for n in w.values() {
            *load2.entry(n.clone()).or_default() += 1;
        }
        let w2 = placement(&svc(7, false, &[]), &w, &live, &mut load2);
        for (slot, n) in &w {
            assert_eq!(w2.get(slot), Some(n));
        }
        assert_eq!(w2.len(), 7);
    }

    #[test]
    fn a_dead_nodes_slots_move_and_scale_down_drops_high_slots() {
        let (a, b, c) = (node("a"), node("b"), node("c"));
        let mut load = HashMap::new();
        let w = placement(
            &svc(3, false, &[]),
            &BTreeMap::new(),
            &[&a, &b, &c],
            &mut load,
        );
        let on_c: Vec<u32> = w
            .iter()
            .filter(|(_, n)| **n == c.id)
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(on_c.len(), 1);
        let w2 = placement(&svc(3, false, &[]), &w, &[&a, &b], &mut load);
        assert_eq!(w2.len(), 3);
        assert_eq!(count(&w2, &c.id), 0);
        let w3 = placement(&svc(1, false, &[]), &w2, &[&a, &b], &mut load);
        assert_eq!(w3.keys().copied().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn constraints_and_global_mode() {
        let (a, b, c) = (node("a"), node("b"), node("c"));
        let live = [&a, &b, &c];
        let mut load = HashMap::new();
        let w = placement(
            &svc(4, false, &["node.name==b"]),
            &BTreeMap::new(),
            &live,
            &mut load,
        );
        assert_eq!(count(&w, &b.id), 4);
        let w = placement(
            &svc(3, false, &["node.name!=a"]),
            &BTreeMap::new(),
            &live,
            &mut load,
        );
        assert_eq!(count(&w, &a.id), 0);
        assert_eq!(w.len(), 3);
        // Nowhere to run: nothing assigned.
        let w = placement(
            &svc(2, false, &["node.name==zz"]),
            &BTreeMap::new(),
            &live,
            &mut load,
        );
        assert!(w.is_empty());
        // Global: one per eligible node, kept when nodes come and go.
        let g = placement(&svc(0, true, &[]), &BTreeMap::new(), &live, &mut load);
        assert_eq!(g.len(), 3);
        for n in &live {
            assert_eq!(count(&g, &n.id), 1);
        }
        let g2 = placement(&svc(0, true, &[]), &g, &[&a, &c], &mut load);
        assert_eq!(g2.len(), 2);
        assert_eq!(count(&g2, &b.id), 0);
        let g3 = placement(&svc(0, true, &["node.name!=c"]), &g2, &live, &mut load);
        assert_eq!(g3.len(), 2);
        assert_eq!(count(&g3, &c.id), 0);
    }

    #[test]
    fn constraint_syntax_errors_are_clear() {
        assert!(
            ConstraintRec::parse("node.name=a")
                .unwrap_err()
                .contains("KEY==VALUE")
        );
        assert!(
            ConstraintRec::parse("node.role==manager")
                .unwrap_err()
                .contains("unknown key")
        );
        assert!(
            ConstraintRec::parse("node.name==")
                .unwrap_err()
                .contains("no value")
        );
    }
}
