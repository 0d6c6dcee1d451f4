//! Service load balancing benchmark: sdnet-lb's nftables table applied with netstack's
//! in-process libnftables, in network namespaces this program creates (and deletes).
//!
//! ```text
//! lb-bench [--sizes 100,1000,5000] [--backends 10] [--changes 50] [--few 5]
//!          [--conns 2000] [--conn-secs 120] [--latency-services 1000] [--port 8080]
//!          [--dir DIR] [--seed N] [--skip-scale] [--skip-latency]
//! ```
//!
//! 1. Scale, for each size S: one namespace; S VIPs (10.96.x.y) with `--backends` backends
//!    each (10.64.x.y). Times the full load of `sdnet_lb::table` (first load, then a reload
//!    over the existing table), lists the table to check it holds S `vips` elements and
//!    S × backends slots (one `spread-N` chain), then times single-service changes made
//!    with `sdnet_lb::change`: `--changes` replacements of one backend of a random service, and `--few` each of "loses its last
//!    backend" (1 → 0), "gains its first backend" (0 → 1), "new service", "service removed".
//!    Checks once that `nft list map` of a changed service shows the new backend set.
//! 2. First packet: a client and a server namespace joined by a veth (10.64.0.1/24 ↔
//!    10.64.0.2-11/24, the server's addresses standing for ten tasks), a TCP listener in the
//!    server namespace answering `lbbench <local ip> <peer ip>\n`, and in the client namespace
//!    the LB table with VIP 10.96.0.1 → those ten addresses (plus `--latency-services` − 1 other
//!    VIPs). Times connect() + first reply byte, each a new connection (so a new conntrack
//!    flow: the DNAT is paid every time), alternating VIP and direct-to-a-task, after a
//!    baseline of direct connections made before any nftables table existed there.
//!
//! Output: one `key=value` line per measurement on stdout (progress on stderr). Every
//! namespace lives as a file under `--dir` (default: a new temp dir, removed at the end);
//! they are deleted on exit, on error and on SIGINT/SIGTERM/SIGHUP.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sdnet_lb::{VipLb, change, table};
use sdnet_netstack::link::Netlink;
use sdnet_netstack::netns::Netns;
use sdnet_netstack::nft;
use sdnet_tests::Rng;

type Res<T> = Result<T, String>;

// ---------------------------------------------------------------------------------------------
// Options

struct Opts {
    sizes: Vec<usize>,
    backends: usize,
    changes: usize,
    few: usize,
    conns: usize,
    conn_secs: u64,
    latency_services: usize,
    port: u16,
    dir: Option<PathBuf>,
    seed: u64,
    scale: bool,
    latency: bool,
}

const USAGE: &str = "usage: lb-bench [--sizes 100,1000,5000] [--backends 10] [--changes 50] [--few 5] \
[--conns 2000] [--conn-secs 120] [--latency-services 1000] [--port 8080] [--dir DIR] [--seed N] \
[--skip-scale] [--skip-latency]";

