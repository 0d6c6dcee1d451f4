//! Keeps the client's balanced channel to the etcd members that answer.
//!
//! `etcd-client` spreads calls over all its endpoints (tonic's power-of-two-choices balancer),
//! and an endpoint whose member is dead stays in the set: its service keeps reporting ready and
//! fails each call with a connect error, so with one member of three down about a third of the
//! calls, and any watch or lease keep-alive stream opened on it, fail for as long as it is down.
//! Here each member is asked for its status on a client of its own, once a second; a member
//! that does not answer (or has no leader) leaves the shared channel, and comes back into it
//! when it answers again. With no member answering all stay in, so whichever returns first is
//! used at once.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tracing::{info, warn};

/// How often every member is asked.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The URL the balanced channel knows an endpoint by (`add_endpoint` and `remove_endpoint`
/// must be given the same string).
pub(super) fn url(endpoint: &str) -> String {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// One member's own client, for probing it alone.
struct Probe {
    url: String,
    client: Option<Client>,
}

impl Probe {
    fn new(url: String) -> Probe {
        Probe { url, client: None }
    }

    /// Whether the member answers a status call within `within` and has a leader; the error
    /// otherwise.
    async fn ask(&mut self, within: Duration) -> Result<(), String> {
        if self.client.is_none() {
            let opts = ConnectOptions::new()
                .with_connect_timeout(within)
                .with_require_leader(true);
            let c = tokio::time::timeout(within, Client::connect([self.url.as_str()], Some(opts)))
                .await
                .map_err(|_| "no connection".to_string())?
                .map_err(|e| e.to_string())?;
            self.client = Some(c);
        }
        let Some(c) = self.client.as_mut() else {
            return Err("no client".into());
        };
        let mut m = c.maintenance_client();
        match tokio::time::timeout(within, m.status()).await {
            Ok(Ok(s)) if s.leader() != 0 => Ok(()),
            Ok(Ok(_)) => Err("no leader".into()),
            Ok(Err(e)) => {
                // A fresh connection next time (the old one may be wedged).
                self.client = None;
                Err(e.to_string())
            }
            Err(_) => {
                self.client = None;
                Err(format!("no answer within {within:?}"))
            }
        }
    }
}

/// Asks every member once, concurrently: which answer.
async fn probe_all(probes: &mut [Probe], within: Duration) -> Vec<Result<(), String>> {
    let futs = probes.iter_mut().map(|p| p.ask(within));
    futures::future::join_all(futs).await
}

/// The endpoints (URLs) to put into the channel first: the members that answer now, or all of
/// them if none does (the caller's first call then reports the failure).
pub(super) async fn initial(endpoints: &[String], within: Duration) -> Vec<String> {
    let urls: Vec<String> = endpoints.iter().map(|e| url(e)).collect();
    if urls.len() < 2 {
        return urls;
    }
    let mut probes: Vec<Probe> = urls.iter().cloned().map(Probe::new).collect();
    let up: Vec<String> = probe_all(&mut probes, within)
        .await
        .into_iter()
        .zip(&urls)
        .filter(|(r, _)| r.is_ok())
        .map(|(_, u)| u.clone())
        .collect();
    if up.is_empty() { urls } else { up }
}

/// Ends the member watch when the last clone of the store is dropped.
pub(super) struct Watcher {
    task: tokio::task::JoinHandle<()>,
    now: Arc<tokio::sync::Notify>,
}

impl Watcher {
    /// Asks every member now rather than at the next tick (a call found a member that does
    /// not take connections).
    pub(super) fn kick(&self) {
        self.now.notify_one();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts probing every member and keeping `client`'s channel to the answering ones. `inside`:
/// the URLs the channel holds now. None with a single endpoint (nothing to choose from).
pub(super) fn watch(
    client: Client,
    endpoints: &[String],
    inside: Vec<String>,
    within: Duration,
) -> Option<Arc<Watcher>> {
    if endpoints.len() < 2 {
        return None;
    }
    let urls: Vec<String> = endpoints.iter().map(|e| url(e)).collect();
    let mut now_in: Vec<bool> = urls.iter().map(|u| inside.contains(u)).collect();
    let mut probes: Vec<Probe> = urls.iter().cloned().map(Probe::new).collect();
    let now = Arc::new(tokio::sync::Notify::new());
    let kicked = now.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = kicked.notified() => {}
            }
            let results = probe_all(&mut probes, within).await;
            let none_up = results.iter().all(Result::is_err);
            for (i, r) in results.into_iter().enumerate() {
                let want = r.is_ok() || none_up;
                if want == now_in[i] {
                    continue;
                }
                let u = &urls[i];
                let done = if want {
                    client.add_endpoint(u).await
                } else {
                    client.remove_endpoint(u).await
                };
                if let Err(e) = done {
                    warn!(member = %u, error = %e, "etcd member set not changed");
                    continue;
                }
                now_in[i] = want;
                match r {
                    Err(e) if want => {
                        warn!(member = %u, error = %e, "no etcd member answers: trying every one")
                    }
                    Err(e) => {
                        warn!(member = %u, error = %e, "etcd member does not answer: using the others")
                    }
                    Ok(()) => info!(member = %u, "etcd member answers: in use again"),
                }
            }
        }
    });
    Some(Arc::new(Watcher { task, now }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_match_what_the_channel_was_given() {
        assert_eq!(url("10.0.0.1:2379"), "http://10.0.0.1:2379");
        assert_eq!(url("http://10.0.0.1:2379"), "http://10.0.0.1:2379");
        assert_eq!(url("https://[::1]:2379"), "https://[::1]:2379");
    }

    #[tokio::test]
    async fn a_member_that_refuses_is_left_out_and_none_up_keeps_all() {
        // Two ports nothing listens on (bound, then closed): both refuse.
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let eps = vec![
            a.local_addr().unwrap().to_string(),
            b.local_addr().unwrap().to_string(),
        ];
        drop((a, b));
        let got = initial(&eps, Duration::from_millis(300)).await;
        assert_eq!(got, vec![url(&eps[0]), url(&eps[1])]);
    }
}
