//! The overlay driver: a network across the nodes of a cluster, Docker's L2 model over VXLAN
//! (research/plumbing.md §1.2). Per overlay network with local endpoints, a namespace of its
//! own (`<run-dir>/ov/<net id12>`) holds `br0` — the gateway address on it, the same on every
//! node — and the VXLAN device (made in the node's namespace, so its socket stays there and
//! uses the node's routes, then moved in), `nolearning`, MTU = underlay − 50. A sandbox's
//! endpoint is a veth pair between that namespace (on `br0`) and the sandbox. Every remote
//! endpoint gets a permanent neighbour entry and two static FDB entries — the VXLAN device's
//! (where to tunnel to) and the bridge's (so it never learns a stale location) — written with
//! `replace`, so programming them again changes nothing. The namespace goes with the last
//! local endpoint.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use ipnet::IpNet;
use sdnet_netstack::link::Netlink;
use sdnet_netstack::netns::Netns;
use sdnet_netstack::sysctl;
use tracing::{debug, info};

use super::{Host, Links, NetworkDriver, Peer, SandboxNs, netlink};
use crate::daemon::config::{short, veth_name};
use crate::daemon::keeper::Keeper;
use crate::daemon::store::schema::{EndpointRec, NetworkRec};

/// VXLAN's overhead over an IPv4 underlay.
const ENCAP: u32 = 50;

struct Overlay {
    /// Keeps the namespace alive while we use it.
    _ns: Arc<Netns>,
    nl: Netlink,
    vxlan: u32,
    /// Remote MAC → (its IPv4/IPv6 addresses, its node's tunnel endpoint), as programmed.
    peers: BTreeMap<[u8; 6], (Vec<IpAddr>, IpAddr)>,
}

pub struct OverlayDriver {
    pub host: Arc<Host>,
    /// Where the per-network namespaces are kept.
    pub dir: PathBuf,
    /// This node's tunnel endpoint and the cluster's VXLAN port.
    pub local: IpAddr,
    pub port: u16,
    pub keeper: Arc<Keeper>,
    nets: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Overlay>>>>>,
    /// Namespaces the keeper handed back at start (`ov/<net id12>/netns`): a restarted daemon
    /// takes up the very same data path (its VXLAN device holds the VNI on the node).
    kept: Mutex<HashMap<String, std::os::fd::OwnedFd>>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("worker thread: {e}"))?
}

impl OverlayDriver {
    pub fn new(
        host: Arc<Host>,
        dir: PathBuf,
        local: IpAddr,
        port: u16,
        keeper: Arc<Keeper>,
        kept: HashMap<String, std::os::fd::OwnedFd>,
    ) -> Self {
        OverlayDriver {
            host,
            dir,
            local,
            port,
            keeper,
            nets: Mutex::new(HashMap::new()),
            kept: Mutex::new(kept),
        }
    }

    fn slot(&self, net: &str) -> Arc<tokio::sync::Mutex<Option<Overlay>>> {
        self.nets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(net.to_string())
            .or_default()
            .clone()
    }

    fn path(&self, net: &NetworkRec) -> PathBuf {
        self.dir.join(short(&net.id))
    }

    fn vxlan_name(net: &NetworkRec) -> Result<String> {
        let vni = net
            .vni
            .ok_or_else(|| anyhow!("overlay network {} has no VNI", net.name))?;
        Ok(format!("sdx{vni:06x}"))
    }

    /// The MTU of the underlay: the link that holds our tunnel address.
    async fn underlay_mtu(&self) -> u32 {
        let links = self.host.nl.links().await.unwrap_or_default();
        for l in links {
            if let Ok(addrs) = self.host.nl.addresses(l.index).await
                && addrs.iter().any(|a| a.addr() == self.local)
            {
                return l.mtu.unwrap_or(1500);
            }
        }
        1500
    }

