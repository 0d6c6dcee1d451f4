//! The HTTP/JSON API on the daemon's unix socket: routes translate between HTTP and the
//! handlers; errors become `{"error": "..."}` with a fitting status code.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hickory_proto::op::{Message, MessageType, OpCode, Query as DnsQ};
use hickory_proto::rr::{Name, RecordType};
use serde::Deserialize;

use crate::api::*;
use crate::daemon::Node;
use crate::daemon::api::guard::{self, Body};
use crate::daemon::api::{
    ApiError, lifecycle, links, networks, nodes, sandboxes, services, validate,
};

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

type D = State<Arc<Node>>;
type R<T> = Result<Json<T>, ApiError>;

pub fn router(d: Arc<Node>) -> Router {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/networks", get(list_networks).post(create_network))
        .route("/v1/networks/prune", post(prune_networks))
        .route("/v1/networks/{name}", get(network).delete(remove_network))
        .route("/v1/networks/{name}/connect", post(connect))
        .route("/v1/networks/{name}/disconnect", post(disconnect))
        .route("/v1/sandboxes", get(list_sandboxes).post(create_sandbox))
        .route("/v1/sandboxes/{name}", get(sandbox).delete(remove_sandbox))
        .route(
            "/v1/sandboxes/{name}/links/{alias}",
            axum::routing::delete(remove_link),
        )
        .route("/v1/sandboxes/{name}/exec", get(exec_info))
        .route("/v1/sandboxes/{name}/logs", get(logs))
        .route("/v1/sandboxes/{name}/start", post(start_sandbox))
        .route("/v1/sandboxes/{name}/stop", post(stop_sandbox))
        .route("/v1/sandboxes/{name}/restart", post(restart_sandbox))
        .route("/v1/sandboxes/{name}/kill", post(kill_sandbox))
        .route("/v1/sandboxes/{name}/pause", post(pause_sandbox))
        .route("/v1/sandboxes/{name}/unpause", post(unpause_sandbox))
        .route("/v1/sandboxes/{name}/wait", post(wait_sandbox))
        .route("/v1/events", get(events))
        .route("/v1/services", get(list_services).post(create_service))
        .route("/v1/services/{name}", get(service).delete(remove_service))
        .route("/v1/services/{name}/update", post(update_service))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{name}", get(node_info).delete(remove_node))
        .route("/v1/dns/query", post(dns_query))
        .layer(DefaultBodyLimit::max(guard::MAX_BODY))
        .layer(axum::middleware::from_fn(guard::check_length))
        .layer(axum::middleware::from_fn(guard::check_peer))
        .with_state(d)
}

async fn start_sandbox(State(d): D, Path(name): Path<String>) -> R<SandboxInfo> {
    Ok(Json(lifecycle::start(&d, &name).await?))
}

async fn stop_sandbox(
    State(d): D,
    Path(name): Path<String>,
    Body(req): Body<StopRequest>,
) -> R<SandboxInfo> {
    Ok(Json(lifecycle::stop(&d, &name, &req).await?))
}

async fn restart_sandbox(
    State(d): D,
    Path(name): Path<String>,
    Body(req): Body<StopRequest>,
) -> R<SandboxInfo> {
    Ok(Json(lifecycle::restart(&d, &name, &req).await?))
}

async fn kill_sandbox(
    State(d): D,
    Path(name): Path<String>,
    Body(req): Body<KillRequest>,
) -> R<SandboxInfo> {
    Ok(Json(lifecycle::kill(&d, &name, &req).await?))
}

async fn pause_sandbox(State(d): D, Path(name): Path<String>) -> R<SandboxInfo> {
    Ok(Json(lifecycle::pause(&d, &name, true).await?))
}

async fn unpause_sandbox(State(d): D, Path(name): Path<String>) -> R<SandboxInfo> {
    Ok(Json(lifecycle::pause(&d, &name, false).await?))
}

async fn wait_sandbox(State(d): D, Path(name): Path<String>) -> R<WaitResult> {
    Ok(Json(lifecycle::wait(&d, &name).await?))
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<u64>,
    until: Option<u64>,
}

/// `GET /v1/events`: newline-delimited JSON, streamed (chunked) until `until`, or until the
/// client goes away.
async fn events(State(d): D, Query(q): Query<EventsQuery>) -> Response {
    let (past, rx) = d.cache.events.subscribe(q.since);
    let until = q.until;
    let line = |e: &crate::api::Event| {
        let mut v = serde_json::to_vec(e).unwrap_or_default();
        v.push(b'\n');
        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(v))
    };
    let past: Vec<_> = past
        .iter()
        .filter(|e| until.is_none_or(|u| e.time_nano <= u))
        .map(|e| line(e))
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_nanos() as u64)
        .unwrap_or(0);
    let live = futures::stream::unfold(rx, move |mut rx| async move {
        let left = match until {
            Some(u) if u <= now => return None,
            Some(u) => std::time::Duration::from_nanos(u - now),
            None => std::time::Duration::from_secs(u64::from(u32::MAX)),
        };
        let deadline = tokio::time::Instant::now() + left;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Ok(e)) if until.is_none_or(|u| e.time_nano <= u) => {
                    return Some((line(&e), rx));
                }
                Ok(Ok(_)) | Err(_) => return None,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
            }
        }
    });
    let stream = futures::StreamExt::chain(futures::stream::iter(past), live);
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

