//! What the API source measures (the daemon exports it as metrics).
//!
//! Histograms are `prometheus` histograms on fixed buckets, so an exporter can read them as
//! they are; a bounded window of recent samples is kept beside them for quantiles in
//! benchmarks and logs, without the memory growing with uptime.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::core::Metric;
use prometheus::{Histogram, HistogramOpts};

/// Upper bounds, in seconds, of the latency buckets: fine below 100 ms, where a healthy proxy
/// lives, then coarse up to the minutes a stuck watch can cost.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// How many recent samples a histogram keeps for quantiles.
const RECENT: usize = 4096;

/// A latency histogram: cumulative buckets and a sum, plus a window of recent samples.
#[derive(Debug)]
pub struct DurationHistogram {
    /// Not registered anywhere: the owner of the stats exports it under the metric name it
    /// chooses, so the name and help given here never appear.
    histogram: Histogram,
    recent: Mutex<VecDeque<Duration>>,
}

impl Default for DurationHistogram {
    fn default() -> Self {
        Self::new(LATENCY_BUCKETS)
    }
}

impl DurationHistogram {
    /// `bounds` are bucket upper bounds in seconds, strictly increasing (a trailing `+Inf` is
    /// implied). They are a constant of the program, never input: bounds out of order are a
    /// bug, and panic here rather than yield a histogram that lies.
    pub fn new(bounds: &'static [f64]) -> Self {
        // `+Inf` made explicit: given no bounds at all, prometheus would substitute its defaults.
        let mut buckets = bounds.to_vec();
        if buckets.last() != Some(&f64::INFINITY) {
            buckets.push(f64::INFINITY);
        }
        let opts = HistogramOpts::new("tpvs_duration_seconds", "A latency, in seconds.").buckets(buckets);
        let histogram =
            Histogram::with_opts(opts).unwrap_or_else(|e| panic!("latency buckets {bounds:?} are not increasing: {e}"));
        DurationHistogram { histogram, recent: Mutex::new(VecDeque::with_capacity(RECENT)) }
    }

    pub fn observe(&self, d: Duration) {
        self.histogram.observe(d.as_secs_f64());
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(d);
    }

    pub fn count(&self) -> u64 {
        self.histogram.get_sample_count()
    }

    /// The sum of all samples (the histogram keeps it in `f64` seconds, the form Prometheus
    /// exports).
    pub fn sum(&self) -> Duration {
        Duration::try_from_secs_f64(self.histogram.get_sample_sum()).unwrap_or(Duration::MAX)
    }

    /// `(upper bound in seconds, cumulative count)` per bucket, ending with `+Inf`, as
    /// Prometheus exposes them.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        let metric = self.histogram.metric();
        let snapshot = metric.get_histogram();
        snapshot
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            // The `+Inf` bucket is implicit in the snapshot: it holds every sample.
            .chain(std::iter::once((f64::INFINITY, snapshot.get_sample_count())))
            .collect()
    }

    /// The most recent samples (at most 4096), oldest first.
    pub fn recent(&self) -> Vec<Duration> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()
    }

    /// The `q` quantile (0.0..=1.0) of the recent samples; `None` before any sample.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let mut samples = self.recent();
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let last = samples.len() - 1;
        // Nearest-rank on the sorted window; the cast is bounded by `last`.
        let rank = ((q.clamp(0.0, 1.0) * last as f64).round() as usize).min(last);
        samples.get(rank).copied()
    }
}

/// Counters and latencies of the Kubernetes API source.
#[derive(Debug, Default)]
pub struct KubeSourceStats {
    /// Watch events received (list items included), all resources.
    pub events_total: AtomicU64,
    /// Objects rejected by the model (their last good version stays in use).
    pub object_errors_total: AtomicU64,
    /// List/watch failures (each one is followed by a backoff and a retry).
    pub watch_errors_total: AtomicU64,
    /// Lists started after the first one of a resource (410 Gone, or a failed list retried).
    pub relists_total: AtomicU64,
    /// Tables published.
    pub publishes_total: AtomicU64,
    /// Time from the source's start to the first published table, in nanoseconds (0 until then).
    pub initial_sync_nanos: AtomicU64,
    /// kube-proxy's `network_programming_duration_seconds`: from an EndpointSlice's
    /// `endpoints.kubernetes.io/last-change-trigger-time` to the table being live.
    pub network_programming: DurationHistogram,
    /// From receipt of a watch event that changed something to the table being live.
    pub event_to_publish: DurationHistogram,
}

impl KubeSourceStats {
    pub fn initial_sync(&self) -> Option<Duration> {
        match self.initial_sync_nanos.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_quantiles_come_from_recent_samples() {
        let h = DurationHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in [1u64, 2, 3, 40, 700] {
            h.observe(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 5);
        // The sum is kept in f64 seconds: equal up to float rounding.
        assert!(h.sum().abs_diff(Duration::from_millis(746)) < Duration::from_micros(1), "{:?}", h.sum());
        let b = h.buckets();
        assert_eq!(b.first(), Some(&(0.001, 1)));
        assert_eq!(b.iter().find(|(le, _)| *le == 0.005).map(|x| x.1), Some(3));
        assert_eq!(b.last(), Some(&(f64::INFINITY, 5)));
        assert_eq!(h.quantile(0.5), Some(Duration::from_millis(3)));
        assert_eq!(h.quantile(1.0), Some(Duration::from_millis(700)));
    }

    #[test]
    fn the_recent_window_is_bounded() {
        let h = DurationHistogram::default();
        for i in 0..(RECENT as u64 + 10) {
            h.observe(Duration::from_micros(i));
        }
        let recent = h.recent();
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent.first(), Some(&Duration::from_micros(10)));
        assert_eq!(h.count(), RECENT as u64 + 10, "the buckets count every sample, not the window");
    }

    #[test]
    fn a_sample_on_a_bound_lands_in_that_bucket() {
        let h = DurationHistogram::default();
        h.observe(Duration::from_millis(5));
        let b = h.buckets();
        assert_eq!(b.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(b.iter().find(|(le, _)| *le == 0.0025).map(|x| x.1), Some(0));
        assert_eq!(b.iter().find(|(le, _)| *le == 0.005).map(|x| x.1), Some(1));
    }

    #[test]
    fn no_bounds_means_one_inf_bucket() {
        let h = DurationHistogram::new(&[]);
        h.observe(Duration::from_secs(1));
        assert_eq!(h.buckets(), vec![(f64::INFINITY, 1)]);
    }
}
