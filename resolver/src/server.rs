//! Serving DNS on sockets the caller bound (the daemon binds them inside each sandbox).
//!
//! UDP is the hot path: one task per socket drains it with `recvmmsg`, answers local names in
//! place and sends the batch back with one `sendmmsg`; only forwards become tasks of their own.
//! The batch buffers are per thread, not per socket, so an idle listener costs a few hundred
//! bytes. TCP (`tcp.rs`): one task per connection, several queries per connection (answered
//! out of order when forwards are slow), an idle timeout and a per-listener connection cap at
//! which the longest-idle connection makes room for a new one.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::engine::{self, Outcome};
use crate::forward::{DefaultUpstreams, ForwardConfig, Forwarder};
use crate::model::Policy;
use crate::stats::{InFlight, Source};
use crate::table::{Snapshot, Tables, View, ViewIdx};
use crate::wire::{self, RCODE_NXDOMAIN, RCODE_REFUSED, Reject, Response, parse_query};

mod tcp;

#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// Open connections per listener; past it, the longest-idle connection is closed to make
    /// room (a new one is closed at once only if every connection has a query in flight).
    pub max_connections: usize,
    /// A connection with no query for this long (and none in flight) is closed.
    pub idle_timeout: Duration,
    /// Queries in flight per connection before we stop reading from it.
    pub max_inflight: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            max_connections: 64,
            idle_timeout: Duration::from_secs(10),
            max_inflight: 32,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ResolverConfig {
    pub forward: ForwardConfig,
    pub tcp: TcpConfig,
    /// Whose answer semantics the tables and engine follow.
    pub policy: Policy,
}

/// Which sandbox's view answers queries arriving on a listener.
#[derive(Clone, Debug)]
pub enum ViewSelector {
    /// The sandbox the socket lives in (the daemon: one listener per sandbox). The index can
    /// be re-pointed while serving (`dns serve --as` after a reload).
    Sandbox(Arc<AtomicU32>),
    /// The sandbox owning the source address; others get the anonymous view.
    BySource,
    /// The sandbox owning the source address; others get the view of the network (lower-case
    /// name) the listener serves (aardvark-dns: one listener per network gateway).
    BySourceOrNetwork(Arc<str>),
}

impl ViewSelector {
    pub fn sandbox(idx: ViewIdx) -> Self {
        ViewSelector::Sandbox(Arc::new(AtomicU32::new(idx)))
    }

    fn select<'s>(&self, snap: &'s Snapshot, src: IpAddr) -> Option<&'s Arc<View>> {
        match self {
            ViewSelector::Sandbox(i) => snap.view(i.load(Ordering::Relaxed)),
            ViewSelector::BySource => Some(snap.view_by_source(src)),
            ViewSelector::BySourceOrNetwork(net) => snap
                .sandbox_by_source(src)
                .or_else(|| snap.network_view(net)),
        }
    }
}

/// Applies changes its owner knows are pending to the tables; true if it changed them. See
/// [`Resolver::set_freshen`].
pub type Freshen = Box<dyn Fn() -> bool + Send + Sync>;

/// The resolver: tables, forwarder and serving knobs, shared by every listener.
pub struct Resolver {
    pub tables: Tables,
    pub forwarder: Forwarder,
    tcp: TcpConfig,
    log_queries: AtomicBool,
    rotation: AtomicU32,
    freshen: OnceLock<Freshen>,
}

/// What the no-I/O part of the request path decided.
pub enum Handled {
    /// The reply is in the output buffer.
    Reply,
    /// Needs upstream servers.
    Forward(Arc<View>),
    /// Deserves no reply (runt, or a response).
    Silent,
}

impl Resolver {
    pub fn new(cfg: ResolverConfig, defaults: DefaultUpstreams) -> Arc<Self> {
        Arc::new(Resolver {
            tables: Tables::with_policy(cfg.policy),
            forwarder: Forwarder::new(cfg.forward, defaults),
            tcp: cfg.tcp,
            log_queries: AtomicBool::new(false),
            rotation: AtomicU32::new(0),
            freshen: OnceLock::new(),
        })
    }

