//! Legacy links (`run --link TARGET:ALIAS`) as the reconciler applies them, derived from
//! desired state each time (a link names its target; whatever sandbox has that name now is
//! the target, so a target made again follows, and a removed one drops out):
//! - on the default `bridge` network: hosts-file lines and Docker's variables for the
//!   linker's process;
//! - on user-defined networks: aliases only the linker's resolver view answers.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use sdnet_resolver::model::{self, Protocol};

use crate::daemon::state::{Desired, Entry};
use crate::daemon::store::schema::{EndpointRec, ExposeRec, LinkRec, SandboxRec};

/// Variables of the target that are not passed on (Docker skips HOME and PATH; HOSTNAME is
/// never part of a target's configuration in Docker either).
const NOT_PASSED: [&str; 3] = ["HOME", "PATH", "HOSTNAME"];

/// A link's target as desired now, if a sandbox has that name.
fn target<'a>(d: &'a Desired, l: &LinkRec) -> Option<&'a Entry<SandboxRec>> {
    d.sandbox_by_name(&l.target)
}

/// The endpoint of sandbox `id` on the default bridge.
fn on_bridge<'a>(d: &'a Desired, id: &str) -> Option<&'a EndpointRec> {
    d.endpoints.get(id)?.values().find_map(|e| {
        d.networks
            .get(e.rec.network.as_str())
            .filter(|n| n.rec.default_bridge())
            .map(|_| e.rec.as_ref())
    })
}

/// The targets a sandbox reaches through the default bridge: (link, target, its endpoint).
fn bridge_targets<'a>(
    d: &'a Desired,
    sb: &'a SandboxRec,
) -> Vec<(&'a LinkRec, &'a SandboxRec, &'a EndpointRec)> {
    if sb.links.is_empty() || on_bridge(d, &sb.id).is_none() {
        return Vec::new();
    }
    sb.links
        .iter()
        .filter_map(|l| {
            let t = target(d, l)?;
            let ep = on_bridge(d, &t.rec.id)?;
            Some((l, t.rec.as_ref(), ep))
        })
        .collect()
}

/// Hosts-file lines of a sandbox's links on the default bridge, as Docker writes them:
/// `IP<TAB>ALIAS HOSTNAME NAME` (the name only when it is not the alias).
pub fn hosts_lines(d: &Desired, sb: &SandboxRec) -> Vec<String> {
    let mut out = Vec::new();
    for (l, t, ep) in bridge_targets(d, sb) {
        let mut names: Vec<&str> = vec![&l.alias, &t.hostname];
        if l.alias != t.name {
            names.push(&t.name);
        }
        let mut seen = BTreeSet::new();
        names.retain(|n| seen.insert(*n));
        let ips = [ep.ipv4.map(IpAddr::V4), ep.ipv6.map(IpAddr::V6)];
        for ip in ips.into_iter().flatten() {
            out.push(format!("{ip}\t{}", names.join(" ")));
        }
    }
    out
}

/// Docker's link variables for a sandbox's process (links over the default bridge to
/// targets with an IPv4 address), then its own `-e` variables, which win over them.
pub fn process_env(d: &Desired, sb: &SandboxRec) -> Vec<String> {
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
    let own: BTreeSet<String> = sb.env.iter().map(|e| key(e)).collect();
    let mut out: Vec<String> = Vec::new();
    for (l, t, ep) in bridge_targets(d, sb) {
        let Some(ip) = ep.ipv4 else { continue };
        out.extend(link_env(&sb.name, &l.alias, ip, &t.expose, &t.env));
    }
    // One value per name: our own wins, then the first link that set it.
    let mut seen = own;
    out.retain(|e| seen.insert(key(e)));
    out.extend(sb.env.iter().cloned());
    out
}

