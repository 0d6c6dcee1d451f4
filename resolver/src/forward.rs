//! Forwarding of names the tables do not know: cache first, then the view's upstream servers
//! in order, failing over on timeout, SERVFAIL and REFUSED, within one time budget shorter
//! than a stub resolver's timeout. Over the client's transport, we ask the client's question
//! with a fresh random ID and our own flags and OPT (`relay::upstream_query`); a reply is
//! decoded and checked by hickory-proto (`relay::Answer`) before it is cached or rendered for the
//! client. A UDP reply with TC set is asked again over TCP, so the client gets as many whole
//! records as fit rather than none. Signed queries (TSIG, SIG(0)) go out byte for byte with the
//! client's own ID (SIG(0) covers the ID; TSIG's original-ID field would survive a new one, but
//! one rule is simpler) and their checked replies come back byte for byte, never cached.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::{Instrument, debug, debug_span};

use crate::cache::Cache;
use crate::relay::{Answer, RelayError, upstream_query};
use crate::resolvconf::HostResolvConf;
use crate::stats::Stats;
use crate::table::{Forwarding, UpstreamSet, View};
use crate::wire::{Query, RCODE_REFUSED, RCODE_SERVFAIL, Response, flag, parse_query};

#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// Total time for one forwarded query, all upstreams included (stubs give up after 5 s).
    pub budget: Duration,
    /// Upstream exchanges in flight per sandbox; past it, REFUSED at once.
    pub max_inflight: u32,
    pub cache_entries: usize,
    /// Bytes the cache may hold (answers are up to 64 KB each).
    pub cache_max_bytes: usize,
    pub cache_max_ttl: u32,
    /// When every server failed and the last one answered SERVFAIL or REFUSED, relay that
    /// answer (aardvark-dns does) instead of our own SERVFAIL.
    pub relay_failure: bool,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            budget: Duration::from_secs(2),
            max_inflight: 512,
            cache_entries: 10_000,
            cache_max_bytes: 32 << 20,
            cache_max_ttl: 3600,
            relay_failure: false,
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
    #[error("{0}")]
    Reply(#[from] RelayError),
}

/// A checked upstream reply.
enum Reply {
    /// To render for the client (and maybe cache).
    Answer(Answer),
    /// The reply to a signed query, relayed as it came.
    Signed { bytes: Vec<u8>, rcode: u16 },
}

impl Reply {
    fn rcode(&self) -> u16 {
        match self {
            Reply::Answer(a) => a.rcode(),
            Reply::Signed { rcode, .. } => *rcode,
        }
    }
}

pub struct Forwarder {
    cfg: ForwardConfig,
    cache: Cache,
    defaults: DefaultUpstreams,
    ids: foldhash::quality::RandomState,
    counter: AtomicU64,
    /// Counters of the request path (queries, forwards, cache), read by the daemon's metrics.
    pub stats: Stats,
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
            cache: Cache::new(cfg.cache_entries, cfg.cache_max_bytes, cfg.cache_max_ttl),
            cfg,
            defaults,
            ids: foldhash::quality::RandomState::default(),
            counter: AtomicU64::new(0),
            stats: Stats::default(),
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
    /// upstream's answer rendered for it, see `relay`; a signed reply as it came; or our own
    /// SERVFAIL/REFUSED).
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
                Some(Reply::Answer(answer)) => {
                    let mut out = Vec::with_capacity(512);
                    answer.render(&q, 0, limit, &mut out);
                    self.cache.put(set.id, &q, answer);
                    Some(out)
                }
                Some(Reply::Signed { bytes, rcode }) if bytes.len() > limit => {
                    // A signed reply cannot be cut: an empty TC=1 reply sends the client to TCP.
                    debug!(
                        len = bytes.len(),
                        limit, "signed reply too big for the client: TC"
                    );
                    let mut out = Vec::with_capacity(64);
                    Response::new(&mut out, &q, (rcode & 0xF) as u8, ra | flag::TC, limit).finish();
                    Some(out)
                }
                Some(Reply::Signed { bytes, .. }) => Some(bytes),
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
    ) -> Option<Reply> {
        let deadline = Instant::now() + self.cfg.budget;
        let n = set.servers.len();
        if n == 0 {
            debug!("no upstream servers: SERVFAIL");
            return None;
        }
        let mut failed = None;
        for (i, server) in set.servers.iter().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < Duration::from_millis(5) {
                debug!("budget spent");
                break;
            }
            // Share what is left among the servers still to try, but give each a fair chance.
            let share = (remaining / (n - i) as u32).max(remaining.min(Duration::from_millis(400)));
            let (id, msg) = if q.signed {
                (q.id, packet.to_vec())
            } else {
                let id = self.random_id();
                (id, upstream_query(q, id))
            };
            self.stats.forwards.fetch_add(1, Ordering::Relaxed);
            match exchange(*server, &msg, id, q, tcp, share).await {
                Ok(reply) => {
                    let rcode = reply.rcode();
                    if rcode == RCODE_SERVFAIL as u16 || rcode == RCODE_REFUSED as u16 {
                        self.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
                        debug!(%server, rcode, "upstream failed, trying the next");
                        failed = Some(reply);
                        continue;
                    }
                    return Some(reply);
                }
                Err(e) => {
                    self.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
                    debug!(%server, error = %e, "upstream failed, trying the next")
                }
            }
        }
        failed.filter(|_| self.cfg.relay_failure)
    }
}

