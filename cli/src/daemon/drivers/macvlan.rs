//! The macvlan driver: each endpoint is a macvlan link on the network's parent interface (an
//! existing link of the daemon's namespace, `-o parent=IF`), created straight inside the
//! sandbox as `ethN` — nothing of an endpoint ever exists in the daemon's namespace, so a
//! crash cannot leave one there, and it goes with the sandbox's namespace.
//!
//! The network itself owns nothing: the parent is the host's, used as it is (its addresses
//! and state untouched), and `network rm` leaves it alone. As macvlan goes, the sandboxes
//! reach each other (bridge mode) and every other station on the parent's L2, but not the
//! daemon's namespace through the parent: the kernel does not deliver frames between a
//! macvlan and its own parent.
//!
//! What this kernel lacks is found by trying ([`sdnet_netstack::probe`]): a parent `IF.VLAN`
//! that does not exist needs 802.1Q VLAN devices, a network without a parent needs a dummy
//! link, `-d ipvlan` needs ipvlan.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use sdnet_netstack::link::MacvlanMode;
use sdnet_netstack::netns::Netns;
use sdnet_netstack::probe::{self, LinkKind};

use super::{Host, Links, NetworkDriver, SandboxNs};
use crate::daemon::config::valid_ifname;
use crate::daemon::store::schema::{EndpointRec, MACVLAN_MODE_OPTION, NetworkRec, PARENT_OPTION};

pub struct MacvlanDriver {
    pub host: Arc<Host>,
}

