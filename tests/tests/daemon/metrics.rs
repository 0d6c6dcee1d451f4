//! `--metrics-addr`: scraped with curl inside the daemon's namespace before and after a known
//! set of queries from a sandbox (UDP and TCP); every counter moved by exactly what was asked.

use std::collections::BTreeMap;

use sdnet_tests::{Daemon, Dnsmasq};

/// One scrape: `name{labels}` → value.
fn scrape(d: &Daemon) -> BTreeMap<String, f64> {
    let out = d.ns.run(
        "curl",
        &["-sf", "--max-time", "10", "http://127.0.0.1:9153/metrics"],
    );
    assert!(out.status.success(), "scrape failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn q(qtype: &str, rcode: &str, source: &str) -> String {
    format!("sdnet_dns_queries_total{{qtype=\"{qtype}\",rcode=\"{rcode}\",source=\"{source}\"}}")
}

#[test]
fn metrics_count_queries_forwards_cache_and_reconciles() {
    let d = Daemon::start_with("met", &["--metrics-addr", "127.0.0.1:9153"]);
    let up = Dnsmasq::start(
        &d.ns,
        d.dir.path(),
        "127.0.0.53",
        53,
        &[
            "--host-record=ext.example.test,198.51.100.7",
            "--local=/example.test/",
            "--local-ttl=300",
        ],
    );
    d.ok(&["network", "create", "--subnet", "10.86.0.0/24", "n"]);
    d.ok(&["run", "-d", "--name", "a", "--network", "n"]);
    d.ok(&["run", "-d", "--name", "b", "--network", "n"]);
    let b_ip = d.ip("b", "n");
    let before = scrape(&d);

    d.ok(&["run", "-d", "--name", "c", "--network", "n"]);
    for _ in 0..4 {
        assert_eq!(d.dig("a", &["b"]).data("A"), [b_ip.clone()]);
    }
    assert_eq!(d.dig("a", &["+tcp", "b"]).data("A"), [b_ip.clone()]);
    for _ in 0..2 {
        assert_eq!(d.dig("a", &["b", "AAAA"]).status, "NOERROR");
    }
    assert_eq!(d.dig("a", &["-x", &b_ip]).status, "NOERROR");
    // Upstream once, then twice from the cache.
    for _ in 0..3 {
        assert_eq!(
            d.dig("a", &["ext.example.test"]).data("A"),
            ["198.51.100.7"]
        );
    }
    assert_eq!(d.dig("a", &["nope.example.test"]).status, "NXDOMAIN");
    // The upstream gone: one failed exchange, SERVFAIL.
    d.ns.stop(up.pid);
    assert_eq!(d.dig("a", &["down.example.test"]).status, "SERVFAIL");
    let after = scrape(&d);

    let moved =
        |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let want = [
        (q("A", "NOERROR", "local"), 5.0),
        (q("AAAA", "NOERROR", "local"), 2.0),
        (q("PTR", "NOERROR", "local"), 1.0),
        (q("A", "NOERROR", "upstream"), 1.0),
        (q("A", "NOERROR", "cache"), 2.0),
        (q("A", "NXDOMAIN", "upstream"), 1.0),
        (q("A", "SERVFAIL", "upstream"), 1.0),
        ("sdnet_dns_cache_hits_total".into(), 2.0),
        ("sdnet_dns_cache_misses_total".into(), 3.0),
        ("sdnet_dns_forwards_total".into(), 3.0),
        ("sdnet_dns_upstream_failures_total".into(), 1.0),
        ("sdnet_dns_forward_duration_seconds_count".into(), 3.0),
        ("sdnet_dns_tcp_connections_total".into(), 1.0),
        ("sdnet_sandboxes".into(), 1.0),
        ("sdnet_networks".into(), 0.0),
    ];
    let mut wrong = Vec::new();
    for (k, n) in &want {
        if moved(k) != *n {
            wrong.push(format!("{k}: moved {} (want {n})", moved(k)));
        }
    }
    // Nothing else was asked.
    let total = |m: &BTreeMap<String, f64>| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with("sdnet_dns_queries_total{"))
            .map(|(_, v)| v)
            .sum()
    };
    if total(&after) - total(&before) != 13.0 {
        wrong.push(format!("queries moved {}", total(&after) - total(&before)));
    }
    assert!(wrong.is_empty(), "{}\n{after:#?}", wrong.join("\n"));
    assert_eq!(after["sdnet_sandboxes"], 3.0);
    assert_eq!(after["sdnet_dns_inflight"], 0.0);
    assert_eq!(after["sdnet_dns_tcp_open"], 0.0);
    let le_inf = "sdnet_dns_forward_duration_seconds_bucket{le=\"+Inf\"}";
    assert_eq!(moved(le_inf), 3.0, "{after:#?}");
    assert!(after["sdnet_dns_cache_entries"] >= 1.0, "{after:#?}");
    // The reconciler ran for `c`, and each round has its duration.
    let runs = moved("sdnet_reconcile_runs_total");
    assert!(runs >= 1.0, "{after:#?}");
    assert_eq!(moved("sdnet_reconcile_duration_seconds_count"), runs);
    // Realizing `c` took nftables transactions (its DNS redirect table at least).
    let txns = moved("sdnet_nft_transaction_duration_seconds_count");
    assert!(txns >= 1.0, "{after:#?}");
    let nft_inf = "sdnet_nft_transaction_duration_seconds_bucket{le=\"+Inf\"}";
    assert_eq!(moved(nft_inf), txns);
    assert_eq!(moved("sdnet_nft_transaction_failures_total"), 0.0);
    d.ok(&["rm", "-f", "a", "b", "c"]);
}
