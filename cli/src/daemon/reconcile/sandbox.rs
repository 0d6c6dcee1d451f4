//! One sandbox, desired → realized: its namespace (created, adopted, or handed back by the
//! keeper), an endpoint per network through the network's driver, resolv.conf and hosts, the
//! resolver's listeners inside it, reserved host ports, and its process. `realize` compares
//! with what it last applied and touches the kernel only for differences (a full pass also
//! checks the kernel for drift); `teardown` removes it, the slow part in the background.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use nix::sys::signal::Signal;
use sdnet_lb::VipLb;
use sdnet_netstack::link::Netlink;
use sdnet_netstack::netns::{Netns, is_netns};
use sdnet_netstack::nft;
use sdnet_resolver::ViewSelector;
use sdnet_resolver::model::Protocol;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{Failure, files};
use crate::daemon::Node;
use crate::daemon::drivers::{Links, SandboxNs};
use crate::daemon::state::Desired;
use crate::daemon::store::Rev;
use crate::daemon::store::schema::{
    DriverKind, EndpointRec, NetMode, NetworkRec, PublishRec, SandboxRec,
};
use crate::daemon::supervisor::{self, Proc};

pub struct DnsListener {
    pub udp_port: u16,
    pub tcp_port: u16,
    tasks: Vec<JoinHandle<()>>,
    /// Copies of the sockets, to hand to the keeper again if it had to be restarted.
    pub sockets: (Arc<OwnedFd>, Arc<OwnedFd>),
}

impl Drop for DnsListener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What the reconciler last applied for a sandbox.
pub struct RealSb {
    pub name: String,
    pub mode: NetMode,
    pub adopted: bool,
    pub ns: Option<Arc<Netns>>,
    /// network → (endpoint, carries the default route, its network)
    pub eps: BTreeMap<String, (EndpointRec, bool, Arc<NetworkRec>)>,
    pub dns: Option<DnsListener>,
    pub files: Option<(String, String)>,
    pub reservations: Vec<(PublishRec, OwnedFd)>,
    /// The VIPs programmed in its LB table (None: unknown, reload whole).
    pub lb: Option<BTreeMap<Ipv4Addr, VipLb>>,
    pub model: Option<sdnet_resolver::model::Sandbox>,
    pub proc: Option<Proc>,
    /// The revision of the last status record this reconciler wrote (a state older than it
    /// has not seen its own start yet).
    pub status_rev: Rev,
    /// The process is frozen (`pause` applied).
    pub paused: bool,
    /// The routing mesh's guard as applied (a task of a service with mesh ports).
    pub guard: Option<String>,
}

impl RealSb {
    pub fn new(rec: &SandboxRec) -> RealSb {
        RealSb {
            name: rec.name.clone(),
            mode: rec.mode,
            adopted: rec.adopt.is_some(),
            ns: None,
            eps: BTreeMap::new(),
            dns: None,
            files: None,
            reservations: Vec::new(),
            lb: None,
            model: None,
            proc: None,
            status_rev: 0,
            paused: false,
            guard: None,
        }
    }
}

/// Descriptors the keeper handed back at start-up, by key (`sb/<id>/netns|udp|tcp`).
pub type Kept = HashMap<String, OwnedFd>;

