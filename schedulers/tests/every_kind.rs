//! Properties every scheduler must have, checked for each `SchedulerKind` through `build`.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::{ctx, set};
use schedulers::{BackendSet, PickContext, Scheduler, SchedulerKind, SchedulerOptions, Tried, build};

fn opts() -> SchedulerOptions {
    // A small prime table keeps the maglev builds in this file cheap.
    SchedulerOptions { maglev_table_size: 1009, seed: 17 }
}

fn each(weights: &[u32]) -> impl Iterator<Item = (SchedulerKind, Arc<dyn Scheduler>)> {
    let s = set(weights);
    SchedulerKind::ALL.into_iter().map(move |k| (k, build(k, Arc::clone(&s), &opts())))
}

#[test]
fn build_reports_its_kind_and_set() {
    let s = set(&[1, 2]);
    for k in SchedulerKind::ALL {
        let sched = build(k, Arc::clone(&s), &SchedulerOptions::default());
        assert_eq!(sched.kind(), k);
        assert!(Arc::ptr_eq(sched.backends(), &s), "{k}");
    }
}

#[test]
fn empty_set_picks_nothing() {
    for k in SchedulerKind::ALL {
        let sched = build(k, Arc::new(BackendSet::default()), &opts());
        for i in 0..10 {
            assert_eq!(sched.pick(&ctx(i), &Tried::new()), None, "{k}");
        }
    }
}

#[test]
fn all_weights_zero_picks_nothing() {
    for (k, sched) in each(&[0, 0, 0]) {
        for i in 0..10 {
            assert_eq!(sched.pick(&ctx(i), &Tried::new()), None, "{k}");
        }
    }
}

#[test]
fn one_backend_is_always_it() {
    for (k, sched) in each(&[3]) {
        for i in 0..200 {
            assert_eq!(sched.pick(&ctx(i), &Tried::new()), Some(0), "{k}");
        }
        let mut tried = Tried::new();
        tried.push(0);
        assert_eq!(sched.pick(&ctx(0), &tried), None, "{k}");
    }
    // The only pickable one among quiesced ones.
    for (k, sched) in each(&[0, 0, 5, 0]) {
        for i in 0..200 {
            assert_eq!(sched.pick(&ctx(i), &Tried::new()), Some(2), "{k}");
        }
    }
}

#[test]
fn picks_are_in_range_and_pickable() {
    let weights = [2, 0, 1, 3, 0, 1, 1];
    for (k, sched) in each(&weights) {
        let mut seen = HashSet::new();
        for i in 0..2_000 {
            let b = sched.pick(&ctx(i), &Tried::new()).unwrap_or_else(|| panic!("{k}: no pick"));
            assert!(b < weights.len(), "{k}: {b} out of range");
            assert!(weights[b] > 0, "{k}: picked quiesced {b}");
            seen.insert(b);
        }
        // dh keys on the one destination all these contexts share, and the lc family is a
        // deterministic function of (here constant) load; the rest must spread.
        use SchedulerKind::*;
        if !matches!(k, Dh | Lc | Wlc | Sed | Nq) {
            assert!(seen.len() >= 3, "{k}: only {seen:?} picked");
        }
    }
}

/// Retries until nothing is left; returns the order. Asserts no tried index is ever returned.
fn exhaust(k: SchedulerKind, sched: &dyn Scheduler, c: &PickContext) -> Vec<usize> {
    let mut tried = Tried::new();
    let mut order = Vec::new();
    while let Some(b) = sched.pick(c, &tried) {
        assert!(!tried.contains(b), "{k}: retry returned tried {b} after {order:?}");
        order.push(b);
        assert!(tried.push(b), "{k}: more picks than candidates: {order:?}");
    }
    order
}

#[test]
fn retries_never_repeat_and_end_with_none() {
    let weights = [1, 4, 0, 2, 1, 3];
    for (k, sched) in each(&weights) {
        for i in 0..100 {
            let mut order = exhaust(k, sched.as_ref(), &ctx(i));
            order.sort_unstable();
            assert_eq!(order, [0, 1, 3, 4, 5], "{k}: every pickable one exactly once");
        }
    }
}

#[test]
fn retries_under_load_and_latency() {
    // Load-aware schedulers must still honour `tried` when the tried one looks best.
    let weights = [1, 1, 1, 1];
    let s = set(&weights);
    s.as_slice()[1].stats.set_active(7);
    s.as_slice()[2].stats.set_active(2);
    s.as_slice()[3].stats.observe_latency_at(30_000_000, 10);
    for k in SchedulerKind::ALL {
        let sched = build(k, Arc::clone(&s), &opts());
        for i in 0..50 {
            let order = exhaust(k, sched.as_ref(), &ctx(i));
            assert_eq!(order.len(), 4, "{k}: {order:?}");
        }
    }
}

#[test]
fn tried_entries_outside_the_set_are_harmless() {
    for (k, sched) in each(&[1, 1]) {
        let mut tried = Tried::new();
        tried.push(99);
        let b = sched.pick(&ctx(0), &tried);
        assert!(matches!(b, Some(0 | 1)), "{k}: {b:?}");
    }
}

#[test]
fn concurrent_picks_are_safe() {
    for (k, sched) in each(&[1, 2, 3]) {
        std::thread::scope(|scope| {
            for t in 0..4u32 {
                let sched = Arc::clone(&sched);
                scope.spawn(move || {
                    for i in 0..1_000 {
                        let b = sched.pick(&ctx(t * 1_000 + i), &Tried::new());
                        assert!(matches!(b, Some(0..=2)), "{k}: {b:?}");
                    }
                });
            }
        });
    }
}
