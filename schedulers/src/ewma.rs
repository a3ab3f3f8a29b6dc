//! Peak-EWMA: power of two choices over latency × load (Finagle's and Linkerd's balancer).
//!
//! Each backend's cost is [`BackendStats::ewma_load_at`](crate::stats::BackendStats::ewma_load_at)
//! — a peak-sensitive moving average of observed latency times (active connections + 1) —
//! divided by its weight. A backend that turns slow is avoided at once (the estimate jumps to
//! a higher sample) and wins traffic back gradually as it recovers; a fast but busy backend
//! still shares load because its open connections multiply its cost.
//!
//! Two random candidates are compared rather than the global minimum, for the same reasons as
//! [`crate::p2c`]: O(1) picks, and no herding of every proxy onto the one backend that looked
//! best a moment ago. With two or fewer candidates the comparison covers them all anyway, so
//! the minimum is taken directly (ties to the first in set order).

use std::sync::Arc;

use crate::backend::BackendSet;
use crate::candidates::{Candidate, count_untried, nth_untried, pickable};
use crate::context::{PickContext, Tried};
use crate::scheduler::{BackendIndex, Scheduler, SchedulerKind};
use crate::mix::AtomicSplitMix;
use crate::p2c::two_distinct;
use crate::stats::{EWMA_DECAY_NS, now_nanos};

#[derive(Debug)]
pub struct PeakEwma {
    set: Arc<BackendSet>,
    cands: Vec<Candidate>,
    rng: AtomicSplitMix,
}

impl PeakEwma {
    pub fn new(set: Arc<BackendSet>, seed: u64) -> Self {
        let cands = pickable(&set);
        PeakEwma { set, cands, rng: AtomicSplitMix::new(seed) }
    }
}

/// Whether `b` costs strictly less than `a`: `load_b / w_b < load_a / w_a`, cross-multiplied so
/// no division is needed (weights are > 0, loads finite and positive).
///
/// Both estimates decay toward zero from their last samples by `exp(-(now - stamp) / tau)`;
/// read at the same `now`, the factor common to both cancels and only `exp((stamp_b -
/// stamp_a) / tau)` remains, so a pick needs one `exp` and no clock read. A never-measured
/// backend does not decay, so when exactly one of the two is unmeasured the clock is read after
/// all.
#[inline]
fn cheaper(b: &Candidate, a: &Candidate) -> bool {
    let ((cost_a, stamp_a), (cost_b, stamp_b)) = (a.stats.ewma_sample(), b.stats.ewma_sample());
    if (stamp_a == 0) != (stamp_b == 0) {
        let now = now_nanos();
        return b.stats.ewma_load_at(now) * f64::from(a.weight) < a.stats.ewma_load_at(now) * f64::from(b.weight);
    }
    // Both unmeasured: neither decays (factor 1); both measured: the relative factor.
    let relative_decay =
        if stamp_a == stamp_b { 1.0 } else { ((stamp_b as f64 - stamp_a as f64) / EWMA_DECAY_NS).exp() };
    let load_a = cost_a * (a.stats.active() as f64 + 1.0);
    let load_b = cost_b * (b.stats.active() as f64 + 1.0) * relative_decay;
    load_b * f64::from(a.weight) < load_a * f64::from(b.weight)
}

