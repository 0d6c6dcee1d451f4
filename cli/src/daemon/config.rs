//! Where this node keeps things, and the names of kernel objects derived from store IDs.
//! Every derived name is a pure function of IDs (stable across builds, restarts and nodes),
//! so nothing node-local has to be stored.

use std::path::PathBuf;

use crate::daemon::store::schema::stable_hash;

/// Prefixes of the links we create: bridges `sd-<id12>`, veth host ends `sdv<hash12>`.
/// (Not Docker's `br-`/`veth`: a host running Docker too must never see its links collected.)
pub use crate::daemon::store::schema::{BRIDGE_PREFIX, bridge_name, short};
pub const VETH_PREFIX: &str = "sdv";
/// VXLAN devices of overlay networks (`sdx<vni>`): made in the node's namespace and moved into
/// the network's at once, so one left here is a leftover.
pub const VXLAN_PREFIX: &str = "sdx";

/// The alias (`IFLA_IFALIAS`) of a link we created under a name the user chose (a bridge
/// named by `com.docker.network.bridge.name`): `sdnet:<network id>`. It is set in the very
/// message that creates the link, so a link without it was never ours.
pub fn owner_alias(net_id: &str) -> String {
    format!("{OWNER_ALIAS_PREFIX}{net_id}")
}
pub const OWNER_ALIAS_PREFIX: &str = "sdnet:";

/// A link of ours by its name (derived names) or its alias (user-chosen names).
pub fn our_link_info(l: &sdnet_netstack::link::LinkInfo) -> bool {
    our_link(&l.name)
        || l.alias
            .as_deref()
            .is_some_and(|a| a.starts_with(OWNER_ALIAS_PREFIX))
}

pub fn our_link(name: &str) -> bool {
    name.starts_with(BRIDGE_PREFIX)
        || name.starts_with(VETH_PREFIX)
        || name.starts_with(VXLAN_PREFIX)
}

/// An interface name the kernel would accept.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// The host end of a sandbox's veth pair on a network (15 characters, the kernel's limit).
pub fn veth_name(sandbox: &str, net: &str) -> String {
    format!(
        "{VETH_PREFIX}{:012x}",
        stable_hash(&[sandbox, net]) & 0xffff_ffff_ffff
    )
}

/// A locally administered MAC for an endpoint without IPv4 (with IPv4 it is `02:42:<ip>`).
pub fn v6_mac(sandbox: &str, net: &str) -> [u8; 6] {
    let b = stable_hash(&["mac", sandbox, net]).to_be_bytes();
    [0x02, 0x42, b[4], b[5], b[6], b[7]]
}

#[derive(Clone, Debug)]
pub struct Config {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub etc_netns_dir: PathBuf,
    pub netns_link_dir: Option<PathBuf>,
    pub default_bridge_subnet: Option<ipnet::IpNet>,
    pub resync: std::time::Duration,
    /// CNI plugin binaries (`--cni-bin-dir`).
    pub cni_bin_dir: PathBuf,
}

impl Config {
    pub fn netns_dir(&self) -> PathBuf {
        self.run_dir.join("netns")
    }
    /// A sandbox's namespace file (by name, so `ip netns exec NAME` finds it through a link).
    pub fn netns_path(&self, name: &str) -> PathBuf {
        self.netns_dir().join(name)
    }
    /// The CNI driver's record of each endpoint it added (kept across reboots, like the
    /// plugins' own IPAM state).
    pub fn cni_cache_dir(&self) -> PathBuf {
        self.state_dir.join("cni")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.logs_dir().join(format!("{id}.log"))
    }
    /// A sandbox's resolv.conf and hosts live here, by ID (a removed sandbox's files are
    /// cleaned up in the background while a new one with the same name may already exist);
    /// the run dir is a tmpfs, so no inode churn on the root filesystem.
    pub fn files_dir(&self, id: &str) -> PathBuf {
        self.files_root().join(id)
    }
    pub fn files_root(&self) -> PathBuf {
        self.run_dir.join("etc")
    }
    /// `<etc-netns-dir>/<name>` links to the files for `ip netns exec`.
    pub fn etc_link(&self, name: &str) -> PathBuf {
        self.etc_netns_dir.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_are_stable_and_fit() {
        let v = veth_name("a".repeat(64).as_str(), "b".repeat(64).as_str());
        assert_eq!(v.len(), 15);
        assert_eq!(v, veth_name(&"a".repeat(64), &"b".repeat(64)));
        assert_ne!(v, veth_name(&"b".repeat(64), &"a".repeat(64)));
        assert_eq!(bridge_name("0123456789abcdef"), "sd-0123456789ab");
        assert_eq!(v6_mac("s", "n")[..2], [0x02, 0x42]);
    }

    #[test]
    fn interface_names() {
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("enp0s31f6.100"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a-name-far-too-long"));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname("a b"));
        assert!(!valid_ifname(".."));
    }
}
