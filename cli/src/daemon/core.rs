//! The daemon's state machine. Every API change follows one path: check the request against
//! the desired state, commit the new desired state to the store, then make the kernel and the
//! resolver tables match it (`realize_*`), undoing the commit if the kernel refuses. Start-up
//! runs the same `realize_*` functions on every stored object after removing objects of ours
//! the store does not know — so a crash at any point converges on restart.
//!
//! One async mutex serializes changes; DNS answers never wait for it (the resolver reads its
//! own lock-free snapshot).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use ipnet::IpNet;
use sdnet_netstack::ipam;
use sdnet_netstack::link::Netlink;
use sdnet_netstack::netns::Netns;
use sdnet_resolver::model::{self, Protocol};
use sdnet_resolver::resolvconf::ResolvConf;
use sdnet_resolver::{Change, Resolver, ViewSelector};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::*;
use crate::daemon::firewall::{self, FwNetwork, FwPort};
use crate::daemon::plumb::{self, EndpointNet, Host};
use crate::daemon::store::{
    EndpointRec, NetMode, NetworkRec, Op, ProcRec, SandboxRec, ServiceRec, Store, SubnetRec,
    TaskRec,
};
use crate::daemon::{names, process};
use crate::enter::Enter;

/// A client-facing error with an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

fn bad<T>(msg: impl Into<String>) -> ApiResult<T> {
    Err(ApiError::BadRequest(msg.into()))
}

#[derive(Clone, Debug)]
pub struct Config {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub etc_netns_dir: PathBuf,
    pub netns_link_dir: Option<PathBuf>,
    pub default_bridge_subnet: Option<IpNet>,
}

impl Config {
    fn netns_dir(&self) -> PathBuf {
        self.run_dir.join("netns")
    }
    fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.logs_dir().join(format!("{id}.log"))
    }
    /// A sandbox's resolv.conf and hosts live here (the run dir: tmpfs, no inode churn on
    /// the root filesystem); `<etc-netns-dir>/<name>` is a symlink to it for `ip netns exec`.
    pub(super) fn files_dir(&self, name: &str) -> PathBuf {
        self.run_dir.join("etc").join(name)
    }
    fn files_root(&self) -> PathBuf {
        self.run_dir.join("etc")
    }
    fn etc_link(&self, name: &str) -> PathBuf {
        self.etc_netns_dir.join(name)
    }
}

pub(super) struct Net {
    pub(super) rec: NetworkRec,
    pub(super) ipam: Vec<ipam::Subnet>,
}

pub(super) struct DnsListener {
    udp_port: u16,
    tcp_port: u16,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DnsListener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A socket holding a published host port, so no other program takes it.
pub(super) struct Reservation {
    _socket: std::os::fd::OwnedFd,
}

pub(super) struct Sb {
    pub(super) rec: SandboxRec,
    pub(super) dns: Option<DnsListener>,
    pub(super) reservations: Vec<Reservation>,
    pub(super) watcher: Option<JoinHandle<()>>,
    /// The service VIPs programmed in this sandbox's LB table (None: unknown, reload whole).
    pub(super) lb: Option<BTreeMap<Ipv4Addr, sdnet_lb::VipLb>>,
    /// Health checker of a task.
    pub(super) health: Option<JoinHandle<()>>,
    /// Consecutive failed health checks.
    pub(super) failures: u32,
}

impl Sb {
    pub(super) fn new(rec: SandboxRec) -> Sb {
        Sb {
            rec,
            dns: None,
            reservations: Vec::new(),
            watcher: None,
            lb: None,
            health: None,
            failures: 0,
        }
    }
}

impl Drop for Sb {
    fn drop(&mut self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
        if let Some(h) = &self.health {
            h.abort();
        }
    }
}

pub(super) struct Svc {
    pub(super) rec: ServiceRec,
    /// Sockets holding the service's published host ports (held, never read).
    pub(super) _reservations: Vec<Reservation>,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) nets: BTreeMap<String, Net>,
    pub(super) sbs: BTreeMap<String, Sb>,
    pub(super) svcs: BTreeMap<String, Svc>,
}

/// A process exit seen by a watcher.
pub struct Exit {
    pub sandbox: String,
    pub proc: ProcRec,
    pub code: Option<i32>,
}

/// Things that happen to the daemon's objects outside an API call.
pub enum Event {
    Exit(Exit),
    /// A task's health check result.
    Health {
        sandbox: String,
        ok: bool,
    },
    /// A draining task's delay is over: stop and remove it.
    Drained {
        sandbox: String,
    },
}

pub struct Daemon {
    pub cfg: Config,
    pub(super) store: Store,
    pub resolver: Arc<Resolver>,
    pub(super) host: Host,
    pub(super) inner: Mutex<Inner>,
    pub(super) events: mpsc::UnboundedSender<Event>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

/// A stable 12-hex tag for interface names (veth host ends).
fn tag12(parts: &[&str]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

impl Net {
    fn dns_on(&self) -> bool {
        self.rec.dns && self.rec.driver == Driver::Bridge
    }
    fn v4(&self) -> Option<&SubnetRec> {
        self.rec
            .subnets
            .iter()
            .find(|s| matches!(s.subnet, IpNet::V4(_)))
    }
    fn v6(&self) -> Option<&SubnetRec> {
        self.rec
            .subnets
            .iter()
            .find(|s| matches!(s.subnet, IpNet::V6(_)))
    }
    fn model(&self) -> model::Network {
        model::Network {
            id: self.rec.id.clone(),
            name: self.rec.name.clone(),
            internal: self.rec.internal,
            dns: self.dns_on(),
            upstreams: self.rec.dns_servers.clone(),
            ttl: self.rec.ttl,
            vip_ttl: None,
        }
    }
    fn endpoint_net(&self, default_route: bool) -> EndpointNet<'_> {
        EndpointNet {
            bridge: self.rec.bridge.as_deref().unwrap_or(""),
            prefix_v4: self.v4().map(|s| s.subnet.prefix_len()),
            prefix_v6: self.v6().map(|s| s.subnet.prefix_len()),
            gateway_v4: self.v4().and_then(|s| match s.gateway {
                Some(IpAddr::V4(g)) => Some(g),
                _ => None,
            }),
            gateway_v6: self.v6().and_then(|s| match s.gateway {
                Some(IpAddr::V6(g)) => Some(g),
                _ => None,
            }),
            default_route,
            mtu: self.rec.mtu,
        }
    }
}

/// In DNS and the LB: a plain sandbox always; a task while running, healthy, not draining.
pub(super) fn visible(rec: &SandboxRec) -> bool {
    rec.task
        .as_ref()
        .is_none_or(|t| t.healthy && !t.unhealthy && !t.draining && !rec.exited)
}

pub(super) fn sandbox_model(rec: &SandboxRec) -> model::Sandbox {
    model::Sandbox {
        id: rec.id.clone(),
        name: rec.name.clone(),
        hostname: Some(rec.hostname.clone()),
        endpoints: rec
            .endpoints
            .iter()
            .map(|e| model::Endpoint {
                network: e.network.clone(),
                ipv4: e.ipv4,
                ipv6: e.ipv6,
                aliases: e.aliases.clone(),
            })
            .collect(),
        upstreams: rec.dns.clone(),
        task: rec.task.as_ref().map(|t| model::TaskInfo {
            service: t.service.clone(),
            slot: t.slot,
            healthy: visible(rec),
        }),
    }
}

impl Inner {
    pub(super) fn net_by_ref(&self, r: &str) -> ApiResult<&Net> {
        if let Some(n) = self.nets.get(r) {
            return Ok(n);
        }
        if let Some(n) = self.nets.values().find(|n| n.rec.name == r) {
            return Ok(n);
        }
        let hits: Vec<&Net> = self
            .nets
            .values()
            .filter(|n| n.rec.id.starts_with(r))
            .collect();
        match hits.as_slice() {
            [n] if !r.is_empty() => Ok(n),
            [] | [_] => Err(ApiError::NotFound(format!("network {r} not found"))),
            _ => Err(ApiError::BadRequest(format!(
                "network ID prefix {r} is ambiguous"
            ))),
        }
    }

