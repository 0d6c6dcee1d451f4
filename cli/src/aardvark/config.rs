//! aardvark-dns's configuration directory, as netavark writes it, turned into the resolver's
//! model (served with `Policy::Podman`).
//!
//! One file per network, named after it (`NAME%int` for an internal network):
//!
//! ```text
//! LISTEN_IP[,LISTEN_IP…][ UPSTREAM[,UPSTREAM…]]
//! CONTAINER_ID V4[,V4…] V6[,V6…] NAME[,ALIAS…][ UPSTREAM[,UPSTREAM…]]
//! ```
//!
//! An empty address list leaves two spaces in a row. IDs and names are lower-cased; a
//! container on several networks has a line in each file. A file that does not parse is
//! skipped (its error is returned beside the rest); `aardvark.pid` is not a network.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use sdnet_resolver::State;
use sdnet_resolver::model::{self, Endpoint, Network, Sandbox, Upstream};

pub const PID_FILE: &str = "aardvark.pid";
const INTERNAL_SUFFIX: &str = "%int";

/// One network file, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetFile {
    pub name: String,
    pub internal: bool,
    pub listen: Vec<IpAddr>,
    pub upstreams: Vec<IpAddr>,
    pub entries: Vec<Entry>,
}

/// One container line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
    pub names: Vec<String>,
    pub upstreams: Vec<IpAddr>,
}

/// Everything the directory says: the model to serve and the listeners (address → the model
/// name of the network whose listener it is). A network's model ID and name are derived from
/// its file name (which may be longer than a DNS label, or hold any character a file name
/// can); Podman's semantics never use a network's name in DNS.
#[derive(Debug, Default)]
pub struct Config {
    pub state: State,
    pub listeners: BTreeMap<IpAddr, String>,
    /// Files skipped or lines dropped, one message each.
    pub errors: Vec<String>,
}

fn ip_list<T: std::str::FromStr>(field: &str, what: &str) -> Result<Vec<T>, String> {
    if field.is_empty() {
        return Ok(Vec::new());
    }
    field
        .split(',')
        .map(|s| {
            s.parse()
                .map_err(|_| format!("invalid {what} {s:?}: not an IP address"))
        })
        .collect()
}

/// Parses one file's text; `file` is its name (the network's name, maybe with `%int`).
pub fn parse_file(file: &str, text: &str) -> Result<NetFile, String> {
    let (name, internal) = match file.strip_suffix(INTERNAL_SUFFIX) {
        Some(n) => (n, true),
        None => (file, false),
    };
    if name.is_empty() {
        return Err("empty network name".into());
    }
    let mut lines = text.split('\n').filter(|l| !l.is_empty());
    let head = lines.next().ok_or("empty file: no listen address line")?;
    let mut cols = head.split(' ');
    let listen: Vec<IpAddr> = ip_list(cols.next().unwrap_or(""), "listen address")?;
    if listen.is_empty() {
        return Err("no listen address on the first line".into());
    }
    let upstreams = ip_list(cols.next().unwrap_or(""), "network DNS server")?;
    let mut entries = Vec::new();
    for (n, line) in lines.enumerate() {
        let at = |e: String| format!("line {}: {e}", n + 2);
        let cols: Vec<&str> = line.split(' ').collect();
        if cols.len() < 4 || cols.len() > 5 {
            return Err(at(format!(
                "expected `ID IPV4S IPV6S NAMES[ DNS]`, got {} fields",
                cols.len()
            )));
        }
        let id = cols[0].to_ascii_lowercase();
        if id.is_empty() {
            return Err(at("empty container ID".into()));
        }
        let names: Vec<String> = cols[3]
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if names.is_empty() {
            return Err(at("no container name".into()));
        }
        for name in &names {
            model::check_dns_name("container name", name).map_err(|e| at(e.to_string()))?;
        }
        entries.push(Entry {
            id,
            v4: ip_list(cols[1], "IPv4 address").map_err(at)?,
            v6: ip_list(cols[2], "IPv6 address").map_err(at)?,
            names,
            upstreams: ip_list(cols.get(4).copied().unwrap_or(""), "DNS server").map_err(at)?,
        });
    }
    Ok(NetFile {
        name: name.to_string(),
        internal,
        listen,
        upstreams,
        entries,
    })
}

