//! Gratuitous ARP (RFC 5227 announcements) from inside a namespace.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::ifaddrs::getifaddrs;
use nix::sys::socket::{AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, sendto, socket};
use tracing::debug;

use crate::netns::Netns;
use crate::{Error, Result};

/// Announces `ip` on `ifname` inside `ns` with unsolicited ARP (an announcement request and
/// a gratuitous reply, RFC 5227): neighbours that cached another MAC for a reused address
/// learn the new one at once. The interface must be up.
pub fn send_gratuitous_arp(ns: &Netns, ifname: &str, ip: Ipv4Addr) -> Result<()> {
    ns.run(|| arp(ifname, ip))?
}

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

fn arp_packet(op: u16, mac: &[u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&op.to_be_bytes());
    p[8..14].copy_from_slice(mac);
    p[14..18].copy_from_slice(&ip.octets());
    // Target hardware address: zero in the request, ours in the reply.
    if op == ARP_REPLY {
        p[18..24].copy_from_slice(mac);
    }
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// EtherType of ARP.
const ETH_P_ARP: u16 = 0x0806;

/// An Ethernet broadcast frame carrying [`arp_packet`].
fn arp_frame(op: u16, mac: &[u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..].copy_from_slice(&arp_packet(op, mac, ip));
    f
}

fn arp(ifname: &str, ip: Ipv4Addr) -> Result<()> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains('\0') {
        return Err(Error::Invalid(format!("invalid interface name {ifname:?}")));
    }
    // The interface's link-layer address (index and MAC) is its AF_PACKET entry; getifaddrs
    // asks over a netlink socket made on this thread, so in this namespace.
    let link = getifaddrs()
        .map_err(Error::sys(format!("looking up interface {ifname}")))?
        .filter(|a| a.interface_name == ifname)
        .find_map(|a| a.address.and_then(|s| s.as_link_addr().copied()))
        .ok_or_else(|| Error::sys(format!("looking up interface {ifname}"))(Errno::ENODEV))?;
    // A raw packet socket (we write the Ethernet header) with protocol 0: it only sends, so
    // it receives nothing while open.
    let sock = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(Error::sys("opening a packet socket"))?;
    let r = send_arp(&sock, ifname, &link, ip);
    // Closing a packet socket waits for the kernel to synchronize (~10 ms).
    crate::reap::close_later(sock);
    r
}

fn send_arp(sock: &OwnedFd, ifname: &str, link: &LinkAddr, ip: Ipv4Addr) -> Result<()> {
    let mac = link.addr().unwrap_or_default();
    for op in [ARP_REQUEST, ARP_REPLY] {
        // The address names the interface; the frame carries its own destination.
        sendto(
            sock.as_raw_fd(),
            &arp_frame(op, &mac, ip),
            link,
            MsgFlags::empty(),
        )
        .map_err(Error::sys(format!("sending ARP on {ifname}")))?;
    }
    debug!(ifname, %ip, "sent gratuitous ARP");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_layout() {
        let mac = [2, 0x42, 10, 0, 0, 2];
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let req = arp_packet(ARP_REQUEST, &mac, ip);
        assert_eq!(&req[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&req[8..14], &mac);
        assert_eq!(&req[14..18], &[10, 0, 0, 2]);
        assert_eq!(&req[18..24], &[0; 6]);
        assert_eq!(&req[24..28], &[10, 0, 0, 2]);
        let rep = arp_packet(ARP_REPLY, &mac, ip);
        assert_eq!(&rep[6..8], &[0, 2]);
        assert_eq!(&rep[18..24], &mac);
        assert_eq!(crate::link::fmt_mac(&mac), "02:42:0a:00:00:02");
    }

    #[test]
    fn arp_frame_layout() {
        let mac = [2, 0x42, 10, 0, 0, 2];
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let frame = arp_frame(ARP_REPLY, &mac, ip);
        assert_eq!(&frame[..6], &[0xff; 6]);
        assert_eq!(&frame[6..12], &mac);
        assert_eq!(&frame[12..14], &[8, 6]);
        assert_eq!(&frame[14..], &arp_packet(ARP_REPLY, &mac, ip));
    }
}
