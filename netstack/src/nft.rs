//! nftables commands applied as one atomic transaction inside a namespace.
//!
//! libnftables is called in-process, loaded with `dlopen` (no build-time headers, and a host
//! without it still works: the `nft` binary is the fallback). Spawning `nft -f` costs 7-17 ms
//! per call on a small VM; a libnftables context costs ~0.2 ms to create and run. Commands run
//! on a thread inside the target namespace, so the context's netlink socket lives there.
//!
//! What shapes this module (libnftables 1.0.x, kernel 6.x):
//! - Closing a context's socket can be slow: after a commit that deleted objects, the kernel's
//!   release of the socket waits for the deferred destruction of those objects (an RCU grace
//!   period, ~10 ms measured) *while holding the namespace's nftables commit mutex*, so even
//!   closing it on another thread stalls the next commit in that namespace. Hence contexts
//!   are kept for reuse, one per namespace (up to 16, freed after 2 s idle, or at once by
//!   [`Nft::forget`] / [`Netns::delete`]): repeated applies to a namespace (a firewall table
//!   replaced on every change) never close a socket.
//! - When a context is freed, we keep a duplicate of its socket, so `nft_ctx_free` returns at
//!   once, and [`crate::reap`] closes the duplicate on a background thread. (Freeing the
//!   whole context on another thread would race with calls in progress: next point.)
//! - The library keeps process-global state (an interface cache released by every run and
//!   free, one-time init), so every call into it is made under one lock.
//! - It waits on its socket with `select()`: a descriptor at or above `FD_SETSIZE` (1024)
//!   aborts the process (fortified `FD_SET`), and a socket it cannot create makes it call
//!   `exit()`. So before each run we check that low descriptors are available and use the
//!   binary otherwise. Processes holding many descriptors should keep theirs above 1024
//!   ([`move_fd_high`]).
//!
//! A kept context pins its namespace (its socket holds a reference), for at most the idle
//! time, unless the namespace is deleted through [`Netns::delete`].

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::fcntl::FcntlArg;
use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, getsockopt, socket};
use tracing::{debug, warn};

use crate::netns::Netns;
use crate::{Error, Result};

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxInt = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxStr = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
type SockFd = unsafe extern "C" fn(*const c_void) -> c_int;

/// `FD_SETSIZE`: libnftables' select() cannot take descriptors from here up.
const FD_SETSIZE: RawFd = 1024;

/// How [`Nft`] talks to nftables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// libnftables, in-process.
    Library,
    /// The `nft` binary, spawned from inside the namespace.
    Binary,
}

struct Lib {
    new: CtxNew,
    free: CtxFree,
    buffer_output: CtxInt,
    buffer_error: CtxInt,
    get_output: CtxStr,
    get_error: CtxStr,
    run: RunCmd,
    /// libmnl's `mnl_socket_get_fd`, to find a context's socket (optional).
    sock_fd: Option<SockFd>,
}

/// Contexts kept for reuse (at most this many).
const CACHE_CAP: usize = 16;
/// A context that ran a text this large is freed at once instead of kept (see `run_library`).
const BIG_TEXT: usize = 256 * 1024;
/// A kept context unused this long is freed (it pins its namespace).
const CACHE_IDLE: Duration = Duration::from_secs(2);

/// A libnftables context. Only touched under [`STATE`]'s lock.
struct Ctx(*mut c_void);
// SAFETY: a context is used by one thread at a time (under the STATE lock) and is not tied
// to the thread that created it.
unsafe impl Send for Ctx {}

/// Identity of a network namespace: device and inode of its nsfs file.
type NsKey = (u64, u64);

struct Kept {
    key: NsKey,
    ctx: Ctx,
    used: Instant,
}

/// Every call into libnftables happens under this lock (the library has global state); it
/// also guards the contexts kept for reuse, most recently used last.
static STATE: Mutex<Vec<Kept>> = Mutex::new(Vec::new());

fn state() -> MutexGuard<'static, Vec<Kept>> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

static LIB: OnceLock<Option<Lib>> = OnceLock::new();

fn lib() -> Option<&'static Lib> {
    LIB.get_or_init(|| {
        let l = load();
        if l.is_none() {
            warn!("libnftables.so.1 not usable; falling back to the nft binary");
        }
        l
    })
    .as_ref()
}