fn parse_opts() -> Res<Opts> {
    let mut o = Opts {
        sizes: vec![100, 1000, 5000],
        backends: 10,
        changes: 50,
        few: 5,
        conns: 2000,
        conn_secs: 120,
        latency_services: 1000,
        port: 8080,
        dir: None,
        seed: 0x5d_1b_be_c4,
        scale: true,
        latency: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value\n{USAGE}"));
        fn num<T: std::str::FromStr>(name: &str, v: &str) -> Res<T> {
            v.parse()
                .map_err(|_| format!("{name}: not a number: {v:?}\n{USAGE}"))
        }
        match a.as_str() {
            "--sizes" => {
                let v = val("--sizes")?;
                o.sizes = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| num("--sizes", s))
                    .collect::<Res<_>>()?;
            }
            "--backends" => o.backends = num("--backends", &val("--backends")?)?,
            "--changes" => o.changes = num("--changes", &val("--changes")?)?,
            "--few" => o.few = num("--few", &val("--few")?)?,
            "--conns" => o.conns = num("--conns", &val("--conns")?)?,
            "--conn-secs" => o.conn_secs = num("--conn-secs", &val("--conn-secs")?)?,
            "--latency-services" => {
                o.latency_services = num("--latency-services", &val("--latency-services")?)?
            }
            "--port" => o.port = num("--port", &val("--port")?)?,
            "--dir" => o.dir = Some(PathBuf::from(val("--dir")?)),
            "--seed" => o.seed = num("--seed", &val("--seed")?)?,
            "--skip-scale" => o.scale = false,
            "--skip-latency" => o.latency = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a:?}\n{USAGE}")),
        }
    }
    // Addresses are 10.96.0.0/12-ish for VIPs and 10.64.0.0/11 for backends: keep them apart.
    if o.sizes.iter().any(|&s| s == 0 || s > 60_000) {
        return Err("--sizes: each size must be 1..=60000".into());
    }
    if o.backends == 0 || o.backends > 64 {
        return Err("--backends must be 1..=64".into());
    }
    if o.latency_services == 0 || o.latency_services > 60_000 {
        return Err("--latency-services must be 1..=60000".into());
    }
    if o.port == 0 {
        return Err("--port must not be 0".into());
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Work dir and namespaces, cleaned up on drop and on signals

struct Work {
    dir: PathBuf,
    /// Whether we created `dir` (then it is removed at the end).
    own_dir: bool,
    namespaces: Mutex<Vec<PathBuf>>,
}

impl Work {
    fn new(dir: Option<PathBuf>) -> Res<Work> {
        let (dir, own_dir) = match dir {
            Some(d) => {
                std::fs::create_dir_all(&d)
                    .map_err(|e| format!("creating {}: {e}", d.display()))?;
                (d, false)
            }
            None => {
                let d = std::env::temp_dir().join(format!("sdlb-{}", std::process::id()));
                std::fs::create_dir(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
                (d, true)
            }
        };
        Ok(Work {
            dir,
            own_dir,
            namespaces: Mutex::new(Vec::new()),
        })
    }

    fn netns(&self, name: &str) -> Res<Netns> {
        let path = self.dir.join(format!("sdlb-{}-{name}", std::process::id()));
        // Registered first: a failed create may have left a file behind.
        self.namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.clone());
        Netns::create(&path).map_err(|e| format!("creating namespace {}: {e}", path.display()))
    }

    fn delete_netns(&self, ns: Netns) {
        let path = ns.path().to_path_buf();
        drop(ns);
        if let Err(e) = Netns::delete(&path) {
            eprintln!("lb-bench: deleting namespace {}: {e}", path.display());
        }
        self.namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| p != &path);
    }

    fn cleanup(&self) {
        let list: Vec<PathBuf> =
            std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|e| e.into_inner()));
        for p in list {
            if let Err(e) = Netns::delete(&p) {
                eprintln!("lb-bench: deleting namespace {}: {e}", p.display());
            }
        }
        if self.own_dir
            && let Err(e) = std::fs::remove_dir(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("lb-bench: removing {}: {e}", self.dir.display());
        }
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Blocks SIGINT/SIGTERM/SIGHUP in this (main) thread — every thread started later inherits
/// that — and handles them on a dedicated thread: delete the namespaces, then exit.
fn handle_signals(work: Arc<Work>) -> Res<()> {
    // SAFETY: sigset manipulation on a set we own; pthread_sigmask on the calling thread.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err("pthread_sigmask failed".into());
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: sigwait on a set we own; the signals are blocked in every thread.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                eprintln!("lb-bench: signal {sig}: cleaning up");
                work.cleanup();
                std::process::exit(128 + sig);
            }
        })
        .map_err(|e| format!("spawning the signal thread: {e}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Stats {
    n: usize,
    median: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

/// Nearest-rank percentiles (with n = 50, p99 is the largest sample).
fn stats(mut v: Vec<f64>) -> Option<Stats> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    Some(Stats {
        n: v.len(),
        median: p(0.5),
        p90: p(0.9),
        p99: p(0.99),
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    })
}

fn vip_addr(i: usize) -> Ipv4Addr {
    // 10.96.0.1, 10.96.0.2, … (i < 60000 keeps it inside 10.96.0.0/12-ish space).
    let n = i + 1;
    Ipv4Addr::new(10, 96 + (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

/// Backend number k: 10.64.0.0 + k + 1, across 10.64/10 … 10.95 (never a VIP).
fn backend_addr(k: usize) -> Ipv4Addr {
    let n = k + 1;
    Ipv4Addr::new(10, 64 + ((n >> 16) & 31) as u8, (n >> 8) as u8, n as u8)
}

/// The backends a listing of `backends-N` maps holds for `vip` (elements `vip . slot : b`).
fn backends_of(listing: &str, vip: Ipv4Addr) -> BTreeSet<Ipv4Addr> {
    let key = format!("{vip} . ");
    let mut out = BTreeSet::new();
    for part in listing.split([',', '{', '\n']) {
        let part = part.trim();
        if let Some(rest) = part.strip_prefix(&key)
            && let Some((_, b)) = rest.split_once(" : ")
            && let Ok(b) = b.trim().trim_end_matches('}').trim().parse()
        {
            out.insert(b);
        }
    }
    out
}

fn apply_timed(ns: &Netns, text: &str) -> Res<f64> {
    let t = Instant::now();
    nft::apply(ns, text)
        .map_err(|e| format!("nft apply: {e}\n--- text (head) ---\n{}", head(text)))?;
    Ok(ms(t.elapsed()))
}

/// Applies one service's change like the daemon does: the spread chain for the new backend
/// count is created only when the table may not hold it yet (`loaded`: counts it holds).
fn change_timed(
    ns: &Netns,
    loaded: &mut BTreeSet<usize>,
    old: Option<&VipLb>,
    new: Option<&VipLb>,
) -> Res<f64> {
    let n = new.map_or(0, |v| v.backends.len());
    let Some(text) = change(old, new, loaded.contains(&n)) else {
        return Ok(0.0);
    };
    let t = apply_timed(ns, &text)?;
    if n > 0 {
        loaded.insert(n);
    }
    Ok(t)
}

/// Lists with the `nft` binary, not through the context the daemon's path uses: a listing
/// leaves the whole table (every element) in that context's cache, and the next change
/// would pay for freeing it — a cost the daemon, which never lists, does not have.
fn list_with_binary(ns: &Netns, what: &str) -> Res<String> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(["nft"])
        .args(what.split(' '))
        .output()
        .map_err(|e| format!("running nft: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft {what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn head(text: &str) -> String {
    text.lines().take(12).collect::<Vec<_>>().join("\n")
}

fn print_stats(prefix: &str, s: &Option<Stats>) {
    match s {
        Some(s) => println!(
            "{prefix} n={} median_ms={:.3} p90_ms={:.3} p99_ms={:.3} max_ms={:.3} mean_ms={:.3}",
            s.n, s.median, s.p90, s.p99, s.max, s.mean
        ),
        None => println!("{prefix} n=0"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Scale: full load and single-service changes

fn scale(work: &Work, o: &Opts, s: usize, rng: &mut Rng) -> Res<()> {
    eprintln!("lb-bench: {s} services × {} backends", o.backends);
    let ns = work.netns(&format!("s{s}"))?;
    let mut next_backend = s * o.backends;
    let mut vips: Vec<VipLb> = (0..s)
        .map(|i| {
            VipLb::new(
                vip_addr(i),
                (0..o.backends)
                    .map(|j| backend_addr(i * o.backends + j))
                    .collect(),
            )
        })
        .collect();

    let t = Instant::now();
    let text = table(&vips);
    let gen_ms = ms(t.elapsed());
    let full_ms = apply_timed(&ns, &text)?;
    // The same text again: the table exists, so this is delete + create in one transaction.
    let reload_ms = apply_timed(&ns, &text)?;

    let t = Instant::now();
    let listing = list_with_binary(&ns, &format!("list table ip {}", sdnet_lb::TABLE))?;
    let list_ms = ms(t.elapsed());
    let spread_chains = listing
        .lines()
        .filter(|l| l.trim_start().starts_with("chain spread-"))
        .count();
    let vmap_elements = listing.matches(": goto spread-").count();
    let slot_elements = listing.matches(" : 10.").count();
    println!(
        "services={s} backends={} table_bytes={} gen_ms={gen_ms:.2} full_load_ms={full_ms:.1} \
         reload_ms={reload_ms:.1} list_ms={list_ms:.1} spread_chains={spread_chains} \
         vmap_elements={vmap_elements} slot_elements={slot_elements}",
        o.backends,
        text.len()
    );
    if spread_chains != 1 || vmap_elements != s || slot_elements != s * o.backends {
        return Err(format!(
            "services={s}: the table holds {spread_chains} spread chains, {vmap_elements} vmap \
             elements and {slot_elements} backend slots (want 1, {s}, {})",
            s * o.backends
        ));
    }

    let mut loaded: BTreeSet<usize> = [o.backends].into();
    // One backend of a random service replaced: flush its chain + one rule.
    let mut times = Vec::with_capacity(o.changes);
    let mut last_changed = None;
    for _ in 0..o.changes {
        let i = rng.below(s);
        let old = vips[i].clone();
        let mut b = old.backends.clone();
        let gone = rng.below(b.len());
        b[gone] = backend_addr(next_backend);
        next_backend += 1;
        let new = VipLb::new(old.vip, b);
        times.push(change_timed(&ns, &mut loaded, Some(&old), Some(&new))?);
        vips[i] = new;
        last_changed = Some((i, old));
    }
    print_stats(&format!("services={s} case=replace_one"), &stats(times));

    // Loses its last backend (1 → 0: vips element out, dead element in) and gains it back.
    let (mut lose, mut gain) = (Vec::new(), Vec::new());
    for _ in 0..o.few {
        let i = rng.below(s);
        let full = vips[i].clone();
        let one = VipLb::new(full.vip, vec![full.backends[0]]);
        let none = VipLb::new(full.vip, vec![]);
        let mut step =
            |from: &VipLb, to: &VipLb| change_timed(&ns, &mut loaded, Some(from), Some(to));
        step(&full, &one)?;
        lose.push(step(&one, &none)?);
        gain.push(step(&none, &one)?);
        step(&one, &full)?;
    }
    print_stats(&format!("services={s} case=lose_last"), &stats(lose));
    print_stats(&format!("services={s} case=gain_first"), &stats(gain));

    // A new service appears (chain + rule + vips element), then goes away.
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for k in 0..o.few {
        let v = VipLb::new(
            vip_addr(s + k),
            (0..o.backends)
                .map(|j| backend_addr(next_backend + j))
                .collect(),
        );
        next_backend += o.backends;
        add.push(change_timed(&ns, &mut loaded, None, Some(&v))?);
        del.push(change_timed(&ns, &mut loaded, Some(&v), None)?);
    }
    print_stats(&format!("services={s} case=add_service"), &stats(add));
    print_stats(&format!("services={s} case=remove_service"), &stats(del));

    // Where the time goes. `noop_txn`: a transaction libnftables needs no cache for and the
    // kernel has nothing to do in (fixed cost: thread + setns + parse + empty commit).
    // `element_probe`: add + delete an unused element of `dead` — libnftables 1.0.x fetches
    // its cache (every chain and set of the table) for any `add rule`/`add element`, while
    // the kernel work is trivial. replace_one ≈ element_probe + the rule's kernel work.
    let (mut noop, mut probe) = (Vec::new(), Vec::new());
    for k in 0..o.few * 2 {
        noop.push(apply_timed(
            &ns,
            &format!("add table ip {}\n", sdnet_lb::TABLE),
        )?);
        let e = Ipv4Addr::new(10, 127, (k >> 8) as u8, k as u8);
        probe.push(apply_timed(
            &ns,
            &format!(
                "add element ip {t} dead {{ {e} }}\ndelete element ip {t} dead {{ {e} }}\n",
                t = sdnet_lb::TABLE
            ),
        )?);
    }
    print_stats(&format!("services={s} case=noop_txn"), &stats(noop));
    print_stats(&format!("services={s} case=element_probe"), &stats(probe));

    // Correctness: the last service changed above shows exactly its new backends.
    if let Some((i, old)) = last_changed {
        let v = &vips[i];
        let m = format!("backends-{}", v.backends.len());
        let out = list_with_binary(&ns, &format!("list map ip {} {m}", sdnet_lb::TABLE))?;
        let got = backends_of(&out, v.vip);
        let want: BTreeSet<Ipv4Addr> = v.backends.iter().copied().collect();
        let removed: Vec<_> = old.backends.iter().filter(|b| !want.contains(b)).collect();
        if got != want {
            return Err(format!(
                "services={s}: map {m} shows {got:?} for {}, want {want:?}",
                v.vip
            ));
        }
        println!(
            "services={s} check=ok vip={} map={m} backends={} replaced={removed:?}",
            v.vip,
            got.len()
        );
    }
    work.delete_netns(ns);
    Ok(())
}

// 2. First packet through the VIP vs direct: in its own file.
#[path = "lb-bench/first_packet.rs"]
mod first_packet;
use first_packet::first_packet;

// ---------------------------------------------------------------------------------------------

fn run(o: &Opts, work: &Work) -> Res<()> {
    println!(
        "lb_bench nft_backend={:?} sizes={:?} backends={} changes={} few={} conns={} seed={}",
        nft::Nft::backend(),
        o.sizes,
        o.backends,
        o.changes,
        o.few,
        o.conns,
        o.seed
    );
    let mut rng = Rng::new(o.seed);
    if o.scale {
        for &s in &o.sizes {
            scale(work, o, s, &mut rng)?;
        }
    }
    if o.latency {
        first_packet(work, o)?;
    }
    Ok(())
}

fn main() {
    let o = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("lb-bench: {e}");
            std::process::exit(2);
        }
    };
    let work = match Work::new(o.dir.clone()) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            eprintln!("lb-bench: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = handle_signals(work.clone()) {
        eprintln!("lb-bench: {e}");
        std::process::exit(1);
    }
    let r = run(&o, &work);
    let _ = std::io::stdout().flush();
    work.cleanup();
    if let Err(e) = r {
        eprintln!("lb-bench: {e}");
        std::process::exit(1);
    }
}
