//! Weighted round robin (IPVS `wrr`): backends interleaved by decreasing current weight.
//!
//! IPVS walks the destination list keeping a "current weight" `cw` that starts at the largest
//! weight and drops by the gcd of all weights after each pass; a pass hands one connection to
//! every destination whose weight is at least `cw`. With weights 5, 3, 1 one cycle is
//! `A A A B A B A B C`. Here that cycle is computed once when the scheduler is built and a pick
//! is one atomic increment indexing into it, so the hot path neither locks nor loops.
//!
//! The cycle has `sum(weight / gcd)` entries. Weights that would make it longer than
//! [`MAX_SEQUENCE`] are scaled down proportionally first (each kept at least 1, so no pickable
//! backend disappears): shares then hold to within one entry in 65 536, which no client can
//! tell apart, while the table stays small enough to sit in cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::BackendSet;
use crate::context::{PickContext, Tried};
use crate::scheduler::{BackendIndex, Scheduler, SchedulerKind};

/// The cycle length above which weights are scaled down (see the module docs). Scaling keeps
/// every pickable backend at weight ≥ 1, so with more pickable backends than this the cycle is
/// one entry per backend instead.
pub const MAX_SEQUENCE: usize = 1 << 16;

#[derive(Debug)]
pub struct WeightedRoundRobin {
    set: Arc<BackendSet>,
    /// One IPVS cycle of backend indices; empty when nothing is pickable.
    sequence: Vec<u32>,
    /// Pickable indices in set order, so a retry can tell quickly whether anything is left.
    pickable: Vec<u32>,
    next: AtomicUsize,
}

