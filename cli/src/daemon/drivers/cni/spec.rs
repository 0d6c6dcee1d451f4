//! The CNI specification's data (spec 1.0.0): network configuration lists, the result a
//! plugin prints on ADD, and the error it prints when it fails. Configurations stay JSON
//! objects (a plugin's keys are its own: they go to it as they were written); only what the
//! runtime reads is typed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Spec versions whose configuration and result formats we understand. Configurations of
/// 0.3.x and 0.4.0 differ from 1.0.0 only in fields we do not read.
pub const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// Why a configuration is not a usable CNI network configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadConfig(pub String);

/// A network configuration list (a `.conflist`; a single `.conf` becomes a list of one).
#[derive(Clone, Debug, PartialEq)]
pub struct ConfList {
    pub cni_version: String,
    pub name: String,
    pub disable_check: bool,
    /// Each plugin's configuration object as written (it has a string `type`).
    pub plugins: Vec<Map<String, Value>>,
}

fn str_field<'a>(o: &'a Map<String, Value>, k: &str) -> Result<Option<&'a str>, BadConfig> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(BadConfig(format!("CNI config: {k:?} must be a string"))),
    }
}

/// A plugin type is a file name in the plugin directory: no path, nothing hidden.
pub fn valid_type(t: &str) -> bool {
    !t.is_empty()
        && !t.starts_with('.')
        && t.len() <= 255
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl ConfList {
    /// Parses a `.conflist` (an object with `plugins`) or a `.conf` (one plugin's object
    /// with the network's `name` and `cniVersion`).
    pub fn parse(text: &str) -> Result<ConfList, BadConfig> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| BadConfig(format!("CNI config is not valid JSON: {e}")))?;
        let Value::Object(o) = v else {
            return Err(BadConfig("CNI config must be a JSON object".into()));
        };
        let name = str_field(&o, "name")?
            .filter(|n| !n.is_empty())
            .ok_or_else(|| BadConfig("CNI config has no \"name\"".into()))?
            .to_string();
        let cni_version = str_field(&o, "cniVersion")?
            .ok_or_else(|| BadConfig("CNI config has no \"cniVersion\"".into()))?
            .to_string();
        if !VERSIONS.contains(&cni_version.as_str()) {
            return Err(BadConfig(format!(
                "CNI config version {cni_version} is not supported (supported: {})",
                VERSIONS.join(", ")
            )));
        }
        let (plugins, disable_check) = match o.get("plugins") {
            Some(Value::Array(list)) => {
                let mut plugins = Vec::new();
                for p in list {
                    match p {
                        Value::Object(p) => plugins.push(p.clone()),
                        _ => return Err(BadConfig("CNI config: a plugin is not an object".into())),
                    }
                }
                let dc = match o.get("disableCheck") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    // Some writers put a string there.
                    Some(Value::String(s)) => s == "true",
                    Some(_) => return Err(BadConfig("CNI config: bad \"disableCheck\"".into())),
                };
                (plugins, dc)
            }
            Some(_) => return Err(BadConfig("CNI config: \"plugins\" must be a list".into())),
            None => {
                let mut p = o.clone();
                p.remove("name");
                p.remove("cniVersion");
                (vec![p], false)
            }
        };
        if plugins.is_empty() {
            return Err(BadConfig("CNI config lists no plugins".into()));
        }
        let list = ConfList {
            cni_version,
            name,
            disable_check,
            plugins,
        };
        for t in list.binaries()? {
            if !valid_type(&t) {
                return Err(BadConfig(format!("CNI config: invalid plugin type {t:?}")));
            }
        }
        Ok(list)
    }

    /// The configuration list as JSON (what is stored with the network).
    pub fn to_json(&self) -> String {
        let mut o = Map::new();
        o.insert("cniVersion".into(), self.cni_version.clone().into());
        o.insert("name".into(), self.name.clone().into());
        if self.disable_check {
            o.insert("disableCheck".into(), true.into());
        }
        o.insert(
            "plugins".into(),
            Value::Array(self.plugins.iter().cloned().map(Value::Object).collect()),
        );
        Value::Object(o).to_string()
    }

    /// Why CHECK does not run for this list, if it does not: the spec defines CHECK from
    /// version 0.4.0 on, and a list may turn it off (`disableCheck`).
    pub fn check_skipped(&self) -> Option<String> {
        if self.disable_check {
            return Some("disableCheck is set in the configuration".into());
        }
        if self.cni_version.starts_with("0.3.") {
            return Some(format!(
                "CHECK is not defined for cniVersion {} (0.4.0 and later)",
                self.cni_version
            ));
        }
        None
    }

    /// Whether a plugin of the list declares capability `cap` (`"capabilities": {cap: true}`).
    pub fn declares(&self, cap: &str) -> bool {
        self.plugins.iter().any(|p| {
            p.get("capabilities")
                .and_then(Value::as_object)
                .and_then(|m| m.get(cap))
                .and_then(Value::as_bool)
                == Some(true)
        })
    }

    /// The type of plugin `i`.
    pub fn plugin_type(&self, i: usize) -> &str {
        self.plugins
            .get(i)
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// Every binary the list runs: each plugin's type and its IPAM plugin's, in order.
    pub fn binaries(&self) -> Result<Vec<String>, BadConfig> {
        let mut out = Vec::new();
        for p in &self.plugins {
            let t = str_field(p, "type")?
                .ok_or_else(|| BadConfig("CNI config: a plugin has no \"type\"".into()))?;
            out.push(t.to_string());
            if let Some(Value::Object(ipam)) = p.get("ipam")
                && let Some(t) = str_field(ipam, "type")?
            {
                out.push(t.to_string());
            }
        }
        Ok(out)
    }

    /// What plugin `i` reads on stdin: its configuration with the network's name and
    /// version, the previous result in the chain, and the runtime's values for the
    /// capabilities it declares.
    pub fn plugin_stdin(&self, i: usize, prev: Option<&Value>, runtime: &RuntimeConfig) -> Vec<u8> {
        let mut p = self.plugins.get(i).cloned().unwrap_or_default();
        p.insert("name".into(), self.name.clone().into());
        p.insert("cniVersion".into(), self.cni_version.clone().into());
        if let Some(prev) = prev {
            p.insert("prevResult".into(), prev.clone());
        }
        let caps = p.get("capabilities").and_then(Value::as_object);
        let wants = |c: &str| caps.and_then(|m| m.get(c)).and_then(Value::as_bool) == Some(true);
        let mut rc = Map::new();
        if wants("portMappings") && !runtime.port_mappings.is_empty() {
            rc.insert(
                "portMappings".into(),
                serde_json::to_value(&runtime.port_mappings).unwrap_or(Value::Null),
            );
        }
        if wants("ips") && !runtime.ips.is_empty() {
            rc.insert("ips".into(), runtime.ips.clone().into());
        }
        if !rc.is_empty() {
            p.insert("runtimeConfig".into(), Value::Object(rc));
        }
        Value::Object(p).to_string().into_bytes()
    }
}

