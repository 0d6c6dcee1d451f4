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
use super::cache;
use super::exec::{self, Command, ExecError, Invocation};
use super::health::{Outcome, Verdict};
use super::spec::{AddResult, ConfList, RuntimeConfig};

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
        let Some((outcome, addresses)) = self.run_check(net, sandbox).await else {
            return false;
        };
        if let Outcome::NotRun(m) = &outcome {
            warn!(network = %net, sandbox = %sandbox, "CNI CHECK could not run: {m}");
        }
        let message = outcome.message().unwrap_or_default().to_string();
        match self
            .health
            .report(net, sandbox, generation, now(), outcome, addresses)
        {
            Verdict::Stale => {
                debug!(network = %net, sandbox = %sandbox, "CNI CHECK outcome dropped: the endpoint changed meanwhile");
                false
            }
            Verdict::Recorded => false,
            Verdict::Unrepairable => {
                warn!(network = %net, sandbox = %sandbox, "CNI CHECK failed right after the endpoint's ADD: not repaired (a repair would make the same ADD): {message}");
                false
            }
            Verdict::Broken => {
                warn!(network = %net, sandbox = %sandbox, "CNI CHECK failed, repairing the endpoint: {message}");
                true
            }
        }
    }

    /// Runs CHECK through the list; the outcome and the addresses the endpoint had (to ask
    /// for again if it must be repaired).
    async fn run_check(&self, net: &str, sandbox: &str) -> Option<(Outcome, Vec<String>)> {
        let c = match cache::load(&self.cache_path(net, sandbox)).await {
            Ok(Some(c)) => c,
            Ok(None) => return None,
            Err(e) => {
                let m = format!("the cached ADD record is unreadable: {e}");
                return Some((Outcome::NotRun(m), Vec::new()));
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
            Err(e) => return Some((Outcome::NotRun(e.to_string()), addresses)),
        };
        if let Some(why) = list.check_skipped() {
            return Some((Outcome::Skipped(why), addresses));
        }
        // The path the ADD had: plugins compare it with the result's `sandbox`.
        if !is_netns(Path::new(&c.netns)) {
            return None;
        }
        let inv = Invocation {
            command: Command::Check,
            container_id: &c.sandbox,
            netns: &c.netns,
            ifname: &c.ifname,
            bin_dir: &self.bin_dir,
        };
        let rc = RuntimeConfig {
            port_mappings: c.ports.clone(),
            ips: c.ips.clone(),
        };
        for i in 0..list.plugins.len() {
            let stdin = list.plugin_stdin(i, Some(prev), &rc);
            match exec::run(list.plugin_type(i), &inv, stdin).await {
                Ok(_) => {}
                Err(e @ ExecError::Plugin { .. }) => {
                    return Some((Outcome::Failed(e.to_string()), addresses));
                }
                Err(e) => return Some((Outcome::NotRun(e.to_string()), addresses)),
            }
        }
        Some((Outcome::Passed, addresses))
    }
}