impl WeightedRoundRobin {
    pub fn new(set: Arc<BackendSet>) -> Self {
        let weighted: Vec<(u32, u64)> = set
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_pickable())
            .filter_map(|(i, b)| Some((u32::try_from(i).ok()?, u64::from(b.weight))))
            .collect();
        let pickable = weighted.iter().map(|&(i, _)| i).collect();
        let sequence = build_sequence(weighted);
        WeightedRoundRobin { set, sequence, pickable, next: AtomicUsize::new(0) }
    }

    /// The precomputed cycle (backend indices), for tests and `tpvs list`.
    pub fn sequence(&self) -> &[u32] {
        &self.sequence
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Divides every weight by the gcd of all of them, so the cycle is as short as it can be.
fn reduce(weighted: &mut [(u32, u64)]) {
    let g = weighted.iter().fold(0, |g, &(_, w)| gcd(g, w));
    if g > 1 {
        for (_, w) in weighted.iter_mut() {
            *w /= g;
        }
    }
}

/// One IPVS cycle for `(index, weight)` pairs (weights > 0, set order).
fn build_sequence(mut weighted: Vec<(u32, u64)>) -> Vec<u32> {
    if weighted.is_empty() {
        return Vec::new();
    }
    reduce(&mut weighted);
    let sum: u64 = weighted.iter().map(|&(_, w)| w).sum();
    if sum > MAX_SEQUENCE as u64 {
        // Proportional scale-down. u128 because weight × 2^16 × (an arbitrary sum) must not
        // overflow; max(1) so that a light backend keeps a slot rather than vanishing.
        for (_, w) in weighted.iter_mut() {
            let scaled = u128::from(*w) * MAX_SEQUENCE as u128 / u128::from(sum);
            *w = u64::try_from(scaled).unwrap_or(u64::MAX).max(1);
        }
        reduce(&mut weighted);
    }

    // IPVS hands a turn to every backend with weight ≥ cw, for cw = max, max-1, ..., 1 (after
    // the gcd reduction the step is 1). Between two distinct weight values the set of
    // qualifying backends does not change, so walk the distinct weights downwards and repeat
    // each qualifying list (kept in set order, as IPVS walks its list) once per cw level it
    // covers. That is O(cycle length + n × distinct weights) rather than O(max weight × n).
    let mut levels: Vec<u64> = weighted.iter().map(|&(_, w)| w).collect();
    levels.sort_unstable_by(|a, b| b.cmp(a));
    levels.dedup();

    let total: u64 = weighted.iter().map(|&(_, w)| w).sum();
    let mut sequence = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut members: Vec<u32> = Vec::with_capacity(weighted.len());
    for (k, &level) in levels.iter().enumerate() {
        members.extend(weighted.iter().filter(|&&(_, w)| w == level).map(|&(i, _)| i));
        members.sort_unstable();
        let below = levels.get(k + 1).copied().unwrap_or(0);
        for _ in below..level {
            sequence.extend_from_slice(&members);
        }
    }
    sequence
}

impl Scheduler for WeightedRoundRobin {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Wrr
    }

    fn backends(&self) -> &Arc<BackendSet> {
        &self.set
    }

    fn pick(&self, _ctx: &PickContext, tried: &Tried) -> Option<BackendIndex> {
        let len = self.sequence.len();
        if len == 0 {
            return None;
        }
        if tried.is_empty() {
            let at = self.next.fetch_add(1, Ordering::Relaxed) % len;
            return self.sequence.get(at).map(|&i| i as usize);
        }
        // A retry does not take a turn (one refused backend must not shift the rotation for
        // everyone else): it walks on from where the rotation stands to the next entry not
        // yet tried. Checking first that something is left keeps a fully-tried retry from
        // walking the whole cycle.
        if !self.pickable.iter().any(|&i| !tried.contains(i as usize)) {
            return None;
        }
        let start = self.next.load(Ordering::Relaxed) % len;
        let (tail, head) = self.sequence.split_at(start);
        head.iter().chain(tail).map(|&i| i as usize).find(|&i| !tried.contains(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candidates::test_support::{ctx, set};

    fn picks(s: &WeightedRoundRobin, n: usize) -> Vec<usize> {
        (0..n).filter_map(|k| s.pick(&ctx(k as u32), &Tried::new())).collect()
    }

    #[test]
    fn ipvs_order_for_5_3_1() {
        let s = WeightedRoundRobin::new(set(&[5, 3, 1]));
        // cw=5: A; cw=4: A; cw=3: A B; cw=2: A B; cw=1: A B C.
        assert_eq!(picks(&s, 18), [0, 0, 0, 1, 0, 1, 0, 1, 2, 0, 0, 0, 1, 0, 1, 0, 1, 2]);
    }

    #[test]
    fn ipvs_order_with_gcd_and_ties() {
        // gcd 2 → weights 2, 1, 2, 1: cw=2: A C; cw=1: A B C D.
        let s = WeightedRoundRobin::new(set(&[4, 2, 4, 2]));
        assert_eq!(s.sequence(), [0, 2, 0, 1, 2, 3]);
        // Equal weights degrade to plain round robin.
        let s = WeightedRoundRobin::new(set(&[7, 7, 7]));
        assert_eq!(s.sequence(), [0, 1, 2]);
    }

    #[test]
    fn exact_proportions_over_whole_cycles() {
        let weights = [5u32, 3, 1, 0, 2];
        let s = WeightedRoundRobin::new(set(&weights));
        let cycle: usize = weights.iter().map(|&w| w as usize).sum();
        let mut counts = [0usize; 5];
        for i in picks(&s, cycle * 7) {
            counts[i] += 1;
        }
        assert_eq!(counts, [35, 21, 7, 0, 14], "weight 0 never picked, the rest exactly by weight");
    }

    #[test]
    fn huge_weights_are_scaled_not_dropped() {
        let s = WeightedRoundRobin::new(set(&[1_000_000, 999_999, 1, 3]));
        let seq = s.sequence();
        assert!(seq.len() <= MAX_SEQUENCE + 4, "cycle of {} entries", seq.len());
        let count = |i: u32| seq.iter().filter(|&&x| x == i).count();
        assert!(count(2) >= 1 && count(3) >= 1, "light backends keep a slot");
        let (a, b) = (count(0) as f64, count(1) as f64);
        assert!((a / b - 1.0).abs() < 0.001, "shares kept: {a} vs {b}");
    }

    #[test]
    fn retry_walks_on_without_taking_a_turn() {
        let s = WeightedRoundRobin::new(set(&[5, 3, 1]));
        let first = s.pick(&ctx(0), &Tried::new());
        assert_eq!(first, Some(0));
        let mut tried = Tried::new();
        tried.push(0);
        // Next entries are 0, 0, 1, ...: the first one not tried is backend 1.
        assert_eq!(s.pick(&ctx(0), &tried), Some(1));
        tried.push(1);
        assert_eq!(s.pick(&ctx(0), &tried), Some(2));
        tried.push(2);
        assert_eq!(s.pick(&ctx(0), &tried), None);
        // The retries did not move the rotation: the next first choice is entry 1 of the cycle.
        assert_eq!(s.pick(&ctx(1), &Tried::new()), Some(0));
        assert_eq!(picks(&s, 2), [0, 1]);
    }
}
