//! Objects of ours that nobody wants: left by a crash (`kill -9` between two steps, or during
//! the background part of a removal) or made by hand with our names. A full reconcile pass
//! removes them; `sdctl daemon --cleanup` removes every object of ours, wanted or not.
//! "Ours" is recognisable: links named `sd-…`/`sdv…`, namespaces and files under the run
//! dir, links in /etc/netns and /run/netns that point into it, logs named by sandbox ID.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use sdnet_netstack::netns::{self, Netns};
use tracing::info;

use super::sandbox::Kept;
use crate::daemon::Node;
use crate::daemon::config::{Config, veth_name};
use crate::daemon::drivers::Host;
use crate::daemon::state::Desired;
use crate::daemon::store::schema::{DriverKind, NetMode};
use crate::daemon::supervisor::kill_pidfd;

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Removes what is ours and not wanted by `d`; returns the unknown links of ours, for the
/// background cleaner to delete (those in `pending` it deletes already).
pub async fn collect(
    node: &Arc<Node>,
    d: &Desired,
    kept: &Mutex<Kept>,
    overlays: &HashSet<String>,
    pending: &HashSet<String>,
) -> Vec<String> {
    let cfg = &node.cfg;
    let own: Vec<&crate::daemon::state::Entry<_>> = d
        .sandboxes
        .values()
        .filter(|s| s.rec.mode == NetMode::Own)
        .collect();
    let known_ns: HashSet<PathBuf> = own.iter().map(|s| cfg.netns_path(&s.rec.name)).collect();
    let known_ids: HashSet<&str> = d.sandboxes.keys().map(String::as_str).collect();
    let known_names: HashSet<&str> = d.sandboxes.values().map(|s| s.rec.name.as_str()).collect();

    // Endpoints CNI plugins added that nobody wants any more: DEL, before their namespaces go.
    let wanted = |net: &str, sb: &str| d.endpoints.get(sb).is_some_and(|m| m.contains_key(net));
    node.drivers.cni.collect(&wanted).await;

    // Descriptors the keeper still holds for sandboxes that are gone; their processes die
    // (a removal stored just before a crash: nobody else knows them any more).
    let stale: Vec<(String, OwnedFd)> = {
        let mut k = kept.lock().unwrap_or_else(|p| p.into_inner());
        let stale: Vec<String> = k
            .keys()
            .filter(|key| {
                key.split('/')
                    .nth(1)
                    .is_some_and(|id| !known_ids.contains(id))
            })
            .cloned()
            .collect();
        stale
            .into_iter()
            .filter_map(|key| k.remove(&key).map(|fd| (key, fd)))
            .collect()
    };
    let keeper = node.keeper.clone();
    let known_owned: HashSet<String> = known_ids.iter().map(|s| s.to_string()).collect();
    let _ = tokio::task::spawn_blocking(move || {
        for (key, fd) in stale {
            if key.ends_with("/proc") {
                info!(key = %key, "killing the process of a removed sandbox");
                kill_pidfd(&fd);
            }
            let _ = keeper.drop_prefix(&key);
        }
        // And what it holds beyond what it handed back at start.
        if let Ok(keys) = keeper.keys("sb/") {
            let stale: HashSet<&str> = keys
                .iter()
                .filter_map(|k| k.split('/').nth(1))
                .filter(|id| !known_owned.contains(*id))
                .collect();
            for id in stale {
                // Only for gone sandboxes: fetch the held descriptors, kill a process first.
                for (key, fd) in keeper.list(&format!("sb/{id}/")).unwrap_or_default() {
                    if key.ends_with("/proc") {
                        info!(key = %key, "killing the process of a removed sandbox");
                        kill_pidfd(&fd);
                    }
                }
                let _ = keeper.drop_prefix(&format!("sb/{id}/"));
            }
        }
    })
    .await;

    // Overlay data paths nobody uses any more (their network's namespace and VXLAN device).
    {
        let (ov_dir, keep, keeper) = (
            cfg.run_dir.join("ov"),
            overlays.clone(),
            node.keeper.clone(),
        );
        let _ = tokio::task::spawn_blocking(move || {
            for p in netns::list_netns(&ov_dir).unwrap_or_default() {
                let name = file_name(&p);
                if !keep.contains(&name) {
                    info!(path = %p.display(), "removing an unused overlay namespace");
                    let _ = keeper.drop_prefix(&format!("ov/{name}/"));
                    let _ = Netns::delete(&p);
                }
            }
        })
        .await;
    }

    let netns_dir = cfg.netns_dir();
    let files_root = cfg.files_root();
    let (cfg2, known_ns2) = (cfg.clone(), known_ns.clone());
    let ids: HashSet<String> = known_owned_ids(d);
    let names: HashSet<String> = known_names.iter().map(|s| s.to_string()).collect();
    let _ = tokio::task::spawn_blocking(move || {
        for p in netns::list_netns(&netns_dir).unwrap_or_default() {
            if !known_ns2.contains(&p) {
                info!(path = %p.display(), "removing an unknown namespace of ours");
                let _ = Netns::delete(&p);
            }
        }
        // Plain files left by a crash between creating and mounting.
        for p in entries(&netns_dir) {
            if !known_ns2.contains(&p) && !netns::is_netns(&p) {
                let _ = std::fs::remove_file(&p);
            }
        }
        for p in entries(&files_root) {
            if !ids.contains(&file_name(&p)) {
                let _ = std::fs::remove_dir_all(&p);
            }
        }
        // Links in /etc/netns pointing into our run dir are ours.
        for p in entries(&cfg2.etc_netns_dir) {
            if let Ok(t) = std::fs::read_link(&p)
                && t.starts_with(&files_root)
                && (!names.contains(&file_name(&p)) || !t.exists())
            {
                let _ = std::fs::remove_file(&p);
            }
        }
        if let Some(dir) = &cfg2.netns_link_dir {
            for p in entries(dir) {
                if let Ok(t) = std::fs::read_link(&p)
                    && t.starts_with(&netns_dir)
                    && !known_ns2.contains(&t)
                {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        for p in entries(&cfg2.logs_dir()) {
            let n = file_name(&p);
            if let Some(id) = n.strip_suffix(".log")
                && !ids.contains(id)
            {
                let _ = std::fs::remove_file(&p);
            }
        }
    })
    .await;

    let mut known_links: HashSet<String> = d
        .networks
        .values()
        .filter(|n| n.rec.driver == DriverKind::Bridge)
        .map(|n| n.rec.bridge())
        .collect();
    for (sb, eps) in d.endpoints.iter() {
        for net in eps.keys() {
            known_links.insert(veth_name(sb, net));
        }
    }
    // Links a removal's background clean-up will delete anyway are not "unknown".
    match node.host.our_links().await {
        Ok(links) => links
            .into_keys()
            .filter(|l| !known_links.contains(l) && !pending.contains(l))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn known_owned_ids(d: &Desired) -> HashSet<String> {
    d.sandboxes.keys().cloned().collect()
}

/// `sdctl daemon --cleanup`: every kernel object and file of ours (the store stays).
pub async fn cleanup_everything(cfg: &Config) -> Result<()> {
    let host = Host::open().await?;
    // CNI endpoints first, while their namespaces may still be there.
    crate::daemon::drivers::cni::cleanup(&cfg.cni_cache_dir(), &cfg.cni_bin_dir).await;
    let c = cfg.clone();
    tokio::task::spawn_blocking(move || {
        for dir in [c.netns_dir(), c.run_dir.join("ov")] {
            for p in netns::list_netns(&dir).unwrap_or_default() {
                let _ = Netns::delete(&p);
            }
        }
        for p in entries(&c.netns_dir()) {
            let _ = std::fs::remove_file(p);
        }
        for p in entries(&c.etc_netns_dir) {
            if std::fs::read_link(&p).is_ok_and(|t| t.starts_with(c.files_root())) {
                let _ = std::fs::remove_file(&p);
            }
        }
        let _ = std::fs::remove_dir_all(c.files_root());
        if let Some(dir) = &c.netns_link_dir {
            for p in entries(dir) {
                if std::fs::read_link(&p).is_ok_and(|t| t.starts_with(c.netns_dir())) {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    })
    .await?;
    for l in host.our_links().await?.keys() {
        let _ = host.delete_link(l).await;
    }
    let _ = host.apply_nft(&super::firewall::delete_ruleset());
    Ok(())
}
