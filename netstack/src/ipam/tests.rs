use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn subnet(s: &str) -> Subnet {
    let n = net(s);
    Subnet::new(n, None, first_host(&n), BTreeMap::new()).unwrap()
}

#[test]
fn default_pool_order() {
    let local: Vec<IpNet> = Pool::defaults(Scope::Local)
        .iter()
        .flat_map(|p| p.subnets())
        .collect();
    // 3 + 3 × 4 /16s, then 16 /20s.
    assert_eq!(local.len(), 3 + 12 + 16);
    assert_eq!(local[0], net("172.17.0.0/16"));
    assert_eq!(local[3], net("172.20.0.0/16"));
    assert_eq!(local[14], net("172.31.0.0/16"));
    assert_eq!(local[15], net("192.168.0.0/20"));
    assert_eq!(local[30], net("192.168.240.0/20"));
    assert_eq!(default_pools(Scope::Swarm), vec![(net("10.0.0.0/8"), 24)]);
}

#[test]
fn pools_skip_taken_and_reserved() {
    assert_eq!(
        pick_subnet(Scope::Local, &[], &[]).unwrap(),
        net("172.17.0.0/16")
    );
    let taken = [net("172.17.0.0/16"), net("172.18.5.0/24")];
    // A host route inside 172.19/16 (a nameserver) reserves that /16 too.
    assert_eq!(
        pick_subnet(Scope::Local, &taken, &[net("172.19.0.1/32")]).unwrap(),
        net("172.20.0.0/16")
    );
    // A reserved supernet covers several pool subnets.
    assert_eq!(
        pick_subnet(Scope::Local, &[], &[net("172.16.0.0/12")]).unwrap(),
        net("192.168.0.0/20")
    );
    assert_eq!(
        pick_subnet(Scope::Swarm, &[net("10.0.0.0/24")], &[]).unwrap(),
        net("10.0.1.0/24")
    );
    assert_eq!(
        pick_subnet(Scope::Swarm, &[], &[net("10.0.0.0/16")]).unwrap(),
        net("10.1.0.0/24")
    );
}

#[test]
fn pools_exhausted() {
    let all: Vec<IpNet> = Pool::defaults(Scope::Local)
        .iter()
        .map(|p| p.base)
        .collect();
    let e = pick_subnet(Scope::Local, &all, &[]).unwrap_err();
    assert_eq!(e, IpamError::PoolsExhausted);
    assert!(
        e.to_string()
            .contains("could not find an available, non-overlapping IPv4 address pool")
    );
    // Everything but 192.168/16: the first /20 of it.
    assert_eq!(
        pick_subnet(Scope::Local, &all[..6], &[]).unwrap(),
        net("192.168.0.0/20")
    );
    assert_eq!(
        pick_subnet(Scope::Swarm, &[], &[net("0.0.0.0/1")]),
        Err(IpamError::PoolsExhausted)
    );
    let custom = [Pool {
        base: net("fd00::/48"),
        size: 64,
    }];
    assert_eq!(
        pick_subnet_from(&custom, &[net("fd00::/64")], &[]).unwrap(),
        net("fd00:0:0:1::/64")
    );
}

#[test]
fn overlap() {
    assert!(overlaps(&net("10.0.0.0/8"), &net("10.1.0.0/16")));
    assert!(overlaps(&net("10.1.0.0/16"), &net("10.0.0.0/8")));
    assert!(overlaps(&net("10.1.0.0/16"), &net("10.1.0.0/16")));
    assert!(!overlaps(&net("10.1.0.0/16"), &net("10.2.0.0/16")));
    assert!(!overlaps(&net("10.0.0.0/8"), &net("fd00::/8")));
    assert_eq!(
        check_disjoint(&[net("10.0.0.0/24"), net("10.0.1.0/24"), net("10.0.0.128/25")]),
        Err(IpamError::Overlap(net("10.0.0.0/24"), net("10.0.0.128/25")))
    );
    assert!(check_disjoint(&[net("10.0.0.0/24"), net("10.0.1.0/24")]).is_ok());
}

#[test]
fn lowest_free_with_gateway_aux_and_fixed() {
    let mut aux = BTreeMap::new();
    aux.insert("router".to_string(), ip("10.0.0.3"));
    let n = net("10.0.0.0/29");
    let mut s = Subnet::new(n, None, first_host(&n), aux).unwrap();
    assert_eq!(s.gateway(), Some(ip("10.0.0.1")));
    assert_eq!(s.available(), 4);
    assert_eq!(s.allocate(None).unwrap(), ip("10.0.0.2"));
    assert_eq!(s.allocate(None).unwrap(), ip("10.0.0.4"));
    assert_eq!(s.allocate(Some(ip("10.0.0.6"))).unwrap(), ip("10.0.0.6"));
    assert_eq!(
        s.allocate(Some(ip("10.0.0.6"))),
        Err(IpamError::InUse(ip("10.0.0.6")))
    );
    for reserved in ["10.0.0.0", "10.0.0.1", "10.0.0.3", "10.0.0.7"] {
        assert_eq!(
            s.allocate(Some(ip(reserved))),
            Err(IpamError::Reserved(ip(reserved)))
        );
    }
    assert!(matches!(
        s.allocate(Some(ip("10.9.0.7"))),
        Err(IpamError::OutsideSubnet { .. })
    ));
    assert_eq!(s.allocate(None).unwrap(), ip("10.0.0.5"));
    assert_eq!(s.available(), 0);
    assert_eq!(s.allocate(None), Err(IpamError::SubnetFull(n)));
    assert!(s.release(ip("10.0.0.4")));
    assert!(!s.release(ip("10.0.0.4")));
    assert_eq!(s.allocate(None).unwrap(), ip("10.0.0.4"));
}

