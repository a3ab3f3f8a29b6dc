//! Where request outcomes go: HdrHistograms overall and per backend, failures by reason, and
//! live counters for the progress line and `/metrics`.
//!
//! Only requests *scheduled* after warm-up are counted, so the invariant the reports check —
//! sent = recorded + failed — holds by construction: every measured request ends in exactly one
//! of [`Recorder::ok`] or [`Recorder::failed`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::pacer::{Job, Timeline};

/// Recorded latencies span 1 µs .. 10 min at 3 significant digits (0.1 % resolution).
const LOWEST_NS: u64 = 1_000;
const HIGHEST_NS: u64 = 600_000_000_000;

pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the library's rules (low ≥ 1, high ≥ 2·low, ≤ 5
    // digits): an error here is a programming mistake caught by the first test, not input.
    match Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, 3) {
        Ok(h) => h,
        Err(e) => panic!("histogram bounds {LOWEST_NS}..{HIGHEST_NS} rejected: {e:?}"),
    }
}

/// Why a measured request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// The connect was refused (through the proxy: every candidate refused).
    Refused,
    /// Connection reset or closed before the response.
    Reset,
    /// No response within the request timeout.
    Timeout,
    /// The generator had too many requests in flight to start this one.
    Overload,
    /// A reply that was not a tpvs-loadtest frame (or, in HTTP mode, not a readable HTTP/1.1
    /// response).
    Protocol,
    /// HTTP mode: a whole response whose status was not 2xx.
    HttpStatus,
    Other,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::Overload => "generator-overload",
            Failure::Protocol => "protocol",
            Failure::HttpStatus => "http-status",
            Failure::Other => "other",
        }
    }

    pub fn from_io(e: &std::io::Error) -> Failure {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => Failure::Refused,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => Failure::Reset,
            K::TimedOut => Failure::Timeout,
            _ => Failure::Other,
        }
    }
}

#[derive(Debug)]
pub struct Tallies {
    pub all: Histogram<u64>,
    /// The generator's own error left in each recorded latency, where the client measures it:
    /// how late the request went out after its due time, plus how long the reply waited in
    /// the socket before the generator read it unless that wait was subtracted.
    pub generator: Histogram<u64>,
    /// Indexed by the backend index the reply carried.
    pub per_backend: Vec<Histogram<u64>>,
    pub failures: BTreeMap<Failure, u64>,
    /// Successful requests per second of the measurement (by due time) and backend: how the
    /// shares move over time (a backend that recovers, a stall that starts). Empty when the
    /// recorder was not given a time line.
    pub per_second: Vec<Vec<u64>>,
}

/// Backend indices beyond this are treated as garbage rather than growing memory without bound.
const MAX_BACKENDS: usize = 4096;

/// Seconds of measurement the per-second counts cover; later requests are only in the totals.
const MAX_SECONDS: usize = 24 * 3600;

#[derive(Debug)]
pub struct Recorder {
    tallies: Mutex<Tallies>,
    /// Measured requests handed to the network (or failed before it).
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// All requests, warm-up included, not finished yet.
    pub in_flight: AtomicU64,
    /// Start of the measurement, from which the per-second counts are kept.
    measure_from: Option<Instant>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            tallies: Mutex::new(Tallies {
                all: new_histogram(),
                generator: new_histogram(),
                per_backend: Vec::new(),
                failures: BTreeMap::new(),
                per_second: Vec::new(),
            }),
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            measure_from: None,
        }
    }
}

impl Recorder {
    /// A recorder that also keeps per-second counts along `timeline`'s measurement.
    pub fn for_timeline(timeline: &Timeline) -> Self {
        Recorder { measure_from: Some(timeline.measure_from()), ..Recorder::default() }
    }

    /// A request is starting; `measured` says whether it counts.
    pub fn start(&self, measured: bool) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if measured {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `job` succeeded (counted if measured); `generator_ns` is the generator's own error on
    /// it, when known.
    pub fn ok(&self, job: &Job, backend: u32, latency_ns: u64, generator_ns: Option<u64>) {
        let second = self.measure_from.map(|from| job.due.saturating_duration_since(from).as_secs() as usize);
        if job.measured {
            let mut t = self.lock();
            t.all.saturating_record(latency_ns);
            if let Some(g) = generator_ns {
                t.generator.saturating_record(g);
            }
            if let Ok(b) = usize::try_from(backend)
                && b < MAX_BACKENDS
            {
                if t.per_backend.len() <= b {
                    t.per_backend.resize_with(b + 1, new_histogram);
                }
                if let Some(h) = t.per_backend.get_mut(b) {
                    h.saturating_record(latency_ns);
                }
                if let Some(sec) = second.filter(|s| *s < MAX_SECONDS) {
                    if t.per_second.len() <= sec {
                        t.per_second.resize_with(sec + 1, Vec::new);
                    }
                    if let Some(row) = t.per_second.get_mut(sec) {
                        if row.len() <= b {
                            row.resize(b + 1, 0);
                        }
                        if let Some(n) = row.get_mut(b) {
                            *n += 1;
                        }
                    }
                }
            }
            drop(t);
            self.ok.fetch_add(1, Ordering::Relaxed);
        }
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn failed(&self, measured: bool, why: Failure) {
        if measured {
            *self.lock().failures.entry(why).or_insert(0) += 1;
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tallies> {
        // A panic while holding the lock leaves valid histograms behind; keep recording.
        self.tallies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the tallies (for summaries and live percentiles).
    pub fn with<R>(&self, f: impl FnOnce(&Tallies) -> R) -> R {
        f(&self.lock())
    }
}
