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
//!
//! **Bounded exploration.** Load × latency alone lets a slow backend win whenever the other
//! candidate is busy, or once its estimate has decayed: a share of traffic that grows with the
//! load, and every such request lands in the tail. So a backend that *looks slow* — its decayed
//! latency estimate above [`SLOW_FACTOR`] × the set's reference (the upper median of the
//! measured backends' estimates, refreshed every [`REFERENCE_REFRESH_NS`]) — is picked at most
//! once per [`EXPLORE_INTERVAL_NS`]: a probe at a bounded *rate*, whose cost in the tail
//! shrinks as load grows. Each probe is a fresh sample, and the read-time decay still brings
//! the estimate of a backend that stopped being probed down, so a recovered backend stops
//! looking slow and is scheduled normally again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::BackendSet;
use crate::candidates::{Candidate, count_untried, nth_untried, nth_untried_pos, pickable};
use crate::context::{PickContext, Tried};
use crate::scheduler::{BackendIndex, Scheduler, SchedulerKind};
use crate::mix::AtomicSplitMix;
use crate::p2c::two_distinct;
use crate::stats::{EWMA_DECAY_NS, now_nanos};

/// A backend looks slow when its latency estimate exceeds the set's reference by this factor.
/// Estimates are peak-sensitive (they sit near recent maxima), so the ratio between a slow and
/// a healthy backend's estimates is smaller than between their medians; 2 separates a backend
/// 8× slower from the ordinary spread of a lognormal service time.
pub const SLOW_FACTOR: f64 = 2.0;

/// A backend that looks slow is picked at most once per this interval (per scheduler).
pub const EXPLORE_INTERVAL_NS: u64 = 1_000_000_000;

/// How often the reference latency is recomputed (an O(n) pass over the set).
pub const REFERENCE_REFRESH_NS: u64 = 100_000_000;

/// A clock reading no run reaches (584 years of uptime): "not yet".
const NEVER: u64 = u64::MAX;

#[derive(Debug)]
pub struct PeakEwma {
    set: Arc<BackendSet>,
    cands: Vec<Candidate>,
    rng: AtomicSplitMix,
    /// Per candidate position: `now_nanos` of the last pick while it looked slow (0: never).
    last_probe: Vec<AtomicU64>,
    /// f64 bits of the reference latency in ns (0.0: not enough measured backends yet).
    reference: AtomicU64,
    /// `now_nanos` at the last recomputation of `reference` ([`NEVER`]: not computed yet).
    reference_stamp: AtomicU64,
}

impl PeakEwma {
    pub fn new(set: Arc<BackendSet>, seed: u64) -> Self {
        let cands = pickable(&set);
        let last_probe = cands.iter().map(|_| AtomicU64::new(0)).collect();
        PeakEwma {
            set,
            cands,
            rng: AtomicSplitMix::new(seed),
            last_probe,
            reference: AtomicU64::new(0f64.to_bits()),
            reference_stamp: AtomicU64::new(NEVER),
        }
    }

    /// The reference latency as of `now`, recomputed by one picker at a time when stale: the
    /// upper median of the measured candidates' decayed estimates. A median, so that one slow
    /// backend (or a few) does not move the yardstick it is measured against; the upper one,
    /// so that in a set of two neither is ever "slow" (one backend against one other is no
    /// majority: there the load trade-off alone decides). 0 when fewer than two backends have
    /// been measured (nothing to compare with).
    fn reference_at(&self, now: u64) -> f64 {
        let stamp = self.reference_stamp.load(Ordering::Relaxed);
        if (stamp == NEVER || now.saturating_sub(stamp) >= REFERENCE_REFRESH_NS)
            && self.reference_stamp.compare_exchange(stamp, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let mut measured: Vec<f64> =
                self.cands.iter().filter(|c| c.stats.ewma_sample().1 != 0).map(|c| c.stats.ewma_ns_at(now)).collect();
            let reference = if measured.len() < 2 {
                0.0
            } else {
                let mid = measured.len() / 2;
                let (_, m, _) = measured.select_nth_unstable_by(mid, f64::total_cmp);
                *m
            };
            self.reference.store(reference.to_bits(), Ordering::Relaxed);
        }
        f64::from_bits(self.reference.load(Ordering::Relaxed))
    }

