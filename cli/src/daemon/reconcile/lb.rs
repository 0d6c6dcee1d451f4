//! Service VIPs in each client sandbox: the `ip sdnet-lb` table holds every VIP of the
//! networks the sandbox is on, spread over the service's visible tasks. Changes go in as
//! incremental nft commands against the table we last applied; anything unexpected (the table
//! was touched, or we do not know it) reloads it whole.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use sdnet_lb::VipLb;
use sdnet_netstack::netns::Netns;
use sdnet_resolver::model::EndpointMode;
use tracing::warn;

use crate::daemon::state::Desired;

/// Every VIP with its network and visible backends.
pub type VipMap = HashMap<Ipv4Addr, (String, Vec<Ipv4Addr>)>;

/// `me`: this node's ID in a cluster (other nodes' tasks of swarm services are backends
/// too, reached over the overlay).
pub fn vip_map(d: &Desired, me: &str) -> VipMap {
    let mut out = HashMap::new();
    for svc in d
        .services
        .values()
        .filter(|s| s.rec.mode == EndpointMode::Vip)
    {
        for sn in &svc.rec.networks {
            let Some(vip) = sn.vip else {
                continue;
            };
            let mut backends: Vec<Ipv4Addr> = d
                .tasks_of(&svc.rec.id)
                .filter(|t| d.visible(t))
                .filter_map(|t| d.endpoints.get(t.as_str())?.get(sn.network.as_str()))
                .filter_map(|e| e.rec.ipv4)
                .collect();
            if let Some(peers) = d.peers.get(sn.network.as_str()) {
                backends.extend(
                    peers
                        .values()
                        .map(|p| p.rec.as_ref())
                        .filter(|p| {
                            p.node != me
                                && p.task
                                    .as_ref()
                                    .is_some_and(|t| t.service == svc.rec.id && t.healthy)
                        })
                        .filter_map(|p| p.ipv4),
                );
                backends.sort();
                backends.dedup();
            }
            out.insert(vip, (sn.network.clone(), backends));
        }
    }
    out
}

/// What one sandbox's table must hold.
pub fn want(d: &Desired, sandbox: &str, vips: &VipMap) -> BTreeMap<Ipv4Addr, VipLb> {
    let mut want = BTreeMap::new();
    for e in d.endpoints_of(sandbox) {
        for (vip, (net, backends)) in vips {
            if *net == e.rec.network {
                want.insert(*vip, VipLb::new(*vip, backends.clone()));
            }
        }
    }
    want
}

/// Brings one sandbox's table from `have` to `want` (blocking: nft and conntrack).
/// Returns what the table holds afterwards (None: unknown, reload it next time).
pub fn sync(
    ns: &Netns,
    name: &str,
    have: Option<BTreeMap<Ipv4Addr, VipLb>>,
    want: BTreeMap<Ipv4Addr, VipLb>,
) -> Option<BTreeMap<Ipv4Addr, VipLb>> {
    let text = match &have {
        Some(h) if *h == want => return have,
        Some(h) => {
            // A spread chain exists for every backend count some VIP in the table has, and
            // for each one an earlier change in this transaction creates.
            let mut loaded: BTreeSet<usize> = h
                .values()
                .map(|v| v.backends.len())
                .filter(|n| *n > 0)
                .collect();
            let vips: BTreeSet<&Ipv4Addr> = h.keys().chain(want.keys()).collect();
            let mut t = String::new();
            for vip in vips {
                let new = want.get(vip);
                let count = new.map_or(0, |n| n.backends.len());
                let spread_loaded = loaded.contains(&count);
                if let Some(c) = sdnet_lb::change(h.get(vip), new, spread_loaded) {
                    if count > 0 {
                        loaded.insert(count);
                    }
                    t.push_str(&c);
                }
            }
            t
        }
        None if want.is_empty() => sdnet_lb::delete_table(),
        None => sdnet_lb::table(&want.values().cloned().collect::<Vec<_>>()),
    };
    // Connections to backends that left are cut, not left to time out.
    let gone: Vec<(Ipv4Addr, Ipv4Addr)> = have
        .iter()
        .flat_map(|h| h.values())
        .flat_map(|v| {
            let keep = want
                .get(&v.vip)
                .map(|w| w.backends.clone())
                .unwrap_or_default();
            v.backends
                .iter()
                .filter(move |b| !keep.contains(b))
                .map(move |b| (v.vip, *b))
        })
        .collect();
    let mut applied = sdnet_netstack::nft::apply(ns, &text);
    if applied.is_err() && have.is_some() {
        // Our idea of the table was wrong (someone touched it): load it whole.
        applied = sdnet_netstack::nft::apply(
            ns,
            &sdnet_lb::table(&want.values().cloned().collect::<Vec<_>>()),
        );
    }
    let result = match applied {
        Ok(()) => Some(want),
        Err(e) => {
            warn!(sandbox = %name, "LB rules: {e}");
            None
        }
    };
    if !gone.is_empty()
        && let Ok(ns) = ns.try_clone()
    {
        // conntrack(8) takes a while and gates nothing: in the background.
        std::thread::spawn(move || flush_conntrack(&ns, &gone));
    }
    result
}

/// Whether the sandbox has our LB table (an error counts as yes: nothing to repair then).
pub fn table_exists(ns: &Netns) -> bool {
    sdnet_netstack::nft::list_tables(ns)
        .map(|t| t.iter().any(|(f, n)| f == "ip" && n == sdnet_lb::TABLE))
        .unwrap_or(true)
}

/// Deletes conntrack entries from `vip` to backends that left, inside a client sandbox.
fn flush_conntrack(ns: &Netns, gone: &[(Ipv4Addr, Ipv4Addr)]) {
    let gone = gone.to_vec();
    let _ = ns.run(move || {
        for (vip, backend) in gone {
            let _ = std::process::Command::new("conntrack")
                .args(["-D", "-d", &vip.to_string(), "-r", &backend.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    });
}
