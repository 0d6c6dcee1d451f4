//! Records and who holds them. Each model object (a sandbox, a service's VIPs) is a *holder*
//! of records; a name held by several holders (an alias on many sandboxes, `tasks.web`)
//! answers the union of their addresses, and an address claimed twice answers the first
//! claim. Almost every name and address has one holder: its id sits in the readers' entry
//! (`AddrSet::holder`, `PtrEntry::holder`, in what would be padding) and nothing else is kept.
//! Only entries with several holders have their contributions kept here, so that one holder
//! can leave without disturbing the others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use smallvec::SmallVec;

use super::entries::{AddrSet, Contribution, PtrEntry, SHARED, SrvSet, SrvTarget};
use super::{HolderId, NetIdx, Snapshot, table_mut};

/// A record a holder contributes (derived from the model on demand, never stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Record {
    Addr {
        net: NetIdx,
        key: Box<str>,
        ip: IpAddr,
        ttl: u32,
    },
    Ptr {
        net: NetIdx,
        ip: IpAddr,
        target: Arc<[u8]>,
        ttl: u32,
    },
    Srv {
        net: NetIdx,
        key: Box<str>,
        target: SrvTarget,
    },
}

type AddrHolders = SmallVec<[Contribution; 2]>;
type PtrClaims = SmallVec<[(HolderId, Arc<[u8]>, u32); 2]>;

/// Contributions to the names and addresses that have more than one holder.
#[derive(Default)]
pub(super) struct Holders {
    addrs: HashMap<NetIdx, HashMap<Box<str>, AddrHolders>>,
    ptrs: HashMap<NetIdx, HashMap<IpAddr, PtrClaims>>,
}

impl Holders {
    pub(super) fn add(&mut self, snap: &mut Snapshot, h: HolderId, r: &Record) {
        match r {
            Record::Addr { net, key, ip, ttl } => {
                let Some(t) = table_mut(snap, *net) else {
                    return;
                };
                if let Some(hs) = self.addrs.get_mut(net).and_then(|m| m.get_mut(&**key)) {
                    add_contribution(hs, h, *ip, *ttl);
                    if let Some(set) = AddrSet::union(hs, SHARED) {
                        t.addrs.insert(key, set);
                    }
                    return;
                }
                let set = match t.addrs.get(key) {
                    None => AddrSet::union(&[(h, *ttl, smallvec::smallvec![*ip])], h),
                    Some(set) if set.holder == h => {
                        let mut mine: AddrHolders = smallvec::smallvec![(h, set.ttl, set.ips())];
                        add_contribution(&mut mine, h, *ip, *ttl);
                        AddrSet::union(&mine, h)
                    }
                    Some(set) => {
                        // A second holder: keep both contributions aside from now on.
                        let hs: AddrHolders = smallvec::smallvec![
                            (set.holder, set.ttl, set.ips()),
                            (h, *ttl, smallvec::smallvec![*ip]),
                        ];
                        let shared = AddrSet::union(&hs, SHARED);
                        self.addrs.entry(*net).or_default().insert(key.clone(), hs);
                        shared
                    }
                };
                if let Some(set) = set {
                    t.addrs.insert(key, set);
                }
            }
            Record::Ptr {
                net,
                ip,
                target,
                ttl,
            } => {
                let Some(t) = table_mut(snap, *net) else {
                    return;
                };
                if let Some(claims) = self.ptrs.get_mut(net).and_then(|m| m.get_mut(ip)) {
                    // The first claim answers; a later one changes nothing readers see.
                    claims.push((h, target.clone(), *ttl));
                    return;
                }
                match t.ptr.get(ip) {
                    None => t.ptr.insert(*ip, PtrEntry::new(target, *ttl, h)),
                    Some(first) => {
                        let claims: PtrClaims = smallvec::smallvec![
                            (first.holder, first.shared_target(), first.ttl()),
                            (h, target.clone(), *ttl),
                        ];
                        let shared = PtrEntry::new(&claims[0].1, claims[0].2, SHARED);
                        t.ptr.insert(*ip, shared);
                        self.ptrs.entry(*net).or_default().insert(*ip, claims);
                    }
                }
            }
            Record::Srv { net, key, target } => {
                let Some(t) = table_mut(snap, *net) else {
                    return;
                };
                let mut set = t.srv.get(&**key).cloned().unwrap_or_else(SrvSet::empty);
                match set.holders.iter_mut().find(|e| e.0 == h) {
                    Some(e) => e.1.push(target.clone()),
                    None => set.holders.push((h, smallvec::smallvec![target.clone()])),
                }
                set.recompute();
                t.srv.insert(key.clone(), set);
            }
        }
    }