fn load() -> Option<Lib> {
    // SAFETY: dlopen/dlsym with static C strings; each symbol is cast to its documented C
    // signature (libnftables(3), libmnl). Handles are never closed: the functions must stay
    // valid for the life of the process.
    unsafe {
        let h = libc::dlopen(
            c"libnftables.so.1".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_LOCAL,
        );
        if h.is_null() {
            return None;
        }
        let sym = |h: *mut c_void, n: &CStr| {
            let p = libc::dlsym(h, n.as_ptr());
            (!p.is_null()).then_some(p)
        };
        let mnl = libc::dlopen(c"libmnl.so.0".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        let sock_fd = if mnl.is_null() {
            None
        } else {
            sym(mnl, c"mnl_socket_get_fd").map(|p| std::mem::transmute::<*mut c_void, SockFd>(p))
        };
        Some(Lib {
            new: std::mem::transmute::<*mut c_void, CtxNew>(sym(h, c"nft_ctx_new")?),
            free: std::mem::transmute::<*mut c_void, CtxFree>(sym(h, c"nft_ctx_free")?),
            buffer_output: std::mem::transmute::<*mut c_void, CtxInt>(sym(
                h,
                c"nft_ctx_buffer_output",
            )?),
            buffer_error: std::mem::transmute::<*mut c_void, CtxInt>(sym(
                h,
                c"nft_ctx_buffer_error",
            )?),
            get_output: std::mem::transmute::<*mut c_void, CtxStr>(sym(
                h,
                c"nft_ctx_get_output_buffer",
            )?),
            get_error: std::mem::transmute::<*mut c_void, CtxStr>(sym(
                h,
                c"nft_ctx_get_error_buffer",
            )?),
            run: std::mem::transmute::<*mut c_void, RunCmd>(sym(h, c"nft_run_cmd_from_buffer")?),
            sock_fd,
        })
    }
}

/// Socket options nix does not define, declared with its own (safe) getsockopt machinery (in
/// a private module: the macro makes the types `pub`).
mod opt {
    use nix::{getsockopt_impl, sockopt_impl};
    use std::ffi::c_int;

    sockopt_impl!(
        /// `SO_DOMAIN`: the socket's address family.
        SoDomain,
        GetOnly,
        libc::SOL_SOCKET,
        libc::SO_DOMAIN,
        c_int
    );
    sockopt_impl!(
        /// `SO_PROTOCOL`: the socket's protocol.
        SoProtocol,
        GetOnly,
        libc::SOL_SOCKET,
        libc::SO_PROTOCOL,
        c_int
    );
}
use opt::{SoDomain, SoProtocol};

/// The context's netlink socket, if it can be found: the first member of libnftables'
/// `struct nft_ctx` is its `struct mnl_socket *` (1.0.x). What we find is checked by asking
/// the kernel that the descriptor is a netfilter netlink socket.
///
/// SAFETY: `ctx` must be a live context created with flags 0 (so it has a socket), and stay
/// live while the result is used.
unsafe fn ctx_socket<'a>(l: &Lib, ctx: *mut c_void) -> Option<BorrowedFd<'a>> {
    let get = l.sock_fd?;
    // SAFETY: ctx points to a live nft_ctx whose first field is a pointer.
    let nl = unsafe { *(ctx as *const *const c_void) };
    if nl.is_null() {
        return None;
    }
    // SAFETY: nl is the context's mnl_socket.
    let fd = unsafe { get(nl) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the context owns this descriptor and keeps it open while it is live, which the
    // caller guarantees for as long as the result is used.
    let sock = unsafe { BorrowedFd::borrow_raw(fd) };
    let ok = getsockopt(&sock, SoDomain) == Ok(AddressFamily::Netlink as c_int)
        && getsockopt(&sock, SoProtocol) == Ok(SockProtocol::NetlinkNetFilter as c_int);
    ok.then_some(sock)
}

/// A duplicate of `fd` numbered `min` or above.
fn dup_fd(fd: BorrowedFd<'_>, min: RawFd) -> Option<OwnedFd> {
    let d = nix::fcntl::fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(min)).ok()?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor and nothing else owns it (nix
    // hands it back as a plain number).
    Some(unsafe { OwnedFd::from_raw_fd(d) })
}

/// Moves a descriptor to a number at or above 1024, keeping the low range free for code that
/// uses `select()` (libnftables). Returns the original on failure (e.g. when the
/// `RLIMIT_NOFILE` soft limit is 1024: raise it to use this).
pub fn move_fd_high(fd: OwnedFd) -> OwnedFd {
    match dup_fd(fd.as_fd(), FD_SETSIZE) {
        Some(high) => high,
        None => fd,
    }
}

/// Whether libnftables can safely create a context now: it needs a netfilter socket (and
/// maybe a route socket for its interface cache) below `FD_SETSIZE`, and exits the process
/// if it cannot open one. Probing takes the lowest free descriptors, which is what the
/// library will get right after.
fn low_fds_available() -> bool {
    let mut probes = Vec::with_capacity(2);
    for _ in 0..2 {
        let Ok(fd) = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        ) else {
            return false;
        };
        let low = fd.as_raw_fd() < FD_SETSIZE - 8;
        probes.push(fd);
        if !low {
            return false;
        }
    }
    true
}

fn copy_cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libnftables returns NUL-terminated buffers that live until the next call on
    // the context; we copy before that.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Frees a context without waiting for the kernel: with a duplicate of its socket open,
/// `nft_ctx_free`'s close is instant, and the duplicate is closed in the background.
///
/// SAFETY: under the STATE lock; `ctx` is live and not used again.
unsafe fn release(l: &Lib, ctx: Ctx) {
    // SAFETY: per this function's contract; `sock` is used before the context is freed.
    let sock = unsafe { ctx_socket(l, ctx.0) };
    // Prefer a high number: the low range is what libnftables needs.
    let keep = sock.and_then(|fd| dup_fd(fd, FD_SETSIZE).or_else(|| dup_fd(fd, 0)));
    // SAFETY: per this function's contract; freed exactly once.
    unsafe { (l.free)(ctx.0) };
    if let Some(fd) = keep {
        crate::reap::close_later(fd);
    }
}

/// Frees kept contexts matching `drop_it`.
fn evict(l: &Lib, kept: &mut Vec<Kept>, mut drop_it: impl FnMut(&Kept) -> bool) {
    let mut i = 0;
    while i < kept.len() {
        if drop_it(&kept[i]) {
            let k = kept.remove(i);
            // SAFETY: under the STATE lock (we hold `kept`); the context leaves the cache.
            unsafe { release(l, k.ctx) };
        } else {
            i += 1;
        }
    }
}

/// Frees idle kept contexts now and then, so they do not pin namespaces for long.
fn start_idle_sweeper(l: &'static Lib) {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("nft-idle".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(CACHE_IDLE / 4);
                    let mut kept = state();
                    evict(l, &mut kept, |k| k.used.elapsed() >= CACHE_IDLE);
                }
            });
        if let Err(e) = spawned {
            warn!("cannot start the nft idle sweeper: {e}");
        }
    });
}

