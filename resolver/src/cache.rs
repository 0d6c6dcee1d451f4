//! A bounded cache of upstream answers, positive and negative (RFC 2308), shared by every
//! sandbox that forwards to the same upstream set. Entries are checked, re-encoded answers
//! (`relay::Answer`), rendered for each client on a hit: its ID, question case, flags, its own
//! OPT and size limit, TTLs aged by the time spent in the cache. Signed queries never read or
//! fill it, and signed replies are never kept.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::relay::Answer;
use crate::wire::Query;

/// Identity of a cacheable question.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    upstreams: u64,
    name: Box<str>,
    qtype: u16,
    qclass: u16,
    /// EDNS present, DO, CD: each changes what we ask upstream (and what it may send back).
    /// AD does not: upstreams are always asked with AD set, and each client gets AD per its
    /// own query when the answer is rendered.
    bits: u8,
}

struct Entry {
    key: Key,
    answer: Arc<Answer>,
    stored: Instant,
    ttl: u32,
    /// What the entry counts against the byte bound.
    cost: usize,
}

/// What an entry costs besides its answer: the map slot, the order slot, the key.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>() + 2 * std::mem::size_of::<u64>();

struct Inner {
    map: HashMap<u64, Entry>,
    /// Insertion order, for eviction when full (entries may already be gone).
    order: VecDeque<u64>,
    /// Sum of the entries' costs.
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, h: u64) {
        if let Some(e) = self.map.remove(&h) {
            self.bytes -= e.cost;
        }
    }
}

pub struct Cache {
    inner: Mutex<Inner>,
    hasher: foldhash::quality::RandomState,
    capacity: usize,
    /// Bound on the bytes held: answers are up to 64 KB each (an upstream decides), so a
    /// bound on entries alone would let 10,000 of them hold 640 MB.
    max_bytes: usize,
    max_ttl: u32,
}

fn bits(q: &Query<'_>) -> u8 {
    (q.edns.is_some() as u8) | ((q.dnssec_ok() as u8) << 1) | ((q.cd() as u8) << 2)
}

impl Cache {
    /// At most `capacity` answers holding at most `max_bytes` together.
    pub fn new(capacity: usize, max_bytes: usize, max_ttl: u32) -> Self {
        Cache {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
            }),
            hasher: foldhash::quality::RandomState::default(),
            capacity,
            max_bytes,
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