    /// The network's namespace with `br0` and the VXLAN device (idempotent).
    async fn ensure(&self, net: &NetworkRec, slot: &mut Option<Overlay>) -> Result<()> {
        let path = self.path(net);
        if let Some(o) = slot.as_ref()
            && sdnet_netstack::netns::is_netns(&path)
        {
            let _ = o;
            return Ok(());
        }
        let p = path.clone();
        let kept = self
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&format!("ov/{}/netns", short(&net.id)));
        let ns = Arc::new(
            blocking(move || {
                if sdnet_netstack::netns::is_netns(&p) {
                    return Ok(Netns::open(&p)?);
                }
                Ok(match kept {
                    Some(fd) => {
                        use std::os::fd::AsRawFd;
                        let src = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
                        Netns::bind(&src, &p)?
                    }
                    None => Netns::create(&p)?,
                })
            })
            .await?,
        );
        {
            let (keeper, ns, key) = (
                self.keeper.clone(),
                ns.clone(),
                format!("ov/{}/netns", short(&net.id)),
            );
            blocking(move || {
                use std::os::fd::AsRawFd;
                Ok(keeper.hold(&key, ns.as_raw_fd())?)
            })
            .await?;
        }
        let nl = {
            let ns = ns.clone();
            blocking(move || netlink(&ns)).await?
        };
        let mtu = self.underlay_mtu().await.saturating_sub(ENCAP).max(1280);
        let br = nl.ensure_bridge("br0").await.context("creating br0")?;
        for s in &net.subnets {
            if let Some(gw) = s.gateway {
                nl.add_address(br, IpNet::new(gw, s.subnet.prefix_len())?)
                    .await
                    .with_context(|| format!("adding {gw} to br0"))?;
            }
        }
        let name = Self::vxlan_name(net)?;
        let vxlan = match nl.link_index(&name).await? {
            Some(i) => i,
            None => {
                // Made in the node's namespace (its socket stays there), then moved in.
                let vni = net.vni.unwrap_or(0);
                // The VNI may still be held by a device on its way out (a namespace torn
                // down by a crash, or by someone else): the kernel answers EEXIST until it
                // is gone, for a moment.
                let mut tries = 0;
                let idx = loop {
                    match self
                        .host
                        .nl
                        .add_vxlan(&name, vni, self.local, self.port, None, false)
                        .await
                    {
                        Ok(i) => break i,
                        Err(e) if tries < 30 && e.to_string().contains("vanished") => {
                            tries += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        Err(e) => {
                            return Err(anyhow::Error::from(e))
                                .with_context(|| format!("creating VXLAN {name}"));
                        }
                    }
                };
                self.host.nl.set_mtu(idx, mtu).await?;
                self.host.nl.move_to_netns(idx, &ns).await?;
                nl.link_index(&name).await?.ok_or_else(|| {
                    anyhow!("{name} vanished on its way into the network's namespace")
                })?
            }
        };
        nl.set_master(vxlan, br).await?;
        nl.set_up(vxlan).await?;
        nl.set_up(br).await?;
        {
            // No IPv6 chatter on the bridge; neighbour tables big enough for many peers.
            let ns = ns.clone();
            blocking(move || {
                let _ = sysctl::set(&ns, "net.ipv6.conf.br0.disable_ipv6", "1");
                Ok(())
            })
            .await?;
        }
        info!(network = %net.name, vni = ?net.vni, mtu, "overlay data path up");
        *slot = Some(Overlay {
            _ns: ns,
            nl,
            vxlan,
            peers: BTreeMap::new(),
        });
        Ok(())
    }

    /// Removes the network's namespace (the links in it go with it). The VXLAN device is
    /// deleted first, and synchronously: one left to the namespace's (asynchronous) teardown
    /// still holds its VNI on the node's UDP port for a moment, and a data path made again
    /// right then could not create its own (the kernel answers EEXIST).
    async fn remove(&self, net: &NetworkRec, slot: &mut Option<Overlay>) -> Result<()> {
        let name = Self::vxlan_name(net)?;
        let path = self.path(net);
        match slot.take() {
            Some(o) => o.nl.delete_link(&name).await?,
            None if sdnet_netstack::netns::is_netns(&path) => {
                let p = path.clone();
                let nl = blocking(move || netlink(&Netns::open(&p)?)).await?;
                nl.delete_link(&name).await?;
            }
            None => {}
        }
        let (keeper, key) = (self.keeper.clone(), format!("ov/{}/", short(&net.id)));
        blocking(move || {
            let _ = keeper.drop_prefix(&key);
            Ok(Netns::delete(&path)?)
        })
        .await?;
        // The VXLAN device may still sit in the node's namespace (a crash while moving it).
        let _ = self.host.delete_link(&name).await;
        info!(network = %net.name, "overlay data path removed");
        Ok(())
    }
}

#[async_trait]
impl NetworkDriver for OverlayDriver {
    async fn ensure_network(&self, _: &NetworkRec) -> Result<()> {
        // Made with the first local endpoint (attach), removed with the last (sync_peers).
        Ok(())
    }

    async fn remove_network(&self, net: &NetworkRec) -> Result<()> {
        let slot = self.slot(&net.id);
        let mut g = slot.lock().await;
        self.remove(net, &mut g).await
    }

