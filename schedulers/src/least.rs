//! The least-connection family (IPVS `lc`, `wlc`, `sed`, `nq`): the backend with the least
//! open connections, optionally relative to its weight.
//!
//! IPVS counts `active << 8 + inactive` (a TIME_WAIT-ish connection costs 1/256 of an open
//! one). tpvs has no inactive state — a closed connection is gone — so the overhead is the
//! active count from [`crate::stats::BackendStats::active`], which the data plane keeps exact
//! with a drop guard. Everything else follows the kernel sources:
//!
//! | rule | minimises | source |
//! |---|---|---|
//! | `lc` | `active` (weight only gates: 0 = never) | `ip_vs_lc.c` |
//! | `wlc` | `active / weight` | `ip_vs_wlc.c` |
//! | `sed` | `(active + 1) / weight` | `ip_vs_sed.c` |
//! | `nq` | the first idle backend; if none, as `sed` | `ip_vs_nq.c` |
//!
//! Ratios are compared by cross-multiplication in integers (`a₁·w₂ < a₂·w₁`), as the kernel
//! does: no floats, no division, no rounding ties. Ties go to the earliest backend in set
//! order because the comparison is strict, again as in the kernel.
//!
//! A first choice is O(1) at any set size: the rule orders a [`Tournament`] tree whose root is
//! the first best backend, kept current by every change of an active count (O(log n) on each
//! open and close of a connection to a backend in the set). nq's "first idle backend, else as
//! sed" is the same tree under one order: every idle backend ties with every other and beats
//! any busy one, busy ones compare as in sed.
//!
//! A retry whose tried list holds the tree's leader scans the untried candidates (O(n), rare:
//! only after a failed connect). Both paths apply the same rule, so they pick alike.

use std::fmt;
use std::sync::Arc;

use crate::backend::BackendSet;
use crate::candidates::{Candidate, pickable};
use crate::context::{PickContext, Tried};
use crate::scheduler::{BackendIndex, Scheduler, SchedulerKind};
use crate::tournament::{Order, Tournament};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Least connections.
    Lc,
    /// Weighted least connections.
    Wlc,
    /// Shortest expected delay.
    Sed,
    /// Never queue.
    Nq,
}

impl Rule {
    pub fn kind(self) -> SchedulerKind {
        match self {
            Rule::Lc => SchedulerKind::Lc,
            Rule::Wlc => SchedulerKind::Wlc,
            Rule::Sed => SchedulerKind::Sed,
            Rule::Nq => SchedulerKind::Nq,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind().fmt(f)
    }
}

impl Order for Rule {
    #[inline]
    fn better(&self, a: &Candidate, b: &Candidate) -> bool {
        let (oh_a, oh_b) = (a.stats.active(), b.stats.active());
        match self {
            Rule::Lc => oh_a < oh_b,
            Rule::Wlc => ratio_less(oh_a, a.weight, oh_b, b.weight),
            Rule::Sed => ratio_less(oh_a.saturating_add(1), a.weight, oh_b.saturating_add(1), b.weight),
            Rule::Nq => match (oh_a == 0, oh_b == 0) {
                (true, idle_b) => !idle_b,
                (false, true) => false,
                (false, false) => ratio_less(oh_a.saturating_add(1), a.weight, oh_b.saturating_add(1), b.weight),
            },
        }
    }
}

#[derive(Debug)]
pub struct LeastConnections {
    set: Arc<BackendSet>,
    rule: Rule,
    index: Arc<Tournament<Rule>>,
}

impl LeastConnections {
    pub fn new(set: Arc<BackendSet>, rule: Rule) -> Self {
        let index = Tournament::new(pickable(&set), rule);
        LeastConnections { set, rule, index }
    }

    pub fn rule(&self) -> Rule {
        self.rule
    }
}

impl Drop for LeastConnections {
    fn drop(&mut self) {
        // The stats hold the tree while it is subscribed; a replaced table must not leave
        // its index behind, updated on every connection for nothing.
        self.index.unsubscribe();
    }
}

/// `oh_a / w_a < oh_b / w_b`, exactly, by cross-multiplication.
///
/// Counts below 2^32 (every real one) make both products fit in u64, the common fast path; the
/// u128 path keeps the comparison exact for any u64 count times any u32 weight.
#[inline(always)]
fn ratio_less(oh_a: u64, w_a: u32, oh_b: u64, w_b: u32) -> bool {
    if (oh_a | oh_b) >> 32 == 0 {
        oh_a * u64::from(w_b) < oh_b * u64::from(w_a)
    } else {
        u128::from(oh_a) * u128::from(w_b) < u128::from(oh_b) * u128::from(w_a)
    }
}

impl LeastConnections {
    /// One scan under `self.rule`, skipping candidates `skip` rejects: the retry path, and the
    /// reference the tree is tested against.
    #[inline(always)]
    fn scan(&self, skip: impl Fn(usize) -> bool) -> Option<BackendIndex> {
        match self.rule {
            Rule::Lc => self.min_active(skip),
            Rule::Wlc => self.min_ratio::<0, false>(skip),
            Rule::Sed => self.min_ratio::<1, false>(skip),
            Rule::Nq => self.min_ratio::<1, true>(skip),
        }
    }