/// The capability arguments the runtime passes (only to plugins that ask for them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub port_mappings: Vec<PortMapping>,
    /// The `ips` capability (CONVENTIONS.md): addresses in CIDR form the IPAM plugin should
    /// give (host-local and static honour it); used to keep an address through a repair.
    pub ips: Vec<String>,
}

/// The `portMappings` capability (CONVENTIONS.md), as the portmap plugin reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "hostIP")]
    pub host_ip: Option<String>,
}

/// An interface in a result.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: String,
    /// The namespace path for an interface in the container; empty on the host.
    #[serde(default)]
    pub sandbox: String,
}

/// An address in a result.
#[derive(Clone, Debug, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

/// The parts of an ADD result the runtime reads. (`routes` and `dns` are the plugin's
/// business: our resolver is the sandbox's DNS, so a result's `dns` is not used.)
#[derive(Clone, Debug, Default, Deserialize)]
pub struct AddResult {
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
}

/// What a sandbox's endpoint got from its plugins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Assigned {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub mac: Option<[u8; 6]>,
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn in_sandbox(i: &Interface, ifname: &str) -> bool {
    i.name == ifname && !i.sandbox.is_empty()
}

impl AddResult {
    /// Whether an address of the result is on the container's interface `ifname` (an
    /// address without an interface index counts; one on a host-side interface does not).
    fn on(&self, ip: &IpConfig, ifname: &str) -> bool {
        match ip.interface {
            Some(i) => self
                .interfaces
                .get(i)
                .is_some_and(|x| in_sandbox(x, ifname)),
            None => true,
        }
    }

    /// Every address on the container's interface `ifname`, with its prefix.
    pub fn addresses(&self, ifname: &str) -> Vec<IpNet> {
        self.ips
            .iter()
            .filter(|ip| self.on(ip, ifname))
            .map(|ip| ip.address)
            .collect()
    }

    /// The first IPv4 and IPv6 address on the container's interface `ifname`.
    pub fn assigned(&self, ifname: &str) -> Assigned {
        let mut a = Assigned {
            mac: self
                .interfaces
                .iter()
                .find(|i| in_sandbox(i, ifname))
                .and_then(|i| parse_mac(&i.mac)),
            ..Assigned::default()
        };
        for net in self.addresses(ifname) {
            match net.addr() {
                IpAddr::V4(v4) if a.ipv4.is_none() => a.ipv4 = Some(v4),
                IpAddr::V6(v6) if a.ipv6.is_none() => a.ipv6 = Some(v6),
                _ => {}
            }
        }
        a
    }
}

