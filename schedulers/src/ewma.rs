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
//! measured backends' estimates, refreshed every [`REFERENCE_REFRESH_NS`]) — is not scheduled
//! on cost: it is *probed*, one request when drawn once per [`EXPLORE_INTERVAL_NS`], whether or
//! not it is the cheaper of the two (so the probe rate does not depend on how busy the others
//! are), and never while its last probe is still unanswered (a stalled backend gets one probe
//! per stall, not one per second). Its cost in the tail is a bounded *rate*, which shrinks as a
//! share as load grows.
//!
//! **Recovery is decided by the probes' own answers.** The estimate alone cannot say quickly
//! that a backend recovered: peak-sensitive, it sits at the slow phase's peak and falls only
//! with the 10 s decay (≈ 10 % a second), so a backend 8× slower would look slow for many
//! seconds after it became healthy. Instead each probe's *answer* (the first byte back, as a
//! raw sample — not the connect, which the kernel completes whatever the application does) is
//! judged: healthy when at most [`SLOW_FACTOR`] × the typical answer across the set (the upper
//! median of the backends' last answers, refreshed with the reference). An answer is compared
//! with answers, as an estimate is with estimates: the estimates sit near recent peaks, and on
//! a busy machine so high that a slow backend's ordinary answers fall under them. After
//! [`RECOVERY_PROBES`] healthy answers *in a row* the backend is declared recovered and its
//! estimate restarted at the reference — it re-enters as a typical healthy backend, not as the
//! best one, so it draws no burst. One healthy answer is not enough: a slow backend's latency
//! has a fast tail. With lognormal σ 0.5, a healthy backend answers under 2× the typical answer
//! 92 % of the time (two in a row: 85 %), a backend 8× slower 0.3 % of the time (two in a row:
//! about once in 10⁵ probes, one a second: once a day). Any other answer resets the count.
//! So that the second answer does not cost another second, after a healthy answer the next
//! probe may follow after [`CONFIRM_INTERVAL_NS`]: probing speeds up only while the answers
//! look healthy. A false recovery is cheap anyway: the first slow answer puts the restarted
//! estimate back up (peak sensitivity). Without probes the read-time decay still brings an
//! estimate down, as before.

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

/// A backend that looks slow is probed at most once per this interval (per scheduler).
pub const EXPLORE_INTERVAL_NS: u64 = 1_000_000_000;

/// After a probe answered healthy, the next probe may follow this soon: long enough for a
/// healthy answer (milliseconds) to come back, short against the 5 s a recovered backend has to
/// win its share back, and paid for by a slow backend only after one of its rare fast answers.
pub const CONFIRM_INTERVAL_NS: u64 = 100_000_000;

/// Consecutive healthy probe answers that declare a slow-looking backend recovered (see the
/// module docs for why one is too few).
pub const RECOVERY_PROBES: u64 = 2;

/// A probe still unanswered after this long no longer holds back the next one (a refused
/// connect, or a connection that never sends a request, gives no answer; the relay does not
/// sample turns over 10 s).
pub const PROBE_ANSWER_TIMEOUT_NS: u64 = 10_000_000_000;

/// How often the reference latency is recomputed (an O(n) pass over the set).
pub const REFERENCE_REFRESH_NS: u64 = 100_000_000;

/// A clock reading no run reaches (584 years of uptime): "not yet".
const NEVER: u64 = u64::MAX;

#[derive(Debug)]
pub struct PeakEwma {
    set: Arc<BackendSet>,
    cands: Vec<Candidate>,
    rng: AtomicSplitMix,
    /// Per candidate position: its probes while it looks slow.
    probes: Vec<ProbeState>,
    /// f64 bits of the reference latency in ns (0.0: not enough measured backends yet).
    reference: AtomicU64,
    /// f64 bits of the reference *answer* in ns: the upper median of the measured backends'
    /// last answers, refreshed with `reference` (0.0: fewer than two have answered).
    typical_answer: AtomicU64,
    /// `now_nanos` at the last recomputation of `reference` ([`NEVER`]: not computed yet).
    reference_stamp: AtomicU64,
}

