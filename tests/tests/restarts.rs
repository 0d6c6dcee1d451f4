//! DNS through daemon restarts: the resolver's sockets belong to the keeper, not to the daemon,
//! so queries sent while the daemon is down wait in the socket and are answered by the next
//! daemon. An upgrade (SIGTERM, then start) under 1,000 queries/s loses none, and answers all
//! within 1 s (the client's timeout) whenever the restart itself takes less than that; after
//! `kill -9` queries that waited are answered once it is back.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sdnet_tests::Daemon;

/// A DNS query for `name` A, ID `id`, RD set.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A UDP socket inside `sandbox`'s namespace, connected to its resolver.
fn resolver_socket(d: &Daemon, sandbox: &str) -> UdpSocket {
    let path = d.netns_path(sandbox);
    std::thread::scope(|s| {
        s.spawn(move || {
            let f = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on this short-lived thread only; the socket keeps its namespace.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns");
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.connect("127.0.0.11:53").expect("connect");
            // Room for the burst of answers to everything that waited during a restart.
            let size: libc::c_int = 4 << 20;
            // SAFETY: a valid socket and a c_int option value of the right size.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            s
        })
        .join()
        .expect("socket thread")
    })
}

/// What a load run saw: queries sent, answered within the timeout, answered late, and the
/// longest wait for an answer (printed by the tests).
#[derive(Debug, Default)]
#[allow(dead_code)]
struct Load {
    sent: usize,
    in_time: usize,
    late: usize,
    worst: Duration,
}

/// Sends `rate` queries/s for `dur` from `sock`, while `during` runs on this thread after
/// `after`; then waits up to `timeout` for the last answers.
fn load(
    sock: UdpSocket,
    name: &str,
    rate: u32,
    dur: Duration,
    timeout: Duration,
    after: Duration,
    during: impl FnOnce(),
) -> Load {
    let sent: Arc<Mutex<HashMap<u16, Instant>>> = Arc::default();
    let got: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let rx = sock.try_clone().expect("clone");
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // Answers are awaited well past the timeout: late ones count as late, not as lost.
    let stop_at = Instant::now() + dur + timeout + Duration::from_secs(15);
    let (s2, g2) = (sent.clone(), got.clone());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while Instant::now() < stop_at {
            // Everything sent has been answered: nothing left to wait for.
            if d2.load(std::sync::atomic::Ordering::Acquire) && s2.lock().unwrap().is_empty() {
                break;
            }
            // Only a real answer counts: NOERROR with an address.
            if let Ok(n) = rx.recv(&mut buf)
                && n >= 12
                && buf[3] & 0x0f == 0
                && u16::from_be_bytes([buf[6], buf[7]]) > 0
            {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                if let Some(t) = s2.lock().unwrap().remove(&id) {
                    g2.lock().unwrap().push(t.elapsed());
                }
            }
        }
    });
    let q = name.to_string();
    let total = (rate as f64 * dur.as_secs_f64()) as usize;
    let sender = std::thread::spawn(move || {
        let start = Instant::now();
        let every = Duration::from_secs(1) / rate;
        for i in 0..total {
            let due = start + every * i as u32;
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
            let id = i as u16;
            sent.lock().unwrap().insert(id, Instant::now());
            let _ = sock.send(&query(id, &q));
        }
        total
    });
    std::thread::sleep(after);
    during();
    let total = sender.join().expect("sender");
    done.store(true, std::sync::atomic::Ordering::Release);
    receiver.join().expect("receiver");
    let got = got.lock().unwrap();
    Load {
        sent: total,
        in_time: got.iter().filter(|d| **d <= timeout).count(),
        late: got.iter().filter(|d| **d > timeout).count(),
        worst: got.iter().max().copied().unwrap_or_default(),
    }
}

fn setup(tag: &str) -> Daemon {
    let d = Daemon::start(tag);
    d.ok(&["network", "create", "--subnet", "10.93.0.0/24", "n"]);
    d.ok(&["run", "-d", "--name", "server1", "--network", "n"]);
    d.ok(&["run", "-d", "--name", "client1", "--network", "n"]);
    d
}

#[test]
fn an_upgrade_restart_loses_no_query_at_1000_per_second() {
    let mut d = setup("rsup");
    let sock = resolver_socket(&d, "client1");
    let timeout = Duration::from_secs(1);
    let mut restart = Duration::ZERO;
    let r = load(
        sock,
        "server1",
        1000,
        Duration::from_secs(5),
        timeout,
        Duration::from_millis(1500),
        || {
            let t = Instant::now();
            d.stop_and_restart();
            restart = t.elapsed();
        },
    );
    eprintln!("upgrade restart under load: {r:?}, the restart took {restart:?}");
    assert!(r.sent >= 4900, "{r:?}");
    assert_eq!(
        r.in_time + r.late,
        r.sent,
        "queries lost: {r:?} (the restart took {restart:?})\n{}",
        d.log()
    );
    // Within the client's timeout — unless the machine made the restart itself (SIGTERM
    // until the API answers again) longer than that: the queries sent meanwhile wait for it.
    if restart < Duration::from_millis(700) {
        assert_eq!(
            r.in_time,
            r.sent,
            "queries late: {r:?} (the restart took {restart:?})\n{}",
            d.log()
        );
    }
    // Still the same sandbox answering: its name resolves after the restart.
    let dig = d.dig("client1", &["server1"]);
    assert_eq!(
        dig.data("A"),
        vec![d.ip("server1", "n")],
        "{dig:?}\n{}",
        d.log()
    );
}

#[test]
fn after_kill9_the_queries_that_waited_are_answered() {
    let mut d = setup("rsk9");
    let sock = resolver_socket(&d, "client1");
    d.kill9();
    // The daemon is gone: 50 queries wait in the sandbox's socket (held by the keeper).
    let r = load(
        sock,
        "server1",
        100,
        Duration::from_millis(500),
        Duration::from_secs(20),
        Duration::from_millis(600),
        || d.restart(),
    );
    eprintln!("kill -9 and restart: {r:?}");
    assert_eq!(r.sent, 50, "{r:?}");
    assert_eq!(
        r.in_time,
        50,
        "queries that waited were not answered: {r:?}\n{}",
        d.log()
    );
}
