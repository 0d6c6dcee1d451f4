//! IPAM glue: subnets for new networks and addresses for endpoints and VIPs, picked from
//! the desired state and then *taken* by the caller's store transaction (`ipam/<net>/<ip>`
//! created only if absent, `subnets/…` likewise), so two writers — two API calls here, or
//! two nodes of a cluster — can never hand out the same one. Addresses picked by calls still
//! in flight on this node are skipped too ([`Claim`]), so concurrent calls rarely collide.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

use ipnet::IpNet;
use sdnet_netstack::ipam::{self, IpamError, Subnet};

use crate::daemon::api::ApiError;
use crate::daemon::state::Desired;
use crate::daemon::store::schema::{NetworkRec, SubnetRec};

#[derive(Default)]
pub struct Ipam {
    pending: Mutex<HashSet<(String, IpAddr)>>,
}

/// Addresses picked by one API call, reserved on this node until it ends.
pub struct Claim<'a> {
    ipam: &'a Ipam,
    pub items: Vec<(String, IpAddr)>,
}

impl Claim<'_> {
    /// Gives back what this call picked so far (before it picks again).
    pub fn clear(&mut self) {
        let mut p = self.ipam.pending.lock().unwrap_or_else(|e| e.into_inner());
        for i in self.items.drain(..) {
            p.remove(&i);
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.clear();
    }
}

fn allocator(
    d: &Desired,
    net: &NetworkRec,
    s: &SubnetRec,
    pending: &HashSet<(String, IpAddr)>,
) -> Result<Subnet, ApiError> {
    let mut sub = Subnet::new(s.subnet, s.ip_range, s.gateway, s.aux.clone())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("network {}: {e}", net.name)))?;
    let used = d
        .ipam
        .get(net.id.as_str())
        .into_iter()
        .flat_map(|m| m.keys().copied())
        .chain(
            pending
                .iter()
                .filter(|(n, _)| *n == net.id)
                .map(|(_, ip)| *ip),
        );
    for ip in used {
        if s.subnet.contains(&ip) {
            let _ = sub.allocate(Some(ip));
        }
    }
    Ok(sub)
}

impl Ipam {
    /// Whether a call in flight on this node has picked this address.
    pub fn is_pending(&self, net: &str, ip: IpAddr) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(net.to_string(), ip))
    }

    pub fn claim(&self) -> Claim<'_> {
        Claim {
            ipam: self,
            items: Vec::new(),
        }
    }

    /// One address per family the network has (`want4`/`want6`: fixed ones).
    pub fn endpoint(
        &self,
        d: &Desired,
        net: &NetworkRec,
        want4: Option<Ipv4Addr>,
        want6: Option<Ipv6Addr>,
        claim: &mut Claim<'_>,
    ) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), ApiError> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut v4 = None;
        let mut v6 = None;
        for s in [net.v4(), net.v6()].into_iter().flatten() {
            let mut sub = allocator(d, net, s, &p)?;
            let want = match s.subnet {
                IpNet::V4(_) => want4.map(IpAddr::V4),
                IpNet::V6(_) => want6.map(IpAddr::V6),
            };
            let ip = sub
                .allocate(want)
                .map_err(|e| ApiError::Conflict(format!("network {}: {e}", net.name)))?;
            p.insert((net.id.clone(), ip));
            claim.items.push((net.id.clone(), ip));
            match ip {
                IpAddr::V4(a) => v4 = Some(a),
                IpAddr::V6(a) => v6 = Some(a),
            }
        }
        for (want, got) in [
            (want4.map(IpAddr::V4), v4.map(IpAddr::V4)),
            (want6.map(IpAddr::V6), v6.map(IpAddr::V6)),
        ] {
            if let Some(w) = want
                && got != Some(w)
            {
                return Err(ApiError::BadRequest(format!(
                    "address {w} is not in subnet of network {}",
                    net.name
                )));
            }
        }
        Ok((v4, v6))
    }

    /// A VIP from the network's IPv4 subnet.
    pub fn vip(
        &self,
        d: &Desired,
        net: &NetworkRec,
        claim: &mut Claim<'_>,
    ) -> Result<Ipv4Addr, ApiError> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let s = net.v4().ok_or_else(|| {
            ApiError::BadRequest(format!("network {} has no IPv4 subnet for a VIP", net.name))
        })?;
        let mut sub = allocator(d, net, s, &p)?;
        match sub.allocate(None) {
            Ok(IpAddr::V4(v)) => {
                p.insert((net.id.clone(), IpAddr::V4(v)));
                claim.items.push((net.id.clone(), IpAddr::V4(v)));
                Ok(v)
            }
            Ok(_) => Err(ApiError::Internal(anyhow::anyhow!(
                "IPv6 VIP from an IPv4 subnet"
            ))),
            Err(e) => Err(ApiError::Conflict(format!("network {}: {e}", net.name))),
        }
    }
}

