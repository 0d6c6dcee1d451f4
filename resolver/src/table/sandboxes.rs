//! The writer's copy of the sandboxes, compact: at 100,000 sandboxes this is most of what the
//! writer holds, so a sandbox is a binary ID and one record with the fields the tables derive
//! from, addresses inline, network references shared (`Interner`) and the rarely set fields
//! (hostname, upstreams, task) behind one optional box. Records and views are derived from
//! it on demand, never stored.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use smallvec::SmallVec;

use super::ViewIdx;
use crate::model::{Endpoint, LinkAlias, Sandbox, TaskInfo, Upstream};

/// A sandbox ID (64 lowercase hex digits) as its 32 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct SbId([u8; 32]);

impl SbId {
    /// None unless `s` is 64 lowercase hex digits (`model::check_sandbox_id`).
    pub(super) fn parse(s: &str) -> Option<SbId> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(SbId(out))
    }

    /// The first `digits` hex digits (64: the whole ID; 12: the short ID).
    pub(super) fn hex(&self, digits: usize) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let nibbles = self.0.iter().flat_map(|b| [b >> 4, b & 15]);
        nibbles
            .take(digits)
            .map(|n| HEX[n as usize] as char)
            .collect()
    }
}

/// One sandbox as the writer keeps it.
pub(super) struct SbRec {
    /// Its view's index, which is also its holder id: given once, never reused, because
    /// listeners keep it.
    pub view: ViewIdx,
    /// Shared with its view.
    pub name: Arc<str>,
    pub endpoints: SmallVec<[Ep; 1]>,
    extra: Option<Box<Extra>>,
}

pub(super) struct Ep {
    /// The network ID or name as given (resolved when records are derived), shared.
    pub network: Arc<str>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub aliases: Box<[Box<str>]>,
}

/// What most sandboxes do not have.
struct Extra {
    hostname: Option<Box<str>>,
    upstreams: Box<[Upstream]>,
    task: Option<TaskInfo>,
    links: Box<[LinkAlias]>,
}

impl SbRec {
    pub(super) fn new(sb: &Sandbox, view: ViewIdx, interner: &mut Interner) -> SbRec {
        let extra = (sb.hostname.is_some()
            || !sb.upstreams.is_empty()
            || sb.task.is_some()
            || !sb.links.is_empty())
        .then(|| {
            Box::new(Extra {
                hostname: sb.hostname.as_deref().map(Into::into),
                upstreams: sb.upstreams.as_slice().into(),
                task: sb.task.clone(),
                links: sb.links.as_slice().into(),
            })
        });
        SbRec {
            view,
            name: sb.name.as_str().into(),
            endpoints: sb
                .endpoints
                .iter()
                .map(|e| Ep {
                    network: interner.get(&e.network),
                    ipv4: e.ipv4,
                    ipv6: e.ipv6,
                    aliases: e.aliases.iter().map(|a| a.as_str().into()).collect(),
                })
                .collect(),
            extra,
        }
    }

    pub(super) fn hostname(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.hostname.as_deref())
    }
    pub(super) fn upstreams(&self) -> &[Upstream] {
        self.extra.as_ref().map_or(&[], |e| &e.upstreams)
    }
    pub(super) fn task(&self) -> Option<&TaskInfo> {
        self.extra.as_ref().and_then(|e| e.task.as_ref())
    }
    pub(super) fn links(&self) -> &[LinkAlias] {
        self.extra.as_ref().map_or(&[], |e| &e.links)
    }

    /// Its addresses: the sources its queries come from.
    pub(super) fn sources(&self) -> SmallVec<[IpAddr; 2]> {
        self.endpoints
            .iter()
            .flat_map(|e| [e.ipv4.map(IpAddr::V4), e.ipv6.map(IpAddr::V6)])
            .flatten()
            .collect()
    }

    /// Whether it is `sb` (its ID aside).
    pub(super) fn is(&self, sb: &Sandbox) -> bool {
        *self.name == *sb.name
            && self.hostname() == sb.hostname.as_deref()
            && self.upstreams() == sb.upstreams.as_slice()
            && self.task() == sb.task.as_ref()
            && self.links() == sb.links.as_slice()
            && self.endpoints.len() == sb.endpoints.len()
            && self.endpoints.iter().zip(&sb.endpoints).all(|(a, b)| {
                *a.network == *b.network
                    && a.ipv4 == b.ipv4
                    && a.ipv6 == b.ipv6
                    && a.aliases.len() == b.aliases.len()
                    && a.aliases.iter().zip(&b.aliases).all(|(x, y)| **x == **y)
            })
    }

    pub(super) fn to_model(&self, id: &SbId) -> Sandbox {
        Sandbox {
            id: id.hex(64),
            name: self.name.to_string(),
            hostname: self.hostname().map(Into::into),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| Endpoint {
                    network: e.network.to_string(),
                    ipv4: e.ipv4,
                    ipv6: e.ipv6,
                    aliases: e.aliases.iter().map(|a| a.to_string()).collect(),
                })
                .collect(),
            upstreams: self.upstreams().to_vec(),
            task: self.task().cloned(),
            links: self.links().to_vec(),
        }
    }
}

