//! The API model: what the client sends and the daemon answers, as JSON over the unix socket.
//! Shared by both halves of the binary (and nothing else is).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::IpNet;
use sdnet_resolver::model::{Protocol, Upstream};
use serde::{Deserialize, Serialize};

pub const API_PREFIX: &str = "/v1";

/// A time in the API: RFC 3339 in UTC with whole seconds (`2026-12-03T17:09:09Z`), from the
/// unix seconds the daemon records. Fixed width, so such strings also sort by time.
pub fn rfc3339(unix_secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix_secs);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Reads an API time back (any RFC 3339 precision, UTC).
pub fn parse_rfc3339(s: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    #[default]
    Bridge,
    Host,
    None,
    Overlay,
    Macvlan,
    /// Endpoints made by CNI plugins.
    Cni,
    /// Accepted by the parser so that the daemon can say why it cannot make one.
    Ipvlan,
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Driver::Bridge => "bridge",
            Driver::Host => "host",
            Driver::None => "none",
            Driver::Overlay => "overlay",
            Driver::Macvlan => "macvlan",
            Driver::Cni => "cni",
            Driver::Ipvlan => "ipvlan",
        })
    }
}

impl std::str::FromStr for Driver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bridge" => Ok(Driver::Bridge),
            "host" => Ok(Driver::Host),
            "none" => Ok(Driver::None),
            "overlay" => Ok(Driver::Overlay),
            "macvlan" => Ok(Driver::Macvlan),
            "cni" => Ok(Driver::Cni),
            "ipvlan" => Ok(Driver::Ipvlan),
            _ => Err(format!(
                "unknown driver {s:?}: use bridge, macvlan, cni or overlay (host and none exist already)"
            )),
        }
    }
}

/// `network create -d cni`: the option carrying the CNI configuration list (JSON).
pub const CNI_CONFIG_OPTION: &str = "cni.config";

/// One subnet of a network as requested (`--subnet`, `--ip-range`, `--gateway`, `--aux-address`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct IpamRequest {
    pub subnet: Option<IpNet>,
    pub ip_range: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub aux: BTreeMap<String, IpAddr>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct NetworkCreate {
    pub name: String,
    #[serde(default)]
    pub driver: Driver,
    #[serde(default)]
    pub ipam: Vec<IpamRequest>,
    #[serde(default)]
    pub ipv6: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub attachable: bool,
    /// Embedded DNS on this network (default true; the default `bridge` network has it off).
    #[serde(default)]
    pub dns: Option<bool>,
    /// Names served in the host zone (default true; internal networks never are).
    #[serde(default)]
    pub host_dns: Option<bool>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Upstream DNS servers for sandboxes on this network.
    #[serde(default)]
    pub dns_servers: Vec<Upstream>,
    #[serde(default)]
    pub ttl: Option<u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Driver options (`-o KEY=VALUE`), checked by the daemon against the driver.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// A subnet of a network with its allocations.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SubnetInfo {
    pub subnet: IpNet,
    pub ip_range: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub aux: BTreeMap<String, IpAddr>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct NetworkInfo {
    pub id: String,
    pub name: String,
    pub driver: Driver,
    pub scope: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub subnets: Vec<SubnetInfo>,
    pub internal: bool,
    pub attachable: bool,
    pub dns: bool,
    /// Served in the host zone (`sdctl daemon --host-dns`).
    #[serde(default)]
    pub host_dns: bool,
    pub mtu: u32,
    pub dns_servers: Vec<Upstream>,
    pub ttl: Option<u32>,
    /// Kernel bridge device (bridge driver).
    pub bridge: Option<String>,
    /// VXLAN network identifier (overlay driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// Driver options (a macvlan's parent and mode, a bridge's chosen name).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Sandboxes attached, with their addresses.
    pub endpoints: Vec<EndpointInfo>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub sandbox: String,
    pub network: String,
    pub interface: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub mac: Option<String>,
    pub aliases: Vec<String>,
    /// The names this endpoint answers on its network.
    pub dns_names: Vec<String>,
    /// The last CNI CHECK of the endpoint (`-d cni`), once one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_check: Option<CniCheck>,
}

/// What the last CNI CHECK of an endpoint found (run on the daemon's full passes).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CniCheck {
    /// RFC 3339, UTC.
    pub at: String,
    /// `passed`, `failed` (the endpoint is repaired: DEL, then ADD), `skipped` (the
    /// configuration's version or `disableCheck`) or `not run` (a plugin could not run).
    pub result: String,
    /// The plugin's message, or why CHECK was skipped or not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// While the endpoint is broken (its repair pending or failed, tried again on the next
    /// pass): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
    /// Repairs that succeeded since the daemon started.
    pub repairs: u32,
}