    /// Sets the hook asked before a miss is answered (once; later calls are ignored). A query
    /// that would get NXDOMAIN or go upstream — a name, or a client, the tables may not know
    /// yet — first lets the owner apply what is pending, and is answered again from the new
    /// tables if it did. aardvark mode: netavark writes a container's file, signals and
    /// returns without waiting; the container's first query must already see its name.
    /// Without a hook, misses cost nothing extra. (A query answered twice is counted twice.)
    pub fn set_freshen(&self, f: Freshen) {
        let _ = self.freshen.set(f);
    }

    /// Runs the hook after a miss answered from tables of generation `seen`; true if the
    /// tables are newer now (the hook changed them, or a reload it waited for did).
    fn freshen(&self, seen: u64) -> bool {
        let changed = self.freshen.get().is_some_and(|f| f());
        changed || self.tables.snapshot().generation != seen
    }

    /// Snapshot, view and `handle` for one query; with a freshen hook, a miss is answered
    /// again after the hook changed the tables.
    fn handle_fresh(
        &self,
        sel: &ViewSelector,
        src: IpAddr,
        msg: &[u8],
        udp: bool,
        out: &mut Vec<u8>,
    ) -> Handled {
        let run = |out: &mut Vec<u8>| {
            let snap = self.tables.snapshot();
            let view = sel.select(&snap, src);
            (self.handle(&snap, view, msg, udp, out), snap.generation)
        };
        let (handled, seen) = run(out);
        if self.freshen.get().is_some() && missed(&handled, out) && self.freshen(seen) {
            return run(out).0;
        }
        handled
    }

    /// Logs every answered query at info level (target `sdnet::query`).
    pub fn set_log_queries(&self, on: bool) {
        self.log_queries.store(on, Ordering::Relaxed);
    }

    fn log(&self, view: &View, q: &wire::Query<'_>, out: &[u8], from: &'static str) {
        if self.log_queries.load(Ordering::Relaxed) {
            log_answer(view, q.key.as_str(), q.qtype, out, from);
        }
    }

    /// Answers one message as far as possible without I/O: what listeners run for every
    /// packet (and what the fuzz targets feed). `udp` selects the size limit.
    pub fn handle(
        &self,
        snap: &Snapshot,
        view: Option<&Arc<View>>,
        msg: &[u8],
        udp: bool,
        out: &mut Vec<u8>,
    ) -> Handled {
        let q = match parse_query(msg) {
            Ok(q) => q,
            Err(Reject::Drop) => return Handled::Silent,
            Err(Reject::Rcode(rcode)) => {
                return match wire::error_reply(msg, rcode, out) {
                    Some(_) => Handled::Reply,
                    None => Handled::Silent,
                };
            }
        };
        let limit = if udp {
            q.udp_limit()
        } else {
            u16::MAX as usize
        };
        let Some(view) = view else {
            // The socket's sandbox is gone (being removed): refuse rather than guess.
            Response::new(out, &q, RCODE_REFUSED, 0, limit).finish();
            return Handled::Reply;
        };
        let rot = self.rotation.fetch_add(1, Ordering::Relaxed);
        let stats = &self.forwarder.stats;
        match engine::answer(snap, view, &q, limit, rot, out) {
            Outcome::Reply => {
                stats.answered(q.qtype, out, Source::Local);
                self.log(view, &q, out, "local");
                Handled::Reply
            }
            Outcome::Forward => {
                if self.forwarder.cached(view, &q, limit, out) {
                    stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                    stats.answered(q.qtype, out, Source::Cache);
                    self.log(view, &q, out, "cache");
                    Handled::Reply
                } else {
                    if view.can_forward() {
                        stats.cache_misses.fetch_add(1, Ordering::Relaxed);
                    }
                    Handled::Forward(view.clone())
                }
            }
        }
    }

    /// Answers one query packet completely (forwarding included); for TCP and tools such as
    /// `sdctl dns query`. None if the packet deserves no reply.
    pub async fn resolve_packet(
        &self,
        view: Option<&Arc<View>>,
        msg: &[u8],
        udp: bool,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        let handled = {
            let snap = self.tables.snapshot();
            self.handle(&snap, view, msg, udp, &mut out)
        };
        match handled {
            Handled::Reply => Some(out),
            Handled::Silent => None,
            Handled::Forward(view) => self.forward_logged(&view, msg, !udp).await,
        }
    }