    pub(super) fn remove(&mut self, snap: &mut Snapshot, h: HolderId, r: &Record) {
        match r {
            Record::Addr { net, key, ip, .. } => {
                let Some(t) = table_mut(snap, *net) else {
                    return;
                };
                if let Some(names) = self.addrs.get_mut(net)
                    && let Some(hs) = names.get_mut(&**key)
                {
                    remove_contribution(hs, h, *ip);
                    let set = match &hs[..] {
                        // Back to one holder: its id goes back into the readers' entry.
                        [(only, ttl, ips)] => AddrSet::union(&[(*only, *ttl, ips.clone())], *only),
                        _ => AddrSet::union(hs, SHARED),
                    };
                    if hs.len() <= 1 {
                        names.remove(&**key);
                        if names.is_empty() {
                            self.addrs.remove(net);
                        }
                    }
                    match set {
                        Some(set) => t.addrs.insert(key, set),
                        None => t.addrs.remove(key),
                    }
                    return;
                }
                let Some(set) = t.addrs.get(key).filter(|s| s.holder == h) else {
                    return;
                };
                let mut mine: AddrHolders = smallvec::smallvec![(h, set.ttl, set.ips())];
                remove_contribution(&mut mine, h, *ip);
                match AddrSet::union(&mine, h) {
                    Some(set) => t.addrs.insert(key, set),
                    None => t.addrs.remove(key),
                }
            }
            Record::Ptr {
                net, ip, target, ..
            } => {
                let Some(t) = table_mut(snap, *net) else {
                    return;
                };
                if let Some(ips) = self.ptrs.get_mut(net)
                    && let Some(claims) = ips.get_mut(ip)
                {
                    let Some(pos) = claims.iter().position(|x| x.0 == h && x.1 == *target) else {
                        return;
                    };
                    claims.remove(pos);
                    match &claims[..] {
                        [] => t.ptr.remove(*ip),
                        [(only, target, ttl)] => {
                            t.ptr.insert(*ip, PtrEntry::new(target, *ttl, *only))
                        }
                        // Only a change of the first claim touches the map.
                        [(_, target, ttl), ..] if pos == 0 => {
                            t.ptr.insert(*ip, PtrEntry::new(target, *ttl, SHARED))
                        }
                        _ => {}
                    }
                    if claims.len() <= 1 {
                        ips.remove(ip);
                        if ips.is_empty() {
                            self.ptrs.remove(net);
                        }
                    }
                    return;
                }
                if t.ptr
                    .get(ip)
                    .is_some_and(|e| e.holder == h && e.target().0 == &target[..])
                {
                    t.ptr.remove(*ip);
                }
            }
            Record::Srv { net, key, target } => {
                let Some(t) = table_mut(snap, *net) else {
                    return;
                };
                let Some(mut set) = t.srv.get(&**key).cloned() else {
                    return;
                };
                if let Some(pos) = set.holders.iter().position(|e| e.0 == h) {
                    let ts = &mut set.holders[pos].1;
                    if let Some(i) = ts.iter().position(|x| x == target) {
                        ts.remove(i);
                    }
                    if ts.is_empty() {
                        set.holders.remove(pos);
                    }
                }
                if set.holders.is_empty() {
                    t.srv.remove(&**key);
                } else {
                    set.recompute();
                    t.srv.insert(key.clone(), set);
                }
            }
        }
    }

    /// Entries with several holders (for tests: shared state must go when holders leave).
    #[cfg(test)]
    pub(super) fn shared_entries(&self) -> usize {
        let addrs: usize = self.addrs.values().map(|m| m.len()).sum();
        addrs + self.ptrs.values().map(|m| m.len()).sum::<usize>()
    }
}

/// Adds one address of holder `h` to a name's contributions (its smallest TTL wins).
fn add_contribution(hs: &mut AddrHolders, h: HolderId, ip: IpAddr, ttl: u32) {
    match hs.iter_mut().find(|e| e.0 == h) {
        Some(e) => {
            e.1 = ttl.min(e.1);
            if !e.2.contains(&ip) {
                e.2.push(ip);
            }
        }
        None => hs.push((h, ttl, smallvec::smallvec![ip])),
    }
}

/// Removes one address of holder `h`; a holder left without addresses is dropped.
fn remove_contribution(hs: &mut AddrHolders, h: HolderId, ip: IpAddr) {
    if let Some(pos) = hs.iter().position(|e| e.0 == h) {
        let ips = &mut hs[pos].2;
        if let Some(i) = ips.iter().position(|x| *x == ip) {
            ips.remove(i);
        }
        if ips.is_empty() {
            hs.remove(pos);
        }
    }
}
