//! A bounded cache of upstream answers, positive and negative (RFC 2308), shared by every
//! sandbox that forwards to the same upstream set. Entries keep the upstream's bytes and where
//! their TTLs sit, so a hit is a copy plus a few patched fields: the client's ID, its RD bit,
//! its question (for its case) and TTLs aged by the time spent in the cache.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::Instant;

use smallvec::SmallVec;

use crate::wire::{
    self, HEADER_LEN, Query, RCODE_NOERROR, RCODE_NXDOMAIN, TYPE_OPT, TYPE_SOA, flag, skip_rr,
};

/// Identity of a cacheable question.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    upstreams: u64,
    name: Box<str>,
    qtype: u16,
    qclass: u16,
    /// EDNS present, DO, CD: each changes what an upstream may send back.
    bits: u8,
}

struct Entry {
    key: Key,
    bytes: Box<[u8]>,
    /// Offsets of TTL fields to age (OPT excluded).
    ttl_at: SmallVec<[u16; 8]>,
    stored: Instant,
    ttl: u32,
}

struct Inner {
    map: HashMap<u64, Entry>,
    /// Insertion order, for eviction when full (entries may already be gone).
    order: VecDeque<u64>,
}

pub struct Cache {
    inner: Mutex<Inner>,
    hasher: foldhash::quality::RandomState,
    capacity: usize,
    max_ttl: u32,
}

fn bits(q: &Query<'_>) -> u8 {
    (q.edns.is_some() as u8) | ((q.dnssec_ok() as u8) << 1) | ((q.cd() as u8) << 2)
}

impl Cache {
    pub fn new(capacity: usize, max_ttl: u32) -> Self {
        Cache {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
            hasher: foldhash::quality::RandomState::default(),
            capacity,
            max_ttl,
        }
    }

    fn key(upstreams: u64, q: &Query<'_>) -> Key {
        Key {
            upstreams,
            name: q.key.as_str().into(),
            qtype: q.qtype,
            qclass: q.qclass,
            bits: bits(q),
        }
    }

    fn hash_parts(&self, upstreams: u64, q: &Query<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        upstreams.hash(&mut h);
        q.key.as_str().hash(&mut h);
        q.qtype.hash(&mut h);
        q.qclass.hash(&mut h);
        bits(q).hash(&mut h);
        h.finish()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes a cached answer for `q` into `out`; false on a miss. `limit` is the client's
    /// size limit: a cached answer that does not fit is sent as an empty TC=1 reply.
    pub fn get(&self, upstreams: u64, q: &Query<'_>, limit: usize, out: &mut Vec<u8>) -> bool {
        if !q.key.plain() {
            return false;
        }
        let h = self.hash_parts(upstreams, q);
        let mut inner = self.lock();
        let Some(e) = inner.map.get(&h) else {
            return false;
        };
        let age = e.stored.elapsed().as_secs();
        if age >= e.ttl as u64
            || *e.key.name != *q.key.as_str()
            || e.key.qtype != q.qtype
            || e.key.qclass != q.qclass
            || e.key.bits != bits(q)
            || e.key.upstreams != upstreams
        {
            if age >= e.ttl as u64 {
                inner.map.remove(&h);
            }
            return false;
        }
        out.clear();
        out.extend_from_slice(&e.bytes);
        for &at in &e.ttl_at {
            let at = at as usize;
            let orig = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
            let aged = orig.saturating_sub(age as u32);
            out[at..at + 4].copy_from_slice(&aged.to_be_bytes());
        }
        drop(inner);
        patch_for_client(out, q);
        if out.len() > limit {
            truncated_reply(out, q, limit);
        }
        true
    }

    /// Stores an upstream response to `q` if it is cacheable: NOERROR with answers (TTL = the
    /// smallest TTL), or NXDOMAIN/NODATA with an SOA (TTL = min(SOA TTL, SOA minimum)).
    /// Truncated, failed or SOA-less negative answers are not kept.
    pub fn put(&self, upstreams: u64, q: &Query<'_>, resp: &[u8]) {
        if !q.key.plain() || self.capacity == 0 {
            return;
        }
        let Some((ttl, ttl_at)) = cacheable(resp) else {
            return;
        };
        let ttl = ttl.min(self.max_ttl);
        if ttl == 0 {
            return;
        }
        let h = self.hash_parts(upstreams, q);
        let entry = Entry {
            key: Self::key(upstreams, q),
            bytes: resp.into(),
            ttl_at,
            stored: Instant::now(),
            ttl,
        };
        let mut inner = self.lock();
        while inner.map.len() >= self.capacity {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.map.remove(&old);
                }
                None => break,
            }
        }
        if inner.map.insert(h, entry).is_none() {
            inner.order.push_back(h);
        }
        // Keep the order queue from growing without bound through replaced keys.
        if inner.order.len() > self.capacity * 2 {
            let live: std::collections::HashSet<u64> = inner.map.keys().copied().collect();
            inner.order.retain(|k| live.contains(k));
        }
    }
}

