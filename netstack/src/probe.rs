//! Which link kinds this kernel has, found by trying: each probe creates the link in a
//! throwaway namespace of its own (on a thread that leaves the caller's namespace alone), so
//! nothing of the caller's is touched and everything made goes with that namespace.
//!
//! "Has" means the kernel knows the kind (built in, or a module it loads on demand); a kind
//! it does not know is refused with `EOPNOTSUPP` ("Unknown device type").

use futures::TryStreamExt;
use nix::errno::Errno;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, IpVlanMode, LinkMessage};
use rtnetlink::{LinkDummy, LinkIpVlan, LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVlan};

use crate::link::MacvlanMode;
use crate::{Error, Result};

/// A kind of link a driver may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Macvlan,
    Ipvlan,
    /// 802.1Q VLAN sub-interfaces (`IF.VLAN`).
    Vlan,
    Dummy,
}

impl LinkKind {
    /// How the kernel's configuration calls it (for error messages).
    pub fn kernel_name(self) -> &'static str {
        match self {
            LinkKind::Macvlan => "macvlan (CONFIG_MACVLAN)",
            LinkKind::Ipvlan => "ipvlan (CONFIG_IPVLAN)",
            LinkKind::Vlan => "802.1Q VLAN devices (CONFIG_VLAN_8021Q)",
            LinkKind::Dummy => "dummy links (CONFIG_DUMMY)",
        }
    }
}

/// Whether the kernel can create links of `kind`. Blocks for a moment (a namespace is made
/// and released on a thread of its own): call it off async workers.
pub fn kernel_has(kind: LinkKind) -> Result<bool> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("probe".into())
            .spawn_scoped(s, move || {
                // Only this thread moves, and it exits when done: its namespace dies with it.
                nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(Error::sys("unshare(CLONE_NEWNET)"))?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(Error::io("starting a probe runtime"))?;
                rt.block_on(try_create(kind))
            })
            .map_err(Error::io("spawning a probe thread"))?
            .join()
            .unwrap_or_else(|_| Err(Error::Panicked("probe".into())))
    })
}

async fn try_create(kind: LinkKind) -> Result<bool> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(Error::io("opening a netlink socket"))?;
    let conn = tokio::spawn(conn);
    let r = async {
        let add = |msg: LinkMessage, what: &'static str| {
            let handle = handle.clone();
            async move {
                handle
                    .link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(|e| Error::Netlink {
                        what: format!("probing: creating {what}"),
                        errno: match &e {
                            rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
                            _ => None,
                        },
                        message: e.to_string(),
                    })
            }
        };
        // A parent for the kinds that need one: veth exists everywhere we run.
        let peer = LinkMessageBuilder::<LinkUnspec>::new().name("probe1".to_string());
        let veth = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name("probe0".to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
            .build();
        add(veth, "a veth parent").await?;
        let parent = handle
            .link()
            .get()
            .match_name("probe0".to_string())
            .execute()
            .try_next()
            .await
            .ok()
            .flatten()
            .map(|m| m.header.index)
            .ok_or_else(|| Error::Invalid("probing: the veth parent vanished".into()))?;
        let msg = match kind {
            LinkKind::Macvlan => {
                LinkMacVlan::new("probe2", parent, MacvlanMode::Bridge.into()).build()
            }
            LinkKind::Ipvlan => LinkIpVlan::new("probe2", parent, IpVlanMode::L2).build(),
            LinkKind::Vlan => LinkVlan::new("probe2", parent, 2).build(),
            LinkKind::Dummy => LinkDummy::new("probe2").build(),
        };
        match add(msg, "the probed link").await {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(Errno::EOPNOTSUPP as i32) => Ok(false),
            Err(e) => Err(e),
        }
    }
    .await;
    conn.abort();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (a namespace of its own); veth and macvlan exist on every kernel we run on,
    /// and the caller's namespace is left as it was.
    #[test]
    fn probes_known_kinds_without_touching_our_namespace() {
        if nix::unistd::geteuid().as_raw() != 0 {
            return;
        }
        assert!(kernel_has(LinkKind::Macvlan).unwrap());
        for k in [LinkKind::Ipvlan, LinkKind::Vlan, LinkKind::Dummy] {
            // Either answer is a real one; an error is not.
            kernel_has(k).unwrap();
        }
        // The probe's links lived in its own namespace only.
        let here = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default();
        assert!(!here.contains("probe0"), "{here}");
    }
}
