//! Forwarding of names the tables do not know: cache first, then the view's upstream servers
//! in order, failing over on timeout, SERVFAIL and REFUSED, within one time budget shorter
//! than a stub resolver's timeout. The query goes out as the client sent it (over the client's
//! transport) with a fresh random ID; the reply is checked against the question and relayed.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::{Instrument, debug, debug_span};

use crate::cache::{Cache, patch_for_client, truncated_reply};
use crate::resolvconf::HostResolvConf;
use crate::table::{Forwarding, UpstreamSet, View};
use crate::wire::{HEADER_LEN, Query, RCODE_REFUSED, RCODE_SERVFAIL, Response, flag, parse_query};

#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// Total time for one forwarded query, all upstreams included (stubs give up after 5 s).
    pub budget: Duration,
    /// Upstream exchanges in flight per sandbox; past it, REFUSED at once.
    pub max_inflight: u32,
    pub cache_entries: usize,
    pub cache_max_ttl: u32,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            budget: Duration::from_secs(2),
            max_inflight: 512,
            cache_entries: 10_000,
            cache_max_ttl: 3600,
        }
    }
}

/// Where views without servers of their own forward to.
pub enum DefaultUpstreams {
    /// The host's resolv.conf, followed as it changes.
    Host(HostResolvConf),
    /// A fixed list (`--upstream`).
    Fixed(Arc<UpstreamSet>),
}