/// Time spent per step of one realization, logged when it was slow.
struct Steps {
    start: std::time::Instant,
    last: std::time::Instant,
    marks: Vec<(&'static str, f64)>,
}

impl Steps {
    fn new() -> Steps {
        let now = std::time::Instant::now();
        Steps {
            start: now,
            last: now,
            marks: Vec::new(),
        }
    }
    fn mark(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        self.marks
            .push((step, (now - self.last).as_secs_f64() * 1000.0));
        self.last = now;
    }
    fn report(&self, name: &str) {
        let total = self.start.elapsed().as_secs_f64() * 1000.0;
        if total > 100.0 {
            warn!(sandbox = %name, total_ms = total, steps = ?self.marks, "slow sandbox realization");
        } else {
            tracing::debug!(sandbox = %name, total_ms = total, steps = ?self.marks, "realized");
        }
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("worker thread: {e}"))?
}

pub fn kept_key(id: &str, what: &str) -> String {
    format!("sb/{id}/{what}")
}

/// Makes the kernel, files, listeners and process of one sandbox match desired state.
/// `links`: a dump of our host links when this is a full (drift-checking) pass.
pub async fn realize(
    node: &Node,
    d: &Desired,
    id: &str,
    r: &mut RealSb,
    links: Option<&Links>,
    kept: Arc<std::sync::Mutex<Kept>>,
) -> Result<()> {
    let sb = d
        .sandboxes
        .get(id)
        .ok_or_else(|| anyhow!("sandbox {id} is gone"))?
        .rec
        .clone();
    let mut steps = Steps::new();
    let r_out = realize_inner(node, d, id, &sb, r, links, kept, &mut steps).await;
    steps.report(&sb.name);
    r_out
}

#[allow(clippy::too_many_arguments)]
async fn realize_inner(
    node: &Node,
    d: &Desired,
    id: &str,
    sb: &SandboxRec,
    r: &mut RealSb,
    links: Option<&Links>,
    kept: Arc<std::sync::Mutex<Kept>>,
    steps: &mut Steps,
) -> Result<()> {
    let take = |what: &str| {
        kept.lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&kept_key(id, what))
    };
    // The keeper keeps holding the process; the copy it handed back is not needed.
    drop(take("proc"));
    if sb.mode == NetMode::Host {
        write_files(node, d, sb, &[], false, r, links.is_some()).await?;
        return super::process::process(node, d, sb, r).await;
    }

    // The namespace.
    let path = node.cfg.netns_path(&sb.name);
    // A namespace of ours a previous daemon made: it may hold macvlans of endpoints removed
    // while no daemon ran (a veth went with its host end; a macvlan lives only in there).
    let mut inherited = false;
    let need_ns = match &r.ns {
        None => true,
        Some(_) => links.is_some() && !is_netns(&path),
    };
    if need_ns {
        // The namespace we already hold (its mount was removed by hand), else the keeper's.
        let from_keeper = match &r.ns {
            Some(ns) => ns.as_fd().try_clone_to_owned().ok(),
            None => None,
        }
        .or_else(|| take("netns"));
        let fresh = from_keeper.is_none() && sb.adopt.is_none();
        inherited = !fresh && r.ns.is_none() && sb.adopt.is_none();
        let (p, adopt) = (path.clone(), sb.adopt.clone());
        let ns = blocking(move || {
            if is_netns(&p) {
                return Ok(Netns::open(&p)?);
            }
            let ns = match (from_keeper, adopt) {
                (Some(fd), _) => {
                    let src = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
                    let ns = Netns::bind(&src, &p)?;
                    drop(fd);
                    ns
                }
                (None, Some(from)) => Netns::bind(&from, &p)
                    .with_context(|| format!("adopting namespace {}", from.display()))?,
                (None, None) => Netns::create(&p)
                    .with_context(|| format!("creating namespace {}", p.display()))?,
            };
            Ok(ns)
        })
        .await?;
        let ns = Arc::new(ns);
        {
            let (ns, key) = (ns.clone(), kept_key(id, "netns"));
            let keeper = node.keeper.clone();
            blocking(move || Ok(keeper.hold(&key, ns.as_raw_fd())?)).await?;
        }
        if let Some(dir) = &node.cfg.netns_link_dir {
            let link = dir.join(&sb.name);
            if std::fs::read_link(&link).ok().as_deref() != Some(path.as_path()) {
                let _ = std::fs::create_dir_all(dir);
                let _ = std::fs::remove_file(&link);
                if let Err(e) = std::os::unix::fs::symlink(&path, &link) {
                    warn!(link = %link.display(), "cannot link the namespace by name: {e}");
                }
            }
        }
        if fresh && r.ns.is_none() {
            // A namespace we just made has no LB table: nothing to delete there.
            r.lb = Some(BTreeMap::new());
        }
        r.ns = Some(ns);
        steps.mark("namespace");
    }
    let ns = r.ns.clone().ok_or_else(|| anyhow!("no namespace"))?;

