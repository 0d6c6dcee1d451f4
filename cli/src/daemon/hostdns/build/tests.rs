use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::rr::{LowerName, Name, RData, RecordType};
use sdnet_resolver::Change;
use sdnet_resolver::model::{Endpoint, Network, Sandbox, TaskInfo};

use super::{Apex, Feed, NetExtra, reverse_origin};
use crate::daemon::hostdns::zones::{ZoneData, Zones, build};

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn net(id: &str, n: &str) -> Network {
    Network {
        id: id.into(),
        name: n.into(),
        internal: false,
        dns: true,
        upstreams: Vec::new(),
        ttl: None,
        vip_ttl: None,
    }
}

fn sb(id: &str, n: &str, net: &str, ip: [u8; 4], task: Option<TaskInfo>) -> Sandbox {
    Sandbox {
        id: id.repeat(64 / id.len()),
        name: n.into(),
        hostname: None,
        endpoints: vec![Endpoint {
            network: net.into(),
            ipv4: Some(Ipv4Addr::from(ip)),
            ipv6: None,
            aliases: vec!["Alias".into()],
        }],
        upstreams: Vec::new(),
        task,
        links: Vec::new(),
    }
}

fn apex() -> Apex {
    Apex {
        origin: name("sdnet."),
        ns_addr: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    }
}

fn get(z: &ZoneData, n: &str, t: RecordType) -> Vec<RData> {
    z.sets
        .get(&(LowerName::new(&name(n)), t))
        .map(|s| s.records_without_rrsigs().map(|r| r.data.clone()).collect())
        .unwrap_or_default()
}

fn serial(z: &ZoneData) -> u32 {
    match get(z, &z.origin.to_string(), RecordType::SOA).first() {
        Some(RData::SOA(s)) => s.serial,
        _ => panic!("no SOA"),
    }
}

#[test]
fn reverse_zones_cut_at_label_boundaries() {
    let r = |s: &str| reverse_origin(&s.parse().unwrap()).unwrap().to_string();
    assert_eq!(r("10.1.2.0/24"), "2.1.10.in-addr.arpa.");
    assert_eq!(r("172.18.0.0/16"), "18.172.in-addr.arpa.");
    assert_eq!(r("172.16.16.0/20"), "16.172.in-addr.arpa.");
    assert_eq!(
        r("fd12:3456:789a:1::/64"),
        "1.0.0.0.a.9.8.7.6.5.4.3.2.1.d.f.ip6.arpa."
    );
}

