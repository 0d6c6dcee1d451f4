//! The tables against a derivation from scratch: whatever sequence of changes led to a model,
//! readers must see what loading that model into empty tables gives.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::model::{
    Endpoint, EndpointMode, Protocol, ServiceNetwork, ServicePort, TaskInfo, Upstream,
};

/// Everything readers can see, in a form independent of history (indexes replaced by names,
/// address lists sorted: several holders' addresses come in the order they joined).
fn dump(t: &Tables) -> Vec<String> {
    let snap = t.snapshot();
    let mut out = Vec::new();
    for (_, net) in snap.nets.iter() {
        let n = &net.name;
        out.push(format!("net {n} id {} internal {}", net.id, net.internal));
        assert_eq!(
            snap.net_by_name(&n.to_ascii_lowercase())
                .map(|i| &*snap.net(i).unwrap().id),
            Some(&*net.id)
        );
        for (k, set) in net.addrs.entries() {
            let mut ips: Vec<String> = set.ips().iter().map(|i| i.to_string()).collect();
            let len = ips.len();
            ips.sort();
            ips.dedup();
            assert_eq!(len, ips.len(), "{n} {k}: duplicate addresses");
            out.push(format!("{n} A {k} {ips:?} ttl {}", set.ttl));
        }
        for (k, set) in net.srv.iter() {
            let mut ts: Vec<String> = set.targets.iter().map(|t| format!("{t:?}")).collect();
            ts.sort();
            out.push(format!("{n} SRV {k} {ts:?} ttl {}", set.ttl));
        }
        for (ip, e) in net.ptr.entries() {
            out.push(format!("{n} PTR {ip} {:?}", e.target()));
        }
    }
    let view_name = |v: &View| -> String {
        let nets: Vec<&str> = v
            .nets
            .iter()
            .map(|i| &*snap.net(*i).unwrap().name)
            .collect();
        format!("{} {nets:?} {:?}", v.sandbox, v.forwarding)
    };
    for (_, v) in snap.views.entries() {
        out.push(format!("view {}", view_name(&v)));
    }
    for (ip, idx) in snap.by_source.entries() {
        let v = snap.view(idx).expect("a source points at a view");
        out.push(format!("source {ip} {}", v.sandbox));
    }
    out.sort();
    out
}