    // Endpoints, in attachment order; the first non-internal one carries the default route.
    let eps: Vec<(EndpointRec, Arc<NetworkRec>)> = d
        .endpoints_of(id)
        .into_iter()
        .filter_map(|e| {
            let n = d.networks.get(e.rec.network.as_str())?;
            Some((e.rec.as_ref().clone(), n.rec.clone()))
        })
        .collect();
    let gone: Vec<String> = r
        .eps
        .keys()
        .filter(|n| !eps.iter().any(|(e, _)| &e.network == *n))
        .cloned()
        .collect();
    // (Only while macvlan networks exist: a stray outlives no restart with its network.)
    if inherited
        && d.networks
            .values()
            .any(|n| n.rec.driver == DriverKind::Macvlan)
    {
        let keep: Vec<String> = eps
            .iter()
            .filter(|(_, n)| n.driver == DriverKind::Macvlan)
            .map(|(e, _)| format!("eth{}", e.index))
            .collect();
        crate::daemon::drivers::macvlan::remove_strays(&ns, &keep)
            .await
            .context("removing macvlans of removed endpoints")?;
    }
    for n in gone {
        if let Some((ep, _, net)) = r.eps.remove(&n) {
            node.drivers
                .get(net.driver)
                .detach(&net, &ep, Some(&ns))
                .await
                .with_context(|| format!("detaching from network {}", net.name))?;
        }
    }
    let mut nl: Option<Netlink> = None;
    // On a full pass, endpoints that live inside the sandbox are checked in there too.
    let mut inside: Option<crate::daemon::drivers::Links> = None;
    if links.is_some()
        && eps
            .iter()
            .any(|(_, n)| node.drivers.get(n.driver).inside_sandbox())
    {
        let ns = ns.clone();
        let sb_nl = blocking(move || crate::daemon::drivers::netlink(&ns))
            .await
            .context("netlink in the sandbox")?;
        inside = Some(
            sb_nl
                .links()
                .await
                .context("listing the sandbox's links")?
                .into_iter()
                .map(|l| (l.name.clone(), l))
                .collect(),
        );
        nl = Some(sb_nl);
    }
    let mut default_done = false;
    for (ep, net) in &eps {
        // The default route goes through the first network with a way out: a bridge or a
        // macvlan (an overlay's egress is the gateway bridge).
        let default_route = !default_done
            && !net.internal
            && matches!(net.driver, DriverKind::Bridge | DriverKind::Macvlan);
        default_done |= default_route;
        let driver = node.drivers.get(net.driver);
        let same = r
            .eps
            .get(&ep.network)
            .is_some_and(|(e, dr, _)| e == ep && *dr == default_route);
        let intact = !driver.needs_repair(net, ep)
            && links.is_none_or(|l| driver.endpoint_intact(net, ep, l))
            && (!driver.inside_sandbox()
                || inside
                    .as_ref()
                    .is_none_or(|l| driver.endpoint_intact_inside(ep, l)));
        if same && intact {
            continue;
        }
        if nl.is_none() {
            let ns = ns.clone();
            nl = Some(
                blocking(move || crate::daemon::drivers::netlink(&ns))
                    .await
                    .context("netlink in the sandbox")?,
            );
        }
        let Some(nl) = nl.as_ref() else { continue };
        let sbns = SandboxNs {
            ns: &ns,
            nl,
            ports: &sb.ports,
        };
        driver
            .attach(net, ep, sbns, default_route)
            .await
            .with_context(|| format!("attaching to network {}", net.name))?;
        r.eps
            .insert(ep.network.clone(), (ep.clone(), default_route, net.clone()));
        if net.driver == DriverKind::Cni {
            super::cni::write_back(node, d, ep).await?;
        }
        steps.mark("endpoint");
    }