/// TTL and TTL offsets of a cacheable response.
fn cacheable(resp: &[u8]) -> Option<(u32, SmallVec<[u16; 8]>)> {
    if resp.len() < HEADER_LEN || resp.len() > u16::MAX as usize {
        return None;
    }
    let flags = u16::from_be_bytes([resp[2], resp[3]]);
    if flags & flag::TC != 0 {
        return None;
    }
    let rcode = (flags & 0xF) as u8;
    let count = |i: usize| u16::from_be_bytes([resp[i], resp[i + 1]]) as usize;
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if qd != 1 {
        return None;
    }
    let mut pos = wire::skip_name(resp, HEADER_LEN)? + 4;
    let mut ttl_at = SmallVec::new();
    let mut min_ttl = u32::MAX;
    let mut neg_ttl = None;
    for i in 0..an + ns + ar {
        let rr = skip_rr(resp, pos)?;
        if rr.rtype != TYPE_OPT {
            ttl_at.push(rr.ttl_at as u16);
            if i < an {
                min_ttl = min_ttl.min(rr.ttl);
            }
            if i >= an && i < an + ns && rr.rtype == TYPE_SOA {
                // SOA minimum: the last 4 bytes of its RDATA.
                let m = resp.get(rr.end - 4..rr.end)?;
                let minimum = u32::from_be_bytes(m.try_into().ok()?);
                neg_ttl = Some(rr.ttl.min(minimum));
            }
        }
        pos = rr.end;
    }
    let ttl = match (rcode, an) {
        (RCODE_NOERROR, 1..) => min_ttl,
        (RCODE_NOERROR | RCODE_NXDOMAIN, _) => neg_ttl?,
        _ => return None,
    };
    Some((ttl, ttl_at))
}

/// Makes an upstream's (or the cache's) response the client's own: its ID, its RD bit and its
/// question bytes (same name up to case, so same length).
pub fn patch_for_client(out: &mut [u8], q: &Query<'_>) {
    if out.len() < HEADER_LEN {
        return;
    }
    out[0..2].copy_from_slice(&q.id.to_be_bytes());
    let rd = (flag::RD >> 8) as u8;
    out[2] = (out[2] & !rd) | if q.rd() { rd } else { 0 };
    let end = HEADER_LEN + q.question.len();
    if let Some(qs) = out.get_mut(HEADER_LEN..end)
        && qs.eq_ignore_ascii_case(q.question)
    {
        qs.copy_from_slice(q.question);
    }
}

