//! Swarm-service timings (issue 12): a task's health change reaching another node's DNS, the
//! scheduling of many tasks until every node answers for all of them, and the first packet
//! through the routing mesh against straight to a task.

use super::{Probe, Res, answers, env, ms, negative, question, request, stats};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// `GET /v1/services/NAME` on a node's socket, parsed.
fn service(socket: &str, name: &str) -> Res<serde_json::Value> {
    match request(socket, "GET", &format!("/v1/services/{name}"), "")? {
        (200, b) => serde_json::from_str(&b).map_err(|e| format!("service {name}: {e}: {b}")),
        (s, b) => Err(format!("GET service {name}: HTTP {s}: {}", b.trim())),
    }
}

fn tasks(v: &serde_json::Value) -> &[serde_json::Value] {
    v["tasks"].as_array().map_or(&[], Vec::as_slice)
}

/// Polls node A's API every CB_API_POLL_US until its task on `node` shows health `want`.
/// Returns when the reply saying so arrived, and the durations of the GETs.
fn until_health(
    socket: &str,
    svc: &str,
    node: &str,
    want: &str,
    limit: Duration,
    gets: &mut Vec<f64>,
) -> Res<Option<Instant>> {
    let poll = Duration::from_micros(env("CB_API_POLL_US", 1000));
    let deadline = Instant::now() + limit;
    loop {
        let t = Instant::now();
        let v = service(socket, svc)?;
        let at = Instant::now();
        gets.push(ms(at - t));
        let health = tasks(&v)
            .iter()
            .find(|t| t["node"] == node)
            .and_then(|t| t["health"].as_str())
            .unwrap_or("");
        if health == want {
            return Ok(Some(at));
        }
        if at >= deadline {
            return Ok(None);
        }
        std::thread::sleep((t + poll).saturating_duration_since(Instant::now()));
    }
}

fn set_mark(mark: &str, on: bool) -> Res<()> {
    let r = if on {
        std::fs::write(mark, b"")
    } else {
        match std::fs::remove_file(mark) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    };
    r.map_err(|e| format!("{} {mark}: {e}", if on { "create" } else { "remove" }))
}

/// `health SOCKET SERVICE NODE MARK PROBE_NETNS FLIPS`: the service's one task runs on NODE
/// (node A, whose API is SOCKET) with a health check that passes while MARK exists. Flips MARK
/// FLIPS times (create → healthy, remove → unhealthy, alternating, within CB_HEALTH_S) and
/// times each flip: file flipped → A's API shows the new health (`health_check`, the check's
/// interval and run), then A shows it → the probe (node B) sees `tasks.SERVICE` answer or stop
/// answering (`health_propagate`), and the whole (`health_total`).
pub fn health(
    socket: &str,
    svc: &str,
    node: &str,
    mark: &str,
    probe: &str,
    flips: usize,
) -> Res<()> {
    let mut p = Probe::open(probe)?;
    let limit = Duration::from_secs(env("CB_LIMIT_S", 15));
    let budget = Duration::from_secs(env("CB_HEALTH_S", 120));
    let name = format!("tasks.{svc}");
    let mut gets = Vec::new();
    // A known start: unhealthy on A and out of DNS on B.
    set_mark(mark, false)?;
    if until_health(socket, svc, node, "unhealthy", limit, &mut gets)?.is_none() {
        return Err(format!(
            "the task of {svc} on {node} did not turn unhealthy"
        ));
    }
    if p.until(&name, limit, negative)?.is_none() {
        return Err(format!(
            "{name} still answers on the probe with the task unhealthy"
        ));
    }
    gets.clear();
    let (mut check, mut prop, mut total) = (Vec::new(), Vec::new(), Vec::new());
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let (mut missed_api, mut missed_dns, mut at_obs) = (0usize, 0usize, 0usize);
    let started = Instant::now();
    let mut stopped_by_time = false;
    for i in 0..flips {
        if started.elapsed() > budget {
            stopped_by_time = true;
            break;
        }
        let on = i % 2 == 0;
        let t = Instant::now();
        set_mark(mark, on)?;
        let want = if on { "healthy" } else { "unhealthy" };
        let Some(seen) = until_health(socket, svc, node, want, limit, &mut gets)? else {
            missed_api += 1;
            continue;
        };
        check.push(ms(seen - t));
        p.drain()?;
        let sent = p.sent;
        let r = if on {
            p.until(&name, limit, answers)?
        } else {
            p.until(&name, limit, negative)?
        };
        match r {
            Some((at, _)) => {
                let d = ms(at - seen);
                prop.push(d);
                total.push(ms(at - t));
                let side = if on { &mut up } else { &mut down };
                side.push(d);
                at_obs += usize::from(p.sent == sent + 1);
            }
            None => missed_dns += 1,
        }
    }
    let wall = started.elapsed().as_secs_f64();
    set_mark(mark, false)?;
    stats("health_check", check, &format!("missed={missed_api}"));
    stats(
        "health_propagate",
        prop,
        &format!(
            "missed={missed_dns} at_obs={at_obs} queries={} silent_ticks={} wall_s={wall:.2} stopped_by_time={stopped_by_time}",
            p.sent, p.silent
        ),
    );
    stats("health_propagate_up", up, "");
    stats("health_propagate_down", down, "");
    stats("health_total", total, "");
    stats("health_get", gets, "");
    Ok(())
}