/// The error object a failing plugin prints.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PluginError {
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"n1","plugins":[
        {"type":"bridge","bridge":"cni-t0","ipam":{"type":"host-local","subnet":"10.9.0.0/24"}},
        {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn conflist_and_conf() {
        let l = ConfList::parse(LIST).unwrap();
        assert_eq!(l.name, "n1");
        assert_eq!(l.binaries().unwrap(), ["bridge", "host-local", "portmap"]);
        let c = ConfList::parse(
            r#"{"cniVersion":"0.4.0","name":"one","type":"macvlan","master":"eth0"}"#,
        )
        .unwrap();
        assert_eq!(c.plugins.len(), 1);
        assert_eq!(c.plugin_type(0), "macvlan");
        assert!(!c.plugins[0].contains_key("name"));
        // Round trip through what is stored.
        assert_eq!(ConfList::parse(&l.to_json()).unwrap(), l);
    }

    #[test]
    fn bad_configs() {
        for bad in [
            "[]",
            "{",
            r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
            r#"{"cniVersion":"9.9.9","name":"x","plugins":[{"type":"bridge"}]}"#,
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[]}"#,
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"bridge":"b"}]}"#,
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"../../bin/sh"}]}"#,
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"b","ipam":{"type":"/x"}}]}"#,
        ] {
            assert!(ConfList::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stdin_gets_name_version_prev_and_capabilities() {
        let l = ConfList::parse(LIST).unwrap();
        let rc = RuntimeConfig {
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: None,
            }],
            ips: vec!["10.9.0.7/24".into()],
        };
        let v: Value = serde_json::from_slice(&l.plugin_stdin(0, None, &rc)).unwrap();
        assert_eq!(v["name"], "n1");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v.get("prevResult").is_none());
        // Only plugins declaring the capability get it.
        assert!(v.get("runtimeConfig").is_none());
        let prev = serde_json::json!({"cniVersion":"1.0.0","ips":[]});
        let v: Value = serde_json::from_slice(&l.plugin_stdin(1, Some(&prev), &rc)).unwrap();
        assert_eq!(v["prevResult"], prev);
        assert_eq!(
            v["runtimeConfig"]["portMappings"][0],
            serde_json::json!({"hostPort":8080,"containerPort":80,"protocol":"tcp"})
        );
        assert!(v["runtimeConfig"].get("ips").is_none());
        // `ips` only to a plugin that declares it, and only when there are some.
        let with_ips = LIST.replace(
            r#""bridge":"cni-t0","#,
            r#""bridge":"cni-t0","capabilities":{"ips":true},"#,
        );
        let l = ConfList::parse(&with_ips).unwrap();
        assert!(l.declares("ips") && l.declares("portMappings") && !l.declares("mac"));
        let v: Value = serde_json::from_slice(&l.plugin_stdin(0, None, &rc)).unwrap();
        assert_eq!(
            v["runtimeConfig"],
            serde_json::json!({"ips": ["10.9.0.7/24"]})
        );
        let none = RuntimeConfig::default();
        let v: Value = serde_json::from_slice(&l.plugin_stdin(0, None, &none)).unwrap();
        assert!(v.get("runtimeConfig").is_none());
    }

    #[test]
    fn check_runs_from_0_4_0_unless_disabled() {
        let l = ConfList::parse(LIST).unwrap();
        assert_eq!(l.check_skipped(), None);
        let old = LIST.replace("1.0.0", "0.3.1");
        let why = ConfList::parse(&old).unwrap().check_skipped().unwrap();
        assert!(why.contains("0.3.1"), "{why}");
        let v040 = LIST.replace("1.0.0", "0.4.0");
        assert_eq!(ConfList::parse(&v040).unwrap().check_skipped(), None);
        let off = LIST.replace(r#""name":"n1","#, r#""name":"n1","disableCheck":true,"#);
        let l = ConfList::parse(&off).unwrap();
        assert!(l.check_skipped().unwrap().contains("disableCheck"));
        // Stored and parsed again, the flag stays.
        assert!(ConfList::parse(&l.to_json()).unwrap().disable_check);
    }

    #[test]
    fn addresses_from_the_container_interface() {
        let r: AddResult = serde_json::from_str(
            r#"{"cniVersion":"1.0.0",
            "interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:01"},
                          {"name":"veth1","mac":"aa:bb:cc:dd:ee:02"},
                          {"name":"eth0","mac":"0a:58:0a:09:00:05","sandbox":"/run/netns/x"}],
            "ips":[{"address":"10.9.0.1/24","interface":0},
                   {"address":"10.9.0.5/24","gateway":"10.9.0.1","interface":2},
                   {"address":"fd00::5/64","interface":2}]}"#,
        )
        .unwrap();
        let a = r.assigned("eth0");
        assert_eq!(a.ipv4, Some("10.9.0.5".parse().unwrap()));
        assert_eq!(a.ipv6, Some("fd00::5".parse().unwrap()));
        assert_eq!(a.mac, Some([0x0a, 0x58, 0x0a, 0x09, 0, 5]));
        assert_eq!(r.assigned("eth1").ipv4, None);
        let on_eth0: Vec<String> = r.addresses("eth0").iter().map(|n| n.to_string()).collect();
        assert_eq!(on_eth0, ["10.9.0.5/24", "fd00::5/64"]);
        // No interface index (static IPAM alone, an older plugin): the address counts.
        let r: AddResult =
            serde_json::from_str(r#"{"ips":[{"address":"192.168.5.7/24"}]}"#).unwrap();
        assert_eq!(
            r.assigned("eth0").ipv4,
            Some("192.168.5.7".parse().unwrap())
        );
    }
}
