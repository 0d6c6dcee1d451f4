//! Network namespaces as files.
//!
//! A namespace is created by `unshare(CLONE_NEWNET)` on a dedicated thread and kept alive by a
//! bind mount of that thread's `/proc/thread-self/ns/net` on a file (no fork: our process is
//! multi-threaded, which is why `rtnetlink::NetworkNamespace` is not used). Code runs inside a
//! namespace on a fresh thread that `setns`es into it and then exits: `setns` changes only the
//! calling thread, and a thread left in another namespace must never go back to a pool.
//! Because such threads die, they never need to return "home".

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, socket,
};
use nix::sys::stat::Mode;
use nix::sys::statfs::{NSFS_MAGIC, statfs};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use tracing::debug;

use crate::{Error, Result};

/// nsfs ioctls, declared with nix's ioctl macro (in a private module: the macro makes the
/// functions `pub`).
mod nsfs {
    // `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
    nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);
}
/// How many stacked mounts `delete` removes at most (two racing `create`s can stack two).
const MAX_UMOUNTS: usize = 8;

/// An open network namespace: a descriptor (which keeps it alive) and the path it came from.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    path: PathBuf,
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid(format!("path {} contains NUL", p.display())))
}

/// True if `path` is a network namespace file (nsfs, typically a bind mount of one).
pub fn is_netns(path: &Path) -> bool {
    let Ok(c) = cpath(path) else {
        return false;
    };
    // statfs first: opening an arbitrary file (a FIFO, say) could block.
    if !statfs(c.as_c_str()).is_ok_and(|st| st.filesystem_type() == NSFS_MAGIC) {
        return false;
    }
    open_ns_fd(&c).is_ok_and(|fd| is_net_fd(fd.as_fd()))
}

fn open_ns_fd(c: &CStr) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(
        c,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// Whether a namespace descriptor is a *network* namespace (nsfs also holds mount, pid… ones).
fn is_net_fd(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: NS_GET_NSTYPE takes no argument and only returns a value; `fd` is open for the
    // call (borrowed). nix has no safe wrapper for nsfs ioctls.
    let t = unsafe { nsfs::ns_get_nstype(fd.as_raw_fd()) };
    t == Ok(CloneFlags::CLONE_NEWNET.bits())
}

/// Network namespace files in `dir` (sorted), for garbage collection. A missing directory is
/// empty.
pub fn list_netns(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()))(e)),
    };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_netns(p))
        .collect();
    out.sort();
    Ok(out)
}

/// Brings `lo` up in the calling thread's namespace. A fresh namespace has it down, and a
/// socket bound to 127.0.0.11 before lo is up sends its UDP replies from 127.0.0.1.
///
/// One `RTM_SETLINK` (IFF_UP in flags and change mask, the link named by `IFLA_IFNAME`) on a
/// netlink socket made on this thread, so in its namespace; the kernel's ACK says how it went.
/// (This runs on a plain thread: the async [`crate::link::Netlink`] needs a runtime.)
fn lo_up() -> io::Result<()> {
    let sock = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    let mut link = LinkMessage::default();
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    link.attributes.push(LinkAttribute::IfName("lo".into()));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(header, RouteNetlinkMessage::SetLink(link).into());
    req.finalize();
    let mut buf = [0u8; 4096];
    let len = req.buffer_len();
    req.serialize(&mut buf[..len]);
    nix::sys::socket::sendto(
        sock.as_raw_fd(),
        &buf[..len],
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let n = nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    let reply =
        NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..n]).map_err(io::Error::other)?;
    match reply.payload {
        NetlinkPayload::Error(e) if e.code.is_none() => Ok(()),
        NetlinkPayload::Error(e) => Err(e.to_io()),
        other => Err(io::Error::other(format!(
            "unexpected netlink reply {other:?}"
        ))),
    }
}

fn bind_mount(src: &Path, dst: &Path) -> Result<()> {
    let (s, d) = (cpath(src)?, cpath(dst)?);
    nix::mount::mount(
        Some(s.as_c_str()),
        d.as_c_str(),
        None::<&CStr>,
        MsFlags::MS_BIND,
        None::<&CStr>,
    )
    .map_err(Error::sys(format!(
        "bind-mounting {} on {}",
        src.display(),
        dst.display()
    )))
}

/// Creates the parent directory and an empty file to mount on (kept if it exists).
fn touch(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(Error::io(format!("creating {}", path.display())))?;
    Ok(())
}

/// Runs `f` on a new scoped thread and waits for it; a panic becomes an error.
fn on_thread<T: Send>(label: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(s, f)
            .map_err(Error::io("spawning a namespace thread"))?;
        h.join()
            .unwrap_or_else(|_| Err(Error::Panicked(label.display().to_string())))
    })
}