impl DefaultUpstreams {
    fn get(&self) -> Arc<UpstreamSet> {
        match self {
            DefaultUpstreams::Host(h) => h.upstreams(),
            DefaultUpstreams::Fixed(s) => s.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("reply does not match the query")]
    Mismatch,
}

pub struct Forwarder {
    cfg: ForwardConfig,
    cache: Cache,
    defaults: DefaultUpstreams,
    ids: foldhash::quality::RandomState,
    counter: AtomicU64,
}

/// Releases a sandbox's in-flight slot when the exchange ends, however it ends.
struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Forwarder {
    pub fn new(cfg: ForwardConfig, defaults: DefaultUpstreams) -> Self {
        Forwarder {
            cache: Cache::new(cfg.cache_entries, cfg.cache_max_ttl),
            cfg,
            defaults,
            ids: foldhash::quality::RandomState::default(),
            counter: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &ForwardConfig {
        &self.cfg
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn defaults(&self) -> &DefaultUpstreams {
        &self.defaults
    }

    /// The servers a view forwards to; None if it never forwards.
    pub fn upstreams_for(&self, view: &View) -> Option<Arc<UpstreamSet>> {
        match &view.forwarding {
            Forwarding::Never => None,
            Forwarding::Upstreams(s) => Some(s.clone()),
            Forwarding::Default => Some(self.defaults.get()),
        }
    }

    /// Answers from the cache, synchronously (the hot path for repeated unknown names).
    pub fn cached(&self, view: &View, q: &Query<'_>, limit: usize, out: &mut Vec<u8>) -> bool {
        match &view.forwarding {
            Forwarding::Never => false,
            Forwarding::Upstreams(s) => self.cache.get(s.id, q, limit, out),
            Forwarding::Default => self.cache.get(self.defaults.get().id, q, limit, out),
        }
    }

    fn random_id(&self) -> u16 {
        let mut h = self.ids.build_hasher();
        h.write_u64(self.counter.fetch_add(1, Ordering::Relaxed));
        h.finish() as u16
    }

    /// Forwards a query packet for `view` and returns the reply to send to the client (the
    /// upstream's, patched to the client's ID and case; or our own SERVFAIL/REFUSED).
    pub async fn forward(&self, view: &View, packet: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let q = parse_query(packet).ok()?;
        let limit = if tcp {
            u16::MAX as usize
        } else {
            q.udp_limit()
        };
        let span = debug_span!("forward", sandbox = %view.sandbox, name = q.key.as_str(), qtype = q.qtype, tcp);
        async {
            let ra = if view.can_forward() { flag::RA } else { 0 };
            let own = |rcode| {
                let mut out = Vec::with_capacity(64);
                Response::new(&mut out, &q, rcode, ra, limit).finish();
                out
            };
            let Some(set) = self.upstreams_for(view) else {
                return Some(own(RCODE_REFUSED));
            };
            if view.inflight.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_inflight {
                view.inflight.fetch_sub(1, Ordering::Relaxed);
                debug!("too many forwards in flight for this sandbox: REFUSED");
                return Some(own(RCODE_REFUSED));
            }
            let _slot = Slot(view.inflight.clone());
            match self.exchange_all(&set, packet, &q, tcp).await {
                Some(mut resp) => {
                    self.cache.put(set.id, &q, &resp);
                    patch_for_client(&mut resp, &q);
                    if resp.len() > limit {
                        truncated_reply(&mut resp, &q, limit);
                    }
                    Some(resp)
                }
                None => Some(own(RCODE_SERVFAIL)),
            }
        }
        .instrument(span)
        .await
    }

    /// Tries each server in order within the budget; None if none gave a usable answer.
    async fn exchange_all(
        &self,
        set: &UpstreamSet,
        packet: &[u8],
        q: &Query<'_>,
        tcp: bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + self.cfg.budget;
        let n = set.servers.len();
        if n == 0 {
            debug!("no upstream servers: SERVFAIL");
            return None;
        }
        let mut msg = packet.to_vec();
        for (i, server) in set.servers.iter().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < Duration::from_millis(5) {
                debug!("budget spent");
                break;
            }
            // Share what is left among the servers still to try, but give each a fair chance.
            let share = (remaining / (n - i) as u32).max(remaining.min(Duration::from_millis(400)));
            let id = self.random_id();
            msg[0..2].copy_from_slice(&id.to_be_bytes());
            let result = if tcp {
                exchange_tcp(*server, &msg, q, share).await
            } else {
                exchange_udp(*server, &msg, q, share).await
            };
            match result {
                Ok(resp) => {
                    let rcode = resp[3] & 0xF;
                    if rcode == RCODE_SERVFAIL || rcode == RCODE_REFUSED {
                        debug!(%server, rcode, "upstream failed, trying the next");
                        continue;
                    }
                    return Some(resp);
                }
                Err(e) => debug!(%server, error = %e, "upstream failed, trying the next"),
            }
        }
        None
    }
}

/// True if `resp` answers `msg` (ID, QR, same question up to case).
fn matches(resp: &[u8], msg: &[u8], q: &Query<'_>) -> bool {
    let end = HEADER_LEN + q.question.len();
    resp.len() >= HEADER_LEN
        && resp[0..2] == msg[0..2]
        && resp[2] & 0x80 != 0
        && u16::from_be_bytes([resp[4], resp[5]]) == 1
        && resp
            .get(HEADER_LEN..end)
            .is_some_and(|qs| qs.eq_ignore_ascii_case(q.question))
}

async fn exchange_udp(
    server: SocketAddr,
    msg: &[u8],
    q: &Query<'_>,
    timeout: Duration,
) -> Result<Vec<u8>, ExchangeError> {
    let bind: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    // A connected socket per attempt: random source port, and ICMP errors (a dead upstream)
    // come back as ECONNREFUSED at once instead of a timeout.
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    sock.send(msg).await?;
    let mut buf = vec![0u8; u16::MAX as usize];
    let wait = async {
        loop {
            let n = sock.recv(&mut buf).await?;
            if matches(&buf[..n], msg, q) {
                buf.truncate(n);
                return Ok::<_, ExchangeError>(());
            }
            // Anything else (late or spoofed replies) is ignored.
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| ExchangeError::Timeout)??;
    Ok(buf)
}

async fn exchange_tcp(
    server: SocketAddr,
    msg: &[u8],
    q: &Query<'_>,
    timeout: Duration,
) -> Result<Vec<u8>, ExchangeError> {
    let work = async {
        let mut s = TcpStream::connect(server).await?;
        s.set_nodelay(true)?;
        let mut framed = Vec::with_capacity(msg.len() + 2);
        framed.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        framed.extend_from_slice(msg);
        s.write_all(&framed).await?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).await?;
        if !matches(&buf, msg, q) {
            return Err(ExchangeError::Mismatch);
        }
        Ok(buf)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ExchangeError::Timeout)?
}

/// For tests and tools: what rcode a reply carries.
pub fn rcode_of(resp: &[u8]) -> Option<u8> {
    resp.get(3).map(|b| b & 0xF)
}
