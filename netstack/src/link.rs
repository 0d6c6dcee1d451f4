//! Links, addresses, routes, neighbours and FDB entries in one namespace, over rtnetlink.
//!
//! Every operation is idempotent: "already exists" or "not found" count as success where the
//! end state is the one asked for, so reconciliation can run them on whatever it finds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use futures::TryStreamExt;
use ipnet::IpNet;
use nix::errno::Errno;
use nix::ifaddrs::getifaddrs;
use nix::sys::socket::{AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, sendto, socket};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
    MacVlanMode,
};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVxlan,
    RouteMessageBuilder,
};
use tracing::debug;

use crate::netns::Netns;
use crate::{Error, Result};

/// A netlink connection bound to one namespace (its socket was created there). Cheap to
/// clone; the connection ends when the last clone is dropped.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

/// What [`Netlink::links`] reports about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`: "bridge", "veth", "vxlan"…; None for plain devices such as lo.
    pub kind: Option<String>,
    /// `IFLA_IFALIAS`, the free-text alias (`ip link set … alias`).
    pub alias: Option<String>,
    pub mac: Option<[u8; 6]>,
    /// Index of the bridge (or other controller) the link is enslaved to.
    pub master: Option<u32>,
    pub mtu: Option<u32>,
    /// Administratively up.
    pub up: bool,
}

/// Former name of [`LinkInfo`].
pub type LinkInfoSummary = LinkInfo;

/// A route of the main table, as [`Netlink::route_list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dest: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
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
        errno: errno(&e),
        message: e.to_string(),
    }
}

/// Ok if the error only says the wanted state already holds.
fn tolerate(r: Result<(), rtnetlink::Error>, ok: &[Errno], what: String) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if errno(&e).is_some_and(|c| ok.contains(&Errno::from_raw(c))) => Ok(()),
        Err(e) => Err(nl(what)(e)),
    }
}

