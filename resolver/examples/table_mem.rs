//! Memory of the name tables: builds the state `tests/bench/dns.sh` serves (N sandboxes
//! `cI` on network `test`, one IPv4 address each, plus `bench-client`), or reads a state file,
//! loads it into `Tables` the way `sdctl dns serve` does, and prints the process RSS and the
//! live heap after each step:
//!
//!   table_mem [N | --state FILE]     (default: N = 100000)
//!
//! - model: the parsed `State` alone;
//! - loaded: `State` + tables (writer and snapshot);
//! - tables: the `State` dropped, as `dns serve` does after loading (the figure that counts);
//! - snapshot: only the readers' snapshot left (the writer dropped), so writer = tables −
//!   snapshot.
//!
//! Live heap is counted by a wrapping global allocator (exact bytes asked for, no malloc
//! overhead); RSS is VmRSS after `malloc_trim`, which is what the system sees.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::Ipv4Addr;
use std::process::exit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use sdnet_resolver::model::{Endpoint, Network, Sandbox, State};
use sdnet_resolver::table::Tables;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
            let now = LIVE.fetch_add(new, Ordering::Relaxed) + new;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const USAGE: &str = "usage: table_mem [N | --state FILE]";

/// The state dns.sh writes for `n` names.
fn bench_state(n: u32) -> State {
    let net = Network {
        id: "bench".into(),
        name: "test".into(),
        internal: false,
        dns: true,
        upstreams: vec![],
        ttl: None,
        vip_ttl: None,
    };
    let zeros = "0".repeat(52);
    let sandbox = |id: String, name: String, ip: Ipv4Addr| Sandbox {
        id,
        name,
        hostname: None,
        endpoints: vec![Endpoint {
            network: "bench".into(),
            ipv4: Some(ip),
            ipv6: None,
            aliases: vec![],
        }],
        upstreams: vec![],
        task: None,
        links: Vec::new(),
    };
    let mut sandboxes: Vec<Sandbox> = (1..=n)
        .map(|i| {
            let ip = Ipv4Addr::new(
                (88 + i / 65536) as u8,
                ((i / 256) % 256) as u8,
                (i % 256) as u8,
                0,
            );
            // 10.a.b.c, as dns.sh's awk prints it.
            let [a, b, c, _] = ip.octets();
            sandbox(
                format!("5d{i:010x}{zeros}"),
                format!("c{i}"),
                Ipv4Addr::new(10, a, b, c),
            )
        })
        .collect();
    sandboxes.push(sandbox(
        format!("bc0000000000{zeros}"),
        "bench-client".into(),
        Ipv4Addr::new(127, 0, 0, 200),
    ));
    State {
        networks: vec![net],
        sandboxes,
        services: vec![],
    }
}

fn trim() {
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn report(step: &str, names: usize, t0: Instant) {
    trim();
    let rss = rss_kib();
    let live = LIVE.load(Ordering::Relaxed);
    println!(
        "{step:<10} rss {:>8.1} MiB ({:>6.0} B/name)   live heap {:>8.1} MiB ({:>6.0} B/name)   {:>6.2} s",
        rss as f64 / 1024.0,
        rss as f64 * 1024.0 / names.max(1) as f64,
        live as f64 / (1024.0 * 1024.0),
        live as f64 / names.max(1) as f64,
        t0.elapsed().as_secs_f64(),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let t0 = Instant::now();
    report("start", 1, t0);
    let state = match args.as_slice() {
        [] => bench_state(100_000),
        [n] => match n.parse() {
            Ok(n) => bench_state(n),
            Err(_) => {
                eprintln!("{USAGE}");
                exit(2)
            }
        },
        [flag, path] if flag == "--state" => {
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
                eprintln!("reading {path}: {e}");
                exit(1)
            });
            serde_json::from_str(&text).unwrap_or_else(|e| {
                eprintln!("parsing {path}: {e}");
                exit(1)
            })
        }
        _ => {
            eprintln!("{USAGE}");
            exit(2)
        }
    };
    // dns.sh's N: the sandboxes cI (bench-client is one more).
    let names = state.sandboxes.len().saturating_sub(1).max(1);
    println!(
        "{} sandboxes, per-name figures over {names}",
        state.sandboxes.len()
    );
    report("model", names, t0);
    let tables = Tables::new();
    if let Err(e) = tables.replace_all(&state) {
        eprintln!("loading: {e}");
        exit(1)
    }
    report("loaded", names, t0);
    let peak = PEAK.load(Ordering::Relaxed);
    drop(state);
    report("tables", names, t0);
    let snap = arc_swap::Guard::into_inner(tables.snapshot());
    drop(tables);
    report("snapshot", names, t0);
    println!(
        "peak live heap {:.1} MiB; {} names in the snapshot",
        peak as f64 / (1024.0 * 1024.0),
        snap.total_names()
    );
}