async fn info(State(d): D) -> R<DaemonInfo> {
    let c = d.cache.read();
    Ok(Json(DaemonInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        state_dir: d.cfg.state_dir.clone(),
        run_dir: d.cfg.run_dir.clone(),
        networks: c.networks.len(),
        sandboxes: c.sandboxes.len(),
    }))
}

async fn list_networks(State(d): D) -> R<Vec<NetworkInfo>> {
    Ok(Json(networks::list(&d)))
}

async fn create_network(State(d): D, Body(req): Body<NetworkCreate>) -> R<NetworkInfo> {
    validate::network_create(&req)?;
    Ok(Json(networks::create(&d, req).await?))
}

async fn network(State(d): D, Path(name): Path<String>) -> R<NetworkInfo> {
    Ok(Json(networks::inspect(&d, &name)?))
}

async fn remove_network(State(d): D, Path(name): Path<String>) -> R<Removed> {
    Ok(Json(Removed {
        removed: vec![networks::remove(&d, &name).await?],
    }))
}

async fn prune_networks(State(d): D) -> R<Removed> {
    Ok(Json(Removed {
        removed: networks::prune(&d).await?,
    }))
}

async fn connect(
    State(d): D,
    Path(name): Path<String>,
    Body(req): Body<ConnectRequest>,
) -> R<SandboxInfo> {
    validate::connect(&name, &req)?;
    Ok(Json(networks::connect(&d, &name, req).await?))
}

async fn disconnect(
    State(d): D,
    Path(name): Path<String>,
    Body(req): Body<DisconnectRequest>,
) -> R<SandboxInfo> {
    validate::disconnect(&name, &req)?;
    Ok(Json(networks::disconnect(&d, &name, req).await?))
}

#[derive(Deserialize)]
struct AllQuery {
    #[serde(default)]
    all: bool,
}

async fn list_nodes(State(d): D) -> R<Vec<NodeInfo>> {
    Ok(Json(nodes::list(&d)?))
}

async fn node_info(State(d): D, Path(name): Path<String>) -> R<NodeInfo> {
    Ok(Json(nodes::inspect(&d, &name)?))
}

async fn remove_node(State(d): D, Path(name): Path<String>) -> R<Removed> {
    Ok(Json(Removed {
        removed: vec![nodes::remove(&d, &name).await?],
    }))
}

async fn list_sandboxes(State(d): D, Query(q): Query<AllQuery>) -> R<Vec<SandboxInfo>> {
    Ok(Json(sandboxes::list(&d, q.all)))
}

async fn create_sandbox(State(d): D, Body(req): Body<SandboxCreate>) -> R<SandboxInfo> {
    validate::sandbox_create(&req)?;
    let id = sandboxes::create(&d, req, None).await?;
    Ok(Json(sandboxes::inspect(&d, &id)?))
}

async fn sandbox(State(d): D, Path(name): Path<String>) -> R<SandboxInfo> {
    Ok(Json(sandboxes::inspect(&d, &name)?))
}

#[derive(Deserialize)]
struct ForceQuery {
    #[serde(default)]
    force: bool,
}

async fn remove_sandbox(
    State(d): D,
    Path(name): Path<String>,
    Query(q): Query<ForceQuery>,
) -> R<Removed> {
    Ok(Json(Removed {
        removed: vec![sandboxes::remove(&d, &name, q.force).await?],
    }))
}

async fn remove_link(State(d): D, Path((name, alias)): Path<(String, String)>) -> R<Removed> {
    Ok(Json(Removed {
        removed: vec![links::remove(&d, &name, &alias).await?],
    }))
}

async fn list_services(State(d): D) -> R<Vec<ServiceInfo>> {
    Ok(Json(services::list(&d)))
}

async fn create_service(State(d): D, Body(req): Body<ServiceCreate>) -> R<ServiceInfo> {
    validate::service_create(&req)?;
    Ok(Json(services::create(&d, req).await?))
}

async fn service(State(d): D, Path(name): Path<String>) -> R<ServiceInfo> {
    Ok(Json(services::inspect(&d, &name)?))
}

async fn remove_service(State(d): D, Path(name): Path<String>) -> R<Removed> {
    Ok(Json(Removed {
        removed: vec![services::remove(&d, &name).await?],
    }))
}