/// A published port: `[hip:]hp:cp[/proto]`, or Docker's long form
/// `mode=host|ingress,published=HP,target=CP[,protocol=tcp|udp]` (services).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortSpec {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// `mode=host`: a swarm service's port answers only on nodes with a task, served by
    /// those tasks, which see the client's address (the default, `ingress`, answers on every
    /// node through the routing mesh).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_mode: bool,
}

impl PortSpec {
    /// Docker's long form: `mode=…,published=…,target=…,protocol=…`.
    fn parse_long(s: &str) -> Result<PortSpec, String> {
        let bad = |why: &str| {
            format!(
                "invalid port spec {s:?}: {why} (expected mode=host|ingress,published=PORT,target=PORT[,protocol=tcp|udp])"
            )
        };
        let port = |p: &str| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(bad("ports are 1-65535")),
                Ok(n) => Ok(n),
            }
        };
        let (mut host_mode, mut published, mut target, mut protocol) =
            (false, None, None, Protocol::Tcp);
        for kv in s.split(',') {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad(&format!("{kv:?} is not KEY=VALUE")))?;
            match k.trim() {
                "mode" => {
                    host_mode = match v.trim() {
                        "host" => true,
                        "ingress" => false,
                        m => return Err(bad(&format!("unknown mode {m:?}"))),
                    }
                }
                "published" => published = Some(port(v.trim())?),
                "target" => target = Some(port(v.trim())?),
                "protocol" => {
                    protocol = v
                        .trim()
                        .parse::<Protocol>()
                        .map_err(|e| bad(&e.to_string()))?
                }
                k => return Err(bad(&format!("unknown key {k:?}"))),
            }
        }
        let target = target.ok_or_else(|| bad("target is missing"))?;
        Ok(PortSpec {
            host_ip: None,
            host_port: published.ok_or_else(|| bad("published is missing"))?,
            container_port: target,
            protocol,
            host_mode,
        })
    }
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => f.write_str("0.0.0.0:")?,
        }
        write!(
            f,
            "{}->{}/{}",
            self.host_port, self.container_port, self.protocol
        )?;
        if self.host_mode {
            f.write_str(" (host)")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for PortSpec {
    type Err = String;
    /// `hp:cp`, `hip:hp:cp`, `[v6]:hp:cp`, each optionally `/tcp` or `/udp`.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.contains('=') {
            return PortSpec::parse_long(s);
        }
        let bad = |why: &str| {
            format!("invalid port spec {s:?}: {why} (expected [IP:]HOSTPORT:PORT[/tcp|udp])")
        };
        let (spec, proto) = match s.rsplit_once('/') {
            Some((a, p)) => (a, p.parse::<Protocol>().map_err(|e| bad(&e.to_string()))?),
            None => (s, Protocol::Tcp),
        };
        let (host_ip, rest) = if let Some(r) = spec.strip_prefix('[') {
            let (ip, rest) = r
                .split_once("]:")
                .ok_or_else(|| bad("unterminated [IPv6]"))?;
            (Some(ip.parse::<IpAddr>().map_err(|_| bad("bad IP"))?), rest)
        } else {
            let parts: Vec<&str> = spec.split(':').collect();
            match parts.len() {
                2 => (None, spec),
                3 => (
                    Some(parts[0].parse::<IpAddr>().map_err(|_| bad("bad IP"))?),
                    &spec[parts[0].len() + 1..],
                ),
                _ => return Err(bad("wrong number of ':'")),
            }
        };
        let (hp, cp) = rest.split_once(':').ok_or_else(|| bad("missing ':'"))?;
        let port = |p: &str| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(bad("ports are 1-65535")),
                Ok(n) => Ok(n),
            }
        };
        Ok(PortSpec {
            host_ip,
            host_port: port(hp)?,
            container_port: port(cp)?,
            protocol: proto,
            host_mode: false,
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkAttach {
    pub network: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct SandboxCreate {
    pub name: Option<String>,
    pub hostname: Option<String>,
    /// Networks in attachment order; empty = the default `bridge` network.
    #[serde(default)]
    pub networks: Vec<NetworkAttach>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// Per-sandbox upstream DNS servers (`--dns`).
    #[serde(default)]
    pub dns: Vec<Upstream>,
    /// Adopt an existing network namespace (`--netns /proc/PID/ns/net`).
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Process to run and supervise inside the sandbox; empty = the sandbox just exists.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// Remove the sandbox when its process exits (`--rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// What happens when its process exits (`--restart`).
    #[serde(default)]
    pub restart: SandboxRestartSpec,
    /// Legacy links to other sandboxes (`--link NAME[:ALIAS]`).
    #[serde(default)]
    pub links: Vec<LinkSpec>,
    /// Ports announced to sandboxes that link to this one (`--expose`); `-p` ports count too.
    #[serde(default)]
    pub expose: Vec<ExposedPort>,
}

/// Docker's `--restart no|on-failure[:N]|always|unless-stopped` for a plain sandbox.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SandboxRestartSpec {
    pub policy: SandboxRestartPolicy,
    /// `on-failure:N`: at most N restarts in a row (0: no limit).
    #[serde(default)]
    pub max_retries: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxRestartPolicy {
    #[default]
    No,
    OnFailure,
    Always,
    UnlessStopped,
}

impl std::str::FromStr for SandboxRestartSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, max) = match s.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (s, None),
        };
        let policy = match name {
            "no" => SandboxRestartPolicy::No,
            "on-failure" => SandboxRestartPolicy::OnFailure,
            "always" => SandboxRestartPolicy::Always,
            "unless-stopped" => SandboxRestartPolicy::UnlessStopped,
            _ => {
                return Err(format!(
                    "invalid restart policy {name:?}: use no, on-failure[:N], always or unless-stopped"
                ));
            }
        };
        let max_retries = match max {
            None => 0,
            Some(m) if policy == SandboxRestartPolicy::OnFailure => m
                .parse::<u32>()
                .map_err(|_| format!("invalid restart policy {s:?}: maximum retry count must be a non-negative number"))?,
            Some(_) => {
                return Err(format!(
                    "invalid restart policy {s:?}: maximum retry count can only be used with 'on-failure'"
                ));
            }
        };
        Ok(SandboxRestartSpec {
            policy,
            max_retries,
        })
    }
}