/// Why a macvlan (or ipvlan) network cannot be made, as the user should read it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    BadInput(String),
    /// The kernel lacks what the request needs.
    #[error("{what}: this kernel has no {feature}")]
    MissingFeature { what: String, feature: &'static str },
    /// Checking failed (a netlink error, say).
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

fn mode_of(net: &NetworkRec) -> Result<MacvlanMode> {
    match net.options.get(MACVLAN_MODE_OPTION) {
        Some(m) => Ok(m.parse()?),
        None => Ok(MacvlanMode::default()),
    }
}

fn parent_of(net: &NetworkRec) -> Result<&str> {
    net.options
        .get(PARENT_OPTION)
        .map(String::as_str)
        .ok_or_else(|| anyhow!("macvlan network {} has no parent", net.name))
}

/// Whether the kernel has `kind`, probed off the async workers.
async fn kernel_has(kind: LinkKind) -> Result<bool> {
    Ok(tokio::task::spawn_blocking(move || probe::kernel_has(kind))
        .await
        .context("probe thread")??)
}

/// `IF.VLAN` → (IF, VLAN) when VLAN is an 802.1Q ID (1-4094).
fn vlan_parent(parent: &str) -> Option<(&str, u16)> {
    let (base, id) = parent.rsplit_once('.')?;
    let id: u16 = id.parse().ok()?;
    (!base.is_empty() && (1..=4094).contains(&id)).then_some((base, id))
}

impl MacvlanDriver {
    /// Checks a macvlan network's options against this node before anything is written:
    /// the mode, the parent (it must exist; an `IF.VLAN` that does not is refused with what
    /// the kernel lacks to make it), or the missing parent (what a parent-less network would
    /// need). Returns the options to store (the mode made explicit). Touches nothing: the
    /// probes run in throwaway namespaces.
    pub async fn check(
        &self,
        opts: &std::collections::BTreeMap<String, String>,
    ) -> Result<std::collections::BTreeMap<String, String>, Refusal> {
        let mut out = opts.clone();
        for k in opts.keys() {
            if k != PARENT_OPTION && k != MACVLAN_MODE_OPTION {
                return Err(Refusal::BadInput(format!(
                    "unknown option {k:?} for driver macvlan (supported: parent, macvlan_mode)"
                )));
            }
        }
        let mode: MacvlanMode = match opts.get(MACVLAN_MODE_OPTION) {
            Some(m) => m.parse().map_err(|e: sdnet_netstack::Error| {
                Refusal::BadInput(format!("-o macvlan_mode: {e}"))
            })?,
            None => MacvlanMode::default(),
        };
        out.insert(MACVLAN_MODE_OPTION.into(), mode.to_string());
        if !kernel_has(LinkKind::Macvlan).await? {
            return Err(Refusal::MissingFeature {
                what: "driver macvlan".into(),
                feature: LinkKind::Macvlan.kernel_name(),
            });
        }
        let Some(parent) = opts.get(PARENT_OPTION) else {
            // Docker gives such a network a dummy link as its parent.
            return Err(if kernel_has(LinkKind::Dummy).await? {
                Refusal::BadInput("a macvlan network needs a parent interface: -o parent=IF".into())
            } else {
                Refusal::MissingFeature {
                    what: "a macvlan network without -o parent needs a dummy link as its parent"
                        .into(),
                    feature: LinkKind::Dummy.kernel_name(),
                }
            });
        };
        if !valid_ifname(parent) {
            return Err(Refusal::BadInput(format!(
                "invalid parent interface name {parent:?}"
            )));
        }
        let found = self
            .host
            .nl
            .link(parent)
            .await
            .map_err(anyhow::Error::from)?;
        match (found, vlan_parent(parent)) {
            (Some(l), _) if l.kind.as_deref() == Some("bridge") || l.name == "lo" => {
                Err(Refusal::BadInput(format!(
                    "parent interface {parent} is a {}: a macvlan parent must be an Ethernet device",
                    if l.name == "lo" { "loopback" } else { "bridge" }
                )))
            }
            (Some(_), _) => Ok(out),
            (None, Some((base, id))) => {
                if !kernel_has(LinkKind::Vlan).await? {
                    return Err(Refusal::MissingFeature {
                        what: format!("parent {parent} would be VLAN {id} on {base}"),
                        feature: LinkKind::Vlan.kernel_name(),
                    });
                }
                Err(Refusal::BadInput(format!(
                    "parent interface {parent} does not exist (sdnet does not create VLAN \
                     sub-interfaces: ip link add link {base} name {parent} type vlan id {id})"
                )))
            }
            (None, None) => Err(Refusal::BadInput(format!(
                "parent interface {parent} does not exist"
            ))),
        }
    }

    /// `-d ipvlan`: refused; the message says whether the kernel lacks ipvlan.
    pub async fn check_ipvlan() -> Refusal {
        match kernel_has(LinkKind::Ipvlan).await {
            Ok(false) => Refusal::MissingFeature {
                what: "driver ipvlan".into(),
                feature: LinkKind::Ipvlan.kernel_name(),
            },
            Ok(true) => Refusal::BadInput(
                "driver ipvlan is not supported by sdnet: use macvlan (-d macvlan -o parent=IF)"
                    .into(),
            ),
            Err(e) => Refusal::Failed(e),
        }
    }

    async fn parent_index(&self, net: &NetworkRec) -> Result<u32> {
        let parent = parent_of(net)?;
        self.host
            .nl
            .link_index(parent)
            .await?
            .with_context(|| format!("parent interface {parent} does not exist"))
    }
}

/// Deletes the macvlan links inside sandbox namespace `ns` whose names are not in `keep`
/// (endpoints removed while no daemon ran). Other kinds of links are left alone.
pub async fn remove_strays(ns: &Netns, keep: &[String]) -> Result<()> {
    let ns = ns.try_clone()?;
    let nl = tokio::task::spawn_blocking(move || super::netlink(&ns))
        .await
        .context("netlink thread")??;
    for l in nl.links().await? {
        if l.kind.as_deref() == Some("macvlan") && !keep.contains(&l.name) {
            tracing::info!(link = %l.name, "removing a macvlan of a removed endpoint");
            nl.delete_link(&l.name).await?;
        }
    }
    Ok(())
}

#[async_trait]
impl NetworkDriver for MacvlanDriver {
    async fn ensure_network(&self, net: &NetworkRec) -> Result<()> {
        mode_of(net)?;
        self.parent_index(net).await.map(|_| ())
    }

    async fn remove_network(&self, _: &NetworkRec) -> Result<()> {
        // The parent is the host's; the endpoints went with their sandboxes or detaches.
        Ok(())
    }

    async fn attach(
        &self,
        net: &NetworkRec,
        ep: &EndpointRec,
        sb: SandboxNs<'_>,
        default_route: bool,
    ) -> Result<()> {
        let mode = mode_of(net)?;
        let ifname = format!("eth{}", ep.index);
        let parent = self.parent_index(net).await?;
        match sb.nl.link(&ifname).await? {
            Some(l) if l.kind.as_deref() == Some("macvlan") => {}
            other => {
                if other.is_some() {
                    // Something else under our name (a crash of an earlier layout): replace.
                    sb.nl.delete_link(&ifname).await?;
                }
                let name = parent_of(net)?;
                match self
                    .host
                    .nl
                    .create_macvlan(&ifname, parent, mode, sb.ns)
                    .await
                {
                    Ok(()) => {}
                    Err(e) if mode == MacvlanMode::Passthru && e.errno() == Some(libc::EINVAL) => {
                        bail!(
                            "parent {name} is in passthru mode and already has its one macvlan \
                             (one sandbox per passthru network)"
                        )
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("on parent {name} ({mode} mode)"));
                    }
                }
            }
        }
        let idx = sb
            .nl
            .link_index(&ifname)
            .await?
            .with_context(|| format!("{ifname} missing in the sandbox"))?;
        // A passthru macvlan takes its parent's MAC (setting one would change the parent's).
        let set_mac = mode != MacvlanMode::Passthru;
        super::endpoint::configure(net, ep, &sb, idx, &ifname, default_route, set_mac).await
    }

    async fn detach(
        &self,
        _net: &NetworkRec,
        ep: &EndpointRec,
        sandbox: Option<&Netns>,
    ) -> Result<()> {
        let Some(ns) = sandbox else {
            return Ok(());
        };
        let ns = ns.try_clone()?;
        let nl = tokio::task::spawn_blocking(move || super::netlink(&ns))
            .await
            .context("netlink thread")??;
        let ifname = format!("eth{}", ep.index);
        if let Some(l) = nl.link(&ifname).await?
            && l.kind.as_deref() == Some("macvlan")
        {
            nl.delete_link(&ifname).await?;
        }
        Ok(())
    }

    fn network_intact(&self, net: &NetworkRec, links: &Links) -> bool {
        parent_of(net).is_ok_and(|p| links.contains_key(p))
    }

    /// An endpoint lives inside its sandbox only: here, only its parent to check.
    fn endpoint_intact(&self, net: &NetworkRec, _: &EndpointRec, links: &Links) -> bool {
        self.network_intact(net, links)
    }

    fn inside_sandbox(&self) -> bool {
        true
    }

    /// Its macvlan is there, a macvlan, and up.
    fn endpoint_intact_inside(&self, ep: &EndpointRec, sandbox_links: &Links) -> bool {
        sandbox_links
            .get(&format!("eth{}", ep.index))
            .is_some_and(|l| l.up && l.kind.as_deref() == Some("macvlan"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_parents() {
        assert_eq!(vlan_parent("eth0.10"), Some(("eth0", 10)));
        assert_eq!(vlan_parent("bond0.4094"), Some(("bond0", 4094)));
        assert_eq!(vlan_parent("eth0.0"), None);
        assert_eq!(vlan_parent("eth0.5000"), None);
        assert_eq!(vlan_parent("eth0"), None);
        assert_eq!(vlan_parent(".5"), None);
        assert_eq!(vlan_parent("my.if"), None);
    }
}