/// Counts the A records of a reply to `q` (None: not a reply to it, or not NOERROR).
fn count_a(buf: &[u8], q: &[u8]) -> Option<usize> {
    if buf.len() < 12 + q.len() || buf[2] & 0x80 == 0 || buf[3] & 0xF != 0 {
        return None;
    }
    if u16::from_be_bytes([buf[4], buf[5]]) != 1 || !buf[12..12 + q.len()].eq_ignore_ascii_case(q) {
        return None;
    }
    let ancount = u16::from_be_bytes([buf[6], buf[7]]);
    let (mut p, mut n) = (12 + q.len(), 0);
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
            return None;
        }
        let ty = u16::from_be_bytes([buf[p], buf[p + 1]]);
        p += 10 + u16::from_be_bytes([buf[p + 8], buf[p + 9]]) as usize;
        n += usize::from(ty == 1);
    }
    Some(n)
}

/// One query for `q` over TCP to 127.0.0.11:53 (from the calling thread's namespace): how
/// many A records came back (0 for anything but NOERROR).
fn tcp_count(q: &[u8], id: u16) -> Res<usize> {
    let to = SocketAddr::from(([127, 0, 0, 11], 53));
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
        .map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| format!("{to}: {e}"))?;
    let mut m = Vec::with_capacity(14 + q.len());
    m.extend_from_slice(&((12 + q.len()) as u16).to_be_bytes());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(q);
    s.write_all(&m).map_err(|e| format!("{to}: {e}"))?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).map_err(|e| format!("{to}: {e}"))?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).map_err(|e| format!("{to}: {e}"))?;
    if buf[..2] != id.to_be_bytes() {
        return Err(format!("{to}: a reply with another id"));
    }
    Ok(count_a(&buf, q).unwrap_or(0))
}

/// Runs `f` on a new thread inside the network namespace at `path`.
fn in_netns<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> Res<T> + Send + 'static,
) -> std::thread::JoinHandle<Res<T>> {
    let path = path.to_string();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        // SAFETY: setns on this thread only, which ends with `f`.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
        }
        f()
    })
}

