//! The bridge driver: one Linux bridge per network in the daemon's namespace (`sd-<id12>`,
//! the gateway addresses on it), one veth pair per endpoint (`sdv<hash>` on the bridge,
//! `ethN` in the sandbox with its MAC, addresses and routes).

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use ipnet::IpNet;
use sdnet_netstack::netns::Netns;
use sdnet_netstack::sysctl;

use super::{Host, Links, NetworkDriver, SandboxNs};
use crate::daemon::config::{bridge_name, veth_name};
use crate::daemon::store::schema::{EndpointRec, NetworkRec};

pub struct BridgeDriver {
    pub host: Arc<Host>,
}

fn gateways(net: &NetworkRec) -> Result<Vec<IpNet>> {
    Ok(net
        .subnets
        .iter()
        .filter_map(|s| s.gateway.map(|g| IpNet::new(g, s.subnet.prefix_len())))
        .collect::<std::result::Result<_, _>>()?)
}

/// A blocking sysctl write, off the runtime's workers.
async fn set_sysctl(ns: &Netns, key: String, value: &'static str) -> Result<()> {
    let ns = ns.try_clone()?;
    tokio::task::spawn_blocking(move || sysctl::set(&ns, &key, value))
        .await
        .context("sysctl thread")??;
    Ok(())
}

#[async_trait]
impl NetworkDriver for BridgeDriver {
    async fn ensure_network(&self, net: &NetworkRec) -> Result<()> {
        let name = bridge_name(&net.id);
        let gws = gateways(net)?;
        let h = &self.host;
        let idx =
            h.nl.ensure_bridge(&name)
                .await
                .with_context(|| format!("creating bridge {name}"))?;
        for gw in &gws {
            h.nl.add_address(idx, *gw)
                .await
                .with_context(|| format!("adding {gw} to {name}"))?;
        }
        if let Some(m) = net.mtu {
            h.nl.set_mtu(idx, m).await?;
        }
        h.nl.set_up(idx).await?;
        // Published ports on 127.0.0.1 are DNATed into the bridge: loopback sources must be
        // routable there. Forwarding is what a bridge network is for.
        set_sysctl(&h.ns, format!("net.ipv4.conf.{name}.route_localnet"), "1").await?;
        set_sysctl(&h.ns, "net.ipv4.ip_forward".into(), "1").await?;
        if gws.iter().any(|g| matches!(g, IpNet::V6(_))) {
            set_sysctl(&h.ns, "net.ipv6.conf.all.forwarding".into(), "1").await?;
        }
        // Container-to-published-port hairpin needs bridged traffic to see the IP hooks.
        let _ = set_sysctl(&h.ns, "net.bridge.bridge-nf-call-iptables".into(), "1").await;
        let _ = set_sysctl(&h.ns, "net.bridge.bridge-nf-call-ip6tables".into(), "1").await;
        Ok(())
    }

    async fn remove_network(&self, net: &NetworkRec) -> Result<()> {
        self.host.delete_link(&bridge_name(&net.id)).await
    }

