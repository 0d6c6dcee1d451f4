//! Address management: Docker's default pools for new networks, and per-subnet allocation
//! (lowest free address, or serial for swarm networks so a freed address is not reused at
//! once). Pure: no kernel, no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("could not find an available, non-overlapping IPv4 address pool among the defaults")]
    PoolsExhausted,
    #[error("no free address left in {0}")]
    SubnetFull(IpNet),
    #[error("address {ip} is not in subnet {subnet}")]
    OutsideSubnet { ip: IpAddr, subnet: IpNet },
    #[error("ip-range {range} is not within subnet {subnet}")]
    RangeOutsideSubnet { range: IpNet, subnet: IpNet },
    #[error("gateway {0} is not a usable host address of subnet {1}")]
    BadGateway(IpAddr, IpNet),
    #[error("address {0} is already in use")]
    InUse(IpAddr),
    #[error("address {0} is reserved (network, broadcast, gateway or aux address)")]
    Reserved(IpAddr),
    #[error("address {ip} is outside the ip-range {range}")]
    OutsideRange { ip: IpAddr, range: IpNet },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Bridge networks: 172.17-19/16, 172.20/14, 172.24/14, 172.28/14 in /16s, 192.168/16 in /20s.
    Local,
    /// Swarm networks: 10.0.0.0/8 in /24s.
    Swarm,
}

/// Docker's default pools, in order.
pub fn default_pools(scope: Scope) -> Vec<(Ipv4Net, u8)> {
    let n = |s: &str| s.parse::<Ipv4Net>().expect("static pool");
    match scope {
        Scope::Local => vec![
            (n("172.17.0.0/16"), 16),
            (n("172.18.0.0/16"), 16),
            (n("172.19.0.0/16"), 16),
            (n("172.20.0.0/14"), 16),
            (n("172.24.0.0/14"), 16),
            (n("172.28.0.0/14"), 16),
            (n("192.168.0.0/16"), 20),
        ],
        Scope::Swarm => vec![(n("10.0.0.0/8"), 24)],
    }
}

pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first address of `taken`'s complement among the default pools.
pub fn pick_subnet(scope: Scope, taken: &[IpNet], reserved: &[IpNet]) -> Result<IpNet, IpamError> {
    for (pool, len) in default_pools(scope) {
        let Ok(subnets) = pool.subnets(len) else {
            continue;
        };
        for s in subnets {
            let s = IpNet::V4(s);
            if !taken.iter().chain(reserved).any(|t| overlaps(&s, t)) {
                return Ok(s);
            }
        }
    }
    Err(IpamError::PoolsExhausted)
}

/// The first host address of a subnet (the default gateway).
pub fn first_host(net: &IpNet) -> Option<IpAddr> {
    match net {
        IpNet::V4(n) => {
            if n.prefix_len() >= 31 {
                Some(IpAddr::V4(n.network()))
            } else {
                Some(IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + 1)))
            }
        }
        IpNet::V6(n) => {
            if n.prefix_len() >= 127 {
                Some(IpAddr::V6(n.network()))
            } else {
                Some(IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) + 1)))
            }
        }
    }
}

/// Docker's MAC for an IPv4 endpoint: 02:42 followed by the address.
pub fn mac_from_ipv4(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// One subnet's allocations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    net: IpNet,
    range: Option<IpNet>,
    gateway: Option<IpAddr>,
    aux: BTreeMap<String, IpAddr>,
    allocated: BTreeSet<IpAddr>,
    /// Serial allocation: continue after the last address handed out.
    serial: bool,
    last: Option<IpAddr>,
}

