//! The nftables table of ours in the daemon's namespace, in the shape of Docker 29's nftables
//! backend: base chains only dispatch through interface verdict maps to per-network chains.
//! It is generated whole from the desired state and applied as one transaction (`table {}` +
//! `delete table` + `table {...}`), so applying it twice changes nothing and a half-applied
//! state cannot exist. Plain sandboxes add no rules: direct access to a bridge subnet from
//! outside is dropped per network, not per sandbox, so only network changes and published
//! ports touch this table.

use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;
use sdnet_resolver::model::Protocol;

use crate::daemon::state::Desired;
use crate::daemon::store::schema::{DriverKind, NetworkRec};

pub const TABLE: &str = "sdnet";

/// A bridge network as the firewall sees it.
pub struct FwNetwork<'a> {
    pub bridge: &'a str,
    pub subnets: Vec<IpNet>,
    pub internal: bool,
    /// Sandboxes of the network may talk to each other (off on the gateway bridge).
    pub icc: bool,
}

/// A cluster node's VXLAN: its port and the nodes allowed to send to it.
pub struct FwVxlan {
    pub port: u16,
    pub nodes: Vec<IpAddr>,
}

/// A published port: a sandbox's (one target) or a service's (its healthy tasks; none while
/// no task is healthy, and then the reserved host port answers with a reset).
pub struct FwPort<'a> {
    pub bridge: &'a str,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub targets: Vec<IpAddr>,
    pub container_port: u16,
    pub protocol: Protocol,
}

fn fam(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "ip" } else { "ip6" }
}

fn net_fam(n: &IpNet) -> &'static str {
    match n {
        IpNet::V4(_) => "ip",
        IpNet::V6(_) => "ip6",
    }
}

