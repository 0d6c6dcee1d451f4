//! The daemon's use of netstack, in one place: the daemon's own ("host") namespace with its
//! bridges and firewall table, and what a sandbox endpoint needs on both sides of its veth
//! pair. Every function is idempotent: reconciliation calls them on whatever exists.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::path::Path;

use anyhow::{Context, Result};
use ipnet::IpNet;
use sdnet_netstack::link::Netlink;
use sdnet_netstack::netns::Netns;
use sdnet_netstack::{nft, sysctl};

use crate::daemon::store::EndpointRec;

/// Prefixes of the links we create: bridges `sd-<id12>`, veth host ends `sdv<hash12>`.
/// (Not Docker's `br-`/`veth`: a host running Docker too must never see its links collected.)
pub const BRIDGE_PREFIX: &str = "sd-";
pub const VETH_PREFIX: &str = "sdv";

pub fn ours(link: &str) -> bool {
    link.starts_with(BRIDGE_PREFIX) || link.starts_with(VETH_PREFIX)
}

/// The daemon's namespace: bridges, veth host ends, the firewall table.
pub struct Host {
    pub ns: Netns,
    pub nl: Netlink,
}

impl Host {
    pub async fn open() -> Result<Host> {
        let ns = Netns::current().context("opening the daemon's network namespace")?;
        let nl = Netlink::connect(&ns)
            .await
            .context("connecting to netlink")?;
        Ok(Host { ns, nl })
    }