    /// Whether `c` looks slow as of `now` against `reference`.
    fn looks_slow(c: &Candidate, now: u64, reference: f64) -> bool {
        reference > 0.0 && c.stats.ewma_sample().1 != 0 && c.stats.ewma_ns_at(now) > SLOW_FACTOR * reference
    }

    /// Claims `pos`'s probe slot if its last probe is at least [`EXPLORE_INTERVAL_NS`] old.
    fn claim_probe(&self, pos: usize, now: u64) -> bool {
        let Some(slot) = self.last_probe.get(pos) else { return false };
        let last = slot.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= EXPLORE_INTERVAL_NS)
            && slot.compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// The choice between the two drawn candidates (positions in `cands`): the cheaper one,
    /// unless it looks slow and its probe slot is taken — then the other, when that one does
    /// not look slow too (two slow candidates: the cheaper, as without exploration bounds).
    fn decide(&self, a: usize, b: usize) -> Option<BackendIndex> {
        let (ca, cb) = (self.cands.get(a)?, self.cands.get(b)?);
        let (win, wpos, lose) = if cheaper(cb, ca) { (cb, b, ca) } else { (ca, a, cb) };
        let now = now_nanos();
        let reference = self.reference_at(now);
        if !Self::looks_slow(win, now, reference) || self.claim_probe(wpos, now) || Self::looks_slow(lose, now, reference) {
            return Some(win.index());
        }
        Some(lose.index())
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
            match self.cands.len() {
                0 => return None,
                1 => return self.cands.first().map(Candidate::index),
                2 => (0, 1),
                n => two_distinct(self.rng.next_u64(), n),
            }
        } else {
            match count_untried(&self.cands, tried) {
                0 => return None,
                1 => return nth_untried(&self.cands, tried, 0).map(Candidate::index),
                2 => (nth_untried_pos(&self.cands, tried, 0)?, nth_untried_pos(&self.cands, tried, 1)?),
                m => {
                    let (i, j) = two_distinct(self.rng.next_u64(), m);
                    (nth_untried_pos(&self.cands, tried, i)?, nth_untried_pos(&self.cands, tried, j)?)
                }
            }
        };
        self.decide(a, b)
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
    fn a_slow_backend_is_probed_at_a_bounded_rate_however_busy_the_others_are() {
        // Backend 3 answers in 80 ms, the others in 5 ms but with 100 connections open each:
        // on latency × load alone the slow one wins every comparison it is drawn into.
        let s = set(&[1; 5]);
        for (i, b) in s.iter().enumerate() {
            b.stats.observe_latency_ns(if i == 3 { 80_000_000 } else { 5_000_000 });
            if i != 3 {
                b.stats.set_active(100);
            }
        }
        let p = PeakEwma::new(s, 5);
        let started = std::time::Instant::now();
        let c = counts(&p, 5, 20_000);
        // One probe per started interval at most (the loop normally takes milliseconds).
        let intervals = 1 + (started.elapsed().as_nanos() / u128::from(EXPLORE_INTERVAL_NS)) as usize;
        assert!((1..=intervals).contains(&c[3]), "slow backend picked {} times in {intervals} interval(s): {c:?}", c[3]);
        assert_eq!(c.iter().sum::<usize>(), 20_000);
    }

    #[test]
    fn with_a_single_measured_backend_nothing_looks_slow() {
        // No reference to compare with: plain peak-EWMA (the unmeasured default of 1 ms wins).
        let s = set(&[1, 1, 1]);
        s.as_slice()[0].stats.observe_latency_ns(80_000_000);
        let p = PeakEwma::new(s, 6);
        let c = counts(&p, 3, 3_000);
        assert_eq!(c[0], 0, "{c:?}");
        // Two measured backends: the upper median is the slow one itself, so nothing is bounded
        // and a busy fast backend loses to an idle slow one on latency × load.
        let two = set(&[1, 1]);
        two.as_slice()[0].stats.observe_latency_ns(80_000_000);
        two.as_slice()[1].stats.observe_latency_ns(5_000_000);
        two.as_slice()[1].stats.set_active(100);
        assert_eq!(counts(&PeakEwma::new(two, 7), 2, 1_000), [1_000, 0]);
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
