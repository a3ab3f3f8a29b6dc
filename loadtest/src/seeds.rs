//! One scenario run with several seeds: every seed's runs kept, and per scheduler the median and
//! the spread (min–max) across seeds of what the tables show. The best scheduler is decided by
//! the usual rule ([`summary::best_of`]) on the medians, and the report says when the seeds'
//! own bests disagree with it.
//!
//! A seed fixes the backends' service times and the randomised schedulers' choices; what it
//! does not fix (the machine's other load, timer jitter) is exactly what the spread shows. A
//! difference between two schedulers smaller than their spreads is not a result.

use serde::{Deserialize, Serialize};

use crate::summary::{self, RunResult, ScenarioReport, Standing};

/// Median and range of one number across seeds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values; NaNs are left out (a run with nothing to measure).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Spread { median, min: v[0], max: v[n - 1] })
    }
}

/// One seed's runs (every scheduler) and that seed's own best.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeedRuns {
    pub seed: u64,
    pub runs: Vec<RunResult>,
    pub best: Option<String>,
}

/// One scheduler across seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SchedulerSpread {
    pub scheduler: String,
    /// Seeds this scheduler ran with.
    pub seeds: usize,
    pub success_rate: Spread,
    pub p50: Spread,
    pub p90: Spread,
    pub p99: Spread,
    pub p999: Spread,
    pub max: Spread,
    /// Summed share of the odd backends (stalled, slow, capped); `None` when there are none.
    pub odd_share: Option<Spread>,
    /// Share of each backend, by index.
    pub shares: Vec<Spread>,
    /// Seeds in whose run it was [`summary::pinned`].
    pub pinned_in: usize,
}

impl SchedulerSpread {
    /// Pinned in most seeds: not eligible for best, as a pinned run is not.
    pub fn pinned(&self) -> bool {
        2 * self.pinned_in > self.seeds
    }

    fn standing(&self) -> Standing {
        Standing { pinned: self.pinned(), success_rate: self.success_rate.median, p99: self.p99.median, p999: self.p999.median }
    }
}

/// The aggregate of several seeds of one scenario.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeedSpread {
    /// In the order they ran; the first is the report's own `seed` and `runs`.
    pub seeds: Vec<u64>,
    /// In the order of the first seed's runs.
    pub schedulers: Vec<SchedulerSpread>,
    /// Each seed's own best, in `seeds` order.
    pub best_by_seed: Vec<Option<String>>,
}

impl SeedSpread {
    /// Whether some seed's own best differs from the best on the medians.
    pub fn seeds_disagree(&self, best: Option<&str>) -> bool {
        self.best_by_seed.iter().any(|b| b.as_deref() != best)
    }

    pub fn get(&self, scheduler: &str) -> Option<&SchedulerSpread> {
        self.schedulers.iter().find(|s| s.scheduler == scheduler)
    }
}

fn odd_share(r: &RunResult) -> Option<f64> {
    r.backends.iter().any(|b| !b.label.is_empty()).then(|| r.backends.iter().filter(|b| !b.label.is_empty()).map(|b| b.share).sum())
}