/// `schedule SOCKET SERVICE COUNT NODE=PROBE_NETNS,… CMD…`: runs CMD (an `sdctl services
/// create --replicas COUNT … --detach` against node A), then times until A's API shows COUNT
/// running tasks and until each node's probe gets COUNT addresses for `tasks.SERVICE` (over
/// TCP: they do not fit a UDP reply), polling every CB_SCHED_POLL_MS, within CB_SCHED_LIMIT_S.
pub fn schedule(socket: &str, svc: &str, count: usize, probes: &str, cmd: &[&str]) -> Res<()> {
    let limit = Duration::from_secs(env("CB_SCHED_LIMIT_S", 300));
    let poll = Duration::from_millis(env("CB_SCHED_POLL_MS", 20));
    let probes: Vec<(String, String)> = probes
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('=') {
            Some((n, p)) => Ok((n.to_string(), p.to_string())),
            None => Err(format!("probe {s:?}: want NODE=NETNS_PATH")),
        })
        .collect::<Res<_>>()?;
    let (prog, args) = cmd.split_first().ok_or("no create command")?;
    let t0 = Instant::now();
    let out = std::process::Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let created = Instant::now();
    let deadline = t0 + limit;
    let q = question(&format!("tasks.{svc}"));
    let threads: Vec<_> = probes
        .iter()
        .map(|(node, path)| {
            let q = q.clone();
            let node = node.clone();
            in_netns(path, move || {
                let (mut id, mut last) = (1u16, 0usize);
                loop {
                    let t = Instant::now();
                    // Refused or reset while the resolver is busy: ask again next tick.
                    last = tcp_count(&q, id).unwrap_or(last);
                    id = id.wrapping_add(1);
                    if last >= count {
                        return Ok((node, Some(Instant::now()), last));
                    }
                    if t >= deadline {
                        return Ok((node, None, last));
                    }
                    std::thread::sleep((t + poll).saturating_duration_since(Instant::now()));
                }
            })
        })
        .collect();
    let mut running_at = None;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut running;
    loop {
        let t = Instant::now();
        let v = service(socket, svc)?;
        let ts = tasks(&v);
        running = ts.iter().filter(|t| t["state"] == "running").count();
        if running >= count {
            running_at = Some(Instant::now());
            for t in ts {
                *per_node
                    .entry(t["node"].as_str().unwrap_or("?").to_string())
                    .or_default() += 1;
            }
            break;
        }
        if t >= deadline {
            break;
        }
        std::thread::sleep((t + poll).saturating_duration_since(Instant::now()));
    }
    let mut dns = Vec::new();
    let mut all_at = Some(t0);
    for h in threads {
        let (node, at, n) = h
            .join()
            .map_err(|_| "a probe thread panicked".to_string())??;
        dns.push(match at {
            Some(at) => format!("{node}:{:.2}", (at - t0).as_secs_f64()),
            None => format!("{node}:none({n})"),
        });
        all_at = match (all_at, at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
    let secs = |at: Option<Instant>| {
        at.map_or("none".to_string(), |a| {
            format!("{:.2}", (a - t0).as_secs_f64())
        })
    };
    let spread: Vec<String> = per_node.iter().map(|(n, c)| format!("{n}:{c}")).collect();
    println!(
        "schedule count={count} create_s={:.3} running_s={} running={running} dns_s={} all_s={} per_node={} limit_s={}",
        (created - t0).as_secs_f64(),
        secs(running_at),
        dns.join(","),
        secs(all_at.and_then(|a| running_at.map(|r| a.max(r)))),
        spread.join(","),
        limit.as_secs()
    );
    Ok(())
}

/// One connection from the calling thread's namespace: connect() + the first reply byte (the
/// timed part, ms), then the rest of whoami-server's line; returns its first word (the host).
fn one_conn(to: SocketAddr) -> Res<(f64, String)> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
        .map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| format!("{to}: {e}"))?;
    let mut first = [0u8; 1];
    let n = s.read(&mut first).map_err(|e| format!("read {to}: {e}"))?;
    let elapsed = ms(t.elapsed());
    if n == 0 {
        return Err(format!("{to}: closed without a reply"));
    }
    let mut line = first.to_vec();
    s.read_to_end(&mut line)
        .map_err(|e| format!("read {to}: {e}"))?;
    let line = String::from_utf8_lossy(&line);
    let host = line.split_whitespace().next().unwrap_or("").to_string();
    if host.is_empty() {
        return Err(format!("{to}: unexpected reply {line:?}"));
    }
    Ok((elapsed, host))
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Enters a namespace on the calling thread.
fn enter(ns: &std::fs::File, what: &str) -> Res<()> {
    // SAFETY: setns on the measuring thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns {what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `mesh MESH_NETNS MESH_ADDR DIRECT_NETNS DIRECT_ADDR,… CONNS`: first packet (a new TCP
/// connection + the first reply byte) from MESH_NETNS to MESH_ADDR (a node's published port,
/// served by the routing mesh) against from DIRECT_NETNS (a sandbox on that node) straight to
/// a task (DIRECT_ADDRs in turn); alternating, CONNS each way within CB_MESH_S.
pub fn mesh(
    mesh_ns: &str,
    mesh_addr: &str,
    direct_ns: &str,
    direct: &str,
    conns: usize,
) -> Res<()> {
    let mesh_to: SocketAddr = mesh_addr.parse().map_err(|e| format!("{mesh_addr}: {e}"))?;
    let direct: Vec<SocketAddr> = direct
        .split(',')
        .map(|a| a.parse().map_err(|e| format!("{a}: {e}")))
        .collect::<Res<_>>()?;
    if direct.is_empty() {
        return Err("no task address".into());
    }
    let budget = Duration::from_secs(env("CB_MESH_S", 120));
    let (mesh_ns, direct_ns) = (mesh_ns.to_string(), direct_ns.to_string());
    let open = |p: &str| std::fs::File::open(p).map_err(|e| format!("open {p}: {e}"));
    let (fm, fd) = (open(&mesh_ns)?, open(&direct_ns)?);
    let r = std::thread::spawn(move || -> Res<String> {
        let (mut m, mut d) = (Vec::with_capacity(conns), Vec::with_capacity(conns));
        let mut mesh_hosts: BTreeMap<String, usize> = BTreeMap::new();
        let mut task_host: BTreeMap<SocketAddr, String> = BTreeMap::new();
        // Until both paths answer (the mesh's rules may still be on their way), then warm-up.
        let ready = Instant::now() + Duration::from_secs(30);
        loop {
            enter(&fm, &mesh_ns)?;
            let a = one_conn(mesh_to);
            enter(&fd, &direct_ns)?;
            let b = direct.iter().map(|&to| one_conn(to)).collect::<Res<Vec<_>>>();
            match (a, b) {
                (Ok(_), Ok(b)) => {
                    for (to, (_, host)) in direct.iter().zip(b) {
                        task_host.insert(*to, host);
                    }
                    break;
                }
                (a, b) if Instant::now() > ready => {
                    return Err(format!("not answering: mesh {a:?}, direct {b:?}"));
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        for k in 0..20 {
            enter(&fm, &mesh_ns)?;
            one_conn(mesh_to)?;
            enter(&fd, &direct_ns)?;
            one_conn(direct[k % direct.len()])?;
        }
        let started = Instant::now();
        let mut stopped_by_time = false;
        for k in 0..conns {
            if started.elapsed() > budget {
                stopped_by_time = true;
                break;
            }
            enter(&fm, &mesh_ns)?;
            let (t, host) = one_conn(mesh_to)?;
            m.push(t);
            *mesh_hosts.entry(host).or_default() += 1;
            enter(&fd, &direct_ns)?;
            let to = direct[k % direct.len()];
            let (t, host) = one_conn(to)?;
            if task_host.get(&to) != Some(&host) {
                return Err(format!("{to} answered as {host}, earlier as {:?}", task_host.get(&to)));
            }
            d.push(t);
        }
        let n = m.len();
        let (mm, mp) = (pct(&mut m, 0.5) * 1000.0, pct(&mut m, 0.99) * 1000.0);
        let (dm, dp) = (pct(&mut d, 0.5) * 1000.0, pct(&mut d, 0.99) * 1000.0);
        let spread: Vec<String> = mesh_hosts.iter().map(|(h, c)| format!("{h}:{c}")).collect();
        let tasks: std::collections::BTreeSet<&String> = task_host.values().collect();
        if mesh_hosts.keys().collect::<std::collections::BTreeSet<_>>() != tasks {
            return Err(format!(
                "the mesh reached {spread:?}, the tasks are {tasks:?}"
            ));
        }
        Ok(format!(
            "mesh_first_packet n={n} mesh_median_us={mm:.1} mesh_p99_us={mp:.1} direct_median_us={dm:.1} \
             direct_p99_us={dp:.1} ratio_median={:.3} ratio_p99={:.3} stopped_by_time={stopped_by_time} \
             spread={}",
            mm / dm,
            mp / dp,
            spread.join(",")
        ))
    })
    .join()
    .map_err(|_| "the measuring thread panicked".to_string())??;
    println!("{r}");
    Ok(())
}
