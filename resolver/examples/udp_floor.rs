//! A zero-work UDP "DNS server": every query comes back as its own reply (QR set, RCODE
//! NOERROR, no answers), with no parsing and no lookup. Its CPU per query is what the kernel's
//! socket path alone costs, the floor under any real server; tests/bench/dns.sh measures it
//! next to sdctl, dnsmasq and unbound.
//!
//!   udp_floor ADDR:PORT [--mode sendto|mmsg|gso|uring]     (default: gso)
//!
//! - sendto: one recvfrom + one sendto per query, like unbound and dnsmasq;
//! - mmsg: recvmmsg (up to 32) + one sendmmsg per batch;
//! - gso: like mmsg, but replies of one size to one destination leave as one UDP GSO send,
//!   like `sdctl dns serve`;
//! - uring: io_uring instead of system calls per batch: one multishot recvmsg into provided
//!   buffers, one SENDMSG per reply, submitted together (single issuer, deferred task work).
//!   It answers whether io_uring would lower the floor (on our VM it does not).
//!
//! Single-threaded, blocking socket; SIGTERM keeps its default action.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::exit;

const USAGE: &str = "usage: udp_floor ADDR:PORT [--mode sendto|mmsg|gso|uring]";
const BATCH: usize = 32;
/// Receive buffer per message in the batched modes; longer datagrams are dropped.
const BUF: usize = 2048;
/// Larger replies are sent alone: a GSO segment must fit the path MTU.
const GSO_MAX_SEGMENT: usize = 1200;
/// Payload per GSO send (the kernel's limit is 64 KiB).
const GSO_MAX_BYTES: usize = 60_000;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Sendto,
    Mmsg,
    Gso,
    Uring,
}

fn main() {
    let (addr, mode) = match parse_args(std::env::args().skip(1)) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("udp_floor: {e}\n{USAGE}");
            exit(1);
        }
    };
    let sock = match UdpSocket::bind(addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("udp_floor: cannot bind {addr}: {e}");
            exit(1);
        }
    };
    eprintln!("udp_floor: {mode:?} mode on {addr}");
    let r = match mode {
        Mode::Sendto => serve_sendto(&sock),
        Mode::Mmsg => serve_batched(&sock, false),
        Mode::Gso => serve_batched(&sock, true),
        Mode::Uring => serve_uring(&sock),
    };
    if let Err(e) = r {
        eprintln!("udp_floor: receive failed: {e}");
        exit(1);
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(SocketAddr, Mode), String> {
    let addr = args.next().ok_or("missing ADDR:PORT")?;
    let addr: SocketAddr = addr.parse().map_err(|_| format!("bad address '{addr}'"))?;
    let mut mode = Mode::Gso;
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().as_deref()) {
            ("--mode", Some("sendto")) => mode = Mode::Sendto,
            ("--mode", Some("mmsg")) => mode = Mode::Mmsg,
            ("--mode", Some("gso")) => mode = Mode::Gso,
            ("--mode", Some("uring")) => mode = Mode::Uring,
            ("--mode", m) => return Err(format!("bad mode '{}'", m.unwrap_or(""))),
            _ => return Err(format!("unknown argument '{a}'")),
        }
    }
    Ok((addr, mode))
}

/// Turns a query into its reply in place; false if it does not look like a query.
fn answer(msg: &mut [u8]) -> bool {
    if msg.len() < 12 || msg[2] & 0x80 != 0 {
        return false;
    }
    msg[2] |= 0x80; // QR
    msg[3] &= 0xf0; // RCODE NOERROR
    true
}

/// Send errors never stop the server (one bad destination must not stop the others); the
/// first is shown, the rest would flood the log.
fn send_failed(e: io::Error, shown: &mut bool) {
    if !*shown {
        eprintln!("udp_floor: send failed: {e} (further send errors not shown)");
        *shown = true;
    }
}

fn serve_sendto(sock: &UdpSocket) -> io::Result<()> {
    // Big enough for any datagram, so none is echoed truncated.
    let mut buf = vec![0u8; 65536];
    let mut shown = false;
    loop {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if answer(&mut buf[..n])
            && let Err(e) = sock.send_to(&buf[..n], from)
        {
            send_failed(e, &mut shown);
        }
    }
}

/// A control message carrying UDP_SEGMENT's u16 segment size. On Linux `cmsghdr` is already
/// padded to the alignment of its data, so the u16 sits where CMSG_DATA points.
#[repr(C)]
#[derive(Clone, Copy)]
struct Segment {
    hdr: libc::cmsghdr,
    size: u16,
    _pad: [u8; 6],
}
// SAFETY (of the unsafe const call): CMSG_SPACE only does arithmetic.
const _: () = assert!(size_of::<Segment>() >= unsafe { libc::CMSG_SPACE(2) } as usize);

fn zeroed<T>() -> T {
    // SAFETY: only used for plain C structs (sockaddr_storage, iovec, mmsghdr, cmsghdr),
    // for which all-zero bytes are a valid value.
    unsafe { std::mem::MaybeUninit::<T>::zeroed().assume_init() }
}

