//! NOTIFY (RFC 1996) to the configured secondaries when the zones change: one message per zone
//! and secondary, with the new SOA, repeated until answered (at most three tries a second
//! apart). Changes that come while a round of notifies is under way coalesce into one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Record, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, warn};

const TRIES: usize = 3;
const WAIT: Duration = Duration::from_secs(1);

/// The zones as of a serial: each zone's SOA record.
#[derive(Clone, Debug, Default)]
pub struct Notice {
    pub serial: u32,
    pub zones: Vec<Record>,
}

pub async fn run(
    targets: Vec<SocketAddr>,
    source: Option<IpAddr>,
    mut rx: watch::Receiver<Notice>,
) {
    if targets.is_empty() {
        return;
    }
    while rx.changed().await.is_ok() {
        let n = rx.borrow_and_update().clone();
        let mut all = Vec::new();
        for t in &targets {
            for soa in &n.zones {
                all.push(notify(*t, source, soa.clone()));
            }
        }
        futures::future::join_all(all).await;
        debug!(serial = n.serial, "secondaries notified");
    }
}

async fn notify(target: SocketAddr, source: Option<IpAddr>, soa: Record) {
    let zone = soa.name.clone();
    match exchange(target, source, soa).await {
        Ok(true) => {}
        Ok(false) => warn!(%target, %zone, "NOTIFY not answered"),
        Err(e) => warn!(%target, %zone, "NOTIFY: {e}"),
    }
}

async fn exchange(
    target: SocketAddr,
    source: Option<IpAddr>,
    soa: Record,
) -> std::io::Result<bool> {
    // From the address we serve on, where the secondary expects its primary.
    let local = match (source, target) {
        (Some(ip), t) if ip.is_ipv4() == t.is_ipv4() => SocketAddr::new(ip, 0),
        (_, SocketAddr::V4(_)) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        (_, SocketAddr::V6(_)) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let sock = UdpSocket::bind(local).await?;
    let id = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        & 0xffff) as u16;
    let mut msg = Message::new(id, MessageType::Query, OpCode::Notify);
    msg.metadata.authoritative = true;
    msg.add_query(Query::query(soa.name.clone(), RecordType::SOA));
    msg.add_answer(soa);
    let bytes = msg
        .to_vec()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut buf = [0u8; 1500];
    for _ in 0..TRIES {
        sock.send_to(&bytes, target).await?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(e),
                Ok(Ok((n, from))) => {
                    if from.ip() == target.ip()
                        && n >= 2
                        && u16::from_be_bytes([buf[0], buf[1]]) == id
                    {
                        return Ok(true);
                    }
                }
            }
        }
    }
    Ok(false)
}