    /// lc: the fewest active connections; weight only gates (0 never gets here).
    #[inline(always)]
    fn min_active(&self, skip: impl Fn(usize) -> bool) -> Option<BackendIndex> {
        let mut best: Option<(u32, u64)> = None;
        for c in self.index.candidates() {
            if skip(c.index()) {
                continue;
            }
            let active = c.stats.active();
            // Strict: ties stay with the earlier backend.
            if best.is_none_or(|(_, b)| active < b) {
                best = Some((c.index, active));
            }
        }
        best.map(|(i, _)| i as usize)
    }

    /// wlc (`PLUS` = 0), sed (`PLUS` = 1) and nq (`PLUS` = 1, `IDLE_WINS`): the least
    /// `(active + PLUS) / weight`; with `IDLE_WINS` the first idle backend ends the scan, as in
    /// ip_vs_nq.c.
    #[inline(always)]
    fn min_ratio<const PLUS: u64, const IDLE_WINS: bool>(&self, skip: impl Fn(usize) -> bool) -> Option<BackendIndex> {
        let mut best: Option<(u32, u64, u32)> = None;
        for c in self.index.candidates() {
            if skip(c.index()) {
                continue;
            }
            let active = c.stats.active();
            if IDLE_WINS && active == 0 {
                return Some(c.index());
            }
            let overhead = active.saturating_add(PLUS);
            if best.is_none_or(|(_, b_overhead, b_weight)| ratio_less(overhead, c.weight, b_overhead, b_weight)) {
                best = Some((c.index, overhead, c.weight));
            }
        }
        best.map(|(i, _, _)| i as usize)
    }
}

impl Scheduler for LeastConnections {
    fn kind(&self) -> SchedulerKind {
        self.rule.kind()
    }

    fn backends(&self) -> &Arc<BackendSet> {
        &self.set
    }