impl std::fmt::Display for SandboxRestartSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.policy {
            SandboxRestartPolicy::No => f.write_str("no"),
            SandboxRestartPolicy::OnFailure if self.max_retries > 0 => {
                write!(f, "on-failure:{}", self.max_retries)
            }
            SandboxRestartPolicy::OnFailure => f.write_str("on-failure"),
            SandboxRestartPolicy::Always => f.write_str("always"),
            SandboxRestartPolicy::UnlessStopped => f.write_str("unless-stopped"),
        }
    }
}

/// `sdctl stop|restart`: how long to wait after SIGTERM before SIGKILL.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct StopRequest {
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// `sdctl kill`: the signal, by name (`KILL`, `SIGUSR1`) or number.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct KillRequest {
    #[serde(default)]
    pub signal: Option<String>,
}

/// `sdctl wait`: the exit code of the process.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct WaitResult {
    pub status_code: i32,
}

/// One event of `sdctl events` (one JSON object per line on `GET /v1/events`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// RFC 3339 with nanoseconds, UTC.
    pub time: String,
    /// Nanoseconds since the Unix epoch.
    pub time_nano: u64,
    /// `sandbox`, `network` or `service`.
    #[serde(rename = "type")]
    pub kind: String,
    pub action: String,
    pub id: String,
    pub name: String,
    /// More about it: `exitCode`, `sandbox` (of a connect), `signal`, `health_status`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// `--link NAME[:ALIAS]`: the target sandbox (name or ID) and the name the linker knows it
