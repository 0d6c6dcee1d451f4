//! Address management, pure (no kernel, no I/O).
//!
//! - Picking a subnet for a new network from Docker's default pools, skipping subnets that
//!   overlap existing networks or reserved prefixes (host routes, resolv.conf nameservers).
//! - Allocating addresses inside one subnet: the lowest free address, or (serial mode, as
//!   swarm networks do) the next one after the last handed out, so a freed address is not
//!   reused at once. Network, broadcast, gateway and aux addresses are never handed out.
//!
//! State is serde-serializable so the daemon can persist allocations. IPv6 subnets are never
//! enumerated: allocation walks forward from a cursor over the (sparse) set of used addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error(
        "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network"
    )]
    PoolsExhausted,
    #[error("no available addresses left in {0}")]
    SubnetFull(IpNet),
    #[error("subnets {0} and {1} overlap")]
    Overlap(IpNet, IpNet),
    #[error("address {ip} is not in subnet {subnet}")]
    OutsideSubnet { ip: IpAddr, subnet: IpNet },
    #[error("ip-range {range} is not within subnet {subnet}")]
    RangeOutsideSubnet { range: IpNet, subnet: IpNet },
    #[error("gateway {0} is not a usable address of subnet {1}")]
    BadGateway(IpAddr, IpNet),
    #[error("address {0} is already in use")]
    InUse(IpAddr),
    #[error("address {0} is reserved (network, broadcast, gateway or aux address)")]
    Reserved(IpAddr),
}

/// Which default pools a network draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    /// Bridge networks: 172.17-19/16, 172.20/14, 172.24/14, 172.28/14 in /16s, 192.168/16 in
    /// /20s.
    Local,
    /// Swarm (overlay) networks: 10.0.0.0/8 in /24s.
    Swarm,
}

/// A default address pool: `base` cut into subnets of prefix length `size` (Docker's
/// `default-address-pools` entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub base: IpNet,
    pub size: u8,
}

const fn v4pool(a: u8, b: u8, len: u8, size: u8) -> Pool {
    Pool {
        base: IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, 0, 0), len)),
        size,
    }
}

const LOCAL_POOLS: [Pool; 7] = [
    v4pool(172, 17, 16, 16),
    v4pool(172, 18, 16, 16),
    v4pool(172, 19, 16, 16),
    v4pool(172, 20, 14, 16),
    v4pool(172, 24, 14, 16),
    v4pool(172, 28, 14, 16),
    v4pool(192, 168, 16, 20),
];
const SWARM_POOLS: [Pool; 1] = [v4pool(10, 0, 8, 24)];

impl Pool {
    /// Docker's default pools for `scope`, in the order they are tried.
    pub fn defaults(scope: Scope) -> &'static [Pool] {
        match scope {
            Scope::Local => &LOCAL_POOLS,
            Scope::Swarm => &SWARM_POOLS,
        }
    }

    /// The subnets of this pool, in order (none if `size` is shorter than the base prefix).
    pub fn subnets(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.base.subnets(self.size).into_iter().flatten()
    }
}

/// Docker's default pools as (base, subnet size) pairs.
pub fn default_pools(scope: Scope) -> Vec<(IpNet, u8)> {
    Pool::defaults(scope)
        .iter()
        .map(|p| (p.base, p.size))
        .collect()
}

/// Whether two prefixes share any address (false across address families).
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Errors with [`IpamError::Overlap`] if any two of `nets` overlap.
pub fn check_disjoint(nets: &[IpNet]) -> Result<(), IpamError> {
    for (i, a) in nets.iter().enumerate() {
        for b in &nets[i + 1..] {
            if overlaps(a, b) {
                return Err(IpamError::Overlap(*a, *b));
            }
        }
    }
    Ok(())
}

/// The first subnet of the default pools of `scope` that overlaps neither a `taken` subnet
/// (other networks) nor a `reserved` prefix (host routes, nameservers).
pub fn pick_subnet(scope: Scope, taken: &[IpNet], reserved: &[IpNet]) -> Result<IpNet, IpamError> {
    pick_subnet_from(Pool::defaults(scope), taken, reserved)
}

/// [`pick_subnet`] over explicit pools (a daemon's configured `default-address-pools`).
pub fn pick_subnet_from(
    pools: &[Pool],
    taken: &[IpNet],
    reserved: &[IpNet],
) -> Result<IpNet, IpamError> {
    for pool in pools {
        // A pool wholly covered by one prefix has nothing to offer: skip its enumeration.
        if taken.iter().chain(reserved).any(|t| t.contains(&pool.base)) {
            continue;
        }
        for s in pool.subnets() {
            if !taken.iter().chain(reserved).any(|t| overlaps(&s, t)) {
                return Ok(s);
            }
        }
    }
    Err(IpamError::PoolsExhausted)
}

