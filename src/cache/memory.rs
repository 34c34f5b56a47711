//! Bounded in-memory chunk store: a sharded CLOCK (second-chance LRU) keyed by
//! `(layer, chunk)`, bounded by bytes.
//!
//! Each shard is a `Mutex<HashMap>` plus a ring of keys in insertion order. A
//! hit sets the entry's reference bit; eviction walks the ring from its head,
//! giving referenced entries a second chance. Values are `Arc<[u8]>` so a
//! reader clones the `Arc` under the lock and copies out after releasing it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// Most shards (power of two).
const MAX_SHARDS: usize = 16;
/// Fewer shards for small budgets so one shard still holds many chunks.
const MIN_SHARD_BYTES: u64 = 8 << 20;

/// Cache key: `(layer << 32) | chunk`.
pub(crate) fn key(layer: u32, chunk: u32) -> u64 {
    (u64::from(layer) << 32) | u64::from(chunk)
}

struct Entry {
    data: Arc<[u8]>,
    referenced: bool,
}

#[derive(Default)]
struct Shard {
    map: HashMap<u64, Entry>,
    /// Exactly the keys of `map`, oldest first.
    ring: VecDeque<u64>,
    bytes: u64,
}

/// The chunk store.
pub(crate) struct MemoryCache {
    shards: Box<[Mutex<Shard>]>,
    mask: usize,
    shard_budget: u64,
    hasher: std::collections::hash_map::RandomState,
}

impl fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCache")
            .field("budget", &(self.shard_budget * self.shards.len() as u64))
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl MemoryCache {
    /// A store holding at most about `budget` bytes of chunk data.
    pub(crate) fn new(budget: u64) -> Self {
        let want = (budget / MIN_SHARD_BYTES).clamp(1, MAX_SHARDS as u64) as usize;
        let n = if want.is_power_of_two() {
            want
        } else {
            want.next_power_of_two() / 2
        };
        MemoryCache {
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
            mask: n - 1,
            shard_budget: budget / n as u64,
            hasher: Default::default(),
        }
    }

    fn shard(&self, key: u64) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) & self.mask]
    }

    /// The chunk under `key`, marking it recently used.
    pub(crate) fn get(&self, key: u64) -> Option<Arc<[u8]>> {
        let mut shard = lock(self.shard(key));
        let e = shard.map.get_mut(&key)?;
        e.referenced = true;
        Some(e.data.clone())
    }

    /// Whether `key` is present (does not count as a use).
    pub(crate) fn contains(&self, key: u64) -> bool {
        lock(self.shard(key)).map.contains_key(&key)
    }

    /// Stores `data` under `key` (no-op if present or larger than a shard's
    /// budget); returns how many entries were evicted to make room.
    pub(crate) fn insert(&self, key: u64, data: Arc<[u8]>) -> u64 {
        let len = data.len() as u64;
        if len > self.shard_budget {
            return 0;
        }
        let mut shard = lock(self.shard(key));
        if shard.map.contains_key(&key) {
            return 0;
        }
        let mut evicted = 0;
        while shard.bytes + len > self.shard_budget {
            let Some(victim) = shard.ring.pop_front() else {
                break;
            };
            let e = shard.map.get_mut(&victim).expect("ring and map agree");
            if e.referenced {
                e.referenced = false;
                shard.ring.push_back(victim);
                continue;
            }
            let e = shard.map.remove(&victim).expect("ring and map agree");
            shard.bytes -= e.data.len() as u64;
            evicted += 1;
        }
        shard.bytes += len;
        shard.ring.push_back(key);
        shard.map.insert(
            key,
            Entry {
                data,
                referenced: false,
            },
        );
        evicted
    }

    /// Bytes currently held.
    pub(crate) fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| lock(s).bytes).sum()
    }

    /// Entries currently held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_bytes_and_second_chance() {
        let c = MemoryCache::new(1000);
        // All keys of one shard would be ideal; just insert many and check the bound.
        let mut evicted = 0;
        for i in 0..1000u32 {
            evicted += c.insert(key(0, i), Arc::from(vec![i as u8; 10]));
            assert!(c.bytes() <= 1000);
        }
        assert!(evicted > 0);
        assert_eq!(c.len() as u64 + evicted, 1000);
        // Present entries return their bytes.
        for i in 0..1000u32 {
            if let Some(d) = c.get(key(0, i)) {
                assert_eq!(&d[..], &[i as u8; 10][..]);
            }
        }
        // Too-large values are not stored.
        assert_eq!(c.insert(key(1, 0), Arc::from(vec![0u8; 2000])), 0);
        assert!(!c.contains(key(1, 0)));
    }

    #[test]
    fn large_budgets_are_sharded() {
        assert_eq!(MemoryCache::new(512 << 20).shards.len(), 16);
        assert_eq!(MemoryCache::new(24 << 20).shards.len(), 2);
        assert_eq!(MemoryCache::new(1 << 20).shards.len(), 1);
        assert_eq!(MemoryCache::new(0).shards.len(), 1);
    }

    #[test]
    fn hot_entry_survives_a_scan() {
        let c = MemoryCache::new(10_000);
        let hot = key(7, 7);
        c.insert(hot, Arc::from(vec![1u8; 100]));
        for i in 0..10_000u32 {
            assert!(c.get(hot).is_some(), "hot entry evicted at {i}");
            c.insert(key(0, i), Arc::from(vec![0u8; 100]));
        }
    }
}
