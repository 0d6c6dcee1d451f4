//! Times sandbox creation through the daemon's API and checks, right when each call returns,
//! whether the new name already answers from a probe sandbox's 127.0.0.11.
//!
//! sandbox-bench SOCKET NETWORK COUNT PROBE_NETNS PREFIX
//! Prints one line per phase: `create` and `remove` latency stats (ms) and DNS readiness.
//! With `SB_IDLE_SECS=N` it leaves the sandboxes idle for N seconds between the phases (the
//! benchmark reads the daemon's idle RSS then). Then reads under load: `SB_WRITERS` clients
//! (default 4) create and remove `SB_WRITES` sandboxes each (default 100) at once while
//! another client lists sandboxes (`GET /v1/sandboxes`, what `sdctl ps` asks) in a loop:
//! `ps_under_load` is that list call's latency.

use std::io::{Read, Write};
use std::net::UdpSocket;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn request(socket: &str, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect {socket}: {e}"))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: sdnet\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

fn query(name: &str) -> Vec<u8> {
    let mut m = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        m.push(l.len() as u8);
        m.extend_from_slice(l.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

fn stats(label: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    let total: f64 = v.iter().sum();
    println!(
        "{label} n={} median_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2} total_s={:.2}",
        v.len(),
        p(0.5),
        p(0.9),
        p(0.99),
        v[v.len() - 1],
        total / 1000.0
    );
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        eprintln!("usage: sandbox-bench SOCKET NETWORK COUNT PROBE_NETNS PREFIX");
        std::process::exit(2);
    }
    let (socket, network, count, probe, prefix) = (
        &a[1],
        &a[2],
        a[3].parse::<usize>().unwrap_or(100),
        &a[4],
        &a[5],
    );
    // The probe socket lives in the probe sandbox, so it asks that sandbox's 127.0.0.11.
    let probe = probe.clone();
    let sock = std::thread::spawn(move || {
        let f = std::fs::File::open(&probe).expect("probe netns");
        // SAFETY: setns on this short-lived thread only.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns");
        UdpSocket::bind("127.0.0.1:0").expect("bind")
    })
    .join()
    .expect("probe thread");
    sock.connect("127.0.0.11:53").expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");

    let mut create = Vec::with_capacity(count);
    let mut ready_at_return = 0usize;
    let mut buf = [0u8; 512];
    let started = Instant::now();
    for i in 0..count {
        let name = format!("{prefix}{i}");
        let body = format!("{{\"name\":\"{name}\",\"networks\":[{{\"network\":\"{network}\"}}]}}");
        let t = Instant::now();
        match request(socket, "POST", "/v1/sandboxes", &body) {
            Ok((200, _)) => {}
            Ok((s, b)) => panic!("create {name}: {s} {b}"),
            Err(e) => panic!("create {name}: {e}"),
        }
        create.push(t.elapsed().as_secs_f64() * 1000.0);
        // One query, sent the moment the call returned: is the name there already?
        sock.send(&query(&name)).expect("send");
        if let Ok(n) = sock.recv(&mut buf)
            && n >= 12
            && buf[3] & 0xF == 0
            && u16::from_be_bytes([buf[6], buf[7]]) >= 1
        {
            ready_at_return += 1;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    stats("create", create);
    println!("create_wall_s={wall:.2} dns_ready_at_return={ready_at_return}/{count}");
    let _ = std::io::stdout().flush();
    let idle: u64 = std::env::var("SB_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    std::thread::sleep(Duration::from_secs(idle.min(600)));
    reads_under_load(socket, network, prefix);
    let mut remove = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        let (s, b) =
            request(socket, "DELETE", &format!("/v1/sandboxes/{prefix}{i}"), "").expect("delete");
        assert_eq!(s, 200, "{b}");
        remove.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    stats("remove", remove);
}

/// Reads while several clients write (with the COUNT sandboxes of the first phase present).
fn reads_under_load(socket: &str, network: &str, prefix: &str) {
    let writers: usize = std::env::var("SB_WRITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let writes: usize = std::env::var("SB_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    if writers == 0 || writes == 0 {
        return;
    }
    // The writers' network (a bridge takes at most 1,024 ports: not the first phase's).
    let load_net = std::env::var("SB_LOAD_NETWORK").unwrap_or_else(|_| network.to_string());
    let network = load_net.as_str();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (socket, done) = (socket.to_string(), done.clone());
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) && lat.len() < 1_000_000 {
                let t = Instant::now();
                let (s, b) = request(&socket, "GET", "/v1/sandboxes", "").expect("list");
                assert_eq!(s, 200, "{b}");
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            lat
        })
    };
    let mut handles = Vec::new();
    for w in 0..writers {
        let (socket, network, prefix) =
            (socket.to_string(), network.to_string(), prefix.to_string());
        handles.push(std::thread::spawn(move || {
            let mut lat = Vec::new();
            for i in 0..writes {
                let name = format!("{prefix}w{w}x{i}");
                let body =
                    format!("{{\"name\":\"{name}\",\"networks\":[{{\"network\":\"{network}\"}}]}}");
                let t = Instant::now();
                let (s, b) = request(&socket, "POST", "/v1/sandboxes", &body).expect("create");
                assert_eq!(s, 200, "{b}");
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            for i in 0..writes {
                let (s, b) = request(
                    &socket,
                    "DELETE",
                    &format!("/v1/sandboxes/{prefix}w{w}x{i}"),
                    "",
                )
                .expect("delete");
                assert_eq!(s, 200, "{b}");
            }
            lat
        }));
    }
    let mut concurrent = Vec::new();
    for h in handles {
        concurrent.extend(h.join().expect("writer"));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("reader");
    stats(&format!("create_{writers}_clients"), concurrent);
    stats("ps_under_load", reads);
}
