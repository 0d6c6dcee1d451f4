//! A sandbox's process through its life: `start`, `stop`, `restart`, `pause` and `unpause`
//! change the sandbox's desired state (the reconciler makes the process match, and the
//! handler waits until it does); `kill` signals the process (a signal is not a state: the
//! restart policy decides what follows its death); `wait` blocks until the process exits.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::{ApiError, ApiResult, bad, lookup_err, settle, views, write};
use crate::api::*;
use crate::daemon::Node;
use crate::daemon::events::Raw;
use crate::daemon::state::{Desired, Dirty};
use crate::daemon::store::schema::{self, SandboxRec, StatusRec};
use crate::daemon::store::{Compare, Txn};
use crate::daemon::supervisor::{self, Proc};

/// How long `start` waits for the process to be started.
const START_LIMIT: Duration = Duration::from_secs(30);

/// The process of a sandbox if it runs.
fn running(st: Option<&StatusRec>) -> Option<Proc> {
    let st = st?;
    let p = Proc {
        pid: st.pid?,
        start_ticks: st.start_ticks,
    };
    (!st.exited && supervisor::alive(&p)).then_some(p)
}

/// The sandbox `r` (name, ID or prefix) with a command.
fn with_command<'a>(d: &'a Desired, r: &str) -> ApiResult<(&'a String, &'a SandboxRec)> {
    let id = d.sandbox_id(r).map_err(|e| lookup_err("sandbox", r, e))?;
    let rec = &d.sandboxes[id].rec;
    if rec.command.is_empty() {
        return bad(format!("sandbox {} has no command to run", rec.name));
    }
    if rec.task.is_some() {
        return bad(format!(
            "sandbox {} is a task of a service: use `sdctl service`",
            rec.name
        ));
    }
    Ok((id, rec))
}

/// Writes a changed copy of the sandbox's record; the sandbox's ID and the revision.
async fn change(
    node: &Node,
    r: &str,
    mut f: impl FnMut(&Desired, &SandboxRec) -> ApiResult<Option<SandboxRec>>,
) -> ApiResult<(String, Option<crate::daemon::store::Rev>)> {
    let mut id = String::new();
    let mut noop = false;
    let rev = write(node, |d| {
        let (sid, rec) = with_command(d, r)?;
        id = sid.clone();
        let Some(new) = f(d, rec)? else {
            noop = true;
            // Nothing to change: a transaction that only compares.
            return Ok(Txn::new().when(Compare::Exists(schema::sandbox(sid))));
        };
        let rev = d.sandboxes[sid].rev;
        Ok(Txn::new()
            .when(Compare::ModRev(schema::sandbox(sid), rev))
            .put(schema::sandbox(sid), schema::encode(&new)))
    })
    .await?;
    Ok((id, (!noop).then_some(rev)))
}

/// Waits until `done` holds for the sandbox's status (checked on every new state), at most
/// `limit`.
async fn until(
    node: &Node,
    id: &str,
    limit: Duration,
    done: impl Fn(&SandboxRec, Option<&StatusRec>) -> Option<ApiResult<()>>,
) -> ApiResult<()> {
    let mut rx = node.cache.subscribe();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        {
            let d = node.cache.read();
            let Some(sb) = d.sandboxes.get(id) else {
                return Err(ApiError::NotFound(format!("sandbox {id} was removed")));
            };
            if let Some(r) = done(&sb.rec, d.status_of(id)) {
                return r;
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ApiError::Internal(anyhow::anyhow!("daemon stopping"))),
            Err(_) => {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "the sandbox's process did not follow within {}s; it will",
                    limit.as_secs()
                )));
            }
        }
    }
}

/// Waits until the process of run `runs` was started (or failed to start).
async fn started(node: &Node, id: &str, runs: u64, limit: Duration) -> ApiResult<()> {
    until(node, id, limit, |_, st| {
        let st = st.filter(|s| s.run >= runs)?;
        match &st.error {
            Some(e) => Some(bad(format!("starting the process: {e}"))),
            None => st.pid.is_some().then_some(Ok(())),
        }
    })
    .await
}