/// Reads every network file of `dir` (in name order, so reloads are deterministic).
pub fn read_dir(dir: &Path) -> Result<(Vec<NetFile>, Vec<String>), String> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| format!("reading config directory {}: {e}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in rd {
        match entry {
            Ok(e) => paths.push(e.path()),
            // Removed while we list it (netavark deleting a network): not an error.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("listing {}: {e}", dir.display())),
        }
    }
    paths.sort();
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            errors.push(format!("{}: file name is not UTF-8", path.display()));
            continue;
        };
        if file == PID_FILE || file.starts_with('.') || path.is_dir() {
            continue;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                errors.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        match parse_file(file, &text) {
            Ok(f) => files.push(f),
            Err(e) => errors.push(format!("{}: {e}; file skipped", path.display())),
        }
    }
    Ok((files, errors))
}

/// 64 hex digits standing for any string: the ID itself when it already is one (Podman's
/// IDs), else a stable hash of it (the model wants sandbox IDs of that shape).
fn sandbox_id(id: &str) -> String {
    if id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return id.to_string();
    }
    (0u64..4)
        .map(|seed| {
            // FNV-1a, seeded per quarter.
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for b in id.bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            format!("{h:016x}")
        })
        .collect()
}

fn upstreams(ips: &[IpAddr]) -> Vec<Upstream> {
    ips.iter()
        .map(|ip| Upstream(SocketAddr::new(*ip, 53)))
        .collect()
}

/// The model and listeners of the parsed files. A network defined twice (`net` beside
/// `net%int`) keeps its first file; a listen address already taken by an earlier network
/// stays with it.
pub fn build(files: Vec<NetFile>, mut errors: Vec<String>) -> Config {
    let mut cfg = Config::default();
    let mut seen_names: HashMap<String, ()> = HashMap::new();
    let mut sandboxes: BTreeMap<String, Sandbox> = BTreeMap::new();
    for f in files {
        if seen_names.insert(f.name.clone(), ()).is_some() {
            errors.push(format!(
                "network {:?}: another file already defines a network of that name; file skipped",
                f.name
            ));
            continue;
        }
        let net_id = format!("n{}", &sandbox_id(&f.name)[..32]);
        cfg.state.networks.push(Network {
            id: net_id.clone(),
            name: net_id.clone(),
            internal: f.internal,
            dns: true,
            upstreams: if f.internal {
                Vec::new()
            } else {
                upstreams(&f.upstreams)
            },
            ttl: Some(0),
            vip_ttl: None,
        });
        for ip in &f.listen {
            if cfg.listeners.contains_key(ip) {
                errors.push(format!(
                    "network {:?}: listen address {ip} is already another network's; not served for this one",
                    f.name
                ));
                continue;
            }
            cfg.listeners.insert(*ip, net_id.clone());
        }
        for e in f.entries {
            let id = sandbox_id(&e.id);
            let sb = sandboxes.entry(e.id.clone()).or_insert_with(|| Sandbox {
                // The whole ID (unique), as two labels of 32 (a label holds at most 63).
                name: format!("{}.{}", &id[..32], &id[32..]),
                id,
                hostname: None,
                endpoints: Vec::new(),
                upstreams: Vec::new(),
                task: None,
                links: Vec::new(),
            });
            // The container's own servers count only from networks that may forward.
            if sb.upstreams.is_empty() && !f.internal {
                sb.upstreams = upstreams(&e.upstreams);
            }
            let n = e.v4.len().max(e.v6.len()).max(1);
            for i in 0..n {
                sb.endpoints.push(Endpoint {
                    network: net_id.clone(),
                    ipv4: e.v4.get(i).copied(),
                    ipv6: e.v6.get(i).copied(),
                    aliases: e.names.clone(),
                });
            }
        }
    }
    cfg.state.sandboxes = sandboxes.into_values().collect();
    cfg.errors = errors;
    cfg
}