    async fn forward_logged(&self, view: &View, msg: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let stats = &self.forwarder.stats;
        let started = std::time::Instant::now();
        let resp = {
            let _waiting = InFlight::new(&stats.inflight);
            self.forwarder.forward(view, msg, tcp).await?
        };
        stats.forwarded_in(started.elapsed());
        if let Ok(q) = parse_query(msg) {
            stats.answered(q.qtype, &resp, Source::Upstream);
            if self.log_queries.load(Ordering::Relaxed) {
                log_answer(view, q.key.as_str(), q.qtype, &resp, "upstream");
            }
        }
        Some(resp)
    }

    /// Serves a UDP socket until it fails for good or the task is aborted.
    pub async fn serve_udp(self: Arc<Self>, sock: UdpSocket, sel: ViewSelector) {
        let sock = Arc::new(sock);
        let fd = sock.as_raw_fd();
        loop {
            if let Err(e) = sock.readable().await {
                warn!(error = %e, "UDP listener failed");
                return;
            }
            let mut forwards = Vec::new();
            let mut unsent = Vec::new();
            let r = BATCH.with_borrow_mut(|b| {
                let n = sock.try_io(Interest::READABLE, || b.recv(fd))?;
                let watch = self.freshen.get().is_some();
                let (mut replies, missed, seen) =
                    self.answer_batch(b, n, &sel, &mut forwards, watch);
                if missed && self.freshen(seen) {
                    // The received datagrams are still in the buffers: answer them again.
                    forwards.clear();
                    replies = self.answer_batch(b, n, &sel, &mut forwards, false).0;
                }
                b.send(fd, replies, &mut unsent);
                Ok::<_, io::Error>(())
            });
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Never spin on a persistent error.
                    warn!(error = %e, "UDP receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            for (to, bytes) in unsent {
                let _ = sock.send_to(&bytes, to).await;
            }
            for (view, packet, src) in forwards {
                let me = self.clone();
                let sock = sock.clone();
                tokio::spawn(async move {
                    if let Some(resp) = me.forward_logged(&view, &packet, false).await
                        && let Err(e) = sock.send_to(&resp, src).await
                    {
                        debug!(error = %e, %src, "reply not sent");
                    }
                });
            }
        }
    }
}

impl Resolver {
    /// Answers the `n` received datagrams of a batch from one snapshot: replies into the
    /// output slots, forwards onto `forwards`. Returns the number of replies and (with
    /// `watch`) whether any query missed, and the tables' generation used.
    fn answer_batch(
        &self,
        b: &mut Batch,
        n: usize,
        sel: &ViewSelector,
        forwards: &mut Vec<(Arc<View>, Vec<u8>, SocketAddr)>,
        watch: bool,
    ) -> (usize, bool, u64) {
        let snap = self.tables.snapshot();
        let mut replies = 0;
        let mut any_miss = false;
        // A batch mostly comes from one client: look its view up once (with 100k
        // sandboxes, each lookup in the view maps is a few cache misses).
        let mut last: Option<(IpAddr, Option<&Arc<View>>)> = None;
        for i in 0..n {
            let Some((src, len)) = b.received(i) else {
                continue;
            };
            let view = match last {
                Some((ip, view)) if ip == src.ip() => view,
                _ => {
                    let view = sel.select(&snap, src.ip());
                    last = Some((src.ip(), view));
                    view
                }
            };
            let (msg, out) = b.slot(i, replies);
            let msg = &msg[..len];
            let handled = self.handle(&snap, view, msg, true, out);
            any_miss |= watch && missed(&handled, out);
            match handled {
                Handled::Reply => {
                    b.reply_from[replies] = i;
                    replies += 1;
                }
                Handled::Forward(view) => forwards.push((view, msg.to_vec(), src)),
                Handled::Silent => {}
            }
        }
        (replies, any_miss, snap.generation)
    }
}

/// A query the tables could not answer: going upstream, or NXDOMAIN.
fn missed(handled: &Handled, out: &[u8]) -> bool {
    match handled {
        Handled::Forward(_) => true,
        Handled::Reply => out.get(3).is_some_and(|b| b & 0xF == RCODE_NXDOMAIN),
        Handled::Silent => false,
    }
}

