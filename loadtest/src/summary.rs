//! The numbers a run leaves behind, as plain serializable data: what the table, the JSON and
//! the HTML report are all rendered from.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::record::Tallies;

/// Latency summary in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1e6,
        }
    }

    pub fn is_monotone(&self) -> bool {
        self.p50 <= self.p90 && self.p90 <= self.p99 && self.p99 <= self.p999 && self.p999 <= self.max
    }
}

/// One point of the latency-by-percentile curve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub percentile: f64,
    pub ms: f64,
}

/// The curve at percentiles 1 − 10^(−k/10) (k = 0..), up to what the sample count supports,
/// then the maximum: the classic HdrHistogram plot, evenly spaced on a log "nines" axis.
pub fn curve(h: &Histogram<u64>) -> Vec<CurvePoint> {
    if h.is_empty() {
        return Vec::new();
    }
    let n = h.len() as f64;
    let mut out = Vec::new();
    for k in 0..=60 {
        let q = 1.0 - 10f64.powf(-f64::from(k) / 10.0);
        // Beyond 1 − 1/n a percentile is just the maximum again.
        if 1.0 - q < 1.0 / n {
            break;
        }
        out.push(CurvePoint { percentile: q * 100.0, ms: ms(h.value_at_quantile(q)) });
    }
    out.push(CurvePoint { percentile: 100.0, ms: ms(h.max()) });
    out
}

/// One backend as the generator saw it (from the replies) and as the scheduler saw it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendResult {
    pub index: usize,
    pub addr: String,
    /// What sets it apart ("stalled 30s@2s", "cap 2"), or "".
    pub label: String,
    pub requests: u64,
    /// Fraction of all successful measured requests.
    pub share: f64,
    pub latency: Percentiles,
    /// Scheduler picks and failed connect attempts (self-hosted TCP only; warm-up included).
    pub picks: Option<u64>,
    pub connect_failures: Option<u64>,
}

/// One second of the measurement (requests grouped by their due time): successful requests
/// and shares by backend, both indexed by backend index.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the measurement began (this row covers [t, t + 1)).
    pub t: u64,
    pub requests: Vec<u64>,
    pub share: Vec<f64>,
}

impl Second {
    fn new(t: u64, mut requests: Vec<u64>, backends: usize) -> Self {
        if requests.len() < backends {
            requests.resize(backends, 0);
        }
        let total: u64 = requests.iter().sum();
        let share = requests.iter().map(|&n| if total > 0 { n as f64 / total as f64 } else { 0.0 }).collect();
        Second { t, requests, share }
    }
}

/// The first second at or after `from` in which `backend` served at least `share` of the
/// successful requests (how long a recovered backend takes to win its traffic back).
pub fn first_second_with_share(run: &RunResult, backend: usize, from: u64, share: f64) -> Option<u64> {
    run.per_second.iter().filter(|s| s.t >= from).find(|s| s.share.get(backend).is_some_and(|&x| x >= share)).map(|s| s.t)
}

/// How fast a backend got its traffic back after a slowdown ended inside the measurement.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    pub backend: usize,
    /// When its slowdown ended, in seconds since the measurement began.
    pub recovered_at: f64,
    /// Seconds from then to the end of the first whole second in which it served at least half
    /// its fair share (1/n of the backends listed); `None`: not within the run.
    pub back_within: Option<f64>,
}

/// The fraction of its fair share a recovered backend must serve in a second to count as back.
pub const BACK_AT_FAIR_FRACTION: f64 = 0.5;

/// [`Recovery`] for every backend of `scenario` whose slowdown ends inside the measurement.
pub fn recoveries(scenario: &crate::scenario::Scenario, run: &RunResult) -> Vec<Recovery> {
    let n = run.backends.len().max(1);
    scenario
        .backends
        .iter()
        .enumerate()
        .filter_map(|(backend, p)| {
            let end = p.slow.as_ref()?.window.end();
            (end < scenario.measure).then_some((backend, end))
        })
        .map(|(backend, end)| {
            let from = end.as_secs_f64().ceil() as u64;
            let back = first_second_with_share(run, backend, from, BACK_AT_FAIR_FRACTION / n as f64);
            Recovery { backend, recovered_at: end.as_secs_f64(), back_within: back.map(|t| (t + 1) as f64 - end.as_secs_f64()) }
        })
        .collect()
}

