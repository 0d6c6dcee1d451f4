//! A sandbox's process between start and exit: stopping it (the stop signal, then SIGKILL
//! after the timeout), freezing it (`pause`), and the timer of a policy restart. Each is
//! idempotent per sandbox and process, since the reconciler asks again on every pass.
//!
//! Pausing uses SIGSTOP/SIGCONT on the process group (the process leads its own session):
//! the daemon does not manage cgroups, so the cgroup freezer is not available to it.

use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tracing::info;

use super::{Observation, Proc, Supervisor, alive};

/// Docker's restart backoff: 100 ms, doubled per restart, at most a minute, back to 100 ms
/// once a process ran for 10 s.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);

/// The delay before the next policy restart, given the last one and how long the process ran.
pub fn next_backoff(last_ms: u64, uptime: Duration) -> Duration {
    if last_ms == 0 || uptime >= BACKOFF_RESET_AFTER {
        return BACKOFF_START;
    }
    Duration::from_millis(last_ms.saturating_mul(2)).min(BACKOFF_MAX)
}

/// Signals the process group the process leads (it called setsid), else the process.
fn signal_group(p: &Proc, sig: Signal) {
    if !alive(p) {
        return;
    }
    let pid = Pid::from_raw(p.pid as i32);
    if nix::sys::signal::killpg(pid, sig).is_err() {
        let _ = nix::sys::signal::kill(pid, sig);
    }
}

impl Supervisor {
    /// Stops a process: SIGCONT (a paused process could not act on the signal), `sig`, and
    /// SIGKILL to its process group after `timeout` if it still runs. The exit is reported by
    /// the process's watch as usual.
    pub fn stop(&self, sandbox: &str, p: Proc, sig: Signal, timeout: Duration) {
        let mut s = self.stops.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((q, h)) = s.get(sandbox)
            && *q == p
            && !h.is_finished()
        {
            return;
        }
        info!(sandbox, pid = p.pid, ?sig, ?timeout, "stopping the process");
        let h = tokio::spawn(async move {
            signal_group(&p, Signal::SIGCONT);
            super::signal(&p, sig);
            let deadline = tokio::time::Instant::now() + timeout;
            while alive(&p) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if alive(&p) {
                signal_group(&p, Signal::SIGKILL);
            }
        });
        if let Some((_, old)) = s.insert(sandbox.to_string(), (p, h)) {
            old.abort();
        }
    }

    /// Freezes (`true`) or thaws the process's group.
    pub fn set_paused(&self, p: &Proc, paused: bool) {
        signal_group(
            p,
            if paused {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            },
        );
    }

    /// Reports `RestartDue` for the exited process `pid` after `delay` (once per process).
    pub fn schedule_restart(&self, sandbox: &str, pid: u32, delay: Duration) {
        let mut t = self.timers.lock().unwrap_or_else(|e| e.into_inner());
        if t.get(sandbox).is_some_and(|(q, _)| *q == pid) {
            return;
        }
        let tx = self.obs.clone();
        let id = sandbox.to_string();
        let h = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Observation::RestartDue { sandbox: id, pid }).await;
        });
        if let Some((_, old)) = t.insert(sandbox.to_string(), (pid, h)) {
            old.abort();
        }
    }

    /// Forgets the stop and restart timer of a sandbox (removed).
    pub(super) fn forget_lifecycle(&self, sandbox: &str) {
        if let Some((_, h)) = self
            .timers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sandbox)
        {
            h.abort();
        }
        self.stops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sandbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute_and_resets() {
        let short = Duration::from_secs(1);
        assert_eq!(next_backoff(0, short), BACKOFF_START);
        assert_eq!(next_backoff(100, short), Duration::from_millis(200));
        assert_eq!(next_backoff(400, short), Duration::from_millis(800));
        assert_eq!(next_backoff(50_000, short), BACKOFF_MAX);
        assert_eq!(next_backoff(6_400, Duration::from_secs(10)), BACKOFF_START);
    }
}
