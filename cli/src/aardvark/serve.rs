//! The server child: the resolver under `Policy::Podman`, one UDP and one TCP listener per
//! listen address, SIGHUP reloads.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sdnet_resolver::model::Policy;
use sdnet_resolver::resolvconf::HostResolvConf;
use sdnet_resolver::{
    DefaultUpstreams, ForwardConfig, Resolver, ResolverConfig, TcpConfig, ViewSelector,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tracing::{error, info};

use super::config::{self, PID_FILE};
use super::fresh::{self, Fresh, no_proxy};
use super::process;

pub struct Options {
    pub dir: PathBuf,
    pub port: u16,
    /// Lower case, no outer dots (`dns.podman`).
    pub search_domain: String,
    /// `AARDVARK_NO_PROXY`: never forward (unknown names are NXDOMAIN).
    pub no_proxy: bool,
}

/// The listeners of one address: its network (for clients no container owns) and tasks.
struct Listener {
    network: String,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Listener {
    fn drop(&mut self) {
        // The tasks own the sockets: aborting them closes the sockets.
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub fn child(opts: Options, ready: OwnedFd) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run(opts, ready))
}

async fn run(opts: Options, ready: OwnedFd) -> Result<()> {
    // Before the pid file exists: netavark may send SIGHUP as soon as it can read it.
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let pid_path = opts.dir.join(PID_FILE);
    // A server that fails to start gives the pid file back to the one it may have replaced
    // (netavark signals whatever pid the file holds).
    let previous = std::fs::read(&pid_path).ok();
    std::fs::write(&pid_path, std::process::id().to_string())
        .with_context(|| format!("writing {}", pid_path.display()))?;
    // Watching before the first load: a file written meanwhile is seen.
    let fresh = match Fresh::new(opts.dir.clone(), opts.no_proxy) {
        Ok(f) => Some(Arc::new(f)),
        Err(e) => {
            error!(
                "cannot watch {}: {e}; names change on SIGHUP only",
                opts.dir.display()
            );
            None
        }
    };
    let started = locked(&fresh, || start(&opts, &pid_path, fresh.as_ref()));
    let (resolver, mut listeners) = match started {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(()),
        Err(e) => {
            let _ = match previous {
                Some(p) => std::fs::write(&pid_path, p),
                None => std::fs::remove_file(&pid_path),
            };
            return Err(e);
        }
    };
    process::daemonize()?;
    process::signal_ready(ready)?;

    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                if !locked(&fresh, || reload(&opts, &resolver, &mut listeners)) {
                    break;
                }
            }
            _ = term.recv() => {
                info!("SIGTERM: exiting");
                break;
            }
        }
    }
    Ok(())
}

type Listeners = HashMap<IpAddr, Listener>;

/// Runs a load of the directory under the watch's lock (see `fresh.rs`).
fn locked<T>(fresh: &Option<Arc<Fresh>>, f: impl FnOnce() -> T) -> T {
    match fresh {
        Some(w) => w.locked(f),
        None => f(),
    }
}

/// Loads the directory and binds every listener; None if there is nothing to serve (the pid
/// file is removed).
fn start(
    opts: &Options,
    pid_path: &std::path::Path,
    fresh: Option<&Arc<Fresh>>,
) -> Result<Option<(Arc<Resolver>, Listeners)>> {
    let resolver = Resolver::new(
        ResolverConfig {
            forward: ForwardConfig {
                // aardvark-dns gives all servers 5 s together.
                budget: std::time::Duration::from_secs(5),
                relay_failure: true,
                ..ForwardConfig::default()
            },
            tcp: TcpConfig::default(),
            policy: Policy::Podman {
                search_domain: opts.search_domain.as_str().into(),
            },
        },
        DefaultUpstreams::Host(HostResolvConf::new("/etc/resolv.conf")),
    );
    if let Some(f) = fresh {
        resolver.set_freshen(f.hook(&resolver));
    }
    let cfg = config::load(&opts.dir).map_err(anyhow::Error::msg)?;
    for e in &cfg.errors {
        error!("{e}");
    }
    if cfg.listeners.is_empty() {
        info!("no network with a listen address: exiting");
        let _ = std::fs::remove_file(pid_path);
        return Ok(None);
    }
    resolver
        .tables
        .replace_all(&no_proxy(cfg.state, opts.no_proxy))
        .context("loading the configuration")?;
    let mut listeners = HashMap::new();
    let errors = reconcile(&resolver, &mut listeners, &cfg.listeners, opts.port);
    if let Some(first) = errors.into_iter().next() {
        bail!("{first}");
    }
    info!(
        listeners = listeners.len(),
        names = resolver.tables.snapshot().total_names(),
        "serving"
    );
    Ok(Some((resolver, listeners)))
}

/// Re-reads the directory and applies it; false when nothing is left to serve (the pid file
/// is then removed and the server should exit).
fn reload(opts: &Options, resolver: &Arc<Resolver>, listeners: &mut Listeners) -> bool {
    let cfg = match config::load(&opts.dir) {
        Ok(c) => c,
        Err(e) => {
            error!("reload failed, keeping the previous configuration: {e}");
            return true;
        }
    };
    for e in &cfg.errors {
        error!("{e}");
    }
    if cfg.listeners.is_empty() {
        info!("no network left: exiting");
        listeners.clear();
        if let Err(e) = std::fs::remove_file(opts.dir.join(PID_FILE)) {
            error!("removing the pid file: {e}");
        }
        return false;
    }
    // Names first (one atomic swap), then listeners: a new listener answers at once.
    let listen = cfg.listeners.clone();
    fresh::apply_names(resolver, cfg, opts.no_proxy);
    for e in reconcile(resolver, listeners, &listen, opts.port) {
        error!("reload: {e}");
    }
    info!(
        listeners = listeners.len(),
        names = resolver.tables.snapshot().total_names(),
        "configuration reloaded"
    );
    true
}

/// Stops listeners no longer wanted, starts missing ones; the bind errors.
fn reconcile(
    resolver: &Arc<Resolver>,
    listeners: &mut Listeners,
    wanted: &BTreeMap<IpAddr, String>,
    port: u16,
) -> Vec<String> {
    listeners.retain(|ip, l| wanted.get(ip) == Some(&l.network));
    let mut errors = Vec::new();
    for (ip, network) in wanted {
        if listeners.contains_key(ip) {
            continue;
        }
        match bind(resolver, SocketAddr::new(*ip, port), network) {
            Ok(l) => {
                listeners.insert(*ip, l);
            }
            Err(e) => errors.push(e),
        }
    }
    errors
}

fn bind(resolver: &Arc<Resolver>, addr: SocketAddr, network: &str) -> Result<Listener, String> {
    let udp = std::net::UdpSocket::bind(addr)
        .and_then(|s| {
            s.set_nonblocking(true)?;
            tokio::net::UdpSocket::from_std(s)
        })
        .map_err(|e| format!("failed to bind udp listener on {addr}: {e}"))?;
    let tcp = std::net::TcpListener::bind(addr)
        .and_then(|s| {
            s.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(s)
        })
        .map_err(|e| format!("failed to bind tcp listener on {addr}: {e}"))?;
    let sel = ViewSelector::BySourceOrNetwork(network.into());
    let tasks = [
        tokio::spawn(resolver.clone().serve_udp(udp, sel.clone())),
        tokio::spawn(resolver.clone().serve_tcp(tcp, sel)),
    ];
    Ok(Listener {
        network: network.to_string(),
        tasks,
    })
}
