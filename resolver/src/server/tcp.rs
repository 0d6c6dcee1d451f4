//! TCP serving: one task per connection, several queries per connection (answered out of order
//! when forwards are slow), an idle timeout, and a cap on connections per listener. At the cap a
//! new connection is not turned away: an idle connection (no query in flight) is closed to
//! make room — one that was already answered first (its client has what it asked for and may
//! connect again, RFC 7766 §6.2.3), else the one idle the longest. So a sandbox holding every
//! slot with idle or half-sent queries (64 connections that each sent half a query) cannot
//! block TCP DNS for the idle timeout, and a burst of short connections never closes one
//! whose query is still unread (it did: 121 of 10,000 storm connections lost their query);
//! only when every connection has a query in flight is a new one closed at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc};
use tracing::{debug, warn};

use super::{Handled, Resolver, ViewSelector};
use crate::stats::InFlight;

/// One open connection, as the listener sees it.
struct Conn {
    /// Milliseconds since the listener started, at the last complete query (or the accept).
    last: AtomicU64,
    /// A complete query was read on it (and so answered, once nothing is in flight).
    served: AtomicBool,
    /// Permits for queries in flight; all available means nothing is being answered.
    inflight: Arc<Semaphore>,
    /// Told to close (to make room for a new connection).
    close: Notify,
}

/// The listener's open connections.
struct Conns {
    epoch: Instant,
    max: usize,
    max_inflight: usize,
    next: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Conns {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection. At the cap, first tells the connection idle the longest to
    /// close (it leaves the table at once); None if every connection has a query in flight.
    fn admit(self: &Arc<Self>) -> Option<Registered> {
        let mut live = self.lock();
        if live.len() >= self.max {
            // Answered ones first; then idle the longest; of those idle since the same
            // millisecond, the oldest.
            let (&victim, _) = live
                .iter()
                .filter(|(_, c)| c.inflight.available_permits() == self.max_inflight)
                .min_by_key(|&(id, c)| {
                    (
                        !c.served.load(Ordering::Relaxed),
                        c.last.load(Ordering::Relaxed),
                        *id,
                    )
                })?;
            if let Some(c) = live.remove(&victim) {
                c.close.notify_one();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            last: AtomicU64::new(self.now()),
            served: AtomicBool::new(false),
            inflight: Arc::new(Semaphore::new(self.max_inflight)),
            close: Notify::new(),
        });
        live.insert(id, conn.clone());
        Some(Registered {
            conns: self.clone(),
            id,
            conn,
        })
    }
}

/// A connection's place in the table, given up when its task ends (however it ends).
struct Registered {
    conns: Arc<Conns>,
    id: u64,
    conn: Arc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.conns.lock().remove(&self.id);
    }
}

/// Reads exactly `buf.len()` bytes within `idle`; false if the connection was idle that long,
/// closed, broke, or was told to close.
async fn read_or_close<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut [u8],
    idle: Duration,
    close: &Notify,
) -> bool {
    tokio::select! {
        r = tokio::time::timeout(idle, rd.read_exact(buf)) => matches!(r, Ok(Ok(_))),
        _ = close.notified() => {
            debug!("TCP connection closed to make room for a new one");
            false
        }
    }
}

