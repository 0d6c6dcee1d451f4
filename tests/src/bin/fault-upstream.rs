//! A faulty upstream DNS server and the clients that judge what a resolver makes of it, for
//! `tests/tests/upstream_faults.rs` and `tests/bench/faults.sh` (issue 15 item 1). Runs in
//! whatever network namespace it is started in; everything is bounded in time and count.
//!
//!   fault-upstream serve ADDR MODE [key=value…]
//!   fault-upstream ask ADDR [key=value…]
//!
//! `serve` answers on UDP and TCP at ADDR. MODE is one of
//!
//! - `ok`: every name has one A record, `addr_for(name)` (a hash of the name in 10.0.0.0/8);
//! - `dead`: a black hole: UDP queries are dropped, TCP connections are accepted and never
//!   answered (the worst kind of dead: a closed port answers with ICMP at once);
//! - `slow`: the right answer, `delay_ms` late (default 4,000: twice the daemon's budget);
//! - `servfail`: SERVFAIL;
//! - `truncate`: over UDP TC=1 and no records, always; TCP connections are closed without a
//!   reply (a server whose TCP side is broken: with a working one, this is the `huge` path);
//! - `huge`: `huge` A records (default 2,000, 198.18.x.y in order: 32 KB) over TCP; over UDP
//!   as many as fit the query's EDNS size (512 without EDNS), with TC, like BIND;
//! - `spoof`: over UDP, for each query first a reply with a wrong ID, then one with the right
//!   ID but another question, both carrying the poison address 192.0.2.66, then
//!   `spoof_delay_ms` later (default 50) the real answer; over TCP the real answer (an
//!   off-path forger cannot get into a TCP connection);
//! - `byname`: the mode is the first label's part before its first `-` (`spoof-3-17.f.test`
//!   is answered as `spoof`), for tests that exercise every mode through one upstream;
//! - `flap`: the six faults in turn, each for `flap_ms` (default 1,000), in this order unless
//!   `seed` is not 0 (then each round of six is a seeded shuffle).
//!
//! With `stats=PATH` it rewrites PATH (`key=value` per line) every 100 ms with what it got
//! and sent: queries over UDP and TCP, per mode, spoofed replies sent, late replies sent.
//!
//! `ask` sends A queries for `<names>-<client>-<seq>-<run>.f.test` from `clients` threads,
//! each with its own socket: over UDP open loop (paced at `rate` queries/s in all; 0 = all at
//! once), over TCP (`tcp=1`) one connection per query, closed loop. Each client sends `count`
//! queries, or for `secs` seconds if given. A reply counts only within `deadline_ms` (default
//! 3,500). It prints one line of figures: sent, replied (in time), lost (none in time), late,
//! and what the replies were: `correct` (the name's own address), `huge_ok` (records of the
//! huge answer: all of them over TCP, a prefix with TC over UDP), `tc_empty` (TC, no records),
//! `servfail`, `refused` (and the slowest of them), `poisoned` (the spoofed address got
//! through), `wrong` (anything else); latency p50/p99/max of the replies in time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use sdnet_tests::Rng;

const POISON: [u8; 4] = [192, 0, 2, 66];
const HUGE_NET: [u8; 2] = [198, 18];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Ok,
    Dead,
    Slow,
    Servfail,
    Truncate,
    Huge,
    Spoof,
}

/// Every mode; the faults a flap cycles through are all but the first (`Ok`).
const ALL: [Mode; 7] = [
    Mode::Ok,
    Mode::Dead,
    Mode::Slow,
    Mode::Servfail,
    Mode::Truncate,
    Mode::Huge,
    Mode::Spoof,
];

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        ALL.into_iter().find(|m| m.name() == s)
    }
    fn name(self) -> &'static str {
        match self {
            Mode::Ok => "ok",
            Mode::Dead => "dead",
            Mode::Slow => "slow",
            Mode::Servfail => "servfail",
            Mode::Truncate => "truncate",
            Mode::Huge => "huge",
            Mode::Spoof => "spoof",
        }
    }
    fn index(self) -> usize {
        ALL.iter().position(|m| *m == self).unwrap_or(0)
    }
}

