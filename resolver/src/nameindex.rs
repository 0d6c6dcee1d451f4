//! The big per-network name map, built for lookups in tables of 100,000 names.
//!
//! A persistent HAMT (`imbl`) walks several nodes per lookup; in a big table each is likely a
//! cache miss, and that walk was most of the user-space cost of a query at 100,000 names.
//! `NameIndex` instead answers from an immutable open-addressing table (`Flat`: the home slot
//! is computed from the hash, so a hit is usually one cache line) plus a small persistent map
//! of the changes made since that table was built (`delta`). A change goes to the delta; when
//! the delta reaches a quarter of the table (or `DELTA_MAX`), the table is rebuilt with the
//! delta folded in, so the rebuild is paid for by the changes before it (see `DELTA_MAX` for
//! the bound), snapshots stay cheap to clone (an `Arc` and a HAMT root) and old snapshots keep
//! their table, so readers never wait.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use crate::table::Map;

/// Bytes kept inline up to 22 (sandbox names, short IDs, hostnames, `c1.net` in wire format),
/// so reading them touches the slot a lookup is already on instead of another heap object;
/// longer ones shared on the heap. 24 bytes either way.
#[derive(Clone, Debug)]
pub(crate) enum SmallBytes {
    Inline { len: u8, bytes: [u8; SMALL_INLINE] },
    Shared(Arc<[u8]>),
}

const SMALL_INLINE: usize = 22;
const _: () = assert!(size_of::<SmallBytes>() == 24);

impl SmallBytes {
    pub(crate) fn new(b: &[u8]) -> Self {
        if b.len() <= SMALL_INLINE {
            let mut bytes = [0; SMALL_INLINE];
            bytes[..b.len()].copy_from_slice(b);
            SmallBytes::Inline {
                len: b.len() as u8,
                bytes,
            }
        } else {
            SmallBytes::Shared(b.into())
        }
    }

    /// Like `new`, but shares `b` instead of copying it when it does not fit inline.
    pub(crate) fn from_shared(b: &Arc<[u8]>) -> Self {
        if b.len() <= SMALL_INLINE {
            Self::new(b)
        } else {
            SmallBytes::Shared(b.clone())
        }
    }

    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            SmallBytes::Inline { len, bytes } => &bytes[..*len as usize],
            SmallBytes::Shared(b) => b,
        }
    }
}

/// A name as a map key (`SmallBytes` holding a str).
#[derive(Clone)]
pub(crate) struct NameKey(SmallBytes);

impl NameKey {
    pub(crate) fn new(s: &str) -> Self {
        NameKey(SmallBytes::new(s.as_bytes()))
    }

    #[inline]
    pub(crate) fn as_str(&self) -> &str {
        // SAFETY: only ever made from a whole &str in `new`; this runs on every key comparison
        // of a lookup, so it is not re-validated.
        unsafe { std::str::from_utf8_unchecked(self.0.as_bytes()) }
    }
}

impl Borrow<str> for NameKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

// Hash and Eq as the str, so that maps can be asked with a &str (`Borrow` requires it).
impl Hash for NameKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialEq for NameKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for NameKey {}

/// Changes kept aside before the table is rebuilt: more than `DELTA_MIN` (small networks live
/// in the delta alone) and more than a quarter of the table, but never more than `DELTA_MAX`,
/// so that the delta, asked first on every lookup, stays small enough to sit in cache. A
/// change thus costs max(4, n / DELTA_MAX) slot copies amortized: 4 up to 8,192 names, ~100
/// (a few µs, on the writer) at 200,000.
const DELTA_MIN: usize = 64;
const DELTA_MAX: usize = 2048;

/// Keys of a `FlatIndex`: a `NameKey` asked with a &str, an address asked with itself.
pub(crate) trait IndexKey: Clone + Hash + Eq + Borrow<Self::Query> {
    type Query: ?Sized + Hash + Eq;
}

impl IndexKey for NameKey {
    type Query = str;
}

impl IndexKey for std::net::IpAddr {
    type Query = std::net::IpAddr;
}

impl IndexKey for u32 {
    type Query = u32;
}

#[derive(Clone)]
pub(crate) struct FlatIndex<K: IndexKey, V: Clone> {
    base: Arc<Flat<K, V>>,
    /// Changes since `base` was built; None: removed.
    delta: Map<K, Option<V>>,
    len: usize,
}

/// The big name map of a network.
pub(crate) type NameIndex<V> = FlatIndex<NameKey, V>;

impl<K: IndexKey, V: Clone> Default for FlatIndex<K, V> {
    fn default() -> Self {
        FlatIndex {
            base: Arc::new(Flat::build(Vec::new())),
            delta: Map::default(),
            len: 0,
        }
    }
}

impl<K: IndexKey, V: Clone> FlatIndex<K, V> {
    #[inline]
    pub(crate) fn get(&self, key: &K::Query) -> Option<&V> {
        if !self.delta.is_empty()
            && let Some(change) = self.delta.get(key)
        {
            return change.as_ref();
        }
        self.base.get(key)
    }

    pub(crate) fn insert(&mut self, key: K, v: V) {
        if self.get(key.borrow()).is_none() {
            self.len += 1;
        }
        self.delta.insert(key, Some(v));
        self.maybe_rebuild();
    }