/// by (the target's name when none is given).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LinkSpec {
    pub target: String,
    #[serde(default)]
    pub alias: Option<String>,
}

impl std::str::FromStr for LinkSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid --link {s:?}: expected NAME[:ALIAS]");
        let (target, alias) = match s.split_once(':') {
            Some((t, a)) => (t, Some(a)),
            None => (s, None),
        };
        // Docker accepts `/name` too.
        let target = target.strip_prefix('/').unwrap_or(target);
        if target.is_empty() || alias.is_some_and(|a| a.is_empty() || a.contains(':')) {
            return Err(bad());
        }
        Ok(LinkSpec {
            target: target.to_string(),
            alias: alias.map(str::to_string),
        })
    }
}

/// A link by its name, as `sdctl rm --link` takes it (Docker's): `/LINKING/ALIAS` or
/// `LINKING/ALIAS`, the linking sandbox (name or ID) and the link's alias.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkName {
    pub linker: String,
    pub alias: String,
}

impl std::str::FromStr for LinkName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid link name {s:?}: expected /LINKING/ALIAS");
        let rest = s.strip_prefix('/').unwrap_or(s);
        let (linker, alias) = rest.split_once('/').ok_or_else(bad)?;
        if linker.is_empty() || alias.is_empty() || alias.contains('/') {
            return Err(bad());
        }
        Ok(LinkName {
            linker: linker.to_string(),
            alias: alias.to_string(),
        })
    }
}

/// `--expose PORT[/PROTO]`, or a range `START-END[/PROTO]` (at most [`MAX_EXPOSE_RANGE`] ports).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExposedPort {
    pub port: u16,
    /// Last port of a range (none: one port).
    #[serde(default)]
    pub end: Option<u16>,
    #[serde(default)]
    pub protocol: Protocol,
}

/// The most ports one `--expose` range may name.
pub const MAX_EXPOSE_RANGE: u16 = 1024;

impl std::str::FromStr for ExposedPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            |why: &str| format!("invalid --expose {s:?}: {why} (expected PORT[-END][/tcp|udp])");
        let (ports, protocol) = match s.rsplit_once('/') {
            Some((p, proto)) => (
                p,
                proto.parse::<Protocol>().map_err(|e| bad(&e.to_string()))?,
            ),
            None => (s, Protocol::Tcp),
        };
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad("ports are 1-65535")),
            Ok(n) => Ok(n),
        };
        let (port, end) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, Some(port(b)?)),
            None => (port(ports)?, None),
        };
        let e = ExposedPort {
            port,
            end,
            protocol,
        };
        e.check().map_err(|why| bad(&why))?;
        Ok(e)
    }
}

impl ExposedPort {
    /// A range runs upwards and names at most [`MAX_EXPOSE_RANGE`] ports.
    pub fn check(&self) -> Result<(), String> {
        if self.port == 0 {
            return Err("ports are 1-65535".into());
        }
        match self.end {
            Some(e) if e < self.port => Err("a range must run upwards".into()),
            Some(e) if e - self.port >= MAX_EXPOSE_RANGE => {
                Err(format!("a range of at most {MAX_EXPOSE_RANGE} ports"))
            }
            _ => Ok(()),
        }
    }