    async fn attach(
        &self,
        net: &NetworkRec,
        ep: &EndpointRec,
        sb: SandboxNs<'_>,
        default_route: bool,
    ) -> Result<()> {
        let h = &self.host;
        let bridge = bridge_name(&net.id);
        let host_if = veth_name(&ep.sandbox, &ep.network);
        let ifname = format!("eth{}", ep.index);
        let bridge_idx =
            h.nl.link_index(&bridge)
                .await?
                .with_context(|| format!("bridge {bridge} is missing"))?;
        let host_idx = match h.nl.link_index(&host_if).await? {
            Some(i) if sb.nl.link_index(&ifname).await?.is_some() => i,
            stale => {
                // Half a pair (a crash between steps) is useless: start over.
                if stale.is_some() {
                    h.delete_link(&host_if).await?;
                }
                if sb.nl.link_index(&ifname).await?.is_some() {
                    sb.nl.delete_link(&ifname).await?;
                }
                h.nl.create_veth(&host_if, &ifname, Some(sb.ns))
                    .await
                    .with_context(|| format!("creating veth {host_if}/{ifname}"))?
            }
        };
        // A bridge port needs no addresses of its own; with IPv6 on, every new port would send
        // DAD, router solicitations and MLD reports that the bridge floods to every sandbox.
        set_sysctl(&h.ns, format!("net.ipv6.conf.{host_if}.disable_ipv6"), "1").await?;
        if let Some(m) = net.mtu {
            h.nl.set_mtu(host_idx, m).await?;
        }
        h.nl.set_master(host_idx, bridge_idx).await?;
        h.nl.set_hairpin(host_idx, true).await?;
        h.nl.set_up(host_idx).await?;

        let idx = sb
            .nl
            .link_index(&ifname)
            .await?
            .with_context(|| format!("{ifname} missing in the sandbox"))?;
        sb.nl.set_mac(idx, ep.mac).await?;
        // IPv6 only where the network has it (same flooding reason), set before the link is up.
        let v6 = if ep.ipv6.is_some() { "0" } else { "1" };
        set_sysctl(sb.ns, format!("net.ipv6.conf.{ifname}.disable_ipv6"), v6).await?;
        if let Some(m) = net.mtu {
            sb.nl.set_mtu(idx, m).await?;
        }
        let prefix_v4 = net.v4().map(|s| s.subnet.prefix_len());
        let prefix_v6 = net.v6().map(|s| s.subnet.prefix_len());
        if let (Some(ip), Some(p)) = (ep.ipv4, prefix_v4) {
            sb.nl
                .add_address(idx, IpNet::new(IpAddr::V4(ip), p)?)
                .await?;
        }
        if let (Some(ip), Some(p)) = (ep.ipv6, prefix_v6) {
            sb.nl
                .add_address(idx, IpNet::new(IpAddr::V6(ip), p)?)
                .await?;
        }
        sb.nl.set_up(idx).await?;
        if default_route {
            if let Some(IpAddr::V4(gw)) = net.v4().and_then(|s| s.gateway) {
                sb.nl
                    .replace_route("0.0.0.0/0".parse()?, Some(IpAddr::V4(gw)), Some(idx))
                    .await
                    .context("default route")?;
            }
            if let (Some(IpAddr::V6(gw)), Some(_)) = (net.v6().and_then(|s| s.gateway), ep.ipv6) {
                sb.nl
                    .replace_route("::/0".parse()?, Some(IpAddr::V6(gw)), Some(idx))
                    .await
                    .context("default IPv6 route")?;
            }
        }
        // No unsolicited ARP: the MAC is derived from the IPv4 address (02:42:<ip>), so a
        // neighbour that cached a reused address cached the same MAC, and the bridge forgot the
        // old port's entries when that port was deleted. (Each announcement cost a packet
        // socket whose close waits for an RCU grace period: after a burst of creations and
        // removals those grace periods queued behind the kernel's namespace clean-up.)
        Ok(())
    }

    async fn detach(&self, _net: &NetworkRec, ep: &EndpointRec) -> Result<()> {
        self.host
            .delete_link(&veth_name(&ep.sandbox, &ep.network))
            .await
    }

    fn network_intact(&self, net: &NetworkRec, links: &Links) -> bool {
        links
            .get(&bridge_name(&net.id))
            .is_some_and(|l| l.up && l.kind.as_deref() == Some("bridge"))
    }

    fn endpoint_intact(&self, net: &NetworkRec, ep: &EndpointRec, links: &Links) -> bool {
        let Some(bridge) = links.get(&bridge_name(&net.id)) else {
            return false;
        };
        links
            .get(&veth_name(&ep.sandbox, &ep.network))
            .is_some_and(|l| l.up && l.master == Some(bridge.index))
    }
}