/// The variables of one link (Docker's): `ALIAS_NAME=/linker/alias`, `ALIAS_PORT` (the
/// lowest exposed port), per port `ALIAS_PORT_<P>_<PROTO>` and its `_ADDR`, `_PORT`,
/// `_PROTO`, per run of consecutive ports `_START`, `_ADDR`, `_PORT_START`, `_PORT_END`, and
/// `ALIAS_ENV_<VAR>` for the target's variables. ALIAS upper-cased, `-` as `_`.
pub fn link_env(
    linker: &str,
    alias: &str,
    ip: Ipv4Addr,
    ports: &[ExposeRec],
    target_env: &[String],
) -> Vec<String> {
    let prefix = alias.to_ascii_uppercase().replace('-', "_");
    let mut out = Vec::new();
    if let Some(p) = ports.first() {
        out.push(format!("{prefix}_PORT={}://{ip}:{}", p.protocol, p.port));
    }
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let mine: Vec<u16> = ports
            .iter()
            .filter(|p| p.protocol == proto)
            .map(|p| p.port)
            .collect();
        let up = proto.to_string().to_ascii_uppercase();
        let mut i = 0;
        while i < mine.len() {
            let mut j = i;
            while j + 1 < mine.len() && mine[j + 1] == mine[j] + 1 {
                j += 1;
            }
            if j > i {
                let (start, end) = (mine[i], mine[j]);
                let v = format!("{prefix}_PORT_{start}_{up}");
                out.push(format!("{v}_START={proto}://{ip}:{start}"));
                out.push(format!("{v}_ADDR={ip}"));
                out.push(format!("{v}_PORT_START={start}"));
                out.push(format!("{v}_PORT_END={end}"));
            }
            i = j + 1;
        }
    }
    for p in ports {
        let v = format!(
            "{prefix}_PORT_{}_{}",
            p.port,
            p.protocol.to_string().to_ascii_uppercase()
        );
        out.push(format!("{v}={}://{ip}:{}", p.protocol, p.port));
        out.push(format!("{v}_ADDR={ip}"));
        out.push(format!("{v}_PORT={}", p.port));
        out.push(format!("{v}_PROTO={}", p.protocol));
    }
    out.push(format!("{prefix}_NAME=/{linker}/{alias}"));
    for e in target_env {
        let Some((k, v)) = e.split_once('=') else {
            continue;
        };
        if !NOT_PASSED.contains(&k) {
            out.push(format!("{prefix}_ENV_{k}={v}"));
        }
    }
    out
}

/// A sandbox's links on user-defined networks, for its resolver view: the alias answers the
/// target's addresses on each such network both are on (while the target is in DNS).
pub fn view_aliases(d: &Desired, sb: &SandboxRec) -> Vec<model::LinkAlias> {
    let mut out = Vec::new();
    let Some(mine) = d.endpoints.get(sb.id.as_str()) else {
        return out;
    };
    for l in &sb.links {
        let Some(t) = target(d, l) else { continue };
        if !d.visible(&t.rec.id) {
            continue;
        }
        let Some(theirs) = d.endpoints.get(t.rec.id.as_str()) else {
            continue;
        };
        for net in mine.keys() {
            let user = d
                .networks
                .get(net.as_str())
                .is_some_and(|n| !n.rec.predefined && n.rec.dns_on());
            if let (true, Some(e)) = (user, theirs.get(net.as_str())) {
                out.push(model::LinkAlias {
                    name: l.alias.clone(),
                    network: net.clone(),
                    ipv4: e.rec.ipv4,
                    ipv6: e.rec.ipv6,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_as_docker_writes_them() {
        let ports = [
            ExposeRec {
                port: 53,
                protocol: Protocol::Udp,
            },
            ExposeRec {
                port: 80,
                protocol: Protocol::Tcp,
            },
            ExposeRec {
                port: 81,
                protocol: Protocol::Tcp,
            },
        ];
        let env = [
            "PASSWORD=x=y".to_string(),
            "HOME=/root".to_string(),
            "PATH=/bin".to_string(),
            "EMPTY=".to_string(),
        ];
        let ip = Ipv4Addr::new(172, 17, 0, 2);
        let got = link_env("web", "my-db", ip, &ports, &env);
        let want = [
            "MY_DB_PORT=udp://172.17.0.2:53",
            "MY_DB_PORT_80_TCP_START=tcp://172.17.0.2:80",
            "MY_DB_PORT_80_TCP_ADDR=172.17.0.2",
            "MY_DB_PORT_80_TCP_PORT_START=80",
            "MY_DB_PORT_80_TCP_PORT_END=81",
            "MY_DB_PORT_53_UDP=udp://172.17.0.2:53",
            "MY_DB_PORT_53_UDP_ADDR=172.17.0.2",
            "MY_DB_PORT_53_UDP_PORT=53",
            "MY_DB_PORT_53_UDP_PROTO=udp",
            "MY_DB_PORT_80_TCP=tcp://172.17.0.2:80",
            "MY_DB_PORT_80_TCP_ADDR=172.17.0.2",
            "MY_DB_PORT_80_TCP_PORT=80",
            "MY_DB_PORT_80_TCP_PROTO=tcp",
            "MY_DB_PORT_81_TCP=tcp://172.17.0.2:81",
            "MY_DB_PORT_81_TCP_ADDR=172.17.0.2",
            "MY_DB_PORT_81_TCP_PORT=81",
            "MY_DB_PORT_81_TCP_PROTO=tcp",
            "MY_DB_NAME=/web/my-db",
            "MY_DB_ENV_PASSWORD=x=y",
            "MY_DB_ENV_EMPTY=",
        ];
        assert_eq!(got, want);
        // No exposed ports: the name and the variables only.
        assert_eq!(
            link_env("a", "b", ip, &[], &[]),
            ["B_NAME=/a/b".to_string()]
        );
    }
}
