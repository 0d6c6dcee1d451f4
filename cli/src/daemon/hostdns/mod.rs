//! The host zone (`--host-dns`): an authoritative zone (`sdnet.` by default) served on
//! hickory-server to the host and to other DNS servers, with the reverse zones of the served
//! networks' subnets. It is fed the very changes the name tables get (`Feed`), rebuilt and
//! swapped in by the reconciler in the round that changes the tables, before the round's
//! revision is published as applied; every change raises the serial and NOTIFYs the
//! configured secondaries. Only the changed objects' records are rewritten (`zones.rs`). The
//! in-sandbox resolver's hot path is not involved.

pub mod build;
mod notify;
mod zone;
mod zones;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use arc_swap::ArcSwap;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{MessageType, OpCode};
use hickory_server::proto::rr::{LowerName, Name, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{Catalog, ZoneHandler};
use ipnet::IpNet;
use tokio::sync::watch;
use tracing::{info, warn};

pub use build::{Feed, NetExtra};

/// `sdctl daemon --host-dns…`.
#[derive(Clone, Debug)]
pub struct HostDnsConfig {
    /// Where the last serial is kept (in the state dir), so it rises across restarts even
    /// when changes ran it ahead of the clock.
    pub serial_file: std::path::PathBuf,
    pub listen: SocketAddr,
    pub origin: Name,
    pub notify: Vec<SocketAddr>,
    pub allow_transfer: Vec<IpNet>,
}

/// `ADDR[:PORT]` (port 53 by default).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("invalid address {s:?}: expected IP or IP:PORT ([IPv6]:PORT)"))
}

/// A zone name, absolute (`sdnet` and `sdnet.` are the same zone).
pub fn parse_domain(s: &str) -> Result<Name, String> {
    let mut n = Name::from_ascii(s).map_err(|e| format!("invalid domain {s:?}: {e}"))?;
    if n.is_root() {
        return Err("the host zone cannot be the root".into());
    }
    n.set_fqdn(true);
    Ok(n)
}

/// The zones served at any moment: the catalog and, for transfers, the zones themselves.
#[derive(Default)]
struct Served {
    catalog: Catalog,
    zones: Vec<Arc<zone::Zone>>,
}

/// What the server's tasks read; the reconciler swaps it.
struct Front(Arc<ArcSwap<Served>>);

#[async_trait::async_trait]
impl RequestHandler for Front {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let served = self.0.load_full();
        // AXFR over TCP is streamed by the zone, and so is IXFR: there are no increments to
        // send, and a whole zone is a valid IXFR reply (RFC 1995 §4). Everything else goes
        // through the catalog.
        if request.protocol() == Protocol::Tcp
            && request.metadata.message_type == MessageType::Query
            && request.metadata.op_code == OpCode::Query
            && let Ok(info) = request.request_info()
            && matches!(info.query.query_type(), RecordType::AXFR | RecordType::IXFR)
            && let Some(z) = served
                .zones
                .iter()
                .find(|z| z.origin() == info.query.name())
        {
            return z.transfer(request, response_handle).await;
        }
        served
            .catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

pub struct HostDns {
    /// The writer's side (the reconciler is the only caller of `publish`).
    zones: Mutex<zones::Zones>,
    allow: Arc<[IpNet]>,
    served: Arc<ArcSwap<Served>>,
    serial: AtomicU32,
    serial_file: std::path::PathBuf,
    notices: watch::Sender<notify::Notice>,
}

impl HostDns {
    /// Binds the listeners (UDP and TCP) and starts serving an empty zone.
    pub async fn start(cfg: HostDnsConfig) -> Result<Arc<HostDns>> {
        let udp = bind_udp(cfg.listen)
            .with_context(|| format!("--host-dns: binding UDP {}", cfg.listen))?;
        let tcp = bind_tcp(cfg.listen)
            .with_context(|| format!("--host-dns: binding TCP {}", cfg.listen))?;
        let apex = build::Apex {
            origin: cfg.origin.clone(),
            ns_addr: Some(cfg.listen.ip()).filter(|ip| !ip.is_unspecified()),
        };
        let served = Arc::new(ArcSwap::from_pointee(Served::default()));
        let (notices, rx) = watch::channel(notify::Notice::default());
        let source = Some(cfg.listen.ip()).filter(|ip| !ip.is_unspecified());
        tokio::spawn(notify::run(cfg.notify.clone(), source, rx));
        let hd = Arc::new(HostDns {
            zones: Mutex::new(zones::Zones::new(apex)),
            allow: cfg.allow_transfer.clone().into(),
            served: served.clone(),
            serial: AtomicU32::new(saved_serial(&cfg.serial_file)),
            serial_file: cfg.serial_file.clone(),
            notices,
        });
        hd.publish(&mut Feed::default());
        let mut server = Server::new(Front(served));
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(10), 64 * 1024);
        tokio::spawn(async move {
            if let Err(e) = server.block_until_done().await {
                warn!("host DNS server: {e}");
            }
        });
        info!(listen = %cfg.listen, zone = %cfg.origin, "host zone served");
        Ok(hd)
    }

