//! Links, addresses, routes, neighbours, FDB: a bridge network between two namespaces, a
//! VXLAN overlay, idempotency, and namespace deletion taking links with it.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::*;
use ipnet::IpNet;
use sdnet_netstack::Error;
use sdnet_netstack::ipam::mac_from_ipv4;
use sdnet_netstack::link::{Netlink, Route, send_gratuitous_arp};
use sdnet_netstack::netns::Netns;
use sdnet_netstack::sysctl;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A "host" namespace with bridge br0 (10.77.0.1/24) and a "sandbox" namespace attached to
/// it by a veth pair, configured as the daemon does, every step run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_network_between_namespaces() {
    if !root() {
        return;
    }
    let lab = Lab::new();
    let host = lab.ns("host");
    let sb = lab.ns("sb");
    let hnl = Netlink::connect(&host).await.unwrap();
    let snl = Netlink::connect(&sb).await.unwrap();
    let sb_ip = Ipv4Addr::new(10, 77, 0, 2);
    let mac = mac_from_ipv4(sb_ip);

    for round in 0..2 {
        let br = hnl.ensure_bridge("br0").await.unwrap();
        hnl.add_address(br, net("10.77.0.1/24")).await.unwrap();
        hnl.set_up(br).await.unwrap();
        // Let the host learn neighbours from gratuitous ARP, to see ours arrive.
        sysctl::set(&host, "net.ipv4.conf.br0.arp_accept", "1").unwrap();

        let h = hnl.create_veth("vh0", "eth0", Some(&sb)).await.unwrap();
        hnl.set_master(h, br).await.unwrap();
        // MTUs after enslaving: a bridge follows its ports.
        hnl.set_mtu(h, 1400).await.unwrap();
        hnl.set_mtu(br, 1400).await.unwrap();
        hnl.set_hairpin(h, true).await.unwrap();
        hnl.set_up(h).await.unwrap();

        let e = snl
            .link_index("eth0")
            .await
            .unwrap()
            .expect("peer in the sandbox");
        assert_eq!(hnl.link_index("eth0").await.unwrap(), None, "round {round}");
        snl.set_mac(e, mac).await.unwrap();
        snl.set_mtu(e, 1400).await.unwrap();
        snl.add_address(e, IpNet::new(IpAddr::V4(sb_ip), 24).unwrap())
            .await
            .unwrap();
        snl.set_up(e).await.unwrap();
        snl.replace_route(net("0.0.0.0/0"), Some(ip("10.77.0.1")), Some(e))
            .await
            .unwrap();
        snl.replace_route(net("10.99.0.0/16"), None, Some(e))
            .await
            .unwrap();
        send_gratuitous_arp(&sb, "eth0", sb_ip).unwrap();
    }
    // The announcement reached the host before any traffic did.
    let learned = wait_for(Duration::from_secs(5), || {
        let n = out_in(
            host.path(),
            &["ip", "neigh", "show", "10.77.0.2", "dev", "br0"],
        );
        n.contains("lladdr 02:42:0a:4d:00:02")
    });
    assert!(learned, "gratuitous ARP not seen by the host");
    assert!(send_gratuitous_arp(&sb, "nosuchif", sb_ip).is_err());

    // What the kernel reports.
    let links = hnl.links().await.unwrap();
    let br = links.iter().find(|l| l.name == "br0").unwrap();
    let vh = links.iter().find(|l| l.name == "vh0").unwrap();
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert_eq!(br.mtu, Some(1400));
    assert!(br.up);
    assert_eq!(vh.kind.as_deref(), Some("veth"));
    assert_eq!(vh.master, Some(br.index));
    assert_eq!(vh.mtu, Some(1400));
    let e = snl.link("eth0").await.unwrap().unwrap();
    assert_eq!(e.mac, Some(mac));
    assert!(e.up);
    let lo = snl.link("lo").await.unwrap().unwrap();
    assert_eq!(lo.kind, None);
    assert!(lo.up);
    assert_eq!(
        snl.addresses(e.index)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.addr().is_ipv4())
            .collect::<Vec<_>>(),
        vec![net("10.77.0.2/24")]
    );
    let routes = snl.route_list().await.unwrap();
    assert!(routes.contains(&Route {
        dest: net("0.0.0.0/0"),
        gateway: Some(ip("10.77.0.1")),
        oif: Some(e.index),
    }));
    let v4 = snl.routes_v4().await.unwrap();
    assert!(v4.contains(&net("10.77.0.0/24")), "{v4:?}");
    assert!(v4.contains(&net("10.99.0.0/16")), "{v4:?}");
    assert!(!v4.contains(&net("0.0.0.0/0")));
    assert!(snl.routes().await.unwrap().contains(&net("10.77.0.0/24")));
    let detail = out_in(host.path(), &["ip", "-d", "link", "show", "dev", "vh0"]);
    assert!(detail.contains("hairpin on"), "{detail}");
    hnl.set_hairpin(vh.index, false).await.unwrap();
    let detail = out_in(host.path(), &["ip", "-d", "link", "show", "dev", "vh0"]);
    assert!(detail.contains("hairpin off"), "{detail}");

    // Traffic both ways.
    assert!(ping(sb.path(), "10.77.0.1"), "sandbox -> bridge");
    assert!(ping(host.path(), "10.77.0.2"), "bridge -> sandbox");

    // Deleting routes and links, twice each.
    for _ in 0..2 {
        snl.delete_route(net("10.99.0.0/16")).await.unwrap();
        snl.delete_route(net("0.0.0.0/0")).await.unwrap();
    }
    let v4 = snl.routes_v4().await.unwrap();
    assert!(!v4.contains(&net("10.99.0.0/16")));
    assert!(
        !snl.route_list()
            .await
            .unwrap()
            .iter()
            .any(|r| r.dest.prefix_len() == 0)
    );
    for _ in 0..2 {
        snl.delete_address(e.index, net("10.77.0.2/24"))
            .await
            .unwrap();
    }
    assert!(
        !snl.addresses(e.index)
            .await
            .unwrap()
            .contains(&net("10.77.0.2/24"))
    );

    // A name taken by another kind is an error, not a silent success.
    assert!(matches!(
        hnl.ensure_bridge("vh0").await,
        Err(Error::WrongKind { .. })
    ));
    for _ in 0..2 {
        hnl.delete_link("vh0").await.unwrap();
    }
    assert_eq!(hnl.link_index("vh0").await.unwrap(), None);
    // The harness can tell a failure: nothing answers now.
    let o = sh_in(sb.path(), &["ping", "-n", "-c1", "-W1", "10.77.0.1"]);
    assert!(!o.status.success());
    // The peer went with it.
    assert!(wait_for(Duration::from_secs(5), || {
        block(snl.link_index("eth0")).is_none()
    }));
}

