//! Logs as aardvark-dns writes them: to stderr while the parent still waits (netavark shows
//! what a failed start said), to syslog (`aardvark-dns[PID]`, facility daemon) once the server
//! has left its session and stdio. Level from `RUST_LOG` (netavark sets it), default info.

use std::ffi::CString;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

static DETACHED: AtomicBool = AtomicBool::new(false);

/// Installs the subscriber (call once, before forking).
pub fn init() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Writers)
        .try_init();
}

/// From now on, logs go to syslog (the server has detached from stderr).
pub fn detach() {
    static IDENT: &[u8] = b"aardvark-dns\0";
    // SAFETY: openlog keeps the pointer; IDENT is a static NUL-terminated string.
    unsafe { libc::openlog(IDENT.as_ptr().cast(), libc::LOG_PID, libc::LOG_DAEMON) };
    DETACHED.store(true, Ordering::Relaxed);
}

struct Writers;

/// One formatted event: stderr, or one syslog message at its level.
enum Sink {
    Stderr(io::Stderr),
    Syslog { priority: libc::c_int, buf: Vec<u8> },
}

impl<'a> MakeWriter<'a> for Writers {
    type Writer = Sink;

    fn make_writer(&'a self) -> Sink {
        self.sink(libc::LOG_INFO)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Sink {
        self.sink(match *meta.level() {
            Level::ERROR => libc::LOG_ERR,
            Level::WARN => libc::LOG_WARNING,
            Level::INFO => libc::LOG_INFO,
            Level::DEBUG | Level::TRACE => libc::LOG_DEBUG,
        })
    }
}

impl Writers {
    fn sink(&self, priority: libc::c_int) -> Sink {
        if DETACHED.load(Ordering::Relaxed) {
            Sink::Syslog {
                priority,
                buf: Vec::with_capacity(128),
            }
        } else {
            Sink::Stderr(io::stderr())
        }
    }
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Stderr(e) => e.write(b),
            Sink::Syslog { buf, .. } => {
                buf.extend_from_slice(b);
                Ok(b.len())
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stderr(e) => e.flush(),
            Sink::Syslog { .. } => Ok(()),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Sink::Syslog { priority, buf } = self {
            let text: Vec<u8> = buf.iter().copied().filter(|b| *b != 0).collect::<Vec<u8>>();
            let text = String::from_utf8_lossy(&text);
            if let Ok(msg) = CString::new(text.trim_end()) {
                // SAFETY: a constant "%s" format with one NUL-terminated string argument.
                unsafe { libc::syslog(*priority, c"%s".as_ptr(), msg.as_ptr()) };
            }
        }
    }
}
