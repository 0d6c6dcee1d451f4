//! Entry points for the fuzz targets (fuzz/) and their smoke test: the whole no-I/O request
//! path (parse, tables, engine, cache) on arbitrary bytes, over UDP and TCP framing, and
//! upstream replies through the relay (decode, check, render).

use std::sync::{Arc, OnceLock};

use crate::forward::DefaultUpstreams;
use crate::server::{Handled, Resolver, ResolverConfig};
use crate::table::{UpstreamSet, View};
use crate::wire;

const STATE: &str = r#"{
  "networks": [{"id": "n1", "name": "net1"}, {"id": "n2", "name": "inner", "internal": true}],
  "services": [{"id": "s1", "name": "web", "networks": [{"network": "n1", "vip": "10.0.0.100"}],
                "ports": [{"name": "http", "port": 80}]}],
  "sandboxes": [
    {"id": "0101010101010101010101010101010101010101010101010101010101010101", "name": "a",
     "endpoints": [{"network": "n1", "ipv4": "10.0.0.2", "ipv6": "fd00::2", "aliases": ["db"]}]},
    {"id": "0202020202020202020202020202020202020202020202020202020202020202", "name": "web.1.x",
     "task": {"service": "s1", "slot": 1}, "endpoints": [{"network": "n1", "ipv4": "10.0.0.3"}]},
    {"id": "0303030303030303030303030303030303030303030303030303030303030303", "name": "i",
     "endpoints": [{"network": "n2", "ipv4": "10.9.0.2"}]}
  ]
}"#;

struct Fixture {
    resolver: Arc<Resolver>,
    views: Vec<Arc<View>>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let resolver = Resolver::new(
            ResolverConfig::default(),
            DefaultUpstreams::Fixed(Arc::new(UpstreamSet::new(Vec::new()))),
        );
        let state: crate::State = serde_json::from_str(STATE).unwrap_or_default();
        let _ = resolver.tables.replace_all(&state);
        let snap = resolver.tables.snapshot();
        let mut views: Vec<Arc<View>> = state
            .sandboxes
            .iter()
            .filter_map(|s| resolver.tables.view_of(&s.id))
            .filter_map(|i| snap.view(i).cloned())
            .collect();
        views.push(snap.anonymous().clone());
        Fixture { resolver, views }
    })
}

/// Checks what every reply must satisfy.
fn check_reply(msg: &[u8], out: &[u8], limit: usize) {
    assert!(out.len() >= wire::HEADER_LEN, "reply shorter than a header");
    assert!(out.len() <= limit, "reply over the size limit");
    assert_eq!(out[0..2], msg[0..2], "reply ID differs");
    assert_ne!(out[2] & 0x80, 0, "reply without QR");
}

fn one(msg: &[u8], udp: bool) {
    let f = fixture();
    let snap = f.resolver.tables.snapshot();
    let mut out = Vec::new();
    for view in &f.views {
        if let Handled::Reply = f.resolver.handle(&snap, Some(view), msg, udp, &mut out) {
            let limit = match wire::parse_query(msg) {
                Ok(q) if udp => q.udp_limit(),
                _ => u16::MAX as usize,
            };
            check_reply(msg, &out, limit);
        }
    }
}

/// One UDP datagram through the request path.
pub fn udp(data: &[u8]) {
    one(data, true);
}

/// A TCP byte stream: 2-byte length-prefixed messages, each through the request path.
pub fn tcp(mut data: &[u8]) {
    while data.len() >= 2 {
        let len = u16::from_be_bytes([data[0], data[1]]) as usize;
        let Some(msg) = data.get(2..2 + len) else {
            return; // incomplete frame: the server would wait for more
        };
        one(msg, false);
        data = &data[2 + len..];
    }
}

/// What `upstream` takes replies to: `www.example` A, plain and with EDNS (DO, AD).
const UPSTREAM_QUERIES: [&[u8]; 2] = [
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x07example\x00\x00\x01\x00\x01",
    b"\x12\x34\x01\x20\x00\x01\x00\x00\x00\x00\x00\x01\x03www\x07example\x00\x00\x01\x00\x01\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00",
];