/// A subnet request of `network create`.
pub struct SubnetReq {
    pub subnet: Option<IpNet>,
    pub ip_range: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub aux: BTreeMap<String, IpAddr>,
}

/// Subnets for a new network: requested ones checked, missing ones picked from the pools of
/// `scope` (local: Docker's bridge pools; swarm: 10.0.0.0/8 in /24s) (skipping `reserved`: host routes and nameservers); `ipv6` adds a ULA /64 if none
/// was requested.
pub fn plan_subnets(
    d: &Desired,
    reqs: &[SubnetReq],
    ipv6: bool,
    reserved: &[IpNet],
    scope: ipam::Scope,
) -> Result<Vec<SubnetRec>, ApiError> {
    let taken: Vec<(IpNet, &str)> = d
        .networks
        .values()
        .flat_map(|n| {
            n.rec
                .subnets
                .iter()
                .map(move |s| (s.subnet, n.rec.name.as_str()))
        })
        .collect();
    let mut out: Vec<SubnetRec> = Vec::new();
    for r in reqs {
        let subnet = match r.subnet {
            Some(s) => {
                if s.trunc() != s {
                    return Err(ApiError::BadRequest(format!(
                        "invalid subnet {s}: host bits are set (did you mean {}?)",
                        s.trunc()
                    )));
                }
                for (t, owner) in taken.iter() {
                    if ipam::overlaps(&s, t) {
                        return Err(ApiError::Conflict(format!(
                            "subnet {s} overlaps with {t} of network {owner}"
                        )));
                    }
                }
                if let Some(o) = out.iter().find(|o| ipam::overlaps(&s, &o.subnet)) {
                    return Err(ApiError::Conflict(format!(
                        "subnet {s} overlaps with {} of this network",
                        o.subnet
                    )));
                }
                s
            }
            None => {
                let all: Vec<IpNet> = taken
                    .iter()
                    .map(|(t, _)| *t)
                    .chain(out.iter().map(|o| o.subnet))
                    .collect();
                ipam::pick_subnet(scope, &all, reserved)
                    .map_err(|e| ApiError::Conflict(e.to_string()))?
            }
        };
        if let Some(r) = r.ip_range
            && r.trunc() != r
        {
            return Err(ApiError::BadRequest(format!(
                "invalid ip-range {r}: host bits are set (did you mean {}?)",
                r.trunc()
            )));
        }
        // Let the allocator check range, gateway and aux against the subnet.
        let gateway = r.gateway.or_else(|| ipam::first_host(&subnet));
        Subnet::new(subnet, r.ip_range, gateway, r.aux.clone())
            .map_err(|e: IpamError| ApiError::BadRequest(e.to_string()))?;
        out.push(SubnetRec {
            subnet,
            ip_range: r.ip_range,
            gateway,
            aux: r.aux.clone(),
        });
    }
    if ipv6 && !out.iter().any(|s| matches!(s.subnet, IpNet::V6(_))) {
        // A unique local /64 from random bits.
        let id = crate::daemon::api::random_id();
        let v: Vec<u16> = (0..3)
            .map(|i| u16::from_str_radix(&id[i * 4..i * 4 + 4], 16).unwrap_or(0))
            .collect();
        let net: IpNet = format!("fd{:02x}:{:x}:{:x}::/64", v[0] & 0xff, v[1], v[2])
            .parse()
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("ULA subnet: {e}")))?;
        let gateway = ipam::first_host(&net);
        out.push(SubnetRec {
            subnet: net,
            ip_range: None,
            gateway,
            aux: BTreeMap::new(),
        });
    }
    Ok(out)
}