/// How the server picks a query's mode.
enum Plan {
    Fixed(Mode),
    ByName,
    Flap {
        start: Instant,
        period: Duration,
        seed: u64,
    },
}

impl Plan {
    fn mode(&self, name: &str) -> Mode {
        match self {
            Plan::Fixed(m) => *m,
            Plan::ByName => name
                .split(['.', '-'])
                .next()
                .and_then(Mode::parse)
                .unwrap_or(Mode::Ok),
            Plan::Flap {
                start,
                period,
                seed,
            } => {
                let k = (start.elapsed().as_millis() / period.as_millis().max(1)) as u64;
                let mut order = ALL[1..].to_vec();
                let n = order.len() as u64;
                let (round, pos) = (k / n, (k % n) as usize);
                if *seed != 0 {
                    let mut r = Rng::new(seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    for i in (1..order.len()).rev() {
                        order.swap(i, (r.next_u64() % (i as u64 + 1)) as usize);
                    }
                }
                order[pos]
            }
        }
    }
}

/// The address every resolver must answer for `name` (FNV-1a of the lower-case name).
fn addr_for(name: &str) -> [u8; 4] {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.trim_end_matches('.').bytes() {
        h ^= u32::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0193);
    }
    [10, (h >> 16) as u8, (h >> 8) as u8, h as u8]
}

fn huge_addr(i: usize) -> [u8; 4] {
    [HUGE_NET[0], HUGE_NET[1], (i >> 8) as u8, i as u8]
}

/// Where a message's question ends, and the question's name (lower case, dotted).
fn question(m: &[u8]) -> Option<(usize, String)> {
    let mut i = 12;
    let mut name = String::new();
    loop {
        let l = *m.get(i)? as usize;
        if l == 0 {
            i += 1;
            break;
        }
        if l & 0xC0 != 0 {
            return None;
        }
        let label = m.get(i + 1..i + 1 + l)?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
        i += 1 + l;
    }
    (m.len() >= i + 4).then_some((i + 4, name))
}

/// The UDP size a query allows: its OPT's class, or 512.
fn udp_size(q: &[u8], qend: usize) -> usize {
    let arcount = u16::from_be_bytes([q[10], q[11]]);
    match q.get(qend..qend + 5) {
        Some([0, 0, 41, hi, lo]) if arcount >= 1 => {
            usize::from(u16::from_be_bytes([*hi, *lo])).max(512)
        }
        _ => 512,
    }
}