    // A task published through the routing mesh takes only its ports from the ingress
    // overlay (checked again on every full pass, like the other tables of ours).
    let guard = super::ingress::guard(d, id);
    if guard != r.guard || (links.is_some() && guard.is_some()) {
        let text = guard.clone().unwrap_or_else(super::ingress::delete_guard);
        let ns = ns.clone();
        blocking(move || Ok(nft::apply(&ns, &text)?))
            .await
            .context("applying the ingress guard in the sandbox")?;
        r.guard = guard;
    }

    // Files, then the resolver's listeners.
    let dns = eps.iter().any(|(_, n)| n.dns_on());
    let ep_refs: Vec<&EndpointRec> = eps.iter().map(|(e, _)| e).collect();
    write_files(node, d, sb, &ep_refs, dns, r, links.is_some()).await?;
    steps.mark("files");
    if dns && r.dns.is_none() {
        let (udp, tcp) = match (take("udp"), take("tcp")) {
            (Some(u), Some(t)) => (UdpSocket::from(u), TcpListener::from(t)),
            _ => {
                let ns = ns.clone();
                blocking(move || bind_dns(&ns)).await?
            }
        };
        // Also on sockets handed back by the keeper (made by an older daemon, maybe).
        deep_receive_queue(&udp);
        steps.mark("dns.bind");
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        let udp_port = udp.local_addr()?.port();
        let tcp_port = tcp.local_addr()?.port();
        let sockets = (
            // Copies above 1024, like the sockets themselves (`bind_dns`): two low
            // descriptors per sandbox used up the range libnftables needs by the 500th
            // sandbox, and every nft transaction after that spawned the `nft` binary.
            Arc::new(nft::move_fd_high(OwnedFd::from(udp.try_clone()?))),
            Arc::new(nft::move_fd_high(OwnedFd::from(tcp.try_clone()?))),
        );
        {
            let keeper = node.keeper.clone();
            let (u, t) = (sockets.0.clone(), sockets.1.clone());
            let (ku, kt) = (kept_key(id, "udp"), kept_key(id, "tcp"));
            blocking(move || {
                keeper.hold(&ku, u.as_raw_fd())?;
                keeper.hold(&kt, t.as_raw_fd())?;
                Ok(())
            })
            .await?;
        }
        steps.mark("dns.hold");
        {
            let ns = ns.clone();
            let text = super::firewall::dns_redirect(udp_port, tcp_port);
            blocking(move || Ok(nft::apply(&ns, &text)?))
                .await
                .context("applying the DNS redirect in the sandbox")?;
        }
        steps.mark("dns.nft");
        let idx = node
            .resolver
            .tables
            .view_of(id)
            .context("sandbox has no DNS view")?;
        let sel = ViewSelector::sandbox(idx);
        let udp = tokio::net::UdpSocket::from_std(udp)?;
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        r.dns = Some(DnsListener {
            udp_port,
            tcp_port,
            sockets,
            tasks: vec![
                tokio::spawn(node.resolver.clone().serve_udp(udp, sel.clone())),
                tokio::spawn(node.resolver.clone().serve_tcp(tcp, sel)),
            ],
        });
        node.live.set_dns(id, Some((udp_port, tcp_port)));
        steps.mark("dns");
    } else if !dns && r.dns.is_some() {
        r.dns = None;
        node.live.set_dns(id, None);
        let keeper = node.keeper.clone();
        let ns = ns.clone();
        let key = kept_key(id, "");
        blocking(move || {
            let _ = keeper.drop_prefix(&format!("{key}udp"));
            let _ = keeper.drop_prefix(&format!("{key}tcp"));
            Ok(nft::apply(&ns, &super::firewall::delete_dns_redirect())?)
        })
        .await?;
    } else if dns && links.is_some() {
        // Drift: the redirect table deleted by hand comes back.
        if let Some(l) = &r.dns {
            let ns = ns.clone();
            let text = super::firewall::dns_redirect(l.udp_port, l.tcp_port);
            blocking(move || {
                let tables = nft::list_tables(&ns)?;
                if !tables.iter().any(|(f, n)| f == "ip" && n == "sdnet-dns") {
                    info!("restoring the DNS redirect table");
                    nft::apply(&ns, &text)?;
                }
                Ok(())
            })
            .await?;
        }
    }