fn sock(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The whole table as one nft transaction.
pub fn ruleset(nets: &[FwNetwork<'_>], ports: &[FwPort<'_>], vxlan: Option<&FwVxlan>) -> String {
    let mut s = String::new();
    let t = TABLE;
    // Create-then-delete makes the delete valid whether or not the table existed.
    let _ = writeln!(
        s,
        "table inet {t} {{}}\ndelete table inet {t}\ntable inet {t} {{"
    );
    let map = |s: &mut String, name: &str, prefix: &str| {
        let _ = write!(s, "  map {name} {{\n    type ifname : verdict\n");
        if !nets.is_empty() {
            let elems: Vec<String> = nets
                .iter()
                .map(|n| format!("\"{}\" : jump {prefix}-{}", n.bridge, n.bridge))
                .collect();
            let _ = writeln!(s, "    elements = {{ {} }}", elems.join(", "));
        }
        s.push_str("  }\n");
    };
    map(&mut s, "fwd-in", "fwd-in");
    map(&mut s, "fwd-out", "fwd-out");
    map(&mut s, "post-out", "post-out");
    map(&mut s, "post-in", "post-in");
    s.push_str(
        "  chain filter-forward {\n    type filter hook forward priority filter; policy accept;\n    oifname vmap @fwd-in\n    iifname vmap @fwd-out\n  }\n",
    );
    s.push_str(
        "  chain nat-prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    fib daddr type local jump published\n  }\n",
    );
    s.push_str(
        "  chain nat-output {\n    type nat hook output priority -100; policy accept;\n    fib daddr type local jump published\n  }\n",
    );
    s.push_str(
        "  chain nat-postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    iifname vmap @post-out\n    oifname vmap @post-in\n  }\n",
    );
    if let Some(v) = vxlan {
        // Tunnelled packets only from the cluster's nodes: anyone else could inject frames
        // into an overlay.
        let (v4, v6): (Vec<&IpAddr>, Vec<&IpAddr>) = v.nodes.iter().partition(|a| a.is_ipv4());
        s.push_str(
            "  chain vxlan-in {\n    type filter hook input priority filter; policy accept;\n",
        );
        for (fam, list) in [("ip", v4), ("ip6", v6)] {
            let nf = if fam == "ip" { "ipv4" } else { "ipv6" };
            if list.is_empty() {
                let _ = writeln!(
                    s,
                    "    meta nfproto {nf} udp dport {} drop comment \"VXLAN FROM NO NODE\"",
                    v.port
                );
            } else {
                let set: Vec<String> = list.iter().map(|a| a.to_string()).collect();
                let _ = writeln!(
                    s,
                    "    udp dport {} {fam} saddr != {{ {} }} drop comment \"VXLAN FROM NO NODE\"",
                    v.port,
                    set.join(", ")
                );
            }
        }
        s.push_str("  }\n");
    }
    s.push_str(
        "  chain raw-prerouting {\n    type filter hook prerouting priority raw; policy accept;\n",
    );
    for n in nets {
        for sub in &n.subnets {
            let _ = writeln!(
                s,
                "    {} daddr {sub} iifname != \"{}\" drop comment \"DROP DIRECT ACCESS\"",
                net_fam(sub),
                n.bridge
            );
        }
    }
    for p in ports {
        // With route_localnet on the bridge, loopback-published ports must not be reachable
        // from outside the host through crafted packets to 127.0.0.1.
        if let Some(ip) = p.host_ip
            && ip.is_loopback()
        {
            let _ = writeln!(
                s,
                "    iifname != \"lo\" {} daddr {ip} {} dport {} drop comment \"DROP REMOTE LOOPBACK\"",
                fam(&ip),
                p.protocol,
                p.host_port
            );
        }
    }
    s.push_str("  }\n  chain published {\n");
    for p in ports {
        let Some(first) = p.targets.first() else {
            continue;
        };
        let dst = match p.host_ip {
            Some(ip) if !ip.is_unspecified() => format!("{} daddr {ip} ", fam(&ip)),
            _ => String::new(),
        };
        let dnat = if p.targets.len() == 1 {
            format!("dnat {} to {}", fam(first), sock(first, p.container_port))
        } else {
            sdnet_lb::dnat(&p.targets, Some(p.container_port))
        };
        // An IPv4 target is only reachable from IPv4 clients (and v6 from v6).
        let _ = writeln!(
            s,
            "    meta nfproto {} {dst}{} dport {} {dnat}",
            if first.is_ipv4() { "ipv4" } else { "ipv6" },
            p.protocol,
            p.host_port,
        );
    }
    s.push_str("  }\n");
    for n in nets {
        let b = n.bridge;
        let _ = write!(
            s,
            "  chain fwd-in-{b} {{\n    ct state established,related accept\n"
        );
        if n.internal {
            let _ = writeln!(
                s,
                "    iifname != \"{b}\" drop comment \"INTERNAL NETWORK INGRESS\""
            );
            s.push_str("    accept comment \"ICC\"\n");
        } else {
            if n.icc {
                let _ = writeln!(s, "    iifname \"{b}\" accept comment \"ICC\"");
            } else {
                let _ = writeln!(s, "    iifname \"{b}\" drop comment \"ICC DISABLED\"");
            }
            for p in ports.iter().filter(|p| p.bridge == b) {
                for t in &p.targets {
                    let _ = writeln!(
                        s,
                        "    {} daddr {t} {} dport {} accept comment \"PUBLISHED\"",
                        fam(t),
                        p.protocol,
                        p.container_port
                    );
                }
            }
            s.push_str("    drop comment \"UNPUBLISHED PORT DROP\"\n");
        }
        s.push_str("  }\n");
        let _ = write!(
            s,
            "  chain fwd-out-{b} {{\n    ct state established,related accept\n"
        );
        if n.internal {
            let _ = writeln!(
                s,
                "    oifname != \"{b}\" drop comment \"INTERNAL NETWORK EGRESS\""
            );
        }
        s.push_str("    accept comment \"OUTGOING\"\n  }\n");
        let _ = writeln!(s, "  chain post-out-{b} {{");
        if !n.internal {
            for sub in &n.subnets {
                let _ = writeln!(
                    s,
                    "    oifname != \"{b}\" {} saddr {sub} masquerade comment \"MASQUERADE\"",
                    net_fam(sub)
                );
            }
        }
        s.push_str("  }\n");
        let _ = writeln!(s, "  chain post-in-{b} {{");
        if !n.internal {
            s.push_str("    fib saddr type local masquerade comment \"MASQUERADE FROM HOST\"\n");
            for p in ports.iter().filter(|p| p.bridge == b) {
                for t in &p.targets {
                    let f = fam(t);
                    let _ = writeln!(
                        s,
                        "    {f} saddr {t} {f} daddr {t} {} dport {} masquerade comment \"MASQ TO OWN PORT\"",
                        p.protocol, p.container_port,
                    );
                }
            }
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

/// Removes the table (cleanup).
pub fn delete_ruleset() -> String {
    format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
}

/// The per-sandbox table redirecting 127.0.0.11:53 to the resolver's random ports, so a
/// process in the sandbox may still bind port 53 itself.
///
/// The rewrite is stateless (the port is set on both directions), not conntrack NAT: DNS
/// queries are short flows, and tracking them cost a quarter of the resolver's throughput
/// (dnsperf through 127.0.0.11 in a namespace: conntrack NAT ~75 % of the direct QPS, this
/// rewrite ~92 %) and filled the sandbox's conntrack table under load. Both directions are
/// local (lo), so no route depends on the port; replies are recognised by their source,
/// 127.0.0.11 and our port, which nothing else in the sandbox can bind. No `notrack` here:
/// it alone cost ~3 % (conntrack stays off in a namespace without stateful rules); the one
/// table of ours that turns conntrack on in a sandbox, `sdnet-lb`, exempts 127.0.0.11.
pub fn dns_redirect(udp: u16, tcp: u16) -> String {
    let t = "sdnet-dns";
    format!(
        "table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{\n  chain dns-rewrite {{\n    type filter hook output priority raw; policy accept;\n    ip daddr 127.0.0.11 udp dport 53 udp dport set {udp}\n    ip saddr 127.0.0.11 udp sport {udp} udp sport set 53\n    ip daddr 127.0.0.11 tcp dport 53 tcp dport set {tcp}\n    ip saddr 127.0.0.11 tcp sport {tcp} tcp sport set 53\n  }}\n}}\n"
    )
}

pub fn delete_dns_redirect() -> String {
    "table ip sdnet-dns {}\ndelete table ip sdnet-dns\n".to_string()
}

/// The whole table for a desired state: every bridge network, every published port of a
/// sandbox (its first non-internal bridge endpoint of the host IP's family) and of a service
/// (spread over its visible tasks on its first non-internal network); with `vxlan_port`
/// (a cluster node), VXLAN accepted only from the cluster's nodes.
///
/// Swarm services (`me`: this node): a port through the routing mesh goes to this node's
/// ingress sandbox on the gateway bridge while any task of the service is healthy anywhere;
/// a `mode=host` port goes to this node's own healthy tasks (on the gateway bridge, client
/// address kept), and is not served on a node without one.
pub fn for_desired(d: &Desired, vxlan_port: Option<u16>, me: &str) -> String {
    let bridges: Vec<(String, &NetworkRec)> = d
        .networks
        .values()
        .filter(|n| n.rec.driver == DriverKind::Bridge && !n.rec.subnets.is_empty())
        .map(|n| (n.rec.bridge(), n.rec.as_ref()))
        .collect();
    let nets: Vec<FwNetwork<'_>> = bridges
        .iter()
        .map(|(b, n)| FwNetwork {
            bridge: b,
            subnets: n.subnets.iter().map(|s| s.subnet.trunc()).collect(),
            internal: n.internal,
            icc: n
                .options
                .get(crate::daemon::api::networks::ICC_OPTION)
                .is_none_or(|v| v != "false"),
        })
        .collect();
    let bridge_of = |net: &str| {
        bridges
            .iter()
            .find(|(_, n)| n.id == net)
            .map(|(b, n)| (b.as_str(), *n))
    };
    let mut ports = Vec::new();
    for sb in d.sandboxes.values() {
        for p in &sb.rec.ports {
            let want_v6 = matches!(p.host_ip, Some(IpAddr::V6(_)));
            let target = d.endpoints_of(&sb.rec.id).into_iter().find_map(|e| {
                let (b, n) = bridge_of(&e.rec.network)?;
                if n.internal {
                    return None;
                }
                let ip = if want_v6 {
                    e.rec.ipv6.map(IpAddr::V6)
                } else {
                    e.rec.ipv4.map(IpAddr::V4)
                }?;
                Some((b, ip))
            });
            if let Some((bridge, ip)) = target {
                ports.push(FwPort {
                    bridge,
                    host_ip: p.host_ip,
                    host_port: p.host_port,
                    targets: vec![ip],
                    container_port: p.container_port,
                    protocol: p.protocol,
                });
            }
        }
    }
    for svc in d.services.values() {
        if svc.rec.publish.is_empty() {
            continue;
        }
        let Some((bridge, net)) = svc
            .rec
            .networks
            .iter()
            .filter_map(|n| bridge_of(&n.network))
            .find(|(_, n)| !n.internal)
        else {
            continue;
        };
        let targets: Vec<IpAddr> = d
            .tasks_of(&svc.rec.id)
            .filter(|t| d.visible(t))
            .filter_map(|t| d.endpoints.get(t.as_str())?.get(net.id.as_str()))
            .filter_map(|e| e.rec.ipv4.map(IpAddr::V4))
            .collect();
        for p in &svc.rec.publish {
            ports.push(FwPort {
                bridge,
                host_ip: p.host_ip,
                host_port: p.host_port,
                targets: targets.clone(),
                container_port: p.container_port,
                protocol: p.protocol,
            });
        }
    }
    if let Some((gw_bridge, gw_net)) = d
        .network_by_name(crate::daemon::api::networks::GWBRIDGE)
        .and_then(|n| bridge_of(&n.rec.id))
    {
        let isb = super::ingress::sandbox(d).map(|(_, _, addr)| IpAddr::V4(addr));
        let mesh = super::ingress::ports(d, me);
        for svc in d.services.values().map(|s| s.rec.as_ref()) {
            if !d.swarm_service(svc) {
                continue;
            }
            let local: Vec<IpAddr> = d
                .tasks_of(&svc.id)
                .filter(|t| d.visible(t))
                .filter_map(|t| d.endpoints.get(t.as_str())?.get(gw_net.id.as_str()))
                .filter_map(|e| e.rec.ipv4.map(IpAddr::V4))
                .collect();
            for p in &svc.publish {
                let (targets, container_port) = if p.host_mode {
                    (local.clone(), p.container_port)
                } else {
                    let healthy = mesh.iter().any(|m| {
                        m.port == p.host_port && m.protocol == p.protocol && !m.targets.is_empty()
                    });
                    (isb.filter(|_| healthy).into_iter().collect(), p.host_port)
                };
                ports.push(FwPort {
                    bridge: gw_bridge,
                    host_ip: p.host_ip,
                    host_port: p.host_port,
                    targets,
                    container_port,
                    protocol: p.protocol,
                });
            }
        }
    }
    let vxlan = vxlan_port.map(|port| FwVxlan {
        port,
        nodes: d.nodes.values().map(|n| n.rec.addr).collect(),
    });
    ruleset(&nets, &ports, vxlan.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        let nets = [
            FwNetwork {
                bridge: "sd-aaaaaaaaaaaa",
                subnets: vec![
                    "172.18.0.0/16".parse().unwrap(),
                    "fd00:1::/64".parse().unwrap(),
                ],
                internal: false,
                icc: true,
            },
            FwNetwork {
                bridge: "sd-bbbbbbbbbbbb",
                subnets: vec!["172.19.0.0/16".parse().unwrap()],
                internal: true,
                icc: true,
            },
        ];
        let ports = [
            FwPort {
                bridge: "sd-aaaaaaaaaaaa",
                host_ip: None,
                host_port: 8080,
                targets: vec!["172.18.0.2".parse().unwrap()],
                container_port: 80,
                protocol: Protocol::Tcp,
            },
            FwPort {
                bridge: "sd-aaaaaaaaaaaa",
                host_ip: Some("127.0.0.1".parse().unwrap()),
                host_port: 5353,
                targets: vec!["172.18.0.3".parse().unwrap()],
                container_port: 53,
                protocol: Protocol::Udp,
            },
            FwPort {
                bridge: "sd-aaaaaaaaaaaa",
                host_ip: None,
                host_port: 9090,
                targets: vec!["172.18.0.4".parse().unwrap(), "172.18.0.5".parse().unwrap()],
                container_port: 90,
                protocol: Protocol::Tcp,
            },
            FwPort {
                bridge: "sd-aaaaaaaaaaaa",
                host_ip: None,
                host_port: 9091,
                targets: vec![],
                container_port: 91,
                protocol: Protocol::Tcp,
            },
        ];
        ruleset(&nets, &ports, None)
    }

    #[test]
    fn shape() {
        let r = sample();
        assert!(r.contains("\"sd-aaaaaaaaaaaa\" : jump fwd-in-sd-aaaaaaaaaaaa"));
        assert!(r.contains("ip daddr 172.18.0.0/16 iifname != \"sd-aaaaaaaaaaaa\" drop"));
        assert!(r.contains("meta nfproto ipv4 tcp dport 8080 dnat ip to 172.18.0.2:80"));
        assert!(r.contains(
            "meta nfproto ipv4 ip daddr 127.0.0.1 udp dport 5353 dnat ip to 172.18.0.3:53"
        ));
        assert!(r.contains("INTERNAL NETWORK EGRESS"));
        assert!(r.contains("tcp dport 9090 dnat ip to numgen random mod 2 map { 0 : 172.18.0.4 . 90, 1 : 172.18.0.5 . 90 }"));
        assert!(!r.contains("dport 9091"), "no healthy task: no DNAT");
        assert!(r.contains("ip6 saddr fd00:1::/64 masquerade"));
        assert!(
            !r.contains("ip saddr 172.19.0.0/16 masquerade"),
            "internal: no masquerade"
        );
    }

    /// The generated text is valid nft syntax (checked by nft itself, without applying).
    #[test]
    fn nft_accepts_it() {
        if std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("nft not installed: skipped");
            return;
        }
        let vx = FwVxlan {
            port: 4789,
            nodes: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
        };
        for text in [
            sample(),
            ruleset(&[], &[], None),
            ruleset(&[], &[], Some(&vx)),
            dns_redirect(40000, 40001),
        ] {
            let mut child = std::process::Command::new("nft")
                .args(["-c", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "nft -c rejected:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