/// Checks a reply to `msg` (sent with `id` for client query `q`).
fn check(resp: Vec<u8>, id: u16, q: &Query<'_>) -> Result<Reply, RelayError> {
    let answer = Answer::decode(&resp, id, q)?;
    Ok(if q.signed {
        Reply::Signed {
            bytes: resp,
            rcode: answer.rcode(),
        }
    } else {
        Reply::Answer(answer)
    })
}

/// One upstream exchange over the client's transport; a truncated UDP reply to an unsigned
/// query is asked again over TCP (what is left of `timeout`), falling back to the truncated one.
async fn exchange(
    server: SocketAddr,
    msg: &[u8],
    id: u16,
    q: &Query<'_>,
    tcp: bool,
    timeout: Duration,
) -> Result<Reply, ExchangeError> {
    let deadline = Instant::now() + timeout;
    if tcp {
        return exchange_tcp(server, msg, id, q, timeout).await;
    }
    let reply = exchange_udp(server, msg, id, q, timeout).await?;
    if let Reply::Answer(a) = &reply
        && a.truncated()
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match exchange_tcp(server, msg, id, q, left).await {
            Ok(full) => return Ok(full),
            Err(e) => debug!(%server, error = %e, "TCP retry of a truncated reply failed"),
        }
    }
    Ok(reply)
}

async fn exchange_udp(
    server: SocketAddr,
    msg: &[u8],
    id: u16,
    q: &Query<'_>,
    timeout: Duration,
) -> Result<Reply, ExchangeError> {
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
            // Datagrams without our ID (late or spoofed) are ignored, and so are those with
            // our ID that answer another question (RFC 5452: only a datagram matching ID,
            // question and addresses is the reply; a forger who guessed the ID must not make
            // us give up on the real reply still to come). Any other datagram with our ID
            // must be a good reply, or this server has failed.
            if buf[..n].get(0..2) == Some(&id.to_be_bytes()[..]) && n > 2 && buf[2] & 0x80 != 0 {
                match check(buf[..n].to_vec(), id, q) {
                    Err(RelayError::Question) => {
                        debug!(%server, "reply to another question ignored");
                        continue;
                    }
                    r => return Ok::<_, ExchangeError>(r?),
                }
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| ExchangeError::Timeout)?
}

async fn exchange_tcp(
    server: SocketAddr,
    msg: &[u8],
    id: u16,
    q: &Query<'_>,
    timeout: Duration,
) -> Result<Reply, ExchangeError> {
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
        Ok(check(buf, id, q)?)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ExchangeError::Timeout)?
}

/// For tests and tools: what rcode a reply carries.
pub fn rcode_of(resp: &[u8]) -> Option<u8> {
    resp.get(3).map(|b| b & 0xF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::encode_name;

    /// A client's A query for `name`, no EDNS.
    fn query(name: &str) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend(encode_name(name).unwrap());
        m.extend([0, 1, 0, 1]);
        m
    }

    /// A reply with `id` for question `name` (A, IN), one A record `ip`.
    fn reply(id: u16, name: &str, ip: [u8; 4]) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend([0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
        m.extend(encode_name(name).unwrap());
        m.extend([0, 1, 0, 1, 0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        m.extend(ip);
        m
    }

    /// Spoofed datagrams before the real reply: one with another ID, one with our ID but
    /// another question. Both are ignored and the real reply, 50 ms later, is the answer
    /// (the second one used to count as the upstream failing: SERVFAIL, or the next server).
    #[tokio::test]
    async fn udp_replies_to_another_id_or_question_are_ignored() {
        let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = up.local_addr().unwrap();
        let fake = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (n, from) = up.recv_from(&mut buf).await.unwrap();
            let q = &buf[..n];
            let id = u16::from_be_bytes([q[0], q[1]]);
            let forged = [
                reply(id ^ 0xA5A5, "www.example", [192, 0, 2, 66]),
                reply(id, "evil.www.example", [192, 0, 2, 66]),
            ];
            for f in &forged {
                up.send_to(f, from).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            up.send_to(&reply(id, "www.example", [192, 0, 2, 7]), from)
                .await
                .unwrap();
        });
        let packet = query("www.example");
        let q = parse_query(&packet).unwrap();
        let msg = upstream_query(&q, 0x4242);
        let r = exchange_udp(server, &msg, 0x4242, &q, Duration::from_secs(2))
            .await
            .expect("the real reply");
        let Reply::Answer(a) = r else {
            panic!("not an answer")
        };
        let mut out = Vec::new();
        a.render(&q, 0, 512, &mut out);
        assert_eq!(rcode_of(&out), Some(0));
        assert!(out.ends_with(&[192, 0, 2, 7]), "{out:?}");
        assert!(!out.windows(4).any(|w| w == [192, 0, 2, 66]), "{out:?}");
        fake.await.unwrap();
    }
}
