//! A fixed budget of slots (open TCP connections, open UDP flows): taken before the work
//! starts, given back by a guard's destructor however the work ends, so the count stays exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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

#[cfg(test)]
mod tests {
    use super::*;

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
