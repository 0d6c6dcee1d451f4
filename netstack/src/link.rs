//! Links, addresses and routes in one namespace over rtnetlink. Every operation is idempotent:
//! "already exists" or "not found" count as success where the end state is the one asked for,
//! so reconciliation can run them on whatever it finds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder,
};

use crate::Error;
use crate::netns::Netns;

/// A netlink connection bound to one namespace.
pub struct Netlink {
    handle: Handle,
}

/// What `links()` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfoSummary {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub master: Option<u32>,
    pub mac: Option<[u8; 6]>,
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |e| Error::Netlink {
        what,
        message: e.to_string(),
    }
}

/// Ok if the error only says the wanted state already holds.
fn tolerate(r: Result<(), rtnetlink::Error>, ok: &[i32], what: String) -> Result<(), Error> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if errno(&e).is_some_and(|c| ok.contains(&c)) => Ok(()),
        Err(e) => Err(nl(what)(e)),
    }
}

impl Netlink {
    /// Connects inside `ns` (the socket is created there) and drives the connection on the
    /// current tokio runtime.
    pub async fn connect(ns: &Netns) -> Result<Netlink, Error> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Invalid("Netlink::connect needs a tokio runtime".into()))?;
        let handle = ns.run(move || {
            let _guard = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(conn);
            Ok::<_, std::io::Error>(handle)
        })?;
        let handle = handle.map_err(|source| Error::Io {
            what: "netlink socket".into(),
            source,
        })?;
        Ok(Netlink { handle })
    }

    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, Error> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(m.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(nl(format!("looking up {name}"))(e)),
        }
    }

    pub async fn links(&self) -> Result<Vec<LinkInfoSummary>, Error> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing links"))?;
        Ok(msgs.iter().map(summary).collect())
    }

    /// A bridge named `name` (created if missing); its index.
    pub async fn ensure_bridge(&self, name: &str) -> Result<u32, Error> {
        if let Some(i) = self.link_index(name).await? {
            return Ok(i);
        }
        let r = self
            .handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await;
        tolerate(r, &[libc::EEXIST], format!("creating bridge {name}"))?;
        self.link_index(name)
            .await?
            .ok_or_else(|| Error::Invalid(format!("bridge {name} vanished after creation")))
    }

    /// A veth pair; the peer is created directly inside `peer_ns` when given. Returns the
    /// index of `name` (in this namespace).
    pub async fn create_veth(
        &self,
        name: &str,
        peer: &str,
        peer_ns: Option<&Netns>,
    ) -> Result<u32, Error> {
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_string());
        if let Some(ns) = peer_ns {
            peer_msg = peer_msg.setns_by_fd(ns.as_fd().as_raw_fd());
        }
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(nl(format!("creating veth {name}/{peer}")))?;
        self.link_index(name)
            .await?
            .ok_or_else(|| Error::Invalid(format!("veth {name} vanished after creation")))
    }

    async fn change(&self, msg: LinkMessage, what: String) -> Result<(), Error> {
        self.handle
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(nl(what))
    }

    pub async fn set_up(&self, idx: u32) -> Result<(), Error> {
        self.change(
            LinkUnspec::new_with_index(idx).up().build(),
            format!("setting link {idx} up"),
        )
        .await
    }

    pub async fn set_down(&self, idx: u32) -> Result<(), Error> {
        self.change(
            LinkUnspec::new_with_index(idx).down().build(),
            format!("setting link {idx} down"),
        )
        .await
    }

    pub async fn set_mtu(&self, idx: u32, mtu: u32) -> Result<(), Error> {
        self.change(
            LinkUnspec::new_with_index(idx).mtu(mtu).build(),
            format!("setting MTU of link {idx}"),
        )
        .await
    }

    pub async fn set_mac(&self, idx: u32, mac: [u8; 6]) -> Result<(), Error> {
        self.change(
            LinkUnspec::new_with_index(idx)
                .address(mac.to_vec())
                .build(),
            format!("setting MAC of link {idx}"),
        )
        .await
    }

    pub async fn set_master(&self, idx: u32, master: u32) -> Result<(), Error> {
        self.change(
            LinkUnspec::new_with_index(idx).controller(master).build(),
            format!("enslaving link {idx} to {master}"),
        )
        .await
    }

    pub async fn rename(&self, idx: u32, name: &str) -> Result<(), Error> {
        self.change(
            LinkUnspec::new_with_index(idx)
                .name(name.to_string())
                .build(),
            format!("renaming link {idx}"),
        )
        .await
    }

    pub async fn move_to_netns(&self, idx: u32, ns: &Netns) -> Result<(), Error> {
        self.change(
            LinkUnspec::new_with_index(idx)
                .setns_by_fd(ns.as_fd().as_raw_fd())
                .build(),
            format!("moving link {idx}"),
        )
        .await
    }

    /// Bridge-port hairpin: lets a sandbox reach itself through its published port.
    pub async fn set_hairpin(&self, idx: u32, on: bool) -> Result<(), Error> {
        let msg = LinkBridgePort::new(idx).hairpin(on).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(nl(format!("setting hairpin on link {idx}")))
    }

    /// Deletes a link by name; a missing link is fine.
    pub async fn delete_link(&self, name: &str) -> Result<(), Error> {
        let Some(idx) = self.link_index(name).await? else {
            return Ok(());
        };
        let r = self.handle.link().del(idx).execute().await;
        tolerate(r, &[libc::ENODEV], format!("deleting link {name}"))
    }

    /// Adds an address; already present is fine.
    pub async fn add_address(&self, idx: u32, addr: IpNet) -> Result<(), Error> {
        let r = self
            .handle
            .address()
            .add(idx, addr.addr(), addr.prefix_len())
            .execute()
            .await;
        tolerate(r, &[libc::EEXIST], format!("adding {addr} to link {idx}"))
    }

    /// Replaces (or adds) a route.
    pub async fn replace_route(
        &self,
        dest: IpNet,
        gateway: Option<IpAddr>,
        oif: Option<u32>,
    ) -> Result<(), Error> {
        let msg = route_msg(dest, gateway, oif)?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("route {dest}")))
    }

    pub async fn delete_route(&self, dest: IpNet) -> Result<(), Error> {
        let msg = route_msg(dest, None, None)?;
        let r = self.handle.route().del(msg).execute().await;
        tolerate(
            r,
            &[libc::ESRCH, libc::ENOENT],
            format!("deleting route {dest}"),
        )
    }

    /// Destination prefixes of the main routing tables (v4 and v6), default routes excluded.
    pub async fn routes(&self) -> Result<Vec<IpNet>, Error> {
        let mut out = Vec::new();
        let v4: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing routes"))?;
        let v6: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing routes"))?;
        for m in v4.iter().chain(v6.iter()) {
            let len = m.header.destination_prefix_length;
            for a in &m.attributes {
                if let RouteAttribute::Destination(d) = a {
                    let ip = match d {
                        RouteAddress::Inet(v4) => IpAddr::V4(*v4),
                        RouteAddress::Inet6(v6) => IpAddr::V6(*v6),
                        _ => continue,
                    };
                    if len > 0
                        && let Ok(n) = IpNet::new(ip, len)
                    {
                        out.push(n.trunc());
                    }
                }
            }
        }
        Ok(out)
    }
}

