//! Hostile and probing DNS clients for the flood tests and `tests/bench/floods.sh`. Runs in
//! whatever network namespace it is started in (`sdctl exec`, `nsenter`); every mode is
//! bounded in time and count and prints one line of `key=value` figures.
//!
//!   flood garbage ADDR SECS [RATE]      random datagrams (and half of them with a DNS-like
//!                                       header) plus malformed TCP streams: RATE datagrams/s
//!                                       and RATE/50 streams/s (0 = both as fast as they can)
//!   flood probe ADDR SECS RATE NAME [tcp]   valid A queries for NAME at RATE/s, 1 s timeout
//!   flood storm ADDR COUNT CONC NAME    COUNT TCP connections (CONC at once), each one query
//!   flood loris ADDR CONNS SECS         CONNS connections each holding half a query

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sdnet_tests::Rng;

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    t ^ u64::from(std::process::id()) << 32
}

/// An A query for `name` with id `id`, recursion desired.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.trim_end_matches('.').split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A reply to query `id` with rcode NOERROR and at least one answer.
fn answered(id: u16, r: &[u8]) -> bool {
    r.len() >= 12
        && u16::from_be_bytes([r[0], r[1]]) == id
        && r[2] & 0x80 != 0
        && r[3] & 0x0F == 0
        && u16::from_be_bytes([r[6], r[7]]) >= 1
}