    pub(crate) fn remove(&mut self, key: K) {
        if self.get(key.borrow()).is_none() {
            return;
        }
        self.len -= 1;
        if self.base.get(key.borrow()).is_some() {
            self.delta.insert(key, None);
        } else {
            self.delta.remove(key.borrow());
        }
        self.maybe_rebuild();
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every entry, in no particular order.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> Vec<(K, V)> {
        let mut out = Vec::with_capacity(self.len);
        for slot in self.base.slots.iter().flatten() {
            if !self.delta.contains_key(slot.key.borrow()) {
                out.push((slot.key.clone(), slot.value.clone()));
            }
        }
        for (k, v) in self.delta.iter() {
            if let Some(v) = v {
                out.push((k.clone(), v.clone()));
            }
        }
        out
    }

    fn maybe_rebuild(&mut self) {
        let d = self.delta.len();
        if d <= DELTA_MIN || (d * 4 <= self.base.len && d <= DELTA_MAX) {
            return;
        }
        let mut entries = Vec::with_capacity(self.len);
        for slot in self.base.slots.iter().flatten() {
            if !self.delta.contains_key(slot.key.borrow()) {
                entries.push((slot.key.clone(), slot.value.clone()));
            }
        }
        for (k, v) in self.delta.iter() {
            if let Some(v) = v {
                entries.push((k.clone(), v.clone()));
            }
        }
        self.base = Arc::new(Flat::build(entries));
        self.delta = Map::default();
    }
}

/// An immutable open-addressing hash table with linear probing, 2/3 full (so a probe always
/// ends at an empty slot). The table has exactly 1.5 × its entries' slots, not the next power
/// of two (which wastes up to half of the biggest allocation of the tables): the home slot is
/// the hash scaled to the table (`home`), one multiplication instead of a mask.
struct Flat<K, V> {
    hasher: foldhash::fast::RandomState,
    slots: Box<[Option<Slot<K, V>>]>,
    len: usize,
}

struct Slot<K, V> {
    hash: u64,
    key: K,
    value: V,
}

impl<K: IndexKey, V> Flat<K, V> {
    fn build(entries: Vec<(K, V)>) -> Self {
        let len = entries.len();
        let cap = if len == 0 { 0 } else { len + len / 2 + 1 };
        let mut slots: Box<[Option<Slot<K, V>>]> = (0..cap).map(|_| None).collect();
        let hasher = foldhash::fast::RandomState::default();
        for (key, value) in entries {
            let hash = hasher.hash_one::<&K::Query>(key.borrow());
            let mut i = home(hash, cap);
            while slots[i].is_some() {
                i = next(i, cap);
            }
            slots[i] = Some(Slot { hash, key, value });
        }
        Flat { hasher, slots, len }
    }

    #[inline]
    fn get(&self, key: &K::Query) -> Option<&V> {
        if self.len == 0 {
            return None;
        }
        let hash = self.hasher.hash_one(key);
        let cap = self.slots.len();
        let mut i = home(hash, cap);
        loop {
            match &self.slots[i] {
                None => return None,
                Some(s) if s.hash == hash && s.key.borrow() == key => return Some(&s.value),
                Some(_) => i = next(i, cap),
            }
        }
    }
}

/// The home slot of a hash in a table of `cap` slots: the hash as a fraction of 2^64, times
/// `cap` (its high bits decide, and foldhash mixes those well).
#[inline]
fn home(hash: u64, cap: usize) -> usize {
    ((hash as u128 * cap as u128) >> 64) as usize
}

#[inline]
fn next(i: usize, cap: usize) -> usize {
    if i + 1 == cap { 0 } else { i + 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_a_plain_map_through_rebuilds() {
        let mut idx: NameIndex<u32> = NameIndex::default();
        let mut model = std::collections::HashMap::new();
        let mut snapshots = Vec::new();
        // Deterministic churn: inserts, overwrites and removals across several rebuilds,
        // with names on both sides of the inline limit.
        let mut x: u64 = 1;
        for step in 0..20_000u32 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = (x >> 33) % 3000;
            let name = if n.is_multiple_of(7) {
                format!("a-rather-long-name-over-the-inline-limit-{n}")
            } else {
                format!("c{n}")
            };
            if (x >> 20).is_multiple_of(4) {
                idx.remove(NameKey::new(&name));
                model.remove(&name);
            } else {
                idx.insert(NameKey::new(&name), step);
                model.insert(name, step);
            }
            if step % 5000 == 0 {
                snapshots.push((idx.clone(), model.clone()));
            }
        }
        assert_eq!(idx.len(), model.len());
        for n in 0..3100 {
            for name in [
                format!("c{n}"),
                format!("a-rather-long-name-over-the-inline-limit-{n}"),
            ] {
                assert_eq!(idx.get(&name), model.get(&name), "{name}");
            }
        }
        // Snapshots taken along the way still answer as they did.
        for (snap, m) in &snapshots {
            assert_eq!(snap.len(), m.len());
            for (k, v) in m {
                assert_eq!(snap.get(k), Some(v));
            }
        }
        assert!(
            idx.get("C1").is_none(),
            "keys are exact (callers lower-case)"
        );
        assert!(idx.delta.len() <= DELTA_MIN.max(idx.base.len / 4).min(DELTA_MAX));
    }
}
