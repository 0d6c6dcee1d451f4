//! The service scheduler: makes each service's tasks match the service, by writing the store
//! like any API client — fill empty slots, replace exited tasks as the restart policy says,
//! roll tasks over to a new version one slot at a time (the old task drains once the new one
//! is in DNS), drain surplus ones (out of DNS and the LB at once, removed after the drain
//! delay). Also the one policy for plain sandboxes: `--rm` ones go when their process exits.
//!
//! It reacts to every change of the desired state (it reads the whole cache each pass) and to
//! a slow tick; each pass waits for its own writes to be applied, so the next pass sees them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::{NetworkAttach, SandboxCreate};
use crate::daemon::Node;
use crate::daemon::api::{self, ApiResult, sandboxes};
use crate::daemon::state::{Desired, Revs, Source};
use crate::daemon::store::schema::{self, Restart, SandboxRec, ServiceRec, TaskRef};
use crate::daemon::store::{Compare, Rev, Txn};

/// Which cache revisions (of both stores) the scheduler has fully acted on.
pub struct SchedProgress(watch::Sender<Revs>);

impl Default for SchedProgress {
    fn default() -> Self {
        SchedProgress(watch::channel([0, 0]).0)
    }
}

impl SchedProgress {
    pub async fn wait(&self, src: Source, rev: Rev, limit: Duration) -> bool {
        let mut rx = self.0.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|r| r[src.idx()] >= rev))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The task slots of a service this node must run: all of them for a service of this node
/// alone (bridge networks), the ones the dispatcher assigned to this node for a swarm one.
pub fn my_slots(d: &Desired, svc: &ServiceRec, me: &str) -> Vec<u32> {
    if !d.swarm_service(svc) {
        let n = if svc.placement.global {
            1
        } else {
            svc.replicas
        };
        return (1..=n).collect();
    }
    d.assign
        .get(svc.id.as_str())
        .into_iter()
        .flat_map(|m| m.iter())
        .filter(|(_, a)| a.rec.node == me)
        .map(|(slot, _)| *slot)
        .collect()
}

fn hex12() -> String {
    api::random_id()[..12].to_string()
}

struct Task {
    id: String,
    slot: u32,
    exited: bool,
    code: Option<i32>,
    draining: bool,
    version: u64,
    visible: bool,
}

fn tasks(d: &Desired, svc: &str) -> Vec<Task> {
    d.tasks_of(svc)
        .filter_map(|id| {
            let s = d.sandboxes.get(id.as_str())?;
            let t = s.rec.task.as_ref()?;
            let st = d.status_of(id);
            Some(Task {
                id: id.clone(),
                slot: t.slot,
                exited: st.is_some_and(|x| x.exited),
                code: st.and_then(|x| x.exit_code),
                draining: t.draining,
                version: t.version,
                visible: d.visible(id),
            })
        })
        .collect()
}

pub struct Scheduler {
    node: Arc<Node>,
    drains: HashMap<String, JoinHandle<()>>,
}

impl Scheduler {
    pub fn new(node: Arc<Node>) -> Scheduler {
        Scheduler {
            node,
            drains: HashMap::new(),
        }
    }