fn route_msg(
    dest: IpNet,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
) -> Result<RouteMessage, Error> {
    let msg = match dest {
        IpNet::V4(d) => {
            let mut b =
                RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(d.addr(), d.prefix_len());
            match gateway {
                Some(IpAddr::V4(g)) => b = b.gateway(g),
                Some(IpAddr::V6(_)) => {
                    return Err(Error::Invalid(format!("IPv6 gateway for {dest}")));
                }
                None => {}
            }
            if let Some(i) = oif {
                b = b.output_interface(i);
            }
            b.build()
        }
        IpNet::V6(d) => {
            let mut b =
                RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(d.addr(), d.prefix_len());
            match gateway {
                Some(IpAddr::V6(g)) => b = b.gateway(g),
                Some(IpAddr::V4(_)) => {
                    return Err(Error::Invalid(format!("IPv4 gateway for {dest}")));
                }
                None => {}
            }
            if let Some(i) = oif {
                b = b.output_interface(i);
            }
            b.build()
        }
    };
    Ok(msg)
}

fn summary(m: &LinkMessage) -> LinkInfoSummary {
    let mut s = LinkInfoSummary {
        index: m.header.index,
        name: String::new(),
        kind: None,
        master: None,
        mac: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => s.name = n.clone(),
            LinkAttribute::Controller(c) => s.master = Some(*c),
            LinkAttribute::Address(mac) if mac.len() == 6 => {
                let mut b = [0u8; 6];
                b.copy_from_slice(mac);
                s.mac = Some(b);
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        s.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// Announces `ip` on `ifname` inside `ns` with unsolicited ARP (two packets): neighbours that
/// cached another MAC for a reused address learn the new one at once.
pub fn send_gratuitous_arp(ns: &Netns, ifname: &str, ip: Ipv4Addr) -> Result<(), Error> {
    let ifname = ifname.to_string();
    ns.run(move || arp(&ifname, ip))?
}

fn arp(ifname: &str, ip: Ipv4Addr) -> Result<(), Error> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| Error::Io { what, source }
    };
    let cname =
        std::ffi::CString::new(ifname).map_err(|_| Error::Invalid("interface name".into()))?;
    // SAFETY: if_nametoindex reads a C string we own.
    let idx = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if idx == 0 {
        return Err(io("looking up interface")(std::io::Error::last_os_error()));
    }
    // SAFETY: a raw packet socket, closed below; all buffers are ours.
    unsafe {
        let fd = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            (libc::ETH_P_ARP as u16).to_be() as i32,
        );
        if fd < 0 {
            return Err(io("packet socket")(std::io::Error::last_os_error()));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in cname
            .as_bytes_with_nul()
            .iter()
            .enumerate()
            .take(libc::IFNAMSIZ)
        {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut mac = [0u8; 6];
        if libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) == 0 {
            let sa = req.ifr_ifru.ifru_hwaddr.sa_data;
            for (i, m) in mac.iter_mut().enumerate() {
                *m = sa[i] as u8;
            }
        }
        // ARP request, sender = target = ip (RFC 5227 announcement).
        let mut pkt = Vec::with_capacity(28);
        pkt.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
        pkt.extend_from_slice(&mac);
        pkt.extend_from_slice(&ip.octets());
        pkt.extend_from_slice(&[0; 6]);
        pkt.extend_from_slice(&ip.octets());
        let mut to: libc::sockaddr_ll = std::mem::zeroed();
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
        to.sll_ifindex = idx as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let mut err = None;
        for _ in 0..2 {
            let r = libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if r < 0 {
                err = Some(std::io::Error::last_os_error());
            }
        }
        libc::close(fd);
        if let Some(e) = err {
            return Err(io("sending ARP")(e));
        }
    }
    Ok(())
}
