//! `sdctl events`: what happened to sandboxes, networks and services, in order. Events are
//! derived from the store's changes as the state cache applies them (whoever wrote them: an
//! API call, the scheduler, the status writer), one revision after the other, so their order
//! is the store's; `kill` (a signal, not a change of state) is emitted by its handler. A
//! bounded ring keeps the recent ones for `--since`; subscribers get new ones as they come.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::api::Event;
use crate::daemon::state::Desired;
use crate::daemon::store::schema::{self, Key};
use crate::daemon::store::{self as store, EventKind};

/// How many past events `--since` can reach back to.
const RING: usize = 4096;

/// An event before it gets its time: (type, action, id, name, attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw {
    pub kind: &'static str,
    pub action: &'static str,
    pub id: String,
    pub name: String,
    pub attributes: BTreeMap<String, String>,
}

impl Raw {
    pub fn new(kind: &'static str, action: &'static str, id: &str, name: &str) -> Raw {
        Raw {
            kind,
            action,
            id: id.to_string(),
            name: name.to_string(),
            attributes: BTreeMap::new(),
        }
    }
    pub fn with(mut self, k: &str, v: impl ToString) -> Raw {
        self.attributes.insert(k.to_string(), v.to_string());
        self
    }
}

pub struct EventLog {
    ring: Mutex<(VecDeque<Arc<Event>>, u64)>,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            ring: Mutex::new((VecDeque::with_capacity(RING), 0)),
            tx: broadcast::channel(RING).0,
        }
    }
}

impl EventLog {
    /// Records events, in order, with strictly increasing times.
    pub fn emit(&self, raws: Vec<Raw>) {
        if raws.is_empty() {
            return;
        }
        let mut g = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        for r in raws {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            let t = now.max(g.1 + 1);
            g.1 = t;
            let ev = Arc::new(Event {
                time: humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(t))
                    .to_string(),
                time_nano: t,
                kind: r.kind.to_string(),
                action: r.action.to_string(),
                id: r.id,
                name: r.name,
                attributes: r.attributes,
            });
            if g.0.len() == RING {
                g.0.pop_front();
            }
            g.0.push_back(ev.clone());
            // Sent under the lock: a subscriber sees each event once, from the ring or here.
            let _ = self.tx.send(ev);
        }
    }

    /// The kept events at or after `since` (none without it), and the ones to come.
    pub fn subscribe(
        &self,
        since: Option<u64>,
    ) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let g = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let past = match since {
            Some(s) => g.0.iter().filter(|e| e.time_nano >= s).cloned().collect(),
            None => Vec::new(),
        };
        (past, self.tx.subscribe())
    }
}

/// The order of events within one revision: what is made before what uses it, what leaves
/// before what it leaves.
fn phase(r: &Raw) -> u8 {
    match (r.kind, r.action) {
        ("network", "create") | ("service", "create") => 0,
        ("sandbox", "create") => 1,
        ("network", "connect") => 2,
        ("network", "disconnect") => 4,
        ("sandbox", "destroy") => 5,
        ("network", "destroy") | ("service", "remove") => 6,
        _ => 3,
    }
}

