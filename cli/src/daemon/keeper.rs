//! The keeper: a tiny process that holds descriptors for the daemon — each sandbox's network
//! namespace and its resolver sockets — so they outlive the daemon.
//!
//! Why: a daemon started through `ip netns exec` (as tests and multi-host node daemons are)
//! lives in a private mount namespace; killed, it takes its namespaces' bind mounts with it,
//! and supervised processes would run on in namespaces the restarted daemon can no longer
//! find. The keeper is a separate process in its own session: it survives the daemon, and the
//! restarted daemon asks it for every descriptor back (`SCM_RIGHTS`), mounts the very same
//! namespaces again and serves on the very same sockets (queries that arrive meanwhile wait in
//! the socket buffers instead of being refused).
//!
//! Protocol: one `SOCK_SEQPACKET` message per request on `<run-dir>/keeper.sock`:
//! `HOLD <key>` + one descriptor → `OK`; `DROP <prefix>` → `OK <n>`; `LIST <prefix>` → one
//! `ITEM <key>` message with its descriptor per entry, then `END`; `KEYS <prefix>` → the keys
//! only (newline-separated, several messages), then `END`; `PING` → `PONG <pid>`;
//! `QUIT` → `OK`, and the keeper exits (closing everything it held). With no client connected
//! and nothing held, it exits by itself.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr, accept4, bind, connect, listen, recvmsg, sendmsg, socket,
};

const MAX_MSG: usize = 4096;
/// How long the keeper lingers with nothing held and nobody connected.
const IDLE_EXIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("keeper: {0}")]
    Io(#[from] std::io::Error),
    #[error("keeper: {0}")]
    Sys(#[from] nix::Error),
    #[error("keeper: unexpected reply {0:?}")]
    Protocol(String),
    #[error("keeper did not start: {0}")]
    Start(String),
}

type Result<T> = std::result::Result<T, KeeperError>;

fn seqpacket() -> Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

fn send(fd: RawFd, text: &str, pass: Option<RawFd>) -> Result<()> {
    let iov = [IoSlice::new(text.as_bytes())];
    let fds = pass.map(|f| [f]);
    let cmsgs: Vec<ControlMessage> = fds
        .as_ref()
        .map(|f| ControlMessage::ScmRights(f))
        .into_iter()
        .collect();
    sendmsg::<()>(fd, &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// One message: its text (None at end of stream) and the descriptors that came with it.
fn recv(fd: RawFd) -> Result<Option<(String, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MSG];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for r in raw {
                    // SAFETY: SCM_RIGHTS installed this descriptor in our table for us; nothing
                    // else owns it. Kept above 1024: the daemon holds thousands of these, and
                    // libnftables needs low descriptors (see `nft::move_fd_high`).
                    let fd = unsafe { OwnedFd::from_raw_fd(r) };
                    fds.push(sdnet_netstack::nft::move_fd_high(fd));
                }
            }
        }
        (msg.bytes, fds)
    };
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((String::from_utf8_lossy(&buf[..n]).into_owned(), fds)))
}

// ------------------------------------------------------------------ the keeper process

struct Held {
    fds: BTreeMap<String, OwnedFd>,
    clients: usize,
}