impl Netlink {
    /// Connects inside `ns` (the socket is created on a thread there) and drives the
    /// connection on the current tokio runtime. Briefly blocks the calling task's thread
    /// while that thread runs.
    pub async fn connect(ns: &Netns) -> Result<Netlink> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Invalid("Netlink::connect needs a tokio runtime".into()))?;
        Self::connect_on(ns, rt)
    }

    /// Like [`Netlink::connect`], but drives the connection on runtime `rt`. The kernel does
    /// a request's work inside the sender's `sendmsg` (creating a veth can wait for an RCU
    /// grace period: milliseconds, seconds on a loaded machine), so a daemon keeps its
    /// netlink I/O on a runtime of its own, away from the workers that answer its API.
    pub fn connect_on(ns: &Netns, rt: tokio::runtime::Handle) -> Result<Netlink> {
        let handle = ns.run(move || {
            // new_connection registers the socket with the runtime's reactor.
            let _guard = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection()?;
            rt.spawn(conn);
            Ok::<_, std::io::Error>(handle)
        })?;
        let handle = handle.map_err(Error::io("opening a netlink socket"))?;
        Ok(Netlink { handle })
    }

    /// The underlying rtnetlink handle, for requests this type does not wrap.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    async fn link_msg(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m),
            Err(e) if errno(&e) == Some(Errno::ENODEV as i32) => Ok(None),
            Err(e) => Err(nl(format!("looking up link {name}"))(e)),
        }
    }

    /// The index of link `name`, if it exists.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.link_msg(name).await?.map(|m| m.header.index))
    }

    /// Link `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>> {
        Ok(self.link_msg(name).await?.as_ref().map(summary))
    }

    /// All links of the namespace.
    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
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

    /// Index of `name` if it exists with the wanted kind; an error if it has another kind.
    async fn existing(&self, name: &str, kind: &str) -> Result<Option<u32>> {
        match self.link(name).await? {
            Some(l) if l.kind.as_deref() == Some(kind) => Ok(Some(l.index)),
            Some(l) => Err(Error::WrongKind {
                name: name.to_string(),
                found: l.kind.unwrap_or_else(|| "plain device".into()),
                wanted: kind.to_string(),
            }),
            None => Ok(None),
        }
    }

    /// Creates a link unless one named `name` exists (with kind `kind`); its index.
    async fn ensure(&self, name: &str, kind: &str, msg: LinkMessage) -> Result<u32> {
        if let Some(i) = self.existing(name, kind).await? {
            return Ok(i);
        }
        let r = self.handle.link().add(msg).execute().await;
        tolerate(r, &[Errno::EEXIST], format!("creating {kind} {name}"))?;
        debug!(name, kind, "created link");
        self.existing(name, kind)
            .await?
            .ok_or_else(|| Error::Invalid(format!("{kind} {name} vanished after creation")))
    }

    /// A bridge named `name` (created if missing, left as is otherwise); its index. Set its
    /// MTU after enslaving ports: a bridge's MTU follows its ports when one joins.
    pub async fn ensure_bridge(&self, name: &str) -> Result<u32> {
        self.ensure(name, "bridge", LinkBridge::new(name).build())
            .await
    }

    /// A veth pair `name` (here) / `peer_name` (created directly inside `peer_ns` when given,
    /// else here); returns the index of `name`. If `name` already exists, its index is
    /// returned and nothing is created (a half pair is the caller's to clean up).
    pub async fn create_veth(
        &self,
        name: &str,
        peer_name: &str,
        peer_ns: Option<&Netns>,
    ) -> Result<u32> {
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new().name(peer_name.to_string());
        if let Some(ns) = peer_ns {
            peer = peer.setns_by_fd(ns.as_raw_fd());
        }
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        self.ensure(name, "veth", msg).await
    }

    /// A VXLAN device (created if missing; an existing one is left as is): VNI `vni`, UDP
    /// `port`, source address `local`, underlay device `underlay_if`, MAC learning on or off
    /// (off when the control plane programs FDB entries). Its index.
    pub async fn add_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: IpAddr,
        port: u16,
        underlay_if: Option<u32>,
        learning: bool,
    ) -> Result<u32> {
        // Without learning the device answers ARP/ND from its neighbour table (`proxy`):
        // the entries a control plane writes are the only truth about remote endpoints.
        let mut b = LinkVxlan::new(name, vni)
            .port(port)
            .learning(learning)
            .proxy(!learning);
        b = match local {
            IpAddr::V4(a) => b.local(a),
            IpAddr::V6(a) => b.local6(a),
        };
        if let Some(i) = underlay_if {
            b = b.dev(i);
        }
        self.ensure(name, "vxlan", b.build()).await
    }

    /// A macvlan link `name` on parent `parent_idx` (a link of this namespace) in `mode`,
    /// created directly inside `into` (nothing of it ever exists here). An existing link
    /// `name` in `into` is the caller's to check; the kernel's refusal is returned as is
    /// (a passthru parent has room for one macvlan only).
    pub async fn create_macvlan(
        &self,
        name: &str,
        parent_idx: u32,
        mode: MacvlanMode,
        into: &Netns,
    ) -> Result<()> {
        let msg = LinkMacVlan::new(name, parent_idx, mode.into())
            .setns_by_fd(into.as_raw_fd())
            .build();
        let r = self.handle.link().add(msg).execute().await;
        tolerate(
            r,
            &[Errno::EEXIST],
            format!("creating macvlan {name} on link {parent_idx}"),
        )?;
        debug!(name, parent_idx, %mode, "created macvlan");
        Ok(())
    }

    /// Sets link `idx`'s alias (`ip link set … alias TEXT`).
    pub async fn set_alias(&self, idx: u32, alias: &str) -> Result<()> {
        self.change(
            LinkUnspec::new_with_index(idx).alias(alias).build(),
            format!("setting the alias of link {idx}"),
        )
        .await
    }

    async fn change(&self, msg: LinkMessage, what: String) -> Result<()> {
        self.handle
            .link()
            .change(msg)
            .execute()
            .await
            .map_err(nl(what))
    }

    pub async fn set_up(&self, idx: u32) -> Result<()> {
        self.change(
            LinkUnspec::new_with_index(idx).up().build(),
            format!("setting link {idx} up"),
        )
        .await
    }

    pub async fn set_down(&self, idx: u32) -> Result<()> {
        self.change(
            LinkUnspec::new_with_index(idx).down().build(),
            format!("setting link {idx} down"),
        )
        .await
    }

    pub async fn set_mtu(&self, idx: u32, mtu: u32) -> Result<()> {
        self.change(
            LinkUnspec::new_with_index(idx).mtu(mtu).build(),
            format!("setting MTU {mtu} on link {idx}"),
        )
        .await
    }

    pub async fn set_mac(&self, idx: u32, mac: [u8; 6]) -> Result<()> {
        self.change(
            LinkUnspec::new_with_index(idx)
                .address(mac.to_vec())
                .build(),
            format!("setting MAC of link {idx}"),
        )
        .await
    }

    /// Enslaves link `idx` to bridge `bridge_idx`.
    pub async fn set_master(&self, idx: u32, bridge_idx: u32) -> Result<()> {
        self.change(
            LinkUnspec::new_with_index(idx)
                .controller(bridge_idx)
                .build(),
            format!("enslaving link {idx} to {bridge_idx}"),
        )
        .await
    }

    /// Releases link `idx` from its bridge.
    pub async fn set_nomaster(&self, idx: u32) -> Result<()> {
        self.change(
            LinkUnspec::new_with_index(idx).nocontroller().build(),
            format!("releasing link {idx} from its bridge"),
        )
        .await
    }

    /// Renames link `idx` (the kernel wants it down for that).
    pub async fn rename(&self, idx: u32, new_name: &str) -> Result<()> {
        self.change(
            LinkUnspec::new_with_index(idx)
                .name(new_name.to_string())
                .build(),
            format!("renaming link {idx} to {new_name}"),
        )
        .await
    }

    /// Moves link `idx` into `ns` (it disappears from this namespace).
    pub async fn move_to_netns(&self, idx: u32, ns: &Netns) -> Result<()> {
        self.change(
            LinkUnspec::new_with_index(idx)
                .setns_by_fd(ns.as_raw_fd())
                .build(),
            format!("moving link {idx} to {}", ns.path().display()),
        )
        .await
    }

    /// Bridge-port hairpin mode (lets a sandbox reach itself through a published port), set
    /// over netlink as `ip link set … type bridge_slave hairpin on` does. `idx` must be
    /// enslaved already.
    pub async fn set_hairpin(&self, idx: u32, on: bool) -> Result<()> {
        let msg = LinkBridgePort::new(idx).hairpin(on).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(nl(format!("setting hairpin on link {idx}")))
    }

    /// Deletes link `name`; a missing link is fine.
    pub async fn delete_link(&self, name: &str) -> Result<()> {
        let Some(idx) = self.link_index(name).await? else {
            return Ok(());
        };
        let r = self.handle.link().del(idx).execute().await;
        tolerate(r, &[Errno::ENODEV], format!("deleting link {name}"))
    }

    /// Adds an address (with its prefix); already present is fine.
    pub async fn add_address(&self, idx: u32, addr: IpNet) -> Result<()> {
        let r = self
            .handle
            .address()
            .add(idx, addr.addr(), addr.prefix_len())
            .execute()
            .await;
        tolerate(r, &[Errno::EEXIST], format!("adding {addr} to link {idx}"))
    }

    /// Removes an address; already absent is fine.
    pub async fn delete_address(&self, idx: u32, addr: IpNet) -> Result<()> {
        let msgs = self.address_msgs(idx).await?;
        for m in msgs {
            if addr_of(&m) == Some(addr) {
                let r = self.handle.address().del(m).execute().await;
                tolerate(
                    r,
                    &[Errno::EADDRNOTAVAIL, Errno::ENOENT],
                    format!("removing {addr} from link {idx}"),
                )?;
            }
        }
        Ok(())
    }

    async fn address_msgs(&self, idx: u32) -> Result<Vec<AddressMessage>> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(idx)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("listing addresses of link {idx}")))
    }

    /// Addresses of link `idx` (IPv4 and IPv6, with prefix lengths).
    pub async fn addresses(&self, idx: u32) -> Result<Vec<IpNet>> {
        Ok(self
            .address_msgs(idx)
            .await?
            .iter()
            .filter(|m| m.header.index == idx)
            .filter_map(addr_of)
            .collect())
    }

    /// Replaces (or adds) a route in the main table: `dest` via `gateway` and/or out of
    /// `oif`. Without a gateway the route is on-link (scope link).
    pub async fn replace_route(
        &self,
        dest: IpNet,
        gateway: Option<IpAddr>,
        oif: Option<u32>,
    ) -> Result<()> {
        let msg = route_msg(dest, gateway, oif)?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("replacing route {dest}")))
    }

    /// Deletes the main-table route to `dest` (whatever its gateway, device, protocol or
    /// scope); already absent is fine.
    pub async fn delete_route(&self, dest: IpNet) -> Result<()> {
        let mut msg = route_msg(dest, None, None)?;
        // Zero/"nowhere" are wildcards for the kernel's match, as `ip route del` sends.
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        msg.header.kind = RouteType::Unspec;
        let r = self.handle.route().del(msg).execute().await;
        tolerate(
            r,
            &[Errno::ESRCH, Errno::ENOENT],
            format!("deleting route {dest}"),
        )
    }

    async fn dump_routes(&self, v6: bool) -> Result<Vec<RouteMessage>> {
        let req = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        self.handle
            .route()
            .get(req)
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing routes"))
    }

    /// Unicast routes of the main table, IPv4 then IPv6 (default routes included).
    pub async fn route_list(&self) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for v6 in [false, true] {
            for m in self.dump_routes(v6).await? {
                if let Some(r) = parse_route(&m) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Destination prefixes of the main table (IPv4 and IPv6), default routes excluded: what
    /// IPAM must not hand out (connected subnets and routed prefixes of the namespace).
    pub async fn routes(&self) -> Result<Vec<IpNet>> {
        Ok(self
            .route_list()
            .await?
            .into_iter()
            .map(|r| r.dest)
            .filter(|d| d.prefix_len() > 0)
            .collect())
    }

    /// [`Netlink::routes`], IPv4 only.
    pub async fn routes_v4(&self) -> Result<Vec<IpNet>> {
        Ok(self
            .dump_routes(false)
            .await?
            .iter()
            .filter_map(parse_route)
            .map(|r| r.dest)
            .filter(|d| d.prefix_len() > 0)
            .collect())
    }

    /// A permanent neighbour entry on link `idx`: `ip` is at `mac` (replaces any other).
    pub async fn replace_neighbour(&self, idx: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        self.handle
            .neighbours()
            .add(idx, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("neighbour {ip} on link {idx}")))
    }

    /// A permanent FDB entry on the device itself (`bridge fdb replace MAC dev … dst IP self
    /// permanent`): frames for `mac` on VXLAN link `idx` go to VTEP `dst`.
    /// Deletes a neighbour entry; a missing one is fine.
    pub async fn delete_neighbour(&self, idx: u32, ip: IpAddr) -> Result<()> {
        use rtnetlink::packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourMessage,
        };
        let mut m = NeighbourMessage::default();
        m.header.family = match ip {
            IpAddr::V4(_) => rtnetlink::packet_route::AddressFamily::Inet,
            IpAddr::V6(_) => rtnetlink::packet_route::AddressFamily::Inet6,
        };
        m.header.ifindex = idx;
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        let r = self.handle.neighbours().del(m).execute().await;
        tolerate(
            r,
            &[Errno::ENOENT],
            format!("deleting neighbour {ip} on link {idx}"),
        )
    }

    /// A static forwarding entry of the bridge a port belongs to (`bridge fdb replace MAC dev
    /// PORT master static`): the bridge never learns another location for that MAC.
    pub async fn replace_fdb_master(&self, idx: u32, mac: [u8; 6]) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(idx, &mac)
            .flags(NeighbourFlags::Controller)
            .state(NeighbourState::Noarp)
            .replace()
            .execute()
            .await
            .map_err(nl(format!(
                "bridge fdb entry for {} on link {idx}",
                fmt_mac(&mac)
            )))
    }

    /// Deletes a forwarding entry: the device's own (`self`, with its remote `dst`) or the
    /// bridge's (`master`). A missing one is fine.
    pub async fn delete_fdb(
        &self,
        idx: u32,
        mac: [u8; 6],
        dst: Option<IpAddr>,
        master: bool,
    ) -> Result<()> {
        use rtnetlink::packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourMessage,
        };
        let mut m = NeighbourMessage::default();
        m.header.family = rtnetlink::packet_route::AddressFamily::Bridge;
        m.header.ifindex = idx;
        m.header.flags = if master {
            NeighbourFlags::Controller
        } else {
            NeighbourFlags::Own
        };
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        if let Some(d) = dst {
            m.attributes.push(NeighbourAttribute::Destination(match d {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        }
        let r = self.handle.neighbours().del(m).execute().await;
        tolerate(
            r,
            &[Errno::ENOENT],
            format!("deleting fdb entry for {} on link {idx}", fmt_mac(&mac)),
        )
    }

    pub async fn replace_fdb(&self, idx: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(idx, &mac)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .destination(dst)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("fdb entry for {} on link {idx}", fmt_mac(&mac))))
    }
}