async fn update_service(
    State(d): D,
    Path(name): Path<String>,
    Body(u): Body<ServiceUpdate>,
) -> R<ServiceInfo> {
    validate::service_update(&u)?;
    Ok(Json(services::update(&d, &name, u).await?))
}

async fn exec_info(State(d): D, Path(name): Path<String>) -> R<ExecInfo> {
    Ok(Json(sandboxes::exec_info(&d, &name)?))
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    offset: u64,
}

/// Output from `offset` on (at most 1 MiB per call); the client polls to follow.
async fn logs(State(d): D, Path(name): Path<String>, Query(q): Query<LogQuery>) -> R<LogChunk> {
    let (path, running) = sandboxes::log_file(&d, &name)?;
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "reading {}: {e}",
                path.display()
            )));
        }
    };
    let start = (q.offset as usize).min(bytes.len());
    let end = (start + (1 << 20)).min(bytes.len());
    Ok(Json(LogChunk {
        data: String::from_utf8_lossy(&bytes[start..end]).into_owned(),
        offset: end as u64,
        running,
    }))
}

/// Asks the resolver exactly as the sandbox's listener would, and prints the reply like dig.
async fn dns_query(State(d): D, Body(q): Body<DnsQuery>) -> R<DnsAnswer> {
    validate::dns_query(&q)?;
    let name = Name::from_ascii(q.name.trim_end_matches('.').to_string() + ".")
        .map_err(|e| ApiError::BadRequest(format!("invalid name {:?}: {e}", q.name)))?;
    let rtype: RecordType = q
        .qtype
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("unknown record type {:?}", q.qtype)))?;
    let mut msg = Message::new(0x5d5d, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(DnsQ::query(name, rtype));
    let bytes = msg
        .to_vec()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("encoding: {e}")))?;
    let view = view_for(&d, q.from.as_deref())?;
    let resp = d
        .resolver
        .resolve_packet(view.as_ref(), &bytes, !q.tcp)
        .await
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the resolver gave no reply")))?;
    let m = Message::from_vec(&resp)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("decoding reply: {e}")))?;
    Ok(Json(DnsAnswer {
        text: dig_text(&m, q.from.as_deref()),
        rcode: rcode_name(u16::from(m.metadata.response_code)),
        wire_hex: resp.iter().map(|b| format!("{b:02x}")).collect(),
    }))
}

/// The view a `dns query --from` asks with.
fn view_for(
    d: &Node,
    from: Option<&str>,
) -> Result<Option<Arc<sdnet_resolver::table::View>>, ApiError> {
    let snap = d.resolver.tables.snapshot();
    match from {
        None => Ok(Some(snap.anonymous().clone())),
        Some(r) => {
            let c = d.cache.read();
            let id = c
                .sandbox_id(r)
                .map_err(|e| crate::daemon::api::lookup_err("sandbox", r, e))?;
            let idx = d.resolver.tables.view_of(id);
            Ok(idx.and_then(|i| snap.view(i).cloned()))
        }
    }
}

fn dig_text(m: &Message, from: Option<&str>) -> String {
    use std::fmt::Write;
    let md = &m.metadata;
    let mut s = String::new();
    let _ = writeln!(
        s,
        ";; ->>HEADER<<- opcode: QUERY, status: {}, id: {}",
        rcode_name(u16::from(md.response_code)),
        md.id
    );
    let flags: Vec<&str> = [
        (true, "qr"),
        (md.authoritative, "aa"),
        (md.truncation, "tc"),
        (md.recursion_desired, "rd"),
        (md.recursion_available, "ra"),
        (md.authentic_data, "ad"),
        (md.checking_disabled, "cd"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, f)| *f)
    .collect();
    let _ = writeln!(
        s,
        ";; flags: {}; QUERY: {}, ANSWER: {}, AUTHORITY: {}, ADDITIONAL: {}",
        flags.join(" "),
        m.queries.len(),
        m.answers.len(),
        m.authorities.len(),
        m.additionals.len() + usize::from(m.edns.is_some())
    );
    let _ = writeln!(s, ";; asked as: {}", from.unwrap_or("(no sandbox)"));
    let _ = writeln!(s, "\n;; QUESTION SECTION:");
    for q in &m.queries {
        let _ = writeln!(s, ";{}\t\tIN\t{}", q.name(), q.query_type());
    }
    for (title, recs) in [
        ("ANSWER", &m.answers),
        ("AUTHORITY", &m.authorities),
        ("ADDITIONAL", &m.additionals),
    ] {
        if recs.is_empty() {
            continue;
        }
        let _ = writeln!(s, "\n;; {title} SECTION:");
        for r in recs {
            let _ = writeln!(
                s,
                "{}\t{}\tIN\t{}\t{}",
                r.name,
                r.ttl,
                r.record_type(),
                r.data
            );
        }
    }
    s
}

/// dig's names for response codes.
fn rcode_name(code: u16) -> String {
    match code {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        16 => "BADVERS".into(),
        n => format!("RCODE{n}"),
    }
}