/// The spread of each scheduler over `seeds` (each seed's runs).
pub fn aggregate(seeds: &[(u64, &[RunResult])]) -> SeedSpread {
    let mut names: Vec<&str> = Vec::new();
    for (_, runs) in seeds {
        for r in *runs {
            if !names.contains(&r.scheduler.as_str()) {
                names.push(&r.scheduler);
            }
        }
    }
    let schedulers = names
        .iter()
        .map(|name| {
            let runs: Vec<&RunResult> = seeds.iter().filter_map(|(_, runs)| runs.iter().find(|r| r.scheduler == *name)).collect();
            let of = |f: &dyn Fn(&RunResult) -> f64| Spread::of(runs.iter().map(|r| f(r))).unwrap_or_default();
            let n_backends = runs.iter().map(|r| r.backends.len()).max().unwrap_or(0);
            SchedulerSpread {
                scheduler: (*name).to_string(),
                seeds: runs.len(),
                success_rate: of(&|r| r.success_rate),
                p50: of(&|r| r.latency.p50),
                p90: of(&|r| r.latency.p90),
                p99: of(&|r| r.latency.p99),
                p999: of(&|r| r.latency.p999),
                max: of(&|r| r.latency.max),
                odd_share: Spread::of(runs.iter().filter_map(|r| odd_share(r))),
                shares: (0..n_backends)
                    .map(|i| Spread::of(runs.iter().map(|r| r.backends.get(i).map_or(0.0, |b| b.share))).unwrap_or_default())
                    .collect(),
                pinned_in: runs.iter().filter(|r| summary::pinned(r)).count(),
            }
        })
        .collect();
    let best_by_seed = seeds.iter().map(|(_, runs)| best_name(runs)).collect();
    SeedSpread { seeds: seeds.iter().map(|(s, _)| *s).collect(), schedulers, best_by_seed }
}

fn best_name(runs: &[RunResult]) -> Option<String> {
    summary::best(runs).and_then(|i| runs.get(i)).map(|r| r.scheduler.clone())
}

/// The best scheduler on the medians.
pub fn best(spread: &SeedSpread) -> Option<String> {
    let standings: Vec<Standing> = spread.schedulers.iter().map(SchedulerSpread::standing).collect();
    summary::best_of(&standings).and_then(|i| spread.schedulers.get(i)).map(|s| s.scheduler.clone())
}

/// One report of a scenario from its reports with each seed (in the order given): the first
/// seed's runs stay `runs`, the others go to `other_seeds`, and the spread and best are
/// computed over all. A single report is returned as it is.
pub fn combine(mut reports: Vec<ScenarioReport>) -> Option<ScenarioReport> {
    if reports.is_empty() {
        return None;
    }
    let mut first = reports.remove(0);
    first.other_seeds = reports.into_iter().map(|r| SeedRuns { seed: r.seed, best: r.best, runs: r.runs }).collect();
    rejudge(&mut first);
    Some(first)
}

/// One report of a scenario from reports written by separate invocations (e.g. seed 1 one
/// day, seeds 2 and 3 the next), each possibly with several seeds already: every seed's runs
/// are pooled, in the order given, and judged together as [`combine`] does. The reports must
/// be of the same scenario at the same time scale, and no seed may appear twice (the same seed
/// twice would count one measurement as two).
pub fn merge(reports: Vec<ScenarioReport>) -> Result<Option<ScenarioReport>, String> {
    let mut per_seed: Vec<ScenarioReport> = Vec::new();
    for mut r in reports {
        let others = std::mem::take(&mut r.other_seeds);
        r.spread = None;
        let template = r.clone();
        per_seed.push(r);
        per_seed.extend(others.into_iter().map(|o| ScenarioReport { seed: o.seed, runs: o.runs, best: o.best, ..template.clone() }));
    }
    let Some(first) = per_seed.first() else { return Ok(None) };
    let (name, scale) = (first.scenario.name.clone(), first.time_scale);
    let mut seen = std::collections::BTreeSet::new();
    for r in &per_seed {
        if r.scenario.name != name || r.time_scale != scale {
            return Err(format!(
                "cannot merge scenario {:?} at time scale {} with {:?} at time scale {}",
                r.scenario.name, r.time_scale, name, scale
            ));
        }
        if !seen.insert(r.seed) {
            return Err(format!("seed {} of scenario {name:?} appears twice", r.seed));
        }
    }
    Ok(combine(per_seed))
}

