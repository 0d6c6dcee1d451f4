//! The routing mesh (research/plumbing.md §1.4): a swarm service's port published through the
//! mesh answers on every node. The node's firewall sends it to this node's ingress sandbox (on
//! the gateway bridge); the ingress sandbox spreads connections over the service's healthy
//! tasks on every node, over the `ingress` overlay, and masquerades them (the task's replies
//! must come back through the same ingress sandbox: its default route is its own node's
//! gateway bridge). Tasks therefore see the ingress sandbox's address — Docker's mesh keeps no
//! client address either; `mode=host` ports do (`firewall.rs`).

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr};

use sdnet_resolver::model::Protocol;

use crate::daemon::api::networks::GWBRIDGE;
use crate::daemon::api::overlay::INGRESS;
use crate::daemon::api::sandboxes::INGRESS_SANDBOX;
use crate::daemon::state::Desired;

pub const TABLE: &str = "sdnet-ingress";

/// One port of the mesh, with where it goes now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshPort {
    pub protocol: Protocol,
    pub port: u16,
    /// The healthy tasks' addresses on the ingress overlay (every node's).
    pub targets: Vec<Ipv4Addr>,
    pub target_port: u16,
}

/// This node's ingress sandbox: its ID, its interface on the ingress overlay, and its address
/// on the gateway bridge (where the node's firewall sends mesh ports).
pub fn sandbox(d: &Desired) -> Option<(String, String, Ipv4Addr)> {
    let sb = d.sandbox_by_name(INGRESS_SANDBOX)?;
    let ing = d.network_by_name(INGRESS)?.rec.id.clone();
    let gw = d.network_by_name(GWBRIDGE)?.rec.id.clone();
    let eps = d.endpoints_of(&sb.rec.id);
    let ifname = eps
        .iter()
        .find(|e| e.rec.network == ing)
        .map(|e| format!("eth{}", e.rec.index))?;
    let addr = eps.iter().find(|e| e.rec.network == gw)?.rec.ipv4?;
    Some((sb.rec.id.clone(), ifname, addr))
}

