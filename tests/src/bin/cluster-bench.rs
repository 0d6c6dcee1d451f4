//! Multi-host timings for tests/bench/cluster.sh: how long a name takes to reach another node,
//! to leave it, and how long a dead node's names keep answering. Everything is timed inside
//! this process (raw HTTP over node A's unix socket, a UDP socket inside node B's probe
//! sandbox asking its 127.0.0.11), so process start-up is not in the figures.
//!
//! cluster-bench propagate SOCKET NETWORK COUNT PROBE_NETNS PREFIX
//!   Creates PREFIX0 … PREFIX{COUNT-1} on NETWORK through SOCKET (node A), one at a time. After
//!   each POST /v1/sandboxes returns, asks the probe (node B) for the name every POLL until it
//!   answers with an address. Prints `create` (the POST) and `propagate` (POST returned → B
//!   answers) stats, `missed` (no answer within the limit), `at_return` (names that answered
//!   the first query, sent right after the POST returned), and `visible_from_post` (the POST
//!   sent → B answers).
//! cluster-bench unpropagate SOCKET COUNT PROBE_NETNS PREFIX
//!   Removes them (DELETE /v1/sandboxes/NAME?force=true), timing each call and the time until
//!   B answers the name without an address: `remove` and `unpropagate` stats.
//! cluster-bench wait PROBE_NETNS NAME
//!   Waits until NAME answers from the probe; prints its address and how long that took.
//! cluster-bench loss PROBE_NETNS NAME PID
//!   Checks that NAME answers, waits a random pause in [0, CB_KILL_JITTER_MS), sends SIGKILL
//!   to PID (it must be an `sdctl daemon`, which the calling script started) and times how
//!   long the name keeps answering: `loss_ms=`.
//!
//! cluster-bench health SOCKET SERVICE NODE MARK PROBE_NETNS FLIPS
//!   SERVICE's task on NODE (node A, SOCKET) is healthy while the file MARK exists; flips MARK
//!   FLIPS times and times each flip until A's API shows it (`health_check`), from then until
//!   the probe (node B) sees `tasks.SERVICE` answer or stop answering (`health_propagate`), and
//!   the whole (`health_total`). See swarm.rs.
//! cluster-bench schedule SOCKET SERVICE COUNT NODE=PROBE_NETNS,… CMD…
//!   Runs CMD (a `services create --replicas COUNT … --detach`), then times until A's API shows
//!   COUNT running tasks and until each node's probe gets COUNT addresses for `tasks.SERVICE`.
//! cluster-bench mesh MESH_NETNS MESH_ADDR DIRECT_NETNS DIRECT_ADDR,… CONNS
//!   First packet (connect + first reply byte) through a node's published port (the routing
//!   mesh) against straight to a task from a sandbox, alternating, CONNS each way.
//!
//! Env: CB_POLL_US (1000): the polling interval; CB_LIMIT_S (15; 60 for `loss`): how long to
//! wait for one name; CB_API_POLL_US (1000), CB_HEALTH_S (120); CB_SCHED_POLL_MS (20),
//! CB_SCHED_LIMIT_S (300); CB_MESH_S (120).

#[path = "cluster-bench/swarm.rs"]
mod swarm;

use std::io::{Read, Write};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

type Res<T> = Result<T, String>;