#[test]
fn served_networks_only_with_ptr_apex_and_empty_non_terminals() {
    let mut f = Feed::default();
    for c in [
        Change::UpsertNetwork(net("n1", "front")),
        Change::UpsertNetwork(net("n2", "hidden")),
        Change::UpsertSandbox(sb("a", "web", "n1", [10, 1, 0, 2], None)),
        Change::UpsertSandbox(sb("b", "db", "n2", [10, 2, 0, 2], None)),
        Change::UpsertSandbox(sb(
            "c",
            "sick",
            "n1",
            [10, 1, 0, 3],
            Some(TaskInfo {
                service: "s".into(),
                slot: 1,
                healthy: false,
            }),
        )),
    ] {
        f.apply(&c);
    }
    let sub = |s: &str| vec![s.parse().unwrap()];
    assert!(f.set_extra(
        "n1",
        NetExtra {
            served: true,
            subnets: sub("10.1.0.0/24")
        }
    ));
    assert!(f.set_extra(
        "n2",
        NetExtra {
            served: false,
            subnets: sub("10.2.0.0/24")
        }
    ));
    assert!(!f.set_extra(
        "n2",
        NetExtra {
            served: false,
            subnets: sub("10.2.0.0/24")
        }
    ));
    let zones = build(&f, &apex(), 7);
    // The forward zone and n1's reverse zone; n2 is not served.
    let origins: Vec<String> = zones.iter().map(|z| z.origin.to_string()).collect();
    assert_eq!(origins, ["0.1.10.in-addr.arpa.", "sdnet."]);
    let fwd = &zones[1];
    let rev = &zones[0];
    assert_eq!(serial(fwd), 7);
    assert_eq!(serial(rev), 7);
    let a = |ip: [u8; 4]| RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::from(ip)));
    assert_eq!(
        get(fwd, "web.front.sdnet.", RecordType::A),
        [a([10, 1, 0, 2])]
    );
    assert_eq!(
        get(fwd, "alias.front.sdnet.", RecordType::A),
        [a([10, 1, 0, 2])]
    );
    assert_eq!(get(fwd, "ns.sdnet.", RecordType::A), [a([127, 0, 0, 1])]);
    assert!(get(fwd, "db.hidden.sdnet.", RecordType::A).is_empty());
    assert!(get(fwd, "sick.front.sdnet.", RecordType::A).is_empty());
    assert_eq!(get(fwd, "sdnet.", RecordType::NS).len(), 1);
    // `front.sdnet.` exists (names below it) without records of its own.
    let front = LowerName::new(&name("front.sdnet."));
    assert_eq!(fwd.types(&front), Some(&[][..]));
    assert!(!fwd.exists(&LowerName::new(&name("hidden.sdnet."))));
    match get(rev, "2.0.1.10.in-addr.arpa.", RecordType::PTR).as_slice() {
        [RData::PTR(p)] => assert_eq!(p.0.to_string(), "web.front.sdnet."),
        other => panic!("{other:?}"),
    }
    // The apex comes first in a transfer.
    assert_eq!(fwd.ordered()[0].name().to_string(), "sdnet.");

    // Removal follows.
    f.apply(&Change::RemoveSandbox("a".repeat(64)));
    let zones = build(&f, &apex(), 8);
    assert!(get(&zones[1], "web.front.sdnet.", RecordType::A).is_empty());
    assert!(!zones[1].exists(&front));
}

/// Every record of every zone, as text, in transfer order.
fn dump(zones: &[ZoneData]) -> Vec<String> {
    zones
        .iter()
        .flat_map(|z| z.ordered())
        .flat_map(|s| {
            s.records_without_rrsigs()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn changes_applied_one_holder_at_a_time_give_the_zones_a_full_build_gives() {
    let mut f = Feed::default();
    let served = |s: &str| NetExtra {
        served: true,
        subnets: vec![s.parse().unwrap()],
    };
    f.apply(&Change::UpsertNetwork(net("n1", "front")));
    f.set_extra("n1", served("10.1.0.0/24"));
    let mut z = Zones::new(apex());
    z.update(&mut f);
    assert_eq!(dump(&z.publish(3)), dump(&build(&f, &apex(), 3)));
    // Sandboxes come and go, share an alias, claim the same address (the first claim keeps
    // the PTR) and change their records.
    let mut shared = sb("d", "twin", "n1", [10, 1, 0, 2], None);
    shared.endpoints[0].aliases = vec!["alias".into(), "only-d".into()];
    let steps: Vec<Change> = vec![
        Change::UpsertSandbox(sb("a", "web", "n1", [10, 1, 0, 2], None)),
        Change::UpsertSandbox(sb("b", "api", "n1", [10, 1, 0, 3], None)),
        Change::UpsertSandbox(shared),
        Change::RemoveSandbox("a".repeat(64)),
        Change::UpsertSandbox(sb("b", "api2", "n1", [10, 1, 0, 9], None)),
        Change::UpsertSandbox(sb("a", "web", "n1", [10, 1, 0, 2], None)),
        Change::RemoveSandbox("d".repeat(64)),
        Change::RemoveSandbox("b".repeat(64)),
        Change::RemoveSandbox("a".repeat(64)),
    ];
    for (i, c) in steps.iter().enumerate() {
        f.apply(c);
        z.update(&mut f);
        let serial = 10 + i as u32;
        assert_eq!(
            dump(&z.publish(serial)),
            dump(&build(&f, &apex(), serial)),
            "after step {i}: {c:?}"
        );
    }
    // Everything gone: the apex alone, and no name left between it and the owners.
    let zones = z.publish(99);
    assert!(!zones[1].exists(&LowerName::new(&name("front.sdnet."))));
    assert_eq!(zones[1].sets.len(), 3, "SOA, NS, ns A");
}
