//! Power of two choices: draw two distinct backends at random, take the less loaded one
//! (load = active connections / weight).
//!
//! Mitzenmacher's result: comparing just two random candidates brings the maximum load from
//! O(log n / log log n) down to O(log log n), at O(1) cost per pick instead of lc's O(n) scan,
//! and without lc's herding (every proxy instance sending the next burst to the same
//! momentarily-idle backend). Ties go to the first drawn, which is itself random.

use std::sync::Arc;

use crate::backend::BackendSet;
use crate::candidates::{Candidate, count_untried, nth_untried, pickable};
use crate::context::{PickContext, Tried};
use crate::scheduler::{BackendIndex, Scheduler, SchedulerKind};
use crate::mix::{AtomicSplitMix, below};

#[derive(Debug)]
pub struct PowerOfTwo {
    set: Arc<BackendSet>,
    cands: Vec<Candidate>,
    rng: AtomicSplitMix,
}

impl PowerOfTwo {
    pub fn new(set: Arc<BackendSet>, seed: u64) -> Self {
        let cands = pickable(&set);
        PowerOfTwo { set, cands, rng: AtomicSplitMix::new(seed) }
    }
}

/// Two distinct positions in `0..n` (n ≥ 2) from one random word: the first from its high
/// bits, the second (over n - 1 values, shifted past the first) from its low bits.
#[inline]
pub(crate) fn two_distinct(r: u64, n: usize) -> (usize, usize) {
    let a = below(r, n);
    let mut b = below(r.rotate_left(32), n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

/// Whether `b` is strictly less loaded than `a` relative to weight: `active_b / w_b <
/// active_a / w_a`, by exact cross-multiplication.
#[inline]
fn lighter(b: &Candidate, a: &Candidate) -> bool {
    u128::from(b.stats.active()) * u128::from(a.weight) < u128::from(a.stats.active()) * u128::from(b.weight)
}

impl Scheduler for PowerOfTwo {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::P2c
    }

    fn backends(&self) -> &Arc<BackendSet> {
        &self.set
    }

    fn pick(&self, _ctx: &PickContext, tried: &Tried) -> Option<BackendIndex> {
        let (a, b) = if tried.is_empty() {
            match self.cands.len() {
                0 => return None,
                1 => return self.cands.first().map(Candidate::index),
                n => {
                    let (i, j) = two_distinct(self.rng.next_u64(), n);
                    (self.cands.get(i)?, self.cands.get(j)?)
                }
            }
        } else {
            // A retry draws among the untried only; O(n), but retries are rare and bounded.
            match count_untried(&self.cands, tried) {
                0 => return None,
                1 => return nth_untried(&self.cands, tried, 0).map(Candidate::index),
                m => {
                    let (i, j) = two_distinct(self.rng.next_u64(), m);
                    (nth_untried(&self.cands, tried, i)?, nth_untried(&self.cands, tried, j)?)
                }
            }
        };
        Some(if lighter(b, a) { b.index() } else { a.index() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candidates::test_support::{ctx, set};

    #[test]
    fn two_distinct_is_distinct_and_covers_all_pairs() {
        let mut seen = std::collections::HashSet::new();
        let rng = AtomicSplitMix::new(1);
        for _ in 0..10_000 {
            let (a, b) = two_distinct(rng.next_u64(), 5);
            assert!(a != b && a < 5 && b < 5);
            seen.insert((a, b));
        }
        assert_eq!(seen.len(), 20, "every ordered pair of 5 occurs");
    }

    #[test]
    fn avoids_a_heavily_loaded_backend() {
        let s = set(&[1; 4]);
        s.as_slice()[2].stats.set_active(1_000);
        let p = PowerOfTwo::new(Arc::clone(&s), 11);
        let mut counts = [0usize; 4];
        for i in 0..4_000 {
            if let Some(b) = p.pick(&ctx(i), &Tried::new()) {
                counts[b] += 1;
            }
        }
        // The loaded one loses every pair it is drawn into, and it is never drawn twice.
        assert_eq!(counts[2], 0, "{counts:?}");
        // The rest share the traffic (each wins every pair against the loaded one, half of
        // the others): ≈ 1/3 each.
        for c in [counts[0], counts[1], counts[3]] {
            assert!((1_100..=1_600).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn load_is_relative_to_weight() {
        // 10 active on weight 10 (1 per unit) beats 3 active on weight 1.
        let s = set(&[10, 1]);
        s.as_slice()[0].stats.set_active(10);
        s.as_slice()[1].stats.set_active(3);
        let p = PowerOfTwo::new(s, 5);
        for i in 0..100 {
            assert_eq!(p.pick(&ctx(i), &Tried::new()), Some(0));
        }
    }

    #[test]
    fn ties_go_to_the_first_drawn_so_idle_backends_share() {
        let p = PowerOfTwo::new(set(&[1, 1, 1]), 2);
        let mut counts = [0usize; 3];
        for i in 0..3_000 {
            if let Some(b) = p.pick(&ctx(i), &Tried::new()) {
                counts[b] += 1;
            }
        }
        assert!(counts.iter().all(|&c| c > 850), "{counts:?}");
    }

    #[test]
    fn retry_excludes_tried_and_still_compares_load() {
        let s = set(&[1, 1, 1, 1]);
        s.as_slice()[1].stats.set_active(50);
        let p = PowerOfTwo::new(Arc::clone(&s), 3);
        let mut tried = Tried::new();
        tried.push(0);
        tried.push(3);
        // Only 1 and 2 are left; 1 is loaded, so 2 always.
        for i in 0..100 {
            assert_eq!(p.pick(&ctx(i), &tried), Some(2));
        }
        tried.push(2);
        assert_eq!(p.pick(&ctx(0), &tried), Some(1));
        tried.push(1);
        assert_eq!(p.pick(&ctx(0), &tried), None);
    }
}