#[test]
fn range_and_validation() {
    let n = net("10.0.0.0/24");
    let mut s = Subnet::new(
        n,
        Some(net("10.0.0.128/25")),
        first_host(&n),
        BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(s.allocate(None).unwrap(), ip("10.0.0.128"));
    assert_eq!(s.allocate(None).unwrap(), ip("10.0.0.129"));
    // A fixed address may sit outside the range, inside the subnet.
    assert_eq!(s.allocate(Some(ip("10.0.0.20"))).unwrap(), ip("10.0.0.20"));
    // The range ends at the subnet's broadcast, which is never handed out.
    let mut small = Subnet::new(n, Some(net("10.0.0.254/31")), None, BTreeMap::new()).unwrap();
    assert_eq!(small.allocate(None).unwrap(), ip("10.0.0.254"));
    assert_eq!(small.allocate(None), Err(IpamError::SubnetFull(n)));

    assert_eq!(
        Subnet::new(n, Some(net("10.0.1.0/25")), None, BTreeMap::new()),
        Err(IpamError::RangeOutsideSubnet {
            range: net("10.0.1.0/25"),
            subnet: n
        })
    );
    assert!(matches!(
        Subnet::new(n, Some(net("10.0.0.0/23")), None, BTreeMap::new()),
        Err(IpamError::RangeOutsideSubnet { .. })
    ));
    assert!(matches!(
        Subnet::new(n, Some(net("fd00::/120")), None, BTreeMap::new()),
        Err(IpamError::RangeOutsideSubnet { .. })
    ));
    assert_eq!(
        Subnet::new(n, None, Some(ip("10.0.0.255")), BTreeMap::new()),
        Err(IpamError::BadGateway(ip("10.0.0.255"), n))
    );
    assert_eq!(
        Subnet::new(n, None, Some(ip("10.0.1.1")), BTreeMap::new()),
        Err(IpamError::BadGateway(ip("10.0.1.1"), n))
    );
    let mut aux = BTreeMap::new();
    aux.insert("x".to_string(), ip("10.0.5.1"));
    assert!(matches!(
        Subnet::new(n, None, None, aux),
        Err(IpamError::OutsideSubnet { .. })
    ));
    // Host bits are cleared.
    assert_eq!(
        Subnet::new(net("10.0.0.7/24"), None, None, BTreeMap::new())
            .unwrap()
            .net(),
        n
    );
}

#[test]
fn gateway_elsewhere_and_point_to_point() {
    let n = net("10.0.0.0/29");
    let mut s = Subnet::new(n, None, Some(ip("10.0.0.6")), BTreeMap::new()).unwrap();
    let got: Vec<IpAddr> = (0..5).map(|_| s.allocate(None).unwrap()).collect();
    assert_eq!(
        got,
        ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"].map(ip)
    );
    assert!(s.allocate(None).is_err());
    // /31: both addresses usable, no network/broadcast.
    let mut p2p = Subnet::new(net("10.1.0.0/31"), None, None, BTreeMap::new()).unwrap();
    assert_eq!(p2p.allocate(None).unwrap(), ip("10.1.0.0"));
    assert_eq!(p2p.allocate(None).unwrap(), ip("10.1.0.1"));
    assert_eq!(first_host(&net("10.1.0.0/31")), Some(ip("10.1.0.0")));
}

#[test]
fn serial_reuse_order() {
    let mut s = subnet("10.0.0.0/29").serial(true);
    assert!(s.is_serial());
    let a = s.allocate(None).unwrap();
    let b = s.allocate(None).unwrap();
    assert_eq!((a, b), (ip("10.0.0.2"), ip("10.0.0.3")));
    s.release(a);
    // Not the freed .2: the next after the last one.
    assert_eq!(s.allocate(None).unwrap(), ip("10.0.0.4"));
    assert_eq!(s.allocate(None).unwrap(), ip("10.0.0.5"));
    assert_eq!(s.allocate(None).unwrap(), ip("10.0.0.6"));
    // Wraps around to the freed one.
    assert_eq!(s.allocate(None).unwrap(), ip("10.0.0.2"));
    assert_eq!(
        s.allocate(None),
        Err(IpamError::SubnetFull(net("10.0.0.0/29")))
    );
    s.release(ip("10.0.0.5"));
    s.release(ip("10.0.0.3"));
    // After .2 comes .3 (freed earlier than .5, but next in order).
    assert_eq!(s.allocate(None).unwrap(), ip("10.0.0.3"));
    assert_eq!(s.allocate(None).unwrap(), ip("10.0.0.5"));

    // Non-serial reuses the lowest at once.
    let mut l = subnet("10.0.0.0/29");
    let a = l.allocate(None).unwrap();
    l.allocate(None).unwrap();
    l.release(a);
    assert_eq!(l.allocate(None).unwrap(), a);
}

#[test]
fn ipv6() {
    let n = net("fd00:1::/64");
    let mut s = subnet("fd00:1::/64");
    assert_eq!(s.gateway(), Some(ip("fd00:1::1")));
    assert_eq!(s.allocate(None).unwrap(), ip("fd00:1::2"));
    assert_eq!(s.allocate(None).unwrap(), ip("fd00:1::3"));
    assert_eq!(s.allocate(Some(ip("fd00:1::4"))).unwrap(), ip("fd00:1::4"));
    assert_eq!(s.allocate(None).unwrap(), ip("fd00:1::5"));
    assert_eq!(
        s.allocate(Some(ip("fd00:1::"))),
        Err(IpamError::Reserved(ip("fd00:1::")))
    );
    // The all-ones address is fine in IPv6 (no broadcast).
    let top = ip("fd00:1::ffff:ffff:ffff:ffff");
    assert_eq!(s.allocate(Some(top)).unwrap(), top);
    assert!(s.release(ip("fd00:1::3")));
    assert_eq!(s.allocate(None).unwrap(), ip("fd00:1::3"));
    assert!(s.available() > 1 << 60);

    // Serial over a /64 never enumerates: a long run of allocated addresses is skipped.
    let mut ser = Subnet::new(n, None, first_host(&n), BTreeMap::new())
        .unwrap()
        .serial(true);
    for _ in 0..10_000 {
        ser.allocate(None).unwrap();
    }
    ser.release(ip("fd00:1::2"));
    assert_eq!(ser.allocate(None).unwrap(), ip("fd00:1::2712"));
    // Wrapping at the very top of a /64.
    let mut w = subnet("fd00:2::/126").serial(true);
    assert_eq!(w.allocate(None).unwrap(), ip("fd00:2::2"));
    assert_eq!(w.allocate(None).unwrap(), ip("fd00:2::3"));
    w.release(ip("fd00:2::2"));
    assert_eq!(w.allocate(None).unwrap(), ip("fd00:2::2"));
}

#[test]
fn dense_lowest_free_is_fast() {
    // 60k allocated in a /16: finding the one gap must not be quadratic.
    let mut s = subnet("10.5.0.0/16");
    for _ in 0..60_000 {
        s.allocate(None).unwrap();
    }
    s.release(ip("10.5.200.0"));
    let t = std::time::Instant::now();
    assert_eq!(s.allocate(None).unwrap(), ip("10.5.200.0"));
    assert!(t.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn serde_round_trip() {
    let mut aux = BTreeMap::new();
    aux.insert("r".to_string(), ip("10.0.0.3"));
    let n = net("10.0.0.0/24");
    let mut s = Subnet::new(n, Some(net("10.0.0.0/25")), first_host(&n), aux)
        .unwrap()
        .serial(true);
    s.allocate(None).unwrap();
    s.allocate(Some(ip("10.0.0.200"))).unwrap();
    let json = serde_json::to_string(&s).unwrap();
    assert!(
        json.contains(r#""allocated":["10.0.0.2","10.0.0.200"]"#),
        "{json}"
    );
    let back: Subnet = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    let mut back = back;
    assert_eq!(back.allocate(None).unwrap(), ip("10.0.0.4"));
}

#[test]
fn runs() {
    let mut r = Runs::default();
    for v in [5, 7, 6, 1, 2, 10] {
        r.insert(v);
    }
    assert_eq!(
        r.0.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(),
        vec![(1, 2), (5, 7), (10, 10)]
    );
    assert_eq!(r.skip(0), Some(0));
    assert_eq!(r.skip(5), Some(8));
    assert_eq!(r.skip(10), Some(11));
    r.remove(6);
    assert_eq!(r.skip(5), Some(6));
    assert_eq!(r.find(7), Some((7, 7)));
    r.remove(10);
    r.remove(10);
    assert_eq!(r.find(10), None);
    r.insert(u128::MAX);
    assert_eq!(r.skip(u128::MAX), None);
}

#[test]
fn macs() {
    assert_eq!(
        mac_from_ipv4(Ipv4Addr::new(172, 18, 0, 2)),
        [2, 0x42, 172, 18, 0, 2]
    );
}
