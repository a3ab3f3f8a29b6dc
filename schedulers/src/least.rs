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
//! A pick reads one counter per pickable backend: O(n), inherent to exact least-connection
//! (the counters change under our feet, so no index can be kept), and why the candidates are
//! kept in a compact array.

use std::fmt;
use std::sync::Arc;

use crate::backend::BackendSet;
use crate::candidates::{Candidate, pickable};
use crate::context::{PickContext, Tried};
use crate::scheduler::{BackendIndex, Scheduler, SchedulerKind};

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

#[derive(Debug)]
pub struct LeastConnections {
    set: Arc<BackendSet>,
    rule: Rule,
    cands: Vec<Candidate>,
}

impl LeastConnections {
    pub fn new(set: Arc<BackendSet>, rule: Rule) -> Self {
        let cands = pickable(&set);
        LeastConnections { set, rule, cands }
    }

    pub fn rule(&self) -> Rule {
        self.rule
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
    /// One scan under `self.rule`, skipping candidates `skip` rejects. Generic over `skip` so
    /// the first-choice path (nothing tried) compiles to a scan with no skip test at all.
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
        for c in &self.cands {
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
        for c in &self.cands {
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
        if tried.is_empty() { self.scan(|_| false) } else { self.scan(|i| tried.contains(i)) }
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn counts_beyond_32_bits_compare_exactly() {
        assert_eq!(first(Rule::Wlc, &[u32::MAX, 1], &[u64::MAX, u64::MAX / 2]), Some(0));
        assert_eq!(first(Rule::Sed, &[1, 1], &[u64::MAX - 1, u64::MAX - 3]), Some(1));
    }
}
