//! The daemon half of `sdctl`: `sdctl daemon` and `sdctl dns serve` (the resolver alone).
//!
//! ```text
//! API (api/) ──txn──▶ store (store/: trait, redb) ──watch──▶ state cache (state.rs)
//!                                                               │ changes
//!            scheduler (services.rs) ◀── cache revisions ───────┤
//!            writes tasks like an API client                    ▼
//!                                 reconciler (reconcile/) ──▶ drivers/ (bridge…), name tables,
//!                                                              nft (firewall, LB), supervisor/
//!            supervisor observations ──▶ status writer ──txn──▶ store
//! ```
//! The keeper (keeper.rs) holds namespaces and resolver sockets across daemon restarts.

pub mod api;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod dns_serve;
pub mod drivers;
pub mod events;
pub mod hostdns;
pub mod ipam;
pub mod keeper;
pub mod metrics;
pub mod names;
pub mod reconcile;
pub mod services;
pub mod state;
pub mod store;
pub mod supervisor;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sdnet_resolver::resolvconf::{HostResolvConf, ResolvConf};
use sdnet_resolver::{DefaultUpstreams, Resolver, ResolverConfig};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::cli::DaemonArgs;
use config::Config;
use drivers::{Drivers, Host, NullDriver, bridge::BridgeDriver};
use keeper::Keeper;
use reconcile::{Live, Progress, Reconciler};
use services::{SchedProgress, Scheduler};
use state::StateCache;
use store::Store;
use store::redb::RedbStore;
use supervisor::Supervisor;

/// Everything of this node the API, the reconciler and the scheduler share.
pub struct Node {
    /// This node's name (the host name by default).
    pub name: String,
    pub cfg: Config,
    /// This node's store (local scope).
    pub store: Arc<dyn Store>,
    /// The cluster this node belongs to, if any (its store holds swarm scope).
    pub cluster: Option<Arc<cluster::Cluster>>,
    pub cache: Arc<StateCache>,
    pub resolver: Arc<Resolver>,
    pub host: Arc<Host>,
    pub drivers: Drivers,
    pub supervisor: Supervisor,
    pub keeper: Arc<Keeper>,
    pub progress: Progress,
    pub sched: SchedProgress,
    pub live: Live,
    pub ipam: ipam::Ipam,
    /// The host zone (`--host-dns`), fed by the reconciler.
    pub hostdns: Option<Arc<hostdns::HostDns>>,
    pub metrics: metrics::Metrics,
}

impl Node {
    /// The store that holds records of `src`.
    pub fn store_of(&self, src: state::Source) -> api::ApiResult<&Arc<dyn Store>> {
        match (src, &self.cluster) {
            (state::Source::Local, _) => Ok(&self.store),
            (state::Source::Cluster, Some(c)) => Ok(&c.store),
            (state::Source::Cluster, None) => Err(api::ApiError::BadRequest(
                "this node is not in a cluster (start the daemon with --cluster-store)".into(),
            )),
        }
    }

    /// This node's ID in its cluster ("" alone).
    pub fn node_id(&self) -> &str {
        self.cluster.as_ref().map(|c| c.id.as_str()).unwrap_or("")
    }

    /// The host's resolv.conf as last read (search domains and options for sandboxes).
    pub fn host_conf(&self) -> Arc<ResolvConf> {
        match self.resolver.forwarder.defaults() {
            DefaultUpstreams::Host(h) => h.conf(),
            DefaultUpstreams::Fixed(_) => Arc::new(ResolvConf::default()),
        }
    }

    /// Waits until the scheduler has acted on revision `rev` (and its writes are applied).
    pub async fn scheduler_pass(&self, src: state::Source, rev: store::Rev) -> api::ApiResult<()> {
        if self.sched.wait(src, rev, Duration::from_secs(120)).await {
            Ok(())
        } else {
            Err(api::ApiError::Internal(anyhow::anyhow!(
                "the scheduler did not act on the change within 120 s; it will"
            )))
        }
    }
}

