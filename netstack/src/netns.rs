//! Network namespaces as files: created by `unshare(CLONE_NEWNET)` on a dedicated thread and
//! kept alive by a bind mount of that thread's namespace (no fork of our multi-threaded
//! process), opened by path, entered by short-lived threads only — `setns` changes the calling
//! thread, so it must never run on a thread that is reused afterwards.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use crate::Error;

const NSFS_MAGIC: i64 = 0x6e73_6673;

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

fn cpath(p: &Path) -> Result<CString, Error> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid(format!("path {} contains NUL", p.display())))
}

fn os(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// True if `path` is a namespace file (a bind mount of nsfs).
pub fn is_netns(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let mut st: libc::statfs = unsafe_zeroed();
    // SAFETY: fstatfs writes into a statfs we own.
    let rc = unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) };
    rc == 0 && st.f_type as i64 == NSFS_MAGIC
}

fn unsafe_zeroed<T>() -> T {
    // SAFETY: only used for plain C structs where all-zero is valid (statfs, ifreq).
    unsafe { std::mem::MaybeUninit::<T>::zeroed().assume_init() }
}

/// Namespace files in a directory.
pub fn list_netns(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(os(format!("reading {}", dir.display()))(e)),
    };
    Ok(rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_netns(p))
        .collect())
}

/// Brings `lo` up in the calling thread's namespace. A fresh namespace has it down, and a
/// socket bound to 127.0.0.11 before lo is up sends UDP replies from 127.0.0.1.
fn lo_up() -> io::Result<()> {
    // SAFETY: a plain datagram socket used for two ioctls on an ifreq we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = unsafe_zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(())
}

fn bind_mount(src: &Path, dst: &Path) -> Result<(), Error> {
    let (s, d) = (cpath(src)?, cpath(dst)?);
    // SAFETY: mount with C strings we own.
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
        return Err(os(format!(
            "bind-mounting {} on {}",
            src.display(),
            dst.display()
        ))(io::Error::last_os_error()));
    }
    Ok(())
}

fn touch(path: &Path) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(os(format!("creating {}", dir.display())))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(os(format!("creating {}", path.display())))?;
    Ok(())
}

impl Netns {
    /// Creates a namespace kept at `path` (with lo up); opens it if it already exists.
    pub fn create(path: &Path) -> Result<Netns, Error> {
        if is_netns(path) {
            return Netns::open(path);
        }
        touch(path)?;
        let target = path.to_path_buf();
        let made = std::thread::scope(|s| {
            s.spawn(|| -> Result<(), Error> {
                // SAFETY: unshare on this short-lived thread only; it exits right after.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(os("unshare(CLONE_NEWNET)")(io::Error::last_os_error()));
                }
                lo_up().map_err(os("bringing lo up"))?;
                bind_mount(Path::new("/proc/thread-self/ns/net"), &target)
            })
            .join()
            .unwrap_or_else(|_| Err(Error::Invalid("namespace thread panicked".into())))
        });
        if let Err(e) = made {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Netns::open(path)
    }

    /// Keeps an existing namespace (e.g. `/proc/PID/ns/net`) alive at `at` by a bind mount.
    pub fn bind(from: &Path, at: &Path) -> Result<Netns, Error> {
        let probe = File::open(from).map_err(os(format!("opening {}", from.display())))?;
        let mut st: libc::statfs = unsafe_zeroed();
        // SAFETY: fstatfs into a struct we own.
        let rc = unsafe { libc::fstatfs(probe.as_raw_fd(), &mut st) };
        if rc != 0 || st.f_type as i64 != NSFS_MAGIC {
            return Err(Error::Invalid(format!(
                "{} is not a network namespace",
                from.display()
            )));
        }
        touch(at)?;
        if let Err(e) = bind_mount(from, at) {
            let _ = std::fs::remove_file(at);
            return Err(e);
        }
        Netns::open(at)
    }

    pub fn open(path: &Path) -> Result<Netns, Error> {
        let file = File::open(path).map_err(os(format!("opening namespace {}", path.display())))?;
        Ok(Netns {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The calling thread's namespace.
    pub fn current() -> Result<Netns, Error> {
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Unmounts and removes a namespace file. The namespace dies with its last user (its
    /// links, veth peers included, go with it). A missing path is fine.
    pub fn delete(path: &Path) -> Result<(), Error> {
        let c = cpath(path)?;
        // SAFETY: umount2 with a C string we own; EINVAL (not mounted) is fine.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
                return Err(os(format!("unmounting {}", path.display()))(e));
            }
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(os(format!("removing {}", path.display()))(e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a new thread inside this namespace (to bind sockets, open per-namespace
    /// /proc/sys files, create netlink sockets). The thread ends with `f`.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on this short-lived thread only.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(os("entering namespace")(io::Error::last_os_error()));
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(Error::Invalid("thread in namespace panicked".into())))
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
