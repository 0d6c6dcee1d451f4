//! The records of the store and where they live. Version 1 of the layout, all under
//! `/sdnet/v1/`:
//!
//! | key | record | written by |
//! |---|---|---|
//! | `networks/<id>` | [`NetworkRec`] | API |
//! | `names/networks/<name>` | network ID (unique names) | API |
//! | `subnets/<addr>_<len>` | network ID (a subnet taken from a pool) | API |
//! | `sandboxes/<id>` | [`SandboxRec`] | API, service scheduler |
//! | `names/sandboxes/<name>` | sandbox ID | API, service scheduler |
//! | `endpoints/<net>/<sandbox>` | [`EndpointRec`] | API |
//! | `ipam/<net>/<ip>` | owner: `sandbox:<id>` or `vip:<service id>` | API |
//! | `services/<id>` | [`ServiceRec`] | API |
//! | `names/services/<name>` | service ID | API |
//! | `svcnets/<net>/<service>` | empty: the service uses the network | API |
//! | `status/<sandbox>` | [`StatusRec`]: observations of this node | supervisor |
//! | `meta/networks` | a guard bumped by every network create/remove | API |
//! | `nodes/<id>` | [`NodeRec`]: a cluster node (cluster store) | the node itself |
//! | `alive/<id>` | empty, under the node's lease: the node is up | the node itself |
//! | `vni/<vni>` | overlay network ID (a VNI taken) | API |
//! | `peers/<net>/<node>/<sandbox>` | [`PeerRec`]: a node's endpoint on a swarm network, as the other nodes see it, under the node's lease | reconciler |
//! | `assign/<service>/<slot>` | [`AssignRec`]: the node that runs a task slot of a swarm service | dispatcher (the leader) |
//! | `leader` | the ID of the node whose dispatcher assigns task slots, under its lease | dispatcher |
//!
//! With a cluster store (etcd), swarm-scope records — overlay networks, their addresses,
//! subnets and VNIs, nodes, peers, services on overlay networks and their slot assignments —
//! live there; everything else (tasks included: a task is a sandbox of the node that runs it)
//! stays in the node's own store.
//!
//! Records are separate from the API model (`crate::api`): they change only with a new
//! layout version. Desired state (what the user asked for) and observations (`status/`) are
//! different keys with different writers. Facts that only make sense on this node — the
//! namespace path, interface names — are derived from IDs and the node's configuration and
//! never stored.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use sdnet_resolver::model::{EndpointMode, Protocol};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const ROOT: &str = "/sdnet/v1/";

pub fn network(id: &str) -> String {
    format!("{ROOT}networks/{id}")
}
pub fn network_name(name: &str) -> String {
    format!("{ROOT}names/networks/{name}")
}
pub fn subnet(net: &IpNet) -> String {
    format!("{ROOT}subnets/{}_{}", net.network(), net.prefix_len())
}
pub fn sandbox(id: &str) -> String {
    format!("{ROOT}sandboxes/{id}")
}
pub fn sandbox_name(name: &str) -> String {
    format!("{ROOT}names/sandboxes/{name}")
}
pub fn endpoint(net: &str, sandbox: &str) -> String {
    format!("{ROOT}endpoints/{net}/{sandbox}")
}
pub fn endpoints_of(net: &str) -> String {
    format!("{ROOT}endpoints/{net}/")
}
pub fn ipam(net: &str, ip: IpAddr) -> String {
    format!("{ROOT}ipam/{net}/{ip}")
}
pub fn ipam_of(net: &str) -> String {
    format!("{ROOT}ipam/{net}/")
}
pub fn service(id: &str) -> String {
    format!("{ROOT}services/{id}")
}
pub fn service_name(name: &str) -> String {
    format!("{ROOT}names/services/{name}")
}
pub fn service_net(net: &str, svc: &str) -> String {
    format!("{ROOT}svcnets/{net}/{svc}")
}
pub fn service_nets_of(net: &str) -> String {
    format!("{ROOT}svcnets/{net}/")
}
pub fn status(sandbox: &str) -> String {
    format!("{ROOT}status/{sandbox}")
}
pub const NETWORKS_GUARD: &str = "/sdnet/v1/meta/networks";
pub fn node(id: &str) -> String {
    format!("{ROOT}nodes/{id}")
}
pub fn alive(id: &str) -> String {
    format!("{ROOT}alive/{id}")
}
pub fn vni(v: u32) -> String {
    format!("{ROOT}vni/{v}")
}
pub fn peer(net: &str, node: &str, sandbox: &str) -> String {
    format!("{ROOT}peers/{net}/{node}/{sandbox}")
}
pub fn assign(svc: &str, slot: u32) -> String {
    format!("{ROOT}assign/{svc}/{slot}")
}
pub fn assigns_of(svc: &str) -> String {
    format!("{ROOT}assign/{svc}/")
}
pub const LEADER: &str = "/sdnet/v1/leader";