/// Hands freed heap that glibc keeps back to the system.
pub(crate) fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn run(args: DaemonArgs) -> Result<()> {
    raise_nofile();
    presize_fd_table();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(serve(args))
}

/// Holds an exclusive lock on the run directory for the daemon's lifetime. A POSIX record
/// lock, not flock: it belongs to this process alone, so a child forked at the moment the
/// daemon dies cannot keep it held (an flock is shared with every process holding the file).
struct RunLock(#[allow(dead_code)] std::fs::File);

fn lock_run_dir(run_dir: &Path) -> Result<RunLock> {
    let path = run_dir.join("sdnet.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let ino = {
        use std::os::unix::fs::MetadataExt;
        f.metadata().map(|m| m.ino()).unwrap_or(0)
    };
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    match nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETLK(&lock)) {
        Ok(_) => Ok(RunLock(f)),
        Err(_) => bail!(
            "another sdnet daemon is running with run dir {} (lock {} is held{})",
            run_dir.display(),
            path.display(),
            lock_holder(ino)
        ),
    }
}

/// Processes that have `path` open (", open in PID n (cmd)…"), for an error about its lock.
fn holders(path: &Path) -> String {
    let mut out = String::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == std::process::id().to_string() {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|f| std::fs::read_link(f.path()).is_ok_and(|t| t == path))
        {
            let cmd = std::fs::read_to_string(p.path().join("cmdline"))
                .unwrap_or_default()
                .replace('\0', " ");
            out.push_str(&format!(", open in PID {pid}: {}", cmd.trim()));
        }
    }
    out
}

/// Who holds a lock on inode `ino`, from /proc/locks (", by PID n (name)"), for the error.
fn lock_holder(ino: u64) -> String {
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    for l in locks.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        // "1: POSIX  ADVISORY  WRITE 1234 00:2a:5678 0 EOF"
        if w.len() >= 6 && w[5].rsplit(':').next() == Some(&ino.to_string()) {
            let pid = w[4];
            let comm = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .replace('\0', " ");
            return format!(", by PID {pid}: {}", comm.trim());
        }
    }
    String::new()
}

/// Two sockets per sandbox: lift the soft descriptor limit to the hard one.
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Sizes the descriptor table for the daemon's life while it is still one thread. The daemon
/// keeps its long-lived descriptors at 1024 and above (`nft::move_fd_high`); growing the
/// table later, in a process with threads, waits for an RCU grace period, and a restarted
/// daemon handed hundreds of descriptors at once by the keeper stalled there for over 20 s
/// on a kernel busy tearing down namespaces. Here it is a plain allocation.
fn presize_fd_table() {
    use nix::fcntl::{FcntlArg, fcntl};
    use nix::sys::resource::{Resource, getrlimit};
    let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    // 16,384 descriptors: ~4,000 sandboxes; a bigger daemon grows the table as before.
    let top = soft.min(16_384).saturating_sub(1) as i32;
    if top < 1024 {
        return;
    }
    if let Ok(f) = std::fs::File::open("/dev/null")
        && let Ok(fd) = fcntl(&f, FcntlArg::F_DUPFD_CLOEXEC(top))
    {
        let _ = nix::unistd::close(fd);
    }
}

fn node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

