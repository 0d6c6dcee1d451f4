//! A sandbox's supervised process, made to match desired state by the reconciler: started
//! (gated until its PID is in the store) for the sandbox's current run or again by its
//! restart policy, stopped, frozen, adopted after a daemon restart.

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::Signal;
use std::os::fd::AsRawFd;
use tracing::{info, warn};

use super::Failure;
use super::sandbox::{RealSb, blocking, kept_key};
use crate::daemon::Node;
use crate::daemon::state::Desired;
use crate::daemon::store::schema::{self, NetMode, SandboxRec, StatusRec};
use crate::daemon::store::{Compare, Rev, Txn, TxnResult};
use crate::daemon::supervisor::health::CheckTarget;
use crate::daemon::supervisor::{self, Proc, SpawnSpec, Supervisor};

/// The sandbox's process, made to match desired state: started (gated until its PID is in
/// the store) for the sandbox's current run, or again when the restart policy made a restart
/// due; stopped when the user stopped the sandbox or a newer run replaces it; frozen while
/// paused; adopted after a daemon restart and watched until it exits; a task's health
/// checker alongside.
pub(super) async fn process(
    node: &Node,
    d: &Desired,
    sb: &SandboxRec,
    r: &mut RealSb,
) -> Result<()> {
    if sb.command.is_empty() {
        return Ok(());
    }
    let entry = d.status.get(sb.id.as_str());
    if entry.map_or(0, |e| e.rev) < r.status_rev {
        // Our own last write is not in this state yet.
        return Ok(());
    }
    let status = entry.map(|e| (*e.rec).clone());
    match &status {
        None if !sb.stopped => {
            let env = super::legacy_links::process_env(d, sb);
            let (p, rev) = start(node, sb, env, None).await?;
            r.proc = Some(p);
            r.status_rev = rev;
            r.paused = false;
        }
        None => {}
        Some(st) => {
            let p = st.pid.map(|pid| Proc {
                pid,
                start_ticks: st.start_ticks,
            });
            let rev = entry.map_or(0, |e| e.rev);
            match p {
                Some(p) if !st.exited => {
                    r.proc = Some(p);
                    // Adopted after a restart, or already watched (idempotent). A process
                    // that died meanwhile is reported at once.
                    node.supervisor.watch(&sb.id, p);
                    if sb.stopped || st.run < sb.runs {
                        let t = std::time::Duration::from_millis(sb.stop_timeout_ms);
                        node.supervisor.stop(&sb.id, p, Signal::SIGTERM, t);
                    } else if r.paused != sb.paused {
                        node.supervisor.set_paused(&p, sb.paused);
                        r.paused = sb.paused;
                    }
                }
                _ if st.due || (!sb.stopped && st.run < sb.runs) => {
                    let again = Restart {
                        rev,
                        restart_count: if st.due { st.restart_count } else { 0 },
                        backoff_ms: if st.due { st.backoff_ms } else { 0 },
                    };
                    let (p, rev) = start(
                        node,
                        sb,
                        super::legacy_links::process_env(d, sb),
                        Some(again),
                    )
                    .await?;
                    r.proc = Some(p);
                    r.status_rev = rev;
                    r.paused = false;
                }
                Some(p) if st.restarting => {
                    // Stopped or replaced meanwhile: at once, so the status says so.
                    let delay = if sb.stopped || st.run < sb.runs {
                        0
                    } else {
                        st.backoff_ms
                    };
                    node.supervisor.schedule_restart(
                        &sb.id,
                        p.pid,
                        std::time::Duration::from_millis(delay),
                    );
                }
                _ => {}
            }
        }
    }
    let exited = status.as_ref().is_some_and(|s| s.exited);
    let health = sb
        .task
        .as_ref()
        .and_then(|t| d.services.get(t.service.as_str()))
        .and_then(|s| s.rec.health.clone());
    match health {
        Some(spec) if !exited && sb.mode == NetMode::Own => node.supervisor.ensure_health(
            CheckTarget {
                sandbox: sb.id.clone(),
                netns: node.cfg.netns_path(&sb.name),
                hostname: sb.hostname.clone(),
                files_dir: node.cfg.files_dir(&sb.id),
            },
            spec,
        ),
        _ => node.supervisor.stop_health(&sb.id),
    }
    Ok(())
}

