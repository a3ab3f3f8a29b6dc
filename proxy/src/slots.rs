//! A fixed budget of slots (open TCP connections, open UDP flows, pipes): taken before the work
//! starts, given back by a guard's destructor however the work ends, so the count stays exact.
//! [`SharedPool`] adds a share per key (a client address) so one key cannot take every slot.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustc_hash::FxBuildHasher;

#[derive(Debug)]
pub struct SlotPool {
    taken: AtomicUsize,
    max: usize,
}

impl SlotPool {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(SlotPool { taken: AtomicUsize::new(0), max })
    }

    /// A slot, or `None` when all `max` are taken.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let prev = self.taken.fetch_add(1, Ordering::Relaxed);
        if prev >= self.max {
            self.taken.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(Arc::clone(self)))
    }

    /// Slots taken right now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// One slot of a [`SlotPool`], released on drop.
#[derive(Debug)]
pub struct Slot(Arc<SlotPool>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why [`SharedPool::try_take`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every slot of the pool is taken.
    Full,
    /// The key already holds its share.
    Share,
}

/// Lock shards of the per-key counts: takers on different workers rarely wait for each other.
const SHARDS: usize = 16;

/// A [`SlotPool`] in which one key may hold at most `per_key` slots at once.
#[derive(Debug)]
pub struct SharedPool<K> {
    pool: Arc<SlotPool>,
    per_key: usize,
    held: [Mutex<HashMap<K, usize, FxBuildHasher>>; SHARDS],
}

impl<K: Hash + Eq + Copy> SharedPool<K> {
    pub fn new(max: usize, per_key: usize) -> Arc<Self> {
        Arc::new(SharedPool { pool: SlotPool::new(max), per_key, held: std::array::from_fn(|_| Mutex::default()) })
    }

    fn shard(&self, key: &K) -> std::sync::MutexGuard<'_, HashMap<K, usize, FxBuildHasher>> {
        let i = (FxBuildHasher.hash_one(key) as usize) % SHARDS;
        self.held[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `key`, unless the pool is full or `key` holds its share already.
    pub fn try_take(self: &Arc<Self>, key: K) -> Result<SharedSlot<K>, Refused> {
        let mut held = self.shard(&key);
        let n = held.entry(key).or_insert(0);
        if *n >= self.per_key {
            // A full pool is the news when both hold (a share of 100 % is the whole pool).
            return Err(if self.pool.taken() >= self.pool.max() { Refused::Full } else { Refused::Share });
        }
        let Some(slot) = self.pool.try_take() else {
            if *n == 0 {
                held.remove(&key);
            }
            return Err(Refused::Full);
        };
        *n += 1;
        Ok(SharedSlot { _slot: slot, owner: Arc::clone(self), key })
    }

    /// Slots taken right now (all keys).
    pub fn taken(&self) -> usize {
        self.pool.taken()
    }

    pub fn max(&self) -> usize {
        self.pool.max()
    }

    /// Slots one key may hold.
    pub fn per_key(&self) -> usize {
        self.per_key
    }

    /// Slots `key` holds now.
    pub fn held_by(&self, key: &K) -> usize {
        self.shard(key).get(key).copied().unwrap_or(0)
    }
}

/// One slot of a [`SharedPool`], released (and its key's count lowered) on drop.
#[derive(Debug)]
pub struct SharedSlot<K: Hash + Eq + Copy> {
    _slot: Slot,
    owner: Arc<SharedPool<K>>,
    key: K,
}

impl<K: Hash + Eq + Copy> Drop for SharedSlot<K> {
    fn drop(&mut self) {
        let mut held = self.owner.shard(&self.key);
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_holds_at_most_its_share_and_others_still_get_slots() {
        let pool = SharedPool::new(4, 2);
        let a1 = pool.try_take("a");
        let a2 = pool.try_take("a");
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(pool.try_take("a").err(), Some(Refused::Share), "a third for one key is over its share");
        let b1 = pool.try_take("b");
        let b2 = pool.try_take("b");
        assert!(b1.is_ok() && b2.is_ok(), "another key is not affected");
        assert_eq!(pool.try_take("c").err(), Some(Refused::Full));
        assert_eq!(pool.held_by(&"c"), 0, "a refused key leaves no entry");
        drop(a1);
        assert_eq!((pool.taken(), pool.held_by(&"a")), (3, 1));
        assert!(pool.try_take("c").is_ok(), "a released slot is free for anyone");
        drop((a2, b1, b2));
        assert_eq!(pool.held_by(&"a"), 0);
        let whole = SharedPool::new(1, 1);
        let _x = whole.try_take("x");
        assert_eq!(whole.try_take("x").err(), Some(Refused::Full), "a full pool is reported as full");
    }

    #[test]
    fn caps_and_releases() {
        let pool = SlotPool::new(2);
        let a = pool.try_take();
        let b = pool.try_take();
        assert!(a.is_some() && b.is_some());
        assert!(pool.try_take().is_none(), "the third is over the cap");
        assert_eq!(pool.taken(), 2);
        drop(a);
        assert!(pool.try_take().is_some(), "a released slot is free again");
    }
}