    /// Every port it names.
    pub fn ports(&self) -> impl Iterator<Item = u16> + use<> {
        self.port..=self.end.unwrap_or(self.port).max(self.port)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    /// Exists, no process (or its process is running).
    Running,
    /// Its process is frozen (`sdctl pause`).
    Paused,
    /// Its process exited; the restart policy starts it again shortly.
    Restarting,
    /// Its process exited (or was stopped).
    Exited,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SandboxInfo {
    pub id: String,
    pub name: String,
    pub hostname: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// When its process last started (RFC 3339, UTC); none without a process.
    #[serde(default)]
    pub started_at: Option<String>,
    /// When its process last exited (RFC 3339, UTC); none while it runs.
    #[serde(default)]
    pub finished_at: Option<String>,
    pub status: SandboxStatus,
    pub netns: PathBuf,
    pub adopted: bool,
    pub endpoints: Vec<EndpointInfo>,
    pub ports: Vec<PortSpec>,
    pub dns: Vec<Upstream>,
    pub command: Vec<String>,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    /// Files the sandbox's processes see as /etc/resolv.conf and /etc/hosts.
    pub resolv_conf: Option<PathBuf>,
    pub hosts_file: Option<PathBuf>,
    /// Where 127.0.0.11 listens inside (UDP, TCP ports; port 53 is redirected to them).
    pub dns_ports: Option<(u16, u16)>,
    /// `no`, `on-failure[:N]`, `always`, `unless-stopped`.
    #[serde(default)]
    pub restart_policy: String,
    /// Restarts by the restart policy since the last start by the user.
    #[serde(default)]
    pub restart_count: u32,
    /// Legacy links, as Docker shows them (`HostConfig.Links`): `/target:/linker/alias`.
    #[serde(default)]
    pub links: Vec<String>,
    /// Exposed ports (`80/tcp`), the ones a link to this sandbox announces.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ConnectRequest {
    pub sandbox: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DisconnectRequest {
    pub sandbox: String,
    #[serde(default)]
    pub force: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DnsQuery {
    pub from: Option<String>,
    pub name: String,
    pub qtype: String,
    #[serde(default)]
    pub tcp: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DnsAnswer {
    /// dig-like text of the response.
    pub text: String,
    pub rcode: String,
    /// Raw response bytes (base16), for tools.
    pub wire_hex: String,
}

/// How `sdctl exec` enters a sandbox: the daemon's PID (for its mount namespace) and the files.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ExecInfo {
    pub daemon_pid: u32,
    pub netns: PathBuf,
    pub hostname: String,
    pub resolv_conf: Option<PathBuf>,
    pub hosts_file: Option<PathBuf>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct DaemonInfo {
    pub version: String,
    pub pid: u32,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub networks: usize,
    pub sandboxes: usize,
}

/// Process output from an offset on (`GET /v1/sandboxes/NAME/logs?offset=N`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LogChunk {
    pub data: String,
    pub offset: u64,
    pub running: bool,
}

/// A node of the cluster (`sdctl node ls|inspect`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct NodeInfo {
    pub id: String,
    pub name: String,
    /// Its tunnel endpoint, where other nodes reach it.
    pub addr: IpAddr,
    pub data_port: u16,
    /// `ready` while its lease is alive, else `down`.
    pub status: String,
    /// The node that answered.
    #[serde(rename = "self")]
    pub is_self: bool,
    /// Its endpoints on swarm networks.
    pub endpoints: usize,
    pub joined: String,
    /// It dispatches the swarm services' task slots (Docker's "Leader").
    #[serde(default)]
    pub leader: bool,
    /// Task slots of swarm services assigned to it.
    #[serde(default)]
    pub tasks: usize,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Removed {
    pub removed: Vec<String>,
}

// The services part lives in its own file (named by path: `fuzz/` compiles this file by path
// too).
#[path = "api/services.rs"]
mod services;
pub use services::*;

#[cfg(test)]
mod tests;