/// What a key names, parsed back (for the state cache and the reconciler).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key<'a> {
    Network(&'a str),
    Sandbox(&'a str),
    Endpoint {
        net: &'a str,
        sandbox: &'a str,
    },
    Ipam {
        net: &'a str,
        ip: IpAddr,
    },
    Service(&'a str),
    Status(&'a str),
    Node(&'a str),
    Alive(&'a str),
    Vni(u32),
    Peer {
        net: &'a str,
        node: &'a str,
        sandbox: &'a str,
    },
    Assign {
        svc: &'a str,
        slot: u32,
    },
    Leader,
    /// Name indexes, subnet claims, service-network links, guards: bookkeeping only.
    Other,
}

pub fn parse(key: &str) -> Key<'_> {
    let Some(rest) = key.strip_prefix(ROOT) else {
        return Key::Other;
    };
    let (kind, rest) = rest.split_once('/').unwrap_or((rest, ""));
    match kind {
        "networks" => Key::Network(rest),
        "sandboxes" => Key::Sandbox(rest),
        "services" => Key::Service(rest),
        "status" => Key::Status(rest),
        "nodes" => Key::Node(rest),
        "alive" => Key::Alive(rest),
        "vni" => rest.parse().map(Key::Vni).unwrap_or(Key::Other),
        "peers" => {
            let mut parts = rest.splitn(3, '/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(net), Some(node), Some(sandbox)) => Key::Peer { net, node, sandbox },
                _ => Key::Other,
            }
        }
        "assign" => match rest
            .split_once('/')
            .and_then(|(svc, slot)| Some((svc, slot.parse().ok()?)))
        {
            Some((svc, slot)) => Key::Assign { svc, slot },
            None => Key::Other,
        },
        "leader" if rest.is_empty() => Key::Leader,
        "endpoints" => match rest.split_once('/') {
            Some((net, sandbox)) => Key::Endpoint { net, sandbox },
            None => Key::Other,
        },
        "ipam" => match rest
            .split_once('/')
            .and_then(|(n, ip)| Some((n, ip.parse().ok()?)))
        {
            Some((net, ip)) => Key::Ipam { net, ip },
            None => Key::Other,
        },
        _ => Key::Other,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("record {key}: {source}")]
pub struct DecodeError {
    pub key: String,
    pub source: serde_json::Error,
}

pub fn encode<T: Serialize>(rec: &T) -> Vec<u8> {
    // Records are plain data (no maps with non-string keys): serializing cannot fail.
    serde_json::to_vec(rec).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(value).map_err(|source| DecodeError {
        key: key.to_string(),
        source,
    })
}

/// Bridge networks: the kernel bridge to use (an existing one is used as it is, never
/// changed or removed; a missing one is created and owned).
pub const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";
/// Macvlan networks: the parent interface, and the mode (bridge, private, vepa, passthru).
pub const PARENT_OPTION: &str = "parent";
pub const MACVLAN_MODE_OPTION: &str = "macvlan_mode";
/// CNI networks: the network configuration list (JSON), stored whole when the network is
/// created (the file it came from may change or vanish).
pub const CNI_CONFIG_OPTION: &str = "cni.config";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    #[default]
    Bridge,
    Host,
    None,
    /// VXLAN across the nodes of a cluster (swarm scope).
    Overlay,
    /// One macvlan link per endpoint on an existing parent interface.
    Macvlan,
    /// Endpoints made by CNI plugins (the addresses are theirs).
    Cni,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Local,
    Swarm,
}

/// A subnet as configured; its allocations are `ipam/` keys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SubnetRec {
    pub subnet: IpNet,
    #[serde(default)]
    pub ip_range: Option<IpNet>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub aux: BTreeMap<String, IpAddr>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NetworkRec {
    pub id: String,
    pub name: String,
    pub driver: DriverKind,
    #[serde(default)]
    pub scope: Scope,
    /// Seconds since the epoch.
    pub created: u64,
    pub subnets: Vec<SubnetRec>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub dns: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub dns_servers: Vec<SocketAddr>,
    #[serde(default)]
    pub ttl: Option<u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// One of the networks every node has (bridge, host, none): cannot be removed.
    #[serde(default)]
    pub predefined: bool,
    /// The VXLAN network identifier of an overlay network.
    #[serde(default)]
    pub vni: Option<u32>,
    /// Its names are served in the host zone (`network create --host-dns=false`: not).
    #[serde(default = "served_by_default")]
    pub host_dns: bool,
}

fn served_by_default() -> bool {
    true
}

impl NetworkRec {
    /// The embedded DNS serves this network.
    pub fn dns_on(&self) -> bool {
        self.dns
            && matches!(
                self.driver,
                DriverKind::Bridge | DriverKind::Overlay | DriverKind::Macvlan | DriverKind::Cni
            )
    }
    /// The kernel bridge of a bridge network: the one named by
    /// `com.docker.network.bridge.name`, else `sd-<id12>`.
    pub fn bridge(&self) -> String {
        match self.options.get(BRIDGE_NAME_OPTION) {
            Some(n) => n.clone(),
            None => bridge_name(&self.id),
        }
    }
    /// The default `bridge` network (legacy links there are hosts-file lines and variables).
    pub fn default_bridge(&self) -> bool {
        self.predefined && self.name == "bridge"
    }
    /// The host zone serves its names: bridge and overlay networks (the default `bridge`
    /// too: sandbox names are unique) unless internal or created with `--host-dns=false`.
    pub fn host_dns_on(&self) -> bool {
        self.host_dns
            && !self.internal
            && matches!(self.driver, DriverKind::Bridge | DriverKind::Overlay)
            && (!self.predefined || self.name == "bridge")
    }
    pub fn v4(&self) -> Option<&SubnetRec> {
        self.subnets
            .iter()
            .find(|s| matches!(s.subnet, IpNet::V4(_)))
    }
    pub fn v6(&self) -> Option<&SubnetRec> {
        self.subnets
            .iter()
            .find(|s| matches!(s.subnet, IpNet::V6(_)))
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PublishRec {
    #[serde(default)]
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// A swarm service's port in host mode (only nodes with a task, no routing mesh).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_mode: bool,
}

impl PublishRec {
    /// Same host binding (address, port, protocol): two of them cannot coexist.
    pub fn same_binding(&self, b: &PublishRec) -> bool {
        self.host_port == b.host_port
            && self.protocol == b.protocol
            && match (self.host_ip, b.host_ip) {
                (None, _) | (_, None) => true,
                (Some(x), Some(y)) => x == y || x.is_unspecified() || y.is_unspecified(),
            }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// Its own namespace with endpoints (or none).
    #[default]
    Own,
    /// Shares the daemon's namespace (`--network host`).
    Host,
}

/// A sandbox that is a task of a service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TaskRef {
    pub service: String,
    pub slot: u32,
    /// The service version the task runs (a newer one rolls it over).
    pub version: u64,
    /// Being stopped: out of DNS and the LB, removed after the drain delay.
    #[serde(default)]
    pub draining: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SandboxRec {
    pub id: String,
    pub name: String,
    pub hostname: String,
    pub created: u64,
    #[serde(default)]
    pub mode: NetMode,
    /// Adopt this existing namespace (`--netns`) instead of creating one; never deleted.
    #[serde(default)]
    pub adopt: Option<PathBuf>,
    #[serde(default)]
    pub ports: Vec<PublishRec>,
    #[serde(default)]
    pub dns: Vec<SocketAddr>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub auto_remove: bool,
    #[serde(default)]
    pub task: Option<TaskRef>,
    /// What happens when its process exits (`--restart`).
    #[serde(default)]
    pub restart: SandboxRestart,
    /// `on-failure:N`: at most N restarts in a row (0: no limit).
    #[serde(default)]
    pub restart_max: u32,
    /// Stopped by the user (`sdctl stop`): its process is not to run. Desired state: the
    /// reconciler makes the process match.
    #[serde(default)]
    pub stopped: bool,
    /// How long a stop waits after SIGTERM before SIGKILL.
    #[serde(default = "default_stop_ms")]
    pub stop_timeout_ms: u64,
    /// Bumped by every `start`/`restart`: a process started for an older run is replaced.
    #[serde(default)]
    pub runs: u64,
    /// Frozen by the user (`sdctl pause`).
    #[serde(default)]
    pub paused: bool,
    /// Legacy links (`--link TARGET[:ALIAS]`), by the target's name: a target removed and
    /// made again under that name is linked again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkRec>,
    /// Exposed ports (`--expose`, and the container ports of `-p`), sorted, no duplicates:
    /// the ports a link to this sandbox announces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<ExposeRec>,
}

pub fn default_stop_ms() -> u64 {
    10_000
}

/// A plain sandbox's restart policy (Docker's `--restart`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxRestart {
    #[default]
    No,
    OnFailure,
    Always,
    UnlessStopped,
}

/// A legacy link to the sandbox named `target`, known to the linker as `alias`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LinkRec {
    pub target: String,
    pub alias: String,
}

/// An exposed port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExposeRec {
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EndpointRec {
    pub network: String,
    pub sandbox: String,
    /// The interface inside the sandbox is `eth<index>`.
    pub index: u32,
    /// Attachment order: the first shared network answers plain names.
    pub order: u64,
    #[serde(default)]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    pub mac: [u8; 6],
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HealthRec {
    pub cmd: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    Any,
    OnFailure,
    None,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceNetRec {
    pub network: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub vip: Option<Ipv4Addr>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DeclaredPortRec {
    pub name: String,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceRec {
    pub id: String,
    pub name: String,
    pub created: u64,
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub replicas: u32,
    pub mode: EndpointMode,
    pub networks: Vec<ServiceNetRec>,
    #[serde(default)]
    pub ports: Vec<DeclaredPortRec>,
    #[serde(default)]
    pub publish: Vec<PublishRec>,
    #[serde(default)]
    pub health: Option<HealthRec>,
    #[serde(default)]
    pub restart: Restart,
    pub drain_ms: u64,
    /// Bumped by updates that need new tasks.
    pub version: u64,
    /// Where its tasks run (swarm services: `--mode global`, `--constraint`).
    #[serde(default)]
    pub placement: PlacementRec,
}

/// A node of a cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeRec {
    pub id: String,
    pub name: String,
    /// The address other nodes reach it at (its VXLAN tunnel endpoint).
    pub addr: IpAddr,
    pub data_port: u16,
    pub joined: u64,
}

/// A node's endpoint on a swarm network, with what other nodes need to answer its names and
/// to reach it (its address behind the node's tunnel endpoint).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PeerRec {
    pub network: String,
    pub node: String,
    pub sandbox: String,
    pub name: String,
    pub hostname: String,
    /// Attachment order on the sandbox (names answer from the first shared network).
    #[serde(default)]
    pub order: u64,
    #[serde(default)]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    pub mac: [u8; 6],
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The service task it is, if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<PeerTask>,
}

/// A task of a swarm service on another node, as DNS and the LB need it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PeerTask {
    pub service: String,
    pub slot: u32,
    /// Visible: running, healthy if checked, not draining (in DNS and the LB only then).
    pub healthy: bool,
    /// The service version it runs (rolling updates go one slot at a time cluster-wide).
    #[serde(default)]
    pub version: u64,
}

/// Which node runs a task slot of a swarm service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AssignRec {
    pub node: String,
}

/// Where a service's tasks may run (swarm services).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct PlacementRec {
    /// One task per (eligible) node instead of `replicas`.
    #[serde(default)]
    pub global: bool,
    #[serde(default)]
    pub constraints: Vec<ConstraintRec>,
}

/// `node.name==N`, `node.name!=N` (also `node.id`, `node.addr`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ConstraintRec {
    pub key: String,
    pub equal: bool,
    pub value: String,
}

impl ConstraintRec {
    /// Parses `KEY==VALUE` or `KEY!=VALUE`.
    pub fn parse(s: &str) -> Result<ConstraintRec, String> {
        let (key, equal, value) = if let Some((k, v)) = s.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = s.split_once("!=") {
            (k, false, v)
        } else {
            return Err(format!(
                "constraint {s:?}: expected KEY==VALUE or KEY!=VALUE (KEY: node.name, node.id, node.addr)"
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        if !matches!(key, "node.name" | "node.id" | "node.addr") {
            return Err(format!(
                "constraint {s:?}: unknown key {key:?} (node.name, node.id or node.addr)"
            ));
        }
        if value.is_empty() {
            return Err(format!("constraint {s:?}: no value"));
        }
        Ok(ConstraintRec {
            key: key.to_string(),
            equal,
            value: value.to_string(),
        })
    }

    /// Whether node `n` satisfies it (a node ID matches by prefix, as `node inspect` does).
    pub fn allows(&self, n: &NodeRec) -> bool {
        let hit = match self.key.as_str() {
            "node.name" => n.name == self.value,
            "node.id" => n.id.starts_with(&self.value),
            "node.addr" => n.addr.to_string() == self.value,
            _ => false,
        };
        hit == self.equal
    }
}

/// What this node observed about a sandbox's process and health.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct StatusRec {
    #[serde(default)]
    pub pid: Option<u32>,
    /// Start time in clock ticks since boot (/proc/PID/stat field 22): tells our process from
    /// a later one that reused the PID.
    #[serde(default)]
    pub start_ticks: u64,
    #[serde(default)]
    pub started_at: Option<u64>,
    #[serde(default)]
    pub finished_at: Option<u64>,
    #[serde(default)]
    pub exited: bool,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Passed its health check since it last failed it.
    #[serde(default)]
    pub healthy: bool,
    /// Failed its check `retries` times in a row.
    #[serde(default)]
    pub unhealthy: bool,
    /// The process could not be started: why.
    #[serde(default)]
    pub error: Option<String>,
    /// The sandbox's run (`SandboxRec::runs`) this process was started for.
    #[serde(default)]
    pub run: u64,
    /// Restarts by the restart policy since the last start by the user.
    #[serde(default)]
    pub restart_count: u32,
    /// Exited, and the restart policy starts it again after `backoff_ms`.
    #[serde(default)]
    pub restarting: bool,
    /// The delay before the last policy restart (doubles, from 100 ms).
    #[serde(default)]
    pub backoff_ms: u64,
    /// A policy restart is due: the reconciler starts a process for this record.
    #[serde(default)]
    pub due: bool,
}

/// The prefix of the bridges we create (`sd-<id12>`; see `config` for the other links').
pub const BRIDGE_PREFIX: &str = "sd-";

/// The first 12 characters of an ID (all of it if shorter). Never splits a character: IDs
/// are hex when we make them, but a record may come from a corrupted store.
pub fn short(id: &str) -> &str {
    id.char_indices().nth(12).map_or(id, |(i, _)| &id[..i])
}

/// The bridge of a bridge network.
pub fn bridge_name(net_id: &str) -> String {
    format!("{BRIDGE_PREFIX}{}", short(net_id))
}

/// A stable 64-bit hash (FNV-1a) of parts, for names derived from IDs. Unlike std's
/// `DefaultHasher` it never changes between builds, Rust releases or nodes.
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Fuzzing (`fuzz/fuzz_targets/store_record.rs`, and over the kept corpus in the tests):
/// arbitrary bytes as a key and as any record. A key parses or is `Other`; a value decodes
/// into a record that survives a round trip unchanged, or is refused — never a panic.
#[cfg_attr(not(test), allow(dead_code))]
pub fn fuzz_record(data: &[u8]) {
    fn round<T>(value: &[u8])
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        if let Ok(r) = decode::<T>("fuzz", value) {
            match decode::<T>("fuzz", &encode(&r)) {
                Ok(again) => assert_eq!(again, r, "a record changed in a round trip"),
                Err(e) => panic!("a decoded record does not decode again: {e}"),
            }
        }
    }
    let Some((&kind, value)) = data.split_first() else {
        return;
    };
    if let Ok(key) = std::str::from_utf8(value) {
        let _ = parse(key);
    }
    match kind % 12 {
        0 => round::<NetworkRec>(value),
        1 => round::<SandboxRec>(value),
        2 => round::<EndpointRec>(value),
        3 => round::<ServiceRec>(value),
        4 => round::<StatusRec>(value),
        5 => round::<NodeRec>(value),
        6 => round::<PeerRec>(value),
        7 => round::<AssignRec>(value),
        8 => round::<SubnetRec>(value),
        9 => round::<HealthRec>(value),
        10 => round::<PlacementRec>(value),
        _ => {
            if let Ok(n) = decode::<NetworkRec>("fuzz", value) {
                let _ = (n.bridge(), n.dns_on(), n.host_dns_on());
            }
        }
    }
}

// By path: `fuzz/` compiles this file by path too.
#[cfg(test)]
#[path = "schema/tests.rs"]
mod tests;