    fn sb_id(&self, r: &str) -> ApiResult<String> {
        if self.sbs.contains_key(r) {
            return Ok(r.to_string());
        }
        if let Some(s) = self.sbs.values().find(|s| s.rec.name == r) {
            return Ok(s.rec.id.clone());
        }
        let hits: Vec<&String> = self.sbs.keys().filter(|id| id.starts_with(r)).collect();
        match hits.as_slice() {
            [id] if !r.is_empty() => Ok((*id).clone()),
            [] | [_] => Err(ApiError::NotFound(format!("sandbox {r} not found"))),
            _ => Err(ApiError::BadRequest(format!(
                "sandbox ID prefix {r} is ambiguous"
            ))),
        }
    }

    /// Endpoints on a network, as (sandbox name, endpoint).
    fn users(&self, net_id: &str) -> Vec<(&str, &EndpointRec)> {
        self.sbs
            .values()
            .flat_map(|s| {
                s.rec
                    .endpoints
                    .iter()
                    .filter(move |e| e.network == net_id)
                    .map(move |e| (s.rec.name.as_str(), e))
            })
            .collect()
    }

    pub(super) fn firewall(&self) -> String {
        let bridges: Vec<&Net> = self
            .nets
            .values()
            .filter(|n| n.rec.driver == Driver::Bridge && n.rec.bridge.is_some())
            .collect();
        let nets: Vec<FwNetwork<'_>> = bridges
            .iter()
            .map(|n| FwNetwork {
                bridge: n.rec.bridge.as_deref().unwrap_or(""),
                subnets: n.rec.subnets.iter().map(|s| s.subnet.trunc()).collect(),
                internal: n.rec.internal,
            })
            .collect();
        let mut ports = Vec::new();
        for s in self.sbs.values() {
            for p in &s.rec.ports {
                if let Some((net, target)) = self.publish_target(&s.rec, p) {
                    ports.push(FwPort {
                        bridge: net.rec.bridge.as_deref().unwrap_or(""),
                        host_ip: p.host_ip,
                        host_port: p.host_port,
                        targets: vec![target],
                        container_port: p.container_port,
                        protocol: p.protocol,
                    });
                }
            }
        }
        // Published service ports spread over the service's healthy tasks.
        for svc in self.svcs.values() {
            for p in &svc.rec.publish {
                let Some(net) = svc
                    .rec
                    .networks
                    .iter()
                    .filter_map(|n| self.nets.get(&n.network))
                    .find(|n| !n.rec.internal)
                else {
                    continue;
                };
                let targets: Vec<IpAddr> = self
                    .sbs
                    .values()
                    .filter(|s| {
                        s.rec.task.as_ref().is_some_and(|t| t.service == svc.rec.id)
                            && visible(&s.rec)
                    })
                    .filter_map(|s| s.rec.endpoints.iter().find(|e| e.network == net.rec.id))
                    .filter_map(|e| e.ipv4.map(IpAddr::V4))
                    .collect();
                ports.push(FwPort {
                    bridge: net.rec.bridge.as_deref().unwrap_or(""),
                    host_ip: p.host_ip,
                    host_port: p.host_port,
                    targets,
                    container_port: p.container_port,
                    protocol: p.protocol,
                });
            }
        }
        firewall::ruleset(&nets, &ports)
    }

    /// The network and address a published port goes to: the first non-internal bridge
    /// endpoint with an address of the host IP's family.
    fn publish_target(&self, rec: &SandboxRec, p: &PortSpec) -> Option<(&Net, IpAddr)> {
        let want_v6 = matches!(p.host_ip, Some(IpAddr::V6(_)));
        rec.endpoints.iter().find_map(|e| {
            let net = self.nets.get(&e.network)?;
            if net.rec.internal || net.rec.driver != Driver::Bridge {
                return None;
            }
            let ip = if want_v6 {
                e.ipv6.map(IpAddr::V6)
            } else {
                e.ipv4.map(IpAddr::V4)
            }?;
            Some((net, ip))
        })
    }

    /// Who already publishes this host port, if anyone.
    pub(super) fn port_owner(&self, p: &PortSpec) -> Option<String> {
        if let Some(s) = self
            .sbs
            .values()
            .find(|s| s.rec.ports.iter().any(|q| same_binding(p, q)))
        {
            return Some(format!("sandbox {}", s.rec.name));
        }
        self.svcs
            .values()
            .find(|s| s.rec.publish.iter().any(|q| same_binding(p, q)))
            .map(|s| format!("service {}", s.rec.name))
    }

    fn needs_dns(&self, rec: &SandboxRec) -> bool {
        rec.mode == NetMode::Own
            && rec
                .endpoints
                .iter()
                .any(|e| self.nets.get(&e.network).is_some_and(|n| n.dns_on()))
    }

    fn endpoint_info(&self, rec: &SandboxRec, e: &EndpointRec) -> EndpointInfo {
        let net = self.nets.get(&e.network);
        let mut dns_names = Vec::new();
        if net.is_some_and(|n| n.dns_on()) {
            dns_names.push(rec.name.clone());
            dns_names.extend(e.aliases.iter().cloned());
            dns_names.push(short(&rec.id).to_string());
            if rec.hostname != short(&rec.id) {
                dns_names.push(rec.hostname.clone());
            }
        }
        EndpointInfo {
            sandbox: rec.name.clone(),
            network: net
                .map(|n| n.rec.name.clone())
                .unwrap_or_else(|| e.network.clone()),
            interface: e.ifname.clone(),
            ipv4: e.ipv4,
            ipv6: e.ipv6,
            mac: Some(fmt_mac(&e.mac)),
            aliases: e.aliases.clone(),
            dns_names,
        }
    }