    async fn attach(
        &self,
        net: &NetworkRec,
        ep: &EndpointRec,
        sb: SandboxNs<'_>,
        _default_route: bool,
    ) -> Result<()> {
        let slot = self.slot(&net.id);
        let mut g = slot.lock().await;
        self.ensure(net, &mut g).await?;
        let o = g
            .as_ref()
            .ok_or_else(|| anyhow!("overlay {} is not up", net.name))?;
        let port = veth_name(&ep.sandbox, &ep.network);
        let ifname = format!("eth{}", ep.index);
        let port_idx = match o.nl.link_index(&port).await? {
            Some(i) if sb.nl.link_index(&ifname).await?.is_some() => i,
            stale => {
                if stale.is_some() {
                    o.nl.delete_link(&port).await?;
                }
                if sb.nl.link_index(&ifname).await?.is_some() {
                    sb.nl.delete_link(&ifname).await?;
                }
                o.nl.create_veth(&port, &ifname, Some(sb.ns))
                    .await
                    .with_context(|| format!("creating veth {port}/{ifname}"))?
            }
        };
        let mtu = o.nl.link("br0").await?.and_then(|l| l.mtu).unwrap_or(1450);
        let br =
            o.nl.link_index("br0")
                .await?
                .ok_or_else(|| anyhow!("br0 is missing"))?;
        o.nl.set_mtu(port_idx, mtu).await?;
        o.nl.set_master(port_idx, br).await?;
        o.nl.set_up(port_idx).await?;
        let idx = sb
            .nl
            .link_index(&ifname)
            .await?
            .with_context(|| format!("{ifname} missing in the sandbox"))?;
        sb.nl.set_mac(idx, ep.mac).await?;
        sb.nl.set_mtu(idx, mtu).await?;
        if let (Some(ip), Some(s)) = (ep.ipv4, net.v4()) {
            sb.nl
                .add_address(idx, IpNet::new(IpAddr::V4(ip), s.subnet.prefix_len())?)
                .await?;
        }
        if let (Some(ip), Some(s)) = (ep.ipv6, net.v6()) {
            sb.nl
                .add_address(idx, IpNet::new(IpAddr::V6(ip), s.subnet.prefix_len())?)
                .await?;
        }
        sb.nl.set_up(idx).await?;
        // No default route here: egress leaves through the node's gateway bridge.
        Ok(())
    }

    async fn detach(&self, net: &NetworkRec, ep: &EndpointRec, _: Option<&Netns>) -> Result<()> {
        let slot = self.slot(&net.id);
        let g = slot.lock().await;
        if let Some(o) = g.as_ref() {
            o.nl.delete_link(&veth_name(&ep.sandbox, &ep.network))
                .await?;
        }
        Ok(())
    }

    fn network_intact(&self, _: &NetworkRec, _: &Links) -> bool {
        true
    }

    fn endpoint_intact(&self, _: &NetworkRec, _: &EndpointRec, _: &Links) -> bool {
        true
    }

    async fn sync_peers(&self, net: &NetworkRec, local: usize, peers: &[Peer]) -> Result<()> {
        let slot = self.slot(&net.id);
        let mut g = slot.lock().await;
        if local == 0 {
            if g.is_some() || sdnet_netstack::netns::is_netns(&self.path(net)) {
                self.remove(net, &mut g).await?;
            }
            return Ok(());
        }
        self.ensure(net, &mut g).await?;
        let o = g
            .as_mut()
            .ok_or_else(|| anyhow!("overlay {} is not up", net.name))?;
        let want: BTreeMap<[u8; 6], (Vec<IpAddr>, IpAddr)> = peers
            .iter()
            .map(|p| (p.mac, (p.ips.clone(), p.vtep)))
            .collect();
        let gone: Vec<([u8; 6], (Vec<IpAddr>, IpAddr))> = o
            .peers
            .iter()
            .filter(|(m, v)| want.get(*m) != Some(*v))
            .map(|(m, v)| (*m, v.clone()))
            .collect();
        for (mac, (ips, vtep)) in gone {
            for ip in ips {
                o.nl.delete_neighbour(o.vxlan, ip).await?;
            }
            o.nl.delete_fdb(o.vxlan, mac, Some(vtep), false).await?;
            o.nl.delete_fdb(o.vxlan, mac, None, true).await?;
            o.peers.remove(&mac);
        }
        for (mac, (ips, vtep)) in &want {
            if o.peers.get(mac) == Some(&(ips.clone(), *vtep)) {
                continue;
            }
            for ip in ips {
                o.nl.replace_neighbour(o.vxlan, *ip, *mac).await?;
            }
            o.nl.replace_fdb(o.vxlan, *mac, *vtep).await?;
            o.nl.replace_fdb_master(o.vxlan, *mac).await?;
            o.peers.insert(*mac, (ips.clone(), *vtep));
        }
        debug!(network = %net.name, peers = want.len(), "overlay peers");
        Ok(())
    }
}
