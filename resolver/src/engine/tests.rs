//! One test (at least) per row of the answer table (DESIGN.md §3). Responses are decoded with
//! hickory-proto, an independent decoder, so the wire format is checked too.

use super::*;
use crate::model::{self, State};
use crate::table::{Change, Tables};
use crate::wire::{CLASS_IN, TYPE_A, TYPE_AAAA, TYPE_PTR, TYPE_SRV, encode_name, parse_query};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

const TYPE_TXT: u16 = 16;

fn id(n: u8) -> String {
    format!("{:02x}", n).repeat(32)
}

fn state() -> State {
    let json = serde_json::json!({
        "networks": [
            {"id": "n1", "name": "net1"},
            {"id": "n2", "name": "Net2", "ttl": 5},
            {"id": "n3", "name": "net3", "internal": true},
            {"id": "n4", "name": "br.net4"},
        ],
        "services": [
            {"id": "s1", "name": "web", "mode": "vip",
             "networks": [{"network": "n1", "vip": "10.1.0.100", "aliases": ["api"]}],
             "ports": [{"name": "http", "port": 80, "protocol": "tcp"}]},
            {"id": "s2", "name": "rr", "mode": "dnsrr", "networks": [{"network": "net1"}]},
        ],
        "sandboxes": [
            {"id": id(1), "name": "a", "hostname": "alpha",
             "endpoints": [{"network": "n1", "ipv4": "10.1.0.2", "aliases": ["db"]}]},
            {"id": id(2), "name": "b",
             "endpoints": [{"network": "n1", "ipv4": "10.1.0.3", "aliases": ["db"]},
                           {"network": "n2", "ipv4": "10.2.0.3"}]},
            {"id": id(3), "name": "c",
             "endpoints": [{"network": "n2", "ipv4": "10.2.0.4", "ipv6": "fd00::4"}]},
            {"id": id(4), "name": "i", "endpoints": [{"network": "n3", "ipv4": "10.3.0.2"}]},
            {"id": id(5), "name": "c1.net4", "endpoints": [{"network": "n4", "ipv4": "10.4.0.2"}]},
            {"id": id(6), "name": "v6only", "endpoints": [{"network": "n2", "ipv6": "fd00::6"}]},
            {"id": id(10), "name": "web.1.t1", "task": {"service": "s1", "slot": 1},
             "endpoints": [{"network": "n1", "ipv4": "10.1.0.10"}]},
            {"id": id(11), "name": "web.2.t2", "task": {"service": "web", "slot": 2},
             "endpoints": [{"network": "n1", "ipv4": "10.1.0.11"}]},
            {"id": id(12), "name": "web.3.t3", "task": {"service": "s1", "slot": 3, "healthy": false},
             "endpoints": [{"network": "n1", "ipv4": "10.1.0.12"}]},
            {"id": id(20), "name": "rr.1.x", "task": {"service": "s2", "slot": 1},
             "endpoints": [{"network": "n1", "ipv4": "10.1.0.20"}]},
        ]
    });
    let st: State = serde_json::from_value(json).unwrap();
    st.validate().unwrap();
    st
}

fn tables() -> Tables {
    let t = Tables::new();
    t.replace_all(&state()).unwrap();
    t
}

struct Q {
    name: &'static str,
    qtype: u16,
    edns: Option<(u16, u8, bool)>,
    flags: u16,
}

fn q(name: &'static str, qtype: u16) -> Q {
    Q {
        name,
        qtype,
        edns: None,
        flags: 0x0100,
    }
}