async fn serve(args: DaemonArgs) -> Result<()> {
    let cfg = Config {
        state_dir: args.state_dir.clone(),
        run_dir: args.run_dir.clone(),
        etc_netns_dir: args.etc_netns_dir.clone(),
        netns_link_dir: (!args.no_netns_links).then(|| args.netns_link_dir.clone()),
        default_bridge_subnet: args.default_bridge_subnet,
        resync: args.resync_interval,
        cni_bin_dir: args.cni_bin_dir.clone(),
    };
    for d in [&cfg.state_dir, &cfg.run_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o700))?;
    let _lock = lock_run_dir(&cfg.run_dir)?;
    let store_path = cfg.state_dir.join("state.redb");
    let socket = args.socket.clone();

    if args.cleanup {
        return cleanup(&cfg, &store_path, &socket).await;
    }

    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&store_path).with_context(|| {
        format!(
            "opening the store {}{}",
            store_path.display(),
            holders(&store_path)
        )
    })?);
    for d in [cfg.netns_dir(), cfg.logs_dir(), cfg.etc_netns_dir.clone()] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    // The keeper hands back what it held for us: namespaces and sockets of our sandboxes.
    let run_dir = cfg.run_dir.clone();
    let (keeper, kept, kept_ov) = tokio::task::spawn_blocking(move || -> Result<_> {
        let k = Keeper::connect_or_start(&run_dir)?;
        let kept = k.list("sb/")?.into_iter().collect();
        let kept_ov = k.list("ov/")?.into_iter().collect();
        Ok((k, kept, kept_ov))
    })
    .await??;
    let host = Arc::new(Host::open().await?);
    let cluster = match &args.cluster_store {
        None => None,
        Some(url) => {
            let endpoints = store::etcd::parse_cluster_store(url)
                .map_err(|e| anyhow::anyhow!("--cluster-store {e}"))?;
            let advertise = args
                .advertise_addr
                .ok_or_else(|| anyhow::anyhow!("--cluster-store needs --advertise-addr"))?;
            let a = cluster::ClusterArgs {
                endpoints,
                advertise,
                node_name: args.node_name.clone().unwrap_or_else(node_name),
                data_port: args.data_path_port,
                ttl: args.node_ttl,
            };
            Some(cluster::Cluster::join(&a, &cfg.state_dir).await?)
        }
    };
    let resolver = Resolver::new(
        ResolverConfig::default(),
        DefaultUpstreams::Host(HostResolvConf::new(&args.resolv_conf)),
    );
    resolver.set_log_queries(args.log_queries);
    let hostdns = match hostdns::config(
        &cfg.state_dir,
        args.host_dns,
        &args.host_dns_domain,
        args.host_dns_notify.clone(),
        args.host_dns_allow_transfer.clone(),
    )? {
        Some(c) => Some(hostdns::HostDns::start(c).await?),
        None => None,
    };
    let (obs_tx, obs_rx) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(supervisor::status::run(store.clone(), obs_rx));
    let keeper = Arc::new(keeper);
    let overlay = cluster.as_ref().map(|c| {
        drivers::overlay::OverlayDriver::new(
            host.clone(),
            cfg.run_dir.join("ov"),
            c.addr,
            c.data_port,
            keeper.clone(),
            kept_ov,
        )
    });
    let node = Arc::new(Node {
        name: cluster
            .as_ref()
            .map(|c| c.name.clone())
            .unwrap_or_else(node_name),
        cfg: cfg.clone(),
        store: store.clone(),
        cluster: cluster.clone(),
        cache: StateCache::new(),
        resolver,
        host: host.clone(),
        drivers: Drivers {
            bridge: BridgeDriver { host: host.clone() },
            macvlan: drivers::macvlan::MacvlanDriver { host },
            cni: drivers::cni::CniDriver {
                bin_dir: cfg.cni_bin_dir.clone(),
                cache_dir: cfg.cni_cache_dir(),
                health: Default::default(),
            },
            null: NullDriver,
            overlay,
        },
        supervisor: Supervisor::new(obs_tx),
        keeper,
        progress: Progress::default(),
        sched: SchedProgress::default(),
        live: Live::default(),
        ipam: ipam::Ipam::default(),
        hostdns,
        metrics: metrics::Metrics::default(),
    });
    if let Some(addr) = args.metrics_addr {
        metrics::serve(&node, addr).await?;
    }

    // Desired state in, reconciler running; restored before the API answers.
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    node.cache
        .start_feed(state::Source::Local, store.clone(), tx.clone())
        .await
        .context("loading the store")?;
    if let Some(c) = &cluster {
        node.cache
            .start_feed(state::Source::Cluster, c.store.clone(), tx.clone())
            .await
            .context("loading the cluster store")?;
        tokio::spawn(c.clone().keep_alive());
        tokio::spawn(dispatch::run(node.clone(), c.clone()));
    }
    drop(tx);
    tokio::spawn(Reconciler::new(node.clone(), kept).run(rx));
    {
        let d = node.cache.read();
        info!(
            networks = d.networks.len(),
            sandboxes = d.sandboxes.len(),
            "restoring state"
        );
    }
    let restoring = std::time::Instant::now();
    let slow = {
        let node = node.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            warn!(
                applied = ?node.progress.applied_revs(),
                "restoring state is taking long (the kernel may be slow: see the slow realization warnings)"
            );
        })
    };
    api::applied(&node, node.cache.rev(state::Source::Local))
        .await
        .map_err(|e| anyhow::anyhow!("restoring state: {e}"))?;
    if cluster.is_some() {
        api::applied_in(
            &node,
            state::Source::Cluster,
            node.cache.rev(state::Source::Cluster),
        )
        .await
        .map_err(|e| anyhow::anyhow!("restoring cluster state: {e}"))?;
    }
    api::networks::ensure_defaults(&node).await?;
    api::lifecycle::start_always(&node).await;
    {
        let d = node.cache.read();
        info!(
            networks = d.networks.len(),
            sandboxes = d.sandboxes.len(),
            services = d.services.len(),
            ms = restoring.elapsed().as_secs_f64() * 1000.0,
            "state restored"
        );
    }
    slow.abort();
    tokio::spawn(Scheduler::new(node.clone()).run());
    tokio::spawn(async {
        // Bursts (many sandboxes created or removed at once) leave freed heap that glibc
        // keeps; hand it back so an idle daemon's RSS is what it holds.
        let mut t = tokio::time::interval(Duration::from_secs(3));
        loop {
            t.tick().await;
            let _ = tokio::task::spawn_blocking(trim_heap).await;
        }
    });

    // The API answers once the state is restored: a daemon that answers has applied it.
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if socket.exists() {
        // A socket nobody answers on is a leftover of a killed daemon.
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            bail!("{} is in use by another daemon", socket.display());
        }
        std::fs::remove_file(&socket)?;
    }
    let listener = tokio::net::UnixListener::bind(&socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %socket.display(), "API listening");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let app = api::routes::router(node.clone());
    if let Err(e) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<api::guard::Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    {
        warn!("API server: {e}");
    }
    let _ = std::fs::remove_file(&socket);
    info!("stopped (sandboxes and networks stay)");
    Ok(())
}

