//! The client side of fault-upstream: `ask` sends queries at a steady rate (UDP, or TCP with
//! one connection per query) and judges every reply against what the fixture sends for that
//! name.

use super::*;

/// What one reply was.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Verdict {
    Correct,
    HugeOk,
    TcEmpty,
    Servfail,
    Refused,
    Poisoned,
    Wrong,
}

/// Judges a reply for `name` (its ID already matched).
fn judge(r: &[u8], name: &str, tcp: bool, huge: usize) -> Verdict {
    if r.len() < 12 || r[2] & 0x80 == 0 {
        return Verdict::Wrong;
    }
    let tc = r[2] & 0x02 != 0;
    match r[3] & 0x0F {
        0 => {}
        2 => return Verdict::Servfail,
        5 => return Verdict::Refused,
        _ => return Verdict::Wrong,
    }
    let Some((mut i, qname)) = question(r) else {
        return Verdict::Wrong;
    };
    if qname != name.to_ascii_lowercase() {
        return Verdict::Wrong;
    }
    let ancount = usize::from(u16::from_be_bytes([r[6], r[7]]));
    let mut ips = Vec::with_capacity(ancount);
    for _ in 0..ancount {
        // Owner: a pointer or labels.
        loop {
            match r.get(i) {
                Some(&l) if l & 0xC0 == 0xC0 => {
                    i += 2;
                    break;
                }
                Some(&0) => {
                    i += 1;
                    break;
                }
                Some(&l) => i += 1 + l as usize,
                None => return Verdict::Wrong,
            }
        }
        let Some(h) = r.get(i..i + 10) else {
            return Verdict::Wrong;
        };
        let rdlen = usize::from(u16::from_be_bytes([h[8], h[9]]));
        let Some(data) = r.get(i + 10..i + 10 + rdlen) else {
            return Verdict::Wrong;
        };
        if h[0..2] != [0, 1] || rdlen != 4 {
            return Verdict::Wrong;
        }
        ips.push([data[0], data[1], data[2], data[3]]);
        i += 10 + rdlen;
    }
    if ips.contains(&POISON) {
        return Verdict::Poisoned;
    }
    if ips.is_empty() {
        return if tc { Verdict::TcEmpty } else { Verdict::Wrong };
    }
    if ips == [addr_for(name)] {
        return Verdict::Correct;
    }
    let want: Vec<[u8; 4]> = (0..ips.len()).map(huge_addr).collect();
    let complete = ips.len() == huge;
    if ips == want && (complete || (tc && !tcp)) {
        return Verdict::HugeOk;
    }
    Verdict::Wrong
}

#[derive(Default)]
struct Tally {
    sent: u64,
    replied: u64,
    lost: u64,
    late: u64,
    verdicts: HashMap<&'static str, u64>,
    latencies_us: Vec<u64>,
    refused_max_us: u64,
    wrong_sample: Option<String>,
}

