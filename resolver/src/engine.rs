//! The answer engine: (snapshot, view of the querying sandbox, query) → response bytes, or
//! "forward this". Pure: no I/O, no clock, no randomness (the rotation offset is an input).
//! It implements the answer table of DESIGN.md §3.

use std::net::IpAddr;

use crate::model::Policy;
use crate::table::{AddrSet, NetIdx, NetTable, Snapshot, SrvSet, View};

pub mod podman;
use crate::wire::{
    self, CLASS_IN, Query, RCODE_NOERROR, RCODE_NXDOMAIN, Response, TYPE_A, TYPE_AAAA, TYPE_PTR,
    TYPE_SRV, flag,
};

/// What to do with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response is in the output buffer.
    Reply,
    /// Not a local name: ask the cache, then upstream.
    Forward,
}

/// What a name resolved to, and on which network.
pub enum Found<'a> {
    Addrs(&'a NetTable, &'a AddrSet),
    Srv(&'a NetTable, &'a SrvSet),
}

fn find_in<'a>(t: &'a NetTable, key: &str) -> Option<Found<'a>> {
    if let Some(a) = t.addrs(key) {
        return Some(Found::Addrs(t, a));
    }
    t.srv(key).map(|s| Found::Srv(t, s))
}

/// A legacy link's alias of the view (on network `net` only, if given).
fn find_link<'a>(
    snap: &'a Snapshot,
    view: &'a View,
    key: &str,
    net: Option<NetIdx>,
) -> Option<Found<'a>> {
    view.links
        .iter()
        .filter(|l| net.is_none_or(|n| n == l.net) && *l.name == *key)
        .find_map(|l| Some(Found::Addrs(snap.net(l.net)?, &l.addrs)))
}

/// Looks a (lower-case) name up as the view sees it: first the whole name on each of the
/// view's networks in attachment order, then `prefix.network` for each way of splitting off a
/// network name the view is on (Docker's order for `a.b.c`: `a.b` on `c`, then `a` on `b.c`).
/// At each step the view's own link aliases come before the networks' names (Docker's
/// alias pass), so a link alias shadows a real name.
pub fn lookup<'a>(snap: &'a Snapshot, view: &'a View, key: &str) -> Option<Found<'a>> {
    if !view.links.is_empty()
        && let Some(f) = find_link(snap, view, key, None)
    {
        return Some(f);
    }
    for &n in &view.nets {
        if let Some(f) = snap.net(n).and_then(|t| find_in(t, key)) {
            return Some(f);
        }
    }
    let bytes = key.as_bytes();
    for (i, _) in bytes.iter().enumerate().rev().filter(|(_, b)| **b == b'.') {
        let (prefix, net) = (&key[..i], &key[i + 1..]);
        if let Some(idx) = snap.net_by_name(net)
            && view.nets.contains(&idx)
            && let Some(f) = find_link(snap, view, prefix, Some(idx))
                .or_else(|| snap.net(idx).and_then(|t| find_in(t, prefix)))
        {
            return Some(f);
        }
    }
    None
}

/// The PTR target for an address on the first of the view's networks that knows it.
pub fn lookup_ptr<'a>(snap: &'a Snapshot, view: &View, ip: &IpAddr) -> Option<(&'a [u8], u32)> {
    view.nets
        .iter()
        .filter_map(|&n| snap.net(n))
        .find_map(|t| t.ptr(ip).map(|e| e.target()))
}

/// Answers `q` for `view`. `limit` is the largest response allowed (UDP size or 65535 for
/// TCP); `rotation` picks the first of several addresses (callers pass a running counter).
pub fn answer(
    snap: &Snapshot,
    view: &View,
    q: &Query<'_>,
    limit: usize,
    rotation: u32,
    out: &mut Vec<u8>,
) -> Outcome {
    let ra = if view.can_forward() { flag::RA } else { 0 };
    if let Some(e) = q.edns
        && e.version > 0
    {
        // RFC 6891 §6.1.3: BADVERS (extended rcode 16 = upper bits 1, lower bits 0).
        let r = Response::new(out, q, 0, ra, limit);
        r.finish_with_ext_rcode(1);
        return Outcome::Reply;
    }
    if let Policy::Podman { search_domain } = &snap.policy {
        return podman::answer(snap, view, q, search_domain, limit, out);
    }
    if q.qclass == CLASS_IN && q.key.plain() {
        let key = q.key.as_str();
        if q.qtype == TYPE_PTR
            && let Some(ip) = wire::reverse_ip(key)
            && let Some((target, ttl)) = lookup_ptr(snap, view, &ip)
        {
            let mut r = Response::new(out, q, RCODE_NOERROR, flag::AA | ra, limit);
            r.ptr(ttl, target);
            r.finish();
            return Outcome::Reply;
        }
        if let Some(found) = lookup(snap, view, key) {
            answer_found(snap, q, found, ra, limit, rotation, out);
            return Outcome::Reply;
        }
    }
    if view.can_forward() {
        return Outcome::Forward;
    }
    // Only internal networks: nothing leaves, the name does not exist as far as S can tell.
    let mut r = Response::new(out, q, RCODE_NXDOMAIN, flag::AA, limit);
    r.section(1);
    r.soa(false, snap.generation as u32, 0);
    r.finish();
    Outcome::Reply
}

fn answer_found(
    snap: &Snapshot,
    q: &Query<'_>,
    found: Found<'_>,
    ra: u16,
    limit: usize,
    rotation: u32,
    out: &mut Vec<u8>,
) {
    let mut r = Response::new(out, q, RCODE_NOERROR, flag::AA | ra, limit);
    let (answered, ttl) = match (found, q.qtype) {
        (Found::Addrs(_, set), TYPE_A) => {
            let v4 = set.v4();
            let n = v4.len();
            for i in 0..n {
                if !r.a(set.ttl, v4[(rotation as usize + i) % n]) {
                    break;
                }
            }
            (n > 0, set.ttl)
        }
        (Found::Addrs(_, set), TYPE_AAAA) => {
            let v6 = set.v6();
            let n = v6.len();
            for i in 0..n {
                if !r.aaaa(set.ttl, v6[(rotation as usize + i) % n]) {
                    break;
                }
            }
            (n > 0, set.ttl)
        }
        (Found::Srv(_, set), TYPE_SRV) => {
            let n = set.targets.len();
            let mut glue = Vec::with_capacity(n);
            for i in 0..n {
                let t = &set.targets[(rotation as usize + i) % n];
                match r.srv(t.ttl, 0, 1, t.port, &t.target) {
                    Some(at) => glue.push((at, t)),
                    None => break,
                }
            }
            r.section(2);
            for (at, t) in glue {
                if let Some(v4) = t.v4 {
                    r.glue_a(at, t.ttl, v4);
                }
                if let Some(v6) = t.v6 {
                    r.glue_aaaa(at, t.ttl, v6);
                }
            }
            (n > 0, set.ttl)
        }
        (Found::Addrs(_, set), _) => (false, set.ttl),
        (Found::Srv(_, set), _) => (false, set.ttl),
    };
    if !answered {
        // NODATA: the name exists, not with this type. The SOA lets resolvers cache that.
        r.section(1);
        r.soa(true, snap.generation as u32, ttl);
    }
    r.finish();
}

#[cfg(test)]
mod tests;