    /// Bridge with its gateway addresses, up, forwarding on.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateways: &[IpNet],
        mtu: Option<u32>,
    ) -> Result<()> {
        let idx = self
            .nl
            .ensure_bridge(name)
            .await
            .with_context(|| format!("creating bridge {name}"))?;
        for gw in gateways {
            self.nl
                .add_address(idx, *gw)
                .await
                .with_context(|| format!("adding {gw} to {name}"))?;
        }
        if let Some(m) = mtu {
            self.nl.set_mtu(idx, m).await?;
        }
        self.nl.set_up(idx).await?;
        // Published ports on 127.0.0.1 are DNATed into the bridge: loopback sources must be
        // routable there. Forwarding is what a bridge network is for.
        sysctl::set(
            &self.ns,
            &format!("net.ipv4.conf.{name}.route_localnet"),
            "1",
        )?;
        sysctl::set(&self.ns, "net.ipv4.ip_forward", "1")?;
        if gateways.iter().any(|g| matches!(g, IpNet::V6(_))) {
            sysctl::set(&self.ns, "net.ipv6.conf.all.forwarding", "1")?;
        }
        // Container-to-published-port hairpin needs bridged traffic to see the IP hooks.
        let _ = sysctl::set(&self.ns, "net.bridge.bridge-nf-call-iptables", "1");
        let _ = sysctl::set(&self.ns, "net.bridge.bridge-nf-call-ip6tables", "1");
        Ok(())
    }

    pub async fn delete_link(&self, name: &str) -> Result<()> {
        self.nl
            .delete_link(name)
            .await
            .with_context(|| format!("deleting link {name}"))
    }

    /// Names of links of ours in the daemon's namespace.
    pub async fn our_links(&self) -> Result<Vec<String>> {
        Ok(self
            .nl
            .links()
            .await?
            .into_iter()
            .map(|l| l.name)
            .filter(|n| ours(n))
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

/// Where an endpoint's addresses live on its network.
pub struct EndpointNet<'a> {
    pub bridge: &'a str,
    pub prefix_v4: Option<u8>,
    pub prefix_v6: Option<u8>,
    pub gateway_v4: Option<Ipv4Addr>,
    pub gateway_v6: Option<Ipv6Addr>,
    /// This endpoint carries the sandbox's default route.
    pub default_route: bool,
    pub mtu: Option<u32>,
}

/// Creates (or completes) an endpoint: veth pair, host end on the bridge, sandbox end with
/// its MAC, addresses, routes; announces the address with unsolicited ARP.
pub async fn attach(
    host: &Host,
    sb_ns: &Netns,
    sb_nl: &Netlink,
    ep: &EndpointRec,
    net: &EndpointNet<'_>,
) -> Result<()> {
    let bridge = host
        .nl
        .link_index(net.bridge)
        .await?
        .with_context(|| format!("bridge {} is missing", net.bridge))?;
    let host_idx = match host.nl.link_index(&ep.host_if).await? {
        Some(i) if sb_nl.link_index(&ep.ifname).await?.is_some() => i,
        stale => {
            // Half a pair (a crash between steps) is useless: start over.
            if stale.is_some() {
                host.delete_link(&ep.host_if).await?;
            }
            if sb_nl.link_index(&ep.ifname).await?.is_some() {
                sb_nl.delete_link(&ep.ifname).await?;
            }
            host.nl
                .create_veth(&ep.host_if, &ep.ifname, Some(sb_ns))
                .await
                .with_context(|| format!("creating veth {}/{}", ep.host_if, ep.ifname))?
        }
    };
    // A bridge port needs no addresses of its own; with IPv6 on, every new port would send
    // DAD, router solicitations and MLD reports that the bridge floods to every sandbox.
    sysctl::set(
        &host.ns,
        &format!("net.ipv6.conf.{}.disable_ipv6", ep.host_if),
        "1",
    )?;
    if let Some(m) = net.mtu {
        host.nl.set_mtu(host_idx, m).await?;
    }
    host.nl.set_master(host_idx, bridge).await?;
    host.nl.set_hairpin(host_idx, true).await?;
    host.nl.set_up(host_idx).await?;

    let idx = sb_nl
        .link_index(&ep.ifname)
        .await?
        .with_context(|| format!("{} missing in the sandbox", ep.ifname))?;
    sb_nl.set_mac(idx, ep.mac).await?;
    // IPv6 only where the network has it (same flooding reason), set before the link is up.
    let v6 = if ep.ipv6.is_some() { "0" } else { "1" };
    sysctl::set(
        sb_ns,
        &format!("net.ipv6.conf.{}.disable_ipv6", ep.ifname),
        v6,
    )?;
    if let Some(m) = net.mtu {
        sb_nl.set_mtu(idx, m).await?;
    }
    if let (Some(ip), Some(p)) = (ep.ipv4, net.prefix_v4) {
        sb_nl
            .add_address(idx, IpNet::new(IpAddr::V4(ip), p)?)
            .await?;
    }
    if let (Some(ip), Some(p)) = (ep.ipv6, net.prefix_v6) {
        sb_nl
            .add_address(idx, IpNet::new(IpAddr::V6(ip), p)?)
            .await?;
    }
    sb_nl.set_up(idx).await?;
    if net.default_route {
        if let Some(gw) = net.gateway_v4 {
            sb_nl
                .replace_route("0.0.0.0/0".parse()?, Some(IpAddr::V4(gw)), Some(idx))
                .await
                .context("default route")?;
        }
        if let (Some(gw), Some(_)) = (net.gateway_v6, ep.ipv6) {
            sb_nl
                .replace_route("::/0".parse()?, Some(IpAddr::V6(gw)), Some(idx))
                .await
                .context("default IPv6 route")?;
        }
    }
    if let Some(ip) = ep.ipv4 {
        // Neighbours may hold a stale MAC for a reused address. The announcement is flooded to
        // every port of the bridge (O(sandboxes) work in the kernel) and gates nothing the
        // caller waits for, so it goes out in the background.
        if let Ok(ns) = sb_ns.try_clone() {
            announce(ns, ep.ifname.clone(), ip);
        }
    }
    Ok(())
}

/// Binds the resolver's sockets on 127.0.0.11 (random ports) inside a sandbox.
pub fn bind_dns(ns: &Netns) -> Result<(UdpSocket, TcpListener)> {
    let (udp, tcp) = ns
        .run(|| -> std::io::Result<(UdpSocket, TcpListener)> {
            let udp = UdpSocket::bind("127.0.0.11:0")?;
            let tcp = TcpListener::bind("127.0.0.11:0")?;
            udp.set_nonblocking(true)?;
            tcp.set_nonblocking(true)?;
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

pub fn apply_nft_in(ns: &Netns, text: &str) -> Result<()> {
    nft::apply(ns, text).context("applying nftables rules in the sandbox")
}

/// Binds a sandbox namespace file to `at` (for `--netns` adoption), unless already done.
pub fn adopt_netns(from: &Path, at: &Path) -> Result<Netns> {
    if sdnet_netstack::netns::is_netns(at) {
        return Ok(Netns::open(at)?);
    }
    Netns::bind(from, at).with_context(|| format!("adopting namespace {}", from.display()))
}

/// Sends unsolicited ARP from one background thread (bursts of sandbox creations must not
/// grow the blocking thread pool).
fn announce(ns: Netns, ifname: String, ip: Ipv4Addr) {
    use std::sync::OnceLock;
    use std::sync::mpsc::{self, Sender};
    type Job = (Netns, String, Ipv4Addr);
    static TX: OnceLock<Sender<Job>> = OnceLock::new();
    let tx = TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let _ = std::thread::Builder::new()
            .name("arp-announce".into())
            .spawn(move || {
                while let Ok((ns, ifname, ip)) = rx.recv() {
                    let _ = sdnet_netstack::link::send_gratuitous_arp(&ns, &ifname, ip);
                }
            });
        tx
    });
    let _ = tx.send((ns, ifname, ip));
}
