//! CHECK (spec 1.0.0, "CHECK: check container's networking is as expected"): run for an
//! endpoint that was added, with the configuration it was added with, through the list in
//! order, every plugin given the cached ADD result as `prevResult` and the runtime values
//! the ADD had. Only for configurations of version 0.4.0 and later, and not when the list
//! sets `disableCheck`. A plugin that runs and reports an error found the endpoint broken;
//! one that cannot be run (missing, timed out) judged nothing.

use std::path::Path;

use sdnet_netstack::netns::is_netns;
use tracing::{debug, warn};

use super::CniDriver;
use super::cache::{self, Cached};
use super::exec::{self, Command, ExecError};
use super::health::{Outcome, Verdict};
use super::spec::{AddResult, ConfList};

/// What one CHECK found, and the record it checked (None: unreadable).
struct Checked {
    outcome: Outcome,
    addresses: Vec<String>,
    record: Option<Cached>,
}

fn checked(outcome: Outcome, addresses: Vec<String>, c: Cached) -> Checked {
    Checked {
        outcome,
        addresses,
        record: Some(c),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl CniDriver {
    /// CHECK of the endpoint of `sandbox` on network `net` (IDs). The outcome is recorded
    /// for `inspect`; true when the endpoint was found broken and is to be repaired (the
    /// reconciler then does it; a failure a repair would not cure is only reported, see
    /// `health`). Nothing is recorded for an endpoint that has no finished ADD or whose namespace
    /// is not mounted (the reconciler puts the mount back first).
    pub async fn check_endpoint(&self, net: &str, sandbox: &str) -> bool {
        let generation = self.health.generation(net, sandbox);
        let Some(Checked {
            outcome,
            addresses,
            record,
        }) = self.run_check(net, sandbox).await
        else {
            return false;
        };
        if let Outcome::NotRun(m) = &outcome {
            warn!(network = %net, sandbox = %sandbox, "CNI CHECK could not run: {m}");
        }
        // A failure found unrepairable before this daemon started.
        if let Some(m) = record.as_ref().and_then(|c| c.check_fails.as_ref()) {
            self.health.recall(net, sandbox, m);
        }
        let message = outcome.message().unwrap_or_default().to_string();
        let passed = outcome == Outcome::Passed;
        match self
            .health
            .report(net, sandbox, generation, now(), outcome, addresses)
        {
            Verdict::Stale => {
                debug!(network = %net, sandbox = %sandbox, "CNI CHECK outcome dropped: the endpoint changed meanwhile");
                false
            }
            Verdict::Recorded => {
                if passed && let Some(c) = record.filter(|c| c.check_fails.is_some()) {
                    self.remember(c, generation, None);
                }
                false
            }
            Verdict::Unrepairable => {
                warn!(network = %net, sandbox = %sandbox, "CNI CHECK failed right after the endpoint's ADD: not repaired (a repair would make the same ADD): {message}");
                if let Some(c) = record {
                    self.remember(c, generation, Some(message));
                }
                false
            }
            Verdict::Broken => {
                warn!(network = %net, sandbox = %sandbox, "CNI CHECK failed, repairing the endpoint: {message}");
                true
            }
        }
    }

    /// Keeps a failure a repair would not cure in the endpoint's record (or clears it), so
    /// that a restarted daemon does not repair for it either. Written only while no ADD or
    /// DEL of the endpoint has begun since the CHECK did (they bump the generation before
    /// they touch the record, under the same lock): the record written is the one checked.
    fn remember(&self, mut c: Cached, generation: u64, fails: Option<String>) {
        let p = self.cache_path(&c.network, &c.sandbox);
        c.check_fails = fails;
        let (net, sb) = (c.network.clone(), c.sandbox.clone());
        let r = self
            .health
            .if_current(&net, &sb, generation, || cache::store_blocking(&p, &c));
        if let Some(Err(e)) = r {
            warn!(network = %net, sandbox = %sb, "recording a CHECK failure in the CNI cache record: {e}");
        }
    }

    /// Runs CHECK through the list: what it found, with the record it checked.
    async fn run_check(&self, net: &str, sandbox: &str) -> Option<Checked> {
        let c = match cache::load(&self.cache_path(net, sandbox)).await {
            Ok(Some(c)) => c,
            Ok(None) => return None,
            Err(e) => {
                let m = format!("the cached ADD record is unreadable: {e}");
                return Some(Checked {
                    outcome: Outcome::NotRun(m),
                    addresses: Vec::new(),
                    record: None,
                });
            }
        };
        // An ADD that has not finished (the spec: no CHECK before ADD completed).
        let prev = c.result.as_ref()?;
        let addresses = serde_json::from_value::<AddResult>(prev.clone())
            .map(|r| {
                r.addresses(&c.ifname)
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let list = match ConfList::parse(&c.config) {
            Ok(l) => l,
            Err(e) => return Some(checked(Outcome::NotRun(e.to_string()), addresses, c)),
        };
        if let Some(why) = list.check_skipped() {
            return Some(checked(Outcome::Skipped(why), addresses, c));
        }
        // The path the ADD had: plugins compare it with the result's `sandbox`.
        if !is_netns(Path::new(&c.netns)) {
            return None;
        }
        let inv = c.invocation(Command::Check, &c.netns, &self.bin_dir);
        let rc = c.runtime_config();
        for i in 0..list.plugins.len() {
            let stdin = list.plugin_stdin(i, Some(prev), &rc);
            match exec::run(list.plugin_type(i), &inv, stdin).await {
                Ok(_) => {}
                Err(e @ ExecError::Plugin { .. }) => {
                    return Some(checked(Outcome::Failed(e.to_string()), addresses, c));
                }
                Err(e) => return Some(checked(Outcome::NotRun(e.to_string()), addresses, c)),
            }
        }
        Some(checked(Outcome::Passed, addresses, c))
    }
}