impl Resolver {
    /// Serves a TCP listener until it fails for good or the task is aborted.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener, sel: ViewSelector) {
        let conns = Arc::new(Conns {
            epoch: Instant::now(),
            max: self.tcp.max_connections,
            max_inflight: self.tcp.max_inflight,
            next: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
        });
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(reg) = conns.admit() else {
                debug!(%peer, "TCP connection cap reached, every connection busy: closing");
                drop(stream);
                continue;
            };
            self.forwarder
                .stats
                .tcp_accepted
                .fetch_add(1, Ordering::Relaxed);
            let me = self.clone();
            let sel = sel.clone();
            tokio::spawn(async move {
                let counted = me.clone();
                let _open = InFlight::new(&counted.forwarder.stats.tcp_open);
                me.tcp_connection(stream, peer, sel, &reg).await;
                drop(reg);
            });
        }
    }

    async fn tcp_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        sel: ViewSelector,
        reg: &Registered,
    ) {
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(self.tcp.max_inflight);
        let writer = tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let mut framed = Vec::with_capacity(msg.len() + 2);
                framed.extend_from_slice(&(msg.len() as u16).to_be_bytes());
                framed.extend_from_slice(&msg);
                if wr.write_all(&framed).await.is_err() {
                    return;
                }
            }
        });
        let conn = &reg.conn;
        let idle = self.tcp.idle_timeout;
        loop {
            let mut len = [0u8; 2];
            if !read_or_close(&mut rd, &mut len, idle, &conn.close).await {
                break; // idle, closed, broken or evicted
            }
            let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
            if !read_or_close(&mut rd, &mut msg, idle, &conn.close).await {
                break;
            }
            conn.last.store(reg.conns.now(), Ordering::Relaxed);
            conn.served.store(true, Ordering::Relaxed);
            let Ok(permit) = conn.inflight.clone().acquire_owned().await else {
                break;
            };
            let mut out = Vec::with_capacity(512);
            let handled = self.handle_fresh(&sel, peer.ip(), &msg, false, &mut out);
            match handled {
                Handled::Reply => {
                    if tx.send(out).await.is_err() {
                        break;
                    }
                    drop(permit);
                }
                Handled::Silent => drop(permit),
                Handled::Forward(view) => {
                    let me = self.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Some(resp) = me.forward_logged(&view, &msg, true).await {
                            let _ = tx.send(resp).await;
                        }
                        drop(permit);
                    });
                }
            }
        }
        // Forwards still in flight hold senders; the writer ends when they are done.
        drop(tx);
        let _ = writer.await;
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::forward::DefaultUpstreams;
    use crate::server::{ResolverConfig, TcpConfig};
    use crate::table::UpstreamSet;
    use crate::wire::encode_name;

    const STATE: &str = r#"{
      "networks": [{"id": "n1", "name": "net1"}],
      "sandboxes": [{"id": "0101010101010101010101010101010101010101010101010101010101010101",
        "name": "a", "endpoints": [{"network": "n1", "ipv4": "10.0.0.2"}]}]
    }"#;

    fn framed_query(name: &str) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend(encode_name(name).unwrap());
        m.extend([0, 1, 0, 1]);
        let mut f = (m.len() as u16).to_be_bytes().to_vec();
        f.extend(m);
        f
    }

    fn conns(max: usize) -> Arc<Conns> {
        Arc::new(Conns {
            epoch: Instant::now(),
            max,
            max_inflight: 2,
            next: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
        })
    }

    fn open(c: &Arc<Conns>, regs: &[&Registered]) -> Vec<u64> {
        let live = c.lock();
        regs.iter()
            .filter(|r| live.contains_key(&r.id))
            .map(|r| r.id)
            .collect()
    }

    /// A connection that was answered makes room before one accepted earlier whose query is
    /// not read yet (a burst of short connections lost queries that way).
    #[test]
    fn at_the_cap_an_answered_connection_goes_before_an_unread_one() {
        let c = conns(2);
        let fresh = c.admit().unwrap();
        std::thread::sleep(Duration::from_millis(3));
        let answered = c.admit().unwrap();
        answered.conn.last.store(c.now(), Ordering::Relaxed);
        answered.conn.served.store(true, Ordering::Relaxed);
        let new = c.admit().unwrap();
        assert_eq!(open(&c, &[&fresh, &answered, &new]), [fresh.id, new.id]);
        // Among the never answered (half-sent queries), the one idle the longest goes.
        let newer = c.admit().unwrap();
        assert_eq!(open(&c, &[&fresh, &new, &newer]), [new.id, newer.id]);
        // Busy ones (a query in flight) never go; all busy: the new one is turned away.
        let p1 = new.conn.inflight.clone().try_acquire_owned().unwrap();
        let p2 = newer.conn.inflight.clone().try_acquire_owned().unwrap();
        assert!(c.admit().is_none());
        drop((p1, p2));
    }

    /// At the cap, a new connection gets its answer and the connection idle the longest is
    /// closed (before: the new one was closed, until the idle timeout freed a slot).
    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let resolver = Resolver::new(
            ResolverConfig {
                tcp: TcpConfig {
                    max_connections: 4,
                    idle_timeout: Duration::from_secs(60),
                    max_inflight: 4,
                },
                ..ResolverConfig::default()
            },
            DefaultUpstreams::Fixed(Arc::new(UpstreamSet::new(Vec::new()))),
        );
        let state: crate::State = serde_json::from_str(STATE).unwrap();
        resolver.tables.replace_all(&state).unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
        let addr = listener.local_addr().unwrap();
        let _server = rt.spawn(resolver.serve_tcp(listener, ViewSelector::BySource));

        let connect = || {
            let c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            c
        };
        // Four connections that each sent half a query, oldest first. Each gets a full query
        // answered first, so it is known to be in the table before the next one connects.
        let mut idle: Vec<std::net::TcpStream> = (0..4)
            .map(|_| {
                let mut c = connect();
                c.write_all(&framed_query("a")).unwrap();
                let mut len = [0u8; 2];
                c.read_exact(&mut len).unwrap();
                let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
                c.read_exact(&mut reply).unwrap();
                c.write_all(&framed_query("a")[..7]).unwrap();
                c
            })
            .collect();
        // A fifth: answered (not closed), and the oldest idle connection is closed for it.
        let mut fifth = connect();
        fifth.write_all(&framed_query("a")).unwrap();
        let mut len = [0u8; 2];
        fifth
            .read_exact(&mut len)
            .expect("the fifth connection is answered");
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        fifth.read_exact(&mut reply).unwrap();
        assert_eq!(&reply[0..2], &[0x12, 0x34], "a reply to it");
        let mut rest = Vec::new();
        let n = idle[0].read_to_end(&mut rest).expect("EOF, not a timeout");
        assert_eq!(n, 0, "the oldest idle connection was closed");
        // The others are still open: a query completed on the second one is answered.
        idle[1].write_all(&framed_query("a")[7..]).unwrap();
        idle[1].read_exact(&mut len).expect("still served");
    }
}