impl Subnet {
    pub fn new(
        net: IpNet,
        range: Option<IpNet>,
        gateway: Option<IpAddr>,
        aux: BTreeMap<String, IpAddr>,
    ) -> Result<Subnet, IpamError> {
        let net = net.trunc();
        if let Some(r) = range
            && !(net.contains(&r.network())
                && net.contains(&r.broadcast())
                && r.prefix_len() >= net.prefix_len())
        {
            return Err(IpamError::RangeOutsideSubnet {
                range: r,
                subnet: net,
            });
        }
        let s = Subnet {
            net,
            range: range.map(|r| r.trunc()),
            gateway,
            aux,
            allocated: BTreeSet::new(),
            serial: false,
            last: None,
        };
        if let Some(g) = gateway
            && (!net.contains(&g) || s.edge(g))
        {
            return Err(IpamError::BadGateway(g, net));
        }
        for ip in s.aux.values() {
            if !net.contains(ip) {
                return Err(IpamError::OutsideSubnet {
                    ip: *ip,
                    subnet: net,
                });
            }
        }
        Ok(s)
    }

    pub fn serial(mut self, on: bool) -> Subnet {
        self.serial = on;
        self
    }

    pub fn net(&self) -> IpNet {
        self.net
    }

    pub fn gateway(&self) -> Option<IpAddr> {
        self.gateway
    }

    pub fn allocated(&self) -> impl Iterator<Item = &IpAddr> {
        self.allocated.iter()
    }

    /// Network or (IPv4) broadcast address of a subnet that has them.
    fn edge(&self, ip: IpAddr) -> bool {
        match self.net {
            IpNet::V4(n) if n.prefix_len() < 31 => {
                ip == IpAddr::V4(n.network()) || ip == IpAddr::V4(n.broadcast())
            }
            IpNet::V6(n) if n.prefix_len() < 127 => ip == IpAddr::V6(n.network()),
            _ => false,
        }
    }

    fn reserved(&self, ip: IpAddr) -> bool {
        self.edge(ip) || self.gateway == Some(ip) || self.aux.values().any(|a| *a == ip)
    }

    /// Allocates `want`, or the next free address (lowest, or after the last for serial).
    pub fn allocate(&mut self, want: Option<IpAddr>) -> Result<IpAddr, IpamError> {
        if let Some(ip) = want {
            if !self.net.contains(&ip) {
                return Err(IpamError::OutsideSubnet {
                    ip,
                    subnet: self.net,
                });
            }
            if self.reserved(ip) {
                return Err(IpamError::Reserved(ip));
            }
            if !self.allocated.insert(ip) {
                return Err(IpamError::InUse(ip));
            }
            return Ok(ip);
        }
        let span = self.range.unwrap_or(self.net);
        let v4 = matches!(span, IpNet::V4(_));
        let (lo, hi) = (to_u128(span.network()), to_u128(span.broadcast()));
        let start = match (self.serial, self.last) {
            (true, Some(l)) if span.contains(&l) => to_u128(l).saturating_add(1),
            _ => lo,
        };
        // Walk forward from `start` (wrapping once to `lo`), skipping taken addresses.
        let mut tries: u128 = 0;
        let total = hi - lo + 1;
        let mut v = if start > hi { lo } else { start };
        while tries < total.min(1 << 24) {
            let ip = from_u128(v, v4);
            if !self.reserved(ip) && !self.allocated.contains(&ip) {
                self.allocated.insert(ip);
                self.last = Some(ip);
                return Ok(ip);
            }
            v = if v >= hi { lo } else { v + 1 };
            tries += 1;
        }
        Err(IpamError::SubnetFull(self.net))
    }

