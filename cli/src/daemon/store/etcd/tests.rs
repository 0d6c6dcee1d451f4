//! The etcd backend against a real etcd (Debian's `etcd-server`), one etcd per test on a
//! loopback address of its own (127.0.0.0/8 is all loopback on Linux, so parallel tests and
//! other processes' ports never meet) with its own data directory, ended by PID and removed on
//! drop. Without an `etcd` binary the tests that need one say so on stderr and pass.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::super::contract::{self, put};
use super::*;

const T: Duration = Duration::from_secs(2);
/// What a failing call may take beyond the timeout on a loaded test machine.
const SLACK: Duration = Duration::from_secs(2);

fn find_etcd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// A loopback address no other test of any test process uses: from the PID and a counter.
fn own_address() -> std::net::Ipv4Addr {
    static N: AtomicUsize = AtomicUsize::new(0);
    let pid = std::process::id();
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::net::Ipv4Addr::new(
        127,
        10 + ((pid >> 8) % 240) as u8,
        (pid & 0xff) as u8,
        1 + (n % 250) as u8,
    )
}

fn free_ports(ip: std::net::Ipv4Addr) -> (u16, u16) {
    // Both held at once so they differ; released just before etcd binds them.
    let a = std::net::TcpListener::bind((ip, 0)).unwrap();
    let b = std::net::TcpListener::bind((ip, 0)).unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// One etcd process and its directory; killed (by PID) and removed on drop.
struct Etcd {
    bin: PathBuf,
    root: PathBuf,
    ip: std::net::Ipv4Addr,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

impl Etcd {
    /// A running etcd, or None (after saying so) when there is no etcd binary.
    async fn start(test: &str) -> Option<Etcd> {
        let Some(bin) = find_etcd() else {
            // Straight to stderr: the test harness captures eprintln! of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: no etcd binary in PATH (Debian: apt-get install etcd-server)"
            );
            return None;
        };
        let ip = own_address();
        let root = std::env::temp_dir().join(format!("sdnet-etcd-{test}-{ip}"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let (client, peer) = free_ports(ip);
        let mut e = Etcd {
            bin,
            root,
            ip,
            client,
            peer,
            child: None,
        };
        // A port taken between free_ports() and etcd's bind makes etcd exit: new ports.
        for attempt in 0..3 {
            e.spawn();
            if e.wait_ready().await {
                return Some(e);
            }
            e.kill();
            assert!(attempt < 2, "etcd did not start: {}", e.log_tail());
            let _ = std::fs::remove_dir_all(e.root.join("data"));
            (e.client, e.peer) = free_ports(e.ip);
        }
        None
    }

    fn endpoint(&self) -> String {
        format!("{}:{}", self.ip, self.client)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("etcd.log"))
            .unwrap();
        let peer = format!("http://{}:{}", self.ip, self.peer);
        let client = format!("http://{}:{}", self.ip, self.client);
        let child = Command::new(&self.bin)
            .args(["--name", "t"])
            .arg("--data-dir")
            .arg(self.root.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            // Fast elections: etcd's shortest lease is 1.5 election ticks (750 ms here).
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Until etcd answers (true) or exits / 20 s pass (false).
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && c.try_wait().unwrap().is_some()
            {
                return false;
            }
            if EtcdStore::connect(&[self.endpoint()], Duration::from_millis(500))
                .await
                .is_ok()
            {
                // Ours, not something else that answered there while ours was failing.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return self
                    .child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().unwrap().is_none());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// SIGKILL by PID, then reaped.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn restart(&mut self) {
        self.kill();
        self.spawn();
        assert!(
            self.wait_ready().await,
            "etcd did not restart: {}",
            self.log_tail()
        );
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.root.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn store(&self) -> EtcdStore {
        EtcdStore::connect(&[self.endpoint()], T).await.unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[tokio::test]
async fn contract_compare_and_swap() {
    let Some(e) = Etcd::start("cas").await else {
        return;
    };
    contract::compare_and_swap(&e.store().await).await;
}

#[tokio::test]
async fn contract_watch_replays_then_follows() {
    let Some(e) = Etcd::start("watch").await else {
        return;
    };
    contract::watch_replays_then_follows(&e.store().await).await;
}

#[tokio::test]
async fn contract_leases() {
    let Some(e) = Etcd::start("lease").await else {
        return;
    };
    contract::leases(&e.store().await).await;
}

#[tokio::test]
async fn contract_concurrent_create_if_absent() {
    let Some(e) = Etcd::start("race").await else {
        return;
    };
    contract::concurrent_create_if_absent(Arc::new(e.store().await)).await;
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_is_told_to_relist() {
    let Some(e) = Etcd::start("compact").await else {
        return;
    };
    let s = e.store().await;
    let mut revs = Vec::new();
    for i in 0..5 {
        match s.txn(put(&format!("/c/{i}"), "x")).await.unwrap() {
            TxnResult::Committed(r) => revs.push(r),
            r => panic!("{r:?}"),
        }
    }
    // A watch opened before the compaction, from before it, still sees everything: it was
    // already caught up.
    let mut early = s.watch("/c/", revs[0]).await.unwrap();
    for want in &revs {
        assert_eq!(contract::next_batch(&mut early).await.rev, *want);
    }
    s.compact(revs[2]).await.unwrap();
    match s.watch("/c/", revs[1]).await {
        Err(StoreError::Compacted { asked, compacted }) => {
            assert_eq!((asked, compacted), (revs[1], revs[2]));
        }
        Err(e) => panic!("watch from a compacted revision: {e}"),
        Ok(_) => panic!("watch from a compacted revision was accepted"),
    }
    // From the compaction revision on, history is there.
    let mut w = s.watch("/c/", revs[2]).await.unwrap();
    for want in &revs[2..] {
        assert_eq!(contract::next_batch(&mut w).await.rev, *want);
    }
    // A listing still works, and a watch from it follows.
    let (items, rev) = s.snapshot("/c/").await.unwrap();
    assert_eq!((items.len(), rev), (5, revs[4]));
    let mut w = s.watch("/c/", rev + 1).await.unwrap();
    s.txn(put("/c/9", "y")).await.unwrap();
    assert_eq!(contract::next_batch(&mut w).await.rev, rev + 1);
    assert_eq!(contract::next_batch(&mut early).await.rev, rev + 1);
}

#[tokio::test]
async fn a_txn_may_not_write_a_key_twice() {
    let Some(e) = Etcd::start("dup").await else {
        return;
    };
    let s = e.store().await;
    s.txn(put("/d/1", "a")).await.unwrap();
    for t in [
        put("/d/2", "a").put("/d/2", b"b".to_vec()),
        Txn::new().delete("/d/1").put("/d/1", b"b".to_vec()),
        Txn::new().delete_prefix("/d/").put("/d/3", b"b".to_vec()),
    ] {
        match s.txn(t.clone()).await {
            Err(StoreError::Backend(m)) => assert!(m.contains("duplicate key"), "{m}"),
            r => panic!("{t:?}: {r:?}"),
        }
    }
    let (items, _) = s.snapshot("/d/").await.unwrap();
    assert_eq!(items.len(), 1);
}

#[tokio::test]
async fn a_listing_pages_through_many_keys() {
    let Some(e) = Etcd::start("page").await else {
        return;
    };
    let s = e.store().await;
    // More than two pages, in transactions under etcd's default limit of 128 ops.
    let n = 2 * PAGE as usize + 10;
    let keys: Vec<String> = (0..n).map(|i| format!("/p/{i:05}")).collect();
    for chunk in keys.chunks(100) {
        let mut t = Txn::new();
        for k in chunk {
            t = t.put(k.as_str(), b"v".to_vec());
        }
        s.txn(t).await.unwrap();
    }
    s.txn(put("/q", "outside")).await.unwrap();
    let (items, rev) = s.snapshot("/p/").await.unwrap();
    let got: Vec<&str> = items.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(got, keys.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(rev, s.snapshot("/q").await.unwrap().1);
}

#[tokio::test]
async fn an_unreachable_etcd_fails_fast() {
    // A port nobody listens on: connection refused.
    let ip = own_address();
    let (port, _) = free_ports(ip);
    let started = Instant::now();
    match EtcdStore::connect(&[format!("{ip}:{port}")], T).await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains(&port.to_string()), "{m}"),
        Err(e) => panic!("not Unavailable: {e}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(started.elapsed() < T + SLACK);
}

#[tokio::test]
async fn a_killed_etcd_fails_calls_fast_and_a_restarted_one_resumes_the_watch() {
    let Some(mut e) = Etcd::start("restart").await else {
        return;
    };
    let s = e.store().await;
    let lease = s.grant(Duration::from_secs(60)).await.unwrap();
    let rev = |r: TxnResult| match r {
        TxnResult::Committed(r) => r,
        r => panic!("{r:?}"),
    };
    let r1 = rev(s.txn(put("/k/1", "a")).await.unwrap());
    let mut w = s.watch("/k/", r1).await.unwrap();
    assert_eq!(contract::next_batch(&mut w).await.rev, r1);
    let r2 = rev(s.txn(put("/k/2", "b")).await.unwrap());
    assert_eq!(contract::next_batch(&mut w).await.rev, r2);
    // Committed, not yet consumed by the caller when etcd dies.
    let r3 = rev(s.txn(put("/k/3", "c").delete("/k/1")).await.unwrap());

    e.kill();
    // The watch ends with an error, not silently and not never.
    let killed = Instant::now();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Ok(b))) => assert_eq!(b.rev, r3),
            Ok(Some(Err(e))) => break e,
            Ok(None) => panic!("watch ended without an error"),
            Err(_) => panic!("watch still silent 10 s after etcd was killed"),
        }
    };
    assert!(matches!(end, StoreError::Unavailable(_)), "{end}");
    assert!(killed.elapsed() < Duration::from_secs(5));
    // Every call fails with Unavailable within the timeout.
    let slack = T + SLACK;
    let check = |what: &str, r: Result<(), StoreError>, t: Instant| {
        match r {
            Err(StoreError::Unavailable(m)) => assert!(m.contains(&e.endpoint()), "{what}: {m}"),
            Err(other) => panic!("{what}: not Unavailable: {other}"),
            Ok(()) => panic!("{what}: succeeded with etcd down"),
        }
        assert!(t.elapsed() < slack, "{what} took {:?}", t.elapsed());
    };
    let t = Instant::now();
    check("get", s.get("/k/2").await.map(|_| ()), t);
    let t = Instant::now();
    check("snapshot", s.snapshot("/k/").await.map(|_| ()), t);
    let t = Instant::now();
    check("txn", s.txn(put("/k/x", "x")).await.map(|_| ()), t);
    let t = Instant::now();
    check("watch", s.watch("/k/", r3).await.map(|_| ()), t);
    let t = Instant::now();
    check(
        "grant",
        s.grant(Duration::from_secs(5)).await.map(|_| ()),
        t,
    );
    let t = Instant::now();
    check("keep_alive", s.keep_alive(lease).await, t);
    let t = Instant::now();
    check("revoke", s.revoke(lease).await, t);

    // Back: the same store reconnects, and a watch from the last revision the caller saw
    // delivers exactly what came after it, including what was written while it was down.
    e.restart().await;
    let back = Instant::now();
    let r4 = loop {
        match s.txn(put("/k/4", "d")).await {
            Ok(r) => break rev(r),
            Err(StoreError::Unavailable(_)) if back.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("after restart: {e}"),
        }
    };
    assert!(r4 > r3);
    let mut w = s.watch("/k/", r2 + 1).await.unwrap();
    let b = contract::next_batch(&mut w).await;
    assert_eq!(b.rev, r3);
    let kinds: Vec<(EventKind, &str)> = b
        .events
        .iter()
        .map(|e| (e.kind, e.kv.key.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [(EventKind::Put, "/k/3"), (EventKind::Delete, "/k/1")]
    );
    assert_eq!(contract::next_batch(&mut w).await.rev, r4);
    // The lease outlived the outage (its TTL restarts with etcd).
    s.keep_alive(lease).await.unwrap();
}

#[tokio::test]
async fn a_frozen_etcd_times_out_and_breaks_the_watch() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Some(e) = Etcd::start("frozen").await else {
        return;
    };
    let s = e.store().await;
    let (_, rev) = s.snapshot("/f/").await.unwrap();
    let mut w = s.watch("/f/", rev + 1).await.unwrap();
    // Stopped, etcd keeps its sockets open but answers nothing, like a partitioned host.
    let pid = Pid::from_raw(e.child.as_ref().unwrap().id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    // The signal stops its threads asynchronously: wait until every one is stopped.
    let stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .all(|t| {
                let stat = std::fs::read_to_string(t.unwrap().path().join("stat"));
                // "pid (comm) STATE ...": the state follows the last ')'.
                stat.ok()
                    .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('T')))
                    .unwrap_or(true)
            })
    };
    let t = Instant::now();
    while !stopped() {
        assert!(t.elapsed() < Duration::from_secs(5), "etcd did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    match s.get("/f/x").await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("no answer within"), "{m}"),
        r => panic!("get from a frozen etcd: {r:?}"),
    }
    assert!(t.elapsed() >= T && t.elapsed() < T + SLACK);
    // The watch notices through HTTP/2 keep-alive pings going unanswered.
    let limit = KEEPALIVE_INTERVAL + T + Duration::from_secs(5);
    match tokio::time::timeout(limit, w.next()).await {
        Ok(Some(Err(StoreError::Unavailable(_)))) => {}
        Ok(r) => panic!("watch on a frozen etcd: {r:?}"),
        Err(_) => panic!("watch still silent {limit:?} after etcd froze"),
    }
    kill(pid, Signal::SIGCONT).unwrap();
}

#[test]
fn cluster_store_urls() {
    assert_eq!(
        parse_cluster_store("etcd://10.0.0.1:2379,etcd-b:2379,[fd00::1]:2379").unwrap(),
        ["10.0.0.1:2379", "etcd-b:2379", "[fd00::1]:2379"]
    );
    assert_eq!(
        parse_cluster_store("etcd://127.0.0.1:2379").unwrap(),
        ["127.0.0.1:2379"]
    );
    for bad in [
        "http://10.0.0.1:2379",
        "etcd://",
        "etcd://10.0.0.1",
        "etcd://10.0.0.1:0",
        "etcd://10.0.0.1:x",
        "etcd://:2379",
        "etcd://a:1,",
        "etcd://fd00::1:2379",
        "etcd://a:1/path",
    ] {
        assert!(parse_cluster_store(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn prefix_ranges() {
    assert_eq!(prefix_range("/a/"), (b"/a/".to_vec(), b"/a0".to_vec()));
    assert_eq!(prefix_range(""), (vec![0], vec![0]));
}