/// Frees the context kept for namespace `key`, if any (its namespace is going away).
pub(crate) fn forget_key(key: NsKey) {
    // Not loaded yet: nothing kept (and no reason to load it now).
    let Some(Some(l)) = LIB.get() else {
        return;
    };
    let mut kept = state();
    evict(l, &mut kept, |k| k.key == key);
}

/// Runs nft commands with libnftables in the calling thread's namespace (whose identity is
/// `key`); returns nft's output. `None`: the library cannot be used right now (use the
/// binary).
///
/// The context is kept for the next call on the same namespace: besides saving its creation,
/// that avoids closing its socket, which after a commit that deleted objects waits for the
/// kernel's deferred destruction (~10 ms) while holding the namespace's nftables commit
/// mutex, stalling the next commit there.
fn run_library(l: &'static Lib, key: NsKey, text: &CStr) -> Option<Result<String>> {
    let mut kept = state();
    // Each run may open a route socket for the interface cache: keep low descriptors.
    if !low_fds_available() {
        debug!("no low descriptors for libnftables; using the nft binary");
        return None;
    }
    let ctx = match kept.iter().position(|k| k.key == key) {
        Some(i) => kept.remove(i).ctx,
        None => {
            // SAFETY: under the STATE lock; a new context, owned here.
            let ctx = Ctx(unsafe { (l.new)(0) });
            if ctx.0.is_null() {
                return None;
            }
            // SAFETY: ctx is live and was created with flags 0.
            let sock = unsafe { ctx_socket(l, ctx.0) };
            if sock.is_some_and(|fd| fd.as_raw_fd() >= FD_SETSIZE) {
                // Another thread took the low descriptors between our probe and now.
                // SAFETY: under the lock, freed once, never used again.
                unsafe { release(l, ctx) };
                return None;
            }
            // SAFETY: ctx is live; output and errors go to buffers we read below.
            unsafe {
                (l.buffer_output)(ctx.0);
                (l.buffer_error)(ctx.0);
            }
            ctx
        }
    };
    // SAFETY: ctx is live and used under the lock; the buffers are copied before the next
    // call on it.
    let (rc, out, err) = unsafe {
        let rc = (l.run)(ctx.0, text.as_ptr());
        (
            rc,
            copy_cstr((l.get_output)(ctx.0)),
            copy_cstr((l.get_error)(ctx.0)),
        )
    };
    if text.to_bytes().len() >= BIG_TEXT {
        // The context now caches everything the text created; freeing that costs ~1 µs per
        // set element, which the next (small) change on this namespace would pay. Pay it
        // here, on the already slow whole-table load.
        // SAFETY: under the lock; the context is not kept, so it is freed exactly once.
        unsafe { release(l, ctx) };
    } else {
        kept.push(Kept {
            key,
            ctx,
            used: Instant::now(),
        });
    }
    if kept.len() > CACHE_CAP {
        let k = kept.remove(0);
        // SAFETY: under the lock; the least recently used context leaves the cache.
        unsafe { release(l, k.ctx) };
    }
    drop(kept);
    start_idle_sweeper(l);
    Some(nft_result(rc == 0, out, err, rc))
}