/// Reads and builds the whole directory.
pub fn load(dir: &Path) -> Result<Config, String> {
    let (files, errors) = read_dir(dir)?;
    Ok(build(files, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_format() {
        let f = parse_file(
            "podman1%int",
            "10.88.0.1,fd00::1 1.1.1.1\n\
             ABC 10.88.0.2  Web,alias1\n\
             def  fd00::3 db 9.9.9.9,8.8.8.8\n\n",
        )
        .unwrap();
        assert_eq!(f.name, "podman1");
        assert!(f.internal);
        assert_eq!(f.listen.len(), 2);
        assert_eq!(f.upstreams, ["1.1.1.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(f.entries[0].id, "abc");
        assert_eq!(f.entries[0].names, ["web", "alias1"]);
        assert!(f.entries[0].v6.is_empty());
        assert!(f.entries[1].v4.is_empty());
        assert_eq!(f.entries[1].upstreams.len(), 2);
    }

    #[test]
    fn broken_files_say_why() {
        assert!(parse_file("n", "").is_err());
        assert!(
            parse_file("n", "nope\n")
                .unwrap_err()
                .contains("listen address")
        );
        let e = parse_file("n", "10.0.0.1\nid 10.0.0.2 web\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(parse_file("n", "10.0.0.1\nid 10.0.0.x  web\n").is_err());
        assert!(parse_file("%int", "10.0.0.1\n").is_err());
        // Any file name is a network name, even one longer than a DNS label.
        let long = "podman".to_string() + &"1".repeat(100);
        let f = parse_file(&long, "10.0.0.1\n").unwrap();
        let cfg = build(vec![f], Vec::new());
        assert!(cfg.errors.is_empty());
        cfg.state.validate().unwrap();
    }

    #[test]
    fn one_container_on_two_networks_is_one_sandbox() {
        let a = parse_file("a", "10.1.0.1\nc1 10.1.0.2  web\n").unwrap();
        let b = parse_file("b", "10.2.0.1\nc1 10.2.0.2  web\nc2 10.2.0.3  db\n").unwrap();
        let cfg = build(vec![a, b], Vec::new());
        assert!(cfg.errors.is_empty());
        assert_eq!(cfg.state.sandboxes.len(), 2);
        let c1 = cfg
            .state
            .sandboxes
            .iter()
            .find(|s| s.endpoints.len() == 2)
            .unwrap();
        assert_eq!(c1.endpoints[0].aliases, ["web"]);
        assert_eq!(cfg.listeners.len(), 2);
        cfg.state
            .validate_for(&sdnet_resolver::model::Policy::Podman {
                search_domain: "dns.podman".into(),
            })
            .unwrap();
    }

    #[test]
    fn ids_sharing_a_prefix_are_different_sandboxes() {
        let text = format!("10.1.0.1\n{:064x} 10.1.0.2  a\n{:064x} 10.1.0.3  b\n", 1, 2);
        let cfg = build(vec![parse_file("n", &text).unwrap()], Vec::new());
        assert_eq!(cfg.state.sandboxes.len(), 2);
        cfg.state.validate().unwrap();
    }

    #[test]
    fn same_name_twice_is_skipped() {
        let a = parse_file("net", "10.1.0.1\n").unwrap();
        let b = parse_file("net%int", "10.2.0.1\n").unwrap();
        let cfg = build(vec![a, b], Vec::new());
        assert_eq!(cfg.state.networks.len(), 1);
        assert_eq!(cfg.errors.len(), 1);
    }
}