/// A start that replaces an earlier status record (a new run, or a policy restart).
struct Restart {
    /// The revision of the record replaced.
    rev: Rev,
    restart_count: u32,
    backoff_ms: u64,
}

/// Starts the sandbox's process with `env` (its own variables and its links'); its PID and
/// the revision of the status record written.
async fn start(
    node: &Node,
    sb: &SandboxRec,
    env: Vec<String>,
    again: Option<Restart>,
) -> Result<(Proc, Rev)> {
    let cfg = node.cfg.clone();
    let rec = sb.clone();
    let spawned = blocking(move || {
        let netns = cfg.netns_path(&rec.name);
        let files_dir = cfg.files_dir(&rec.id);
        let log = cfg.log_path(&rec.id);
        let spec = SpawnSpec {
            netns: (rec.mode == NetMode::Own).then_some(netns.as_path()),
            hostname: &rec.hostname,
            files_dir: &files_dir,
            command: &rec.command,
            env: &env,
            log: &log,
        };
        Ok(Supervisor::spawn(&spec)?)
    })
    .await;
    let key = schema::status(&sb.id);
    let (restart_count, backoff_ms) = again
        .as_ref()
        .map_or((0, 0), |a| (a.restart_count, a.backoff_ms));
    let cmp = match &again {
        None => Compare::Absent(key.clone()),
        Some(a) => Compare::ModRev(key.clone(), a.rev),
    };
    let gated = match spawned {
        Ok(g) => g,
        Err(e) => {
            // Recorded, so it is not retried in a loop; the API call that asked reports it.
            let st = StatusRec {
                exited: true,
                exit_code: Some(127),
                error: Some(format!("{e:#}")),
                finished_at: Some(supervisor::status::now()),
                run: sb.runs,
                restart_count,
                backoff_ms,
                ..StatusRec::default()
            };
            let _ = node
                .store
                .txn(
                    Txn::new()
                        .when(cmp)
                        .when(Compare::Exists(schema::sandbox(&sb.id)))
                        .put(key, schema::encode(&st)),
                )
                .await;
            return Err(Failure::BadRequest(format!("starting {:?}: {e:#}", sb.command)).into());
        }
    };
    let p = gated.proc;
    let st = StatusRec {
        pid: Some(p.pid),
        start_ticks: p.start_ticks,
        started_at: Some(supervisor::status::now()),
        run: sb.runs,
        restart_count,
        backoff_ms,
        ..StatusRec::default()
    };
    let r = node
        .store
        .txn(
            Txn::new()
                .when(cmp)
                .when(Compare::Exists(schema::sandbox(&sb.id)))
                .put(key, schema::encode(&st)),
        )
        .await;
    match r {
        Ok(TxnResult::Committed(rev)) => {
            // The keeper holds the process too (before it runs: a daemon that dies here
            // closes the gate), so that it is found and killed when the sandbox's removal is
            // stored but the daemon dies before acting on it, or before a restarted daemon
            // learns the PID again.
            match supervisor::pidfd_open(p.pid) {
                Ok(fd) => {
                    let keeper = node.keeper.clone();
                    let key = kept_key(&sb.id, "proc");
                    if let Err(e) = blocking(move || Ok(keeper.hold(&key, fd.as_raw_fd())?)).await {
                        warn!(sandbox = %sb.name, "handing the process to the keeper: {e:#}");
                    }
                }
                Err(e) => warn!(sandbox = %sb.name, "pidfd of the process: {e}"),
            }
            gated.open().context("releasing the process")?;
            node.supervisor.watch(&sb.id, p);
            info!(sandbox = %sb.name, pid = p.pid, "process started");
            Ok((p, rev))
        }
        // Removed or changed meanwhile, or the store failed: the gated child exits on its own.
        Ok(TxnResult::Failed(_)) => bail!("sandbox {} changed while starting", sb.name),
        Err(e) => Err(anyhow!("recording the process: {e}")),
    }
}