/// `sdctl __keeper RUN_DIR`: detaches (the daemon reaps the first process at once) and serves.
pub fn main(run_dir: &Path) -> std::process::ExitCode {
    // A fresh single-threaded process: forking here is safe.
    // SAFETY: no other thread exists yet; the child only continues with ordinary code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => return std::process::ExitCode::SUCCESS,
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            eprintln!("sdctl keeper: fork: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let _ = nix::unistd::setsid();
    match serve(run_dir) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sdctl keeper: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(run_dir: &Path) -> Result<()> {
    let sock_path = run_dir.join("keeper.sock");
    let listener = seqpacket()?;
    let _ = std::fs::remove_file(&sock_path);
    bind(listener.as_raw_fd(), &UnixAddr::new(&sock_path)?)?;
    listen(&listener, Backlog::new(16)?)?;
    let me = std::process::id();
    std::fs::write(
        run_dir.join("keeper.pid"),
        format!(
            "{me} {}\n",
            crate::daemon::supervisor::start_ticks(me).unwrap_or(0)
        ),
    )?;
    let held = Arc::new(Mutex::new(Held {
        fds: BTreeMap::new(),
        clients: 0,
    }));
    // Idle exit: nothing held, nobody connected, for a while.
    {
        let held = held.clone();
        let sock_path = sock_path.clone();
        let pid_path = run_dir.join("keeper.pid");
        std::thread::spawn(move || {
            let mut idle = Duration::ZERO;
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let h = held.lock().unwrap_or_else(|p| p.into_inner());
                if h.fds.is_empty() && h.clients == 0 {
                    idle += Duration::from_millis(250);
                } else {
                    idle = Duration::ZERO;
                }
                if idle >= IDLE_EXIT {
                    let _ = std::fs::remove_file(&sock_path);
                    let _ = std::fs::remove_file(&pid_path);
                    std::process::exit(0);
                }
            }
        });
    }
    loop {
        let fd = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => fd,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        let held = held.clone();
        let sock_path = sock_path.clone();
        let pid_path = run_dir.join("keeper.pid");
        held.lock().unwrap_or_else(|p| p.into_inner()).clients += 1;
        std::thread::spawn(move || {
            let quit = client(&conn, &held).unwrap_or(false);
            held.lock().unwrap_or_else(|p| p.into_inner()).clients -= 1;
            if quit {
                let _ = std::fs::remove_file(&sock_path);
                let _ = std::fs::remove_file(&pid_path);
                std::process::exit(0);
            }
        });
    }
}

/// Serves one connection; true when asked to quit.
fn client(conn: &OwnedFd, held: &Mutex<Held>) -> Result<bool> {
    let c = conn.as_raw_fd();
    while let Some((text, mut fds)) = recv(c)? {
        let (verb, arg) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        match verb {
            "HOLD" if fds.len() == 1 && !arg.is_empty() => {
                let fd = fds.remove(0);
                held.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .fds
                    .insert(arg.to_string(), fd);
                send(c, "OK", None)?;
            }
            "DROP" => {
                let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
                let keys: Vec<String> = h
                    .fds
                    .range(arg.to_string()..)
                    .take_while(|(k, _)| k.starts_with(arg))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in &keys {
                    h.fds.remove(k);
                }
                drop(h);
                send(c, &format!("OK {}", keys.len()), None)?;
            }
            "LIST" => {
                let items: Vec<(String, OwnedFd)> = {
                    let h = held.lock().unwrap_or_else(|p| p.into_inner());
                    h.fds
                        .range(arg.to_string()..)
                        .take_while(|(k, _)| k.starts_with(arg))
                        .filter_map(|(k, f)| Some((k.clone(), f.try_clone().ok()?)))
                        .collect()
                };
                for (k, f) in items {
                    send(c, &format!("ITEM {k}"), Some(f.as_raw_fd()))?;
                }
                send(c, "END", None)?;
            }
            "KEYS" => {
                let keys: Vec<String> = {
                    let h = held.lock().unwrap_or_else(|p| p.into_inner());
                    h.fds
                        .range(arg.to_string()..)
                        .take_while(|(k, _)| k.starts_with(arg))
                        .map(|(k, _)| k.clone())
                        .collect()
                };
                // Several keys per message, within its size.
                let mut msg = String::from("KEYS");
                for k in keys {
                    if msg.len() + k.len() + 1 > MAX_MSG - 16 {
                        send(c, &msg, None)?;
                        msg = String::from("KEYS");
                    }
                    msg.push('\n');
                    msg.push_str(&k);
                }
                send(c, &msg, None)?;
                send(c, "END", None)?;
            }
            "PING" => send(c, &format!("PONG {}", std::process::id()), None)?,
            "QUIT" => {
                send(c, "OK", None)?;
                return Ok(true);
            }
            _ => send(c, "ERR unknown request", None)?,
        }
    }
    Ok(false)
}

// ------------------------------------------------------------------ the daemon's side

/// The daemon's connection to its keeper (blocking calls: run them off the runtime).
pub struct Keeper {
    run_dir: PathBuf,
    conn: Mutex<Option<OwnedFd>>,
}

impl Keeper {
    /// Connects to the keeper of `run_dir`, starting one if none answers.
    pub fn connect_or_start(run_dir: &Path) -> Result<Keeper> {
        let k = Keeper {
            run_dir: run_dir.to_path_buf(),
            conn: Mutex::new(None),
        };
        k.ensure()?;
        Ok(k)
    }

    /// Connects to a running keeper only (for `--cleanup`).
    pub fn connect_existing(run_dir: &Path) -> Option<Keeper> {
        let fd = dial(&run_dir.join("keeper.sock")).ok()?;
        Some(Keeper {
            run_dir: run_dir.to_path_buf(),
            conn: Mutex::new(Some(fd)),
        })
    }

    fn ensure(&self) -> Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if conn.is_some() {
            return Ok(());
        }
        let path = self.run_dir.join("keeper.sock");
        if let Ok(fd) = dial(&path) {
            *conn = Some(fd);
            return Ok(());
        }
        let exe = std::env::current_exe()
            .map_err(|e| KeeperError::Start(format!("finding our own binary: {e}")))?;
        let status = std::process::Command::new(exe)
            .arg("__keeper")
            .arg(&self.run_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| KeeperError::Start(e.to_string()))?;
        if !status.success() {
            return Err(KeeperError::Start(format!("exited with {status}")));
        }
        for _ in 0..200 {
            if let Ok(fd) = dial(&path) {
                *conn = Some(fd);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(KeeperError::Start(format!(
            "{} does not answer",
            path.display()
        )))
    }

    /// One request/response exchange; reconnects (or restarts the keeper) once on failure.
    fn call<T>(&self, f: impl Fn(RawFd) -> Result<T>) -> Result<T> {
        for attempt in 0..2 {
            self.ensure()?;
            let r = {
                let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
                match conn.as_ref() {
                    Some(c) => f(c.as_raw_fd()),
                    None => continue,
                }
            };
            match r {
                Ok(v) => return Ok(v),
                Err(e) if attempt == 0 => {
                    tracing::warn!("{e}: reconnecting to the keeper");
                    *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                Err(e) => return Err(e),
            }
        }
        Err(KeeperError::Protocol("no connection".into()))
    }

    pub fn hold(&self, key: &str, fd: RawFd) -> Result<()> {
        self.call(|c| {
            send(c, &format!("HOLD {key}"), Some(fd))?;
            expect_ok(recv(c)?)
        })
    }

    pub fn drop_prefix(&self, prefix: &str) -> Result<()> {
        self.call(|c| {
            send(c, &format!("DROP {prefix}"), None)?;
            expect_ok(recv(c)?)
        })
    }

    pub fn list(&self, prefix: &str) -> Result<Vec<(String, OwnedFd)>> {
        self.call(|c| {
            send(c, &format!("LIST {prefix}"), None)?;
            let mut out = Vec::new();
            loop {
                match recv(c)? {
                    Some((t, _)) if t == "END" => return Ok(out),
                    Some((t, mut fds)) if t.starts_with("ITEM ") && fds.len() == 1 => {
                        out.push((t["ITEM ".len()..].to_string(), fds.remove(0)));
                    }
                    other => return Err(KeeperError::Protocol(format!("{other:?}"))),
                }
            }
        })
    }

    /// The keys held under `prefix` (without their descriptors).
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        self.call(|c| {
            send(c, &format!("KEYS {prefix}"), None)?;
            let mut out = Vec::new();
            loop {
                match recv(c)? {
                    Some((t, _)) if t == "END" => return Ok(out),
                    Some((t, _)) if t.starts_with("KEYS") => {
                        out.extend(t.lines().skip(1).map(str::to_string));
                    }
                    other => {
                        return Err(KeeperError::Protocol(format!(
                            "{:?}",
                            other.map(|(t, _)| t)
                        )));
                    }
                }
            }
        })
    }

    /// Ends the keeper: everything it held is closed.
    pub fn quit(&self) -> Result<()> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = conn.as_ref() {
            send(c.as_raw_fd(), "QUIT", None)?;
            let _ = recv(c.as_raw_fd())?;
        }
        Ok(())
    }
}

fn dial(path: &Path) -> Result<OwnedFd> {
    let fd = seqpacket()?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(fd)
}

fn expect_ok(m: Option<(String, Vec<OwnedFd>)>) -> Result<()> {
    match m {
        Some((t, _)) if t == "OK" || t.starts_with("OK ") => Ok(()),
        other => Err(KeeperError::Protocol(format!(
            "{:?}",
            other.map(|(t, _)| t)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_list_drop_over_a_socketpair() {
        // The protocol functions on a connected pair, without a keeper process.
        let (a, b) = nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let held = Mutex::new(Held {
            fds: BTreeMap::new(),
            clients: 1,
        });
        let server = std::thread::spawn(move || {
            let quit = client(&b, &held).unwrap();
            (quit, held.into_inner().unwrap().fds.len())
        });
        let c = a.as_raw_fd();
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        send(c, "HOLD sb/1/netns", Some(f.as_raw_fd())).unwrap();
        expect_ok(recv(c).unwrap()).unwrap();
        send(c, "HOLD sb/2/netns", Some(f.as_raw_fd())).unwrap();
        expect_ok(recv(c).unwrap()).unwrap();
        send(c, "LIST sb/1/", None).unwrap();
        let (t, fds) = recv(c).unwrap().unwrap();
        assert_eq!((t.as_str(), fds.len()), ("ITEM sb/1/netns", 1));
        assert_eq!(recv(c).unwrap().unwrap().0, "END");
        send(c, "KEYS sb/", None).unwrap();
        assert_eq!(recv(c).unwrap().unwrap().0, "KEYS\nsb/1/netns\nsb/2/netns");
        assert_eq!(recv(c).unwrap().unwrap().0, "END");
        send(c, "DROP sb/1/", None).unwrap();
        assert_eq!(recv(c).unwrap().unwrap().0, "OK 1");
        send(c, "QUIT", None).unwrap();
        assert_eq!(recv(c).unwrap().unwrap().0, "OK");
        let (quit, left) = server.join().unwrap();
        assert!(quit);
        assert_eq!(left, 1);
    }
}
