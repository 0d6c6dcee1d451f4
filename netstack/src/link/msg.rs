//! Building and reading rtnetlink messages (addresses, routes, links).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType,
};

use super::{LinkInfo, Route};
use crate::{Error, Result};

pub(super) fn addr_of(m: &AddressMessage) -> Option<IpNet> {
    // IFA_LOCAL is the interface's own IPv4 address (IFA_ADDRESS is the peer on
    // point-to-point links); IPv6 only has IFA_ADDRESS.
    let mut addr = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => addr = Some(*ip),
            AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
            _ => {}
        }
    }
    addr.and_then(|ip| IpNet::new(ip, m.header.prefix_len).ok())
}

pub(super) fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A main-table unicast route; None for anything else (local, broadcast, other tables).
pub(super) fn parse_route(m: &RouteMessage) -> Option<Route> {
    let mut table = u32::from(m.header.table);
    let (mut dest, mut gateway, mut oif) = (None, None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dest = route_ip(d),
            RouteAttribute::Gateway(g) => gateway = route_ip(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || m.header.kind != RouteType::Unicast {
        return None;
    }
    let len = m.header.destination_prefix_length;
    let dest = match dest {
        Some(ip) => IpNet::new(ip, len).ok()?.trunc(),
        None if m.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6 => {
            IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0).ok()?
        }
        None => IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).ok()?,
    };
    Some(Route { dest, gateway, oif })
}

pub(super) fn route_msg(
    dest: IpNet,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
) -> Result<RouteMessage> {
    let wrong = |fam: &str| Error::Invalid(format!("{fam} gateway for route {dest}"));
    let mut msg = match dest {
        IpNet::V4(d) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d.network(), d.prefix_len());
            match gateway {
                Some(IpAddr::V4(g)) => b = b.gateway(g),
                Some(IpAddr::V6(_)) => return Err(wrong("IPv6")),
                None => {}
            }
            if let Some(i) = oif {
                b = b.output_interface(i);
            }
            b.build()
        }
        IpNet::V6(d) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d.network(), d.prefix_len());
            match gateway {
                Some(IpAddr::V6(g)) => b = b.gateway(g),
                Some(IpAddr::V4(_)) => return Err(wrong("IPv4")),
                None => {}
            }
            if let Some(i) = oif {
                b = b.output_interface(i);
            }
            b.build()
        }
    };
    if gateway.is_none() && matches!(dest, IpNet::V4(_)) {
        // What `ip route replace PREFIX dev X` makes: directly reachable.
        msg.header.scope = RouteScope::Link;
    }
    Ok(msg)
}

pub(super) fn summary(m: &LinkMessage) -> LinkInfo {
    let mut s = LinkInfo {
        index: m.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        master: None,
        mtu: None,
        up: m.header.flags.contains(LinkFlags::Up),
        alias: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => s.name = n.clone(),
            LinkAttribute::Controller(c) => s.master = Some(*c),
            LinkAttribute::Mtu(v) => s.mtu = Some(*v),
            LinkAttribute::IfAlias(a) if !a.is_empty() => s.alias = Some(a.clone()),
            LinkAttribute::Address(mac) => {
                if let Ok(b) = <[u8; 6]>::try_from(mac.as_slice()) {
                    s.mac = Some(b);
                }
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let NlLinkInfo::Kind(k) = i {
                        s.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_messages() {
        assert!(
            route_msg(
                "10.0.0.0/8".parse().unwrap(),
                Some("::1".parse().unwrap()),
                None
            )
            .is_err()
        );
        let m = route_msg("10.1.2.3/8".parse().unwrap(), None, Some(3)).unwrap();
        assert_eq!(m.header.scope, RouteScope::Link);
        assert_eq!(m.header.destination_prefix_length, 8);
        assert!(
            m.attributes
                .contains(&RouteAttribute::Destination(RouteAddress::Inet(
                    Ipv4Addr::new(10, 0, 0, 0)
                )))
        );
    }
}
