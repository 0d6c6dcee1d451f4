//! The answer engine alone (no sockets): parse + lookup + encode per query, at 1k and 100k
//! names, for A, PTR, an unknown name and the full no-I/O request path. Also the cost of one
//! table update at 100k names (must not grow with the number of names).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sdnet_resolver::model::{Endpoint, Network, Sandbox, State};
use sdnet_resolver::table::{Change, Tables};
use sdnet_resolver::wire::{encode_name, parse_query};
use sdnet_resolver::{DefaultUpstreams, Resolver, ResolverConfig, engine};

/// Distinct in their first 12 digits (the short ID is a name too), as in tests/bench/dns.sh.
fn id(i: u32) -> String {
    format!("5d{:010x}{}", i + 1, "0".repeat(52))
}

fn sandbox(i: u32) -> Sandbox {
    Sandbox {
        id: id(i),
        name: format!("c{i}"),
        hostname: None,
        endpoints: vec![Endpoint {
            network: "bench".into(),
            ipv4: Some(std::net::Ipv4Addr::from(0x0a58_0000 + i)),
            ipv6: None,
            aliases: vec![],
        }],
        upstreams: vec![],
        task: None,
        links: Vec::new(),
    }
}

fn state(n: u32) -> State {
    State {
        networks: vec![Network {
            id: "bench".into(),
            name: "test".into(),
            internal: false,
            dns: true,
            upstreams: vec![],
            ttl: None,
            vip_ttl: None,
        }],
        sandboxes: (0..n).map(sandbox).collect(),
        services: vec![],
    }
}

fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    m.extend(encode_name(name).unwrap());
    m.extend(qtype.to_be_bytes());
    m.extend(1u16.to_be_bytes());
    m
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    for n in [1_000u32, 100_000] {
        let resolver = Resolver::new(
            ResolverConfig::default(),
            DefaultUpstreams::Fixed(std::sync::Arc::new(
                sdnet_resolver::table::UpstreamSet::new(vec![]),
            )),
        );
        resolver.tables.replace_all(&state(n)).unwrap();
        let snap = resolver.tables.snapshot();
        let view = snap
            .view(resolver.tables.view_of(&id(0)).unwrap())
            .unwrap()
            .clone();
        let a = query(&format!("c{}.test", n / 2), 1);
        let ip = 0x0a58_0000 + n / 2;
        let ptr = query(
            &format!(
                "{}.{}.{}.{}.in-addr.arpa",
                ip & 255,
                (ip >> 8) & 255,
                (ip >> 16) & 255,
                ip >> 24
            ),
            12,
        );
        let nx = query("nx1.test", 1);
        let mut out = Vec::with_capacity(512);
        for (label, msg) in [("A", &a), ("PTR", &ptr), ("unknown", &nx)] {
            g.bench_with_input(BenchmarkId::new(label, n), msg, |b, msg| {
                b.iter(|| {
                    let q = parse_query(black_box(msg)).unwrap();
                    black_box(engine::answer(&snap, &view, &q, 512, 0, &mut out))
                })
            });
        }
        g.bench_with_input(BenchmarkId::new("request-path-A", n), &a, |b, msg| {
            b.iter(|| {
                let snap = resolver.tables.snapshot();
                black_box(resolver.handle(&snap, Some(&view), black_box(msg), true, &mut out));
            })
        });
        // One sandbox joins and leaves: O(its names), whatever n is.
        let tables = Tables::new();
        tables.replace_all(&state(n)).unwrap();
        let extra = sandbox(n + 1);
        g.bench_function(BenchmarkId::new("update", n), |b| {
            b.iter(|| {
                tables
                    .apply([Change::UpsertSandbox(extra.clone())])
                    .unwrap();
                tables
                    .apply([Change::RemoveSandbox(extra.id.clone())])
                    .unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
