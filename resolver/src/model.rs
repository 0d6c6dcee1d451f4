//! The desired state the resolver serves: networks, sandboxes (with their endpoints) and
//! services. The daemon holds exactly this model; `sdctl dns serve` reads it from a JSON file.
//! Everything here is plain data plus validation; the tables compile it for lookups.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Default TTL of sandbox and task records: 0, because sandboxes come and go at any moment
/// and a cached address of a removed sandbox is worse than one more query to 127.0.0.11.
pub const DEFAULT_TTL: u32 = 0;
/// Default TTL of service VIP records: a VIP lives as long as its service.
pub const DEFAULT_VIP_TTL: u32 = 600;

/// Whose answer semantics the engine follows (DESIGN.md §3 is Docker's; `Podman` is
/// aardvark-dns's, for `sdctl aardvark-dns`). One resolver serves one policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// A sandbox's name, short ID, hostname and aliases; the first shared network in
    /// attachment order answers; `name.network`; PTR `name.network.`.
    #[default]
    Docker,
    /// Only the endpoints' aliases are names; a name answers the union of its addresses over
    /// every network of the asking sandbox; `search_domain` (lower case, no outer dots) is
    /// stripped from queries and names under it are never forwarded; PTR answers every name
    /// of the address; network upstreams are the union over the sandbox's networks.
    Podman { search_domain: Arc<str> },
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(default)]
    pub networks: Vec<Network>,
    #[serde(default)]
    pub sandboxes: Vec<Sandbox>,
    #[serde(default)]
    pub services: Vec<Service>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub id: String,
    pub name: String,
    /// No egress: a sandbox only on internal networks never has its queries forwarded.
    #[serde(default)]
    pub internal: bool,
    /// Names on this network are served (false for the default `bridge` network, as in Docker).
    #[serde(default = "yes")]
    pub dns: bool,
    /// Upstream servers for sandboxes whose first forwarding network is this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<Upstream>,
    /// TTL of sandbox and task records on this network (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// TTL of service VIP records on this network (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_ttl: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Sandbox {
    /// 64 lowercase hex digits; the first 12 are the short ID, which is a DNS name too.
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Endpoints in attachment order: the first shared network answers a plain name.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Per-sandbox upstream servers (`--dns`); they win over network and host servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<Upstream>,
    /// Set when this sandbox is a task of a service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskInfo>,
    /// Legacy links on user-defined networks: names only this sandbox's queries see.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkAlias>,
}

/// A legacy link on a user-defined network (`--link TARGET:ALIAS`): `name` answers the
/// target's addresses on `network`, and only for the linking sandbox (Docker keeps the alias
/// on the linker's endpoint). It is looked up before the network's own names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LinkAlias {
    pub name: String,
    /// Network ID or name.
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Network ID or name.
    pub network: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TaskInfo {
    /// Service ID or name.
    pub service: String,
    pub slot: u32,
    /// In DNS (and the LB) only while true: running, healthy if it has a health check, and
    /// not draining. An unhealthy task can still query.
    #[serde(default = "yes")]
    pub healthy: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub mode: EndpointMode,
    #[serde(default)]
    pub networks: Vec<ServiceNetwork>,
    /// Declared ports, served as SRV `_name._proto.service`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    #[default]
    Vip,
    Dnsrr,
}

impl fmt::Display for EndpointMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceNetwork {
    /// Network ID or name.
    pub network: String,
    /// The service's virtual IP on this network (vip mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

impl FromStr for Protocol {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(ModelError::BadProtocol(s.to_string())),
        }
    }
}

/// An upstream DNS server: `IP` (port 53) or `IP:PORT` / `[IPv6]:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Upstream(pub SocketAddr);