/// The data path's own counters over the run (self-hosted targets).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ProxyCounters {
    /// Connections accepted; for UDP, flows opened.
    pub accepted: u64,
    /// Connections that found no backend to connect to; for UDP, datagrams dropped for want of
    /// a backend, an upstream socket, or because the backend's port was closed.
    pub connect_failed: u64,
    /// Refused for the connection (UDP: flow) caps.
    pub over_limit: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// The scheduler, or "direct" when no proxy was in the path.
    pub scheduler: String,
    pub mode: String,
    pub target: String,
    pub sent: u64,
    pub recorded: u64,
    pub failed: u64,
    pub failures: std::collections::BTreeMap<String, u64>,
    pub success_rate: f64,
    /// Successful measured requests per second of measurement.
    pub achieved_rate: f64,
    pub latency: Percentiles,
    /// The generator's own error (how late requests went out plus how long replies waited to
    /// be read), where the transport measures it; absent in reports from before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<Percentiles>,
    pub curve: Vec<CurvePoint>,
    pub backends: Vec<BackendResult>,
    /// Shares second by second (absent in reports from before it existed).
    #[serde(default)]
    pub per_second: Vec<Second>,
    /// Backends whose slowdown ended during the run, and how fast they got traffic back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovery: Vec<Recovery>,
    pub proxy: Option<ProxyCounters>,
}

impl RunResult {
    /// Fills the counts, latencies and reply-side backend shares from the recorder's tallies.
    pub fn from_tallies(scheduler: &str, mode: &str, target: &str, sent: u64, measure_s: f64, t: &Tallies) -> Self {
        let recorded = t.all.len();
        let failed: u64 = t.failures.values().sum();
        let backends = t
            .per_backend
            .iter()
            .enumerate()
            .map(|(index, h)| BackendResult {
                index,
                addr: String::new(),
                label: String::new(),
                requests: h.len(),
                share: if recorded > 0 { h.len() as f64 / recorded as f64 } else { 0.0 },
                latency: Percentiles::of(h),
                picks: None,
                connect_failures: None,
            })
            .collect();
        RunResult {
            scheduler: scheduler.to_string(),
            mode: mode.to_string(),
            target: target.to_string(),
            sent,
            recorded,
            failed,
            failures: t.failures.iter().map(|(k, v)| (k.as_str().to_string(), *v)).collect(),
            success_rate: if sent > 0 { recorded as f64 / sent as f64 } else { 0.0 },
            achieved_rate: if measure_s > 0.0 { recorded as f64 / measure_s } else { 0.0 },
            latency: Percentiles::of(&t.all),
            generator: (!t.generator.is_empty()).then(|| Percentiles::of(&t.generator)),
            curve: curve(&t.all),
            backends,
            per_second: t
                .per_second
                .iter()
                .enumerate()
                .map(|(sec, row)| Second::new(sec as u64, row.clone(), t.per_backend.len()))
                .collect(),
            recovery: Vec::new(),
            proxy: None,
        }
    }

    /// Widens every per-second row to `n` backends (those that served nothing in it, or at all).
    pub fn pad_per_second(&mut self, n: usize) {
        for s in &mut self.per_second {
            *s = Second::new(s.t, std::mem::take(&mut s.requests), n);
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub scenario: crate::scenario::Scenario,
    pub time_scale: f64,
    pub seed: u64,
    /// The runs with `seed` (the first seed, when there were several).
    pub runs: Vec<RunResult>,
    /// The best run's scheduler (see [`best`]); with several seeds, the best on the medians
    /// (see [`crate::seeds`]).
    pub best: Option<String>,
    /// The runs with every further seed of a multi-seed invocation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_seeds: Vec<crate::seeds::SeedRuns>,
    /// With several seeds: per scheduler, the median and range across all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<crate::seeds::SeedSpread>,
}

/// Whether one backend served more than half of the requests and more than twice its fair
/// share of the backends the run lists: what a hashing scheduler (dh, sh) does with a single
/// client and a single frontend. Such a run may look fast only because the one backend it
/// pinned happens not to be the odd one. The backends listed are the scenario's own in a
/// self-hosted run, and those that answered in an `external` one (its only knowledge of what
/// stands behind the target): with 3 answering, one of them serving 52 % while a slow third
/// is avoided is spreading, not pinning. With two backends "twice the fair share" is all of
/// it, which no run can exceed, so there the bar is [`PINNED_SHARE_MAX`]: 95 % on one of two
/// is not spreading either.
pub fn pinned(run: &RunResult) -> bool {
    let n = run.backends.len();
    n >= 2 && run.backends.iter().any(|b| b.share > PINNED_SHARE.max((2.0 / n as f64).min(PINNED_SHARE_MAX)))
}

/// The share above which one backend is said to hold a run (with enough backends listed).
pub const PINNED_SHARE: f64 = 0.5;

/// The highest bar [`pinned`] sets, whatever the number of backends.
pub const PINNED_SHARE_MAX: f64 = 0.9;

/// The best run: among runs that spread their load (not [`pinned`]) and are within 0.1
/// percentage point of the highest success rate, the lowest p99, then the lowest p99.9.
/// Success comes first because a scheduler that "wins" on latency by failing the slow requests
/// has not won.
pub fn best(runs: &[RunResult]) -> Option<usize> {
    best_of(&runs.iter().map(Standing::of).collect::<Vec<_>>())
}

/// What the best rule reads of a run — or of a scheduler's medians across seeds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Standing {
    pub pinned: bool,
    pub success_rate: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Standing {
    pub fn of(r: &RunResult) -> Standing {
        Standing { pinned: pinned(r), success_rate: r.success_rate, p99: r.latency.p99, p999: r.latency.p999 }
    }
}

/// The rule of [`best`] over standings.
pub fn best_of(standings: &[Standing]) -> Option<usize> {
    let top = standings.iter().filter(|s| !s.pinned).map(|s| s.success_rate).fold(f64::NEG_INFINITY, f64::max);
    standings
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.pinned && s.success_rate >= top - 0.001)
        .min_by(|(_, a), (_, b)| (a.p99, a.p999).partial_cmp(&(b.p99, b.p999)).unwrap_or(std::cmp::Ordering::Equal))
        .map(|(i, _)| i)
}

/// Everything one invocation produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub cpus: usize,
    pub scenarios: Vec<ScenarioReport>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::new_histogram;

