//! Network drivers: how a network and a sandbox's endpoint on it become kernel objects. The
//! reconciler calls a driver with desired state; a driver never reads or writes the store and
//! knows nothing about DNS. Every call is idempotent: it completes what exists, creates what is
//! missing and tolerates what is already there.

pub mod bridge;
pub mod cni;
pub mod endpoint;
pub mod macvlan;
pub mod overlay;

use std::collections::HashMap;

use anyhow::{Context, Result};
use async_trait::async_trait;
use ipnet::IpNet;
use sdnet_netstack::link::{LinkInfo, Netlink};
use sdnet_netstack::netns::Netns;
use sdnet_netstack::nft;

use crate::daemon::config::our_link_info;
use crate::daemon::store::schema::{DriverKind, EndpointRec, NetworkRec, PublishRec};

/// The runtime that drives every netlink connection of the daemon. The kernel does a
/// request's work inside `sendmsg` (a veth waits for an RCU grace period there), so netlink
/// I/O stays off the workers that answer the API and serve DNS.
pub fn netlink_runtime() -> Result<tokio::runtime::Handle> {
    use std::sync::OnceLock;
    static RT: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("netlink")
            .enable_all()
            .build()
    });
    match rt {
        Ok(rt) => Ok(rt.handle().clone()),
        Err(e) => Err(anyhow::anyhow!("starting the netlink runtime: {e}")),
    }
}

/// Connects netlink inside a namespace, driven by [`netlink_runtime`].
pub fn netlink(ns: &Netns) -> Result<Netlink> {
    Ok(Netlink::connect_on(ns, netlink_runtime()?)?)
}

/// The daemon's own ("host") namespace: bridges, veth host ends, the firewall table.
pub struct Host {
    pub ns: Netns,
    pub nl: Netlink,
}

impl Host {
    pub async fn open() -> Result<Host> {
        let ns = Netns::current().context("opening the daemon's network namespace")?;
        let nl = netlink(&ns).context("connecting to netlink")?;
        Ok(Host { ns, nl })
    }

    pub async fn delete_link(&self, name: &str) -> Result<()> {
        self.nl
            .delete_link(name)
            .await
            .with_context(|| format!("deleting link {name}"))
    }

    /// Links of ours in the daemon's namespace (by derived name or owner alias), by name.
    pub async fn our_links(&self) -> Result<HashMap<String, LinkInfo>> {
        Ok(self
            .links()
            .await?
            .into_iter()
            .filter(|(_, l)| our_link_info(l))
            .collect())
    }

    /// Every link of the daemon's namespace, by name (ours and the ones drivers use as they
    /// are: an existing bridge, a macvlan parent).
    pub async fn links(&self) -> Result<HashMap<String, LinkInfo>> {
        Ok(self
            .nl
            .links()
            .await?
            .into_iter()
            .map(|l| (l.name.clone(), l))
            .collect())
    }

    pub fn apply_nft(&self, text: &str) -> Result<()> {
        nft::apply(&self.ns, text).context("applying the firewall table")
    }

    /// Prefixes routed in the daemon's namespace (IPAM must not hand them out).
    pub async fn routes(&self) -> Vec<IpNet> {
        self.nl.routes().await.unwrap_or_default()
    }
}

/// A blocking sysctl write, off the runtime's workers.
pub(crate) async fn set_sysctl(ns: &Netns, key: String, value: &'static str) -> Result<()> {
    let ns = ns.try_clone()?;
    tokio::task::spawn_blocking(move || sdnet_netstack::sysctl::set(&ns, &key, value))
        .await
        .context("sysctl thread")??;
    Ok(())
}

/// A sandbox's namespace, as a driver needs it.
pub struct SandboxNs<'a> {
    pub ns: &'a Netns,
    pub nl: &'a Netlink,
    /// The sandbox's published ports (a CNI portmap plugin maps them).
    pub ports: &'a [PublishRec],
}

/// Links of the daemon's namespace at one moment (one netlink dump per resync).
pub type Links = HashMap<String, LinkInfo>;

/// An endpoint of another node on a network, as the data path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub mac: [u8; 6],
    pub ips: Vec<std::net::IpAddr>,
    /// The other node's tunnel endpoint.
    pub vtep: std::net::IpAddr,
}