fn nft_result(ok: bool, out: String, err: String, code: i32) -> Result<String> {
    if ok {
        return Ok(out);
    }
    let err = err.trim();
    Err(Error::Nft(if err.is_empty() {
        format!("nft failed with code {code}")
    } else {
        err.to_string()
    }))
}

/// Runs nft commands with the `nft` binary, from the calling thread (so in its namespace).
fn run_binary(text: &str) -> Result<String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Nft(format!("running nft: {e} (is nftables installed?)")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error (nft exited early) shows up in its status and stderr below.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Nft(format!("running nft: {e}")))?;
    nft_result(
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// The namespace identity of a namespace handle.
pub(crate) fn ns_key(fd: impl AsFd) -> Option<NsKey> {
    let st = nix::sys::stat::fstat(fd).ok()?;
    Some((st.st_dev, st.st_ino))
}

fn run_here(text: &str, key: Option<NsKey>, backend: Backend) -> Result<String> {
    if backend == Backend::Library
        && let Some(l) = lib()
        && let Some(key) = key
    {
        let c = CString::new(text).map_err(|_| Error::Invalid("nft text contains NUL".into()))?;
        if let Some(r) = run_library(l, key, &c) {
            return r;
        }
    }
    run_binary(text)
}

/// nft table families.
const FAMILIES: [&str; 6] = ["ip", "ip6", "inet", "arp", "bridge", "netdev"];

fn check_table_ref(family: &str, name: &str) -> Result<()> {
    let name_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c));
    if !FAMILIES.contains(&family) || !name_ok {
        return Err(Error::Invalid(format!(
            "invalid nftables table {family} {name}"
        )));
    }
    Ok(())
}

