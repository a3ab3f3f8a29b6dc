//! Upstream connect outcomes per backend: a fixed-bucket latency histogram and failure counts
//! by reason.
//!
//! Recorded by the data path on every connect attempt, read by the metrics exporter at scrape
//! time. Buckets are fixed and few so a backend costs a handful of atomics, the hot path is
//! one comparison walk and two `fetch_add`s, and the exporter can publish the buckets as a
//! Prometheus histogram as they are (no per-connection label lookup anywhere).

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the connect-latency buckets, in seconds: fine from 50 µs (a connect to a
/// pod on the same node) to 10 ms (another zone), coarse up to the connect timeout.
pub const CONNECT_BUCKETS: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5];

const BOUNDS: usize = CONNECT_BUCKETS.len();

/// The same bounds in nanoseconds, so observing compares integers.
const BOUNDS_NS: [u64; BOUNDS] = {
    let mut out = [0u64; BOUNDS];
    let mut i = 0;
    while i < BOUNDS {
        out[i] = (CONNECT_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// A lock-free histogram over [`CONNECT_BUCKETS`].
#[derive(Debug, Default)]
pub struct ConnectHistogram {
    /// Per bucket, not cumulative; the last slot is the `+Inf` overflow.
    counts: [AtomicU64; BOUNDS + 1],
    sum_ns: AtomicU64,
}

/// A consistent-enough copy of a histogram for export.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, cumulative count)`, ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl ConnectHistogram {
    pub fn observe_ns(&self, ns: u64) {
        let slot = BOUNDS_NS.iter().position(|b| ns <= *b).unwrap_or(BOUNDS);
        if let Some(c) = self.counts.get(slot) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Cumulative buckets; the count is the `+Inf` bucket, so `count` and the buckets always
    /// agree even while observations race with the read.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0u64;
        let buckets: Vec<(f64, u64)> = CONNECT_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter())
            .map(|(b, c)| {
                total = total.saturating_add(c.load(Ordering::Relaxed));
                (b, total)
            })
            .collect();
        HistogramSnapshot { buckets, count: total, sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9 }
    }
}

/// Why one connect attempt to a backend failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectFailure {
    /// The backend answered with a reset: nothing listens (pod not ready, wrong port).
    Refused,
    /// No answer within the connect timeout (backend overloaded, or packets lost).
    Timeout,
    /// No route or host unreachable (the endpoint's node or pod is gone).
    Unreachable,
    /// Anything else (out of local ports, out of fds, ...).
    Other,
}

impl ConnectFailure {
    pub const ALL: [ConnectFailure; 4] =
        [ConnectFailure::Refused, ConnectFailure::Timeout, ConnectFailure::Unreachable, ConnectFailure::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "refused",
            ConnectFailure::Timeout => "timeout",
            ConnectFailure::Unreachable => "unreachable",
            ConnectFailure::Other => "other",
        }
    }

    fn slot(self) -> usize {
        match self {
            ConnectFailure::Refused => 0,
            ConnectFailure::Timeout => 1,
            ConnectFailure::Unreachable => 2,
            ConnectFailure::Other => 3,
        }
    }
}

/// Failure counters by reason, plus retries (attempts that followed a failed one).
#[derive(Debug, Default)]
pub struct ConnectOutcomes {
    pub latency: ConnectHistogram,
    failures: [AtomicU64; 4],
    retries: AtomicU64,
}

impl ConnectOutcomes {
    pub fn record_failure(&self, why: ConnectFailure) {
        if let Some(c) = self.failures.get(why.slot()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn failures(&self, why: ConnectFailure) -> u64 {
        self.failures.get(why.slot()).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn record_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Attempts on this backend that were a retry after another backend failed.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_count_matches_inf() {
        let h = ConnectHistogram::default();
        for ns in [10_000u64, 60_000, 300_000, 2_000_000, 9_000_000_000] {
            h.observe_ns(ns);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.buckets.first(), Some(&(0.00005, 1)));
        assert_eq!(s.buckets.iter().find(|(le, _)| *le == 0.0005).map(|b| b.1), Some(3));
        assert_eq!(s.buckets.iter().find(|(le, _)| *le == 2.5).map(|b| b.1), Some(4));
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 5)));
        assert!((s.sum_seconds - 9.002_370).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn a_sample_on_a_bound_lands_in_that_bucket() {
        let h = ConnectHistogram::default();
        h.observe_ns(100_000);
        assert_eq!(h.snapshot().buckets.get(1), Some(&(0.0001, 1)));
    }

    #[test]
    fn failures_are_counted_by_reason() {
        let o = ConnectOutcomes::default();
        o.record_failure(ConnectFailure::Refused);
        o.record_failure(ConnectFailure::Refused);
        o.record_failure(ConnectFailure::Timeout);
        o.record_retry();
        assert_eq!(o.failures(ConnectFailure::Refused), 2);
        assert_eq!(o.failures(ConnectFailure::Timeout), 1);
        assert_eq!(o.failures(ConnectFailure::Other), 0);
        assert_eq!(o.retries(), 1);
    }
}
