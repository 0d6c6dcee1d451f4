//! Links, addresses, routes, neighbours and FDB entries in one namespace, over rtnetlink.
//!
//! Every operation is idempotent: "already exists" or "not found" count as success where the
//! end state is the one asked for, so reconciliation can run them on whatever it finds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use ipnet::IpNet;
use nix::errno::Errno;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkMessage, MacVlanMode};
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteScope, RouteType};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVxlan,
    RouteMessageBuilder,
};
use tracing::debug;

use crate::netns::Netns;
use crate::{Error, Result};

mod arp;
mod msg;

pub use arp::send_gratuitous_arp;
use msg::{addr_of, parse_route, route_msg, summary};

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

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
