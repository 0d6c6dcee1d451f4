//! The services part of the API model: `sdctl service create|update|ls|inspect` requests and
//! what the daemon answers about services and their tasks.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceNetworkReq {
    pub network: String,
    #[serde(default)]
    pub aliases: Vec<String>,
}

impl std::str::FromStr for ServiceNetworkReq {
    type Err = String;
    /// `NET` or `NET,alias=A[,alias=B]` (Docker's `--network name=NET,alias=A` too).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = ServiceNetworkReq::default();
        for (i, part) in s.split(',').enumerate() {
            match part.split_once('=') {
                None if i == 0 => out.network = part.to_string(),
                Some(("name" | "network", v)) => out.network = v.to_string(),
                Some(("alias", v)) => out.aliases.push(v.to_string()),
                _ => return Err(format!("invalid --network {s:?}: expected NET[,alias=A]…")),
            }
        }
        if out.network.is_empty() {
            return Err(format!("invalid --network {s:?}: no network"));
        }
        Ok(out)
    }
}

/// A declared port (`--port http:80/tcp`), served as SRV `_http._tcp.<service>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct DeclaredPort {
    pub name: String,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

impl std::str::FromStr for DeclaredPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid --port {s:?}: expected NAME:PORT[/tcp|udp]");
        let (name, rest) = s.split_once(':').ok_or_else(bad)?;
        let (port, proto) = match rest.split_once('/') {
            Some((p, pr)) => (p, pr.parse::<Protocol>().map_err(|_| bad())?),
            None => (rest, Protocol::Tcp),
        };
        let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(bad)?;
        if name.is_empty() || name.contains('.') {
            return Err(bad());
        }
        Ok(DeclaredPort {
            name: name.to_string(),
            port,
            protocol: proto,
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HealthSpec {
    /// Run with `/bin/sh -c` inside the task; exit 0 = healthy.
    pub cmd: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Replace a task whenever it exits (Docker swarm's default, `any`).
    #[default]
    Any,
    /// Replace it only when it exits with a non-zero code.
    OnFailure,
    /// Never replace it.
    None,
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "any" => Ok(RestartPolicy::Any),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "none" => Ok(RestartPolicy::None),
            _ => Err(format!(
                "invalid restart condition {s:?}: use any, on-failure or none"
            )),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ServiceCreate {
    pub name: String,
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub replicas: u32,
    pub networks: Vec<ServiceNetworkReq>,
    #[serde(default)]
    pub endpoint_mode: sdnet_resolver::model::EndpointMode,
    #[serde(default)]
    pub ports: Vec<DeclaredPort>,
    #[serde(default)]
    pub publish: Vec<PortSpec>,
    #[serde(default)]
    pub health: Option<HealthSpec>,
    #[serde(default)]
    pub restart: RestartPolicy,
    pub drain_ms: u64,
    /// One task per node (`--mode global`) instead of `replicas`.
    #[serde(default)]
    pub global: bool,
    /// `node.name==N`, `node.name!=N` (also node.id, node.addr): where tasks may run.
    #[serde(default)]
    pub constraints: Vec<String>,
}

/// Changes to a service; absent fields stay as they are.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ServiceUpdate {
    pub replicas: Option<u32>,
    /// A new command rolls every task over (one at a time).
    pub command: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub health: Option<Option<HealthSpec>>,
    pub restart: Option<RestartPolicy>,
    pub drain_ms: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TaskView {
    pub name: String,
    pub id: String,
    pub slot: u32,
    /// starting, running, unhealthy, draining, exited
    pub state: String,
    /// healthy, unhealthy, starting, or "" without a health check
    pub health: String,
    pub node: String,
    pub ips: Vec<String>,
    pub exit_code: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ServiceInfo {
    pub id: String,
    pub name: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub mode: sdnet_resolver::model::EndpointMode,
    pub replicas: u32,
    pub running: u32,
    pub command: Vec<String>,
    pub networks: Vec<ServiceNetworkView>,
    pub ports: Vec<DeclaredPort>,
    pub publish: Vec<PortSpec>,
    pub health: Option<HealthSpec>,
    pub restart: RestartPolicy,
    pub drain_ms: u64,
    /// One task per node (`replicas` is then the number of nodes that run one).
    #[serde(default)]
    pub global: bool,
    #[serde(default)]
    pub constraints: Vec<String>,
    /// `local` (this node's bridge networks) or `swarm` (overlay networks, every node).
    #[serde(default)]
    pub scope: String,
    pub tasks: Vec<TaskView>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServiceNetworkView {
    pub network: String,
    pub vip: Option<Ipv4Addr>,
    pub aliases: Vec<String>,
}
