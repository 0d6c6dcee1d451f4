//! Counters of the request path, for the daemon's metrics: one relaxed atomic add per event,
//! no lock and no allocation per query. Queries are counted in a fixed array by type bucket,
//! rcode bucket and where the answer came from; the exporter reads them at scrape time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The name tables (the engine's own answer, NODATA and NXDOMAIN included).
    Local = 0,
    /// The forward cache.
    Cache = 1,
    /// An upstream server (or our own SERVFAIL/REFUSED when they failed or the bound was hit).
    Upstream = 2,
}

pub const SOURCES: [&str; 3] = ["local", "cache", "upstream"];
/// Query types counted apart; everything else is "other".
pub const QTYPES: [&str; 7] = ["A", "AAAA", "PTR", "SRV", "TXT", "ANY", "other"];
/// Response codes counted apart; everything else is "other".
pub const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
];

const CELLS: usize = QTYPES.len() * RCODES.len() * SOURCES.len();

/// Upper bounds (seconds) of the forwarded queries' latency buckets; one more for the rest.
pub const LATENCY_BOUNDS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

fn qtype_idx(qtype: u16) -> usize {
    match qtype {
        1 => 0,
        28 => 1,
        12 => 2,
        33 => 3,
        16 => 4,
        255 => 5,
        _ => 6,
    }
}

fn rcode_idx(rcode: u8) -> usize {
    match rcode {
        0..=5 => rcode as usize,
        _ => 6,
    }
}

#[derive(Debug)]
pub struct Stats {
    queries: [AtomicU64; CELLS],
    /// Upstream exchanges started (one per server tried).
    pub forwards: AtomicU64,
    /// Upstream exchanges that failed: timeout, error, a reply that failed the checks,
    /// SERVFAIL or REFUSED.
    pub upstream_failures: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Queries waiting for upstream servers now, all sandboxes.
    pub inflight: AtomicI64,
    /// TCP connections accepted, and open now (all listeners).
    pub tcp_accepted: AtomicU64,
    pub tcp_open: AtomicI64,
    /// Forwarded queries' time to the reply: per bucket (not cumulative), and the sum in µs.
    latency: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    latency_sum_us: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            queries: std::array::from_fn(|_| AtomicU64::new(0)),
            forwards: AtomicU64::new(0),
            upstream_failures: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            inflight: AtomicI64::new(0),
            tcp_accepted: AtomicU64::new(0),
            tcp_open: AtomicI64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// Counts an answered query; `reply` is the message sent (its rcode is read from it).
    #[inline]
    pub fn answered(&self, qtype: u16, reply: &[u8], src: Source) {
        let rcode = reply.get(3).map(|b| b & 0xF).unwrap_or(2);
        let i = (qtype_idx(qtype) * RCODES.len() + rcode_idx(rcode)) * SOURCES.len() + src as usize;
        self.queries[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Every non-zero query cell: (qtype, rcode, source, count).
    pub fn queries(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (t, qt) in QTYPES.iter().enumerate() {
            for (r, rc) in RCODES.iter().enumerate() {
                for (s, src) in SOURCES.iter().enumerate() {
                    let n = self.queries[(t * RCODES.len() + r) * SOURCES.len() + s]
                        .load(Ordering::Relaxed);
                    if n > 0 {
                        out.push((*qt, *rc, *src, n));
                    }
                }
            }
        }
        out
    }

    /// A forwarded query answered (or given up) after `took`.
    pub fn forwarded_in(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The latency histogram: sum (seconds), count, and (upper bound, count) per bucket, not
    /// cumulative, the last bound infinite.
    pub fn latency(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.latency.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Counts one in a gauge while it lives (a query waiting for upstreams, an open connection).
pub struct InFlight<'a>(&'a AtomicI64);

impl<'a> InFlight<'a> {
    pub fn new(c: &'a AtomicI64) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        InFlight(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_by_type_rcode_and_source() {
        let s = Stats::default();
        let noerror = [0u8, 0, 0x84, 0x00];
        let nxdomain = [0u8, 0, 0x84, 0x03];
        s.answered(1, &noerror, Source::Local);
        s.answered(1, &noerror, Source::Local);
        s.answered(12, &nxdomain, Source::Upstream);
        s.answered(99, &[0, 0, 0x84, 0x0b], Source::Cache);
        assert_eq!(
            s.queries(),
            vec![
                ("A", "NOERROR", "local", 2),
                ("PTR", "NXDOMAIN", "upstream", 1),
                ("other", "other", "cache", 1),
            ]
        );
        {
            let _a = InFlight::new(&s.inflight);
            let _b = InFlight::new(&s.inflight);
            assert_eq!(s.inflight.load(Ordering::Relaxed), 2);
        }
        assert_eq!(s.inflight.load(Ordering::Relaxed), 0);
        s.forwarded_in(Duration::from_micros(1500));
        s.forwarded_in(Duration::from_millis(1));
        s.forwarded_in(Duration::from_secs(9));
        let (sum, count, buckets) = s.latency();
        assert_eq!(count, 3);
        assert!((sum - 9.0025).abs() < 1e-9, "{sum}");
        assert_eq!(buckets[0], (0.001, 1));
        assert_eq!(buckets[1], (0.002, 1));
        assert_eq!(buckets[12].1, 1);
        assert!(buckets[12].0.is_infinite());
    }
}