impl PeakEwma {
    pub fn new(set: Arc<BackendSet>, seed: u64) -> Self {
        let cands = pickable(&set);
        let probes = cands.iter().map(|_| ProbeState::default()).collect();
        PeakEwma {
            set,
            cands,
            rng: AtomicSplitMix::new(seed),
            probes,
            reference: AtomicU64::new(0f64.to_bits()),
            typical_answer: AtomicU64::new(0f64.to_bits()),
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
            let mut answers: Vec<f64> =
                self.cands.iter().map(|c| c.stats.last_answer()).filter(|&(_, at)| at != 0).map(|(a, _)| a as f64).collect();
            self.reference.store(upper_median(&mut measured).to_bits(), Ordering::Relaxed);
            self.typical_answer.store(upper_median(&mut answers).to_bits(), Ordering::Relaxed);
        }
        f64::from_bits(self.reference.load(Ordering::Relaxed))
    }

    /// The reference answer as of the last [`Self::reference_at`] (see `typical_answer`).
    fn typical_answer(&self) -> f64 {
        f64::from_bits(self.typical_answer.load(Ordering::Relaxed))
    }

    /// Whether `c` looks slow as of `now` against `reference`.
    fn looks_slow(c: &Candidate, now: u64, reference: f64) -> bool {
        reference > 0.0 && c.stats.ewma_sample().1 != 0 && c.stats.ewma_ns_at(now) > SLOW_FACTOR * reference
    }

    /// How many times backend `index` looked slow and was declared recovered by its probes'
    /// answers (for tests and diagnostics; 0 for an index not in the set).
    pub fn recoveries(&self, index: BackendIndex) -> u64 {
        let pos = self.cands.iter().position(|c| c.index() == index);
        pos.and_then(|pos| self.probes.get(pos)).map_or(0, |st| st.recoveries.load(Ordering::Relaxed))
    }

    /// Judges the answer to `pos`'s last probe, once, if it has come back. Returns true when
    /// that answer completes [`RECOVERY_PROBES`] healthy ones in a row: the estimate has then
    /// been restarted at `reference` and the backend no longer looks slow.
    fn judge_probe(&self, pos: usize, c: &Candidate, now: u64, reference: f64) -> bool {
        let Some(st) = self.probes.get(pos) else { return false };
        let probe = st.last.load(Ordering::Relaxed);
        let judged = st.judged.load(Ordering::Relaxed);
        if probe == 0 || judged == probe {
            return false;
        }
        let (sample, at) = c.stats.last_answer();
        // Not answered yet; or another picker judges this answer.
        if at < probe || st.judged.compare_exchange(judged, probe, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return false;
        }
        if !Self::answers_healthy(sample, self.typical_answer()) {
            st.healthy.store(0, Ordering::Relaxed);
            return false;
        }
        if st.healthy.fetch_add(1, Ordering::Relaxed) + 1 < RECOVERY_PROBES {
            return false;
        }
        st.healthy.store(0, Ordering::Relaxed);
        c.stats.restart_latency_estimate_at(reference, now);
        st.recoveries.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Whether a probe's answer (`sample`, ns) is one a healthy backend gives: at most
    /// [`SLOW_FACTOR`] × the typical answer across the set. An answer is compared with answers
    /// (and an estimate with estimates): the estimates sit near recent peaks, far above a
    /// typical answer, and on a busy machine high enough that a slow backend's ordinary answers
    /// fall under them. Lognormal σ 0.5: a healthy answer is under 2× the median 92 % of the
    /// time, an 8×-slower backend's 0.3 %. Nothing to compare with: not healthy.
    fn answers_healthy(sample: u64, typical_answer: f64) -> bool {
        typical_answer > 0.0 && sample as f64 <= SLOW_FACTOR * typical_answer
    }

    /// Claims `pos`'s probe slot if a probe is due: the last one answered and at least
    /// [`EXPLORE_INTERVAL_NS`] old ([`CONFIRM_INTERVAL_NS`] after a healthy answer), or
    /// unanswered for [`PROBE_ANSWER_TIMEOUT_NS`] (then it did not answer healthy).
    fn claim_probe(&self, pos: usize, now: u64) -> bool {
        let Some(st) = self.probes.get(pos) else { return false };
        let last = st.last.load(Ordering::Relaxed);
        let answered = last == 0 || st.judged.load(Ordering::Relaxed) == last;
        let wait = match (answered, st.healthy.load(Ordering::Relaxed)) {
            (false, _) => PROBE_ANSWER_TIMEOUT_NS,
            (true, 0) => EXPLORE_INTERVAL_NS,
            (true, _) => CONFIRM_INTERVAL_NS,
        };
        let due = last == 0 || now.saturating_sub(last) >= wait;
        if !due || st.last.compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return false;
        }
        if !answered {
            st.healthy.store(0, Ordering::Relaxed);
        }
        true
    }