impl Scheduler for PeakEwma {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Ewma
    }

    fn backends(&self) -> &Arc<BackendSet> {
        &self.set
    }

    fn pick(&self, _ctx: &PickContext, tried: &Tried) -> Option<BackendIndex> {
        let (a, b) = if tried.is_empty() {
            match self.cands.as_slice() {
                [] => return None,
                [only] => return Some(only.index()),
                [a, b] => (a, b),
                cands => {
                    let (i, j) = two_distinct(self.rng.next_u64(), cands.len());
                    (cands.get(i)?, cands.get(j)?)
                }
            }
        } else {
            match count_untried(&self.cands, tried) {
                0 => return None,
                1 => return nth_untried(&self.cands, tried, 0).map(Candidate::index),
                2 => (nth_untried(&self.cands, tried, 0)?, nth_untried(&self.cands, tried, 1)?),
                m => {
                    let (i, j) = two_distinct(self.rng.next_u64(), m);
                    (nth_untried(&self.cands, tried, i)?, nth_untried(&self.cands, tried, j)?)
                }
            }
        };
        Some(if cheaper(b, a) { b.index() } else { a.index() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candidates::test_support::{ctx, set};

    fn counts(p: &PeakEwma, n: usize, picks: u32) -> Vec<usize> {
        let mut counts = vec![0; n];
        for i in 0..picks {
            if let Some(b) = p.pick(&ctx(i), &Tried::new()) {
                counts[b] += 1;
            }
        }
        counts
    }

    #[test]
    fn two_backends_prefers_lower_latency() {
        let s = set(&[1, 1]);
        s.as_slice()[0].stats.observe_latency_at(40_000_000, 1_000);
        s.as_slice()[1].stats.observe_latency_at(2_000_000, 1_000);
        let p = PeakEwma::new(s, 1);
        assert_eq!(counts(&p, 2, 100), [0, 100]);
    }

    #[test]
    fn an_old_spike_decays_below_a_fresh_moderate_estimate() {
        let s = set(&[1, 1]);
        let now = 100_000_000_000;
        // Backend 0 stalled (2 s) thirty seconds ago; backend 1 answers in 10 ms right now.
        s.as_slice()[0].stats.observe_latency_at(2_000_000_000, now - 30_000_000_000);
        s.as_slice()[1].stats.observe_latency_at(10_000_000, now);
        // Three decay constants: 2 s × e^-3 ≈ 100 ms, still dearer than 10 ms ...
        let p = PeakEwma::new(s.clone(), 1);
        assert_eq!(counts(&p, 2, 10), [0, 10]);
        // ... but seventy seconds ago it has decayed to 2 s × e^-7 ≈ 1.8 ms: tried again.
        s.as_slice()[0].stats.observe_latency_at(2_000_000_000, now - 70_000_000_000);
        s.as_slice()[1].stats.observe_latency_at(10_000_000, now);
        let p = PeakEwma::new(s, 1);
        assert_eq!(counts(&p, 2, 10), [10, 0]);
    }

    #[test]
    fn never_picks_the_slow_one_among_many() {
        let s = set(&[1; 5]);
        for (i, b) in s.iter().enumerate() {
            b.stats.observe_latency_at(if i == 3 { 80_000_000 } else { 5_000_000 }, 1_000);
        }
        let p = PeakEwma::new(s, 2);
        let c = counts(&p, 5, 5_000);
        assert_eq!(c[3], 0, "{c:?}");
        assert!(c.iter().enumerate().all(|(i, &n)| i == 3 || n > 1_000), "{c:?}");
    }

    #[test]
    fn equal_latency_prefers_less_loaded() {
        let s = set(&[1; 3]);
        for b in s.iter() {
            b.stats.observe_latency_at(5_000_000, 1_000);
        }
        s.as_slice()[0].stats.set_active(10);
        let p = PeakEwma::new(Arc::clone(&s), 3);
        let c = counts(&p, 3, 3_000);
        assert_eq!(c[0], 0, "{c:?}");
        // Two backends: the minimum directly.
        let two = set(&[1, 1]);
        two.as_slice()[0].stats.set_active(1);
        assert_eq!(counts(&PeakEwma::new(two, 0), 2, 50), [0, 50]);
    }

    #[test]
    fn load_trades_off_against_latency() {
        // 1 ms with 9 open (cost 10 ms) vs 4 ms idle (cost 4 ms): the slower idle one wins.
        let s = set(&[1, 1]);
        s.as_slice()[0].stats.observe_latency_at(1_000_000, 1_000);
        s.as_slice()[0].stats.set_active(9);
        s.as_slice()[1].stats.observe_latency_at(4_000_000, 1_000);
        assert_eq!(counts(&PeakEwma::new(Arc::clone(&s), 0), 2, 10), [0, 10]);
        // Weight 4 divides the busy one's cost to 2.5 ms: now it wins.
        let w = Arc::new(BackendSet::new(vec![s.as_slice()[0].clone().with_weight(4), s.as_slice()[1].clone()]));
        assert_eq!(counts(&PeakEwma::new(w, 0), 2, 10), [10, 0]);
    }

    #[test]
    fn retry_excludes_tried() {
        let s = set(&[1; 4]);
        s.as_slice()[1].stats.observe_latency_at(1_000, 1_000);
        let p = PeakEwma::new(s, 4);
        let mut tried = Tried::new();
        tried.push(1);
        for i in 0..200 {
            let got = p.pick(&ctx(i), &tried);
            assert!(matches!(got, Some(0 | 2 | 3)), "{got:?}");
        }
    }
}
