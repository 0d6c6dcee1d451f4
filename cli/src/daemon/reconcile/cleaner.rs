//! The background worker for what removals leave behind: removed sandboxes' links, files and
//! logs (`Leftovers`), and links of ours that the full pass found unwanted. One job at a
//! time: link deletions are paced instead of piling onto the kernel's RTNL lock together, and
//! the reconciler never waits for them (a veth deletion takes 25-50 ms while the kernel is
//! cleaning up namespaces; a thousand of them inline stalled every create for 25 s).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::info;

use super::sandbox::Leftovers;
use crate::daemon::Node;
use crate::daemon::config::veth_name;

enum CleanJob {
    Left(Arc<Node>, Leftovers, Vec<String>),
    Links(Arc<Node>, Vec<String>),
    Barrier(tokio::sync::oneshot::Sender<()>),
}

pub struct Cleaner {
    tx: tokio::sync::mpsc::Sender<CleanJob>,
    /// Links a queued job will delete: the full pass leaves them alone.
    pending: Arc<Mutex<HashSet<String>>>,
}

fn lock(p: &Mutex<HashSet<String>>) -> MutexGuard<'_, HashSet<String>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cleaner {
    pub fn start() -> Cleaner {
        // Bounded: a reconciler far ahead of the kernel's clean-up waits for it.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let pending = Arc::new(Mutex::new(HashSet::new()));
        let done = pending.clone();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                match job {
                    CleanJob::Left(node, left, links) => {
                        left.finish(node).await;
                        forget(&done, &links);
                    }
                    CleanJob::Links(node, links) => {
                        for l in &links {
                            info!(link = %l, "removing an unknown link of ours");
                            let _ = node.host.delete_link(l).await;
                        }
                        forget(&done, &links);
                    }
                    CleanJob::Barrier(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Cleaner { tx, pending }
    }

    pub async fn push(&self, node: Arc<Node>, left: Leftovers) {
        let links: Vec<String> = left
            .eps
            .iter()
            .map(|(ep, _)| veth_name(&ep.sandbox, &ep.network))
            .collect();
        lock(&self.pending).extend(links.iter().cloned());
        let _ = self.tx.send(CleanJob::Left(node, left, links)).await;
    }

    /// Queues the deletion of links nobody wants, but not those already queued.
    pub async fn remove_links(&self, node: Arc<Node>, links: Vec<String>) {
        let links: Vec<String> = {
            let mut p = lock(&self.pending);
            links.into_iter().filter(|l| p.insert(l.clone())).collect()
        };
        if !links.is_empty() {
            let _ = self.tx.send(CleanJob::Links(node, links)).await;
        }
    }

    /// Links that queued jobs will delete.
    pub fn pending(&self) -> HashSet<String> {
        lock(&self.pending).clone()
    }

    /// Waits until everything queued so far is done.
    pub async fn barrier(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(CleanJob::Barrier(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn forget(pending: &Mutex<HashSet<String>>, links: &[String]) {
    let mut p = lock(pending);
    for l in links {
        p.remove(l);
    }
}