fn info(node: &Node, id: &str) -> ApiResult<SandboxInfo> {
    let d = node.cache.read();
    views::sandbox(node, &d, id)
        .ok_or_else(|| ApiError::NotFound(format!("sandbox {id} not found")))
}

/// `sdctl start`: runs the command again (a no-op while it runs, as in Docker).
pub async fn start(node: &Node, r: &str) -> ApiResult<SandboxInfo> {
    let mut runs = 0;
    let (id, rev) = change(node, r, |d, rec| {
        let st = d.status_of(&rec.id);
        if !rec.stopped && running(st).is_some() && st.is_some_and(|s| s.run >= rec.runs) {
            return Ok(None);
        }
        let mut new = rec.clone();
        new.stopped = false;
        new.paused = false;
        new.runs += 1;
        runs = new.runs;
        Ok(Some(new))
    })
    .await?;
    if rev.is_some() {
        started(node, &id, runs, START_LIMIT).await?;
    }
    info(node, &id)
}

fn stop_ms(req: &StopRequest) -> u64 {
    req.timeout_s
        .map_or(schema::default_stop_ms(), |s| s.saturating_mul(1000))
        .min(24 * 3600 * 1000)
}

/// `sdctl stop`: SIGTERM, SIGKILL after the timeout; the sandbox keeps its namespace,
/// addresses and names. Returns once the process exited.
pub async fn stop(node: &Node, r: &str, req: &StopRequest) -> ApiResult<SandboxInfo> {
    let mut limit = Duration::ZERO;
    let (id, _) = change(node, r, |_, rec| {
        let mut new = rec.clone();
        new.stopped = true;
        new.paused = false;
        new.stop_timeout_ms = stop_ms(req);
        limit = Duration::from_millis(new.stop_timeout_ms) + Duration::from_secs(10);
        Ok((new != *rec).then_some(new))
    })
    .await?;
    until(node, &id, limit, |_, st| {
        st.is_none_or(|s| s.exited || s.pid.is_none())
            .then_some(Ok(()))
    })
    .await?;
    info(node, &id)
}

/// `sdctl restart`: stop (as `stop`), then start (as `start`).
pub async fn restart(node: &Node, r: &str, req: &StopRequest) -> ApiResult<SandboxInfo> {
    let mut runs = 0;
    let mut limit = Duration::ZERO;
    let (id, _) = change(node, r, |_, rec| {
        let mut new = rec.clone();
        new.stopped = false;
        new.paused = false;
        new.runs += 1;
        new.stop_timeout_ms = stop_ms(req);
        runs = new.runs;
        limit = Duration::from_millis(new.stop_timeout_ms) + START_LIMIT;
        Ok(Some(new))
    })
    .await?;
    started(node, &id, runs, limit).await?;
    info(node, &id)
}

/// A signal by name (`KILL`, `SIGUSR1`, `usr1`) or number.
pub fn parse_signal(s: &str) -> ApiResult<Signal> {
    let bad_sig = || ApiError::BadRequest(format!("invalid signal: {s}"));
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad_sig());
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>().map_err(|_| bad_sig())
}

/// `sdctl kill`: signals the process; what follows its death is the restart policy's.
pub async fn kill(node: &Node, r: &str, req: &KillRequest) -> ApiResult<SandboxInfo> {
    let sig = parse_signal(req.signal.as_deref().unwrap_or("KILL"))?;
    let (id, name, p) = {
        let d = node.cache.read();
        let (id, rec) = with_command(&d, r)?;
        let Some(p) = running(d.status_of(id)) else {
            return Err(ApiError::Conflict(format!(
                "cannot kill sandbox {}: it is not running",
                rec.name
            )));
        };
        if rec.paused {
            return Err(ApiError::Conflict(format!(
                "cannot kill sandbox {}: it is paused (unpause it first)",
                rec.name
            )));
        }
        (id.clone(), rec.name.clone(), p)
    };
    node.cache.events.emit(vec![
        Raw::new("sandbox", "kill", &id, &name).with("signal", sig.as_str()),
    ]);
    supervisor::signal(&p, sig);
    info(node, &id)
}