fn build(q: &Q) -> Vec<u8> {
    let mut m = vec![0xab, 0xcd];
    m.extend(q.flags.to_be_bytes());
    m.extend([0, 1, 0, 0, 0, 0, 0, if q.edns.is_some() { 1 } else { 0 }]);
    m.extend(encode_name(q.name).unwrap());
    m.extend(q.qtype.to_be_bytes());
    m.extend(CLASS_IN.to_be_bytes());
    if let Some((size, version, dnssec_ok)) = q.edns {
        m.extend([0, 0, 41]);
        m.extend(size.to_be_bytes());
        m.extend([0, version, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    m
}

/// Asks as sandbox `from`; None = forwarded.
fn ask_rot(t: &Tables, from: u8, query: &Q, limit: usize, rot: u32) -> Option<Message> {
    let snap = t.snapshot();
    let view = snap.view(t.view_of(&id(from)).unwrap()).unwrap().clone();
    let bytes = build(query);
    let pq = parse_query(&bytes).unwrap();
    let mut out = Vec::new();
    match answer(&snap, &view, &pq, limit, rot, &mut out) {
        Outcome::Forward => None,
        Outcome::Reply => {
            assert!(out.len() <= limit, "{} > {limit}", out.len());
            let m = Message::from_vec(&out).expect("response decodes");
            assert_eq!(m.metadata.id, 0xabcd);
            assert_eq!(m.queries.len(), 1);
            assert_eq!(
                m.queries[0].name().to_ascii(),
                format!("{}.", query.name),
                "question case kept"
            );
            Some(m)
        }
    }
}

fn ask(t: &Tables, from: u8, query: Q) -> Option<Message> {
    ask_rot(t, from, &query, 512, 0)
}

fn answers(m: &Message) -> Vec<String> {
    m.answers.iter().map(|r| r.data.to_string()).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn is_nodata(m: &Message) {
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities.len(), 1);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    assert!(m.metadata.authoritative);
}

#[test]
fn name_on_first_shared_network() {
    let t = tables();
    // a is on net1 only: b's net1 address.
    let m = ask(&t, 1, q("b", TYPE_A)).unwrap();
    assert_eq!(answers(&m), ["10.1.0.3"]);
    assert!(m.metadata.authoritative);
    assert!(m.metadata.recursion_available);
    assert!(m.metadata.recursion_desired);
    assert_eq!(m.answers[0].ttl, 0, "default sandbox TTL");
    // c is on Net2 only: b's Net2 address, with Net2's TTL.
    let m = ask(&t, 3, q("b", TYPE_A)).unwrap();
    assert_eq!(answers(&m), ["10.2.0.3"]);
    assert_eq!(m.answers[0].ttl, 5);
    // b shares net1 with a and Net2 with c.
    assert_eq!(answers(&ask(&t, 2, q("c", TYPE_A)).unwrap()), ["10.2.0.4"]);
    // b asking for itself: first network in its attachment order (net1), never merged.
    assert_eq!(answers(&ask(&t, 2, q("b", TYPE_A)).unwrap()), ["10.1.0.3"]);
}

#[test]
fn hostname_short_id_alias_and_case() {
    let t = tables();
    assert_eq!(
        answers(&ask(&t, 2, q("alpha", TYPE_A)).unwrap()),
        ["10.1.0.2"]
    );
    assert_eq!(
        answers(&ask(&t, 2, q("ALPHA", TYPE_A)).unwrap()),
        ["10.1.0.2"]
    );
    assert_eq!(
        answers(&ask(&t, 2, q("010101010101", TYPE_A)).unwrap()),
        ["10.1.0.2"]
    );
    // Several holders of one alias: all addresses, order rotated per query.
    let first = ask_rot(&t, 3, &q("db", TYPE_A), 512, 0);
    assert!(first.is_none(), "c does not share net1: forwarded");
    let r0 = answers(&ask_rot(&t, 1, &q("db", TYPE_A), 512, 0).unwrap());
    let r1 = answers(&ask_rot(&t, 1, &q("db", TYPE_A), 512, 1).unwrap());
    assert_eq!(sorted(r0.clone()), ["10.1.0.2", "10.1.0.3"]);
    assert_eq!(sorted(r1.clone()), sorted(r0.clone()));
    assert_ne!(r0, r1, "rotation changes the order");
}

#[test]
fn name_dot_network() {
    let t = tables();
    // b.net2 from c: Net2 only, case-insensitive network match.
    let m = ask(&t, 3, q("B.NET2", TYPE_A)).unwrap();
    assert_eq!(answers(&m), ["10.2.0.3"]);
    // From b, b.net2 is restricted to Net2 even though net1 comes first.
    assert_eq!(
        answers(&ask(&t, 2, q("b.Net2", TYPE_A)).unwrap()),
        ["10.2.0.3"]
    );
    // a is not on Net2: not local, forwarded, never Net2's address.
    assert!(ask(&t, 1, q("b.net2", TYPE_A)).is_none());
    // Dotted sandbox name on a dotted network (Docker NAME-20), and the qualified form.
    assert_eq!(
        answers(&ask(&t, 5, q("c1.net4", TYPE_A)).unwrap()),
        ["10.4.0.2"]
    );
    assert_eq!(
        answers(&ask(&t, 5, q("c1.net4.br.net4", TYPE_A)).unwrap()),
        ["10.4.0.2"]
    );
    // Extra suffix: not local.
    assert!(ask(&t, 5, q("c1.net4.br.net4.example.com", TYPE_A)).is_none());
}

#[test]
fn unshared_names_never_leak() {
    let t = tables();
    assert!(ask(&t, 1, q("c", TYPE_A)).is_none());
    assert!(ask(&t, 1, q("c", TYPE_AAAA)).is_none());
    assert!(ask(&t, 1, q("i", TYPE_A)).is_none());
    // PTR of an address on a network a is not on: forwarded, not answered.
    assert!(ask(&t, 1, q("4.0.2.10.in-addr.arpa", TYPE_PTR)).is_none());
}

#[test]
fn nodata_for_other_family_and_types() {
    let t = tables();
    is_nodata(&ask(&t, 1, q("b", TYPE_AAAA)).unwrap());
    is_nodata(&ask(&t, 1, q("b", TYPE_TXT)).unwrap());
    is_nodata(&ask(&t, 1, q("b", 255)).unwrap());
    is_nodata(&ask(&t, 3, q("v6only", TYPE_A)).unwrap());
    let m = ask(&t, 3, q("b", TYPE_AAAA)).unwrap();
    is_nodata(&m);
    // SOA owner is the name itself, negative TTL = the network's TTL.
    assert_eq!(m.authorities[0].name.to_ascii(), "b.");
    assert_eq!(m.authorities[0].ttl, 5);
    assert_eq!(
        answers(&ask(&t, 3, q("c", TYPE_AAAA)).unwrap()),
        ["fd00::4"]
    );
    assert_eq!(
        answers(&ask(&t, 3, q("v6only", TYPE_AAAA)).unwrap()),
        ["fd00::6"]
    );
}

#[test]
fn service_vip_dnsrr_and_tasks() {
    let t = tables();
    let m = ask(&t, 1, q("web", TYPE_A)).unwrap();
    assert_eq!(answers(&m), ["10.1.0.100"], "exactly the VIP");
    assert_eq!(m.answers[0].ttl, 600, "VIP TTL");
    assert_eq!(
        answers(&ask(&t, 1, q("api", TYPE_A)).unwrap()),
        ["10.1.0.100"]
    );
    is_nodata(&ask(&t, 1, q("web", TYPE_AAAA)).unwrap());
    // tasks.web: healthy tasks only (web.3 is unhealthy).
    let m = ask(&t, 1, q("tasks.web", TYPE_A)).unwrap();
    assert_eq!(sorted(answers(&m)), ["10.1.0.10", "10.1.0.11"]);
    assert_eq!(
        sorted(answers(&ask(&t, 1, q("tasks.api", TYPE_A)).unwrap())),
        ["10.1.0.10", "10.1.0.11"]
    );
    assert_eq!(
        sorted(answers(&ask(&t, 1, q("tasks.web.net1", TYPE_A)).unwrap())),
        ["10.1.0.10", "10.1.0.11"]
    );
    // Task names; the unhealthy task is not in DNS at all.
    assert_eq!(
        answers(&ask(&t, 1, q("web.1.t1", TYPE_A)).unwrap()),
        ["10.1.0.10"]
    );
    assert!(ask(&t, 1, q("web.3.t3", TYPE_A)).is_none());
    // dnsrr: the name answers task IPs, no VIP.
    assert_eq!(
        answers(&ask(&t, 1, q("rr", TYPE_A)).unwrap()),
        ["10.1.0.20"]
    );
    assert_eq!(
        answers(&ask(&t, 1, q("tasks.rr", TYPE_A)).unwrap()),
        ["10.1.0.20"]
    );
    // Not on net1: nothing of the service.
    assert!(ask(&t, 3, q("web", TYPE_A)).is_none());
}

#[test]
fn srv_with_additional_records() {
    let t = tables();
    let m = ask(&t, 1, q("_http._tcp.web", TYPE_SRV)).unwrap();
    assert_eq!(
        sorted(answers(&m)),
        ["0 1 80 web.1.t1.net1.", "0 1 80 web.2.t2.net1."]
    );
    let mut glue: Vec<String> = m
        .additionals
        .iter()
        .map(|r| format!("{} {}", r.name.to_ascii(), r.data))
        .collect();
    glue.sort();
    assert_eq!(
        glue,
        ["web.1.t1.net1. 10.1.0.10", "web.2.t2.net1. 10.1.0.11"]
    );
    // The SRV target resolves.
    assert_eq!(
        answers(&ask(&t, 1, q("web.1.t1.net1", TYPE_A)).unwrap()),
        ["10.1.0.10"]
    );
    // The SRV name exists: A for it is NODATA. Unknown port: not local.
    is_nodata(&ask(&t, 1, q("_http._tcp.web", TYPE_A)).unwrap());
    assert!(ask(&t, 1, q("_https._tcp.web", TYPE_SRV)).is_none());
    // SRV on a plain sandbox name: NODATA.
    is_nodata(&ask(&t, 1, q("b", TYPE_SRV)).unwrap());
}

#[test]
fn ptr_for_sandbox_task_and_vip() {
    let t = tables();
    assert_eq!(
        answers(&ask(&t, 1, q("3.0.1.10.in-addr.arpa", TYPE_PTR)).unwrap()),
        ["b.net1."]
    );
    assert_eq!(
        answers(&ask(&t, 3, q("3.0.2.10.IN-ADDR.ARPA", TYPE_PTR)).unwrap()),
        ["b.Net2."]
    );
    assert_eq!(
        answers(&ask(&t, 1, q("10.0.1.10.in-addr.arpa", TYPE_PTR)).unwrap()),
        ["web.1.t1.net1."]
    );
    assert_eq!(
        answers(&ask(&t, 1, q("100.0.1.10.in-addr.arpa", TYPE_PTR)).unwrap()),
        ["web.net1."]
    );
    let v6 = "4.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa";
    assert_eq!(answers(&ask(&t, 3, q(v6, TYPE_PTR)).unwrap()), ["c.Net2."]);
    // Unknown address: forwarded.
    assert!(ask(&t, 1, q("99.0.1.10.in-addr.arpa", TYPE_PTR)).is_none());
}

#[test]
fn internal_only_gets_nxdomain_not_forwarded() {
    let t = tables();
    let m = ask(&t, 4, q("example.com", TYPE_A)).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        !m.metadata.recursion_available,
        "RA=0: nothing is forwarded"
    );
    assert!(m.metadata.authoritative);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    // Names on the internal network still resolve.
    assert_eq!(answers(&ask(&t, 4, q("i", TYPE_A)).unwrap()), ["10.3.0.2"]);
}

#[test]
fn flags_edns_and_truncation() {
    let t = tables();
    // RD and CD echoed.
    let mut query = q("b", TYPE_A);
    query.flags = 0x0010;
    let m = ask(&t, 1, query).unwrap();
    assert!(!m.metadata.recursion_desired);
    assert!(m.metadata.checking_disabled);
    // EDNS echoed (with DO), absent when the query had none.
    let mut query = q("b", TYPE_A);
    query.edns = Some((4096, 0, true));
    let m = ask(&t, 1, query).unwrap();
    let e = m.edns.expect("OPT echoed");
    assert_eq!(e.max_payload(), crate::wire::OUR_EDNS_PAYLOAD);
    assert!(e.flags().dnssec_ok);
    assert!(ask(&t, 1, q("b", TYPE_A)).unwrap().edns.is_none());
    // EDNS version 1: BADVERS.
    let mut query = q("b", TYPE_A);
    query.edns = Some((1232, 1, false));
    let m = ask(&t, 1, query).unwrap();
    assert_eq!(
        m.edns.as_ref().map(|e| e.rcode_high()),
        Some(1),
        "BADVERS = 16"
    );
    assert!(m.answers.is_empty());
}

#[test]
fn truncation_at_512_or_edns_size() {
    let t = Tables::new();
    let mut st = State {
        networks: vec![
            serde_json::from_value(serde_json::json!({"id": "n", "name": "n"})).unwrap(),
        ],
        ..State::default()
    };
    for i in 0..60u8 {
        st.sandboxes.push(
            serde_json::from_value(serde_json::json!({
                "id": id(i + 1), "name": format!("s{i}"),
                "endpoints": [{"network": "n", "ipv4": format!("10.0.0.{}", i + 2), "aliases": ["many"]}]
            }))
            .unwrap(),
        );
    }
    t.replace_all(&st).unwrap();
    let m = ask_rot(&t, 1, &q("many", TYPE_A), 512, 0).unwrap();
    assert!(m.metadata.truncation);
    assert!(!m.answers.is_empty() && m.answers.len() < 60);
    let mut big = q("many", TYPE_A);
    big.edns = Some((1232, 0, false));
    let m = ask_rot(&t, 1, &big, 1232, 0).unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    // TCP limit.
    let m = ask_rot(&t, 1, &q("many", TYPE_A), 65535, 0).unwrap();
    assert_eq!(m.answers.len(), 60);
}

#[test]
fn updates_take_effect_and_old_snapshots_stay_intact() {
    let t = tables();
    let before = t.snapshot();
    // Disconnect b from net1.
    let mut st = state();
    let b = st.sandboxes.iter_mut().find(|s| s.name == "b").unwrap();
    b.endpoints.remove(0);
    t.replace_all(&st).unwrap();
    assert_eq!(answers(&ask(&t, 1, q("db", TYPE_A)).unwrap()), ["10.1.0.2"]);
    assert!(ask(&t, 1, q("b", TYPE_A)).is_none());
    // The old snapshot still answers as before (readers are never disturbed).
    let v = before.view(t.view_of(&id(1)).unwrap()).unwrap().clone();
    assert!(lookup(&before, &v, "b").is_some());
    // Task turns unhealthy: leaves tasks.web and SRV at once.
    let w1 = st
        .sandboxes
        .iter_mut()
        .find(|s| s.name == "web.1.t1")
        .unwrap();
    w1.task.as_mut().unwrap().healthy = false;
    t.replace_all(&st).unwrap();
    assert_eq!(
        answers(&ask(&t, 1, q("tasks.web", TYPE_A)).unwrap()),
        ["10.1.0.11"]
    );
    assert_eq!(
        answers(&ask(&t, 1, q("_http._tcp.web", TYPE_SRV)).unwrap()),
        ["0 1 80 web.2.t2.net1."]
    );
    // Switching the service to dnsrr drops the VIP.
    let svc = st.services.iter_mut().find(|s| s.name == "web").unwrap();
    svc.mode = model::EndpointMode::Dnsrr;
    svc.networks[0].vip = None;
    t.replace_all(&st).unwrap();
    assert_eq!(
        answers(&ask(&t, 1, q("web", TYPE_A)).unwrap()),
        ["10.1.0.11"]
    );
    assert!(ask(&t, 1, q("100.0.1.10.in-addr.arpa", TYPE_PTR)).is_none());
    // Renaming a network changes PTR targets and the qualified names.
    let n1 = st.networks.iter_mut().find(|n| n.id == "n1").unwrap();
    n1.name = "front".into();
    st.services[1].networks[0].network = "n1".into(); // it referred to the old name
    t.replace_all(&st).unwrap();
    assert_eq!(
        answers(&ask(&t, 1, q("2.0.1.10.in-addr.arpa", TYPE_PTR)).unwrap()),
        ["a.front."]
    );
    assert_eq!(
        answers(&ask(&t, 1, q("a.front", TYPE_A)).unwrap()),
        ["10.1.0.2"]
    );
    assert!(ask(&t, 1, q("a.net1", TYPE_A)).is_none());
}

#[test]
fn removal_rules() {
    let t = tables();
    // A network in use cannot go; a service with tasks cannot go.
    assert!(t.apply([Change::RemoveNetwork("n1".into())]).is_err());
    assert!(t.apply([Change::RemoveService("s1".into())]).is_err());
    // Unknown references are refused and change nothing.
    let bad: model::Sandbox = serde_json::from_value(serde_json::json!({
        "id": id(99), "name": "x", "endpoints": [{"network": "nope"}]
    }))
    .unwrap();
    assert!(t.apply([Change::UpsertSandbox(bad)]).is_err());
    assert!(t.view_of(&id(99)).is_none());
    // Remove all: nothing left.
    t.replace_all(&State::default()).unwrap();
    assert_eq!(t.snapshot().total_names(), 0);
    assert!(t.view_of(&id(1)).is_none());
}

#[test]
fn forwarding_policy() {
    let t = tables();
    let mut st = state();
    st.networks[1].upstreams = vec!["192.0.2.53".parse().unwrap()];
    st.sandboxes[0].upstreams = vec!["192.0.2.1:5353".parse().unwrap()];
    t.replace_all(&st).unwrap();
    let snap = t.snapshot();
    let view = |n| snap.view(t.view_of(&id(n)).unwrap()).unwrap();
    match &view(1).forwarding {
        crate::table::Forwarding::Upstreams(u) => {
            assert_eq!(u.servers, ["192.0.2.1:5353".parse().unwrap()])
        }
        f => panic!("{f:?}"),
    }
    // b: net1 has no servers, Net2 (its next network) has.
    match &view(2).forwarding {
        crate::table::Forwarding::Upstreams(u) => {
            assert_eq!(u.servers, ["192.0.2.53:53".parse().unwrap()])
        }
        f => panic!("{f:?}"),
    }
    assert!(matches!(
        view(10).forwarding,
        crate::table::Forwarding::Default
    ));
    match &view(3).forwarding {
        crate::table::Forwarding::Upstreams(u) => {
            assert_eq!(u.servers, ["192.0.2.53:53".parse().unwrap()])
        }
        f => panic!("{f:?}"),
    }
    assert!(matches!(
        view(4).forwarding,
        crate::table::Forwarding::Never
    ));
}

fn sandbox(n: u8, name: &str, net: &str, ip: &str, aliases: &[&str]) -> model::Sandbox {
    serde_json::from_value(serde_json::json!({
        "id": id(n), "name": name,
        "endpoints": [{"network": net, "ipv4": ip, "aliases": aliases}]
    }))
    .unwrap()
}

#[test]
fn names_of_every_length_and_shared_records_follow_their_holders() {
    let t = tables();
    // Keys are stored inline up to 22 bytes and on the heap beyond: both sides of the edge
    // answer, whole, in another case and as `name.network`.
    let n22 = "n".repeat(22);
    let n23 = "m".repeat(23);
    t.apply([
        Change::UpsertSandbox(sandbox(40, &n22, "n1", "10.1.0.40", &[])),
        Change::UpsertSandbox(sandbox(41, &n23, "n1", "10.1.0.41", &["db"])),
    ])
    .unwrap();
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    assert_eq!(
        answers(&ask(&t, 1, q(leak(n22.clone()), TYPE_A)).unwrap()),
        ["10.1.0.40"]
    );
    assert_eq!(
        answers(&ask(&t, 1, q(leak(n23.to_uppercase()), TYPE_A)).unwrap()),
        ["10.1.0.41"]
    );
    assert_eq!(
        answers(&ask(&t, 1, q(leak(format!("{n23}.net1")), TYPE_A)).unwrap()),
        ["10.1.0.41"]
    );
    // Three holders of "db"; one leaves, the others stay.
    assert_eq!(
        sorted(answers(&ask(&t, 1, q("db", TYPE_A)).unwrap())),
        ["10.1.0.2", "10.1.0.3", "10.1.0.41"]
    );
    t.apply([Change::RemoveSandbox(id(2))]).unwrap();
    assert_eq!(
        sorted(answers(&ask(&t, 1, q("db", TYPE_A)).unwrap())),
        ["10.1.0.2", "10.1.0.41"]
    );
    t.apply([Change::RemoveSandbox(id(41))]).unwrap();
    assert_eq!(answers(&ask(&t, 1, q("db", TYPE_A)).unwrap()), ["10.1.0.2"]);
    // A name with many holders (a service with 40 tasks; the union deduplicates with a set
    // past a handful of addresses): every address once, and a leaving task leaves it.
    let mut tasks = Vec::new();
    for k in 0..40u8 {
        let mut sb = sandbox(
            100 + k,
            &format!("rr.{}.t{k}", k + 2),
            "n1",
            &format!("10.1.1.{k}"),
            &[],
        );
        sb.task = Some(
            serde_json::from_value(serde_json::json!({"service": "s2", "slot": k + 2})).unwrap(),
        );
        tasks.push(Change::UpsertSandbox(sb));
    }
    t.apply(tasks).unwrap();
    let all = answers(&ask_rot(&t, 1, &q("tasks.rr", TYPE_A), 65535, 0).unwrap());
    assert_eq!(all.len(), 41, "{all:?}");
    t.apply([Change::RemoveSandbox(id(100))]).unwrap();
    let all = answers(&ask_rot(&t, 1, &q("tasks.rr", TYPE_A), 65535, 0).unwrap());
    assert_eq!(all.len(), 40);
    assert!(!all.contains(&"10.1.1.0".to_string()));
}

/// `Policy::Podman` (aardvark-dns's semantics) over the same engine.
mod podman {
    use super::*;
    use crate::model::Policy;

    fn tables() -> Tables {
        let json = serde_json::json!({
            "networks": [
                {"id": "n1", "name": "net1", "upstreams": ["10.9.0.1"]},
                {"id": "n2", "name": "net2", "upstreams": ["10.9.0.2"]},
                {"id": "n3", "name": "net3", "internal": true},
            ],
            "sandboxes": [
                {"id": id(1), "name": "x1",
                 "endpoints": [{"network": "n1", "ipv4": "10.1.0.2", "aliases": ["web", "w1"]},
                               {"network": "n2", "ipv4": "10.2.0.2", "ipv6": "fd02::2", "aliases": ["web"]}]},
                {"id": id(2), "name": "x2",
                 "endpoints": [{"network": "n1", "ipv4": "10.1.0.3", "aliases": ["db"]}]},
                {"id": id(3), "name": "x3",
                 "endpoints": [{"network": "n2", "ipv4": "10.2.0.4", "aliases": ["db"]},
                               {"network": "n1", "ipv4": "10.1.0.4", "aliases": ["cache"]}]},
                {"id": id(4), "name": "x4", "upstreams": ["10.9.9.9"],
                 "endpoints": [{"network": "n3", "ipv4": "10.3.0.2", "aliases": ["lonely"]}]},
            ]
        });
        let st: State = serde_json::from_value(json).unwrap();
        let t = Tables::with_policy(Policy::Podman {
            search_domain: "dns.podman".into(),
        });
        t.replace_all(&st).unwrap();
        t
    }

    #[test]
    fn union_over_every_shared_network() {
        let t = tables();
        // x3 shares net1 with x2 and net2 with x1: db answers both networks' addresses.
        assert_eq!(
            sorted(answers(&ask(&t, 3, q("db", TYPE_A)).unwrap())),
            ["10.1.0.3", "10.2.0.4"]
        );
        // x2 is on net1 only.
        assert_eq!(answers(&ask(&t, 2, q("db", TYPE_A)).unwrap()), ["10.1.0.3"]);
        let m = ask(&t, 2, q("web", TYPE_A)).unwrap();
        assert_eq!(answers(&m), ["10.1.0.2"]);
        assert_eq!(m.answers[0].ttl, 0);
        assert_eq!(
            answers(&ask(&t, 3, q("WEB", TYPE_AAAA)).unwrap()),
            ["fd02::2"]
        );
        // Sandbox names and short IDs are no names under this policy; nor is name.network.
        assert!(ask(&t, 2, q("x1", TYPE_A)).is_none());
        assert!(ask(&t, 2, q("010101010101", TYPE_A)).is_none());
        assert!(ask(&t, 2, q("web.net1", TYPE_A)).is_none());
    }

    #[test]
    fn search_domain_stripped_and_never_forwarded() {
        let t = tables();
        assert_eq!(
            answers(&ask(&t, 2, q("web.dns.podman", TYPE_A)).unwrap()),
            ["10.1.0.2"]
        );
        let m = ask(&t, 2, q("nothere.dns.podman", TYPE_A)).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(ask(&t, 2, q("example.com", TYPE_A)).is_none());
        // A local name without the asked type: NODATA.
        is_nodata(&ask(&t, 2, q("db", TYPE_AAAA)).unwrap());
    }

    #[test]
    fn ptr_lists_every_name() {
        let t = tables();
        let m = ask(&t, 2, q("2.0.1.10.in-addr.arpa", TYPE_PTR)).unwrap();
        assert_eq!(answers(&m), ["web.", "w1."]);
        assert_eq!(m.answers[0].ttl, 0);
        // Not on a network of the asker: not ours to answer.
        assert!(ask(&t, 2, q("4.0.2.10.in-addr.arpa", TYPE_PTR)).is_none());
    }

    #[test]
    fn internal_only_never_forwards_and_upstreams_are_unioned() {
        let t = tables();
        let m = ask(&t, 4, q("example.com", TYPE_A)).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let snap = t.snapshot();
        let view = snap.view(t.view_of(&id(1)).unwrap()).unwrap();
        match &view.forwarding {
            crate::table::Forwarding::Upstreams(set) => assert_eq!(
                set.servers,
                [
                    "10.9.0.1:53".parse().unwrap(),
                    "10.9.0.2:53".parse().unwrap()
                ]
            ),
            other => panic!("{other:?}"),
        }
        // An unknown client on net2's listener sees net2's names only.
        let nv = snap.network_view("net2").unwrap();
        assert_eq!(nv.nets.len(), 1);
        assert!(
            snap.sandbox_by_source("10.7.7.7".parse().unwrap())
                .is_none()
        );
    }
}

#[test]
fn link_aliases_answer_only_in_the_linkers_view() {
    let t = tables();
    // b links c as "mydb" on Net2, and a (on net1 only) claims a link on Net2, which it is
    // not on; "db" (a real alias on net1) is shadowed for b by a link to c.
    let mut st = state();
    let link = |name: &str, net: &str| model::LinkAlias {
        name: name.into(),
        network: net.into(),
        ipv4: Some("10.2.0.4".parse().unwrap()),
        ipv6: Some("fd00::4".parse().unwrap()),
    };
    let b = st.sandboxes.iter_mut().find(|s| s.name == "b").unwrap();
    b.links = vec![link("MyDB", "n2"), link("db", "Net2")];
    let a = st.sandboxes.iter_mut().find(|s| s.name == "a").unwrap();
    a.links = vec![link("mydb", "n2")];
    st.validate().unwrap();
    t.replace_all(&st).unwrap();
    for name in ["mydb", "MYDB", "mydb.Net2"] {
        let m = ask(
            &t,
            2,
            Q {
                name,
                ..q("", TYPE_A)
            },
        )
        .unwrap();
        assert_eq!(answers(&m), ["10.2.0.4"], "{name}");
        assert_eq!(m.answers[0].ttl, 5, "the network's TTL");
    }
    let m = ask(&t, 2, q("mydb", TYPE_AAAA)).unwrap();
    assert_eq!(answers(&m), ["fd00::4"]);
    // The alias pass comes first: b's "db" is its link, not the net1 aliases.
    assert_eq!(answers(&ask(&t, 2, q("db", TYPE_A)).unwrap()), ["10.2.0.4"]);
    // Not on another network's qualification, nor for anyone else.
    assert!(ask(&t, 2, q("mydb.net1", TYPE_A)).is_none());
    assert!(ask(&t, 3, q("mydb", TYPE_A)).is_none());
    assert!(ask(&t, 1, q("mydb", TYPE_A)).is_none(), "a is not on Net2");
    assert_eq!(
        sorted(answers(&ask(&t, 1, q("db", TYPE_A)).unwrap())),
        ["10.1.0.2", "10.1.0.3"]
    );
    // The link goes with the model: gone after the next state without it.
    t.replace_all(&state()).unwrap();
    assert!(ask(&t, 2, q("mydb", TYPE_A)).is_none());
}