impl Netns {
    /// Creates a network namespace kept at `path` (parent directories created), with `lo` up.
    /// Idempotent: if `path` already is a network namespace, it is opened.
    ///
    /// Two concurrent calls for the same path may both mount; [`Netns::delete`] removes
    /// stacked mounts, and the one opened last wins. Callers serialize per path.
    pub fn create(path: &Path) -> Result<Netns> {
        if is_netns(path) {
            return Netns::open(path);
        }
        touch(path)?;
        let made = on_thread(path, || {
            // Only this dedicated thread moves; it exits right after.
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(Error::sys("unshare(CLONE_NEWNET)"))?;
            lo_up().map_err(Error::io("bringing lo up"))?;
            // thread-self, not self: only this thread is in the new namespace.
            bind_mount(Path::new("/proc/thread-self/ns/net"), path)
        });
        if let Err(e) = made {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        debug!(path = %path.display(), "created network namespace");
        Netns::open(path)
    }

    /// Keeps an existing namespace (e.g. `/proc/PID/ns/net`) alive at `at` by a bind mount.
    /// Idempotent: if `at` already is a network namespace, it is opened.
    pub fn bind(from: &Path, at: &Path) -> Result<Netns> {
        if is_netns(at) {
            return Netns::open(at);
        }
        // Validates `from` before anything is created.
        Netns::open(from)?;
        touch(at)?;
        if let Err(e) = bind_mount(from, at) {
            let _ = std::fs::remove_file(at);
            return Err(e);
        }
        Netns::open(at)
    }

    /// Opens the network namespace at `path` (a namespace file or `/proc/PID/ns/net`).
    pub fn open(path: &Path) -> Result<Netns> {
        let c = cpath(path)?;
        let fd =
            open_ns_fd(&c).map_err(Error::io(format!("opening namespace {}", path.display())))?;
        if !is_net_fd(fd.as_fd()) {
            return Err(Error::Invalid(format!(
                "{} is not a network namespace",
                path.display()
            )));
        }
        // Handles are long-lived and a daemon holds one per sandbox: above 1024, so they do
        // not use up the range libnftables needs (see `nft::move_fd_high`).
        Ok(Netns {
            fd: crate::nft::move_fd_high(fd),
            path: path.to_path_buf(),
        })
    }

    /// The calling thread's network namespace. Its `path()` is `/proc/thread-self/ns/net`,
    /// which names a different namespace from another thread: use the handle, not the path.
    pub fn current() -> Result<Netns> {
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Unmounts (lazily, so open handles stay valid) and removes a namespace file. The
    /// namespace dies with its last user: mounts, open handles, sockets created in it (a
    /// [`crate::nft`] context kept for it is freed here). Its links go with it (a veth whose
    /// peer lived there disappears from the other side too). A missing path is fine.
    pub fn delete(path: &Path) -> Result<()> {
        let c = cpath(path)?;
        // A libnftables context kept for this namespace would keep it alive.
        if is_netns(path)
            && let Ok(fd) = open_ns_fd(&c)
            && let Some(key) = crate::nft::ns_key(&fd)
        {
            crate::nft::forget_key(key);
        }
        for _ in 0..MAX_UMOUNTS {
            match nix::mount::umount2(c.as_c_str(), MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                // EINVAL: no (more) mount there. ENOENT: nothing there at all.
                Err(Errno::EINVAL | Errno::ENOENT) => break,
                Err(e) => return Err(Error::sys(format!("unmounting {}", path.display()))(e)),
            }
        }
        match std::fs::remove_file(path) {
            Ok(()) => {
                debug!(path = %path.display(), "deleted network namespace");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", path.display()))(e)),
        }
    }

    /// The path this handle was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another handle on the same namespace.
    pub fn try_clone(&self) -> Result<Netns> {
        Ok(Netns {
            fd: crate::nft::move_fd_high(
                self.fd
                    .try_clone()
                    .map_err(Error::io("duplicating a namespace handle"))?,
            ),
            path: self.path.clone(),
        })
    }

    /// Runs `f` on a new thread inside this namespace and returns its result. `f` may bind
    /// sockets, open per-namespace `/proc/sys` files, create netlink sockets: they stay in
    /// this namespace. The thread exits when `f` returns (it never rejoins a pool). Blocks the
    /// caller for the thread's lifetime.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        on_thread(&self.path, move || {
            // Only this dedicated, short-lived thread changes namespace.
            nix::sched::setns(&self.fd, CloneFlags::CLONE_NEWNET).map_err(|e| {
                Error::sys(format!("entering namespace {}", self.path.display()))(e)
            })?;
            Ok(f())
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