fn log_answer(view: &View, name: &str, qtype: u16, out: &[u8], from: &'static str) {
    let rcode = out.get(3).map(|b| b & 0xF).unwrap_or(0);
    let answers = out
        .get(6..8)
        .map(|a| u16::from_be_bytes([a[0], a[1]]))
        .unwrap_or(0);
    info!(target: "sdnet::query", sandbox = %view.sandbox, name, qtype, rcode, answers, from, "query");
}

const BATCH_LEN: usize = 32;
const RX_BUF: usize = 4096;

/// Buffers for one `recvmmsg`/`sendmmsg` round; one per thread.
struct Batch {
    rx: Box<[[u8; RX_BUF]; BATCH_LEN]>,
    out: Vec<Vec<u8>>,
    addrs: [libc::sockaddr_storage; BATCH_LEN],
    iov: [libc::iovec; BATCH_LEN],
    hdrs: [libc::mmsghdr; BATCH_LEN],
    /// For each reply slot, the received message it answers.
    reply_from: [usize; BATCH_LEN],
    /// Sending: the replies (slots) in group order, and per group its first index into
    /// `order` and its size; one `sendmmsg` message per group.
    order: [usize; BATCH_LEN],
    groups: [(usize, usize); BATCH_LEN],
    /// Sending: the destination address length of each reply slot.
    namelen: [libc::socklen_t; BATCH_LEN],
    /// `UDP_SEGMENT` control messages, one per group.
    ctrl: [SegmentCmsg; BATCH_LEN],
}

/// Replies to one destination of one size go out as a single UDP GSO send (`UDP_SEGMENT`):
/// the kernel runs the output path (route, netfilter, loopback or driver) once per group
/// instead of once per datagram and splits it at the end. A busy client socket (a stub with
/// many queries in flight, a load generator) gets a batch answered for a fraction of the
/// per-datagram kernel cost. Off for good once the kernel says it cannot segment.
static GSO_ON: AtomicBool = AtomicBool::new(true);
/// Replies larger than this go alone (a segment must fit the path MTU).
const GSO_MAX_SEGMENT: usize = 1200;
/// Bytes per GSO send (the kernel's limit is 64 KiB of UDP payload).
const GSO_MAX_BYTES: usize = 60_000;

/// Room for one `cmsghdr` carrying a u16, aligned like `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct SegmentCmsg([u8; 32]);

thread_local! {
    static BATCH: RefCell<Batch> = RefCell::new(Batch::new());
}

fn zeroed<T>() -> T {
    // SAFETY: only used for plain C structs (sockaddr_storage, iovec, mmsghdr) for which all
    // zero bytes is a valid value.
    unsafe { MaybeUninit::<T>::zeroed().assume_init() }
}

impl Batch {
    fn new() -> Self {
        Batch {
            rx: Box::new([[0; RX_BUF]; BATCH_LEN]),
            out: (0..BATCH_LEN).map(|_| Vec::with_capacity(512)).collect(),
            addrs: [zeroed(); BATCH_LEN],
            iov: [zeroed(); BATCH_LEN],
            hdrs: [zeroed(); BATCH_LEN],
            reply_from: [0; BATCH_LEN],
            order: [0; BATCH_LEN],
            groups: [(0, 0); BATCH_LEN],
            namelen: [0; BATCH_LEN],
            ctrl: [SegmentCmsg([0; 32]); BATCH_LEN],
        }
    }

    fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH_LEN {
            self.iov[i] = libc::iovec {
                iov_base: self.rx[i].as_mut_ptr().cast(),
                iov_len: RX_BUF,
            };
            let mut h: libc::mmsghdr = zeroed();
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs[i] = h;
        }
        // SAFETY: every header points at buffers owned by self that outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH_LEN as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Source and length of received message `i`; None for truncated datagrams.
    fn received(&self, i: usize) -> Option<(SocketAddr, usize)> {
        let h = &self.hdrs[i];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        Some((sockaddr(&self.addrs[i])?, h.msg_len as usize))
    }

    fn slot(&mut self, rx: usize, out: usize) -> (&[u8], &mut Vec<u8>) {
        (&self.rx[rx][..], &mut self.out[out])
    }