/// How a macvlan link shares its parent (`ip link add … type macvlan mode M`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MacvlanMode {
    /// Sibling macvlans talk to each other inside the kernel.
    #[default]
    Bridge,
    /// No traffic between siblings at all.
    Private,
    /// Every frame goes out through the parent (a switch may hairpin it back).
    Vepa,
    /// The one macvlan of the parent takes over the parent.
    Passthru,
}

impl MacvlanMode {
    pub const ALL: [MacvlanMode; 4] = [
        MacvlanMode::Bridge,
        MacvlanMode::Private,
        MacvlanMode::Vepa,
        MacvlanMode::Passthru,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Private => "private",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Passthru => "passthru",
        }
    }
}

impl std::fmt::Display for MacvlanMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MacvlanMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        MacvlanMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "invalid macvlan mode {s:?}: use bridge, private, vepa or passthru"
                ))
            })
    }
}

impl From<MacvlanMode> for MacVlanMode {
    fn from(m: MacvlanMode) -> MacVlanMode {
        match m {
            MacvlanMode::Bridge => MacVlanMode::Bridge,
            MacvlanMode::Private => MacVlanMode::Private,
            MacvlanMode::Vepa => MacVlanMode::Vepa,
            MacvlanMode::Passthru => MacVlanMode::Passthrough,
        }
    }
}