    /// Applies what changed in `feed` to the zones and swaps them in under a new serial.
    pub fn publish(&self, feed: &mut Feed) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        // Increases with every change, and across restarts (it starts at the clock).
        let serial = match self
            .serial
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                Some(s.wrapping_add(1).max(now))
            }) {
            Ok(prev) | Err(prev) => prev.wrapping_add(1).max(now),
        };
        // Page cache only (no fsync): it must survive the daemon, not the machine.
        if let Err(e) = std::fs::write(&self.serial_file, serial.to_string()) {
            warn!(file = %self.serial_file.display(), "keeping the host zone's serial: {e}");
        }
        let zones = {
            let mut w = self.zones.lock().unwrap_or_else(|p| p.into_inner());
            w.update(feed);
            w.publish(serial)
        };
        let mut next = Served::default();
        let mut notice = notify::Notice {
            serial,
            zones: Vec::new(),
        };
        for z in zones {
            let origin: LowerName = z.origin.clone();
            if let Some(r) = z.soa.records_without_rrsigs().next() {
                notice.zones.push(r.clone());
            }
            let z = Arc::new(zone::Zone {
                data: z,
                allow: self.allow.clone(),
            });
            next.zones.push(z.clone());
            next.catalog.upsert(origin, vec![z as Arc<dyn ZoneHandler>]);
        }
        self.served.store(Arc::new(next));
        self.notices.send_replace(notice);
    }
}

fn saved_serial(path: &std::path::Path) -> u32 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// UDP socket at `addr`; an IPv4 address need not exist yet (the default bridge's gateway
/// appears when the reconciler makes the bridge), so it is bound with IP_FREEBIND.
fn bind_udp(addr: SocketAddr) -> Result<tokio::net::UdpSocket> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, setsockopt, socket, sockopt,
    };
    let fam = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        fam,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    if addr.is_ipv4() {
        setsockopt(&fd, sockopt::IpFreebind, &true)?;
    }
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    Ok(tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(
        fd,
    ))?)
}

fn bind_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let s = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    s.set_reuseaddr(true)?;
    if addr.is_ipv4() {
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::IpFreebind, &true)?;
    }
    s.bind(addr)?;
    Ok(s.listen(256)?)
}

/// Loopback: the default of `--host-dns-allow-transfer`.
pub fn loopback() -> Vec<IpNet> {
    vec![
        IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).unwrap_or_default(),
        IpNet::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128).unwrap_or_default(),
    ]
}

/// Checks the flags' combination: the other host-DNS flags need `--host-dns`.
pub fn config(
    state_dir: &std::path::Path,
    listen: Option<SocketAddr>,
    domain: &str,
    notify: Vec<SocketAddr>,
    allow: Vec<IpNet>,
) -> Result<Option<HostDnsConfig>> {
    let Some(listen) = listen else {
        if !notify.is_empty() || !allow.is_empty() {
            return Err(anyhow!(
                "--host-dns-notify and --host-dns-allow-transfer need --host-dns ADDR[:PORT]"
            ));
        }
        return Ok(None);
    };
    Ok(Some(HostDnsConfig {
        serial_file: state_dir.join("host-dns.serial"),
        listen,
        origin: parse_domain(domain).map_err(|e| anyhow!("--host-dns-domain: {e}"))?,
        notify,
        allow_transfer: if allow.is_empty() { loopback() } else { allow },
    }))
}
