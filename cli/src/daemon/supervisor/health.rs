//! Health checks of tasks: a command run with `/bin/sh -c` inside the task (its network,
//! mounts and hostname), every interval. The checker counts failures itself and reports only
//! changes: healthy after a passed check, unhealthy after `retries` failures in a row
//! (failures during the start period do not count).

use std::path::PathBuf;
use std::time::Duration;

use crate::daemon::store::schema::HealthRec;

use super::{Observation, Supervisor};

/// Where a check runs.
pub struct CheckTarget {
    pub sandbox: String,
    pub netns: PathBuf,
    pub hostname: String,
    pub files_dir: PathBuf,
}

impl Supervisor {
    /// Starts the checker of a task (idempotent: a running checker is kept).
    pub fn ensure_health(&self, t: CheckTarget, spec: HealthRec) {
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        if checks.get(&t.sandbox).is_some_and(|h| !h.is_finished()) {
            return;
        }
        let tx = self.obs.clone();
        let id = t.sandbox.clone();
        let h = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let interval = Duration::from_millis(spec.interval_ms.max(50));
            let timeout = Duration::from_millis(spec.timeout_ms.max(50));
            let start_period = Duration::from_millis(spec.start_period_ms);
            let retries = spec.retries.max(1);
            let mut failures = 0u32;
            let mut reported: Option<bool> = None;
            // First check right after start (the process needs a moment), then every interval.
            let mut wait = Duration::from_millis(100);
            loop {
                tokio::time::sleep(wait).await;
                wait = interval;
                let ok = run_check(&t, &spec.cmd, timeout).await;
                let verdict = if ok {
                    failures = 0;
                    Some(true)
                } else if started.elapsed() < start_period {
                    None
                } else {
                    failures += 1;
                    (failures >= retries).then_some(false)
                };
                if let Some(v) = verdict
                    && reported != Some(v)
                {
                    reported = Some(v);
                    let obs = Observation::Health {
                        sandbox: t.sandbox.clone(),
                        healthy: v,
                    };
                    if tx.send(obs).await.is_err() {
                        return;
                    }
                }
            }
        });
        if let Some(old) = checks.insert(id, h) {
            old.abort();
        }
    }

    pub fn stop_health(&self, sandbox: &str) {
        if let Some(h) = self
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sandbox)
        {
            h.abort();
        }
    }
}

async fn run_check(t: &CheckTarget, cmd: &str, timeout: Duration) -> bool {
    // Entered by the gate after exec (see `gate_main`), not in the forked child.
    let std_cmd = {
        let mut c = super::gate_command(Some(&t.netns), &t.hostname, &t.files_dir, false);
        c.arg("/bin/sh").arg("-c").arg(cmd);
        c
    };
    let mut c = tokio::process::Command::from(std_cmd);
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let Ok(mut child) = c.spawn() else {
        return false;
    };
    matches!(tokio::time::timeout(timeout, child.wait()).await, Ok(Ok(s)) if s.success())
}