    fn pick(&self, _ctx: &PickContext, tried: &Tried) -> Option<BackendIndex> {
        // The leader is the first best of all candidates, so also of the untried ones unless
        // it was tried itself.
        match self.index.leader() {
            Some(c) if !tried.contains(c.index()) => Some(c.index()),
            None => None,
            Some(_) => self.scan(|i| tried.contains(i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::candidates::test_support::{ctx, set};

    /// A scheduler of `rule` over backends with these weights and active counts.
    fn with_load(rule: Rule, weights: &[u32], active: &[u64]) -> LeastConnections {
        let s = set(weights);
        for (b, &a) in s.iter().zip(active) {
            b.stats.set_active(a);
        }
        LeastConnections::new(s, rule)
    }

    fn first(rule: Rule, weights: &[u32], active: &[u64]) -> Option<usize> {
        with_load(rule, weights, active).pick(&ctx(0), &Tried::new())
    }

    #[test]
    fn lc_takes_fewest_active_ignoring_weight() {
        assert_eq!(first(Rule::Lc, &[1, 1, 1], &[5, 2, 9]), Some(1));
        assert_eq!(first(Rule::Lc, &[100, 1, 1], &[5, 4, 9]), Some(1), "weight does not scale lc");
        assert_eq!(first(Rule::Lc, &[1, 0, 1], &[5, 0, 9]), Some(0), "weight 0 is never picked");
        assert_eq!(first(Rule::Lc, &[1, 1, 1], &[3, 3, 3]), Some(0), "ties go to the first");
        assert_eq!(first(Rule::Lc, &[1, 1, 1], &[4, 3, 3]), Some(1), "ties go to the first");
    }

    #[test]
    fn wlc_divides_by_weight() {
        // 6/3 = 2 < 3/1 = 3.
        assert_eq!(first(Rule::Wlc, &[1, 3], &[3, 6]), Some(1));
        // 4/2 = 2 = 2/1: tie → first.
        assert_eq!(first(Rule::Wlc, &[2, 1], &[4, 2]), Some(0));
        assert_eq!(first(Rule::Wlc, &[1, 2], &[2, 4]), Some(0));
    }

    #[test]
    fn wlc_and_sed_differ() {
        // Idle backends: wlc sees 0/1 = 0/10 (tie → first, the weight-1 one); sed sees
        // 1/1 > 1/10 and sends the connection to the heavy backend, which is sed's point.
        assert_eq!(first(Rule::Wlc, &[1, 10], &[0, 0]), Some(0));
        assert_eq!(first(Rule::Sed, &[1, 10], &[0, 0]), Some(1));
        // wlc: 1/1 = 1 < 12/10; sed: 2/1 = 2 > 13/10.
        assert_eq!(first(Rule::Wlc, &[1, 10], &[1, 12]), Some(0));
        assert_eq!(first(Rule::Sed, &[1, 10], &[1, 12]), Some(1));
    }

    #[test]
    fn nq_prefers_any_idle_backend_over_sed() {
        // sed: (0+1)/1 = 1 vs (3+1)/10 = 0.4 → the heavy busy one; nq: the idle one.
        assert_eq!(first(Rule::Sed, &[10, 1], &[3, 0]), Some(0));
        assert_eq!(first(Rule::Nq, &[10, 1], &[3, 0]), Some(1));
        // The first idle one in set order, even if a later idle one is heavier.
        assert_eq!(first(Rule::Nq, &[5, 1, 10], &[2, 0, 0]), Some(1));
        // Nobody idle: exactly sed. (2+1)/1 = 3, (5+1)/4 = 1.5, (3+1)/2 = 2.
        assert_eq!(first(Rule::Nq, &[1, 4, 2], &[2, 5, 3]), Some(1));
        assert_eq!(first(Rule::Sed, &[1, 4, 2], &[2, 5, 3]), Some(1));
    }

    #[test]
    fn retry_skips_tried_in_rule_order() {
        let s = with_load(Rule::Wlc, &[1, 1, 1, 0], &[3, 1, 2, 0]);
        let mut tried = Tried::new();
        let mut order = Vec::new();
        while let Some(i) = s.pick(&ctx(0), &tried) {
            order.push(i);
            tried.push(i);
        }
        assert_eq!(order, [1, 2, 0], "next-least each time; the quiesced backend never");
    }

    #[test]
    fn idle_nq_backend_that_was_tried_is_skipped() {
        let s = with_load(Rule::Nq, &[1, 1, 1], &[0, 4, 2]);
        let mut tried = Tried::new();
        tried.push(0);
        assert_eq!(s.pick(&ctx(0), &tried), Some(2));
    }

    const RULES: [Rule; 4] = [Rule::Lc, Rule::Wlc, Rule::Sed, Rule::Nq];

    /// The indexed pick equals the scan's pick: first choice, a retry that skips the leader,
    /// and a retry that skips `other`.
    fn assert_index_matches_scan(s: &LeastConnections, other: usize) {
        let first = s.scan(|_| false);
        assert_eq!(s.pick(&ctx(0), &Tried::new()), first, "{} first choice", s.rule);
        for skip in [first, Some(other)].into_iter().flatten() {
            let mut tried = Tried::new();
            tried.push(skip);
            assert_eq!(s.pick(&ctx(0), &tried), s.scan(|i| i == skip), "{} retry without {skip}", s.rule);
        }
    }

    /// One change to the counters (or to the schedulers) in a random update sequence.
    #[derive(Clone, Debug)]
    enum Op {
        Open(usize),
        Close(usize),
        Set(usize, u64),
        /// Drop scheduler `k` (of the ones over either set) and build it again.
        Rebuild(usize),
    }

    fn op(n: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..n).prop_map(Op::Open),
            4 => (0..n).prop_map(Op::Close),
            1 => (0..n, 0u64..6).prop_map(|(i, a)| Op::Set(i, a)),
            1 => (0..2 * RULES.len()).prop_map(Op::Rebuild),
        ]
    }

    fn case() -> impl Strategy<Value = (Vec<u32>, Vec<u64>, Vec<Op>)> {
        (1usize..40).prop_flat_map(|n| {
            (
                proptest::collection::vec(prop_oneof![1 => Just(0u32), 6 => 1u32..5], n),
                proptest::collection::vec(0u64..4, n),
                proptest::collection::vec(op(n), 0..80),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Two sets share the same stats (as sets of different Services sharing endpoints do,
        /// through the registry): the full set with the drawn weights, and every other backend
        /// with reversed weights. Every scheduler over either must agree with its scan after
        /// every change.
        #[test]
        fn indexed_pick_equals_scan(case in case()) {
            let (weights, active, ops) = case;
            let all = set(&weights);
            for (b, &a) in all.iter().zip(&active) {
                b.stats.set_active(a);
            }
            let mut halves: Vec<_> = all.iter().step_by(2).cloned().collect();
            let reversed: Vec<u32> = halves.iter().rev().map(|b| b.weight).collect();
            for (b, w) in halves.iter_mut().zip(reversed) {
                b.weight = w;
            }
            let half = Arc::new(BackendSet::new(halves));
            let sets = [all, half];
            let build = |k: usize| LeastConnections::new(Arc::clone(&sets[k / RULES.len()]), RULES[k % RULES.len()]);
            let mut scheds: Vec<LeastConnections> = (0..2 * RULES.len()).map(build).collect();
            let mut guards: Vec<Vec<crate::stats::ActiveGuard>> = weights.iter().map(|_| Vec::new()).collect();
            for op in ops {
                match op {
                    Op::Open(i) => guards[i].push(sets[0].as_slice()[i].stats.open()),
                    Op::Close(i) => drop(guards[i].pop()),
                    Op::Set(i, a) => {
                        // A direct store loses track of guards; only on backends with none.
                        if guards[i].is_empty() {
                            sets[0].as_slice()[i].stats.set_active(a);
                        }
                    }
                    Op::Rebuild(k) => {
                        scheds[k] = build(k);
                    }
                }
                for (k, s) in scheds.iter().enumerate() {
                    assert_index_matches_scan(s, k % weights.len());
                }
            }
            for (i, b) in sets[0].iter().enumerate() {
                let subscribed = if b.weight > 0 { RULES.len() } else { 0 }
                    + if i % 2 == 0 && sets[1].as_slice()[i / 2].weight > 0 { RULES.len() } else { 0 };
                prop_assert_eq!(b.stats.watcher_count(), subscribed, "backend {}", i);
            }
            drop(scheds);
            prop_assert!(sets[0].iter().all(|b| b.stats.watcher_count() == 0), "dropped schedulers unsubscribe");
        }
    }

    /// Opens and closes from several threads at once, in rounds: after each round (all
    /// threads stopped at a barrier) every index must agree with its scan. A few backends, so
    /// the threads' paths to the root collide on every update — where an unserialised
    /// recomputation would leave a stale winner behind.
    #[test]
    fn concurrent_updates_leave_the_index_exact() {
        const THREADS: usize = 2;
        const ROUNDS: usize = 60_000;
        const BURST: usize = 2;
        let weights = [1, 2, 3, 1, 2, 3, 1, 4];
        let s = set(&weights);
        let scheds: Vec<LeastConnections> = RULES.iter().map(|&r| LeastConnections::new(Arc::clone(&s), r)).collect();
        let barrier = std::sync::Barrier::new(THREADS + 1);
        let mut stale = Vec::new();
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (s, barrier) = (Arc::clone(&s), &barrier);
                scope.spawn(move || {
                    // A per-thread xorshift: opens and closes on random backends.
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
                    let mut mine = Vec::new();
                    for _ in 0..ROUNDS {
                        for _ in 0..BURST {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let i = (x >> 8) as usize % s.len();
                            if x & 1 == 0 || mine.is_empty() {
                                mine.push(s.as_slice()[i].stats.open());
                            } else {
                                mine.swap_remove(i % mine.len());
                            }
                        }
                        barrier.wait();
                        barrier.wait();
                    }
                });
            }
            for round in 0..ROUNDS {
                barrier.wait();
                // Counted, not asserted here: a panic now would leave the workers waiting.
                for sc in &scheds {
                    if sc.pick(&ctx(0), &Tried::new()) != sc.scan(|_| false) {
                        stale.push((sc.rule, round));
                    }
                }
                barrier.wait();
            }
        });
        assert!(stale.is_empty(), "index behind its counters after {} of {ROUNDS} rounds: {stale:?}", stale.len());
        assert!(s.iter().all(|b| b.stats.active() == 0), "every guard dropped with its thread");
        for sc in &scheds {
            assert_index_matches_scan(sc, 5);
        }
    }

    #[test]
    fn counts_beyond_32_bits_compare_exactly() {
        assert_eq!(first(Rule::Wlc, &[u32::MAX, 1], &[u64::MAX, u64::MAX / 2]), Some(0));
        assert_eq!(first(Rule::Sed, &[1, 1], &[u64::MAX - 1, u64::MAX - 3]), Some(1));
    }
}
