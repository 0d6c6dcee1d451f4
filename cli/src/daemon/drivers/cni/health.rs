//! What CHECK found for each CNI endpoint, kept in memory: the reconciler asks whether an
//! endpoint was found broken (then its next `attach` repairs it: DEL, then ADD), and
//! `inspect` shows the last check. Nothing here outlives the daemon: the first full pass
//! after a start checks every endpoint again.
//!
//! A CHECK runs beside the reconciler, so an ADD or DEL of the same endpoint may happen while
//! it runs; each of those bumps the endpoint's generation, and an outcome of a CHECK that
//! began at an older generation is dropped (it judged an endpoint that is no more).
//!
//! A repair is DEL and ADD again, so it cannot help when CHECK fails on the very state an
//! ADD makes (a plugin's CHECK that is wrong: Debian's portmap 1.1.1 fails every endpoint
//! with published ports and no IPv6 address, containernetworking/plugins#819). A failure on
//! the first CHECK after our own ADD is therefore reported, not repaired, and so is the same
//! failure later on; another failure (an interface deleted since) is repaired.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// What one CHECK found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every plugin of the list passed.
    Passed,
    /// A plugin reported an error (its message): the endpoint is broken.
    Failed(String),
    /// CHECK is not run for the endpoint's configuration: why (its version, `disableCheck`).
    Skipped(String),
    /// CHECK did not judge the endpoint: why (a plugin that could not be run at all, an
    /// unreadable record).
    NotRun(String),
}

impl Outcome {
    /// As `inspect` shows it.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed(_) => "failed",
            Outcome::Skipped(_) => "skipped",
            Outcome::NotRun(_) => "not run",
        }
    }

    pub fn message(&self) -> Option<&str> {
        match self {
            Outcome::Passed => None,
            Outcome::Failed(m) | Outcome::Skipped(m) | Outcome::NotRun(m) => Some(m),
        }
    }
}

/// One endpoint's record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpHealth {
    /// Bumped by every ADD and DEL of the endpoint.
    pub generation: u64,
    /// The last CHECK: when (unix seconds) and what it found.
    pub last: Option<(u64, Outcome)>,
    /// Found broken and not repaired yet: why (CHECK's error, then a failed repair's).
    pub broken: Option<String>,
    /// Addresses (CIDR) a repair asks for again, kept across a failed repair.
    pub keep: Vec<String>,
    /// Repairs that succeeded since the daemon started.
    pub repairs: u32,
    /// Added by this daemon and not checked since.
    pub fresh: bool,
    /// A failure a repair would not cure (it came right after an ADD): while CHECK fails
    /// with just this message, the endpoint is not repaired.
    pub unrepairable: Option<String>,
}

/// What a recorded CHECK outcome means for the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The endpoint was added or deleted while CHECK ran: nothing recorded.
    Stale,
    /// Passed, skipped, not run, or a failure already reported as unrepairable.
    Recorded,
    /// Failed: the endpoint is broken and is to be repaired.
    Broken,
    /// Failed right after an ADD: reported, not repaired (first time).
    Unrepairable,
}

/// Every endpoint's record, by (network ID, sandbox ID).
#[derive(Default)]
pub struct Health {
    eps: Mutex<HashMap<(String, String), EpHealth>>,
}

fn key(net: &str, sandbox: &str) -> (String, String) {
    (net.to_string(), sandbox.to_string())
}