/// `--cleanup`: processes first (they hold namespaces alive), the keeper, then every kernel
/// object and file of ours. The store stays, so the next start rebuilds everything.
async fn cleanup(cfg: &Config, store_path: &Path, socket: &Path) -> Result<()> {
    if store_path.exists() {
        let store = RedbStore::open(store_path)?;
        let (items, _) = store
            .snapshot(&format!("{}status/", store::schema::ROOT))
            .await?;
        for kv in items {
            if let Ok(st) = store::schema::decode::<store::schema::StatusRec>(&kv.key, &kv.value)
                && let Some(pid) = st.pid
                && !st.exited
            {
                supervisor::signal(
                    &supervisor::Proc {
                        pid,
                        start_ticks: st.start_ticks,
                    },
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let run_dir = cfg.run_dir.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(k) = Keeper::connect_existing(&run_dir) {
            // Also processes the store no longer knows (their sandbox's removal was stored
            // just before a crash): the keeper holds them all.
            for (key, fd) in k.list("sb/").unwrap_or_default() {
                if key.ends_with("/proc") {
                    supervisor::kill_pidfd(&fd);
                }
            }
            let _ = k.quit();
        }
    })
    .await?;
    reconcile::gc::cleanup_everything(cfg).await?;
    // Never remove a socket a live daemon answers on.
    if socket.exists() && tokio::net::UnixStream::connect(socket).await.is_err() {
        let _ = std::fs::remove_file(socket);
    }
    println!(
        "sdnet: removed every namespace, link, nft table and file of ours (the store is kept)"
    );
    Ok(())
}
