//! The bridge driver: one Linux bridge per network in the daemon's namespace (`sd-<id12>`,
//! the gateway addresses on it), one veth pair per endpoint (`sdv<hash>` on the bridge,
//! `ethN` in the sandbox with its MAC, addresses and routes).
//!
//! A network may name its bridge (`com.docker.network.bridge.name`). A bridge of that name
//! that already exists is the host's ("unmanaged", as netavark calls it): used as it is —
//! its addresses, MTU and state untouched — and never removed. A missing one is created and
//! owned: it is made as `sd-<id12>` (ours by its name, collected if we crash here), given
//! the alias `sdnet:<network id>`, and only then renamed, so a bridge of the chosen name is
//! ours exactly when it carries that alias — a fact of the kernel that survives a crash.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use ipnet::IpNet;
use sdnet_netstack::link::LinkInfo;
use sdnet_netstack::netns::Netns;

use super::{Host, Links, NetworkDriver, SandboxNs, set_sysctl};
use crate::daemon::config::{bridge_name, owner_alias, veth_name};
use crate::daemon::store::schema::{BRIDGE_NAME_OPTION, EndpointRec, NetworkRec};

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

/// Whether the network's bridge is ours to configure and remove: a derived name always is;
/// a user-chosen one only if we created it (it carries our alias).
fn owned(net: &NetworkRec, link: Option<&LinkInfo>) -> bool {
    !net.options.contains_key(BRIDGE_NAME_OPTION)
        || link.is_none_or(|l| l.alias.as_deref() == Some(owner_alias(&net.id).as_str()))
}

impl BridgeDriver {
    /// Creates the user-named bridge `name` of `net`, marked as ours (see the module doc);
    /// its index. If someone else made `name` meanwhile, ours goes and the next pass finds
    /// theirs (the host's).
    async fn create_named(&self, net: &NetworkRec, name: &str) -> Result<u32> {
        let h = &self.host;
        let tmp = bridge_name(&net.id);
        let idx =
            h.nl.ensure_bridge(&tmp)
                .await
                .with_context(|| format!("creating bridge {name}"))?;
        h.nl.set_alias(idx, &owner_alias(&net.id)).await?;
        // A new bridge is down, as a rename wants it.
        if let Err(e) = h.nl.rename(idx, name).await {
            h.delete_link(&tmp).await?;
            return Err(e).with_context(|| format!("naming bridge {tmp} {name}"));
        }
        Ok(idx)
    }
}

#[async_trait]
impl NetworkDriver for BridgeDriver {
    async fn ensure_network(&self, net: &NetworkRec) -> Result<()> {
        let name = net.bridge();
        let h = &self.host;
        let existing = h.nl.link(&name).await?;
        if let Some(l) = &existing
            && l.kind.as_deref() != Some("bridge")
        {
            bail!(
                "interface {name} exists and is a {}, not a bridge",
                l.kind.as_deref().unwrap_or("plain device")
            );
        }
        // Forwarding is what a bridge network is for (also through a host's bridge).
        set_sysctl(&h.ns, "net.ipv4.ip_forward".into(), "1").await?;
        if !owned(net, existing.as_ref()) {
            return Ok(());
        }
        let gws = gateways(net)?;
        let idx = match existing {
            Some(l) => l.index,
            None if net.options.contains_key(BRIDGE_NAME_OPTION) => {
                self.create_named(net, &name).await?
            }
            None => {
                h.nl.ensure_bridge(&name)
                    .await
                    .with_context(|| format!("creating bridge {name}"))?
            }
        };
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
        // routable there.
        set_sysctl(&h.ns, format!("net.ipv4.conf.{name}.route_localnet"), "1").await?;
        if gws.iter().any(|g| matches!(g, IpNet::V6(_))) {
            set_sysctl(&h.ns, "net.ipv6.conf.all.forwarding".into(), "1").await?;
        }
        // Container-to-published-port hairpin needs bridged traffic to see the IP hooks.
        let _ = set_sysctl(&h.ns, "net.bridge.bridge-nf-call-iptables".into(), "1").await;
        let _ = set_sysctl(&h.ns, "net.bridge.bridge-nf-call-ip6tables".into(), "1").await;
        Ok(())
    }

    async fn remove_network(&self, net: &NetworkRec) -> Result<()> {
        let name = net.bridge();
        match self.host.nl.link(&name).await? {
            Some(l) if owned(net, Some(&l)) => self.host.delete_link(&name).await,
            _ => Ok(()),
        }
    }

    async fn attach(
        &self,
        net: &NetworkRec,
        ep: &EndpointRec,
        sb: SandboxNs<'_>,
        default_route: bool,
    ) -> Result<()> {
        let h = &self.host;
        let bridge = net.bridge();
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
        super::endpoint::configure(net, ep, &sb, idx, &ifname, default_route, true).await?;
        // No unsolicited ARP: the MAC is derived from the IPv4 address (02:42:<ip>), so a
        // neighbour that cached a reused address cached the same MAC, and the bridge forgot the
        // old port's entries when that port was deleted. (Each announcement cost a packet
        // socket whose close waits for an RCU grace period: after a burst of creations and
        // removals those grace periods queued behind the kernel's namespace clean-up.)
        Ok(())
    }

    async fn detach(&self, _net: &NetworkRec, ep: &EndpointRec, _: Option<&Netns>) -> Result<()> {
        self.host
            .delete_link(&veth_name(&ep.sandbox, &ep.network))
            .await
    }

    fn network_intact(&self, net: &NetworkRec, links: &Links) -> bool {
        // A host's bridge is as the host keeps it (down, say): only its existence matters.
        links
            .get(&net.bridge())
            .is_some_and(|l| l.kind.as_deref() == Some("bridge") && (l.up || !owned(net, Some(l))))
    }

    fn endpoint_intact(&self, net: &NetworkRec, ep: &EndpointRec, links: &Links) -> bool {
        let Some(bridge) = links.get(&net.bridge()) else {
            return false;
        };
        links
            .get(&veth_name(&ep.sandbox, &ep.network))
            .is_some_and(|l| l.up && l.master == Some(bridge.index))
    }
}
