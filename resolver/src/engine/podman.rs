//! The engine under `Policy::Podman`: aardvark-dns's answers, as Podman users expect them.
//!
//! - The search domain (`dns.podman`) is stripped from the query; a name under it that is not
//!   local is NXDOMAIN, never forwarded.
//! - A name answers the union of its addresses over every network of the asking view (no
//!   `name.network` splitting, no first-network-wins), TTL as stored (0).
//! - PTR answers every name the address has on the first of the view's networks that knows it.
//! - Everything else follows the view's forwarding (internal-only: NXDOMAIN).

use std::net::{Ipv4Addr, Ipv6Addr};

use smallvec::SmallVec;

use super::Outcome;
use crate::table::{AddrSet, Snapshot, View};
use crate::wire::{
    self, CLASS_IN, Query, RCODE_NOERROR, RCODE_NXDOMAIN, Response, TYPE_A, TYPE_AAAA, TYPE_PTR,
    flag,
};

/// `key` without `.domain` at its end, and whether it was there.
fn strip<'k>(key: &'k str, domain: &str) -> (&'k str, bool) {
    if domain.is_empty() {
        return (key, false);
    }
    match key.strip_suffix(domain) {
        Some(head) if head.len() > 1 && head.ends_with('.') => (&head[..head.len() - 1], true),
        _ => (key, false),
    }
}

/// The address sets a (lower-case) name has on the view's networks, in the view's order.
pub fn lookup_all<'a>(snap: &'a Snapshot, view: &View, key: &str) -> SmallVec<[&'a AddrSet; 4]> {
    view.nets
        .iter()
        .filter_map(|&n| snap.net(n))
        .filter_map(|t| t.addrs(key))
        .collect()
}

pub(super) fn answer(
    snap: &Snapshot,
    view: &View,
    q: &Query<'_>,
    domain: &str,
    limit: usize,
    out: &mut Vec<u8>,
) -> Outcome {
    let ra = if view.can_forward() { flag::RA } else { 0 };
    let mut under_domain = false;
    if q.qclass == CLASS_IN && q.key.plain() {
        let full = q.key.as_str();
        if q.qtype == TYPE_PTR
            && let Some(ip) = wire::reverse_ip(full)
            && let Some(entry) = view
                .nets
                .iter()
                .filter_map(|&n| snap.net(n))
                .find_map(|t| t.ptr(&ip))
        {
            let (_, ttl) = entry.target();
            let mut r = Response::new(out, q, RCODE_NOERROR, flag::AA | ra, limit);
            for name in entry.targets() {
                if !r.ptr(ttl, name) {
                    break;
                }
            }
            r.finish();
            return Outcome::Reply;
        }
        let (key, stripped) = strip(full, domain);
        under_domain = stripped || full == domain;
        let sets = lookup_all(snap, view, key);
        if !sets.is_empty() {
            answer_sets(snap, q, &sets, ra, limit, out);
            return Outcome::Reply;
        }
    }
    if view.can_forward() && !under_domain {
        return Outcome::Forward;
    }
    let mut r = Response::new(out, q, RCODE_NXDOMAIN, flag::AA | ra, limit);
    r.section(1);
    r.soa(false, snap.generation as u32, 0);
    r.finish();
    Outcome::Reply
}

fn answer_sets(
    snap: &Snapshot,
    q: &Query<'_>,
    sets: &[&AddrSet],
    ra: u16,
    limit: usize,
    out: &mut Vec<u8>,
) {
    let mut r = Response::new(out, q, RCODE_NOERROR, flag::AA | ra, limit);
    let ttl = sets.iter().map(|s| s.ttl).min().unwrap_or(0);
    let mut answered = false;
    match q.qtype {
        TYPE_A => {
            let mut seen: SmallVec<[Ipv4Addr; 8]> = SmallVec::new();
            for a in sets.iter().flat_map(|s| s.v4()) {
                if !seen.contains(a) {
                    seen.push(*a);
                    answered = true;
                    if !r.a(ttl, *a) {
                        break;
                    }
                }
            }
        }
        TYPE_AAAA => {
            let mut seen: SmallVec<[Ipv6Addr; 8]> = SmallVec::new();
            for a in sets.iter().flat_map(|s| s.v6()) {
                if !seen.contains(a) {
                    seen.push(*a);
                    answered = true;
                    if !r.aaaa(ttl, *a) {
                        break;
                    }
                }
            }
        }
        _ => {}
    }
    if !answered {
        // NODATA: the name is local, not with this type.
        r.section(1);
        r.soa(true, snap.generation as u32, ttl);
    }
    r.finish();
}

#[cfg(test)]
mod tests {
    use super::strip;

    #[test]
    fn search_domain_is_stripped_only_as_whole_labels() {
        assert_eq!(strip("web.dns.podman", "dns.podman"), ("web", true));
        assert_eq!(strip("a.b.dns.podman", "dns.podman"), ("a.b", true));
        assert_eq!(
            strip("webdns.podman", "dns.podman"),
            ("webdns.podman", false)
        );
        assert_eq!(strip("dns.podman", "dns.podman"), ("dns.podman", false));
        assert_eq!(strip("web", ""), ("web", false));
    }
}