#[async_trait]
pub trait NetworkDriver: Send + Sync {
    /// Creates or repairs the network's shared objects (a bridge, say).
    async fn ensure_network(&self, net: &NetworkRec) -> Result<()>;
    /// Removes them (nothing there is fine).
    async fn remove_network(&self, net: &NetworkRec) -> Result<()>;
    /// Creates or repairs one endpoint; `default_route`: it carries the sandbox's default route.
    async fn attach(
        &self,
        net: &NetworkRec,
        ep: &EndpointRec,
        sb: SandboxNs<'_>,
        default_route: bool,
    ) -> Result<()>;
    /// Removes an endpoint's objects. `sandbox`: the sandbox's namespace while it lives on
    /// (a disconnect); None when it goes away, and what is inside goes with it.
    async fn detach(
        &self,
        net: &NetworkRec,
        ep: &EndpointRec,
        sandbox: Option<&Netns>,
    ) -> Result<()>;
    /// Cheap drift check against a dump of the namespace's links: false = call
    /// `ensure_network` again.
    fn network_intact(&self, net: &NetworkRec, links: &Links) -> bool;
    /// Same for an endpoint: false = call `attach` again.
    fn endpoint_intact(&self, net: &NetworkRec, ep: &EndpointRec, links: &Links) -> bool;
    /// Whether an endpoint's own link lives inside the sandbox (a macvlan): then the drift
    /// check also asks [`NetworkDriver::endpoint_intact_inside`] with a dump of the
    /// sandbox's links (made only on full passes, and only for sandboxes that need it).
    fn inside_sandbox(&self) -> bool {
        false
    }
    /// The drift check against the sandbox's links: false = call `attach` again.
    fn endpoint_intact_inside(&self, _ep: &EndpointRec, _sandbox_links: &Links) -> bool {
        true
    }
    /// The driver found the endpoint broken on its own (a CNI CHECK that failed, run beside
    /// the reconciler): true = call `attach` again, which repairs it. Asked on every round,
    /// so it must be cheap.
    fn needs_repair(&self, _net: &NetworkRec, _ep: &EndpointRec) -> bool {
        false
    }
    /// A network across nodes: how many endpoints this node has on it, and every other
    /// node's. Single-node drivers have nothing to do.
    async fn sync_peers(&self, _net: &NetworkRec, _local: usize, _peers: &[Peer]) -> Result<()> {
        Ok(())
    }
}

/// `host` and `none`: nothing of their own in the kernel.
pub struct NullDriver;

#[async_trait]
impl NetworkDriver for NullDriver {
    async fn ensure_network(&self, _: &NetworkRec) -> Result<()> {
        Ok(())
    }
    async fn remove_network(&self, _: &NetworkRec) -> Result<()> {
        Ok(())
    }
    async fn attach(
        &self,
        _: &NetworkRec,
        _: &EndpointRec,
        _: SandboxNs<'_>,
        _: bool,
    ) -> Result<()> {
        Ok(())
    }
    async fn detach(&self, _: &NetworkRec, _: &EndpointRec, _: Option<&Netns>) -> Result<()> {
        Ok(())
    }
    fn network_intact(&self, _: &NetworkRec, _: &Links) -> bool {
        true
    }
    fn endpoint_intact(&self, _: &NetworkRec, _: &EndpointRec, _: &Links) -> bool {
        true
    }
}

/// Every driver this node has, by kind.
pub struct Drivers {
    pub bridge: bridge::BridgeDriver,
    pub null: NullDriver,
    pub macvlan: macvlan::MacvlanDriver,
    pub cni: cni::CniDriver,
    /// Only on a node of a cluster.
    pub overlay: Option<overlay::OverlayDriver>,
}

impl Drivers {
    pub fn get(&self, kind: DriverKind) -> &dyn NetworkDriver {
        match kind {
            DriverKind::Bridge => &self.bridge,
            DriverKind::Overlay => match &self.overlay {
                Some(o) => o,
                None => &self.null,
            },
            DriverKind::Macvlan => &self.macvlan,
            DriverKind::Cni => &self.cni,
            DriverKind::Host | DriverKind::None => &self.null,
        }
    }
}