    /// Sends `n` replies; what the socket would not take now goes to `unsent`.
    fn send(&mut self, fd: RawFd, n: usize, unsent: &mut Vec<(SocketAddr, Vec<u8>)>) {
        if n == 0 {
            return;
        }
        // The received headers still hold each source's address length; keep them before
        // `hdrs` is rewritten to describe the replies.
        for j in 0..n {
            self.namelen[j] = self.hdrs[self.reply_from[j]].msg_hdr.msg_namelen;
        }
        let ngroups = self.plan(n, GSO_ON.load(Ordering::Relaxed));
        for g in 0..ngroups {
            self.describe(g);
        }
        let mut done = 0;
        while done < ngroups {
            // SAFETY: headers point at buffers owned by self that outlive the call.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[done..].as_mut_ptr(),
                    (ngroups - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                done += r as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if e.kind() == io::ErrorKind::WouldBlock {
                for g in done..ngroups {
                    self.push_unsent(g, unsent);
                }
                break;
            }
            let (start, len) = self.groups[done];
            if len > 1 {
                // Send this group one by one. EIO/EINVAL/EOPNOTSUPP mean the kernel or the
                // route cannot segment: never group again. Other errors (a firewall's EPERM
                // for one destination) say nothing about GSO.
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)
                ) {
                    debug!(error = %e, "UDP GSO refused; sending datagrams one by one");
                    GSO_ON.store(false, Ordering::Relaxed);
                }
                for k in start..start + len {
                    self.send_one(fd, self.order[k], unsent);
                }
            } else {
                // One bad destination must not cost the rest of the batch: skip it.
                debug!(error = %e, "reply not sent");
            }
            done += 1;
        }
    }

    /// Groups the `n` replies by destination and size (first-come order kept); returns the
    /// number of groups. Without `gso`, every reply is its own group.
    fn plan(&mut self, n: usize, gso: bool) -> usize {
        let mut taken = [false; BATCH_LEN];
        let (mut k, mut ngroups) = (0, 0);
        for j in 0..n {
            if taken[j] {
                continue;
            }
            taken[j] = true;
            let start = k;
            self.order[k] = j;
            k += 1;
            let size = self.out[j].len();
            if gso && size <= GSO_MAX_SEGMENT {
                let mut bytes = size;
                for (m, t) in taken.iter_mut().enumerate().take(n).skip(j + 1) {
                    if !*t
                        && self.out[m].len() == size
                        && bytes + size <= GSO_MAX_BYTES
                        && self.same_destination(j, m)
                    {
                        *t = true;
                        self.order[k] = m;
                        k += 1;
                        bytes += size;
                    }
                }
            }
            self.groups[ngroups] = (start, k - start);
            ngroups += 1;
        }
        ngroups
    }

    fn same_destination(&self, a: usize, b: usize) -> bool {
        let (la, lb) = (self.namelen[a], self.namelen[b]);
        if la != lb {
            return false;
        }
        let len = (la as usize).min(size_of::<libc::sockaddr_storage>());
        // SAFETY: both point at sockaddr_storage values owned by self, `len` bytes long at most.
        let bytes = |i: usize| unsafe {
            std::slice::from_raw_parts(
                (&self.addrs[self.reply_from[i]] as *const libc::sockaddr_storage).cast::<u8>(),
                len,
            )
        };
        bytes(a) == bytes(b)
    }

    /// Writes the `sendmmsg` header of group `g` (and its iovecs and control message).
    fn describe(&mut self, g: usize) {
        let (start, len) = self.groups[g];
        for k in start..start + len {
            let j = self.order[k];
            self.iov[k] = libc::iovec {
                iov_base: self.out[j].as_mut_ptr().cast(),
                iov_len: self.out[j].len(),
            };
        }
        let first = self.order[start];
        let mut h: libc::mmsghdr = zeroed();
        h.msg_hdr.msg_name =
            (&mut self.addrs[self.reply_from[first]] as *mut libc::sockaddr_storage).cast();
        h.msg_hdr.msg_namelen = self.namelen[first];
        h.msg_hdr.msg_iov = &mut self.iov[start];
        h.msg_hdr.msg_iovlen = len as _;
        if len > 1 {
            let segment = self.out[first].len() as u16;
            let ctrl = &mut self.ctrl[g];
            // SAFETY: CMSG_SPACE/CMSG_LEN of 2 bytes fit the 32-byte, 8-aligned buffer; the
            // header and data pointers come from CMSG_FIRSTHDR/CMSG_DATA on that buffer.
            unsafe {
                h.msg_hdr.msg_control = ctrl.0.as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
                let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), segment);
            }
        }
        self.hdrs[g] = h;
    }

    fn push_unsent(&self, g: usize, unsent: &mut Vec<(SocketAddr, Vec<u8>)>) {
        let (start, len) = self.groups[g];
        for k in start..start + len {
            let j = self.order[k];
            if let Some(to) = sockaddr(&self.addrs[self.reply_from[j]]) {
                unsent.push((to, self.out[j].clone()));
            }
        }
    }

    fn send_one(&self, fd: RawFd, j: usize, unsent: &mut Vec<(SocketAddr, Vec<u8>)>) {
        let buf = &self.out[j];
        // SAFETY: the buffer and address are owned by self and outlive the call.
        let r = unsafe {
            libc::sendto(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&self.addrs[self.reply_from[j]] as *const libc::sockaddr_storage).cast(),
                self.namelen[j],
            )
        };
        if r < 0
            && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
            && let Some(to) = sockaddr(&self.addrs[self.reply_from[j]])
        {
            unsent.push((to, buf.clone()));
        }
    }
}