fn arg<T: std::str::FromStr>(a: &[String], i: usize, what: &str) -> T {
    match a.get(i).map(|s| s.parse::<T>()) {
        Some(Ok(v)) => v,
        _ => {
            eprintln!("flood: bad or missing {what} (argument {i})");
            std::process::exit(2);
        }
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let mode = a.get(1).map(String::as_str).unwrap_or("");
    let addr: SocketAddr = arg(&a, 2, "ADDR (IP:PORT)");
    match mode {
        "garbage" => garbage(
            addr,
            arg(&a, 3, "SECS"),
            a.get(4).map_or(0, |_| arg(&a, 4, "RATE")),
        ),
        "probe" => probe(
            addr,
            arg(&a, 3, "SECS"),
            arg(&a, 4, "RATE"),
            &arg::<String>(&a, 5, "NAME"),
            a.get(6).is_some_and(|m| m == "tcp"),
        ),
        "storm" => storm(
            addr,
            arg(&a, 3, "COUNT"),
            arg(&a, 4, "CONC"),
            &arg::<String>(&a, 5, "NAME"),
        ),
        "loris" => loris(addr, arg(&a, 3, "CONNS"), arg(&a, 4, "SECS")),
        _ => {
            eprintln!("usage: flood garbage|probe|storm|loris ADDR …  (see the source's header)");
            std::process::exit(2);
        }
    }
}

/// Paces a loop at `rate` per second (0: no pacing).
struct Pace {
    start: Instant,
    rate: u64,
}

impl Pace {
    fn wait(&self, done: u64) {
        if self.rate == 0 {
            return;
        }
        let due = self.start + Duration::from_secs_f64(done as f64 / self.rate as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

fn garbage(addr: SocketAddr, secs: f64, rate: u64) {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let tcp_streams = Arc::new(AtomicU64::new(0));
    // Malformed TCP alongside: length prefixes that lie, random bodies, early closes.
    let tcp = {
        let n = tcp_streams.clone();
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed() ^ 0x5555);
            let mut buf = [0u8; 700];
            let pace = Pace {
                start: Instant::now(),
                rate: rate.div_ceil(50),
            };
            let mut made = 0u64;
            while Instant::now() < until {
                made += 1;
                pace.wait(made);
                if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
                    let len = (rng.next_u64() % buf.len() as u64) as usize;
                    rng.fill(&mut buf[..len]);
                    let _ = s.write_all(&buf[..len]);
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let Ok(sock) = UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }) else {
        eprintln!("flood: cannot bind a UDP socket");
        std::process::exit(1);
    };
    let mut rng = Rng::new(seed());
    let mut buf = [0u8; 1500];
    let pace = Pace {
        start: Instant::now(),
        rate,
    };
    let mut sent = 0u64;
    while Instant::now() < until {
        let len = (rng.next_u64() % 600) as usize;
        rng.fill(&mut buf[..len]);
        if len >= 12 && sent.is_multiple_of(2) {
            // Looks like a query (QR clear, one question) with a broken body.
            buf[2] &= 0x7F;
            buf[4] = 0;
            buf[5] = 1;
        }
        if sock.send_to(&buf[..len], addr).is_ok() {
            sent += 1;
        }
        pace.wait(sent);
    }
    let _ = tcp.join();
    println!(
        "garbage datagrams={sent} tcp_streams={} secs={secs}",
        tcp_streams.load(Ordering::Relaxed)
    );
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn tcp_ask(addr: SocketAddr, q: &[u8], id: u16, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let mut msg = (q.len() as u16).to_be_bytes().to_vec();
    msg.extend_from_slice(q);
    if s.write_all(&msg).is_err() {
        return false;
    }
    let mut len = [0u8; 2];
    if s.read_exact(&mut len).is_err() {
        return false;
    }
    let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut r).is_ok() && answered(id, &r)
}

fn probe(addr: SocketAddr, secs: f64, rate: u64, name: &str, tcp: bool) {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let timeout = Duration::from_secs(1);
    let mut lat = Vec::new();
    let (mut sent, mut ok) = (0u64, 0u64);
    let pace = Pace {
        start: Instant::now(),
        rate: rate.max(1),
    };
    let udp = UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .and_then(|s| s.connect(addr).map(|_| s));
    let Ok(udp) = udp else {
        eprintln!("flood: cannot open a UDP socket to {addr}");
        std::process::exit(1);
    };
    let mut buf = [0u8; 1500];
    while Instant::now() < until {
        let id = (sent as u16).wrapping_mul(31).wrapping_add(7);
        let q = query(id, name);
        let t = Instant::now();
        let good = if tcp {
            tcp_ask(addr, &q, id, timeout)
        } else if udp.send(&q).is_ok() {
            // Stale replies to earlier (timed-out) queries are skipped, up to the timeout.
            let mut good = false;
            while t.elapsed() < timeout {
                let _ = udp.set_read_timeout(Some(
                    timeout
                        .saturating_sub(t.elapsed())
                        .max(Duration::from_millis(1)),
                ));
                match udp.recv(&mut buf) {
                    Ok(n) if answered(id, &buf[..n]) => {
                        good = true;
                        break;
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
            good
        } else {
            false
        };
        sent += 1;
        if good {
            ok += 1;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        pace.wait(sent);
    }
    let p50 = percentile(&mut lat, 0.5);
    let p99 = percentile(&mut lat, 0.99);
    let max = lat.last().copied().unwrap_or(0.0);
    println!(
        "probe proto={} sent={sent} answered={ok} p50_ms={p50:.2} p99_ms={p99:.2} max_ms={max:.2}",
        if tcp { "tcp" } else { "udp" }
    );
}

fn storm(addr: SocketAddr, count: u64, conc: u64, name: &str) {
    let next = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    // A bound in time too: 120 s, whatever happens.
    let until = started + Duration::from_secs(120);
    let workers: Vec<_> = (0..conc.max(1))
        .map(|_| {
            let (next, connected, ok, name) = (
                next.clone(),
                connected.clone(),
                ok.clone(),
                name.to_string(),
            );
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || Instant::now() > until {
                        break;
                    }
                    let id = i as u16;
                    let q = query(id, &name);
                    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                    else {
                        continue;
                    };
                    connected.fetch_add(1, Ordering::Relaxed);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut msg = (q.len() as u16).to_be_bytes().to_vec();
                    msg.extend_from_slice(&q);
                    if s.write_all(&msg).is_err() {
                        continue;
                    }
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).is_ok() {
                        let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
                        if s.read_exact(&mut r).is_ok() && answered(id, &r) {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    println!(
        "storm attempts={} connected={} answered={} secs={:.2}",
        next.load(Ordering::Relaxed).min(count),
        connected.load(Ordering::Relaxed),
        ok.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}

fn loris(addr: SocketAddr, conns: u64, secs: f64) {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut held = Vec::new();
    for _ in 0..conns {
        if Instant::now() > until {
            break;
        }
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            // A length prefix of 40 bytes and 3 of them: the server waits for the rest.
            let _ = s.write_all(&[0, 40, 0x12, 0x34, 0x01]);
            held.push(s);
        }
    }
    let opened = held.len();
    // Trickle one more byte now and then, as a slow client would; count who is still there.
    while Instant::now() < until {
        std::thread::sleep(
            Duration::from_millis(200).min(until.saturating_duration_since(Instant::now())),
        );
        held.retain_mut(|s| s.write_all(&[0]).is_ok());
    }
    let mut still = 0;
    for s in &mut held {
        let _ = s.set_nonblocking(true);
        let mut b = [0u8; 1];
        // Open means: no EOF yet (a read would block).
        if matches!(s.read(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            still += 1;
        }
    }
    println!("loris opened={opened} still_open={still} secs={secs}");
}