impl Health {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), EpHealth>> {
        self.eps.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, net: &str, sandbox: &str) -> Option<EpHealth> {
        self.lock().get(&key(net, sandbox)).cloned()
    }

    /// The endpoint's generation now (taken before a CHECK starts).
    pub fn generation(&self, net: &str, sandbox: &str) -> u64 {
        self.lock()
            .get(&key(net, sandbox))
            .map_or(0, |h| h.generation)
    }

    /// An ADD or DEL of the endpoint runs: CHECKs already under way are stale.
    pub fn changed(&self, net: &str, sandbox: &str) {
        self.lock().entry(key(net, sandbox)).or_default().generation += 1;
    }

    /// An ADD of the endpoint succeeded.
    pub fn added(&self, net: &str, sandbox: &str) {
        let mut m = self.lock();
        let h = m.entry(key(net, sandbox)).or_default();
        h.generation += 1;
        h.fresh = true;
    }

    /// Records the outcome of a CHECK that began at `generation`, at `at` (unix
    /// seconds), and says what it means (see the module's notes). A failure to repair marks
    /// the endpoint broken, keeping `addresses` for the repair.
    pub fn report(
        &self,
        net: &str,
        sandbox: &str,
        generation: u64,
        at: u64,
        outcome: Outcome,
        addresses: Vec<String>,
    ) -> Verdict {
        let mut m = self.lock();
        let k = key(net, sandbox);
        if m.get(&k).map_or(0, |h| h.generation) != generation {
            return Verdict::Stale;
        }
        let h = m.entry(k).or_default();
        let verdict = match &outcome {
            Outcome::Failed(why) if h.fresh => {
                h.unrepairable = Some(why.clone());
                Verdict::Unrepairable
            }
            Outcome::Failed(why) if h.unrepairable.as_ref() == Some(why) => Verdict::Recorded,
            Outcome::Failed(why) => {
                if h.broken.is_none() {
                    h.broken = Some(why.clone());
                    h.keep = addresses;
                }
                Verdict::Broken
            }
            Outcome::Passed => {
                h.unrepairable = None;
                Verdict::Recorded
            }
            Outcome::Skipped(_) | Outcome::NotRun(_) => Verdict::Recorded,
        };
        if matches!(outcome, Outcome::Passed | Outcome::Failed(_)) {
            h.fresh = false;
        }
        h.last = Some((at, outcome));
        verdict
    }

    /// A failure found unrepairable before (kept in the endpoint's record across restarts).
    pub fn recall(&self, net: &str, sandbox: &str, fails: &str) {
        let mut m = self.lock();
        let h = m.entry(key(net, sandbox)).or_default();
        if h.unrepairable.is_none() {
            h.unrepairable = Some(fails.to_string());
        }
    }

    /// Runs `f` while the endpoint is still at `generation`, under the lock every ADD and
    /// DEL takes first to bump it; None (without running it) once one has.
    pub fn if_current<T>(
        &self,
        net: &str,
        sandbox: &str,
        generation: u64,
        f: impl FnOnce() -> T,
    ) -> Option<T> {
        let m = self.lock();
        let now = m.get(&key(net, sandbox)).map_or(0, |h| h.generation);
        (now == generation).then(f)
    }

    /// Why the endpoint is broken, if it was found so and is not repaired yet.
    pub fn broken(&self, net: &str, sandbox: &str) -> Option<String> {
        self.lock()
            .get(&key(net, sandbox))
            .and_then(|h| h.broken.clone())
    }

    /// The addresses a repair should ask for again.
    pub fn keep(&self, net: &str, sandbox: &str) -> Vec<String> {
        self.lock()
            .get(&key(net, sandbox))
            .map(|h| h.keep.clone())
            .unwrap_or_default()
    }

    /// A repair succeeded.
    pub fn repaired(&self, net: &str, sandbox: &str) {
        let mut m = self.lock();
        let h = m.entry(key(net, sandbox)).or_default();
        h.broken = None;
        h.keep.clear();
        h.repairs += 1;
        h.generation += 1;
    }

    /// A repair failed: the endpoint stays broken (tried again by the next pass).
    pub fn repair_failed(&self, net: &str, sandbox: &str, why: String) {
        let mut m = self.lock();
        let h = m.entry(key(net, sandbox)).or_default();
        h.broken = Some(why);
        h.generation += 1;
    }

    /// The endpoint is gone (detached, collected).
    pub fn forget(&self, net: &str, sandbox: &str) {
        self.lock().remove(&key(net, sandbox));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_marks_broken_until_repaired_and_stale_outcomes_are_dropped() {
        let h = Health::default();
        h.added("n", "s");
        let g = h.generation("n", "s");
        assert_eq!(
            h.report("n", "s", g, 1, Outcome::Passed, vec![]),
            Verdict::Recorded
        );
        assert_eq!(h.broken("n", "s"), None);
        // An ADD or DEL while a CHECK ran: its outcome is dropped.
        let g = h.generation("n", "s");
        h.changed("n", "s");
        let failed = |m: &str| Outcome::Failed(m.into());
        assert_eq!(
            h.report("n", "s", g, 2, failed("x"), vec![]),
            Verdict::Stale
        );
        assert_eq!(h.broken("n", "s"), None);
        let g = h.generation("n", "s");
        let keep = vec!["10.0.0.5/24".to_string()];
        assert_eq!(
            h.report("n", "s", g, 3, failed("gone"), keep.clone()),
            Verdict::Broken
        );
        assert_eq!(h.broken("n", "s").as_deref(), Some("gone"));
        assert_eq!(h.keep("n", "s"), keep);
        h.repair_failed("n", "s", "no address".into());
        assert_eq!(h.broken("n", "s").as_deref(), Some("no address"));
        assert_eq!(h.keep("n", "s"), keep, "kept for the next attempt");
        h.repaired("n", "s");
        let e = h.get("n", "s").unwrap();
        assert_eq!((e.broken, e.repairs, e.keep.len()), (None, 1, 0));
        assert_eq!(e.last.map(|l| l.1), Some(Outcome::Failed("gone".into())));
        h.forget("n", "s");
        assert_eq!(h.get("n", "s"), None);
    }

    #[test]
    fn a_failure_right_after_an_add_is_not_repaired() {
        let h = Health::default();
        let failed = |m: &str| Outcome::Failed(m.into());
        h.added("n", "s");
        let g = h.generation("n", "s");
        assert_eq!(
            h.report("n", "s", g, 1, failed("v6"), vec![]),
            Verdict::Unrepairable
        );
        assert_eq!(
            h.report("n", "s", g, 2, failed("v6"), vec![]),
            Verdict::Recorded
        );
        assert_eq!(h.broken("n", "s"), None);
        // Another failure is repaired; the same one after the repair is not.
        assert_eq!(
            h.report("n", "s", g, 3, failed("eth0"), vec![]),
            Verdict::Broken
        );
        h.repaired("n", "s");
        h.added("n", "s");
        let g = h.generation("n", "s");
        assert_eq!(
            h.report("n", "s", g, 4, failed("v6"), vec![]),
            Verdict::Unrepairable
        );
        // A pass forgets it: the same failure later is repaired.
        assert_eq!(
            h.report("n", "s", g, 5, Outcome::Passed, vec![]),
            Verdict::Recorded
        );
        assert_eq!(
            h.report("n", "s", g, 6, failed("v6"), vec![]),
            Verdict::Broken
        );
        // Never added by this daemon (a restart): a first failure is repaired, unless the
        // record says it came right after the ADD.
        assert_eq!(
            h.report("n", "t", 0, 7, failed("v6"), vec![]),
            Verdict::Broken
        );
        h.recall("n", "u", "v6");
        assert_eq!(
            h.report("n", "u", 0, 8, failed("v6"), vec![]),
            Verdict::Recorded
        );
        assert_eq!(
            h.report("n", "u", 0, 9, failed("eth0"), vec![]),
            Verdict::Broken
        );
    }

    #[test]
    fn writes_only_while_no_add_or_del_began() {
        let h = Health::default();
        let g = h.generation("n", "s");
        assert_eq!(h.if_current("n", "s", g, || 1), Some(1));
        h.changed("n", "s");
        assert_eq!(h.if_current("n", "s", g, || 1), None);
    }
}