fn from_scratch(state: &State) -> Tables {
    let t = Tables::new();
    t.replace_all(state).expect("a served state loads");
    t
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

const NETS: u8 = 3;
const SANDBOXES: u8 = 14;

fn sb_id(i: u8) -> String {
    format!("{:02x}{}", i, "e".repeat(62))
}

fn network(r: &mut Rng, i: u8) -> Network {
    Network {
        id: format!("n{i}"),
        // Renames keep the name resolvable (case only), so that references by name hold.
        name: if r.chance(2) {
            format!("net{i}")
        } else {
            format!("NET{i}")
        },
        internal: r.chance(4),
        dns: !r.chance(6),
        upstreams: if r.chance(3) {
            vec![Upstream(format!("192.0.2.{i}:53").parse().unwrap())]
        } else {
            vec![]
        },
        ttl: r.chance(2).then_some(i as u32 * 10),
        vip_ttl: r.chance(2).then_some(30),
    }
}

fn service(r: &mut Rng, i: u8) -> Service {
    let name = ["web", "db"][i as usize];
    let vip = r.chance(2);
    let mut networks = Vec::new();
    for n in 0..NETS {
        if r.chance(2) {
            networks.push(ServiceNetwork {
                network: if r.chance(2) {
                    format!("n{n}")
                } else {
                    format!("net{n}")
                },
                vip: (vip && r.chance(3)).then_some(Ipv4Addr::new(10, 250, i, n)),
                aliases: if r.chance(2) {
                    vec!["front".into()]
                } else {
                    vec![]
                },
            });
        }
    }
    Service {
        id: format!("s{i}"),
        name: if r.chance(2) {
            name.into()
        } else {
            name.to_uppercase()
        },
        mode: if vip {
            EndpointMode::Vip
        } else {
            EndpointMode::Dnsrr
        },
        networks,
        ports: if r.chance(2) {
            vec![ServicePort {
                name: "http".into(),
                port: 80,
                protocol: Protocol::Tcp,
            }]
        } else {
            vec![]
        },
    }
}

fn sandbox(r: &mut Rng, i: u8, services: &[u8]) -> Sandbox {
    let aliases = ["db", "cache", "front", "tasks.web"];
    let mut endpoints = Vec::new();
    for n in 0..NETS {
        if r.chance(2) {
            continue;
        }
        let count = r.below(3);
        let mut names = Vec::new();
        for _ in 0..count {
            names.push(aliases[r.below(aliases.len() as u64) as usize].to_string());
        }
        endpoints.push(Endpoint {
            network: if r.chance(2) {
                format!("n{n}")
            } else {
                format!("NET{n}")
            },
            // Unique per sandbox and network: a PTR is only ever claimed once.
            ipv4: (!r.chance(5)).then_some(Ipv4Addr::new(10, n, i, 2)),
            ipv6: r
                .chance(3)
                .then(|| Ipv6Addr::new(0xfd00, n as u16, 0, 0, 0, 0, 0, i as u16)),
            aliases: names,
        });
    }
    let task = (!services.is_empty() && r.chance(2)).then(|| {
        let s = services[r.below(services.len() as u64) as usize];
        TaskInfo {
            service: if r.chance(2) {
                format!("s{s}")
            } else {
                ["WEB", "db"][s as usize].into()
            },
            slot: i as u32,
            healthy: !r.chance(4),
        }
    });
    Sandbox {
        id: sb_id(i),
        // Unique (as a State requires), renamed now and then.
        name: format!("{}{i}", ["c", "C", "box"][r.below(3) as usize]),
        hostname: r.chance(3).then(|| format!("host{}", r.below(4))),
        endpoints,
        upstreams: if r.chance(5) {
            vec![Upstream("192.0.2.99:5353".parse().unwrap())]
        } else {
            vec![]
        },
        task,
        links: Vec::new(),
    }
}

#[test]
fn incremental_changes_match_a_derivation_from_scratch() {
    let mut r = Rng(0x5eed_1234_abcd);
    let t = Tables::new();
    let mut applied = 0;
    for step in 0..3000 {
        let state = t.state();
        let services: Vec<u8> = state
            .services
            .iter()
            .map(|s| s.id[1..].parse().unwrap())
            .collect();
        let which = r.below(10);
        let net = r.below(NETS as u64) as u8;
        let svc = r.below(2) as u8;
        let sb = r.below(SANDBOXES as u64) as u8;
        let rare = r.chance(3);
        let change = match which {
            0 => Change::UpsertNetwork(network(&mut r, net)),
            1 if rare => Change::RemoveNetwork(format!("n{net}")),
            2 => Change::UpsertService(service(&mut r, svc)),
            3 if rare => Change::RemoveService(format!("s{svc}")),
            4 | 5 => Change::RemoveSandbox(sb_id(sb)),
            _ => Change::UpsertSandbox(sandbox(&mut r, sb, &services)),
        };
        if t.apply([change.clone()]).is_ok() {
            applied += 1;
        }
        let state = t.state();
        let scratch = from_scratch(&state);
        assert_eq!(
            scratch.state(),
            state,
            "step {step}: the model survives a reload"
        );
        assert_eq!(dump(&t), dump(&scratch), "step {step}: after {change:?}");
        // Shared entries are kept only while shared: loading from scratch keeps the same.
        assert_eq!(
            t.writer().holders.shared_entries(),
            scratch.writer().holders.shared_entries(),
            "step {step}"
        );
    }
    assert!(applied > 1500, "most changes apply ({applied})");
    // Everything removed: nothing is left behind, shared or not.
    let mut ids: Vec<Change> = (0..SANDBOXES)
        .map(|i| Change::RemoveSandbox(sb_id(i)))
        .collect();
    ids.extend((0..2).map(|i| Change::RemoveService(format!("s{i}"))));
    t.apply(ids).unwrap();
    let snap = t.snapshot();
    assert_eq!(snap.total_names(), 0);
    assert!(snap.nets.values().all(|n| n.ptr.len() == 0));
    assert_eq!(snap.views.len(), 0);
    assert_eq!(snap.by_source.len(), 0);
    assert_eq!(t.writer().holders.shared_entries(), 0);
}

fn one(net: &str, name: &str, i: u8, ip: [u8; 4], aliases: &[&str]) -> Sandbox {
    Sandbox {
        id: sb_id(i),
        name: name.into(),
        hostname: None,
        endpoints: vec![Endpoint {
            network: net.into(),
            ipv4: Some(ip.into()),
            ipv6: None,
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
        }],
        upstreams: vec![],
        task: None,
        links: Vec::new(),
    }
}

fn plain_net() -> Network {
    Network {
        id: "n".into(),
        name: "net".into(),
        internal: false,
        dns: true,
        upstreams: vec![],
        ttl: None,
        vip_ttl: None,
    }
}

#[test]
fn shared_names_and_claimed_addresses_follow_their_holders() {
    let t = Tables::new();
    t.apply([
        Change::UpsertNetwork(plain_net()),
        Change::UpsertSandbox(one("n", "a", 1, [10, 0, 0, 1], &["db"])),
        Change::UpsertSandbox(one("n", "b", 2, [10, 0, 0, 2], &["db"])),
    ])
    .unwrap();
    let addrs = |key: &str| {
        let snap = t.snapshot();
        let net = snap.net(snap.net_by_name("net").unwrap()).unwrap();
        net.addrs(key).map(|s| s.v4().to_vec()).unwrap_or_default()
    };
    let ptr = |ip: [u8; 4]| {
        let snap = t.snapshot();
        let net = snap.net(snap.net_by_name("net").unwrap()).unwrap();
        net.ptr(&IpAddr::from(ip)).map(|e| e.target().0.to_vec())
    };
    assert_eq!(
        addrs("db"),
        [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]
    );
    assert_eq!(t.writer().holders.shared_entries(), 1);
    // b takes a's address too: the first claim answers PTR until it goes away.
    t.apply([Change::UpsertSandbox(one(
        "n",
        "b",
        2,
        [10, 0, 0, 1],
        &["db"],
    ))])
    .unwrap();
    assert_eq!(addrs("db"), [Ipv4Addr::new(10, 0, 0, 1)]);
    assert_eq!(ptr([10, 0, 0, 1]), Some(b"\x01a\x03net\x00".to_vec()));
    assert_eq!(ptr([10, 0, 0, 2]), None);
    assert_eq!(t.writer().holders.shared_entries(), 2);
    t.apply([Change::RemoveSandbox(sb_id(1))]).unwrap();
    assert_eq!(addrs("db"), [Ipv4Addr::new(10, 0, 0, 1)]);
    assert_eq!(addrs("a"), Vec::<Ipv4Addr>::new());
    assert_eq!(ptr([10, 0, 0, 1]), Some(b"\x01b\x03net\x00".to_vec()));
    // One holder left on each: nothing kept aside any more.
    assert_eq!(t.writer().holders.shared_entries(), 0);
    t.apply([Change::RemoveSandbox(sb_id(2))]).unwrap();
    assert_eq!(addrs("db"), Vec::<Ipv4Addr>::new());
    assert_eq!(ptr([10, 0, 0, 1]), None);
}

#[test]
fn views_keep_their_index_and_a_new_sandbox_never_gets_an_old_one() {
    let t = Tables::new();
    t.apply([
        Change::UpsertNetwork(plain_net()),
        Change::UpsertSandbox(one("n", "a", 1, [10, 0, 0, 1], &[])),
    ])
    .unwrap();
    let a = t.view_of(&sb_id(1)).unwrap();
    let inflight = t.snapshot().view(a).unwrap().inflight.clone();
    inflight.fetch_add(3, std::sync::atomic::Ordering::Relaxed);
    t.apply([Change::UpsertSandbox(one("n", "a2", 1, [10, 0, 0, 9], &[]))])
        .unwrap();
    assert_eq!(t.view_of(&sb_id(1)), Some(a));
    let snap = t.snapshot();
    let v = snap.view(a).unwrap();
    assert_eq!(&*v.sandbox, "a2");
    // Exchanges in flight are still counted against the sandbox after it changed.
    assert!(std::sync::Arc::ptr_eq(&v.inflight, &inflight));
    assert_eq!(
        &*snap.view_by_source(IpAddr::from([10, 0, 0, 9])).sandbox,
        "a2"
    );
    assert_eq!(
        &*snap.view_by_source(IpAddr::from([10, 0, 0, 1])).sandbox,
        ""
    );
    t.apply([
        Change::RemoveSandbox(sb_id(1)),
        Change::UpsertSandbox(one("n", "b", 2, [10, 0, 0, 1], &[])),
        Change::UpsertSandbox(one("n", "a", 1, [10, 0, 0, 3], &[])),
    ])
    .unwrap();
    assert!(
        t.snapshot().view(a).is_none(),
        "a removed sandbox's view is gone"
    );
    assert_ne!(t.view_of(&sb_id(2)), Some(a));
    assert_ne!(t.view_of(&sb_id(1)), Some(a));
    assert_eq!(t.view_of("not-an-id"), None);
}

#[test]
fn renames_move_names_and_leave_nothing_behind() {
    let t = Tables::new();
    let mut task = one("n", "t1", 3, [10, 0, 0, 3], &[]);
    task.task = Some(TaskInfo {
        service: "s0".into(),
        slot: 1,
        healthy: true,
    });
    t.apply([
        Change::UpsertNetwork(plain_net()),
        // a refers to its network by name, b by ID.
        Change::UpsertSandbox(one("net", "a", 1, [10, 0, 0, 1], &["db"])),
        Change::UpsertSandbox(one("n", "b", 2, [10, 0, 0, 2], &["db"])),
        Change::UpsertService(Service {
            id: "s0".into(),
            name: "web".into(),
            mode: EndpointMode::Dnsrr,
            networks: vec![ServiceNetwork {
                network: "n".into(),
                vip: None,
                aliases: vec![],
            }],
            ports: vec![],
        }),
        Change::UpsertSandbox(task),
    ])
    .unwrap();
    assert_eq!(t.writer().holders.shared_entries(), 1);
    let mut renamed = plain_net();
    renamed.name = "other".into();
    let mut svc = t.state().services[0].clone();
    svc.name = "api".into();
    t.apply([Change::UpsertNetwork(renamed), Change::UpsertService(svc)])
        .unwrap();
    let snap = t.snapshot();
    assert_eq!(snap.net_by_name("net"), None);
    let net = snap.net(snap.net_by_name("other").unwrap()).unwrap();
    // a's reference no longer resolves: its names went, b's stayed and follow the new name.
    assert!(net.addrs("a").is_none());
    assert_eq!(net.addrs("db").unwrap().v4(), [Ipv4Addr::new(10, 0, 0, 2)]);
    assert!(net.ptr(&IpAddr::from([10, 0, 0, 1])).is_none());
    let ptr = net.ptr(&IpAddr::from([10, 0, 0, 2])).unwrap();
    assert_eq!(ptr.target().0, b"\x01b\x05other\x00");
    let view = snap.view(t.view_of(&sb_id(1)).unwrap()).unwrap();
    assert!(view.nets.is_empty());
    // The task's service names follow the service's.
    assert!(net.addrs("tasks.web").is_none() && net.addrs("web").is_none());
    assert_eq!(
        net.addrs("tasks.api").unwrap().v4(),
        [Ipv4Addr::new(10, 0, 0, 3)]
    );
    assert_eq!(net.addrs("api").unwrap().v4(), [Ipv4Addr::new(10, 0, 0, 3)]);
    assert_eq!(t.writer().holders.shared_entries(), 0);
}