fn serve_batched(sock: &UdpSocket, mut gso: bool) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let mut bufs = vec![[0u8; BUF]; BATCH];
    let mut addrs: [libc::sockaddr_storage; BATCH] = zeroed();
    let mut rx_iov: [libc::iovec; BATCH] = zeroed();
    let mut rx: [libc::mmsghdr; BATCH] = zeroed();
    // Sending: iovecs in group order, one header (and control message) per group.
    let mut tx_iov: [libc::iovec; BATCH] = zeroed();
    let mut tx: [libc::mmsghdr; BATCH] = zeroed();
    let mut ctrl: [Segment; BATCH] = zeroed();
    let mut groups = [(0usize, 0usize); BATCH];
    let mut shown = false;
    loop {
        for (i, buf) in bufs.iter_mut().enumerate() {
            rx_iov[i] = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: BUF,
            };
            let h = &mut rx[i].msg_hdr;
            h.msg_name = (&raw mut addrs[i]).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &raw mut rx_iov[i];
            h.msg_iovlen = 1;
        }
        // MSG_WAITFORONE: block for the first datagram only, then take what is queued.
        // SAFETY: the headers point at buffers that live for the whole function.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                rx.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // The queries to answer, by index into the batch.
        let mut replies = [0usize; BATCH];
        let mut m = 0;
        for (i, h) in rx.iter().enumerate().take(n as usize) {
            if h.msg_hdr.msg_flags & libc::MSG_TRUNC == 0
                && answer(&mut bufs[i][..h.msg_len as usize])
            {
                replies[m] = i;
                m += 1;
            }
        }

        // Group the replies (first-come order); without GSO each is a group of its own.
        let mut taken = [false; BATCH];
        let (mut k, mut ngroups) = (0, 0);
        for a in 0..m {
            if taken[a] {
                continue;
            }
            let first = replies[a];
            let len = rx[first].msg_len as usize;
            let start = k;
            tx_iov[k] = libc::iovec {
                iov_base: bufs[first].as_mut_ptr().cast(),
                iov_len: len,
            };
            k += 1;
            if gso && len <= GSO_MAX_SEGMENT {
                let mut bytes = len;
                for b in a + 1..m {
                    let j = replies[b];
                    if !taken[b]
                        && rx[j].msg_len as usize == len
                        && bytes + len <= GSO_MAX_BYTES
                        && same_source(&rx[first], &rx[j])
                    {
                        taken[b] = true;
                        tx_iov[k] = libc::iovec {
                            iov_base: bufs[j].as_mut_ptr().cast(),
                            iov_len: len,
                        };
                        k += 1;
                        bytes += len;
                    }
                }
            }
            let mut h: libc::mmsghdr = zeroed();
            h.msg_hdr.msg_name = rx[first].msg_hdr.msg_name;
            h.msg_hdr.msg_namelen = rx[first].msg_hdr.msg_namelen;
            h.msg_hdr.msg_iov = &raw mut tx_iov[start];
            h.msg_hdr.msg_iovlen = (k - start) as _;
            if k - start > 1 {
                let c = &mut ctrl[ngroups];
                // SAFETY: CMSG_LEN/CMSG_SPACE only do arithmetic.
                c.hdr.cmsg_len = unsafe { libc::CMSG_LEN(2) } as _;
                c.hdr.cmsg_level = libc::SOL_UDP;
                c.hdr.cmsg_type = libc::UDP_SEGMENT;
                c.size = len as u16;
                h.msg_hdr.msg_control = (c as *mut Segment).cast();
                h.msg_hdr.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
            }
            tx[ngroups] = h;
            groups[ngroups] = (start, k - start);
            ngroups += 1;
        }

        let mut done = 0;
        while done < ngroups {
            // SAFETY: the headers point at buffers that live for the whole function.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    tx[done..].as_mut_ptr(),
                    (ngroups - done) as libc::c_uint,
                    0,
                )
            };
            if r > 0 {
                done += r as usize;
                continue;
            }
            if r == 0 {
                break; // not possible with a non-empty vector; never loop on it
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let (start, len) = groups[done];
            // The kernel or route cannot segment: fall back for good, loudly, since this
            // run no longer measures GSO.
            if len > 1
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)
                )
            {
                eprintln!(
                    "udp_floor: UDP GSO refused ({e}); sending datagrams one by one from now on"
                );
                gso = false;
                let h = &tx[done].msg_hdr;
                for iov in &tx_iov[start..start + len] {
                    // SAFETY: buffer and address live for the whole function.
                    let r = unsafe {
                        libc::sendto(
                            fd,
                            iov.iov_base,
                            iov.iov_len,
                            0,
                            h.msg_name.cast(),
                            h.msg_namelen,
                        )
                    };
                    if r < 0 {
                        send_failed(io::Error::last_os_error(), &mut shown);
                    }
                }
            } else {
                send_failed(e, &mut shown);
            }
            done += 1; // skip the failed group: never retry a persistent error
        }
    }
}