/// Upper bounds (seconds) of the transaction-time buckets; one more for the rest.
pub const TXN_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Times of [`Nft::apply`] transactions in this process (for the daemon's metrics).
struct TxnTimes {
    buckets: [AtomicU64; TXN_BOUNDS.len() + 1],
    sum_us: AtomicU64,
    failed: AtomicU64,
}

static TXN_TIMES: TxnTimes = TxnTimes {
    buckets: [const { AtomicU64::new(0) }; TXN_BOUNDS.len() + 1],
    sum_us: AtomicU64::new(0),
    failed: AtomicU64::new(0),
};

fn record_txn(took: Duration, ok: bool) {
    let secs = took.as_secs_f64();
    let i = TXN_BOUNDS
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(TXN_BOUNDS.len());
    TXN_TIMES.buckets[i].fetch_add(1, Ordering::Relaxed);
    TXN_TIMES
        .sum_us
        .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    if !ok {
        TXN_TIMES.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// What [`Nft::apply`] transactions took so far in this process.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnStats {
    /// Seconds, all transactions.
    pub sum: f64,
    pub count: u64,
    /// (upper bound in seconds, transactions in this bucket alone); the last bound infinite.
    pub buckets: Vec<(f64, u64)>,
    pub failed: u64,
}

/// nftables inside a namespace. Stateless: each call is one transaction on a fresh context.
pub struct Nft;

impl Nft {
    /// Which backend calls use: the library when it loads, else the binary.
    pub fn backend() -> Backend {
        if lib().is_some() {
            Backend::Library
        } else {
            Backend::Binary
        }
    }

    /// Applies `ruleset` in `ns` as one atomic transaction. The text is nft syntax (what
    /// `nft list ruleset` prints) and may hold several commands: `add table …`,
    /// `delete table …`, `table ip x { … }`, `add element …`, one per line or `;`-separated.
    /// On error nothing is applied and the error carries nft's message.
    pub fn apply(ns: &Netns, ruleset: &str) -> Result<()> {
        Nft::apply_with(ns, ruleset, Nft::backend())
    }

    /// [`Nft::apply`] with a chosen backend (the binary is always available as a choice; the
    /// library falls back to it when unusable).
    pub fn apply_with(ns: &Netns, ruleset: &str, backend: Backend) -> Result<()> {
        let key = ns_key(ns);
        let started = Instant::now();
        let r = ns.run(|| run_here(ruleset, key, backend)).and_then(|r| r);
        record_txn(started.elapsed(), r.is_ok());
        r.map(|_| ())
    }

    /// Times of the transactions [`Nft::apply`] ran in this process.
    pub fn transaction_times() -> TxnStats {
        let buckets: Vec<(f64, u64)> = TXN_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(TXN_TIMES.buckets.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        TxnStats {
            sum: TXN_TIMES.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            failed: TXN_TIMES.failed.load(Ordering::Relaxed),
        }
    }

    /// Frees the libnftables context kept for `ns`, if any. Kept contexts hold a socket in
    /// their namespace, which keeps it alive: [`Netns::delete`] calls this; call it when a
    /// namespace is given up another way. (Idle contexts are freed within seconds anyway.)
    pub fn forget(ns: &Netns) {
        if let Some(key) = ns_key(ns) {
            forget_key(key);
        }
    }

    /// Runs nft commands in `ns` and returns what nft printed (e.g. for `list` commands).
    pub fn run(ns: &Netns, commands: &str) -> Result<String> {
        let key = ns_key(ns);
        ns.run(|| run_here(commands, key, Nft::backend()))?
    }

    /// Tables in `ns`, as (family, name).
    pub fn list_tables(ns: &Netns) -> Result<Vec<(String, String)>> {
        let out = Nft::run(ns, "list tables")?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                match (w.next(), w.next(), w.next()) {
                    (Some("table"), Some(f), Some(n)) => Some((f.to_string(), n.to_string())),
                    _ => None,
                }
            })
            .collect())
    }

    /// One table as nft prints it, or None if it does not exist (for debugging and tests).
    pub fn list_table(ns: &Netns, family: &str, name: &str) -> Result<Option<String>> {
        check_table_ref(family, name)?;
        match Nft::run(ns, &format!("list table {family} {name}")) {
            Ok(text) => Ok(Some(text)),
            Err(e) => {
                // Only "no such table" becomes None; anything else is an error.
                let exists = Nft::list_tables(ns)?
                    .iter()
                    .any(|(f, n)| f == family && n == name);
                if exists { Err(e) } else { Ok(None) }
            }
        }
    }
}

/// Same as [`Nft::apply`].
pub fn apply(ns: &Netns, ruleset: &str) -> Result<()> {
    Nft::apply(ns, ruleset)
}

/// Same as [`Nft::list_tables`].
pub fn list_tables(ns: &Netns) -> Result<Vec<(String, String)>> {
    Nft::list_tables(ns)
}

/// Same as [`Nft::list_table`].
pub fn list_table(ns: &Netns, family: &str, name: &str) -> Result<Option<String>> {
    Nft::list_table(ns, family, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_refs() {
        assert!(check_table_ref("inet", "sdnet").is_ok());
        assert!(check_table_ref("ip", "snt-1.2_x/y").is_ok());
        assert!(check_table_ref("ipx", "a").is_err());
        assert!(check_table_ref("ip", "a; flush ruleset").is_err());
        assert!(check_table_ref("ip", "").is_err());
        assert!(check_table_ref("ip", "-a").is_err());
    }

    /// What `ctx_socket` checks to recognize a context's socket.
    #[test]
    fn netfilter_socket_options() {
        let nf = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .unwrap();
        assert_eq!(getsockopt(&nf, SoDomain), Ok(libc::AF_NETLINK));
        assert_eq!(getsockopt(&nf, SoProtocol), Ok(libc::NETLINK_NETFILTER));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(getsockopt(&udp, SoDomain), Ok(libc::AF_INET));
        assert_eq!(getsockopt(&udp, SoProtocol), Ok(libc::IPPROTO_UDP));
    }

    #[test]
    fn high_fds() {
        let fd = std::fs::File::open("/dev/null").unwrap();
        let moved = move_fd_high(fd.into());
        assert!(moved.as_raw_fd() >= FD_SETSIZE);
    }
}