/// Arbitrary bytes as an upstream's reply to a fixed query: refused, or rendered for clients
/// of every size within their limits, as messages hickory-proto decodes.
pub fn upstream(data: &[u8]) {
    for qb in UPSTREAM_QUERIES {
        let Ok(q) = wire::parse_query(qb) else {
            return;
        };
        let id = u16::from_be_bytes([
            data.first().copied().unwrap_or(0),
            data.get(1).copied().unwrap_or(0),
        ]);
        let Ok(answer) = crate::relay::Answer::decode(data, id, &q) else {
            continue;
        };
        let mut out = Vec::new();
        for limit in [12 + 17, 512, 1232, 4096, u16::MAX as usize] {
            answer.render(&q, 1, limit, &mut out);
            if limit >= 512 {
                check_reply(qb, &out, limit);
                assert!(
                    hickory_proto::op::Message::from_vec(&out).is_ok(),
                    "a rendered answer does not decode"
                );
            }
        }
    }
}

/// A state file through parsing, validation and the tables.
pub fn state_json(data: &[u8]) {
    let Ok(state) = serde_json::from_slice::<crate::State>(data) else {
        return;
    };
    let tables = crate::Tables::new();
    if state.validate().is_ok() {
        // Valid states must load.
        assert!(tables.replace_all(&state).is_ok(), "valid state refused");
    } else {
        let _ = tables.replace_all(&state);
    }
}

#[cfg(test)]
mod tests {
    /// Every input the fuzzers kept (`fuzz/corpus/<target>/`, minimized after each long
    /// run) through the same entry points: what the fuzzers found interesting stays checked.
    #[test]
    fn kept_corpora() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        type Entry = fn(&[u8]);
        let targets: [(&str, Entry); 4] = [
            ("dns_udp", super::udp),
            ("dns_tcp", super::tcp),
            ("dns_upstream", super::upstream),
            ("state_json", super::state_json),
        ];
        for (name, run) in targets {
            let dir = root.join(name);
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if let Ok(data) = std::fs::read(e.path()) {
                    run(&data);
                }
            }
        }
    }

    /// A deterministic slice of what the fuzzers do, so CI runs the same checks.
    #[test]
    fn smoke() {
        let mut seed: u64 = 0x5d_e7;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let base: Vec<u8> = {
            let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
            m.extend_from_slice(b"\x02db\x00\x00\x01\x00\x01");
            m.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0]);
            m
        };
        for _ in 0..20_000 {
            let mut m = base.clone();
            for _ in 0..(next() % 4) {
                let i = (next() as usize) % m.len();
                m[i] = next() as u8;
            }
            m.truncate((next() as usize) % (m.len() + 1));
            super::udp(&m);
            super::upstream(&m);
            let mut framed = (m.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&m);
            super::tcp(&framed);
        }
        // Upstream replies: a good one (two answers, a CNAME pointing into the question, an OPT
        // with a COOKIE), mutated.
        let reply: Vec<u8> = {
            let mut m = vec![0x12, 0x34, 0x81, 0xa0, 0, 1, 0, 3, 0, 0, 0, 1];
            m.extend_from_slice(b"\x03www\x07example\x00\x00\x01\x00\x01");
            m.extend_from_slice(b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x05\x02cd\xc0\x10");
            for ip in [1u8, 2] {
                m.extend_from_slice(
                    b"\xc0\x29\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02",
                );
                m.push(ip);
            }
            m.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 12, 0, 10, 0, 8]);
            m.extend_from_slice(&[7; 8]);
            m
        };
        let decoded = crate::relay::Answer::decode(
            &reply,
            0x1234,
            &crate::wire::parse_query(super::UPSTREAM_QUERIES[0]).unwrap(),
        );
        assert!(decoded.is_ok(), "the smoke test's base reply: {decoded:?}");
        for _ in 0..20_000 {
            let mut m = reply.clone();
            for _ in 0..(next() % 4) {
                let i = (next() as usize) % m.len();
                m[i] = next() as u8;
            }
            m.truncate((next() as usize) % (m.len() + 1) + m.len() / 2);
            super::upstream(&m);
        }
        for n in 0..2000u64 {
            let len = (next() % 200) as usize;
            let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            super::udp(&junk);
            super::tcp(&junk);
            super::upstream(&junk);
            let _ = n;
        }
        super::state_json(super::STATE.as_bytes());
        super::state_json(b"{\"networks\": [{\"id\": \"x\", \"name\": \"-bad\"}]}");
    }
}