/// The first host address of a subnet (Docker's default gateway).
pub fn first_host(net: &IpNet) -> Option<IpAddr> {
    let net = net.trunc();
    let has_edges = match net {
        IpNet::V4(n) => n.prefix_len() < 31,
        IpNet::V6(n) => n.prefix_len() < 127,
    };
    if !has_edges {
        return Some(net.network());
    }
    Some(from_u128(to_u128(net.network()) + 1, net.addr().is_ipv4()))
}

/// Docker's MAC for an IPv4 endpoint: `02:42` followed by the address.
pub fn mac_from_ipv4(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        // Callers only pass values derived from IPv4 addresses.
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// Allocated addresses as maximal runs of consecutive values (start -> end, inclusive), so
/// finding the first free address at or after some point is a lookup, not a walk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Runs(BTreeMap<u128, u128>);

impl Runs {
    /// The run containing `v`.
    fn find(&self, v: u128) -> Option<(u128, u128)> {
        let (&s, &e) = self.0.range(..=v).next_back()?;
        (v <= e).then_some((s, e))
    }

    fn insert(&mut self, v: u128) {
        if self.find(v).is_some() {
            return;
        }
        let (mut start, mut end) = (v, v);
        if let Some(l) = v.checked_sub(1).and_then(|p| self.find(p)) {
            self.0.remove(&l.0);
            start = l.0;
        }
        if let Some(r) = v.checked_add(1).and_then(|n| self.find(n)) {
            self.0.remove(&r.0);
            end = r.1;
        }
        self.0.insert(start, end);
    }

    fn remove(&mut self, v: u128) {
        let Some((s, e)) = self.find(v) else {
            return;
        };
        self.0.remove(&s);
        if s < v {
            self.0.insert(s, v - 1);
        }
        if v < e {
            self.0.insert(v + 1, e);
        }
    }

    /// The first value at or after `v` that is not allocated (None past u128::MAX).
    fn skip(&self, v: u128) -> Option<u128> {
        match self.find(v) {
            Some((_, e)) => e.checked_add(1),
            None => Some(v),
        }
    }
}

/// The serialized form of [`Subnet`]: the allocated set as a plain list of addresses.
#[derive(Serialize, Deserialize)]
struct SubnetRepr {
    net: IpNet,
    range: Option<IpNet>,
    gateway: Option<IpAddr>,
    #[serde(default)]
    aux: BTreeMap<String, IpAddr>,
    #[serde(default)]
    allocated: BTreeSet<IpAddr>,
    #[serde(default)]
    serial: bool,
    #[serde(default)]
    last: Option<IpAddr>,
}

impl From<SubnetRepr> for Subnet {
    fn from(r: SubnetRepr) -> Subnet {
        let mut runs = Runs::default();
        for ip in &r.allocated {
            runs.insert(to_u128(*ip));
        }
        Subnet {
            net: r.net,
            range: r.range,
            gateway: r.gateway,
            aux: r.aux,
            allocated: r.allocated,
            serial: r.serial,
            last: r.last,
            runs,
        }
    }
}

impl From<Subnet> for SubnetRepr {
    fn from(s: Subnet) -> SubnetRepr {
        SubnetRepr {
            net: s.net,
            range: s.range,
            gateway: s.gateway,
            aux: s.aux,
            allocated: s.allocated,
            serial: s.serial,
            last: s.last,
        }
    }
}

/// One subnet's configuration and allocations. Serialized as `{ net, range, gateway, aux,
/// allocated, serial, last }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "SubnetRepr", into = "SubnetRepr")]
pub struct Subnet {
    net: IpNet,
    /// Dynamic allocations come from here (within `net`); fixed ones may be anywhere in `net`.
    range: Option<IpNet>,
    gateway: Option<IpAddr>,
    /// Addresses reserved by name (e.g. a router outside our control).
    aux: BTreeMap<String, IpAddr>,
    allocated: BTreeSet<IpAddr>,
    /// Serial allocation: continue after the last address handed out.
    serial: bool,
    /// The last address handed out dynamically (the serial cursor).
    last: Option<IpAddr>,
    /// `allocated` as runs, for searching.
    runs: Runs,
}

impl Subnet {
    /// Validates and creates an empty allocator. Host bits of `net` and `range` are cleared;
    /// `range` must lie within `net`, `gateway` must be a usable address of it (not the
    /// network or broadcast address) and `aux` addresses must be in it.
    pub fn new(
        net: IpNet,
        range: Option<IpNet>,
        gateway: Option<IpAddr>,
        aux: BTreeMap<String, IpAddr>,
    ) -> Result<Subnet, IpamError> {
        let net = net.trunc();
        let range = range.map(|r| r.trunc());
        if let Some(r) = range
            && !(r.prefix_len() >= net.prefix_len() && net.contains(&r.network()))
        {
            return Err(IpamError::RangeOutsideSubnet {
                range: r,
                subnet: net,
            });
        }
        let s = Subnet {
            net,
            range,
            gateway,
            aux,
            allocated: BTreeSet::new(),
            serial: false,
            last: None,
            runs: Runs::default(),
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

    /// Turns serial allocation on or off.
    pub fn serial(mut self, on: bool) -> Subnet {
        self.serial = on;
        self
    }

    pub fn is_serial(&self) -> bool {
        self.serial
    }

    pub fn net(&self) -> IpNet {
        self.net
    }

    pub fn range(&self) -> Option<IpNet> {
        self.range
    }

    pub fn gateway(&self) -> Option<IpAddr> {
        self.gateway
    }

    pub fn aux(&self) -> &BTreeMap<String, IpAddr> {
        &self.aux
    }

    /// Addresses handed out, in order.
    pub fn allocated(&self) -> impl Iterator<Item = &IpAddr> {
        self.allocated.iter()
    }

    pub fn is_allocated(&self, ip: IpAddr) -> bool {
        self.allocated.contains(&ip)
    }

    /// Network or (IPv4) broadcast address of a subnet that has them (not /31, /32, /127,
    /// /128). IPv6 has no broadcast; its first address is the subnet-router anycast.
    fn edge(&self, ip: IpAddr) -> bool {
        match self.net {
            IpNet::V4(n) if n.prefix_len() < 31 => {
                ip == IpAddr::V4(n.network()) || ip == IpAddr::V4(n.broadcast())
            }
            IpNet::V6(n) if n.prefix_len() < 127 => ip == IpAddr::V6(n.network()),
            _ => false,
        }
    }

    /// Never handed out: network, broadcast, gateway, aux addresses.
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        self.edge(ip) || self.gateway == Some(ip) || self.aux.values().any(|a| *a == ip)
    }

    /// Allocates `want` (anywhere in the subnet, even outside the ip-range, as Docker allows
    /// for fixed addresses), or else the next free address of the range: the lowest one, or
    /// in serial mode the first after the last one handed out, wrapping around.
    pub fn allocate(&mut self, want: Option<IpAddr>) -> Result<IpAddr, IpamError> {
        if let Some(ip) = want {
            if !self.net.contains(&ip) {
                return Err(IpamError::OutsideSubnet {
                    ip,
                    subnet: self.net,
                });
            }
            if self.is_reserved(ip) {
                return Err(IpamError::Reserved(ip));
            }
            if !self.allocated.insert(ip) {
                return Err(IpamError::InUse(ip));
            }
            self.runs.insert(to_u128(ip));
            return Ok(ip);
        }
        let span = self.range.unwrap_or(self.net);
        let (lo, hi) = (to_u128(span.network()), to_u128(span.broadcast()));
        let start = match (self.serial, self.last) {
            (true, Some(l)) if span.contains(&l) && to_u128(l) < hi => to_u128(l) + 1,
            _ => lo,
        };
        let found = self.first_free(start, hi).or_else(|| {
            (start > lo)
                .then(|| self.first_free(lo, start - 1))
                .flatten()
        });
        let Some(ip) = found else {
            return Err(IpamError::SubnetFull(self.net));
        };
        self.allocated.insert(ip);
        self.runs.insert(to_u128(ip));
        self.last = Some(ip);
        Ok(ip)
    }

    /// The lowest usable address in `[from, to]`: jumps over runs of allocated addresses
    /// and steps over the few reserved ones, so a huge (IPv6) or dense range costs a few
    /// lookups, not a walk.
    fn first_free(&self, from: u128, to: u128) -> Option<IpAddr> {
        let v4 = self.net.addr().is_ipv4();
        let mut v = from;
        loop {
            v = self.runs.skip(v)?;
            if v > to {
                return None;
            }
            let ip = from_u128(v, v4);
            if !self.is_reserved(ip) {
                return Some(ip);
            }
            v = v.checked_add(1)?;
        }
    }

    /// Frees an address; true if it was allocated.
    pub fn release(&mut self, ip: IpAddr) -> bool {
        self.runs.remove(to_u128(ip));
        self.allocated.remove(&ip)
    }

    /// How many addresses could still be handed out dynamically (saturating; for reports).
    pub fn available(&self) -> u128 {
        let span = self.range.unwrap_or(self.net);
        let total = to_u128(span.broadcast()) - to_u128(span.network()) + 1;
        let used = self
            .allocated
            .iter()
            .filter(|ip| span.contains(*ip))
            .count() as u128;
        let reserved = self
            .aux
            .values()
            .copied()
            .chain(self.gateway)
            .chain([self.net.network(), self.net.broadcast()])
            .filter(|ip| span.contains(ip) && self.is_reserved(*ip) && !self.allocated.contains(ip))
            .collect::<BTreeSet<_>>()
            .len() as u128;
        total.saturating_sub(used + reserved)
    }
}

#[cfg(test)]
mod tests;