    pub fn release(&mut self, ip: IpAddr) {
        self.allocated.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn pools_skip_taken_and_reserved() {
        assert_eq!(
            pick_subnet(Scope::Local, &[], &[]).unwrap(),
            net("172.17.0.0/16")
        );
        let taken = [net("172.17.0.0/16"), net("172.18.5.0/24")];
        assert_eq!(
            pick_subnet(Scope::Local, &taken, &[net("172.19.0.1/32")]).unwrap(),
            net("172.20.0.0/16")
        );
        assert_eq!(
            pick_subnet(Scope::Swarm, &[net("10.0.0.0/24")], &[]).unwrap(),
            net("10.0.1.0/24")
        );
        let all: Vec<IpNet> = default_pools(Scope::Local)
            .iter()
            .map(|(p, _)| IpNet::V4(*p))
            .collect();
        assert_eq!(
            pick_subnet(Scope::Local, &all, &[]),
            Err(IpamError::PoolsExhausted)
        );
        // 192.168/16 is cut in /20s.
        let most: Vec<IpNet> = all[..6].to_vec();
        assert_eq!(
            pick_subnet(Scope::Local, &most, &[]).unwrap(),
            net("192.168.0.0/20")
        );
    }

    #[test]
    fn overlap() {
        assert!(overlaps(&net("10.0.0.0/8"), &net("10.1.0.0/16")));
        assert!(overlaps(&net("10.1.0.0/16"), &net("10.0.0.0/8")));
        assert!(!overlaps(&net("10.1.0.0/16"), &net("10.2.0.0/16")));
    }

    #[test]
    fn lowest_free_with_gateway_aux_and_fixed() {
        let mut aux = BTreeMap::new();
        aux.insert("router".to_string(), "10.0.0.3".parse().unwrap());
        let mut s = Subnet::new(
            net("10.0.0.0/29"),
            None,
            first_host(&net("10.0.0.0/29")),
            aux,
        )
        .unwrap();
        assert_eq!(
            s.allocate(None).unwrap(),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            s.allocate(None).unwrap(),
            "10.0.0.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            s.allocate(Some("10.0.0.6".parse().unwrap())).unwrap(),
            "10.0.0.6".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            s.allocate(Some("10.0.0.6".parse().unwrap())),
            Err(IpamError::InUse("10.0.0.6".parse().unwrap()))
        );
        assert!(matches!(
            s.allocate(Some("10.0.0.7".parse().unwrap())),
            Err(IpamError::Reserved(_))
        ));
        assert!(matches!(
            s.allocate(Some("10.9.0.7".parse().unwrap())),
            Err(IpamError::OutsideSubnet { .. })
        ));
        assert_eq!(
            s.allocate(None).unwrap(),
            "10.0.0.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            s.allocate(None),
            Err(IpamError::SubnetFull(net("10.0.0.0/29")))
        );
        s.release("10.0.0.4".parse().unwrap());
        assert_eq!(
            s.allocate(None).unwrap(),
            "10.0.0.4".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn range_and_validation() {
        let mut s = Subnet::new(
            net("10.0.0.0/24"),
            Some(net("10.0.0.128/25")),
            first_host(&net("10.0.0.0/24")),
            BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            s.allocate(None).unwrap(),
            "10.0.0.128".parse::<IpAddr>().unwrap()
        );
        assert!(
            Subnet::new(
                net("10.0.0.0/24"),
                Some(net("10.0.1.0/25")),
                None,
                BTreeMap::new()
            )
            .is_err()
        );
        assert!(
            Subnet::new(
                net("10.0.0.0/24"),
                None,
                Some("10.0.0.255".parse().unwrap()),
                BTreeMap::new()
            )
            .is_err()
        );
        assert!(
            Subnet::new(
                net("10.0.0.0/24"),
                None,
                Some("10.0.1.1".parse().unwrap()),
                BTreeMap::new()
            )
            .is_err()
        );
    }

    #[test]
    fn serial_does_not_reuse_at_once() {
        let mut s = Subnet::new(
            net("10.0.0.0/29"),
            None,
            first_host(&net("10.0.0.0/29")),
            BTreeMap::new(),
        )
        .unwrap()
        .serial(true);
        let a = s.allocate(None).unwrap();
        s.release(a);
        let b = s.allocate(None).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn ipv6() {
        let n = net("fd00:1::/64");
        let mut s = Subnet::new(n, None, first_host(&n), BTreeMap::new()).unwrap();
        assert_eq!(
            s.allocate(None).unwrap(),
            "fd00:1::2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            s.allocate(None).unwrap(),
            "fd00:1::3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            mac_from_ipv4("172.18.0.2".parse().unwrap()),
            [2, 0x42, 172, 18, 0, 2]
        );
    }
}