/// A reply to query `q` (question ending at `qend`) with `id`, `rcode`, TC, and A records
/// for the question's name.
fn reply(q: &[u8], qend: usize, id: u16, rcode: u8, tc: bool, ips: &[[u8; 4]]) -> Vec<u8> {
    let mut r = Vec::with_capacity(qend + 16 * ips.len());
    r.extend_from_slice(&id.to_be_bytes());
    r.push(0x80 | (q[2] & 0x01) | if tc { 0x02 } else { 0 });
    r.push(0x80 | rcode);
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&(ips.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(&q[12..qend]);
    for ip in ips {
        r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        r.extend_from_slice(ip);
    }
    r
}

/// The real answer for `name`.
fn honest(q: &[u8], qend: usize, name: &str) -> Vec<u8> {
    reply(q, qend, qid(q), 0, false, &[addr_for(name)])
}

fn qid(q: &[u8]) -> u16 {
    u16::from_be_bytes([q[0], q[1]])
}

/// A forged reply with the right ID for another question (`evil.` before the name).
fn wrong_question(q: &[u8], qend: usize) -> Vec<u8> {
    let mut fake = q[..12].to_vec();
    fake.extend_from_slice(&[4, b'e', b'v', b'i', b'l']);
    fake.extend_from_slice(&q[12..qend]);
    reply(&fake, qend + 5, qid(q), 0, false, &[POISON])
}

#[derive(Default)]
struct Counters {
    udp: AtomicU64,
    tcp: AtomicU64,
    by_mode: [AtomicU64; 7],
    spoofed: AtomicU64,
    late: AtomicU64,
}

impl Counters {
    fn text(&self) -> String {
        let mut s = format!(
            "udp={}\ntcp={}\nspoofed={}\nlate={}\n",
            self.udp.load(Ordering::Relaxed),
            self.tcp.load(Ordering::Relaxed),
            self.spoofed.load(Ordering::Relaxed),
            self.late.load(Ordering::Relaxed)
        );
        for m in ALL {
            s.push_str(&format!(
                "{}={}\n",
                m.name(),
                self.by_mode[m.index()].load(Ordering::Relaxed)
            ));
        }
        s
    }
}

struct Server {
    plan: Plan,
    delay: Duration,
    spoof_delay: Duration,
    huge: usize,
    counters: Counters,
}

/// A reply to send later: when, to whom, what, and whether it is a slow mode's.
type Later = (Instant, u64, SocketAddr, Vec<u8>, bool);

/// Sends delayed UDP replies in time order (a bounded heap; past 100,000 waiting, dropped).
fn delayer(sock: UdpSocket, rx: mpsc::Receiver<Later>, s: Arc<Server>) {
    let mut heap: BinaryHeap<Reverse<Later>> = BinaryHeap::new();
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(l)| l.0 <= now) {
            if let Some(Reverse((_, _, to, bytes, slow))) = heap.pop() {
                let _ = sock.send_to(&bytes, to);
                if slow {
                    s.counters.late.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let wait = heap
            .peek()
            .map_or(Duration::from_secs(3600), |Reverse(l)| l.0 - now);
        match rx.recv_timeout(wait) {
            Ok(l) if heap.len() < 100_000 => heap.push(Reverse(l)),
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn serve_udp(sock: UdpSocket, s: Arc<Server>) -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel::<Later>();
    {
        let (sock, s) = (sock.try_clone()?, s.clone());
        std::thread::spawn(move || delayer(sock, rx, s));
    }
    let mut seq = 0u64;
    let mut buf = [0u8; 4096];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        let q = &buf[..n];
        let Some((qend, name)) = (n >= 12).then(|| question(q)).flatten() else {
            continue;
        };
        s.counters.udp.fetch_add(1, Ordering::Relaxed);
        let mode = s.plan.mode(&name);
        s.counters.by_mode[mode.index()].fetch_add(1, Ordering::Relaxed);
        seq += 1;
        let now = Instant::now();
        let out = match mode {
            Mode::Ok => Some(honest(q, qend, &name)),
            Mode::Dead => None,
            Mode::Slow => {
                let _ = tx.send((now + s.delay, seq, from, honest(q, qend, &name), true));
                None
            }
            Mode::Servfail => Some(reply(q, qend, qid(q), 2, false, &[])),
            Mode::Truncate => Some(reply(q, qend, qid(q), 0, true, &[])),
            Mode::Huge => {
                let fit = ((udp_size(q, qend) - qend) / 16).min(s.huge);
                let ips: Vec<[u8; 4]> = (0..fit).map(huge_addr).collect();
                Some(reply(q, qend, qid(q), 0, fit < s.huge, &ips))
            }
            Mode::Spoof => {
                let bad_id = reply(q, qend, qid(q) ^ 0xA5A5, 0, false, &[POISON]);
                let _ = sock.send_to(&bad_id, from);
                let _ = sock.send_to(&wrong_question(q, qend), from);
                s.counters.spoofed.fetch_add(2, Ordering::Relaxed);
                let _ = tx.send((
                    now + s.spoof_delay,
                    seq,
                    from,
                    honest(q, qend, &name),
                    false,
                ));
                None
            }
        };
        if let Some(r) = out {
            let _ = sock.send_to(&r, from);
        }
    }
}

/// One TCP connection: queries in, replies per mode (see the module doc), until the peer
/// closes or 30 s pass without a query.
fn serve_conn(mut c: TcpStream, s: Arc<Server>) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    c.set_nodelay(true)?;
    let mut len = [0u8; 2];
    loop {
        c.read_exact(&mut len)?;
        let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
        c.read_exact(&mut q)?;
        let Some((qend, name)) = (q.len() >= 12).then(|| question(&q)).flatten() else {
            return Ok(());
        };
        s.counters.tcp.fetch_add(1, Ordering::Relaxed);
        let mode = s.plan.mode(&name);
        s.counters.by_mode[mode.index()].fetch_add(1, Ordering::Relaxed);
        let r = match mode {
            Mode::Ok | Mode::Spoof => honest(&q, qend, &name),
            Mode::Dead => continue,
            Mode::Slow => {
                std::thread::sleep(s.delay);
                s.counters.late.fetch_add(1, Ordering::Relaxed);
                honest(&q, qend, &name)
            }
            Mode::Servfail => reply(&q, qend, qid(&q), 2, false, &[]),
            Mode::Truncate => return Ok(()),
            Mode::Huge => {
                let ips: Vec<[u8; 4]> = (0..s.huge).map(huge_addr).collect();
                reply(&q, qend, qid(&q), 0, false, &ips)
            }
        };
        let mut framed = (r.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&r);
        c.write_all(&framed)?;
    }
}

fn serve_tcp(l: TcpListener, s: Arc<Server>) {
    let open = Arc::new(AtomicU64::new(0));
    for conn in l.incoming() {
        let Ok(c) = conn else { continue };
        // Bounded: past 1,024 open connections, new ones are closed at once.
        if open.load(Ordering::Relaxed) >= 1024 {
            continue;
        }
        open.fetch_add(1, Ordering::Relaxed);
        let (s, open) = (s.clone(), open.clone());
        std::thread::spawn(move || {
            let _ = serve_conn(c, s);
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// `key=value` arguments.
fn kv(args: &[String]) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for a in args {
        match a.split_once('=') {
            Some((k, v)) => {
                m.insert(k.to_string(), v.to_string());
            }
            None => die(&format!("expected key=value, got {a:?}")),
        }
    }
    m
}

fn die(msg: &str) -> ! {
    eprintln!("fault-upstream: {msg}");
    std::process::exit(2);
}

fn num<T: std::str::FromStr>(m: &HashMap<String, String>, k: &str, default: T) -> T {
    match m.get(k) {
        None => default,
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| die(&format!("bad value for {k}: {v:?}"))),
    }
}

fn serve(addr: SocketAddr, mode: &str, opts: &HashMap<String, String>) -> std::io::Result<()> {
    let plan = match mode {
        "byname" => Plan::ByName,
        "flap" => Plan::Flap {
            start: Instant::now(),
            period: Duration::from_millis(num(opts, "flap_ms", 1000)),
            seed: num(opts, "seed", 0),
        },
        m => Plan::Fixed(Mode::parse(m).unwrap_or_else(|| die(&format!("unknown mode {m}")))),
    };
    let huge: usize = num(opts, "huge", 2000);
    if huge > 4000 {
        die("huge: at most 4,000 records (one TCP message)");
    }
    let s = Arc::new(Server {
        plan,
        delay: Duration::from_millis(num(opts, "delay_ms", 4000)),
        spoof_delay: Duration::from_millis(num(opts, "spoof_delay_ms", 50)),
        huge,
        counters: Counters::default(),
    });
    let udp = UdpSocket::bind(addr)?;
    let tcp = TcpListener::bind(udp.local_addr()?)?;
    if let Some(path) = opts.get("stats").cloned() {
        let s = s.clone();
        std::thread::spawn(move || {
            let tmp = format!("{path}.tmp");
            loop {
                if std::fs::write(&tmp, s.counters.text()).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
    {
        let s = s.clone();
        std::thread::spawn(move || serve_tcp(tcp, s));
    }
    println!("serving {} {mode}", udp.local_addr()?);
    serve_udp(udp, s)
}

#[path = "fault-upstream/ask.rs"]
mod ask;
use ask::ask;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: fault-upstream serve ADDR MODE [key=value…] | ask ADDR [key=value…]";
    let (Some(cmd), Some(addr)) = (args.first(), args.get(1)) else {
        die(usage)
    };
    let addr: SocketAddr = addr
        .parse()
        .unwrap_or_else(|_| die(&format!("bad address {addr}")));
    let r = match cmd.as_str() {
        "serve" => {
            let Some(mode) = args.get(2) else { die(usage) };
            serve(addr, mode, &kv(&args[3..]))
        }
        "ask" => ask(addr, &kv(&args[2..])),
        _ => die(usage),
    };
    if let Err(e) = r {
        die(&e.to_string());
    }
}