/// Recomputes every seed's best, the spread and the report's best with the current rules (a
/// report with one seed gets its plain best).
pub fn rejudge(sr: &mut ScenarioReport) {
    for s in &mut sr.other_seeds {
        s.best = best_name(&s.runs);
    }
    if sr.other_seeds.is_empty() {
        sr.spread = None;
        sr.best = best_name(&sr.runs);
        return;
    }
    let mut all: Vec<(u64, &[RunResult])> = vec![(sr.seed, &sr.runs)];
    all.extend(sr.other_seeds.iter().map(|s| (s.seed, s.runs.as_slice())));
    let spread = aggregate(&all);
    sr.best = best(&spread);
    sr.spread = Some(spread);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::tests::run;

    /// A scenario report with one seed's runs, for merging.
    fn one_seed(seed: u64, runs: Vec<RunResult>) -> ScenarioReport {
        let scenario = crate::scenario::find("baseline").unwrap_or_else(|| panic!("scenario missing"));
        ScenarioReport { scenario, time_scale: 1.0, seed, runs, best: None, other_seeds: Vec::new(), spread: None }
    }

    #[test]
    fn reports_of_separate_invocations_merge_into_one_spread_and_refuse_a_repeated_seed() {
        let a = one_seed(1, vec![run("rr", 1.0, 10.0, &[0.5, 0.5]), run("lc", 1.0, 20.0, &[0.5, 0.5])]);
        let bc = combine(vec![
            one_seed(2, vec![run("rr", 1.0, 30.0, &[0.5, 0.5]), run("lc", 1.0, 21.0, &[0.5, 0.5])]),
            one_seed(3, vec![run("rr", 1.0, 50.0, &[0.5, 0.5]), run("lc", 1.0, 22.0, &[0.5, 0.5])]),
        ])
        .unwrap_or_else(|| panic!("no report"));
        let merged = merge(vec![a.clone(), bc.clone()]).unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!("no report"));
        assert_eq!(merged.seed, 1);
        assert_eq!(merged.other_seeds.iter().map(|s| s.seed).collect::<Vec<_>>(), vec![2, 3]);
        let spread = merged.spread.as_ref().unwrap_or_else(|| panic!("no spread"));
        let rr = spread.get("rr").unwrap_or_else(|| panic!("rr missing"));
        assert_eq!((rr.p99.median, rr.p99.min, rr.p99.max), (30.0, 10.0, 50.0));
        assert_eq!(merged.best.as_deref(), Some("lc"), "lc's median p99 (21) beats rr's (30)");
        let again = merge(vec![a.clone(), a]).err().unwrap_or_else(|| panic!("a repeated seed merged"));
        assert!(again.contains("seed 1"), "{again}");
        let mut other = bc;
        other.time_scale = 0.1;
        assert!(merge(vec![one_seed(9, Vec::new()), other]).is_err(), "different time scales merged");
    }

    #[test]
    fn spread_is_median_min_max_and_even_counts_average_the_middle() {
        assert_eq!(Spread::of([18.0, 17.1, 17.4]), Some(Spread { median: 17.4, min: 17.1, max: 18.0 }));
        assert_eq!(Spread::of([4.0, 1.0, 3.0, 2.0]), Some(Spread { median: 2.5, min: 1.0, max: 4.0 }));
        assert_eq!(Spread::of([5.0]), Some(Spread { median: 5.0, min: 5.0, max: 5.0 }));
        assert_eq!(Spread::of([f64::NAN, 2.0]), Some(Spread { median: 2.0, min: 2.0, max: 2.0 }));
        assert_eq!(Spread::of(std::iter::empty()), None);
    }

    fn with_odd(mut r: RunResult, odd: usize) -> RunResult {
        if let Some(b) = r.backends.get_mut(odd) {
            b.label = "stalled".into();
        }
        r
    }

    #[test]
    fn best_is_decided_on_medians_and_disagreeing_seeds_are_reported() {
        let even = [0.34, 0.33, 0.33];
        // Seed 2 is a bad one for "a" (a noisy neighbour): a's median is still the lowest.
        let seed = |a: f64, b: f64| vec![with_odd(run("a", 1.0, a, &even), 2), with_odd(run("b", 1.0, b, &even), 2)];
        let (s1, s2, s3) = (seed(10.0, 12.0), seed(30.0, 11.0), seed(9.0, 13.0));
        let spread = aggregate(&[(1, &s1), (2, &s2), (3, &s3)]);
        let a = spread.get("a").unwrap_or_else(|| panic!("a missing"));
        assert_eq!(a.p99, Spread { median: 10.0, min: 9.0, max: 30.0 });
        assert_eq!(a.seeds, 3);
        assert_eq!(a.odd_share.map(|s| s.median), Some(0.33));
        assert_eq!(a.shares.len(), 3);
        assert_eq!(spread.best_by_seed, vec![Some("a".into()), Some("b".into()), Some("a".into())]);
        let best = best(&spread);
        assert_eq!(best.as_deref(), Some("a"));
        assert!(spread.seeds_disagree(best.as_deref()), "seed 2 chose b");
        let agreeing = aggregate(&[(1, &s1), (3, &s3)]);
        assert!(!agreeing.seeds_disagree(Some("a")));
    }

    #[test]
    fn pinned_in_most_seeds_is_not_eligible_and_success_still_comes_first() {
        let even = [0.34, 0.33, 0.33];
        let held = [0.9, 0.05, 0.05];
        let s1 = vec![run("fast-pinned", 1.0, 1.0, &held), run("lossy", 0.95, 2.0, &even), run("ok", 1.0, 5.0, &even)];
        let s2 = vec![run("fast-pinned", 1.0, 1.0, &held), run("lossy", 0.95, 2.0, &even), run("ok", 1.0, 6.0, &even)];
        let s3 = vec![run("fast-pinned", 1.0, 1.0, &even), run("lossy", 0.95, 2.0, &even), run("ok", 1.0, 7.0, &even)];
        let spread = aggregate(&[(1, &s1), (2, &s2), (3, &s3)]);
        assert_eq!(spread.get("fast-pinned").map(SchedulerSpread::pinned), Some(true));
        assert_eq!(best(&spread).as_deref(), Some("ok"));
    }

    #[test]
    fn combine_keeps_every_seed_and_rejudges() {
        let even = [0.5, 0.5];
        let report = |seed: u64, a: f64, b: f64| ScenarioReport {
            scenario: crate::scenario::find("one-stalled").unwrap_or_else(|| panic!("one-stalled missing")),
            time_scale: 1.0,
            seed,
            runs: vec![run("a", 1.0, a, &even), run("b", 1.0, b, &even)],
            best: None,
            other_seeds: Vec::new(),
            spread: None,
        };
        let sr = combine(vec![report(7, 5.0, 6.0), report(8, 9.0, 6.5), report(9, 5.5, 7.0)]).unwrap_or_else(|| panic!("empty"));
        assert_eq!((sr.seed, sr.runs.len()), (7, 2));
        assert_eq!(sr.other_seeds.iter().map(|s| (s.seed, s.runs.len())).collect::<Vec<_>>(), vec![(8, 2), (9, 2)]);
        assert_eq!(sr.other_seeds[0].best.as_deref(), Some("b"));
        let spread = sr.spread.as_ref().unwrap_or_else(|| panic!("no spread"));
        assert_eq!(spread.seeds, vec![7, 8, 9]);
        assert_eq!(sr.best.as_deref(), Some("a"), "median p99 of a is 5.5, of b 6.5");
        // Through JSON and back, as `tpvs-loadtest report` reads it.
        let json = serde_json::to_string(&sr).unwrap_or_else(|e| panic!("{e}"));
        let mut back: ScenarioReport = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        back.best = None;
        rejudge(&mut back);
        assert_eq!(back.best.as_deref(), Some("a"));
        assert_eq!(back.spread.map(|s| s.seeds), Some(vec![7, 8, 9]));
        assert!(combine(Vec::new()).is_none());
        let single = combine(vec![report(1, 5.0, 6.0)]).unwrap_or_else(|| panic!("empty"));
        assert!(single.spread.is_none() && single.other_seeds.is_empty());
        assert_eq!(single.best.as_deref(), Some("a"));
    }
}