/// Whether two received messages came from the same address.
fn same_source(a: &libc::mmsghdr, b: &libc::mmsghdr) -> bool {
    let (la, lb) = (a.msg_hdr.msg_namelen, b.msg_hdr.msg_namelen);
    let len = (la as usize).min(size_of::<libc::sockaddr_storage>());
    // SAFETY: both names point at sockaddr_storage values the kernel filled, `len` bytes at
    // most (it zeroes sockaddr_in's padding, so byte equality is address equality).
    la == lb
        && unsafe {
            std::slice::from_raw_parts(a.msg_hdr.msg_name.cast::<u8>(), len)
                == std::slice::from_raw_parts(b.msg_hdr.msg_name.cast::<u8>(), len)
        }
}

/// io_uring: buffers the kernel picks from (group `BGID`), a multishot receive that stays
/// armed, and a ring of send slots (more than the replies that can be in flight here).
fn serve_uring(sock: &UdpSocket) -> io::Result<()> {
    use io_uring::{IoUring, cqueue, opcode, squeue, types};
    const NBUF: u16 = 1024;
    const NSEND: usize = 1024;
    const BGID: u16 = 1;
    const RECV: u64 = 1;
    const OTHER: u64 = 2;

    let fd = types::Fd(sock.as_raw_fd());
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(8192)
        .build(2048)?;
    let mut bufs = vec![0u8; NBUF as usize * BUF];
    let mut rx_msg: libc::msghdr = zeroed();
    rx_msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let mut tx_buf = vec![[0u8; BUF]; NSEND];
    let mut tx_name: Vec<libc::sockaddr_storage> = vec![zeroed(); NSEND];
    let mut tx_iov: Vec<libc::iovec> = vec![zeroed(); NSEND];
    let mut tx_msg: Vec<libc::msghdr> = vec![zeroed(); NSEND];
    let mut next_tx = 0usize;
    let mut shown = false;

    // SAFETY (every push below): the buffers and headers an entry points at are owned by this
    // function and outlive the ring; send slot k is reused only NSEND replies later.
    let provide_all = opcode::ProvideBuffers::new(bufs.as_mut_ptr(), BUF as i32, NBUF, BGID, 0)
        .build()
        .user_data(OTHER);
    let arm = |msg: *const libc::msghdr| {
        opcode::RecvMsgMulti::new(fd, msg, BGID)
            .build()
            .user_data(RECV)
    };
    unsafe {
        ring.submission()
            .push(&provide_all)
            .map_err(|_| io::Error::other("submission queue full"))?;
        ring.submission()
            .push(&arm(&rx_msg))
            .map_err(|_| io::Error::other("submission queue full"))?;
    }
    let mut pending: Vec<squeue::Entry> = Vec::new();
    let mut done: Vec<(u64, i32, u32)> = Vec::new();
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        done.clear();
        done.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for &(data, res, flags) in &done {
            if data != RECV {
                if res < 0 && data == OTHER {
                    send_failed(io::Error::from_raw_os_error(-res), &mut shown);
                }
                continue;
            }
            if !cqueue::more(flags) {
                pending.push(arm(&rx_msg));
            }
            let Some(bid) = cqueue::buffer_select(flags) else {
                if res < 0 && res != -libc::ENOBUFS {
                    return Err(io::Error::from_raw_os_error(-res));
                }
                continue;
            };
            let start = bid as usize * BUF;
            let got = &bufs[start..start + res.max(0) as usize];
            if let Ok(out) = types::RecvMsgOut::parse(got, &rx_msg) {
                let payload = out.payload_data();
                let name = out.name_data();
                if !out.is_payload_truncated() && payload.len() <= BUF && !name.is_empty() {
                    let k = next_tx % NSEND;
                    next_tx += 1;
                    tx_buf[k][..payload.len()].copy_from_slice(payload);
                    if answer(&mut tx_buf[k][..payload.len()]) {
                        let n = name.len().min(size_of::<libc::sockaddr_storage>());
                        // SAFETY: copies n bytes into a sockaddr_storage, which has room.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                name.as_ptr(),
                                (&mut tx_name[k] as *mut libc::sockaddr_storage).cast::<u8>(),
                                n,
                            );
                        }
                        tx_iov[k] = libc::iovec {
                            iov_base: tx_buf[k].as_mut_ptr().cast(),
                            iov_len: payload.len(),
                        };
                        let mut m: libc::msghdr = zeroed();
                        m.msg_name = (&mut tx_name[k] as *mut libc::sockaddr_storage).cast();
                        m.msg_namelen = n as libc::socklen_t;
                        m.msg_iov = &mut tx_iov[k];
                        m.msg_iovlen = 1;
                        tx_msg[k] = m;
                        pending.push(
                            opcode::SendMsg::new(fd, &tx_msg[k])
                                .build()
                                .user_data(OTHER),
                        );
                    }
                }
            }
            // The buffer goes back to the kernel at once: the reply was copied out.
            pending.push(
                opcode::ProvideBuffers::new(bufs[start..].as_mut_ptr(), BUF as i32, 1, BGID, bid)
                    .build()
                    .user_data(OTHER + 1),
            );
        }
        for e in pending.drain(..) {
            // SAFETY: see above.
            while unsafe { ring.submission().push(&e) }.is_err() {
                ring.submit()?;
            }
        }
    }
}
