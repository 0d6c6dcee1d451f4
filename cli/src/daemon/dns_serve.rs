//! `sdctl dns serve`: the resolver on a plain address, fed from a JSON state file. Used by
//! benchmarks and by anyone who wants sdnet's answers without the daemon.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use sdnet_resolver::resolvconf::HostResolvConf;
use sdnet_resolver::table::{Tables, UpstreamSet};
use sdnet_resolver::{
    DefaultUpstreams, ForwardConfig, Resolver, ResolverConfig, State, TcpConfig, ViewSelector,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use super::trim_heap;
use crate::cli::DnsServeArgs;

pub fn run(args: DnsServeArgs) -> Result<()> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    rt.build()
        .context("starting the runtime")?
        .block_on(serve(args))
}

fn load(path: &Path) -> Result<State> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading state file {}", path.display()))?;
    let state: State = serde_json::from_str(&text)
        .with_context(|| format!("parsing state file {}", path.display()))?;
    state
        .validate()
        .with_context(|| format!("invalid state file {}", path.display()))?;
    Ok(state)
}

/// The view index of `--as NAME|ID`.
fn resolve_as(tables: &Tables, state: &State, who: &str) -> Result<u32> {
    let sb = state
        .sandboxes
        .iter()
        .find(|s| s.id == who || s.name.eq_ignore_ascii_case(who))
        .with_context(|| format!("--as {who}: no such sandbox in the state file"))?;
    tables
        .view_of(&sb.id)
        .with_context(|| format!("--as {who}: sandbox has no view"))
}

async fn serve(args: DnsServeArgs) -> Result<()> {
    let state = load(&args.state)?;
    let defaults = if args.upstreams.is_empty() {
        DefaultUpstreams::Host(HostResolvConf::new(&args.resolv_conf))
    } else {
        DefaultUpstreams::Fixed(Arc::new(UpstreamSet::new(
            args.upstreams.iter().map(|u| u.0).collect(),
        )))
    };
    let cfg = ResolverConfig {
        forward: ForwardConfig {
            budget: args.forward_budget,
            max_inflight: args.max_inflight,
            cache_entries: args.cache_size,
            ..ForwardConfig::default()
        },
        tcp: TcpConfig::default(),
        policy: Default::default(),
    };
    let resolver = Resolver::new(cfg, defaults);
    resolver.set_log_queries(args.log_queries);
    resolver
        .tables
        .replace_all(&state)
        .context("loading the state")?;
    let selector = match &args.as_sandbox {
        Some(who) => ViewSelector::sandbox(resolve_as(&resolver.tables, &state, who)?),
        None => ViewSelector::BySource,
    };
    // The tables hold what they need; the parsed file (a second copy of every sandbox) and
    // the loading garbage go back to the system.
    drop(state);
    trim_heap();

    let udp = std::net::UdpSocket::bind(args.listen)
        .with_context(|| format!("binding UDP {}", args.listen))?;
    udp.set_nonblocking(true)?;
    let udp = tokio::net::UdpSocket::from_std(udp)?;
    let tcp = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding TCP {}", args.listen))?;
    info!(listen = %args.listen, names = resolver.tables.snapshot().total_names(), "serving");

    let udp_task = tokio::spawn(resolver.clone().serve_udp(udp, selector.clone()));
    let tcp_task = tokio::spawn(resolver.clone().serve_tcp(tcp, selector.clone()));
    let mut listeners = std::pin::pin!(async { tokio::try_join!(udp_task, tcp_task) });

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // Sockets stay open: only the tables change.
                match load(&args.state).and_then(|st| {
                    resolver.tables.replace_all(&st).context("applying the state")?;
                    if let (Some(who), ViewSelector::Sandbox(idx)) = (&args.as_sandbox, &selector) {
                        idx.store(resolve_as(&resolver.tables, &st, who)?, Ordering::Relaxed);
                    }
                    Ok(())
                }) {
                    Ok(()) => {
                        trim_heap();
                        info!(names = resolver.tables.snapshot().total_names(), "state reloaded")
                    }
                    Err(e) => warn!("reload failed, keeping the previous state: {e:#}"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            r = &mut listeners => {
                bail!("listener stopped: {r:?}");
            }
        }
    }
    info!("stopping");
    Ok(())
}