/// Every port published through the mesh, over the healthy tasks of every node. `me`: this
/// node (its own tasks come from its sandboxes, the others' from their peers).
pub fn ports(d: &Desired, me: &str) -> Vec<MeshPort> {
    let Some(ing) = d.network_by_name(INGRESS).map(|n| n.rec.id.clone()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for svc in d.services.values().map(|s| s.rec.as_ref()) {
        if !d.swarm_service(svc) || svc.publish.iter().all(|p| p.host_mode) {
            continue;
        }
        let mut targets: Vec<Ipv4Addr> = d
            .tasks_of(&svc.id)
            .filter(|t| d.visible(t))
            .filter_map(|t| d.endpoints.get(t.as_str())?.get(ing.as_str()))
            .filter_map(|e| e.rec.ipv4)
            .collect();
        if let Some(peers) = d.peers.get(ing.as_str()) {
            targets.extend(
                peers
                    .values()
                    .map(|p| p.rec.as_ref())
                    .filter(|p| {
                        p.node != me
                            && p.task
                                .as_ref()
                                .is_some_and(|t| t.service == svc.id && t.healthy)
                    })
                    .filter_map(|p| p.ipv4),
            );
        }
        targets.sort();
        targets.dedup();
        for p in svc.publish.iter().filter(|p| !p.host_mode) {
            out.push(MeshPort {
                protocol: p.protocol,
                port: p.host_port,
                targets: targets.clone(),
                target_port: p.container_port,
            });
        }
    }
    out.sort_by_key(|p| (p.port, p.protocol.to_string()));
    out
}

/// The ingress sandbox's table, whole (applied as one transaction). A port without a healthy
/// task is refused at once (a reset), not left to time out.
pub fn ruleset(ports: &[MeshPort], ingress_if: &str) -> String {
    let t = TABLE;
    let mut s = format!("table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{\n");
    s.push_str("  chain pre {\n    type nat hook prerouting priority dstnat; policy accept;\n");
    for p in ports.iter().filter(|p| !p.targets.is_empty()) {
        let targets: Vec<IpAddr> = p.targets.iter().copied().map(IpAddr::V4).collect();
        let _ = writeln!(
            s,
            "    iifname != \"{ingress_if}\" {} dport {} {}",
            p.protocol,
            p.port,
            sdnet_lb::dnat(&targets, Some(p.target_port))
        );
    }
    s.push_str(
        "  }\n  chain post {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    let _ = writeln!(s, "    oifname \"{ingress_if}\" ct status dnat masquerade");
    s.push_str(
        "  }\n  chain refuse {\n    type filter hook input priority filter; policy accept;\n",
    );
    for p in ports.iter().filter(|p| p.targets.is_empty()) {
        let verdict = match p.protocol {
            Protocol::Tcp => "reject with tcp reset",
            Protocol::Udp => "reject",
        };
        let _ = writeln!(
            s,
            "    iifname != \"{ingress_if}\" {} dport {} {verdict}",
            p.protocol, p.port
        );
    }
    s.push_str("  }\n}\n");
    s
}

/// The guard in a task of a service published through the mesh (Docker's INPUT/OUTPUT rules
/// there): over its `ingress` interface only the published target ports, nothing else in
/// either direction — tasks of different services meet on that overlay and must not reach
/// each other through it. None: the sandbox needs no guard.
pub fn guard(d: &Desired, sandbox: &str) -> Option<String> {
    let sb = d.sandboxes.get(sandbox)?;
    let task = sb.rec.task.as_ref()?;
    let svc = &d.services.get(task.service.as_str())?.rec;
    if !d.swarm_service(svc) {
        return None;
    }
    let ing = d.network_by_name(INGRESS)?.rec.id.clone();
    let ep = d.endpoints.get(sandbox)?.get(ing.as_str())?;
    let ports: Vec<(Protocol, u16)> = svc
        .publish
        .iter()
        .filter(|p| !p.host_mode)
        .map(|p| (p.protocol, p.container_port))
        .collect();
    Some(guard_ruleset(&format!("eth{}", ep.rec.index), &ports))
}

pub const GUARD_TABLE: &str = "sdnet-ingress-guard";

pub fn guard_ruleset(ifname: &str, ports: &[(Protocol, u16)]) -> String {
    let t = GUARD_TABLE;
    let mut s = format!("table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{\n");
    for (chain, hook, dir, port_dir) in [
        ("in", "input", "iifname", "dport"),
        ("out", "output", "oifname", "sport"),
    ] {
        let _ = writeln!(
            s,
            "  chain {chain} {{\n    type filter hook {hook} priority filter; policy accept;"
        );
        for (proto, port) in ports {
            let _ = writeln!(s, "    {dir} \"{ifname}\" {proto} {port_dir} {port} accept");
        }
        let _ = writeln!(s, "    {dir} \"{ifname}\" drop\n  }}");
    }
    s.push_str("}\n");
    s
}

pub fn delete_guard() -> String {
    let t = GUARD_TABLE;
    format!("table ip {t} {{}}\ndelete table ip {t}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_masquerades_and_refuses_without_tasks() {
        let ports = [
            MeshPort {
                protocol: Protocol::Tcp,
                port: 8080,
                targets: vec!["10.0.9.3".parse().unwrap(), "10.0.9.4".parse().unwrap()],
                target_port: 80,
            },
            MeshPort {
                protocol: Protocol::Udp,
                port: 5353,
                targets: vec![],
                target_port: 53,
            },
        ];
        let g = guard_ruleset("eth1", &[(Protocol::Tcp, 80), (Protocol::Udp, 53)]);
        assert!(g.contains("iifname \"eth1\" tcp dport 80 accept"));
        assert!(g.contains("oifname \"eth1\" udp sport 53 accept"));
        assert!(g.contains("iifname \"eth1\" drop") && g.contains("oifname \"eth1\" drop"));
        let r = ruleset(&ports, "eth0") + &g + &delete_guard();
        assert!(r.contains("iifname != \"eth0\" tcp dport 8080 dnat ip to numgen random mod 2"));
        assert!(r.contains("10.0.9.3 . 80") && r.contains("10.0.9.4 . 80"));
        assert!(r.contains("oifname \"eth0\" ct status dnat masquerade"));
        assert!(r.contains("udp dport 5353 reject"));
        assert!(!r.contains("dport 5353 dnat"));
        // nft accepts it (where nft is installed).
        if let Ok(out) = std::process::Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                if let Some(mut i) = c.stdin.take() {
                    i.write_all(r.as_bytes())?;
                }
                c.wait_with_output()
            })
        {
            assert!(
                out.status.success(),
                "{r}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