    // Sockets the keeper handed back that this sandbox no longer needs.
    let _ = (take("udp"), take("tcp"));

    // Published host ports stay reserved while the sandbox lives.
    let have: Vec<PublishRec> = r.reservations.iter().map(|(p, _)| *p).collect();
    if have != sb.ports {
        r.reservations.clear();
        for p in &sb.ports {
            r.reservations.push((*p, reserve(p)?));
        }
    }
    let p = super::process::process(node, d, sb, r).await;
    steps.mark("process");
    p
}

async fn write_files(
    node: &Node,
    d: &Desired,
    sb: &SandboxRec,
    eps: &[&EndpointRec],
    dns: bool,
    r: &mut RealSb,
    check: bool,
) -> Result<()> {
    let host = node.host_conf();
    let lines = super::legacy_links::hosts_lines(d, sb);
    let want = (
        files::resolv_conf(&host, sb, dns),
        files::hosts(sb, eps, &lines),
    );
    let dir = node.cfg.files_dir(&sb.id);
    if r.files.as_ref() == Some(&want) && (!check || dir.join("hosts").exists()) {
        return Ok(());
    }
    let (cfg, rec, w) = (node.cfg.clone(), sb.clone(), want.clone());
    blocking(move || files::write(&cfg, &rec, &w.0, &w.1)).await?;
    r.files = Some(want);
    Ok(())
}

/// Queries a sandbox's UDP socket may hold while nobody reads it: the socket outlives the
/// daemon (the keeper holds it), so during a restart queries wait in it, and under load a
/// restart takes a second or more (the default ~200 KiB held ~250 queries: a test sending
/// 1,000/s lost ~450 in a 0.8 s gap). A limit, not an allocation: an idle socket costs
/// nothing more. Set past `net.core.rmem_max` when we may (CAP_NET_ADMIN), else up to it.
const UDP_RECEIVE_BUFFER: usize = 2 << 20;

fn deep_receive_queue(udp: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(udp, sockopt::RcvBufForce, &UDP_RECEIVE_BUFFER).is_err()
        && let Err(e) = setsockopt(udp, sockopt::RcvBuf, &UDP_RECEIVE_BUFFER)
    {
        warn!("the DNS socket keeps its default receive buffer: {e}");
    }
}

/// Binds the resolver's sockets on 127.0.0.11 (random ports) inside a sandbox.
fn bind_dns(ns: &Netns) -> Result<(UdpSocket, TcpListener)> {
    let (udp, tcp) = ns
        .run(|| -> std::io::Result<(UdpSocket, TcpListener)> {
            let udp = UdpSocket::bind("127.0.0.11:0")?;
            let tcp = TcpListener::bind("127.0.0.11:0")?;
            Ok((udp, tcp))
        })
        .context("entering the sandbox")?
        .context("binding 127.0.0.11 in the sandbox")?;
    // Thousands of sandboxes mean thousands of sockets: keep them above 1024, away from code
    // that still uses select() (libnftables).
    let udp = UdpSocket::from(nft::move_fd_high(udp.into()));
    let tcp = TcpListener::from(nft::move_fd_high(tcp.into()));
    Ok((udp, tcp))
}