/// Blocks on a future from a sync closure inside a multi-threaded runtime.
fn block<F: std::future::Future<Output = sdnet_netstack::Result<Option<u32>>>>(
    f: F,
) -> Option<u32> {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f)).unwrap()
}

/// A veth made in one namespace, moved to another, renamed, brought up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_and_rename() {
    if !root() {
        return;
    }
    let lab = Lab::new();
    let a = lab.ns("a");
    let b = lab.ns("b");
    let anl = Netlink::connect(&a).await.unwrap();
    let bnl = Netlink::connect(&b).await.unwrap();
    let x = anl.create_veth("tmpx", "tmpy", None).await.unwrap();
    assert_eq!(anl.create_veth("tmpx", "tmpy", None).await.unwrap(), x);
    let y = anl.link_index("tmpy").await.unwrap().unwrap();
    anl.move_to_netns(y, &b).await.unwrap();
    assert_eq!(anl.link_index("tmpy").await.unwrap(), None);
    let y = bnl.link_index("tmpy").await.unwrap().unwrap();
    bnl.rename(y, "eth1").await.unwrap();
    bnl.rename(y, "eth1").await.unwrap();
    assert_eq!(bnl.link_index("eth1").await.unwrap(), Some(y));
    bnl.set_up(y).await.unwrap();
    bnl.set_down(y).await.unwrap();
    assert!(!bnl.link("eth1").await.unwrap().unwrap().up);
    // Not enslaved: releasing is a no-op.
    bnl.set_nomaster(y).await.unwrap();
}