/// Replaces `out` with a TC=1 reply carrying only the header flags and rcode of the response
/// that did not fit, the question and (if the client used EDNS) an OPT record.
pub fn truncated_reply(out: &mut Vec<u8>, q: &Query<'_>, limit: usize) {
    let rcode = out.get(3).map(|b| b & 0xF).unwrap_or(0);
    let flags = out
        .get(2..4)
        .map(|f| u16::from_be_bytes([f[0], f[1]]) & (flag::AA | flag::RA | flag::AD))
        .unwrap_or(0);
    let mut tmp = Vec::with_capacity(64);
    let r = wire::Response::new(&mut tmp, q, rcode, flags | flag::TC, limit);
    r.finish();
    *out = tmp;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_name, parse_query};

    fn query(name: &str) -> Vec<u8> {
        let mut m = vec![0x11, 0x22, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend(encode_name(name).unwrap());
        m.extend([0, 1, 0, 1]);
        m
    }

    fn response(
        q: &[u8],
        rcode: u8,
        answers: &[(u32, [u8; 4])],
        soa: Option<(u32, u32)>,
    ) -> Vec<u8> {
        let mut m = q.to_vec();
        m[0] = 0x99;
        m[2] |= 0x80;
        m[3] = 0x80 | rcode;
        m[7] = answers.len() as u8;
        m[9] = soa.is_some() as u8;
        for (ttl, ip) in answers {
            m.extend([0xC0, 12, 0, 1, 0, 1]);
            m.extend(ttl.to_be_bytes());
            m.extend([0, 4]);
            m.extend(ip);
        }
        if let Some((ttl, min)) = soa {
            m.extend([0, 0, 6, 0, 1]);
            m.extend(ttl.to_be_bytes());
            m.extend([0, 22, 0, 0]);
            m.extend([0u8; 16]);
            m.extend(min.to_be_bytes());
        }
        m
    }

    #[test]
    fn positive_hit_patches_id_case_and_ttl() {
        let c = Cache::new(10, 3600);
        let qb = query("Example.COM");
        let q = parse_query(&qb).unwrap();
        c.put(
            7,
            &q,
            &response(&qb, 0, &[(300, [1, 2, 3, 4]), (60, [5, 6, 7, 8])], None),
        );
        assert_eq!(c.len(), 1);
        let qb2 = query("example.com");
        let q2 = parse_query(&qb2).unwrap();
        let mut out = Vec::new();
        assert!(c.get(7, &q2, 512, &mut out));
        assert_eq!(&out[0..2], &[0x11, 0x22]);
        assert_eq!(
            &out[12..12 + qb2.len() - 12],
            &qb2[12..],
            "client's own case"
        );
        assert!(!c.get(8, &q2, 512, &mut out), "other upstream set: miss");
    }

    #[test]
    fn negative_needs_soa_and_uses_minimum() {
        let c = Cache::new(10, 3600);
        let qb = query("nx.example");
        let q = parse_query(&qb).unwrap();
        c.put(1, &q, &response(&qb, 3, &[], None));
        assert!(c.is_empty(), "no SOA: not cached");
        c.put(1, &q, &response(&qb, 3, &[], Some((900, 30))));
        assert_eq!(c.len(), 1);
        let inner = c.lock();
        assert_eq!(inner.map.values().next().unwrap().ttl, 30);
    }

    #[test]
    fn servfail_and_zero_ttl_not_cached_and_capacity_bounded() {
        let c = Cache::new(2, 3600);
        let qb = query("a.example");
        let q = parse_query(&qb).unwrap();
        c.put(1, &q, &response(&qb, 2, &[], Some((60, 60))));
        c.put(1, &q, &response(&qb, 0, &[(0, [1, 1, 1, 1])], None));
        assert!(c.is_empty());
        for n in ["b.example", "c.example", "d.example"] {
            let qb = query(n);
            let q = parse_query(&qb).unwrap();
            c.put(1, &q, &response(&qb, 0, &[(60, [1, 1, 1, 1])], None));
        }
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn oversized_hit_becomes_tc() {
        let c = Cache::new(10, 3600);
        let qb = query("big.example");
        let q = parse_query(&qb).unwrap();
        let many: Vec<(u32, [u8; 4])> = (0..40).map(|i| (60, [10, 0, 0, i])).collect();
        c.put(1, &q, &response(&qb, 0, &many, None));
        let mut out = Vec::new();
        assert!(c.get(1, &q, 512, &mut out));
        assert!(out.len() <= 512);
        assert_eq!(out[2] & 0x02, 0x02, "TC set");
        assert!(c.get(1, &q, 65535, &mut out));
        assert_eq!(out[7], 40);
    }
}