impl FromStr for Upstream {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Upstream(sa));
        }
        match s.parse::<IpAddr>() {
            Ok(ip) => Ok(Upstream(SocketAddr::new(ip, 53))),
            Err(_) => Err(ModelError::BadUpstream(s.to_string())),
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.port() == 53 {
            write!(f, "{}", self.0.ip())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl Serialize for Upstream {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Upstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("invalid {kind} name {name:?}: {why}")]
    BadName {
        kind: &'static str,
        name: String,
        why: &'static str,
    },
    #[error("invalid {kind} ID {id:?}: {why}")]
    BadId {
        kind: &'static str,
        id: String,
        why: &'static str,
    },
    #[error("duplicate {kind} {what:?}")]
    Duplicate { kind: &'static str, what: String },
    #[error("{owner} refers to unknown {kind} {what:?}")]
    Unknown {
        owner: String,
        kind: &'static str,
        what: String,
    },
    #[error("invalid upstream {0:?}: expected IP or IP:PORT")]
    BadUpstream(String),
    #[error("invalid protocol {0:?}: expected tcp or udp")]
    BadProtocol(String),
    #[error("{0}")]
    Invalid(String),
}

/// Checks a sandbox or network name: Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, and usable as DNS
/// labels (no empty label, labels of at most 63 bytes, at most 253 bytes in all).
pub fn check_object_name(kind: &'static str, name: &str) -> Result<(), ModelError> {
    let bad = |why| ModelError::BadName {
        kind,
        name: name.to_string(),
        why,
    };
    let first = name.bytes().next().ok_or_else(|| bad("empty"))?;
    if !first.is_ascii_alphanumeric() {
        return Err(bad("must start with a letter or digit"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
    {
        return Err(bad("only letters, digits, '_', '.' and '-' are allowed"));
    }
    check_labels(name).map_err(bad)
}

/// Checks a DNS name given by a user (alias, hostname): letters, digits, '_' and '-' in
/// non-empty labels of at most 63 bytes, at most 253 bytes; a trailing dot is not allowed.
pub fn check_dns_name(kind: &'static str, name: &str) -> Result<(), ModelError> {
    let bad = |why| ModelError::BadName {
        kind,
        name: name.to_string(),
        why,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
    {
        return Err(bad("only letters, digits, '_', '.' and '-' are allowed"));
    }
    check_labels(name).map_err(bad)
}

fn check_labels(name: &str) -> Result<(), &'static str> {
    if name.len() > 253 {
        return Err("longer than 253 bytes");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (leading, trailing or double dot)");
        }
        if label.len() > 63 {
            return Err("a label is longer than 63 bytes");
        }
    }
    Ok(())
}

/// Checks a sandbox ID: 64 lowercase hex digits.
pub fn check_sandbox_id(id: &str) -> Result<(), ModelError> {
    if id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(ModelError::BadId {
            kind: "sandbox",
            id: id.to_string(),
            why: "expected 64 lowercase hex digits",
        })
    }
}

fn check_plain_id(kind: &'static str, id: &str) -> Result<(), ModelError> {
    if !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(ModelError::BadId {
            kind,
            id: id.to_string(),
            why: "expected 1-128 letters, digits, '-' or '_'",
        })
    }
}

impl Sandbox {
    /// The 12-hex short ID (a DNS name of the sandbox, as in Docker).
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
}

impl State {
    /// Checks every object on its own and every reference between objects.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.validate_for(&Policy::Docker)
    }

    /// `validate` for tables with `policy`: under Podman a sandbox may have several endpoints
    /// on one network (one per address of a multi-subnet network).
    pub fn validate_for(&self, policy: &Policy) -> Result<(), ModelError> {
        let podman = matches!(policy, Policy::Podman { .. });
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        for n in &self.networks {
            check_plain_id("network", &n.id)?;
            check_object_name("network", &n.name)?;
            if !ids.insert(n.id.as_str()) {
                return dup("network ID", &n.id);
            }
            if !names.insert(n.name.to_ascii_lowercase()) {
                return dup("network name", &n.name);
            }
        }
        let net_known = |r: &str| {
            self.networks
                .iter()
                .any(|n| n.id == r || n.name.eq_ignore_ascii_case(r))
        };
        let mut svc_ids = HashSet::new();
        let mut svc_names = HashSet::new();
        for s in &self.services {
            check_plain_id("service", &s.id)?;
            check_object_name("service", &s.name)?;
            if !svc_ids.insert(s.id.as_str()) {
                return dup("service ID", &s.id);
            }
            if !svc_names.insert(s.name.to_ascii_lowercase()) {
                return dup("service name", &s.name);
            }
            let mut seen_nets = HashSet::new();
            for sn in &s.networks {
                if !net_known(&sn.network) {
                    return unknown(format!("service {}", s.name), "network", &sn.network);
                }
                if !seen_nets.insert(sn.network.as_str()) {
                    return dup("service network", &sn.network);
                }
                for a in &sn.aliases {
                    check_dns_name("service alias", a)?;
                }
                if s.mode == EndpointMode::Dnsrr && sn.vip.is_some() {
                    return Err(ModelError::Invalid(format!(
                        "service {}: a dnsrr service has no VIP",
                        s.name
                    )));
                }
            }
            for p in &s.ports {
                check_dns_name("port", &p.name)?;
                if p.name.contains('.') {
                    return Err(ModelError::Invalid(format!(
                        "service {}: port name {:?} must be a single label",
                        s.name, p.name
                    )));
                }
            }
        }
        let mut sb_ids = HashSet::new();
        let mut sb_names = HashSet::new();
        for sb in &self.sandboxes {
            check_sandbox_id(&sb.id)?;
            check_object_name("sandbox", &sb.name)?;
            if !sb_ids.insert(sb.id.as_str()) {
                return dup("sandbox ID", &sb.id);
            }
            if !sb_names.insert(sb.name.to_ascii_lowercase()) {
                return dup("sandbox name", &sb.name);
            }
            if let Some(h) = &sb.hostname {
                check_dns_name("hostname", h)?;
            }
            let mut seen_nets = HashSet::new();
            for ep in &sb.endpoints {
                if !net_known(&ep.network) {
                    return unknown(format!("sandbox {}", sb.name), "network", &ep.network);
                }
                if !seen_nets.insert(ep.network.as_str()) && !podman {
                    return dup("endpoint network", &ep.network);
                }
                for a in &ep.aliases {
                    check_dns_name("alias", a)?;
                }
            }
            for l in &sb.links {
                check_dns_name("link alias", &l.name)?;
                if !net_known(&l.network) {
                    return unknown(format!("sandbox {}", sb.name), "network", &l.network);
                }
            }
            if let Some(t) = &sb.task {
                let known = self
                    .services
                    .iter()
                    .any(|s| s.id == t.service || s.name.eq_ignore_ascii_case(&t.service));
                if !known {
                    return unknown(format!("sandbox {}", sb.name), "service", &t.service);
                }
            }
        }
        Ok(())
    }
}

fn dup(kind: &'static str, what: &str) -> Result<(), ModelError> {
    Err(ModelError::Duplicate {
        kind,
        what: what.to_string(),
    })
}

fn unknown(owner: String, kind: &'static str, what: &str) -> Result<(), ModelError> {
    Err(ModelError::Unknown {
        owner,
        kind,
        what: what.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_object_name("sandbox", "web-1.x_y").is_ok());
        assert!(check_object_name("sandbox", "-web").is_err());
        assert!(check_object_name("sandbox", "web..x").is_err());
        assert!(check_object_name("sandbox", "web.").is_err());
        assert!(check_object_name("sandbox", "we b").is_err());
        assert!(check_object_name("sandbox", &"a".repeat(64)).is_err());
        assert!(check_dns_name("alias", "_http").is_ok());
        assert!(check_dns_name("alias", "").is_err());
        assert!(check_sandbox_id(&"ab".repeat(32)).is_ok());
        assert!(check_sandbox_id(&"AB".repeat(32)).is_err());
    }

    #[test]
    fn upstream_parse() {
        assert_eq!(
            "1.2.3.4".parse::<Upstream>().unwrap().0,
            "1.2.3.4:53".parse().unwrap()
        );
        assert_eq!(
            "[::1]:5353".parse::<Upstream>().unwrap().0,
            "[::1]:5353".parse().unwrap()
        );
        assert!("nope".parse::<Upstream>().is_err());
        assert_eq!(
            serde_json::to_string(&Upstream("1.2.3.4:53".parse().unwrap())).unwrap(),
            "\"1.2.3.4\""
        );
    }

    #[test]
    fn validate_refs() {
        let st: State = serde_json::from_str(
            r#"{"networks":[{"id":"n1","name":"net1"}],
                "sandboxes":[{"id":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                              "name":"a","endpoints":[{"network":"nope"}]}]}"#,
        )
        .unwrap();
        assert!(matches!(st.validate(), Err(ModelError::Unknown { .. })));
    }
}