impl Tally {
    fn got(&mut self, v: Verdict, took: Duration, raw: &[u8]) {
        self.replied += 1;
        let us = took.as_micros() as u64;
        self.latencies_us.push(us);
        let k = match v {
            Verdict::Correct => "correct",
            Verdict::HugeOk => "huge_ok",
            Verdict::TcEmpty => "tc_empty",
            Verdict::Servfail => "servfail",
            Verdict::Refused => {
                self.refused_max_us = self.refused_max_us.max(us);
                "refused"
            }
            Verdict::Poisoned => "poisoned",
            Verdict::Wrong => {
                if self.wrong_sample.is_none() {
                    self.wrong_sample = Some(raw.iter().map(|b| format!("{b:02x}")).collect());
                }
                "wrong"
            }
        };
        *self.verdicts.entry(k).or_default() += 1;
    }
    fn merge(&mut self, o: Tally) {
        self.sent += o.sent;
        self.replied += o.replied;
        self.lost += o.lost;
        self.late += o.late;
        for (k, v) in o.verdicts {
            *self.verdicts.entry(k).or_default() += v;
        }
        self.latencies_us.extend(o.latencies_us);
        self.refused_max_us = self.refused_max_us.max(o.refused_max_us);
        if self.wrong_sample.is_none() {
            self.wrong_sample = o.wrong_sample;
        }
    }
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

struct Ask {
    addr: SocketAddr,
    names: String,
    run: u64,
    clients: usize,
    count: u64,
    until: Option<Instant>,
    /// Between two queries of one client; zero: all at once.
    interval: Duration,
    deadline: Duration,
    huge: usize,
}

impl Ask {
    fn name(&self, client: usize, seq: u64) -> String {
        format!("{}-{client}-{seq}-{:x}.f.test", self.names, self.run)
    }
    fn more(&self, seq: u64) -> bool {
        match self.until {
            Some(t) => Instant::now() < t && (self.count == 0 || seq < self.count),
            None => seq < self.count,
        }
    }
}

/// Room for the replies to a burst (1,000 queries sent before the first reply is read): the
/// default buffer holds about 200, and replies dropped here would count as the resolver's.
fn big_receive_buffer(sock: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 8 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on a socket we own, with a c_int option value.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// One UDP client, open loop: paced sends, replies matched by ID.
fn ask_udp(a: &Ask, client: usize) -> std::io::Result<Tally> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    sock.connect(a.addr)?;
    big_receive_buffer(&sock);
    let mut t = Tally::default();
    let mut waiting: HashMap<u16, (Instant, String)> = HashMap::new();
    let mut seq = 0u64;
    // Clients spread over one interval.
    let mut next = Instant::now() + a.interval.mul_f64(client as f64 / a.clients as f64);
    let mut buf = vec![0u8; 65535];
    loop {
        let now = Instant::now();
        let sending = a.more(seq);
        if sending && now >= next {
            let id = seq as u16;
            let name = a.name(client, seq);
            if waiting.contains_key(&id) {
                // 65,536 queries outstanding on one socket: count the old one lost.
                t.lost += 1;
            }
            sock.send(&query(id, &name))?;
            waiting.insert(id, (now, name));
            t.sent += 1;
            seq += 1;
            next += a.interval;
            if a.interval.is_zero() {
                continue;
            }
            if next < now {
                next = now;
            }
        }
        waiting.retain(|_, (at, _)| {
            let expired = now.duration_since(*at) > a.deadline;
            if expired {
                t.lost += 1;
            }
            !expired
        });
        if !sending && waiting.is_empty() {
            return Ok(t);
        }
        let wake = if sending {
            next
        } else {
            now + Duration::from_millis(20)
        };
        let wait = wake
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(20));
        sock.set_read_timeout(Some(wait))?;
        match sock.recv(&mut buf) {
            Ok(n) if n >= 12 => {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                match waiting.remove(&id) {
                    Some((at, name)) => {
                        let took = at.elapsed();
                        if took > a.deadline {
                            t.late += 1;
                            t.lost += 1;
                        } else {
                            t.got(judge(&buf[..n], &name, false, a.huge), took, &buf[..n]);
                        }
                    }
                    None => t.late += 1,
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// One TCP client, closed loop: a connection per query.
fn ask_tcp(a: &Ask, client: usize) -> Tally {
    let mut t = Tally::default();
    let mut seq = 0u64;
    let mut next = Instant::now();
    while a.more(seq) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next += a.interval;
        let name = a.name(client, seq);
        let id = seq as u16;
        seq += 1;
        t.sent += 1;
        let start = Instant::now();
        let one = || -> std::io::Result<Vec<u8>> {
            let mut c = TcpStream::connect_timeout(&a.addr, a.deadline)?;
            let q = query(id, &name);
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            c.write_all(&framed)?;
            let left = a.deadline.saturating_sub(start.elapsed());
            c.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let mut len = [0u8; 2];
            c.read_exact(&mut len)?;
            let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
            c.read_exact(&mut r)?;
            Ok(r)
        };
        match one() {
            Ok(r) if start.elapsed() <= a.deadline => {
                let v = if r.len() >= 2 && qid(&r) == id {
                    judge(&r, &name, true, a.huge)
                } else {
                    Verdict::Wrong
                };
                t.got(v, start.elapsed(), &r);
            }
            Ok(_) => {
                t.late += 1;
                t.lost += 1;
            }
            Err(_) => t.lost += 1,
        }
    }
    t
}

pub(super) fn ask(addr: SocketAddr, opts: &HashMap<String, String>) -> std::io::Result<()> {
    let clients: usize = num(opts, "clients", 4);
    let rate: f64 = num(opts, "rate", 50.0);
    let secs: f64 = num(opts, "secs", 0.0);
    let tcp = num::<u8>(opts, "tcp", 0) == 1;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
        ^ u64::from(std::process::id()) << 32;
    let a = Ask {
        addr,
        names: opts.get("names").cloned().unwrap_or_else(|| "ok".into()),
        run: Rng::new(seed).next_u64() & 0xFF_FFFF,
        clients,
        count: num(opts, "count", if secs > 0.0 { 0 } else { 10 }),
        until: (secs > 0.0).then(|| Instant::now() + Duration::from_secs_f64(secs)),
        interval: if rate > 0.0 {
            Duration::from_secs_f64(clients as f64 / rate)
        } else {
            Duration::ZERO
        },
        deadline: Duration::from_millis(num(opts, "deadline_ms", 3500)),
        huge: num(opts, "huge", 2000),
    };
    let total = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for c in 0..clients {
            let (a, total) = (&a, &total);
            s.spawn(move || {
                let t = if tcp {
                    ask_tcp(a, c)
                } else {
                    ask_udp(a, c).unwrap_or_else(|e| die(&format!("client {c}: {e}")))
                };
                total.lock().unwrap_or_else(|p| p.into_inner()).merge(t);
            });
        }
    });
    let mut t = total.into_inner().unwrap_or_else(|p| p.into_inner());
    t.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if t.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((t.latencies_us.len() as f64 * p).ceil() as usize).clamp(1, t.latencies_us.len());
        t.latencies_us[i - 1] as f64 / 1000.0
    };
    let mut line = format!(
        "sent={} replied={} lost={} late={}",
        t.sent, t.replied, t.lost, t.late
    );
    for k in [
        "correct", "huge_ok", "tc_empty", "servfail", "refused", "poisoned", "wrong",
    ] {
        line.push_str(&format!(" {k}={}", t.verdicts.get(k).copied().unwrap_or(0)));
    }
    line.push_str(&format!(
        " p50_ms={:.1} p99_ms={:.1} max_ms={:.1} refused_max_ms={:.1}",
        pct(0.5),
        pct(0.99),
        pct(1.0),
        t.refused_max_us as f64 / 1000.0
    ));
    println!("{line}");
    if let Some(w) = t.wrong_sample {
        eprintln!("first wrong reply: {w}");
    }
    Ok(())
}