    /// The choice between the two drawn candidates (positions in `cands`) at `now`: the
    /// cheaper one, unless one of them looks slow. A slow-looking candidate is taken only as
    /// a due probe (before cost: the probe rate must not depend on the other's load), else the
    /// other one is; when both look slow, the cheaper (as without exploration bounds), counted
    /// as its probe if one is due.
    fn decide(&self, a: usize, b: usize, now: u64) -> Option<BackendIndex> {
        let (ca, cb) = (self.cands.get(a)?, self.cands.get(b)?);
        let ((win, wpos), (lose, lpos)) = if cheaper(cb, ca, now) { ((cb, b), (ca, a)) } else { ((ca, a), (cb, b)) };
        let reference = self.reference_at(now);
        let win_slow = Self::looks_slow(win, now, reference) && !self.judge_probe(wpos, win, now, reference);
        let lose_slow = Self::looks_slow(lose, now, reference) && !self.judge_probe(lpos, lose, now, reference);
        let pick = match (win_slow, lose_slow) {
            (false, false) => win,
            (true, false) => {
                if self.claim_probe(wpos, now) {
                    win
                } else {
                    lose
                }
            }
            (false, true) => {
                if self.claim_probe(lpos, now) {
                    lose
                } else {
                    win
                }
            }
            (true, true) => {
                self.claim_probe(wpos, now);
                win
            }
        };
        Some(pick.index())
    }

    /// [`Scheduler::pick`] on a given clock (the tests drive it with a simulated one).
    fn pick_at(&self, tried: &Tried, now: u64) -> Option<BackendIndex> {
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
        self.decide(a, b, now)
    }
}

/// One candidate's probes while it looks slow. Claims go through a compare-and-swap on `last`,
/// so concurrent pickers take one probe per interval between them; each answer is judged once
/// through a compare-and-swap on `judged`.
#[derive(Debug, Default)]
struct ProbeState {
    /// `now_nanos` of the last probe (0: never).
    last: AtomicU64,
    /// The `last` whose answer has been judged (equal to `last`: answered and counted).
    judged: AtomicU64,
    /// Healthy probe answers in a row.
    healthy: AtomicU64,
    /// Times its probes declared it recovered.
    recoveries: AtomicU64,
}