    fn net_info(&self, n: &Net) -> NetworkInfo {
        NetworkInfo {
            id: n.rec.id.clone(),
            name: n.rec.name.clone(),
            driver: n.rec.driver,
            scope: "local".into(),
            created: crate::api::rfc3339(n.rec.created),
            subnets: n
                .rec
                .subnets
                .iter()
                .map(|s| SubnetInfo {
                    subnet: s.subnet,
                    ip_range: s.ip_range,
                    gateway: s.gateway,
                    aux: s.aux.clone(),
                })
                .collect(),
            internal: n.rec.internal,
            // One node: sandboxes can join any bridge network at any time.
            attachable: n.rec.attachable || n.rec.driver == Driver::Bridge,
            dns: n.dns_on(),
            mtu: n.rec.mtu.unwrap_or(1500),
            dns_servers: n.rec.dns_servers.clone(),
            ttl: n.rec.ttl,
            bridge: n.rec.bridge.clone(),
            labels: n.rec.labels.clone(),
            endpoints: self
                .sbs
                .values()
                .flat_map(|s| {
                    s.rec
                        .endpoints
                        .iter()
                        .filter(|e| e.network == n.rec.id)
                        .map(|e| self.endpoint_info(&s.rec, e))
                        .collect::<Vec<_>>()
                })
                .collect(),
        }
    }
}

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub(super) fn random_id() -> String {
    let mut b = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    if b == [0u8; 32] {
        // No urandom: fall back on hashing time and PID (IDs only need to be unique here).
        let seed = format!("{:?}{}", SystemTime::now(), std::process::id());
        b[..12].copy_from_slice(tag12(&[&seed]).as_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The hosts file of a sandbox.
fn hosts_file(rec: &SandboxRec) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for e in &rec.endpoints {
        if let Some(ip) = e.ipv4 {
            s.push_str(&format!("{ip}\t{}\n", rec.hostname));
        }
        if let Some(ip) = e.ipv6 {
            s.push_str(&format!("{ip}\t{}\n", rec.hostname));
        }
    }
    s
}

/// resolv.conf for a sandbox without the embedded resolver (only on DNS-less networks):
/// the host's file minus loopback servers (unreachable from the sandbox), as Docker does.
fn legacy_resolv_conf(host: &ResolvConf, dns: &[model::Upstream]) -> String {
    let mut s = String::from("# Generated by sdnet (no embedded DNS on this sandbox's networks)\n");
    let servers: Vec<IpAddr> = if dns.is_empty() {
        host.nameservers
            .iter()
            .copied()
            .filter(|ip| !ip.is_loopback())
            .collect()
    } else {
        dns.iter().map(|u| u.0.ip()).collect()
    };
    for ip in servers {
        s.push_str(&format!("nameserver {ip}\n"));
    }
    if !host.search.is_empty() {
        s.push_str(&format!("search {}\n", host.search.join(" ")));
    }
    if !host.options.is_empty() {
        s.push_str(&format!("options {}\n", host.options.join(" ")));
    }
    s
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    // Write-then-rename: a process reading it never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

impl Daemon {
    pub async fn start(
        cfg: Config,
        store: Store,
        resolver: Arc<Resolver>,
    ) -> Result<(Arc<Daemon>, mpsc::UnboundedReceiver<Event>)> {
        for d in [cfg.netns_dir(), cfg.logs_dir(), cfg.etc_netns_dir.clone()] {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let host = Host::open().await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let d = Arc::new(Daemon {
            cfg,
            store,
            resolver,
            host,
            inner: Mutex::new(Inner::default()),
            events: tx,
        });
        d.reconcile().await?;
        Ok((d, rx))
    }

    fn host_conf(&self) -> Arc<ResolvConf> {
        match self.resolver.forwarder.defaults() {
            sdnet_resolver::DefaultUpstreams::Host(h) => h.conf(),
            sdnet_resolver::DefaultUpstreams::Fixed(_) => Arc::new(ResolvConf::default()),
        }
    }

    /// Start-up: load the store, remove what is ours but unknown, make everything else real.
    async fn reconcile(self: &Arc<Self>) -> Result<()> {
        let (nets, sbs) = self.store.load()?;
        let svcs = self.store.load_services()?;
        let mut inner = self.inner.lock().await;
        for n in nets {
            inner.nets.insert(
                n.id.clone(),
                Net {
                    rec: n,
                    ipam: Vec::new(),
                },
            );
        }
        self.ensure_default_networks(&mut inner).await?;
        for s in sbs {
            inner.sbs.insert(s.id.clone(), Sb::new(s));
        }
        for s in svcs {
            let mut reservations = Vec::new();
            for p in &s.publish {
                match reserve(p) {
                    Ok(r) => reservations.push(r),
                    Err(e) => warn!(service = %s.name, "{e}"),
                }
            }
            inner.svcs.insert(
                s.id.clone(),
                Svc {
                    rec: s,
                    _reservations: reservations,
                },
            );
        }
        // IPAM state is derived: gateways and aux addresses plus every endpoint's address.
        let ids: Vec<String> = inner.nets.keys().cloned().collect();
        for id in ids {
            let ipam = self.build_ipam(&inner, &id)?;
            if let Some(n) = inner.nets.get_mut(&id) {
                n.ipam = ipam;
            }
        }
        self.collect_garbage(&inner).await;
        let net_ids: Vec<String> = inner.nets.keys().cloned().collect();
        for id in &net_ids {
            if let Err(e) = self.realize_network(&inner.nets[id]).await {
                warn!(network = %inner.nets[id].rec.name, "could not restore network: {e:#}");
            }
        }
        self.host.apply_nft(&inner.firewall())?;
        // Names first: every listener started below finds its sandbox's view.
        let state = model::State {
            networks: inner.nets.values().map(|n| n.model()).collect(),
            sandboxes: inner.sbs.values().map(|s| sandbox_model(&s.rec)).collect(),
            services: inner.svcs.values().map(|s| s.model()).collect(),
        };
        self.resolver
            .tables
            .replace_all(&state)
            .map_err(|e| anyhow!("loading names: {e}"))?;
        let sb_ids: Vec<String> = inner.sbs.keys().cloned().collect();
        for id in &sb_ids {
            if let Err(e) = self.realize_sandbox(&mut inner, id).await {
                warn!(sandbox = %inner.sbs[id].rec.name, "could not restore sandbox: {e:#}");
            }
            self.readopt_process(&mut inner, id);
            self.start_health(&mut inner, id);
        }
        // Tasks that died while no daemon watched are replaced, scaled services converge.
        let svc_ids: Vec<String> = inner.svcs.keys().cloned().collect();
        for id in &svc_ids {
            self.converge(&mut inner, id).await;
        }
        info!(
            networks = inner.nets.len(),
            sandboxes = inner.sbs.len(),
            "state restored"
        );
        Ok(())
    }

    async fn ensure_default_networks(&self, inner: &mut Inner) -> Result<()> {
        for (name, driver) in [
            ("bridge", Driver::Bridge),
            ("host", Driver::Host),
            ("none", Driver::None),
        ] {
            if inner.nets.values().any(|n| n.rec.name == name) {
                continue;
            }
            let id = random_id();
            let mut rec = NetworkRec {
                id: id.clone(),
                name: name.into(),
                driver,
                created: now(),
                subnets: Vec::new(),
                internal: false,
                attachable: false,
                dns: false,
                mtu: None,
                dns_servers: Vec::new(),
                ttl: None,
                labels: BTreeMap::new(),
                bridge: None,
                predefined: true,
            };
            if driver == Driver::Bridge {
                let req = IpamRequest {
                    subnet: self.cfg.default_bridge_subnet,
                    ..IpamRequest::default()
                };
                rec.subnets = self
                    .plan_subnets(inner, &[req], false)
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
                rec.bridge = Some(format!("{}{}", plumb::BRIDGE_PREFIX, short(&id)));
            }
            self.store.commit(&[Op::PutNetwork(&rec)])?;
            inner.nets.insert(
                id,
                Net {
                    rec,
                    ipam: Vec::new(),
                },
            );
        }
        Ok(())
    }

    fn build_ipam(&self, inner: &Inner, net_id: &str) -> Result<Vec<ipam::Subnet>> {
        let n = &inner.nets[net_id];
        let mut out = Vec::new();
        for s in &n.rec.subnets {
            let mut sub = ipam::Subnet::new(s.subnet, s.ip_range, s.gateway, s.aux.clone())
                .map_err(|e| anyhow!("network {}: {e}", n.rec.name))?;
            for (_, e) in inner.users(net_id) {
                for ip in [e.ipv4.map(IpAddr::V4), e.ipv6.map(IpAddr::V6)]
                    .into_iter()
                    .flatten()
                {
                    if s.subnet.contains(&ip) {
                        let _ = sub.allocate(Some(ip));
                    }
                }
            }
            for svc in inner.svcs.values() {
                for sn in svc.rec.networks.iter().filter(|n| n.network == net_id) {
                    if let Some(vip) = sn.vip
                        && s.subnet.contains(&IpAddr::V4(vip))
                    {
                        let _ = sub.allocate(Some(IpAddr::V4(vip)));
                    }
                }
            }
            out.push(sub);
        }
        Ok(out)
    }

    /// Removes namespaces, links, files and links-by-name of ours that the store does not know.
    async fn collect_garbage(&self, inner: &Inner) {
        let known_ns: HashSet<PathBuf> = inner.sbs.values().map(|s| s.rec.netns.clone()).collect();
        for p in sdnet_netstack::netns::list_netns(&self.cfg.netns_dir()).unwrap_or_default() {
            if !known_ns.contains(&p) {
                info!(path = %p.display(), "removing unknown namespace of ours");
                let _ = Netns::delete(&p);
            }
        }
        // Plain files left by a crash between creating and mounting.
        if let Ok(rd) = std::fs::read_dir(self.cfg.netns_dir()) {
            for e in rd.flatten() {
                let p = e.path();
                if !known_ns.contains(&p) && !sdnet_netstack::netns::is_netns(&p) {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        let mut known_links: HashSet<String> = inner
            .nets
            .values()
            .filter_map(|n| n.rec.bridge.clone())
            .collect();
        for s in inner.sbs.values() {
            known_links.extend(s.rec.endpoints.iter().map(|e| e.host_if.clone()));
        }
        for l in self.host.our_links().await.unwrap_or_default() {
            if !known_links.contains(&l) {
                info!(link = %l, "removing unknown link of ours");
                let _ = self.host.delete_link(&l).await;
            }
        }
        let known_names: HashSet<&str> = inner.sbs.values().map(|s| s.rec.name.as_str()).collect();
        if let Ok(rd) = std::fs::read_dir(self.cfg.files_root()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !known_names.contains(name.as_str()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        // Links in /etc/netns pointing into our run dir are ours.
        if let Ok(rd) = std::fs::read_dir(&self.cfg.etc_netns_dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(self.cfg.files_root()))
                    && !known_names.contains(name.as_str())
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if let Some(dir) = &self.cfg.netns_link_dir
            && let Ok(rd) = std::fs::read_dir(dir)
        {
            let ours = self.cfg.netns_dir();
            for e in rd.flatten() {
                if let Ok(target) = std::fs::read_link(e.path())
                    && target.starts_with(&ours)
                    && !known_ns.contains(&target)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    async fn realize_network(&self, n: &Net) -> Result<()> {
        if n.rec.driver != Driver::Bridge {
            return Ok(());
        }
        let Some(bridge) = &n.rec.bridge else {
            return Ok(());
        };
        let gws: Vec<IpNet> = n
            .rec
            .subnets
            .iter()
            .filter_map(|s| s.gateway.map(|g| IpNet::new(g, s.subnet.prefix_len())))
            .collect::<std::result::Result<_, _>>()?;
        self.host.ensure_bridge(bridge, &gws, n.rec.mtu).await
    }

    /// Makes a sandbox's kernel state, files and DNS listener match its record.
    async fn realize_sandbox(&self, inner: &mut Inner, id: &str) -> Result<()> {
        let rec = inner.sbs[id].rec.clone();
        if rec.mode == NetMode::Host {
            self.write_files(inner, &rec, false)?;
            return Ok(());
        }
        let ns = if rec.adopted {
            let from = rec.adopted_from.clone().unwrap_or_default();
            plumb::adopt_netns(&from, &rec.netns)?
        } else {
            Netns::create(&rec.netns)
                .with_context(|| format!("creating namespace {}", rec.netns.display()))?
        };
        if let Some(dir) = &self.cfg.netns_link_dir {
            let link = dir.join(&rec.name);
            if std::fs::read_link(&link).ok().as_deref() != Some(rec.netns.as_path()) {
                let _ = std::fs::create_dir_all(dir);
                let _ = std::fs::remove_file(&link);
                if let Err(e) = std::os::unix::fs::symlink(&rec.netns, &link) {
                    warn!(link = %link.display(), "cannot link the namespace by name: {e}");
                }
            }
        }
        let nl = Netlink::connect(&ns)
            .await
            .context("netlink in the sandbox")?;
        let mut default_done = false;
        for e in &rec.endpoints {
            let Some(net) = inner.nets.get(&e.network) else {
                continue;
            };
            let default_route = !default_done && !net.rec.internal;
            default_done |= default_route;
            plumb::attach(&self.host, &ns, &nl, e, &net.endpoint_net(default_route))
                .await
                .with_context(|| format!("attaching to network {}", net.rec.name))?;
        }
        let dns = inner.needs_dns(&rec);
        self.write_files(inner, &rec, dns)?;
        let sb = inner.sbs.get_mut(id).context("sandbox vanished")?;
        if dns && sb.dns.is_none() {
            let (udp, tcp) = plumb::bind_dns(&ns)?;
            let udp_port = udp.local_addr()?.port();
            let tcp_port = tcp.local_addr()?.port();
            plumb::apply_nft_in(&ns, &firewall::dns_redirect(udp_port, tcp_port))?;
            let idx = self
                .resolver
                .tables
                .view_of(id)
                .context("sandbox has no DNS view")?;
            let sel = ViewSelector::sandbox(idx);
            let udp = tokio::net::UdpSocket::from_std(udp)?;
            let tcp = tokio::net::TcpListener::from_std(tcp)?;
            let tasks = vec![
                tokio::spawn(self.resolver.clone().serve_udp(udp, sel.clone())),
                tokio::spawn(self.resolver.clone().serve_tcp(tcp, sel.clone())),
            ];
            sb.dns = Some(DnsListener {
                udp_port,
                tcp_port,
                tasks,
            });
        } else if !dns && sb.dns.is_some() {
            sb.dns = None;
            let _ = plumb::apply_nft_in(&ns, &firewall::delete_dns_redirect());
        }
        // Reserve published host ports (kept open as long as the sandbox lives).
        if sb.reservations.is_empty() {
            for p in &rec.ports {
                sb.reservations
                    .push(reserve(p).map_err(|e| anyhow!("{e}"))?);
            }
        }
        // Service VIPs reachable from here.
        self.sync_lb(inner, id).await;
        Ok(())
    }

    fn write_files(&self, inner: &Inner, rec: &SandboxRec, dns: bool) -> Result<()> {
        let dir = self.cfg.files_dir(&rec.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let link = self.cfg.etc_link(&rec.name);
        if std::fs::read_link(&link).ok().as_deref() != Some(dir.as_path()) {
            let _ = std::fs::create_dir_all(&self.cfg.etc_netns_dir);
            // Only replace a link of ours; a real directory there belongs to someone else.
            if std::fs::read_link(&link).is_ok() {
                let _ = std::fs::remove_file(&link);
            }
            if let Err(e) = std::os::unix::fs::symlink(&dir, &link) {
                warn!(link = %link.display(), "cannot link the sandbox's files for ip netns exec: {e}");
            }
        }
        let host = self.host_conf();
        let resolv = if dns {
            host.for_sandbox(
                "127.0.0.11"
                    .parse()
                    .unwrap_or(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11))),
            )
        } else {
            legacy_resolv_conf(&host, &rec.dns)
        };
        let _ = inner;
        write_file(&dir.join("resolv.conf"), &resolv)?;
        write_file(&dir.join("hosts"), &hosts_file(rec))?;
        Ok(())
    }

    fn readopt_process(self: &Arc<Self>, inner: &mut Inner, id: &str) {
        let Some(sb) = inner.sbs.get_mut(id) else {
            return;
        };
        if sb.rec.exited {
            return;
        }
        match sb.rec.process {
            Some(p) if process::alive(&p) => {
                info!(sandbox = %sb.rec.name, pid = p.pid, "adopting running process");
                sb.watcher = Some(self.watch(id, p));
            }
            Some(p) => {
                // It ended while no daemon was watching: its exit code is lost.
                let _ = self.events.send(Event::Exit(Exit {
                    sandbox: id.to_string(),
                    proc: p,
                    code: None,
                }));
            }
            None => {}
        }
    }

    fn watch(self: &Arc<Self>, id: &str, p: ProcRec) -> JoinHandle<()> {
        let tx = self.events.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let code = process::wait(p).await.unwrap_or(None);
            let _ = tx.send(Event::Exit(Exit {
                sandbox: id,
                proc: p,
                code,
            }));
        })
    }

    /// Handles one event (the daemon's event loop calls this in order).
    pub async fn on_event(self: &Arc<Self>, e: Event) {
        match e {
            Event::Exit(x) => self.on_exit(x).await,
            Event::Health { sandbox, ok } => self.on_health(&sandbox, ok).await,
            Event::Drained { sandbox } => self.on_drained(&sandbox).await,
        }
    }

    /// Records a process exit (removes `--rm` sandboxes, replaces tasks).
    async fn on_exit(self: &Arc<Self>, exit: Exit) {
        let auto_remove = {
            let mut inner = self.inner.lock().await;
            let Some(sb) = inner.sbs.get_mut(&exit.sandbox) else {
                return;
            };
            if sb.rec.process != Some(exit.proc) {
                return; // a stale report
            }
            sb.rec.exited = true;
            sb.rec.exit_code = exit.code;
            sb.rec.finished_at = Some(now());
            sb.watcher = None;
            info!(sandbox = %sb.rec.name, code = ?exit.code, "process exited");
            if let Err(e) = self.store.commit(&[Op::PutSandbox(&sb.rec)]) {
                warn!("recording the exit: {e}");
            }
            if let Some(svc) = sb.rec.task.as_ref().map(|t| t.service.clone()) {
                // A task: out of DNS and the LB now, then replaced as its policy says.
                let id = exit.sandbox.clone();
                self.task_visibility_changed(&mut inner, &id).await;
                self.converge(&mut inner, &svc).await;
                return;
            }
            sb.rec.auto_remove.then(|| sb.rec.id.clone())
        };
        if let Some(id) = auto_remove
            && let Err(e) = self.remove_sandbox(&id, true).await
        {
            warn!("removing --rm sandbox: {e}");
        }
    }

    // ---------------------------------------------------------------- networks

    /// Subnets for a new network: requested ones checked, missing ones picked from the pools.
    async fn plan_subnets(
        &self,
        inner: &Inner,
        reqs: &[IpamRequest],
        ipv6: bool,
    ) -> ApiResult<Vec<SubnetRec>> {
        let taken: Vec<IpNet> = inner
            .nets
            .values()
            .flat_map(|n| n.rec.subnets.iter().map(|s| s.subnet))
            .collect();
        let mut out: Vec<SubnetRec> = Vec::new();
        for r in reqs {
            let subnet = match r.subnet {
                Some(s) => {
                    if s.trunc() != s {
                        return bad(format!(
                            "invalid subnet {s}: host bits are set (did you mean {}?)",
                            s.trunc()
                        ));
                    }
                    for t in taken.iter().chain(out.iter().map(|o| &o.subnet)) {
                        if ipam::overlaps(&s, t) {
                            let owner = inner
                                .nets
                                .values()
                                .find(|n| n.rec.subnets.iter().any(|x| x.subnet == *t))
                                .map(|n| n.rec.name.clone())
                                .unwrap_or_else(|| "this network".into());
                            return Err(ApiError::Conflict(format!(
                                "subnet {s} overlaps with {t} of network {owner}"
                            )));
                        }
                    }
                    s
                }
                None => {
                    let mut reserved = self.host.routes().await;
                    reserved.extend(self.host_conf().nameservers.iter().filter_map(|ip| {
                        IpNet::new(*ip, if ip.is_ipv4() { 32 } else { 128 }).ok()
                    }));
                    let all: Vec<IpNet> = taken
                        .iter()
                        .chain(out.iter().map(|o| &o.subnet))
                        .copied()
                        .collect();
                    ipam::pick_subnet(ipam::Scope::Local, &all, &reserved)
                        .map_err(|e| ApiError::Conflict(e.to_string()))?
                }
            };
            if let Some(r) = r.ip_range
                && r.trunc() != r
            {
                return bad(format!(
                    "invalid ip-range {r}: host bits are set (did you mean {}?)",
                    r.trunc()
                ));
            }
            // Let the allocator check range, gateway and aux against the subnet.
            let gateway = r.gateway.or_else(|| ipam::first_host(&subnet));
            ipam::Subnet::new(subnet, r.ip_range, gateway, r.aux.clone())
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            out.push(SubnetRec {
                subnet,
                ip_range: r.ip_range,
                gateway,
                aux: r.aux.clone(),
            });
        }
        if ipv6 && !out.iter().any(|s| matches!(s.subnet, IpNet::V6(_))) {
            // A unique local /64 derived from a fresh random ID.
            let id = random_id();
            let v: Vec<u16> = (0..3)
                .map(|i| u16::from_str_radix(&id[i * 4..i * 4 + 4], 16).unwrap_or(0))
                .collect();
            let net: IpNet = format!("fd{:02x}:{:x}:{:x}::/64", v[0] & 0xff, v[1], v[2])
                .parse()
                .map_err(|e| ApiError::Internal(anyhow!("ULA subnet: {e}")))?;
            let gateway = ipam::first_host(&net);
            out.push(SubnetRec {
                subnet: net,
                ip_range: None,
                gateway,
                aux: BTreeMap::new(),
            });
        }
        Ok(out)
    }

    pub async fn create_network(&self, req: NetworkCreate) -> ApiResult<NetworkInfo> {
        model::check_object_name("network", &req.name)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let mut inner = self.inner.lock().await;
        if inner.nets.values().any(|n| n.rec.name == req.name) {
            return Err(ApiError::Conflict(format!(
                "network with name {} already exists",
                req.name
            )));
        }
        if req.driver != Driver::Bridge {
            return bad(format!(
                "only one {} network may exist, and it already does",
                req.driver
            ));
        }
        let reqs = if req.ipam.is_empty() {
            vec![IpamRequest::default()]
        } else {
            req.ipam.clone()
        };
        if reqs.iter().filter(|r| r.subnet.is_none()).count() > 1 {
            return bad("--ip-range, --gateway and --aux-address need a --subnet each");
        }
        let subnets = self.plan_subnets(&inner, &reqs, req.ipv6).await?;
        if let Some(m) = req.mtu
            && !(68..=65535).contains(&m)
        {
            return bad(format!("invalid MTU {m}: must be 68-65535"));
        }
        let id = random_id();
        let rec = NetworkRec {
            id: id.clone(),
            name: req.name.clone(),
            driver: Driver::Bridge,
            created: now(),
            subnets,
            internal: req.internal,
            attachable: req.attachable,
            dns: req.dns.unwrap_or(true),
            mtu: req.mtu,
            dns_servers: req.dns_servers.clone(),
            ttl: req.ttl,
            labels: req.labels.clone(),
            bridge: Some(format!("{}{}", plumb::BRIDGE_PREFIX, short(&id))),
            predefined: false,
        };
        self.store
            .commit(&[Op::PutNetwork(&rec)])
            .map_err(anyhow::Error::from)?;
        inner.nets.insert(
            id.clone(),
            Net {
                rec,
                ipam: Vec::new(),
            },
        );
        let ipam = self.build_ipam(&inner, &id);
        let result = match ipam {
            Ok(ipam) => {
                if let Some(n) = inner.nets.get_mut(&id) {
                    n.ipam = ipam;
                }
                let realized = self.realize_network(&inner.nets[&id]).await;
                realized.and_then(|()| self.host.apply_nft(&inner.firewall()))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            // Undo: the kernel refused, so the network must not exist at all.
            let n = inner.nets.remove(&id);
            if let Some(b) = n.as_ref().and_then(|n| n.rec.bridge.clone()) {
                let _ = self.host.delete_link(&b).await;
            }
            let _ = self.host.apply_nft(&inner.firewall());
            let _ = self.store.commit(&[Op::DelNetwork(&id)]);
            return Err(ApiError::Internal(
                e.context(format!("creating network {}", req.name)),
            ));
        }
        self.resolver
            .tables
            .apply([Change::UpsertNetwork(inner.nets[&id].model())])
            .map_err(|e| ApiError::Internal(anyhow!("{e}")))?;
        info!(network = %req.name, "network created");
        Ok(inner.net_info(&inner.nets[&id]))
    }

    pub async fn list_networks(&self) -> Vec<NetworkInfo> {
        let inner = self.inner.lock().await;
        let mut v: Vec<NetworkInfo> = inner.nets.values().map(|n| inner.net_info(n)).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub async fn network(&self, r: &str) -> ApiResult<NetworkInfo> {
        let inner = self.inner.lock().await;
        let n = inner.net_by_ref(r)?;
        Ok(inner.net_info(n))
    }

    pub async fn remove_network(&self, r: &str) -> ApiResult<String> {
        let mut inner = self.inner.lock().await;
        let n = inner.net_by_ref(r)?;
        if n.rec.predefined {
            return Err(ApiError::Conflict(format!(
                "{} is a pre-defined network and cannot be removed",
                n.rec.name
            )));
        }
        let id = n.rec.id.clone();
        let name = n.rec.name.clone();
        let users: Vec<&str> = inner.users(&id).into_iter().map(|(s, _)| s).collect();
        if !users.is_empty() {
            return Err(ApiError::Conflict(format!(
                "network {name} is in use by sandbox(es): {}",
                users.join(", ")
            )));
        }
        self.store
            .commit(&[Op::DelNetwork(&id)])
            .map_err(anyhow::Error::from)?;
        let n = inner.nets.remove(&id);
        self.resolver
            .tables
            .apply([Change::RemoveNetwork(id.clone())])
            .map_err(|e| ApiError::Internal(anyhow!("{e}")))?;
        self.host.apply_nft(&inner.firewall())?;
        if let Some(b) = n.and_then(|n| n.rec.bridge) {
            self.host.delete_link(&b).await?;
        }
        info!(network = %name, "network removed");
        Ok(name)
    }

    pub async fn prune_networks(&self) -> ApiResult<Vec<String>> {
        let candidates: Vec<String> = {
            let inner = self.inner.lock().await;
            inner
                .nets
                .values()
                .filter(|n| !n.rec.predefined && inner.users(&n.rec.id).is_empty())
                .map(|n| n.rec.id.clone())
                .collect()
        };
        let mut removed = Vec::new();
        for id in candidates {
            if let Ok(name) = self.remove_network(&id).await {
                removed.push(name);
            }
        }
        Ok(removed)
    }

    // ---------------------------------------------------------------- sandboxes

    /// Allocates an endpoint on `net` for sandbox `sb_id` (`index` = its ethN number).
    fn plan_endpoint(
        &self,
        inner: &mut Inner,
        sb_id: &str,
        net_id: &str,
        index: usize,
        a: &NetworkAttach,
    ) -> ApiResult<EndpointRec> {
        let net = inner
            .nets
            .get_mut(net_id)
            .ok_or_else(|| ApiError::NotFound(format!("network {net_id} not found")))?;
        for al in &a.aliases {
            model::check_dns_name("alias", al).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        }
        let mut ipv4 = None;
        let mut ipv6 = None;
        for sub in net.ipam.iter_mut() {
            let want: Option<IpAddr> = match sub.net() {
                IpNet::V4(_) => a.ipv4.map(IpAddr::V4),
                IpNet::V6(_) => a.ipv6.map(IpAddr::V6),
            };
            let ip = sub
                .allocate(want)
                .map_err(|e| ApiError::Conflict(format!("network {}: {e}", net.rec.name)))?;
            match ip {
                IpAddr::V4(v4) if ipv4.is_none() => ipv4 = Some(v4),
                IpAddr::V6(v6) if ipv6.is_none() => ipv6 = Some(v6),
                other => {
                    // A second subnet of the same family: keep the first address only.
                    sub.release(other);
                }
            }
        }
        if let Some(want) = a.ipv4
            && ipv4 != Some(want)
        {
            self.release(inner, net_id, ipv4, ipv6);
            return bad(format!(
                "address {want} is not in a subnet of network {}",
                inner.nets[net_id].rec.name
            ));
        }
        if let Some(want) = a.ipv6
            && ipv6 != Some(want)
        {
            self.release(inner, net_id, ipv4, ipv6);
            return bad(format!(
                "address {want} is not in a subnet of network {}",
                inner.nets[net_id].rec.name
            ));
        }
        let mac = match ipv4 {
            Some(v4) => ipam::mac_from_ipv4(v4),
            None => {
                let t = tag12(&[sb_id, net_id]);
                let b = u64::from_str_radix(&t, 16).unwrap_or(0).to_be_bytes();
                [0x02, 0x42, b[4], b[5], b[6], b[7]]
            }
        };
        Ok(EndpointRec {
            network: net_id.to_string(),
            ifname: format!("eth{index}"),
            host_if: format!("{}{}", plumb::VETH_PREFIX, tag12(&[sb_id, net_id])),
            ipv4,
            ipv6,
            mac,
            aliases: a.aliases.clone(),
        })
    }

    fn release(&self, inner: &mut Inner, net_id: &str, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) {
        if let Some(n) = inner.nets.get_mut(net_id) {
            for sub in n.ipam.iter_mut() {
                for ip in [v4.map(IpAddr::V4), v6.map(IpAddr::V6)]
                    .into_iter()
                    .flatten()
                {
                    if sub.net().contains(&ip) {
                        sub.release(ip);
                    }
                }
            }
        }
    }

    pub async fn create_sandbox(self: &Arc<Self>, req: SandboxCreate) -> ApiResult<SandboxInfo> {
        let started = std::time::Instant::now();
        let mut inner = self.inner.lock().await;
        let locked = started.elapsed();
        let id = self.create_sandbox_in(&mut inner, req, None).await?;
        tracing::debug!(
            lock_ms = locked.as_secs_f64() * 1000.0,
            "waited for the lock"
        );
        Ok(self.sb_info(&inner, &id))
    }

    /// Creates a sandbox (or a task, with `task`) with the lock held; returns its ID.
    pub(super) async fn create_sandbox_in(
        self: &Arc<Self>,
        inner: &mut Inner,
        req: SandboxCreate,
        task: Option<TaskRec>,
    ) -> ApiResult<String> {
        let started = std::time::Instant::now();
        let id = random_id();
        let name = match &req.name {
            Some(n) => {
                model::check_object_name("sandbox", n)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                n.clone()
            }
            None => loop {
                let n = names::generate();
                if !inner.sbs.values().any(|s| s.rec.name == n) {
                    break n;
                }
            },
        };
        if inner.sbs.values().any(|s| s.rec.name == name) {
            return Err(ApiError::Conflict(format!(
                "the sandbox name {name} is already in use"
            )));
        }
        let hostname = req
            .hostname
            .clone()
            .unwrap_or_else(|| short(&id).to_string());
        model::check_dns_name("hostname", &hostname)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        for e in &req.env {
            if e.is_empty() || e.starts_with('=') {
                return bad(format!(
                    "invalid environment entry {e:?}: expected KEY=VALUE"
                ));
            }
        }
        // Networks: default bridge; host and none stand alone.
        let attaches = if req.networks.is_empty() {
            vec![NetworkAttach {
                network: "bridge".into(),
                ..NetworkAttach::default()
            }]
        } else {
            req.networks.clone()
        };
        let mut mode = NetMode::Own;
        let mut net_ids = Vec::new();
        for a in &attaches {
            let n = inner.net_by_ref(&a.network)?;
            match n.rec.driver {
                Driver::Host | Driver::None if attaches.len() > 1 => {
                    return Err(ApiError::Conflict(format!(
                        "network {} cannot be combined with other networks",
                        n.rec.name
                    )));
                }
                Driver::Host => mode = NetMode::Host,
                Driver::None => {}
                Driver::Bridge => {
                    if net_ids.contains(&n.rec.id) {
                        return bad(format!("network {} given twice", n.rec.name));
                    }
                    if n.rec.predefined && (!a.aliases.is_empty()) {
                        return bad(
                            "network-scoped aliases are only supported for user-defined networks",
                        );
                    }
                    net_ids.push(n.rec.id.clone());
                }
            }
        }
        if mode == NetMode::Host && (req.netns.is_some() || !req.ports.is_empty()) {
            return bad("--network host shares the daemon's namespace: no --netns, no -p");
        }
        // Ports: no two sandboxes on one host port, and the port must be free on the host.
        for (i, p) in req.ports.iter().enumerate() {
            if req.ports[..i].iter().any(|q| same_binding(p, q)) {
                return bad(format!("port {p} given twice"));
            }
            if let Some(owner) = inner.port_owner(p) {
                return Err(ApiError::Conflict(format!(
                    "host port {p} is already published by {owner}"
                )));
            }
        }
        let adopted_from = match &req.netns {
            Some(p) => {
                if !p.exists() {
                    return bad(format!("namespace {} does not exist", p.display()));
                }
                Some(p.clone())
            }
            None => None,
        };
        let mut endpoints = Vec::new();
        for (i, net_id) in net_ids.iter().enumerate() {
            let a = &attaches.iter().find(|a| {
                inner
                    .net_by_ref(&a.network)
                    .map(|n| &n.rec.id == net_id)
                    .unwrap_or(false)
            });
            let a = a.cloned().unwrap_or_default();
            match self.plan_endpoint(inner, &id, net_id, i, &a) {
                Ok(e) => endpoints.push(e),
                Err(err) => {
                    for e in &endpoints {
                        self.release(inner, &e.network, e.ipv4, e.ipv6);
                    }
                    return Err(err);
                }
            }
        }
        if !req.ports.is_empty()
            && !endpoints
                .iter()
                .any(|e| inner.nets.get(&e.network).is_some_and(|n| !n.rec.internal))
        {
            for e in &endpoints {
                self.release(inner, &e.network, e.ipv4, e.ipv6);
            }
            return bad("published ports need a non-internal bridge network");
        }
        let rec = SandboxRec {
            id: id.clone(),
            name: name.clone(),
            hostname,
            created: now(),
            mode,
            netns: self.cfg.netns_dir().join(&name),
            adopted: adopted_from.is_some(),
            adopted_from,
            endpoints,
            ports: req.ports.clone(),
            dns: req.dns.clone(),
            command: req.command.clone(),
            env: req.env.clone(),
            auto_remove: req.auto_remove,
            process: None,
            exited: false,
            exit_code: None,
            started_at: None,
            finished_at: None,
            task,
        };
        if let Err(e) = self.store.commit(&[Op::PutSandbox(&rec)]) {
            for e in &rec.endpoints {
                self.release(inner, &e.network, e.ipv4, e.ipv6);
            }
            return Err(ApiError::Internal(e.into()));
        }
        let mut sb = Sb::new(rec.clone());
        if !rec.adopted {
            // A namespace we create has no LB table: nothing to delete there.
            sb.lb = Some(BTreeMap::new());
        }
        inner.sbs.insert(id.clone(), sb);
        // Names first: the view must exist when the listener starts answering.
        if let Err(e) = self
            .resolver
            .tables
            .apply([Change::UpsertSandbox(sandbox_model(&rec))])
        {
            self.abort_create(inner, &id).await;
            return Err(ApiError::Internal(anyhow!("{e}")));
        }
        let planned = started.elapsed();
        let realized = async {
            self.realize_sandbox(inner, &id).await?;
            if !rec.ports.is_empty() {
                self.host.apply_nft(&inner.firewall())?;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = realized {
            self.abort_create(inner, &id).await;
            return Err(ApiError::Internal(
                e.context(format!("creating sandbox {name}")),
            ));
        }
        if !rec.command.is_empty()
            && let Err(e) = self.start_process(inner, &id)
        {
            self.abort_create(inner, &id).await;
            return Err(ApiError::BadRequest(format!(
                "starting {:?}: {e:#}",
                rec.command
            )));
        }
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        info!(
            sandbox = %name,
            total_ms = ms(started.elapsed()),
            plan_store_names_ms = ms(planned),
            "sandbox created"
        );
        Ok(id)
    }

    async fn abort_create(&self, inner: &mut Inner, id: &str) {
        let _ = self
            .resolver
            .tables
            .apply([Change::RemoveSandbox(id.to_string())]);
        if let Some(sb) = inner.sbs.remove(id) {
            self.unrealize(inner, &sb).await;
            for e in &sb.rec.endpoints {
                self.release(inner, &e.network, e.ipv4, e.ipv6);
            }
            if !sb.rec.ports.is_empty() {
                let _ = self.host.apply_nft(&inner.firewall());
            }
        }
        let _ = self.store.commit(&[Op::DelSandbox(id)]);
        // A command that failed to start leaves no empty log behind.
        let _ = std::fs::remove_file(self.cfg.log_path(id));
    }

    fn start_process(self: &Arc<Self>, inner: &mut Inner, id: &str) -> Result<()> {
        let sb = inner.sbs.get(id).context("sandbox vanished")?;
        let rec = &sb.rec;
        let dir = self.cfg.files_dir(&rec.name);
        let resolv = dir.join("resolv.conf");
        let hosts = dir.join("hosts");
        let netns = (rec.mode == NetMode::Own).then_some(rec.netns.as_path());
        let enter = Enter::prepare(
            netns,
            &rec.hostname,
            &[
                (&resolv, Path::new("/etc/resolv.conf")),
                (&hosts, Path::new("/etc/hosts")),
            ],
        )?;
        let p = process::spawn(enter, &rec.command, &rec.env, &self.cfg.log_path(&rec.id))?;
        let watcher = self.watch(id, p);
        let sb = inner.sbs.get_mut(id).context("sandbox vanished")?;
        sb.rec.process = Some(p);
        sb.rec.exited = false;
        sb.rec.exit_code = None;
        sb.rec.started_at = Some(now());
        sb.rec.finished_at = None;
        sb.watcher = Some(watcher);
        self.store.commit(&[Op::PutSandbox(&sb.rec)])?;
        Ok(())
    }

    /// Kernel teardown of a sandbox that is no longer in the tables.
    async fn unrealize(&self, inner: &Inner, sb: &Sb) {
        let rec = &sb.rec;
        for e in &rec.endpoints {
            let _ = self.host.delete_link(&e.host_if).await;
        }
        if rec.mode == NetMode::Own {
            if rec.adopted
                && let Ok(ns) = Netns::open(&rec.netns)
            {
                let _ = plumb::apply_nft_in(&ns, &firewall::delete_dns_redirect());
            }
            // For an adopted namespace this only drops our bind mount; the namespace lives on
            // with its processes.
            let _ = Netns::delete(&rec.netns);
        }
        if let Some(dir) = &self.cfg.netns_link_dir {
            let link = dir.join(&rec.name);
            if std::fs::read_link(&link).ok().as_deref() == Some(rec.netns.as_path()) {
                let _ = std::fs::remove_file(&link);
            }
        }
        let files = self.cfg.files_dir(&rec.name);
        let link = self.cfg.etc_link(&rec.name);
        if std::fs::read_link(&link).ok().as_deref() == Some(files.as_path()) {
            let _ = std::fs::remove_file(&link);
        }
        let _ = std::fs::remove_dir_all(&files);
        let _ = inner;
    }

    pub async fn remove_sandbox(self: &Arc<Self>, r: &str, force: bool) -> ApiResult<String> {
        let mut inner = self.inner.lock().await;
        let id = inner.sb_id(r)?;
        let name = self.remove_sandbox_in(&mut inner, &id, force).await?;
        // Removing a task by hand: its service starts a replacement.
        let svcs: Vec<String> = inner.svcs.keys().cloned().collect();
        for s in svcs {
            self.converge(&mut inner, &s).await;
        }
        Ok(name)
    }

    /// Removes a sandbox with the lock held.
    pub(super) async fn remove_sandbox_in(
        self: &Arc<Self>,
        inner: &mut Inner,
        id: &str,
        force: bool,
    ) -> ApiResult<String> {
        let id = id.to_string();
        let sb = &inner.sbs[&id];
        let running = sb
            .rec
            .process
            .is_some_and(|p| !sb.rec.exited && process::alive(&p));
        if running && !force {
            return Err(ApiError::Conflict(format!(
                "sandbox {} has a running process: stop it or use -f",
                sb.rec.name
            )));
        }
        if let Some(p) = sb.rec.process
            && running
        {
            process::signal(&p, libc::SIGKILL);
        }
        // Out of DNS first, then out of the kernel.
        self.resolver
            .tables
            .apply([Change::RemoveSandbox(id.clone())])
            .map_err(|e| ApiError::Internal(anyhow!("{e}")))?;
        self.store
            .commit(&[Op::DelSandbox(&id)])
            .map_err(anyhow::Error::from)?;
        let sb = inner.sbs.remove(&id).context("sandbox vanished")?;
        for e in &sb.rec.endpoints {
            self.release(inner, &e.network, e.ipv4, e.ipv6);
        }
        if !sb.rec.ports.is_empty() {
            self.host.apply_nft(&inner.firewall())?;
        }
        if sb.rec.task.is_some() {
            // Its address leaves every LB that had it.
            self.sync_lb_all(inner).await;
        }
        self.unrealize(inner, &sb).await;
        let _ = std::fs::remove_file(self.cfg.log_path(&id));
        info!(sandbox = %sb.rec.name, "sandbox removed");
        Ok(sb.rec.name.clone())
    }

    pub async fn sandboxes(&self, all: bool) -> Vec<SandboxInfo> {
        let inner = self.inner.lock().await;
        let mut v: Vec<SandboxInfo> = inner
            .sbs
            .keys()
            .map(|id| self.sb_info(&inner, id))
            .filter(|s| all || s.status == SandboxStatus::Running)
            .collect();
        v.sort_by(|a, b| b.created.cmp(&a.created).then(a.name.cmp(&b.name)));
        v
    }

    pub async fn sandbox(&self, r: &str) -> ApiResult<SandboxInfo> {
        let inner = self.inner.lock().await;
        let id = inner.sb_id(r)?;
        Ok(self.sb_info(&inner, &id))
    }

    pub async fn exec_info(&self, r: &str) -> ApiResult<ExecInfo> {
        let inner = self.inner.lock().await;
        let id = inner.sb_id(r)?;
        let rec = &inner.sbs[&id].rec;
        let dir = self.cfg.files_dir(&rec.name);
        Ok(ExecInfo {
            daemon_pid: std::process::id(),
            netns: if rec.mode == NetMode::Host {
                PathBuf::new()
            } else {
                rec.netns.clone()
            },
            hostname: rec.hostname.clone(),
            resolv_conf: Some(dir.join("resolv.conf")),
            hosts_file: Some(dir.join("hosts")),
        })
    }

    pub async fn log_file(&self, r: &str) -> ApiResult<(PathBuf, bool)> {
        let inner = self.inner.lock().await;
        let id = inner.sb_id(r)?;
        let sb = &inner.sbs[&id];
        let running = sb.rec.process.is_some() && !sb.rec.exited;
        Ok((self.cfg.log_path(&id), running))
    }

    fn sb_info(&self, inner: &Inner, id: &str) -> SandboxInfo {
        let sb = &inner.sbs[id];
        let rec = &sb.rec;
        let dir = self.cfg.files_dir(&rec.name);
        SandboxInfo {
            id: rec.id.clone(),
            name: rec.name.clone(),
            hostname: rec.hostname.clone(),
            created: crate::api::rfc3339(rec.created),
            started_at: rec.started_at.map(crate::api::rfc3339),
            finished_at: rec.finished_at.map(crate::api::rfc3339),
            status: if rec.exited {
                SandboxStatus::Exited
            } else {
                SandboxStatus::Running
            },
            netns: rec.netns.clone(),
            adopted: rec.adopted,
            endpoints: rec
                .endpoints
                .iter()
                .map(|e| inner.endpoint_info(rec, e))
                .collect(),
            ports: rec.ports.clone(),
            dns: rec.dns.clone(),
            command: rec.command.clone(),
            pid: rec.process.filter(|_| !rec.exited).map(|p| p.pid),
            exit_code: rec.exit_code,
            resolv_conf: Some(dir.join("resolv.conf")),
            hosts_file: Some(dir.join("hosts")),
            dns_ports: sb.dns.as_ref().map(|d| (d.udp_port, d.tcp_port)),
        }
    }

    // ---------------------------------------------------------------- connect

    pub async fn connect(
        self: &Arc<Self>,
        net_ref: &str,
        req: ConnectRequest,
    ) -> ApiResult<SandboxInfo> {
        let mut inner = self.inner.lock().await;
        let net = inner.net_by_ref(net_ref)?;
        let net_id = net.rec.id.clone();
        let net_name = net.rec.name.clone();
        if net.rec.driver != Driver::Bridge {
            return bad(format!(
                "cannot connect to network {net_name} (driver {})",
                net.rec.driver
            ));
        }
        let id = inner.sb_id(&req.sandbox)?;
        let rec = inner.sbs[&id].rec.clone();
        if rec.mode == NetMode::Host {
            return bad(format!(
                "sandbox {} uses the host network and cannot be connected",
                rec.name
            ));
        }
        if rec.endpoints.iter().any(|e| e.network == net_id) {
            return Err(ApiError::Conflict(format!(
                "sandbox {} is already connected to network {net_name}",
                rec.name
            )));
        }
        let index = (0..)
            .find(|i| !rec.endpoints.iter().any(|e| e.ifname == format!("eth{i}")))
            .unwrap_or(0);
        let attach = NetworkAttach {
            network: net_id.clone(),
            aliases: req.aliases.clone(),
            ipv4: req.ipv4,
            ipv6: req.ipv6,
        };
        let ep = self.plan_endpoint(&mut inner, &id, &net_id, index, &attach)?;
        let mut new = rec.clone();
        new.endpoints.push(ep.clone());
        if let Err(e) = self.store.commit(&[Op::PutSandbox(&new)]) {
            self.release(&mut inner, &net_id, ep.ipv4, ep.ipv6);
            return Err(ApiError::Internal(e.into()));
        }
        inner.sbs.get_mut(&id).context("sandbox vanished")?.rec = new.clone();
        let res = async {
            self.realize_sandbox(&mut inner, &id).await?;
            self.resolver
                .tables
                .apply([Change::UpsertSandbox(sandbox_model(&new))])
                .map_err(|e| anyhow!("{e}"))?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = res {
            let _ = self.host.delete_link(&ep.host_if).await;
            self.release(&mut inner, &net_id, ep.ipv4, ep.ipv6);
            if let Some(sb) = inner.sbs.get_mut(&id) {
                sb.rec = rec.clone();
            }
            let _ = self.store.commit(&[Op::PutSandbox(&rec)]);
            let _ = self
                .resolver
                .tables
                .apply([Change::UpsertSandbox(sandbox_model(&rec))]);
            return Err(ApiError::Internal(
                e.context(format!("connecting to {net_name}")),
            ));
        }
        info!(sandbox = %rec.name, network = %net_name, "connected");
        Ok(self.sb_info(&inner, &id))
    }

    pub async fn disconnect(
        self: &Arc<Self>,
        net_ref: &str,
        req: DisconnectRequest,
    ) -> ApiResult<SandboxInfo> {
        let mut inner = self.inner.lock().await;
        let net = inner.net_by_ref(net_ref)?;
        let net_id = net.rec.id.clone();
        let net_name = net.rec.name.clone();
        let id = inner.sb_id(&req.sandbox)?;
        let rec = inner.sbs[&id].rec.clone();
        let Some(ep) = rec.endpoints.iter().find(|e| e.network == net_id).cloned() else {
            return Err(ApiError::NotFound(format!(
                "sandbox {} is not connected to network {net_name}",
                rec.name
            )));
        };
        let mut new = rec.clone();
        new.endpoints.retain(|e| e.network != net_id);
        // Ports published through this network go with it.
        // DNS first: the name is gone before the interface is.
        self.resolver
            .tables
            .apply([Change::UpsertSandbox(sandbox_model(&new))])
            .map_err(|e| ApiError::Internal(anyhow!("{e}")))?;
        self.store
            .commit(&[Op::PutSandbox(&new)])
            .map_err(anyhow::Error::from)?;
        inner.sbs.get_mut(&id).context("sandbox vanished")?.rec = new;
        self.host.delete_link(&ep.host_if).await?;
        self.release(&mut inner, &net_id, ep.ipv4, ep.ipv6);
        if !rec.ports.is_empty() {
            self.host.apply_nft(&inner.firewall())?;
        }
        // The resolver stays if other DNS networks remain; files reflect the new endpoints.
        self.realize_sandbox(&mut inner, &id).await?;
        info!(sandbox = %rec.name, network = %net_name, "disconnected");
        Ok(self.sb_info(&inner, &id))
    }

    // ---------------------------------------------------------------- cleanup

    /// Removes every kernel object and file of ours (store untouched) — `daemon --cleanup`.
    pub async fn cleanup_everything(cfg: &Config) -> Result<()> {
        let host = Host::open().await?;
        for p in sdnet_netstack::netns::list_netns(&cfg.netns_dir()).unwrap_or_default() {
            let _ = Netns::delete(&p);
        }
        if let Ok(rd) = std::fs::read_dir(cfg.netns_dir()) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        for l in host.our_links().await? {
            let _ = host.delete_link(&l).await;
        }
        let _ = host.apply_nft(&firewall::delete_ruleset());
        if let Ok(rd) = std::fs::read_dir(&cfg.etc_netns_dir) {
            for e in rd.flatten() {
                if std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(cfg.files_root())) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir_all(cfg.files_root());
        if let Some(dir) = &cfg.netns_link_dir
            && let Ok(rd) = std::fs::read_dir(dir)
        {
            for e in rd.flatten() {
                if std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(cfg.netns_dir())) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    pub async fn info(&self) -> DaemonInfo {
        let inner = self.inner.lock().await;
        DaemonInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            state_dir: self.cfg.state_dir.clone(),
            run_dir: self.cfg.run_dir.clone(),
            networks: inner.nets.len(),
            sandboxes: inner.sbs.len(),
        }
    }

    /// The view a `dns query --from` asks with.
    pub async fn view_for(
        &self,
        from: Option<&str>,
    ) -> ApiResult<Option<Arc<sdnet_resolver::table::View>>> {
        let snap = self.resolver.tables.snapshot();
        match from {
            None => Ok(Some(snap.anonymous().clone())),
            Some(r) => {
                let inner = self.inner.lock().await;
                let id = inner.sb_id(r)?;
                let idx = self.resolver.tables.view_of(&id);
                Ok(idx.and_then(|i| snap.view(i).cloned()))
            }
        }
    }
}

/// Same host binding (address, port, protocol): two of them cannot coexist.
pub(super) fn same_binding(a: &PortSpec, b: &PortSpec) -> bool {
    a.host_port == b.host_port
        && a.protocol == b.protocol
        && match (a.host_ip, b.host_ip) {
            (None, _) | (_, None) => true,
            (Some(x), Some(y)) => x == y || x.is_unspecified() || y.is_unspecified(),
        }
}

pub(super) fn reserve(p: &PortSpec) -> std::result::Result<Reservation, String> {
    let ip = p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let addr = std::net::SocketAddr::new(ip, p.host_port);
    let r = match p.protocol {
        // Bound, never accepting: the DNAT rule takes the traffic before any socket sees it.
        Protocol::Tcp => std::net::TcpListener::bind(addr).map(std::os::fd::OwnedFd::from),
        Protocol::Udp => std::net::UdpSocket::bind(addr).map(std::os::fd::OwnedFd::from),
    }
    .map(|s| Reservation { _socket: s });
    r.map_err(|e| format!("host port {p} is not available: {e}"))
}