/// `sdctl pause` (true) and `unpause`.
pub async fn pause(node: &Node, r: &str, paused: bool) -> ApiResult<SandboxInfo> {
    let (id, rev) = change(node, r, |d, rec| {
        if running(d.status_of(&rec.id)).is_none() || rec.stopped {
            return Err(ApiError::Conflict(format!(
                "sandbox {} is not running",
                rec.name
            )));
        }
        match (rec.paused, paused) {
            (true, true) => Err(ApiError::Conflict(format!(
                "sandbox {} is already paused",
                rec.name
            ))),
            (false, false) => Err(ApiError::Conflict(format!(
                "sandbox {} is not paused",
                rec.name
            ))),
            _ => {
                let mut new = rec.clone();
                new.paused = paused;
                Ok(Some(new))
            }
        }
    })
    .await?;
    if let Some(rev) = rev {
        settle(node, rev, &Dirty::Sandbox(id.clone())).await?;
    }
    info(node, &id)
}

/// `sdctl wait`: blocks until the process exits; its exit code (at once if it is not running).
pub async fn wait(node: &Node, r: &str) -> ApiResult<WaitResult> {
    let (id, pid) = {
        let d = node.cache.read();
        let (id, _) = with_command(&d, r)?;
        let st = d.status_of(id);
        match st.filter(|s| !s.exited).and_then(|s| s.pid) {
            Some(pid) => (id.clone(), Some(pid)),
            None => {
                return Ok(WaitResult {
                    status_code: st.and_then(|s| s.exit_code).unwrap_or(0),
                });
            }
        }
    };
    let mut code = 0;
    let found = std::sync::Mutex::new(None);
    until(
        node,
        &id,
        Duration::from_secs(u64::from(u32::MAX)),
        |_, st| {
            let st = st?;
            // Exited, or replaced by a later process (whose exit we are not waiting for).
            let over = st.exited || st.pid != pid;
            over.then(|| {
                *found.lock().unwrap_or_else(|e| e.into_inner()) = st.exit_code;
                Ok(())
            })
        },
    )
    .await?;
    if let Some(c) = *found.lock().unwrap_or_else(|e| e.into_inner()) {
        code = c;
    }
    Ok(WaitResult { status_code: code })
}

/// At daemon start: a sandbox with `--restart always` that the user stopped runs again (as
/// Docker starts such a container when its daemon starts; `unless-stopped` stays stopped).
/// Not waited for: the reconciler starts the processes.
pub async fn start_always(node: &Node) {
    let ids: Vec<String> = {
        let d = node.cache.read();
        d.sandboxes
            .values()
            .filter(|s| {
                s.rec.restart == schema::SandboxRestart::Always
                    && s.rec.stopped
                    && s.rec.task.is_none()
                    && !s.rec.command.is_empty()
            })
            .map(|s| s.rec.id.clone())
            .collect()
    };
    for id in ids {
        let r = change(node, &id, |_, rec| {
            let mut new = rec.clone();
            if !new.stopped {
                return Ok(None);
            }
            new.stopped = false;
            new.paused = false;
            new.runs += 1;
            Ok(Some(new))
        })
        .await;
        match r {
            Ok(_) => {
                tracing::info!(sandbox = %id, "restart policy always: starting it with the daemon")
            }
            Err(e) => tracing::warn!(sandbox = %id, "starting a sandbox with the daemon: {e}"),
        }
    }
}