/// The upper median of `values` (reordered), 0 for fewer than two: a median, so that one slow
/// backend (or a few) does not move the yardstick it is measured against.
fn upper_median(values: &mut [f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let mid = values.len() / 2;
    let (_, m, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    *m
}

/// Whether `b` costs strictly less than `a`: `load_b / w_b < load_a / w_a`, cross-multiplied so
/// no division is needed (weights are > 0, loads finite and positive).
///
/// Both estimates decay toward zero from their last samples by `exp(-(now - stamp) / tau)`;
/// read at the same `now`, the factor common to both cancels and only `exp((stamp_b -
/// stamp_a) / tau)` remains, so a pick needs one `exp`. A never-measured backend does not
/// decay, so when exactly one of the two is unmeasured both are read at `now`.
#[inline]
fn cheaper(b: &Candidate, a: &Candidate, now: u64) -> bool {
    let ((cost_a, stamp_a), (cost_b, stamp_b)) = (a.stats.ewma_sample(), b.stats.ewma_sample());
    if (stamp_a == 0) != (stamp_b == 0) {
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
        self.pick_at(tried, now_nanos())
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
    fn never_picks_the_slow_one_among_many_but_for_one_probe() {
        let s = set(&[1; 5]);
        for (i, b) in s.iter().enumerate() {
            b.stats.observe_latency_at(if i == 3 { 80_000_000 } else { 5_000_000 }, 1_000);
        }
        let p = PeakEwma::new(s, 2);
        // One instant: backend 3 looks slow, gets one probe, and that probe never answers.
        let mut c = [0usize; 5];
        for _ in 0..5_000 {
            if let Some(b) = p.pick_at(&Tried::new(), 1_000_000) {
                c[b] += 1;
            }
        }
        assert_eq!(c[3], 1, "{c:?}");
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

    /// Seeded lognormal service times: Box–Muller over SplitMix, so every run draws the same.
    struct Latencies(AtomicSplitMix);

    impl Latencies {
        fn unit(&self) -> f64 {
            ((self.0.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        fn lognormal_ns(&self, median_ms: f64, sigma: f64) -> u64 {
            let (u1, u2) = (self.unit(), self.unit());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (median_ms * 1e6 * (sigma * z).exp()) as u64
        }
    }

    /// What a simulated run saw: picks per second per backend, and backend `watched`'s answers.
    struct Sim {
        per_second: Vec<Vec<u32>>,
        /// `watched`'s answers, and how many of them looked healthy.
        answers: usize,
        healthy_answers: usize,
    }

    /// Drives `p` at `rate` picks a second of simulated time for `seconds`; each pick is
    /// answered at once with a lognormal (σ 0.5) sample of median `median_ms(backend, second)`.
    fn simulate(p: &PeakEwma, rate: u64, seconds: u64, seed: u64, watched: usize, median_ms: impl Fn(usize, u64) -> f64) -> Sim {
        let lat = Latencies(AtomicSplitMix::new(seed));
        let backends = p.set.as_slice();
        let mut sim = Sim { per_second: vec![vec![0; backends.len()]; seconds as usize], answers: 0, healthy_answers: 0 };
        for i in 0..rate * seconds {
            // Start one second in, so no stamp is 0 ("never measured").
            let now = 1_000_000_000 + i * (1_000_000_000 / rate);
            let second = i / rate;
            let b = p.pick_at(&Tried::new(), now).unwrap_or_else(|| panic!("no pick at {now}"));
            let sample = lat.lognormal_ns(median_ms(b, second), 0.5);
            if b == watched {
                sim.answers += 1;
                sim.healthy_answers += usize::from(PeakEwma::answers_healthy(sample, p.typical_answer()));
            }
            if let Some(row) = sim.per_second.get_mut(second as usize) {
                row[b] += 1;
            }
            backends[b].stats.observe_latency_at(sample, now);
        }
        sim
    }

    #[test]
    fn recovery_takes_two_healthy_answers_in_a_row() {
        let s = set(&[1; 5]);
        for (b, ms) in s.iter().zip([3, 4, 5, 80, 6]) {
            b.stats.observe_latency_at(ms * 1_000_000, 1_000);
        }
        let p = PeakEwma::new(Arc::clone(&s), 9);
        let slow = &s.as_slice()[3].stats;
        // Picks at `now` until backend 3 is probed (it is drawn in 2 of 5 picks), then answers
        // that probe with `answer_ms`; false if it was not picked at all in 1 000 picks.
        let probe = |now: u64, answer_ms: u64| {
            let picked = (0..1_000).any(|_| p.pick_at(&Tried::new(), now) == Some(3));
            if picked {
                slow.observe_latency_at(answer_ms * 1_000_000, now);
            }
            picked
        };
        let second = 1_000_000_000;
        let confirm = CONFIRM_INTERVAL_NS;
        // The typical answer is the upper median of the last answers, 5 ms: 2 ms answers are
        // healthy, 30 ms ones are not.
        assert!(probe(second, 2), "first probe");
        assert!(!probe(second + confirm / 2, 2), "a probe before the confirmation interval");
        // A slow answer breaks the run ...
        assert!(probe(second + confirm, 30), "second probe, sooner after a healthy answer");
        // ... and the next probe waits the full interval again.
        assert!(!probe(second + 2 * confirm, 2), "a confirmation probe after a slow answer");
        let t = 2 * second + confirm;
        assert!(probe(t, 2), "a healthy answer");
        assert!(!probe(t + confirm / 2, 2), "judged, not yet due");
        assert_eq!(p.recoveries(3), 0, "one healthy answer is not enough");
        assert!(slow.ewma_ns_at(t) > 20_000_000.0, "the estimate still holds the peak: {}", slow.ewma_ns());
        assert!(probe(t + confirm, 2), "second healthy answer");
        // The next pick that draws it judges the second answer: recovered, estimate restarted
        // at the reference, and from then on an ordinary candidate.
        let now = t + confirm + 1_000_000;
        let picks: Vec<_> = (0..1_000).filter_map(|_| p.pick_at(&Tried::new(), now)).collect();
        assert_eq!(p.recoveries(3), 1);
        assert!(slow.ewma_ns() < 5_000_000.0, "restarted at the reference: {}", slow.ewma_ns());
        // At the reference it beats the 6 ms backend, whenever drawn with it (1 pick in 10).
        let share = picks.iter().filter(|&&b| b == 3).count();
        assert!(share > 50, "backend 3 picked {share} times in 1 000 after recovering");
    }

    #[test]
    fn a_recovered_backend_gets_its_share_back_within_two_seconds() {
        // 11 backends at 1 000 picks/s; backend 5 median 40 ms for 10 s, then 5 ms like the rest.
        let p = PeakEwma::new(set(&[1; 11]), 10);
        let sim = simulate(&p, 1_000, 20, 11, 5, |b, second| if b == 5 && second < 10 { 40.0 } else { 5.0 });
        let shares: Vec<u32> = sim.per_second.iter().map(|row| row[5]).collect();
        // While slow (second 0 holds the first detection): one probe a second, plus at most a
        // confirmation after one of its rare fast answers.
        assert!(shares[1..10].iter().all(|&n| (1..=3).contains(&n)), "picks per second: {shares:?}");
        assert_eq!(p.recoveries(5), 1, "{shares:?}");
        // Recovered at 10 s: probed within a second, confirmed within 2 × 100 ms, so from the
        // second after next at least half its fair share (1 000 / 11 / 2 ≈ 45) every second.
        assert!(shares[12..].iter().all(|&n| n >= 45), "picks per second: {shares:?}");
    }

    #[test]
    fn a_slow_backend_with_a_fast_tail_stays_bounded() {
        // Backend 5 is 8× slower for half an hour simulated at 200 picks/s: a few of its
        // answers look healthy, but never two in a row.
        let p = PeakEwma::new(set(&[1; 11]), 12);
        let seconds = 1_800;
        let sim = simulate(&p, 200, seconds, 13, 5, |b, _| if b == 5 { 40.0 } else { 5.0 });
        assert!(sim.healthy_answers >= 2, "the fast tail was exercised: {} of {}", sim.healthy_answers, sim.answers);
        assert_eq!(p.recoveries(5), 0, "{} fast answers of {}", sim.healthy_answers, sim.answers);
        // One probe a second, and a confirmation probe after each fast answer (plus the first
        // second's unbounded picks before it looked slow).
        let bound = seconds as usize + sim.healthy_answers + 50;
        assert!(sim.answers <= bound, "{} probes in {seconds} s (bound {bound})", sim.answers);
        let busiest = sim.per_second[1..].iter().map(|row| row[5]).max().unwrap_or(0);
        assert!(busiest <= 3, "at most {busiest} picks in one second");
    }
}