    pub async fn run(mut self) {
        let mut rx = self.node.cache.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(3));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tick.tick() => {}
            }
            let revs = *rx.borrow_and_update();
            self.pass().await;
            self.node.sched.0.send_replace(revs);
        }
    }

    async fn pass(&mut self) {
        let d = self.node.cache.read();
        self.drains
            .retain(|id, h| d.sandboxes.contains_key(id.as_str()) && !h.is_finished());
        let svcs: Vec<String> = d.services.keys().cloned().collect();
        // `--rm` sandboxes whose process exited, and tasks of a service that is gone (one
        // created while the service's removal was decided on an older state).
        let gone: Vec<String> = d
            .sandboxes
            .values()
            .filter(|s| {
                (s.rec.auto_remove && d.status_of(&s.rec.id).is_some_and(|x| x.exited))
                    || s.rec
                        .task
                        .as_ref()
                        .is_some_and(|t| !d.services.contains_key(t.service.as_str()))
            })
            .map(|s| s.rec.id.clone())
            .collect();
        drop(d);
        for id in gone {
            if let Err(e) = sandboxes::remove_by_id(&self.node, &id).await {
                warn!(sandbox = %id, "removing a --rm sandbox or an orphaned task: {e}");
            }
        }
        for s in svcs {
            self.converge(&s).await;
        }
        self.ingress_sandbox().await;
    }

    /// This node's entry into the routing mesh: an ingress sandbox on the `ingress` overlay
    /// while any swarm service publishes a port through the mesh (on every node, whether or
    /// not it runs a task of it); gone when none does.
    async fn ingress_sandbox(&self) {
        if self.node.cluster.is_none() {
            return;
        }
        let (need, have, ingress) = {
            let d = self.node.cache.read();
            let need = d
                .services
                .values()
                .any(|s| d.swarm_service(&s.rec) && s.rec.publish.iter().any(|p| !p.host_mode));
            let have = d
                .sandbox_by_name(sandboxes::INGRESS_SANDBOX)
                .map(|s| s.rec.id.clone());
            let ingress = d
                .network_by_name(api::overlay::INGRESS)
                .map(|n| n.rec.id.clone());
            (need, have, ingress)
        };
        match (need, have, ingress) {
            (true, None, Some(net)) => {
                match sandboxes::create_ingress_sandbox(&self.node, &net).await {
                    Ok(_) => info!("ingress sandbox up: this node answers the published ports"),
                    Err(e) => warn!("making the ingress sandbox: {e}"),
                }
            }
            (false, Some(id), _) => {
                if let Err(e) = sandboxes::remove_by_id(&self.node, &id).await {
                    warn!("removing the ingress sandbox: {e}");
                }
            }
            _ => {}
        }
    }

    /// Makes one service's tasks match it. Never fails: problems are logged and the next
    /// change or tick tries again.
    async fn converge(&mut self, svc_id: &str) {
        let Some(svc) = self
            .node
            .cache
            .read()
            .services
            .get(svc_id)
            .map(|s| s.rec.clone())
        else {
            return;
        };
        let me = self.node.node_id().to_string();
        let slots = my_slots(&self.node.cache.read(), &svc, &me);
        // Exited tasks: replaced as the restart policy says (the dead one goes first).
        let all = tasks(&self.node.cache.read(), svc_id);
        for t in all.iter().filter(|t| t.exited) {
            let replace = match svc.restart {
                Restart::Any => true,
                Restart::OnFailure => t.code != Some(0),
                Restart::None => false,
            };
            if (replace || !slots.contains(&t.slot))
                && let Err(e) = sandboxes::remove_by_id(&self.node, &t.id).await
            {
                warn!(service = %svc.name, "removing an exited task: {e}");
            }
        }
        let all = tasks(&self.node.cache.read(), svc_id);
        for &slot in &slots {
            if !all.iter().any(|t| t.slot == slot) {
                self.create_task(&svc, slot).await;
            }
        }
        // Rolling update: one slot at a time gets a new-version task; the old one drains once
        // the new one is in DNS.
        let all = tasks(&self.node.cache.read(), svc_id);
        let live: Vec<&Task> = all.iter().filter(|t| !t.exited && !t.draining).collect();
        let rolling = slots
            .iter()
            .copied()
            .find(|s| live.iter().filter(|t| t.slot == *s).count() > 1);
        match rolling {
            Some(slot) => {
                let ready = live
                    .iter()
                    .any(|t| t.slot == slot && t.version == svc.version && t.visible);
                if ready {
                    for t in live
                        .iter()
                        .filter(|t| t.slot == slot && t.version < svc.version)
                    {
                        self.drain(&t.id, svc.drain_ms).await;
                    }
                }
            }
            None => {
                // One slot at a time in the whole cluster: the lowest slot whose old version
                // still serves, wherever it is (every node sees the same one; a draining,
                // exited or unhealthy old task holds nobody up).
                let remote_old = {
                    let d = self.node.cache.read();
                    d.remote_tasks(svc_id, &me)
                        .filter_map(|p| p.task.as_ref())
                        .filter(|t| t.version < svc.version && t.healthy)
                        .map(|t| t.slot)
                        .min()
                };
                if let Some(old) = live
                    .iter()
                    .filter(|t| slots.contains(&t.slot) && t.version < svc.version)
                    .min_by_key(|t| t.slot)
                    && remote_old.is_none_or(|r| old.slot < r)
                {
                    self.create_task(&svc, old.slot).await;
                }
            }
        }
        // Scale down (or a slot moved to another node): tasks of slots not ours drain.
        let all = tasks(&self.node.cache.read(), svc_id);
        for t in all
            .iter()
            .filter(|t| !slots.contains(&t.slot) && !t.draining && !t.exited)
        {
            self.drain(&t.id, svc.drain_ms).await;
        }
        // Draining tasks without a timer (a restart lost it) get one.
        let unarmed: Vec<String> = all
            .iter()
            .filter(|t| t.draining && !self.drains.contains_key(&t.id))
            .map(|t| t.id.clone())
            .collect();
        for id in unarmed {
            self.arm(&id, svc.drain_ms);
        }
    }

    async fn create_task(&self, svc: &ServiceRec, slot: u32) {
        let name = format!("{}.{}.{}", svc.name, slot, hex12());
        let req = SandboxCreate {
            name: Some(name.clone()),
            networks: svc
                .networks
                .iter()
                .map(|n| NetworkAttach {
                    network: n.network.clone(),
                    ..NetworkAttach::default()
                })
                .collect(),
            command: svc.command.clone(),
            env: svc.env.clone(),
            ..SandboxCreate::default()
        };
        let task = TaskRef {
            service: svc.id.clone(),
            slot,
            version: svc.version,
            draining: false,
        };
        match sandboxes::create(&self.node, req, Some(task)).await {
            Ok(_) => info!(task = %name, "task started"),
            Err(e) => warn!(service = %svc.name, slot, "starting a task: {e}"),
        }
    }

    /// Takes a task out of DNS and the LB now (the flag is in the store); removes it after the
    /// drain delay.
    async fn drain(&mut self, id: &str, drain_ms: u64) {
        let r: ApiResult<Rev> = api::write(&self.node, |d| {
            let Some(s) = d.sandboxes.get(id) else {
                return Ok(Txn::new());
            };
            let mut rec: SandboxRec = (*s.rec).clone();
            match rec.task.as_mut() {
                Some(t) if !t.draining => t.draining = true,
                _ => return Ok(Txn::new()),
            }
            Ok(Txn::new()
                .when(Compare::ModRev(schema::sandbox(id), s.rev))
                .put(schema::sandbox(id), schema::encode(&rec)))
        })
        .await;
        match r {
            Ok(rev) => {
                let _ = api::applied(&self.node, rev).await;
                info!(task = %id, drain_ms, "draining");
                self.arm(id, drain_ms);
            }
            Err(e) => warn!(task = %id, "draining: {e}"),
        }
    }

    fn arm(&mut self, id: &str, drain_ms: u64) {
        let node = self.node.clone();
        let tid = id.to_string();
        let h = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(drain_ms)).await;
            if let Err(e) = sandboxes::remove_by_id(&node, &tid).await {
                warn!(task = %tid, "removing a drained task: {e}");
            }
        });
        if let Some(old) = self.drains.insert(id.to_string(), h) {
            old.abort();
        }
    }
}
