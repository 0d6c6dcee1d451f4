//! `--metrics-addr`: Prometheus (OpenMetrics) text on `GET /metrics`, encoded by the
//! `prometheus-client` crate. The resolver counts its request path in its own atomics
//! (`sdnet_resolver::stats`, no lock per query); a collector reads them, the state cache's
//! object counts, nftables transaction times and the reconciler's figures at scrape time.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sdnet_resolver::stats::Stats;
use tracing::{info, warn};

use crate::daemon::Node;

/// What the daemon itself counts (the resolver counts the rest).
#[derive(Debug)]
pub struct Metrics {
    pub reconcile_runs: Counter,
    pub reconcile_seconds: Histogram,
    /// Host zone (`--host-dns`) rebuilds: one per reconcile round that changed it.
    pub hostdns_rebuild_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconcile_runs: Counter::default(),
            // 1 ms to ~33 s.
            reconcile_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            // 50 µs to ~3.3 s.
            hostdns_rebuild_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 17)),
        }
    }
}

impl Metrics {
    /// One reconcile round done in `took`.
    pub fn reconciled(&self, took: Duration) {
        self.reconcile_runs.inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }
}

/// Reads the resolver's counters and the desired state's sizes at scrape time.
#[derive(Debug)]
struct NodeCollector(Weak<Node>);

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let Some(node) = self.0.upgrade() else {
            return Ok(());
        };
        let s: &Stats = &node.resolver.forwarder.stats;
        {
            let mut m = e.encode_descriptor(
                "sdnet_dns_queries",
                "DNS queries answered, by query type, response code and answer source",
                None,
                MetricType::Counter,
            )?;
            for (qtype, rcode, source, n) in s.queries() {
                let labels = [("qtype", qtype), ("rcode", rcode), ("source", source)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut e,
            "sdnet_dns_forwards",
            "upstream exchanges started (one per server tried)",
            Stats::get(&s.forwards),
        )?;
        counter(
            &mut e,
            "sdnet_dns_upstream_failures",
            "upstream exchanges that failed (timeout, error, bad reply, SERVFAIL, REFUSED)",
            Stats::get(&s.upstream_failures),
        )?;
        counter(
            &mut e,
            "sdnet_dns_cache_hits",
            "forwardable queries answered from the cache",
            Stats::get(&s.cache_hits),
        )?;
        counter(
            &mut e,
            "sdnet_dns_cache_misses",
            "forwardable queries not in the cache",
            Stats::get(&s.cache_misses),
        )?;
        gauge(
            &mut e,
            "sdnet_dns_cache_entries",
            "answers held by the forward cache",
            node.resolver.forwarder.cache().len() as i64,
        )?;
        gauge(
            &mut e,
            "sdnet_dns_cache_bytes",
            "bytes held by the forward cache's answers (bounded, like its entries)",
            node.resolver.forwarder.cache().bytes() as i64,
        )?;
        gauge(
            &mut e,
            "sdnet_dns_inflight",
            "queries waiting for upstream servers",
            s.inflight.load(std::sync::atomic::Ordering::Relaxed),
        )?;
        {
            let (sum, count, buckets) = s.latency();
            let mut m = e.encode_descriptor(
                "sdnet_dns_forward_duration_seconds",
                "time from a forwarded query to the reply sent to the client",
                None,
                MetricType::Histogram,
            )?;
            m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        counter(
            &mut e,
            "sdnet_dns_tcp_connections",
            "TCP connections accepted by the resolver",
            Stats::get(&s.tcp_accepted),
        )?;
        gauge(
            &mut e,
            "sdnet_dns_tcp_open",
            "TCP connections open now",
            s.tcp_open.load(std::sync::atomic::Ordering::Relaxed),
        )?;
        {
            let t = sdnet_netstack::nft::Nft::transaction_times();
            let mut m = e.encode_descriptor(
                "sdnet_nft_transaction_duration_seconds",
                "time one nftables transaction took (firewall, DNS redirect and VIP tables)",
                None,
                MetricType::Histogram,
            )?;
            m.encode_histogram::<NoLabelSet>(t.sum, t.count, &t.buckets, None)?;
            counter(
                &mut e,
                "sdnet_nft_transaction_failures",
                "nftables transactions refused (nothing of them applied)",
                t.failed,
            )?;
        }
        let d = node.cache.read();
        gauge(
            &mut e,
            "sdnet_sandboxes",
            "sandboxes in the desired state",
            d.sandboxes.len() as i64,
        )?;
        gauge(
            &mut e,
            "sdnet_networks",
            "networks in the desired state",
            d.networks.len() as i64,
        )?;
        gauge(
            &mut e,
            "sdnet_services",
            "services in the desired state",
            d.services.len() as i64,
        )?;
        Ok(())
    }
}

/// The registry a scrape encodes.
pub fn registry(node: &Arc<Node>) -> Registry {
    let mut r = Registry::default();
    r.register(
        "sdnet_reconcile_runs",
        "reconcile rounds run",
        node.metrics.reconcile_runs.clone(),
    );
    r.register(
        "sdnet_reconcile_duration_seconds",
        "time one reconcile round took",
        node.metrics.reconcile_seconds.clone(),
    );
    r.register(
        "sdnet_hostdns_rebuild_duration_seconds",
        "time one host zone (--host-dns) update took, from the changes to the zones served",
        node.metrics.hostdns_rebuild_seconds.clone(),
    );
    r.register_collector(Box::new(NodeCollector(Arc::downgrade(node))));
    r
}

async fn scrape(State(reg): State<Arc<Registry>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &reg) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Binds `addr` now (a bad address fails the start) and serves scrapes in the background.
pub async fn serve(node: &Arc<Node>, addr: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(registry(node)));
    info!(%addr, "metrics listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!("metrics server: {e}");
        }
    });
    Ok(())
}