/// Network references (IDs or names, a handful of distinct strings) shared by all sandboxes.
#[derive(Default)]
pub(super) struct Interner {
    set: HashSet<Arc<str>>,
    /// Size after the last `prune`.
    kept: usize,
}

impl Interner {
    pub(super) fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.set.get(s) {
            return a.clone();
        }
        let a: Arc<str> = s.into();
        self.set.insert(a.clone());
        a
    }

    /// Forgets strings no sandbox refers to any more.
    pub(super) fn prune(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
        self.kept = self.set.len();
    }

    /// Prunes once the set has doubled since the last time (amortized O(1) per change, and
    /// at most twice the strings in use plus a few are kept).
    pub(super) fn prune_if_grown(&mut self) {
        if self.set.len() > 2 * self.kept + 8 {
            self.prune();
        }
    }
}

/// All sandboxes by ID.
#[derive(Default)]
pub(super) struct Sandboxes {
    pub by_id: HashMap<SbId, SbRec>,
    pub interner: Interner,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_bad_ids_are_refused() {
        let hex = "0123456789abcdef".repeat(4);
        let id = SbId::parse(&hex).unwrap();
        assert_eq!(id.hex(64), hex);
        assert_eq!(id.hex(12), "0123456789ab");
        for bad in [&hex[..63], &hex.to_uppercase(), &format!("{}g", &hex[..63])] {
            assert_eq!(SbId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_record_gives_back_the_sandbox_it_was_made_from() {
        let mut interner = Interner::default();
        let id = "ab".repeat(32);
        let plain = Sandbox {
            id: id.clone(),
            name: "c1".into(),
            hostname: None,
            endpoints: vec![Endpoint {
                network: "n1".into(),
                ipv4: Some(Ipv4Addr::new(10, 0, 0, 1)),
                ipv6: None,
                aliases: vec![],
            }],
            upstreams: vec![],
            task: None,
            links: vec![],
        };
        let mut full = plain.clone();
        full.hostname = Some("Host".into());
        full.upstreams = vec!["192.0.2.1:5353".parse().unwrap()];
        full.task = Some(TaskInfo {
            service: "web".into(),
            slot: 2,
            healthy: false,
        });
        full.endpoints.push(Endpoint {
            network: "n2".into(),
            ipv4: None,
            ipv6: Some("fd00::2".parse().unwrap()),
            aliases: vec!["Db".into(), "cache".into()],
        });
        full.links = vec![LinkAlias {
            name: "db".into(),
            network: "n2".into(),
            ipv4: None,
            ipv6: Some("fd00::3".parse().unwrap()),
        }];
        let sid = SbId::parse(&id).unwrap();
        for sb in [&plain, &full] {
            let rec = SbRec::new(sb, 7, &mut interner);
            assert!(rec.is(sb));
            assert_eq!(rec.to_model(&sid), *sb);
        }
        let rec = SbRec::new(&full, 7, &mut interner);
        assert!(!rec.is(&plain));
        let mut other = full.clone();
        other.endpoints[1].aliases[1] = "cache2".into();
        assert!(!rec.is(&other));
        let mut other = full.clone();
        other.links[0].ipv6 = None;
        assert!(!rec.is(&other), "a link's address is compared");
        // Both records share one copy of "n1".
        assert_eq!(interner.set.len(), 2);
        drop(rec);
        interner.prune();
        assert!(interner.set.is_empty());
    }
}