    /// Bytes the cached answers hold (what the byte bound counts).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Writes a cached answer for `q` into `out`; false on a miss. `limit` is the client's
    /// size limit: an answer that does not fit keeps as many whole records as fit, with TC.
    pub fn get(&self, upstreams: u64, q: &Query<'_>, limit: usize, out: &mut Vec<u8>) -> bool {
        if !q.key.plain() || q.signed {
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
                inner.remove(h);
            }
            return false;
        }
        let answer = e.answer.clone();
        drop(inner);
        answer.render(q, age as u32, limit, out);
        true
    }

    /// Stores an upstream answer to `q` if it is cacheable: NOERROR with answers (TTL = the
    /// smallest TTL), or NXDOMAIN/NODATA with an SOA (TTL = min(SOA TTL, SOA minimum)).
    /// Truncated, failed, signed or SOA-less negative answers are not kept, nor answers to
    /// signed queries.
    pub fn put(&self, upstreams: u64, q: &Query<'_>, answer: Answer) {
        if !q.key.plain() || q.signed || self.capacity == 0 {
            return;
        }
        let Some(ttl) = answer.cache_ttl() else {
            return;
        };
        let ttl = ttl.min(self.max_ttl);
        if ttl == 0 {
            return;
        }
        let key = Self::key(upstreams, q);
        let cost = answer.footprint() + key.name.len() + ENTRY_OVERHEAD;
        if cost > self.max_bytes {
            return;
        }
        let h = self.hash_parts(upstreams, q);
        let entry = Entry {
            key,
            answer: Arc::new(answer),
            stored: Instant::now(),
            ttl,
            cost,
        };
        let mut inner = self.lock();
        // A replaced entry keeps its place in the eviction order.
        let replaced = inner.map.contains_key(&h);
        inner.remove(h);
        while inner.map.len() >= self.capacity || inner.bytes + cost > self.max_bytes {
            match inner.order.pop_front() {
                Some(old) => inner.remove(old),
                None => break,
            }
        }
        inner.bytes += cost;
        inner.map.insert(h, entry);
        if !replaced {
            inner.order.push_back(h);
        }
        // Keep the order queue from growing without bound through replaced keys.
        if inner.order.len() > self.capacity * 2 {
            let live: std::collections::HashSet<u64> = inner.map.keys().copied().collect();
            inner.order.retain(|k| live.contains(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_name, parse_query};

    const COOKIE: u16 = 10;
    const NSID: u16 = 3;

    fn query(name: &str) -> Vec<u8> {
        let mut m = vec![0x11, 0x22, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend(encode_name(name).unwrap());
        m.extend([0, 1, 0, 1]);
        m
    }

    /// `query(name)` with an OPT record carrying `options` (code, data).
    fn query_edns(name: &str, options: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = query(name);
        m[11] = 1;
        let rdata: Vec<u8> = options
            .iter()
            .flat_map(|(c, d)| [&c.to_be_bytes()[..], &(d.len() as u16).to_be_bytes(), d].concat())
            .collect();
        m.extend([0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
        m.extend((rdata.len() as u16).to_be_bytes());
        m.extend(rdata);
        m
    }

    /// An upstream's reply to `q` (the ID we sent it with: the client's here).
    fn response(
        q: &[u8],
        rcode: u8,
        answers: &[(u32, [u8; 4])],
        soa: Option<(u32, u32)>,
    ) -> Vec<u8> {
        let mut m = q.to_vec();
        m[2] |= 0x80;
        m[3] = 0x80 | rcode;
        m[7] = answers.len() as u8;
        m[9] = soa.is_some() as u8;
        m[11] = 0;
        let qend = 12 + crate::wire::skip_name(q, 12).unwrap() - 12 + 4;
        m.truncate(qend);
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

    /// `resp` with an OPT record carrying `options` appended.
    fn with_opt(mut resp: Vec<u8>, options: &[(u16, &[u8])]) -> Vec<u8> {
        let rdata: Vec<u8> = options
            .iter()
            .flat_map(|(c, d)| [&c.to_be_bytes()[..], &(d.len() as u16).to_be_bytes(), d].concat())
            .collect();
        resp.extend([0, 0, 41, 0x10, 0, 0, 0, 0, 0]);
        resp.extend((rdata.len() as u16).to_be_bytes());
        resp.extend(rdata);
        resp[11] += 1;
        resp
    }

    fn put(c: &Cache, upstreams: u64, qb: &[u8], resp: &[u8]) {
        let q = parse_query(qb).unwrap();
        let answer = Answer::decode(resp, q.id, &q).expect("a good reply");
        c.put(upstreams, &q, answer);
    }

    fn get(c: &Cache, upstreams: u64, qb: &[u8], limit: usize) -> Option<Vec<u8>> {
        let q = parse_query(qb).unwrap();
        let mut out = Vec::new();
        c.get(upstreams, &q, limit, &mut out).then_some(out)
    }

    /// The option codes in a reply's OPT record (None: no OPT).
    fn option_codes(msg: &[u8]) -> Option<Vec<u16>> {
        let m = hickory_proto::op::Message::from_vec(msg).expect("decodes");
        m.edns.map(|e| {
            e.options()
                .options
                .iter()
                .map(|(c, _)| u16::from(*c))
                .collect()
        })
    }

    #[test]
    fn positive_hit_patches_id_case_and_ttl() {
        let c = Cache::new(10, 1 << 20, 3600);
        let qb = query("Example.COM");
        put(
            &c,
            7,
            &qb,
            &response(&qb, 0, &[(300, [1, 2, 3, 4]), (60, [5, 6, 7, 8])], None),
        );
        assert_eq!(c.len(), 1);
        let mut qb2 = query("example.com");
        qb2[0..2].copy_from_slice(&[0x33, 0x44]);
        let out = get(&c, 7, &qb2, 512).expect("hit");
        assert_eq!(&out[0..2], &[0x33, 0x44]);
        assert_eq!(
            &out[12..12 + qb2.len() - 12],
            &qb2[12..],
            "client's own case"
        );
        assert!(get(&c, 8, &qb2, 512).is_none(), "other upstream set: miss");
    }

    #[test]
    fn negative_needs_soa_and_uses_minimum() {
        let c = Cache::new(10, 1 << 20, 3600);
        let qb = query("nx.example");
        put(&c, 1, &qb, &response(&qb, 3, &[], None));
        assert!(c.is_empty(), "no SOA: not cached");
        put(&c, 1, &qb, &response(&qb, 3, &[], Some((900, 30))));
        assert_eq!(c.len(), 1);
        let inner = c.lock();
        assert_eq!(inner.map.values().next().unwrap().ttl, 30);
    }

    #[test]
    fn servfail_and_zero_ttl_not_cached_and_capacity_bounded() {
        let c = Cache::new(2, 1 << 20, 3600);
        let qb = query("a.example");
        put(&c, 1, &qb, &response(&qb, 2, &[], Some((60, 60))));
        put(&c, 1, &qb, &response(&qb, 0, &[(0, [1, 1, 1, 1])], None));
        assert!(c.is_empty());
        for n in ["b.example", "c.example", "d.example"] {
            let qb = query(n);
            put(&c, 1, &qb, &response(&qb, 0, &[(60, [1, 1, 1, 1])], None));
        }
        assert_eq!(c.len(), 2);
    }

    /// Big answers (an upstream chooses their size, up to 64 KB) are bounded by bytes, not
    /// only by count: 200 answers of 250 A records (~5 KB each) into a cache of 1,000 entries
    /// but 64 KB keep the bytes under the bound, the newest answers, and the accounting exact.
    #[test]
    fn big_answers_bounded_by_bytes() {
        let c = Cache::new(1_000, 64 * 1024, 3600);
        let many: Vec<(u32, [u8; 4])> = (0..250u32)
            .map(|i| (60, [10, 0, (i >> 8) as u8, i as u8]))
            .collect();
        for i in 0..200 {
            let qb = query(&format!("big{i}.example"));
            put(&c, 1, &qb, &response(&qb, 0, &many, None));
            assert!(c.bytes() <= 64 * 1024, "{} bytes after {i}", c.bytes());
        }
        assert!(c.len() >= 8 && c.len() < 16, "{} entries", c.len());
        assert!(get(&c, 1, &query("big199.example"), 65535).is_some());
        assert!(get(&c, 1, &query("big0.example"), 65535).is_none());
        let inner = c.lock();
        assert_eq!(
            inner.bytes,
            inner.map.values().map(|e| e.cost).sum::<usize>()
        );
        drop(inner);
        // An answer bigger than the whole bound is not kept (and evicts nothing).
        let small = Cache::new(10, 2 * 1024, 3600);
        let qb = query("big.example");
        put(&small, 1, &qb, &response(&qb, 0, &many, None));
        assert!(small.is_empty());
        // Replacing an entry counts it once.
        let qb = query("again.example");
        for _ in 0..3 {
            put(&c, 1, &qb, &response(&qb, 0, &[(60, [1, 1, 1, 1])], None));
        }
        let inner = c.lock();
        assert_eq!(
            inner.bytes,
            inner.map.values().map(|e| e.cost).sum::<usize>()
        );
    }

    #[test]
    fn oversized_hit_keeps_whole_records_with_tc() {
        let c = Cache::new(10, 1 << 20, 3600);
        let qb = query("big.example");
        let many: Vec<(u32, [u8; 4])> = (0..40).map(|i| (60, [10, 0, 0, i])).collect();
        put(&c, 1, &qb, &response(&qb, 0, &many, None));
        let out = get(&c, 1, &qb, 512).expect("hit");
        assert!(out.len() <= 512);
        assert_eq!(out[2] & 0x02, 0x02, "TC set");
        let kept = u16::from_be_bytes([out[6], out[7]]);
        assert_eq!(
            kept,
            (512 - qb.len()) as u16 / 16,
            "as many as fit, not none"
        );
        let out = get(&c, 1, &qb, 65535).expect("hit");
        assert_eq!(out[7], 40);
        assert_eq!(out[2] & 0x02, 0);
    }

    #[test]
    fn one_clients_edns_options_never_reach_another() {
        let c = Cache::new(10, 1 << 20, 3600);
        // Client 1 sent a COOKIE and asked for NSID; the upstream answered with both.
        let q1 = query_edns("www.example", &[(COOKIE, &[1; 8]), (NSID, &[])]);
        let resp = with_opt(
            response(&q1, 0, &[(60, [192, 0, 2, 1])], None),
            &[(COOKIE, &[[1u8; 8], [9u8; 8]].concat()), (NSID, b"up-1")],
        );
        put(&c, 1, &q1, &resp);
        // Client 2, its own COOKIE: no COOKIE (and no NSID) from the cache.
        let q2 = query_edns("www.example", &[(COOKIE, &[2; 8])]);
        let out = get(&c, 1, &q2, 1232).expect("hit");
        assert_eq!(option_codes(&out), Some(vec![]));
        // Client 1 again: not its old server cookie either (we never relay them).
        let out = get(&c, 1, &q1, 1232).expect("hit");
        assert_eq!(option_codes(&out), Some(vec![]));
        // A client without EDNS shares nothing with them (EDNS is part of the key).
        assert!(get(&c, 1, &query("www.example"), 512).is_none());
    }

    #[test]
    fn ad_per_query_whatever_the_query_that_filled_the_cache() {
        let c = Cache::new(10, 1 << 20, 3600);
        // Filled by a query without AD (the upstream was asked with AD and said AD).
        let plain = query("secure.example");
        let mut resp = response(&plain, 0, &[(60, [192, 0, 2, 1])], None);
        resp[3] |= 0x20;
        put(&c, 1, &plain, &resp);
        let out = get(&c, 1, &plain, 512).expect("hit");
        assert_eq!(out[3] & 0x20, 0, "no AD for a query without AD or DO");
        // glibc's trust-ad: AD in the query, AD in the answer.
        let mut ad = query("secure.example");
        ad[3] |= 0x20;
        let out = get(&c, 1, &ad, 512).expect("hit: AD is not part of the key");
        assert_eq!(out[3] & 0x20, 0x20);
    }

    #[test]
    fn signed_queries_neither_read_nor_fill_the_cache() {
        let c = Cache::new(10, 1 << 20, 3600);
        let qb = query("www.example");
        put(&c, 1, &qb, &response(&qb, 0, &[(60, [192, 0, 2, 1])], None));
        // The same question, TSIG-signed: a miss, and its answer is not kept.
        let signed = |name: &str| {
            let mut m = query(name);
            m[11] = 1;
            m.extend(b"\x01k\x00");
            m.extend([0, 250, 0, 255, 0, 0, 0, 0, 0, 2, 0, 0]);
            m
        };
        let signed_www = signed("www.example");
        assert!(parse_query(&signed_www).unwrap().signed);
        assert!(get(&c, 1, &signed_www, 512).is_none());
        put(
            &c,
            1,
            &signed("other.example"),
            &response(&query("other.example"), 0, &[(60, [192, 0, 2, 2])], None),
        );
        assert!(get(&c, 1, &query("other.example"), 512).is_none());
        assert_eq!(c.len(), 1);
    }
}