fn sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for AF_INET.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for AF_INET6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket as StdUdp;

    fn fill_v4(ss: &mut libc::sockaddr_storage, a: SocketAddrV4) -> libc::socklen_t {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: a sockaddr_in fits in a sockaddr_storage.
        unsafe {
            std::ptr::write(
                (ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>(),
                sin,
            )
        };
        size_of::<libc::sockaddr_in>() as libc::socklen_t
    }

    /// Replies as `send` sees them after a `recv` of `n` datagrams from `client`.
    fn batch_for(client: SocketAddrV4, payloads: &[Vec<u8>]) -> Batch {
        let mut b = Batch::new();
        for (i, p) in payloads.iter().enumerate() {
            let len = fill_v4(&mut b.addrs[i], client);
            b.hdrs[i].msg_hdr.msg_namelen = len;
            b.out[i] = p.clone();
            b.reply_from[i] = i;
        }
        b
    }

    fn receive_all(sock: &StdUdp, n: usize) -> Vec<Vec<u8>> {
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 2048];
        (0..n)
            .map(|_| {
                let (len, _) = sock.recv_from(&mut buf).expect("a reply");
                buf[..len].to_vec()
            })
            .collect()
    }

    fn local(sock: &StdUdp) -> SocketAddrV4 {
        match sock.local_addr().unwrap() {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!(),
        }
    }

    // One test, in order: GSO_ON is process-wide and the second half turns it off.
    #[test]
    fn replies_are_grouped_and_fall_back_when_gso_is_refused() {
        let server = StdUdp::bind("127.0.0.1:0").unwrap();
        let client = StdUdp::bind("127.0.0.1:0").unwrap();
        let other = StdUdp::bind("127.0.0.1:0").unwrap();
        let payloads: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 40 + (i as usize % 2)]).collect();

        // Two sizes to one client, one reply elsewhere: three groups, all delivered whole.
        let mut b = batch_for(local(&client), &payloads);
        let len = fill_v4(&mut b.addrs[5], local(&other));
        b.hdrs[5].msg_hdr.msg_namelen = len;
        let mut unsent = Vec::new();
        b.send(server.as_raw_fd(), 6, &mut unsent);
        assert!(unsent.is_empty());
        assert_eq!(b.plan(6, true), 3);
        let mut got = receive_all(&client, 5);
        got.sort();
        assert_eq!(got, payloads[..5].to_vec());
        assert_eq!(receive_all(&other, 1), [payloads[5].clone()]);
        assert!(GSO_ON.load(Ordering::Relaxed));

        // SO_NO_CHECK makes the kernel refuse UDP GSO (EINVAL): the group goes out datagram
        // by datagram and GSO stays off.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a pointer to a live c_int of the given size.
        let r = unsafe {
            libc::setsockopt(
                server.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        let same: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 40]).collect();
        let mut b = batch_for(local(&client), &same);
        b.send(server.as_raw_fd(), 4, &mut unsent);
        assert!(unsent.is_empty());
        let mut got = receive_all(&client, 4);
        got.sort();
        assert_eq!(got, same);
        assert!(!GSO_ON.load(Ordering::Relaxed), "GSO still on after EINVAL");
    }
}