fn addr_of(m: &AddressMessage) -> Option<IpNet> {
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

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A main-table unicast route; None for anything else (local, broadcast, other tables).
fn parse_route(m: &RouteMessage) -> Option<Route> {
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

fn route_msg(dest: IpNet, gateway: Option<IpAddr>, oif: Option<u32>) -> Result<RouteMessage> {
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

fn summary(m: &LinkMessage) -> LinkInfo {
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

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Announces `ip` on `ifname` inside `ns` with unsolicited ARP (an announcement request and
/// a gratuitous reply, RFC 5227): neighbours that cached another MAC for a reused address
/// learn the new one at once. The interface must be up.
pub fn send_gratuitous_arp(ns: &Netns, ifname: &str, ip: Ipv4Addr) -> Result<()> {
    ns.run(|| arp(ifname, ip))?
}

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

fn arp_packet(op: u16, mac: &[u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&op.to_be_bytes());
    p[8..14].copy_from_slice(mac);
    p[14..18].copy_from_slice(&ip.octets());
    // Target hardware address: zero in the request, ours in the reply.
    if op == ARP_REPLY {
        p[18..24].copy_from_slice(mac);
    }
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// EtherType of ARP.
const ETH_P_ARP: u16 = 0x0806;

/// An Ethernet broadcast frame carrying [`arp_packet`].
fn arp_frame(op: u16, mac: &[u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..].copy_from_slice(&arp_packet(op, mac, ip));
    f
}

fn arp(ifname: &str, ip: Ipv4Addr) -> Result<()> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains('\0') {
        return Err(Error::Invalid(format!("invalid interface name {ifname:?}")));
    }
    // The interface's link-layer address (index and MAC) is its AF_PACKET entry; getifaddrs
    // asks over a netlink socket made on this thread, so in this namespace.
    let link = getifaddrs()
        .map_err(Error::sys(format!("looking up interface {ifname}")))?
        .filter(|a| a.interface_name == ifname)
        .find_map(|a| a.address.and_then(|s| s.as_link_addr().copied()))
        .ok_or_else(|| Error::sys(format!("looking up interface {ifname}"))(Errno::ENODEV))?;
    // A raw packet socket (we write the Ethernet header) with protocol 0: it only sends, so
    // it receives nothing while open.
    let sock = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(Error::sys("opening a packet socket"))?;
    let r = send_arp(&sock, ifname, &link, ip);
    // Closing a packet socket waits for the kernel to synchronize (~10 ms).
    crate::reap::close_later(sock);
    r
}

fn send_arp(sock: &OwnedFd, ifname: &str, link: &LinkAddr, ip: Ipv4Addr) -> Result<()> {
    let mac = link.addr().unwrap_or_default();
    for op in [ARP_REQUEST, ARP_REPLY] {
        // The address names the interface; the frame carries its own destination.
        sendto(
            sock.as_raw_fd(),
            &arp_frame(op, &mac, ip),
            link,
            MsgFlags::empty(),
        )
        .map_err(Error::sys(format!("sending ARP on {ifname}")))?;
    }
    debug!(ifname, %ip, "sent gratuitous ARP");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_layout() {
        let mac = [2, 0x42, 10, 0, 0, 2];
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let req = arp_packet(ARP_REQUEST, &mac, ip);
        assert_eq!(&req[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&req[8..14], &mac);
        assert_eq!(&req[14..18], &[10, 0, 0, 2]);
        assert_eq!(&req[18..24], &[0; 6]);
        assert_eq!(&req[24..28], &[10, 0, 0, 2]);
        let rep = arp_packet(ARP_REPLY, &mac, ip);
        assert_eq!(&rep[6..8], &[0, 2]);
        assert_eq!(&rep[18..24], &mac);
        assert_eq!(fmt_mac(&mac), "02:42:0a:00:00:02");
    }

    #[test]
    fn macvlan_modes() {
        for m in MacvlanMode::ALL {
            assert_eq!(m.as_str().parse::<MacvlanMode>().unwrap(), m);
        }
        assert_eq!(MacvlanMode::default(), MacvlanMode::Bridge);
        let e = "l2".parse::<MacvlanMode>().unwrap_err().to_string();
        assert!(e.contains("invalid macvlan mode \"l2\""), "{e}");
        assert_eq!(
            MacVlanMode::from(MacvlanMode::Passthru),
            MacVlanMode::Passthrough
        );
    }

    #[test]
    fn arp_frame_layout() {
        let mac = [2, 0x42, 10, 0, 0, 2];
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let frame = arp_frame(ARP_REPLY, &mac, ip);
        assert_eq!(&frame[..6], &[0xff; 6]);
        assert_eq!(&frame[6..12], &mac);
        assert_eq!(&frame[12..14], &[8, 6]);
        assert_eq!(&frame[14..], &arp_packet(ARP_REPLY, &mac, ip));
    }

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
