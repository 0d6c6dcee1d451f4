//! The sandbox's end of an endpoint, whatever link carries it (a veth's peer, a macvlan):
//! its MAC, MTU, IPv6 switch, addresses, state and default routes.

use std::net::IpAddr;

use anyhow::{Context, Result};
use ipnet::IpNet;

use super::{SandboxNs, set_sysctl};
use crate::daemon::store::schema::{EndpointRec, NetworkRec};

/// Configures link `idx` (named `ifname`) inside the sandbox for endpoint `ep` of `net`.
/// `set_mac`: give it the endpoint's MAC (a passthru macvlan keeps its parent's).
/// Idempotent: addresses already there and routes already pointing the same way are fine.
pub async fn configure(
    net: &NetworkRec,
    ep: &EndpointRec,
    sb: &SandboxNs<'_>,
    idx: u32,
    ifname: &str,
    default_route: bool,
    set_mac: bool,
) -> Result<()> {
    if set_mac {
        sb.nl.set_mac(idx, ep.mac).await?;
    }
    // IPv6 only where the network has it (a bridge floods every port's DAD, router
    // solicitations and MLD reports to every sandbox), set before the link is up.
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
    Ok(())
}
