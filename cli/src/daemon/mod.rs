//! The daemon half of `sdctl`: `sdctl daemon` (API server, store, reconciler, supervisor) and
//! `sdctl dns serve` (the resolver alone).

pub mod api;
pub mod core;
pub mod dns_serve;
pub mod firewall;
pub mod names;
pub mod plumb;
pub mod process;
pub mod services;
pub mod store;

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sdnet_resolver::resolvconf::HostResolvConf;
use sdnet_resolver::{DefaultUpstreams, Resolver, ResolverConfig};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::cli::DaemonArgs;
use core::{Config, Daemon};

/// Hands freed heap that glibc keeps back to the system.
pub(crate) fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn run(args: DaemonArgs) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(serve(args))
}

/// Holds an exclusive lock on the run directory for the daemon's lifetime.
struct RunLock(#[allow(dead_code)] std::fs::File);

fn lock_run_dir(run_dir: &Path) -> Result<RunLock> {
    let path = run_dir.join("sdnet.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "another sdnet daemon is running with run dir {} (lock {} is held)",
            run_dir.display(),
            path.display()
        );
    }
    Ok(RunLock(f))
}

/// Two sockets per sandbox: lift the soft descriptor limit to the hard one.
fn raise_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

async fn serve(args: DaemonArgs) -> Result<()> {
    raise_nofile();
    let cfg = Config {
        state_dir: args.state_dir.clone(),
        run_dir: args.run_dir.clone(),
        etc_netns_dir: args.etc_netns_dir.clone(),
        netns_link_dir: (!args.no_netns_links).then(|| args.netns_link_dir.clone()),
        default_bridge_subnet: args.default_bridge_subnet,
    };
    for d in [&cfg.state_dir, &cfg.run_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o700))?;
    let _lock = lock_run_dir(&cfg.run_dir)?;
    let store_path = cfg.state_dir.join("state.redb");

    if args.cleanup {
        // Processes first (they hold namespaces alive), then every kernel object of ours.
        if store_path.exists() {
            let store = store::Store::open(&store_path)?;
            let (_, sbs) = store.load()?;
            for s in sbs {
                if let Some(p) = s.process {
                    process::signal(&p, libc::SIGKILL);
                }
            }
        }
        Daemon::cleanup_everything(&cfg).await?;
        // Only a leftover: never a socket another daemon (other run dir, same --socket)
        // answers on.
        if tokio::net::UnixStream::connect(&args.socket).await.is_err() {
            let _ = std::fs::remove_file(&args.socket);
        }
        println!(
            "sdnet: removed every namespace, link, nft table and file of ours (the store is kept)"
        );
        return Ok(());
    }

    let store = store::Store::open(&store_path)
        .with_context(|| format!("opening the store {}", store_path.display()))?;
    let resolver = Resolver::new(
        ResolverConfig::default(),
        DefaultUpstreams::Host(HostResolvConf::new(&args.resolv_conf)),
    );
    resolver.set_log_queries(args.log_queries);
    let (daemon, mut events) = Daemon::start(cfg, store, resolver).await?;
    {
        let d = daemon.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                d.on_event(e).await;
            }
        });
        // A safety net for services: converge every few seconds (cheap when nothing to do).
        let d = daemon.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(std::time::Duration::from_secs(3));
            loop {
                t.tick().await;
                d.tick().await;
                // Bursts (many sandboxes created or removed at once) leave freed heap that
                // glibc keeps; hand it back so an idle daemon's RSS is what it holds.
                let _ = tokio::task::spawn_blocking(trim_heap).await;
            }
        });
    }

    if let Some(dir) = args.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if args.socket.exists() {
        // A socket nobody answers on is a leftover of a killed daemon.
        if tokio::net::UnixStream::connect(&args.socket).await.is_ok() {
            bail!("{} is in use by another daemon", args.socket.display());
        }
        std::fs::remove_file(&args.socket)?;
    }
    let listener = tokio::net::UnixListener::bind(&args.socket)
        .with_context(|| format!("binding {}", args.socket.display()))?;
    std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %args.socket.display(), "API listening");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let app = api::router(Arc::clone(&daemon));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        warn!("API server: {e}");
    }
    let _ = std::fs::remove_file(&args.socket);
    info!("stopped (sandboxes and networks stay)");
    Ok(())
}