/// Holds a published host port: bound, never listening, so no other program takes it, and
/// while no target exists a TCP connection is refused (reset) instead of hanging.
pub fn reserve(p: &PublishRec) -> Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrStorage, bind, socket};
    let ip = p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let addr = std::net::SocketAddr::new(ip, p.host_port);
    let fam = if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let ty = match p.protocol {
        Protocol::Tcp => SockType::Stream,
        Protocol::Udp => SockType::Datagram,
    };
    let s = socket(fam, ty, SockFlag::SOCK_CLOEXEC, None)?;
    bind(s.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(|e| {
        Failure::Conflict(format!(
            "host port {}:{}/{} is not available: {e}",
            ip, p.host_port, p.protocol
        ))
    })?;
    Ok(nft::move_fd_high(s))
}

/// What is left of a removed sandbox after `teardown`: done in the background.
pub struct Leftovers {
    id: String,
    name: String,
    pub(super) eps: Vec<(EndpointRec, Arc<NetworkRec>)>,
    /// The namespace, held until its links are deleted: a namespace that dies with its veth
    /// pairs in it makes the kernel's clean-up hold the RTNL lock for all of them at once,
    /// which stalls every other link change (seconds, after a burst of removals).
    ns: Option<Arc<Netns>>,
}

/// Removes a sandbox: out of the process table and its namespace gone now (its name already
/// left the resolver); links, files and its log follow in `Leftovers::finish`.
pub async fn teardown(node: &Node, id: &str, mut r: RealSb) -> Leftovers {
    r.dns = None;
    node.live.set_dns(id, None);
    node.supervisor.forget(id);
    if let Some(p) = r.proc {
        supervisor::signal(&p, Signal::SIGKILL);
    }
    let path = node.cfg.netns_path(&r.name);
    let keeper = node.keeper.clone();
    let (ns, adopted, mode, key) = (r.ns.take(), r.adopted, r.mode, kept_key(id, ""));
    let held = ns.clone();
    let res = blocking(move || {
        // The process as the keeper holds it: also when this daemon never learnt its PID (a
        // sandbox removed before a restarted daemon got as far as its process).
        if let Ok(held) = keeper.list(&format!("{key}proc")) {
            for (_, fd) in held {
                supervisor::kill_pidfd(&fd);
            }
        }
        let _ = keeper.drop_prefix(&key);
        if mode == NetMode::Own {
            if adopted && let Some(ns) = &ns {
                // The namespace lives on with its processes: take our tables out of it.
                let _ = nft::apply(ns, &super::firewall::delete_dns_redirect());
                let _ = nft::apply(ns, &sdnet_lb::delete_table());
            }
            // For an adopted namespace this only drops our bind mount.
            Netns::delete(&path)?;
        }
        Ok(())
    })
    .await;
    if let Err(e) = res {
        warn!(sandbox = %r.name, "removing the namespace: {e:#}");
    }
    if let Some(dir) = &node.cfg.netns_link_dir {
        let link = dir.join(&r.name);
        if std::fs::read_link(&link).ok().as_deref() == Some(node.cfg.netns_path(&r.name).as_path())
        {
            let _ = std::fs::remove_file(&link);
        }
    }
    Leftovers {
        id: id.to_string(),
        name: r.name,
        eps: r.eps.into_values().map(|(e, _, n)| (e, n)).collect(),
        ns: held,
    }
}

impl Leftovers {
    pub async fn finish(self, node: Arc<Node>) {
        for (ep, net) in &self.eps {
            // CNI plugins get the namespace on DEL while we still hold it (nothing else
            // needs it: what is inside goes with it).
            let ns = match net.driver {
                DriverKind::Cni => self.ns.as_deref(),
                _ => None,
            };
            if let Err(e) = node.drivers.get(net.driver).detach(net, ep, ns).await {
                warn!(sandbox = %self.name, "removing an endpoint: {e:#}");
            }
        }
        // Now the namespace may go (with nothing but lo left in it).
        drop(self.ns);
        let (cfg, id, name) = (node.cfg.clone(), self.id, self.name);
        let _ = tokio::task::spawn_blocking(move || {
            files::remove(&cfg, &id, &name);
            let _ = std::fs::remove_file(cfg.log_path(&id));
        })
        .await;
    }
}
