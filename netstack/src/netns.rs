//! Network namespaces as files.
//!
//! A namespace is created by `unshare(CLONE_NEWNET)` on a dedicated thread and kept alive by a
//! bind mount of that thread's `/proc/thread-self/ns/net` on a file (no fork: our process is
//! multi-threaded, which is why `rtnetlink::NetworkNamespace` is not used). Code runs inside a
//! namespace on a fresh thread that `setns`es into it and then exits: `setns` changes only the
//! calling thread, and a thread left in another namespace must never go back to a pool.
//! Because such threads die, they never need to return "home".

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use tracing::debug;

use crate::{Error, Result};

const NSFS_MAGIC: libc::c_long = 0x6e73_6673;
/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
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
    // SAFETY: all-zero is a valid statfs; statfs writes into it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct we own.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 || st.f_type as libc::c_long != NSFS_MAGIC
    {
        return false;
    }
    open_ns_fd(&c).is_ok_and(|fd| is_net_fd(fd.as_raw_fd()))
}

fn open_ns_fd(c: &CString) -> io::Result<OwnedFd> {
    // SAFETY: open with a NUL-terminated path; the descriptor is owned by the result.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether a namespace descriptor is a *network* namespace (nsfs also holds mount, pid… ones).
fn is_net_fd(fd: RawFd) -> bool {
    // SAFETY: NS_GET_NSTYPE takes no argument and only returns a value.
    let t = unsafe { libc::ioctl(fd, NS_GET_NSTYPE as _) };
    t == libc::CLONE_NEWNET
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
fn lo_up() -> io::Result<()> {
    // SAFETY: a plain datagram socket, owned right away, used for two ioctls on an ifreq we
    // own (all-zero is a valid ifreq).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = OwnedFd::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn bind_mount(src: &Path, dst: &Path) -> Result<()> {
    let (s, d) = (cpath(src)?, cpath(dst)?);
    // SAFETY: mount with NUL-terminated strings we own.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::last_os(format!(
            "bind-mounting {} on {}",
            src.display(),
            dst.display()
        )));
    }
    Ok(())
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
            // SAFETY: unshare on this dedicated thread only; the thread exits right after.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(Error::last_os("unshare(CLONE_NEWNET)"));
            }
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
        if !is_net_fd(fd.as_raw_fd()) {
            return Err(Error::Invalid(format!(
                "{} is not a network namespace",
                path.display()
            )));
        }
        Ok(Netns {
            fd,
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
            && let Some(key) = crate::nft::ns_key(fd.as_raw_fd())
        {
            crate::nft::forget_key(key);
        }
        for _ in 0..MAX_UMOUNTS {
            // SAFETY: umount2 with a NUL-terminated path we own.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
                continue;
            }
            let e = io::Error::last_os_error();
            // EINVAL: no (more) mount there. ENOENT: nothing there at all.
            if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
                break;
            }
            return Err(Error::io(format!("unmounting {}", path.display()))(e));
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
            fd: self
                .fd
                .try_clone()
                .map_err(Error::io("duplicating a namespace handle"))?,
            path: self.path.clone(),
        })
    }

    /// Runs `f` on a new thread inside this namespace and returns its result. `f` may bind
    /// sockets, open per-namespace `/proc/sys` files, create netlink sockets: they stay in
    /// this namespace. The thread exits when `f` returns (it never rejoins a pool). Blocks the
    /// caller for the thread's lifetime.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd = self.fd.as_raw_fd();
        on_thread(&self.path, move || {
            // SAFETY: setns on this dedicated, short-lived thread only; fd is a network
            // namespace descriptor kept open by `self` for the scope of the thread.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(Error::last_os(format!(
                    "entering namespace {}",
                    self.path.display()
                )));
            }
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
