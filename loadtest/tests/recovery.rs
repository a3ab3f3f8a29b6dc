//! Bounded exploration in ewma, both halves, through the in-process engine. A test binary of
//! its own: cargo runs test binaries one after another, so no other scenario of this crate
//! competes with it for the CPU while it measures how fast a recovered backend gets its share
//! back (the estimates' decay runs on the real clock, so the run cannot be shortened below it).

use loadtest::runner::{RunOptions, run_scenario};
use loadtest::scenario::find;
use schedulers::SchedulerKind;

/// Bounded exploration, both halves, through the engine: while backend 5 is 8× slower, ewma
/// probes it at a bounded rate (a small share, far under its fair one); once it recovers, ewma
/// gives it back at least half its fair share within 5 s. Half the scenario's time line (10 s
/// measured: slow for 5 s, then normal) at the scenario's 1 000 req/s; the estimates' decay is
/// not scaled, so the recovery is measured on the real clock the engine runs on. (At lower
/// rates the healthy backends' estimates, and so the reference, sit lower while the recovered
/// backend's estimate still falls with the 10 s decay: it takes longer to stop looking slow.)
#[test]
#[ignore = "issue 15 item 1 is not met reliably yet: a recovered backend probed once a second only blends each fast sample in with the 10 s decay, so on a loaded machine it can take longer than 5 s to stop looking slow (see loadtest/RESULTS.md); run with --ignored"]
fn ewma_probes_a_slow_backend_sparingly_and_gives_it_back_its_share_after_it_recovers() {
    let mut s = find("slow-then-recovers").unwrap_or_else(|| panic!("scenario missing")).scaled(0.5);
    s.schedulers = vec![SchedulerKind::Ewma];
    let slow = s.backends.iter().position(|b| b.slow.is_some()).unwrap_or_else(|| panic!("no slow backend"));
    let sr = run_scenario(&s, &RunOptions { quiet: true, ..RunOptions::default() }).unwrap_or_else(|e| panic!("run failed: {e:#}"));
    let r = sr.runs.first().unwrap_or_else(|| panic!("no run"));
    assert_eq!(r.sent, r.recorded + r.failed, "every request accounted for");
    let fair = 1.0 / 11.0;
    let shares: Vec<f64> = r.per_second.iter().map(|sec| sec.share[slow]).collect();
    assert_eq!(r.per_second.len(), 10, "one row per measured second: {shares:?}");
    for sec in &r.per_second {
        let total: u64 = sec.requests.iter().sum();
        assert!(total > 0 && (sec.share.iter().sum::<f64>() - 1.0).abs() < 1e-9, "second {}: {sec:?}", sec.t);
    }
    // Seconds 1..5 are wholly slow (second 0 holds the first detection): about one probe per
    // second at 1 000 req/s, 0.1 %; 2 % leaves room for a noisy machine.
    let slow_phase = &shares[1..5];
    assert!(slow_phase.iter().all(|&x| x < 0.02), "shares per second while slow: {shares:?}");
    let [recovery] = r.recovery.as_slice() else { panic!("one recovery expected: {:?}", r.recovery) };
    assert_eq!((recovery.backend, recovery.recovered_at), (slow, 5.0));
    let back = recovery.back_within.unwrap_or_else(|| panic!("never back to half its fair share: {shares:?}"));
    assert!(back <= 5.0, "back to ≥ 50% of its fair share {back} s after recovering: {shares:?}");
    assert!(shares[9] >= fair / 2.0, "still at ≥ half its fair share at the end: {shares:?}");
}