fn request(socket: &str, method: &str, path: &str, body: &str) -> Res<(u16, String)> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect {socket}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| format!("socket timeout: {e}"))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: sdnet\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("{method} {path}: writing the request: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("{method} {path}: reading the reply: {e}"))?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

/// The question section for `name` IN A (what replies must echo).
fn question(name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// What one reply said about our question.
enum Reply {
    /// NOERROR with an address: the first A record's address.
    Answer(String),
    /// NOERROR without answers, NXDOMAIN, SERVFAIL …
    Negative,
    /// Not a reply to our question (an earlier name's, or garbage).
    Other,
}

fn parse(buf: &[u8], q: &[u8]) -> Reply {
    if buf.len() < 12 + q.len() || buf[2] & 0x80 == 0 {
        return Reply::Other;
    }
    if u16::from_be_bytes([buf[4], buf[5]]) != 1 || !buf[12..12 + q.len()].eq_ignore_ascii_case(q) {
        return Reply::Other;
    }
    let ancount = u16::from_be_bytes([buf[6], buf[7]]);
    if buf[3] & 0xF != 0 || ancount == 0 {
        return Reply::Negative;
    }
    // Walk the answers for the first A record (names are compressed pointers or labels).
    let mut p = 12 + q.len();
    for _ in 0..ancount {
        while p < buf.len() {
            let l = buf[p] as usize;
            if l & 0xC0 == 0xC0 {
                p += 2;
                break;
            }
            p += 1 + l;
            if l == 0 {
                break;
            }
        }
        if p + 10 > buf.len() {
            break;
        }
        let ty = u16::from_be_bytes([buf[p], buf[p + 1]]);
        let len = u16::from_be_bytes([buf[p + 8], buf[p + 9]]) as usize;
        p += 10;
        if ty == 1 && len == 4 && p + 4 <= buf.len() {
            return Reply::Answer(format!(
                "{}.{}.{}.{}",
                buf[p],
                buf[p + 1],
                buf[p + 2],
                buf[p + 3]
            ));
        }
        p += len;
    }
    // NOERROR with records but no A (a CNAME only): it answers.
    Reply::Answer(String::new())
}

/// A UDP socket inside the probe sandbox's namespace, connected to its 127.0.0.11:53.
struct Probe {
    sock: UdpSocket,
    poll: Duration,
    next_id: u16,
    /// Queries sent, and ticks in which no reply came.
    sent: u64,
    silent: u64,
}

impl Probe {
    fn open(netns: &str) -> Res<Probe> {
        let path = netns.to_string();
        let sock = std::thread::spawn(move || -> Res<UdpSocket> {
            let f = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
            // SAFETY: setns on this short-lived thread only; the socket keeps the namespace.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
            }
            UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind in {path}: {e}"))
        })
        .join()
        .map_err(|_| "the probe thread panicked".to_string())??;
        sock.connect("127.0.0.11:53")
            .map_err(|e| format!("connect 127.0.0.11:53: {e}"))?;
        let us: u64 = env("CB_POLL_US", 1000).max(50);
        Ok(Probe {
            sock,
            poll: Duration::from_micros(us),
            next_id: 1,
            sent: 0,
            silent: 0,
        })
    }

    /// Drops replies still queued (answers to an earlier tick).
    fn drain(&self) -> Res<()> {
        let mut buf = [0u8; 1500];
        self.sock
            .set_nonblocking(true)
            .map_err(|e| format!("nonblocking: {e}"))?;
        while self.sock.recv(&mut buf).is_ok() {}
        self.sock
            .set_nonblocking(false)
            .map_err(|e| format!("blocking: {e}"))
    }

    /// Asks for `name` once per tick until `want(reply)` holds (then returns the time it did,
    /// and the address if any) or `limit` passes.
    fn until(
        &mut self,
        name: &str,
        limit: Duration,
        want: impl Fn(&Reply) -> bool,
    ) -> Res<Option<(Instant, String)>> {
        let q = question(name);
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 1500];
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            let mut m = Vec::with_capacity(12 + q.len());
            m.extend_from_slice(&id.to_be_bytes());
            m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
            m.extend_from_slice(&q);
            let tick_end = Instant::now() + self.poll;
            self.sock
                .send(&m)
                .map_err(|e| format!("send a query for {name}: {e}"))?;
            self.sent += 1;
            let mut replied = false;
            loop {
                let left = tick_end.saturating_duration_since(Instant::now());
                if left < Duration::from_micros(20) {
                    break;
                }
                self.sock
                    .set_read_timeout(Some(left))
                    .map_err(|e| format!("read timeout: {e}"))?;
                match self.sock.recv(&mut buf) {
                    Ok(n) => {
                        let r = parse(&buf[..n], &q);
                        if matches!(r, Reply::Other) {
                            continue;
                        }
                        replied = true;
                        if want(&r) {
                            let addr = match r {
                                Reply::Answer(a) => a,
                                _ => String::new(),
                            };
                            return Ok(Some((Instant::now(), addr)));
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break;
                    }
                    // ECONNREFUSED: nothing listens on 127.0.0.11 (yet); keep asking.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        std::thread::sleep(tick_end.saturating_duration_since(Instant::now()));
                        break;
                    }
                    Err(e) => return Err(format!("receive an answer for {name}: {e}")),
                }
            }
            if !replied {
                self.silent += 1;
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }
}

fn answers(r: &Reply) -> bool {
    matches!(r, Reply::Answer(_))
}

fn negative(r: &Reply) -> bool {
    matches!(r, Reply::Negative)
}

fn env<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn stats(label: &str, mut v: Vec<f64>, extra: &str) {
    if v.is_empty() {
        println!("{label} n=0 {extra}");
        return;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    println!(
        "{label} n={} median_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2} min_ms={:.2} {extra}",
        v.len(),
        p(0.5),
        p(0.9),
        p(0.99),
        v[v.len() - 1],
        v[0],
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn propagate(socket: &str, network: &str, count: usize, probe: &str, prefix: &str) -> Res<()> {
    let mut p = Probe::open(probe)?;
    let limit = Duration::from_secs(env("CB_LIMIT_S", 15));
    let (mut create, mut prop) = (Vec::with_capacity(count), Vec::with_capacity(count));
    let mut from_start = Vec::with_capacity(count);
    let mut missed = Vec::new();
    // Names that answered the first query sent after the call returned.
    let mut at_return = 0usize;
    let started = Instant::now();
    for i in 0..count {
        let name = format!("{prefix}{i}");
        let body = format!("{{\"name\":\"{name}\",\"networks\":[{{\"network\":\"{network}\"}}]}}");
        let t = Instant::now();
        match request(socket, "POST", "/v1/sandboxes", &body)? {
            (200, _) => {}
            (s, b) => return Err(format!("create {name}: HTTP {s}: {}", b.trim())),
        }
        let returned = Instant::now();
        create.push(ms(returned - t));
        let sent = p.sent;
        match p.until(&name, limit, answers)? {
            Some((at, _)) => {
                prop.push(ms(at - returned));
                from_start.push(ms(at - t));
                at_return += usize::from(p.sent == sent + 1);
            }
            None => missed.push(name),
        }
    }
    let wall = started.elapsed().as_secs_f64();
    stats("create", create, "");
    stats(
        "propagate",
        prop,
        &format!(
            "missed={} at_return={at_return} queries={} silent_ticks={} wall_s={wall:.2}",
            missed.len(),
            p.sent,
            p.silent
        ),
    );
    // From the moment the request was sent (create + propagation).
    stats("visible_from_post", from_start, "");
    if !missed.is_empty() {
        println!("missed_names={}", missed.join(","));
    }
    Ok(())
}

fn unpropagate(socket: &str, count: usize, probe: &str, prefix: &str) -> Res<()> {
    let mut p = Probe::open(probe)?;
    let limit = Duration::from_secs(env("CB_LIMIT_S", 15));
    let (mut remove, mut prop) = (Vec::with_capacity(count), Vec::with_capacity(count));
    let (mut missed, mut at_return) = (0usize, 0usize);
    for i in 0..count {
        let name = format!("{prefix}{i}");
        let t = Instant::now();
        match request(
            socket,
            "DELETE",
            &format!("/v1/sandboxes/{name}?force=true"),
            "",
        )? {
            (200, _) => {}
            (s, b) => return Err(format!("remove {name}: HTTP {s}: {}", b.trim())),
        }
        let returned = Instant::now();
        remove.push(ms(returned - t));
        let sent = p.sent;
        match p.until(&name, limit, negative)? {
            Some((at, _)) => {
                prop.push(ms(at - returned));
                at_return += usize::from(p.sent == sent + 1);
            }
            None => missed += 1,
        }
    }
    stats("remove", remove, "");
    stats(
        "unpropagate",
        prop,
        &format!(
            "missed={missed} at_return={at_return} queries={} silent_ticks={}",
            p.sent, p.silent
        ),
    );
    Ok(())
}

fn wait(probe: &str, name: &str) -> Res<()> {
    let mut p = Probe::open(probe)?;
    let t = Instant::now();
    match p.until(name, Duration::from_secs(env("CB_LIMIT_S", 15)), answers)? {
        Some((at, addr)) => {
            println!("wait name={name} addr={addr} ms={:.2}", ms(at - t));
            Ok(())
        }
        None => Err(format!("{name} did not answer from {probe}")),
    }
}

/// Whether PID is a running `sdctl daemon` (the only kind of process `loss` kills).
fn is_daemon(pid: i32) -> Res<()> {
    let cmd =
        std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| format!("process {pid}: {e}"))?;
    let args: Vec<String> = cmd
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let sdctl = args
        .first()
        .is_some_and(|a| a.rsplit('/').next() == Some("sdctl"));
    if sdctl && args.iter().any(|a| a == "daemon") && !args.iter().any(|a| a == "--cleanup") {
        Ok(())
    } else {
        Err(format!("process {pid} is not an sdctl daemon: {args:?}"))
    }
}

fn loss(probe: &str, name: &str, pid: i32) -> Res<()> {
    is_daemon(pid)?;
    let mut p = Probe::open(probe)?;
    let limit = Duration::from_secs(env("CB_LIMIT_S", 60));
    let t = Instant::now();
    if p.until(name, Duration::from_secs(15), answers)?.is_none() {
        return Err(format!("{name} does not answer before the kill"));
    }
    let waited = t.elapsed();
    // A pause drawn uniformly from [0, CB_KILL_JITTER_MS): the kill lands anywhere between two
    // of the node's lease keep-alives, not always at the same point after its start.
    let jitter_max: u64 = env("CB_KILL_JITTER_MS", 0);
    let jitter = if jitter_max == 0 {
        0
    } else {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64 ^ d.as_secs())
            .unwrap_or(0)
            ^ (std::process::id() as u64) << 20;
        // splitmix64: enough spread for a benchmark's pause.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % jitter_max
    };
    std::thread::sleep(Duration::from_millis(jitter));
    p.drain()?;
    if p.until(name, Duration::from_secs(1), answers)?.is_none() {
        return Err(format!("{name} stopped answering before the kill"));
    }
    p.drain()?;
    // SAFETY: kill(2) on a PID the caller started, checked above to be an sdctl daemon.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    if rc != 0 {
        return Err(format!("kill {pid}: {}", std::io::Error::last_os_error()));
    }
    let killed = Instant::now();
    match p.until(name, limit, negative)? {
        Some((at, _)) => {
            println!(
                "loss name={name} answered_after_ms={:.0} jitter_ms={jitter} loss_ms={:.1}",
                ms(waited),
                ms(at - killed)
            );
            Ok(())
        }
        None => {
            println!(
                "loss name={name} answered_after_ms={:.0} jitter_ms={jitter} loss_ms=none limit_s={}",
                ms(waited),
                limit.as_secs()
            );
            Ok(())
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: cluster-bench propagate SOCKET NETWORK COUNT PROBE_NETNS PREFIX\n\
         \x20      cluster-bench unpropagate SOCKET COUNT PROBE_NETNS PREFIX\n\
         \x20      cluster-bench wait PROBE_NETNS NAME\n\
         \x20      cluster-bench loss PROBE_NETNS NAME PID\n\
         \x20      cluster-bench health SOCKET SERVICE NODE MARK PROBE_NETNS FLIPS\n\
         \x20      cluster-bench schedule SOCKET SERVICE COUNT NODE=PROBE_NETNS,... CMD...\n\
         \x20      cluster-bench mesh MESH_NETNS MESH_ADDR DIRECT_NETNS DIRECT_ADDR,... CONNS"
    );
    std::process::exit(2);
}

fn count(s: &str) -> usize {
    s.parse().unwrap_or_else(|_| usage())
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let r = match a.as_slice() {
        ["propagate", sock, net, n, probe, prefix] => propagate(sock, net, count(n), probe, prefix),
        ["unpropagate", sock, n, probe, prefix] => unpropagate(sock, count(n), probe, prefix),
        ["wait", probe, name] => wait(probe, name),
        ["loss", probe, name, pid] => loss(probe, name, pid.parse().unwrap_or_else(|_| usage())),
        ["health", sock, svc, node, mark, probe, flips] => {
            swarm::health(sock, svc, node, mark, probe, count(flips))
        }
        ["schedule", sock, svc, n, probes, cmd @ ..] if !cmd.is_empty() => {
            swarm::schedule(sock, svc, count(n), probes, cmd)
        }
        ["mesh", mesh_ns, mesh_addr, direct_ns, direct, n] => {
            swarm::mesh(mesh_ns, mesh_addr, direct_ns, direct, count(n))
        }
        _ => usage(),
    };
    let _ = std::io::stdout().flush();
    if let Err(e) = r {
        eprintln!("cluster-bench: {e}");
        std::process::exit(1);
    }
}
