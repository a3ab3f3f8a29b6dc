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

/// The data path's own counters over the run (self-hosted TCP only).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct ProxyCounters {
    pub accepted: u64,
    pub connect_failed: u64,
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
            proxy: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub scenario: crate::scenario::Scenario,
    pub time_scale: f64,
    pub seed: u64,
    pub runs: Vec<RunResult>,
    /// The best run's scheduler (see [`best`]).
    pub best: Option<String>,
}

/// Whether one backend served more than half of the requests of a set of three or more: what
/// a hashing scheduler (dh, sh) does with a single client and a single frontend. Such a run
/// may look fast only because the one backend it pinned happens not to be the odd one.
pub fn pinned(run: &RunResult) -> bool {
    run.backends.len() >= 3 && run.backends.iter().any(|b| b.share > 0.5)
}

/// The best run: among runs that spread their load (not [`pinned`]) and are within 0.1
/// percentage point of the highest success rate, the lowest p99, then the lowest p99.9.
/// Success comes first because a scheduler that "wins" on latency by failing the slow requests
/// has not won.
pub fn best(runs: &[RunResult]) -> Option<usize> {
    let eligible = |r: &RunResult| !pinned(r);
    let top = runs.iter().filter(|r| eligible(r)).map(|r| r.success_rate).fold(f64::NEG_INFINITY, f64::max);
    runs.iter()
        .enumerate()
        .filter(|(_, r)| eligible(r) && r.success_rate >= top - 0.001)
        .min_by(|(_, a), (_, b)| {
            (a.latency.p99, a.latency.p999).partial_cmp(&(b.latency.p99, b.latency.p999)).unwrap_or(std::cmp::Ordering::Equal)
        })
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
mod tests {
    use super::*;
    use crate::record::new_histogram;

    fn run(name: &str, success: f64, p99: f64, shares: &[f64]) -> RunResult {
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