/// Deleting a namespace removes its links: the veth end left in the other namespace goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_removes_its_links() {
    if !root() {
        return;
    }
    let lab = Lab::new();
    let host = lab.ns("host");
    let hnl = Netlink::connect(&host).await.unwrap();
    let sb_path = lab.path("sb");
    {
        let sb = lab.ns("sb");
        let snl = Netlink::connect(&sb).await.unwrap();
        hnl.create_veth("vd0", "eth0", Some(&sb)).await.unwrap();
        assert!(snl.link_index("eth0").await.unwrap().is_some());
        // Handles (the fd and the netlink socket) keep a namespace alive: drop them.
    }
    Netns::delete(&sb_path).unwrap();
    assert!(!mounted(&sb_path));
    assert!(!sb_path.exists());
    let gone = wait_for(Duration::from_secs(10), || {
        block(hnl.link_index("vd0")).is_none()
    });
    assert!(gone, "the host end of the veth outlived the namespace");
}

/// Two namespaces joined by an underlay veth, each with a VXLAN device (learning off), FDB
/// and neighbour entries programmed statically: the overlay pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_overlay_with_static_fdb_and_neighbours() {
    if !root() {
        return;
    }
    let lab = Lab::new();
    let a = lab.ns("a");
    let b = lab.ns("b");
    let anl = Netlink::connect(&a).await.unwrap();
    let bnl = Netlink::connect(&b).await.unwrap();

    let ua = anl.create_veth("u0", "u0", Some(&b)).await.unwrap();
    let ub = bnl.link_index("u0").await.unwrap().unwrap();
    let (under_a, under_b) = (ip("10.66.0.1"), ip("10.66.0.2"));
    anl.add_address(ua, net("10.66.0.1/24")).await.unwrap();
    bnl.add_address(ub, net("10.66.0.2/24")).await.unwrap();
    anl.set_up(ua).await.unwrap();
    bnl.set_up(ub).await.unwrap();

    let (mac_a, mac_b) = (
        mac_from_ipv4(Ipv4Addr::new(192, 168, 77, 1)),
        mac_from_ipv4(Ipv4Addr::new(192, 168, 77, 2)),
    );
    for _ in 0..2 {
        for (nl, local, under, mac, ov, peer_under, peer_mac, peer_ov) in [
            (
                &anl,
                under_a,
                ua,
                mac_a,
                "192.168.77.1/24",
                under_b,
                mac_b,
                "192.168.77.2",
            ),
            (
                &bnl,
                under_b,
                ub,
                mac_b,
                "192.168.77.2/24",
                under_a,
                mac_a,
                "192.168.77.1",
            ),
        ] {
            let vx = nl
                .add_vxlan("vx42", 42, local, 4789, Some(under), false)
                .await
                .unwrap();
            nl.set_mac(vx, mac).await.unwrap();
            nl.set_mtu(vx, 1450).await.unwrap();
            nl.add_address(vx, net(ov)).await.unwrap();
            nl.set_up(vx).await.unwrap();
            nl.replace_fdb(vx, peer_mac, peer_under).await.unwrap();
            nl.replace_neighbour(vx, ip(peer_ov), peer_mac)
                .await
                .unwrap();
        }
    }
    let vx = anl.link("vx42").await.unwrap().unwrap();
    assert_eq!(vx.kind.as_deref(), Some("vxlan"));
    let d = out_in(a.path(), &["ip", "-d", "link", "show", "dev", "vx42"]);
    assert!(d.contains("vxlan id 42"), "{d}");
    assert!(d.contains("local 10.66.0.1"), "{d}");
    assert!(d.contains("nolearning"), "{d}");
    let fdb = out_in(a.path(), &["bridge", "fdb", "show", "dev", "vx42"]);
    assert!(
        fdb.lines().any(|l| l.starts_with("02:42:c0:a8:4d:02")
            && l.contains("dst 10.66.0.2")
            && l.contains("self permanent")),
        "{fdb}"
    );
    let neigh = out_in(a.path(), &["ip", "neigh", "show", "dev", "vx42"]);
    assert!(
        neigh.contains("192.168.77.2 lladdr 02:42:c0:a8:4d:02 PERMANENT"),
        "{neigh}"
    );
    assert!(ping(a.path(), "192.168.77.2"), "overlay a -> b");
    assert!(ping(b.path(), "192.168.77.1"), "overlay b -> a");
    // A different kind under the name is refused.
    assert!(matches!(
        anl.add_vxlan("u0", 42, under_a, 4789, None, false).await,
        Err(Error::WrongKind { .. })
    ));
}
