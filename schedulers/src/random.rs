//! Weighted random: each pick draws a backend with probability weight / Σweight.
//!
//! Built once into prefix sums of the weights; a pick draws a uniform number below the total
//! (multiply-shift, no division) and binary-searches the prefix sums, O(log n). The generator
//! is a SplitMix64 stream on one atomic counter ([`crate::mix`]): lock-free under `&self`, and
//! a fixed seed replays the same picks, which makes the tests exact.

use std::sync::Arc;

use crate::backend::BackendSet;
use crate::candidates::{Candidate, count_untried, nth_untried, pickable};
use crate::context::{PickContext, Tried};
use crate::scheduler::{BackendIndex, Scheduler, SchedulerKind};
use crate::mix::{AtomicSplitMix, below};

/// Redraws a retry makes before switching to an exact draw over the untried backends.
/// Rejection costs O(log n) per draw and almost always succeeds at once (a handful of tried
/// backends rarely carry most of the weight); the fallback bounds the pathological case.
const RETRY_DRAWS: usize = 8;

#[derive(Debug)]
pub struct WeightedRandom {
    set: Arc<BackendSet>,
    cands: Vec<Candidate>,
    /// `prefix[k]` = Σ weight of `cands[..=k]`; strictly increasing since weights are > 0.
    prefix: Vec<u64>,
    rng: AtomicSplitMix,
}

impl WeightedRandom {
    pub fn new(set: Arc<BackendSet>, seed: u64) -> Self {
        let cands = pickable(&set);
        let prefix = cands
            .iter()
            .scan(0u64, |acc, c| {
                *acc += u64::from(c.weight);
                Some(*acc)
            })
            .collect();
        WeightedRandom { set, cands, prefix, rng: AtomicSplitMix::new(seed) }
    }

    /// One weighted draw over all pickable backends (a position in `cands`).
    #[inline]
    fn draw(&self) -> Option<usize> {
        let total = *self.prefix.last()?;
        // `total` fits in usize on 64-bit targets; on 32-bit the clamp only shortens the range.
        let x = below(self.rng.next_u64(), usize::try_from(total).unwrap_or(usize::MAX)) as u64;
        // The first k with prefix[k] > x: backend k owns [prefix[k-1], prefix[k]).
        Some(self.prefix.partition_point(|&p| p <= x))
    }

    /// An exact weighted draw over the untried backends, by one linear scan.
    fn draw_untried(&self, tried: &Tried) -> Option<usize> {
        let total: u64 = self.cands.iter().filter(|c| !tried.contains(c.index())).map(|c| u64::from(c.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut x = below(self.rng.next_u64(), usize::try_from(total).unwrap_or(usize::MAX)) as u64;
        for c in self.cands.iter().filter(|c| !tried.contains(c.index())) {
            let w = u64::from(c.weight);
            if x < w {
                return Some(c.index());
            }
            x -= w;
        }
        // Unreachable given x < total, but stay total rather than panic: any untried one will do.
        count_untried(&self.cands, tried)
            .checked_sub(1)
            .and_then(|last| nth_untried(&self.cands, tried, last))
            .map(Candidate::index)
    }
}

impl Scheduler for WeightedRandom {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Random
    }

    fn backends(&self) -> &Arc<BackendSet> {
        &self.set
    }

    fn pick(&self, _ctx: &PickContext, tried: &Tried) -> Option<BackendIndex> {
        let first = self.cands.get(self.draw()?)?.index();
        if tried.is_empty() || !tried.contains(first) {
            return Some(first);
        }
        for _ in 1..RETRY_DRAWS {
            let i = self.cands.get(self.draw()?)?.index();
            if !tried.contains(i) {
                return Some(i);
            }
        }
        self.draw_untried(tried)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candidates::test_support::{ctx, set};

    fn counts(s: &WeightedRandom, n: usize, picks: u32, tried: &Tried) -> Vec<u64> {
        let mut counts = vec![0u64; n];
        for i in 0..picks {
            if let Some(b) = s.pick(&ctx(i), tried) {
                counts[b] += 1;
            }
        }
        counts
    }

    /// Pearson's χ² of observed counts against expected shares proportional to `weights`.
    fn chi_square(observed: &[u64], weights: &[u32]) -> f64 {
        let n: u64 = observed.iter().sum();
        let total: u32 = weights.iter().sum();
        observed
            .iter()
            .zip(weights)
            .filter(|&(_, &w)| w > 0)
            .map(|(&o, &w)| {
                let e = n as f64 * f64::from(w) / f64::from(total);
                (o as f64 - e).powi(2) / e
            })
            .sum()
    }

    #[test]
    fn chi_square_goodness_of_fit() {
        let weights = [1, 2, 3, 4];
        let s = WeightedRandom::new(set(&weights), 0x5eed);
        let observed = counts(&s, 4, 100_000, &Tried::new());
        let chi2 = chi_square(&observed, &weights);
        // 3 degrees of freedom, p = 0.001.
        assert!(chi2 < 16.266, "χ² = {chi2} for {observed:?}");
        // And it is not trivially "perfect" either (a broken generator could be too regular).
        assert!(chi2 > 0.0);
    }

    #[test]
    fn chi_square_for_several_seeds_and_a_quiesced_backend() {
        let weights = [5, 0, 1, 10, 3];
        for seed in [0, 1, 42, u64::MAX] {
            let s = WeightedRandom::new(set(&weights), seed);
            let observed = counts(&s, 5, 50_000, &Tried::new());
            assert_eq!(observed[1], 0, "weight 0 never drawn");
            // 3 degrees of freedom (4 pickable), p = 0.001.
            let chi2 = chi_square(&observed, &weights);
            assert!(chi2 < 16.266, "seed {seed}: χ² = {chi2} for {observed:?}");
        }
    }

    #[test]
    fn same_seed_same_sequence() {
        let a = WeightedRandom::new(set(&[1, 2, 3]), 7);
        let b = WeightedRandom::new(set(&[1, 2, 3]), 7);
        let c = WeightedRandom::new(set(&[1, 2, 3]), 8);
        let seq = |s: &WeightedRandom| (0..64).filter_map(|i| s.pick(&ctx(i), &Tried::new())).collect::<Vec<_>>();
        let (sa, sb, sc) = (seq(&a), seq(&b), seq(&c));
        assert_eq!(sa, sb);
        assert_ne!(sa, sc);
    }

    #[test]
    fn retry_draws_by_weight_among_untried() {
        let weights = [90, 1, 3, 6];
        let s = WeightedRandom::new(set(&weights), 3);
        let mut tried = Tried::new();
        tried.push(0);
        let observed = counts(&s, 4, 30_000, &tried);
        assert_eq!(observed[0], 0);
        let chi2 = chi_square(&observed[1..], &weights[1..]);
        // 2 degrees of freedom, p = 0.001.
        assert!(chi2 < 13.816, "χ² = {chi2} for {observed:?}");
    }

    #[test]
    fn fallback_when_tried_carry_nearly_all_weight() {
        let s = WeightedRandom::new(set(&[1_000_000, 1_000_000, 1]), 9);
        let mut tried = Tried::new();
        tried.push(0);
        tried.push(1);
        for i in 0..100 {
            assert_eq!(s.pick(&ctx(i), &tried), Some(2));
        }
        tried.push(2);
        assert_eq!(s.pick(&ctx(0), &tried), None);
    }
}