/// The events of one batch of store changes, `prev` the state before it and `next` after.
pub fn derive(prev: &Desired, next: &Desired, batch: &[store::Event]) -> Vec<Raw> {
    let mut out = Vec::new();
    for ev in batch {
        let put = ev.kind == EventKind::Put;
        match schema::parse(&ev.kv.key) {
            Key::Network(id) => match (prev.networks.get(id), next.networks.get(id), put) {
                (None, Some(n), true) => out.push(Raw::new("network", "create", id, &n.rec.name)),
                (Some(n), None, false) => out.push(Raw::new("network", "destroy", id, &n.rec.name)),
                _ => {}
            },
            Key::Service(id) => match (prev.services.get(id), next.services.get(id)) {
                (None, Some(s)) => out.push(Raw::new("service", "create", id, &s.rec.name)),
                (Some(s), None) => out.push(Raw::new("service", "remove", id, &s.rec.name)),
                (Some(a), Some(b)) if a.rec.version != b.rec.version => {
                    out.push(Raw::new("service", "update", id, &b.rec.name))
                }
                _ => {}
            },
            Key::Sandbox(id) => match (prev.sandboxes.get(id), next.sandboxes.get(id)) {
                (None, Some(s)) => out.push(Raw::new("sandbox", "create", id, &s.rec.name)),
                (Some(s), None) => out.push(Raw::new("sandbox", "destroy", id, &s.rec.name)),
                (Some(a), Some(b)) if a.rec.paused != b.rec.paused => out.push(Raw::new(
                    "sandbox",
                    if b.rec.paused { "pause" } else { "unpause" },
                    id,
                    &b.rec.name,
                )),
                _ => {}
            },
            Key::Endpoint { net, sandbox } => {
                let was = prev
                    .endpoints
                    .get(sandbox)
                    .and_then(|m| m.get(net))
                    .is_some();
                let is = next
                    .endpoints
                    .get(sandbox)
                    .and_then(|m| m.get(net))
                    .is_some();
                if was == is {
                    continue;
                }
                let nname = next
                    .networks
                    .get(net)
                    .or_else(|| prev.networks.get(net))
                    .map_or_else(|| net.to_string(), |n| n.rec.name.clone());
                let sname = next
                    .sandboxes
                    .get(sandbox)
                    .or_else(|| prev.sandboxes.get(sandbox))
                    .map_or_else(|| sandbox.to_string(), |s| s.rec.name.clone());
                let action = if is { "connect" } else { "disconnect" };
                out.push(
                    Raw::new("network", action, net, &nname)
                        .with("sandbox", sname)
                        .with("sandbox_id", sandbox),
                );
            }
            Key::Status(id) => status(prev, next, id, &mut out),
            _ => {}
        }
    }
    out.sort_by_key(phase);
    out
}

fn status(prev: &Desired, next: &Desired, id: &str, out: &mut Vec<Raw>) {
    let Some(sb) = next.sandboxes.get(id).or_else(|| prev.sandboxes.get(id)) else {
        return;
    };
    let name = &sb.rec.name;
    let p = prev.status.get(id).map(|e| e.rec.clone());
    let Some(n) = next.status.get(id).map(|e| e.rec.clone()) else {
        return;
    };
    let p_pid = p.as_ref().and_then(|s| s.pid.filter(|_| !s.exited));
    if let Some(pid) = n.pid.filter(|_| !n.exited)
        && p_pid != Some(pid)
        && p.as_ref().is_none_or(|s| s.pid != Some(pid))
    {
        out.push(Raw::new("sandbox", "start", id, name).with("pid", pid));
        if p.as_ref()
            .is_some_and(|s| n.restart_count > s.restart_count)
        {
            out.push(
                Raw::new("sandbox", "restart", id, name).with("restartCount", n.restart_count),
            );
        }
    }
    if n.exited && n.pid.is_some() && p.as_ref().is_none_or(|s| !s.exited || s.pid != n.pid) {
        let code = n
            .exit_code
            .map_or_else(|| "unknown".to_string(), |c| c.to_string());
        out.push(Raw::new("sandbox", "die", id, name).with("exitCode", code));
        if sb.rec.stopped {
            out.push(Raw::new("sandbox", "stop", id, name));
        }
    }
    let health = |s: &schema::StatusRec| (s.healthy, s.unhealthy);
    if p.as_ref().map_or((false, false), |s| health(s)) != health(&n) && (n.healthy || n.unhealthy)
    {
        out.push(Raw::new("sandbox", "health_status", id, name).with(
            "health_status",
            if n.healthy { "healthy" } else { "unhealthy" },
        ));
    }
}