    pub(crate) fn run(name: &str, success: f64, p99: f64, shares: &[f64]) -> RunResult {
        let backends = shares
            .iter()
            .enumerate()
            .map(|(index, &share)| BackendResult {
                index,
                addr: String::new(),
                label: String::new(),
                requests: 0,
                share,
                latency: Percentiles::default(),
                picks: None,
                connect_failures: None,
            })
            .collect();
        RunResult {
            scheduler: name.into(),
            mode: "m".into(),
            target: "t".into(),
            sent: 100,
            recorded: 100,
            failed: 0,
            failures: Default::default(),
            success_rate: success,
            achieved_rate: 0.0,
            latency: Percentiles { p99, ..Percentiles::default() },
            generator: None,
            curve: Vec::new(),
            backends,
            per_second: Vec::new(),
            recovery: Vec::new(),
            proxy: None,
        }
    }

    #[test]
    fn best_prefers_success_then_p99_and_skips_pinned_runs() {
        let even = [0.34, 0.33, 0.33];
        let runs = vec![
            run("fast-but-failing", 0.95, 1.0, &even),
            run("pinned", 1.0, 0.5, &[1.0, 0.0, 0.0]),
            run("slow", 1.0, 9.0, &even),
            run("good", 1.0, 3.0, &even),
        ];
        assert!(pinned(&runs[1]) && !pinned(&runs[3]));
        // Three backends answered, the slow one avoided: 52 % on one is spreading, not pinning.
        assert!(!pinned(&run("spread", 1.0, 3.0, &[0.52, 0.47, 0.01])));
        assert!(pinned(&run("held", 1.0, 3.0, &[0.9, 0.05, 0.05])));
        // Of eleven, anything over half is held (the rule the self-hosted tables always used).
        let mut eleven = [0.049; 11];
        eleven[4] = 0.51;
        assert!(pinned(&run("eleven", 1.0, 3.0, &eleven)));
        // Of two, all (or nearly all) on one is held; an uneven split is not.
        assert!(pinned(&run("pair", 1.0, 3.0, &[1.0, 0.0])) && pinned(&run("pair", 1.0, 3.0, &[0.95, 0.05])));
        assert!(!pinned(&run("pair", 1.0, 3.0, &[0.7, 0.3])));
        assert_eq!(best(&runs), Some(3));
        assert_eq!(best(&[]), None);
    }

    #[test]
    fn curve_is_monotone_and_ends_at_max() {
        let mut h = new_histogram();
        for i in 1..=10_000u64 {
            h.saturating_record(i * 1_000);
        }
        let c = curve(&h);
        assert!(c.windows(2).all(|w| w[0].ms <= w[1].ms && w[0].percentile < w[1].percentile));
        assert_eq!(c.last().map(|p| p.percentile), Some(100.0));
        assert!(c.iter().rev().nth(1).is_some_and(|p| p.percentile >= 99.9));
        assert!(Percentiles::of(&h).is_monotone());
    }
}
