//! Per-backend data-path metrics: connect latency, connect failures by reason, retries and
//! bytes each way (and, in the same record, the outlier detector's state).
//!
//! These are metric shapes (a Prometheus histogram, byte counters), so they live here in the
//! data plane rather than beside the schedulers' own state. Like that state they are keyed by
//! backend address and shared by every frontend reaching the backend; an entry lives while the
//! routing table names its backend or a connection still holds it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use controlplane::RoutingTable;
use prometheus::{Histogram, HistogramOpts};
use rustc_hash::FxHashMap;
use schedulers::BackendAddr;

use super::outlier::OutlierState;

/// Upper bounds of the connect-latency buckets, in seconds: fine from 50 µs (a connect to a
/// pod on the same node) to 10 ms (another zone), coarse up to the connect timeout.
pub const CONNECT_BUCKETS: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5];

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

    /// Whether the failure says something about the backend (rather than about this node:
    /// out of fds or local ports), and so counts toward ejecting it.
    pub fn blames_backend(self) -> bool {
        !matches!(self, ConnectFailure::Other)
    }

    /// The reason a failed connect or socket operation is counted under.
    pub fn of(e: &std::io::Error) -> ConnectFailure {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
            std::io::ErrorKind::TimedOut => ConnectFailure::Timeout,
            std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => ConnectFailure::Unreachable,
            _ => ConnectFailure::Other,
        }
    }
}

/// One backend address's data-path record: its metrics, and the outlier detector's state
/// (which is kept here because it has the same key and lifetime).
#[derive(Debug)]
pub struct BackendMetrics {
    pub outlier: OutlierState,
    connect_latency: Histogram,
    failures: [AtomicU64; 4],
    retries: AtomicU64,
    bytes_to_backend: AtomicU64,
    bytes_from_backend: AtomicU64,
}

impl Default for BackendMetrics {
    fn default() -> Self {
        let opts = HistogramOpts::new("tpvs_backend_connect_duration_seconds", "Backend connect latency.")
            .buckets(CONNECT_BUCKETS.to_vec());
        // `with_opts` fails only on invalid options (unsorted buckets, a bad name); these are
        // constants, checked by the unit tests, not input.
        #[allow(clippy::expect_used)]
        let connect_latency = Histogram::with_opts(opts).expect("constant histogram options are valid");
        BackendMetrics {
            outlier: OutlierState::default(),
            connect_latency,
            failures: Default::default(),
            retries: AtomicU64::new(0),
            bytes_to_backend: AtomicU64::new(0),
            bytes_from_backend: AtomicU64::new(0),
        }
    }
}

impl BackendMetrics {
    pub fn observe_connect(&self, took: Duration) {
        self.connect_latency.observe(took.as_secs_f64());
    }

    pub fn connect_latency(&self) -> &Histogram {
        &self.connect_latency
    }

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

    pub fn add_bytes(&self, to_backend: u64, from_backend: u64) {
        if to_backend > 0 {
            self.bytes_to_backend.fetch_add(to_backend, Ordering::Relaxed);
        }
        if from_backend > 0 {
            self.bytes_from_backend.fetch_add(from_backend, Ordering::Relaxed);
        }
    }

    pub fn bytes_to_backend(&self) -> u64 {
        self.bytes_to_backend.load(Ordering::Relaxed)
    }

    pub fn bytes_from_backend(&self) -> u64 {
        self.bytes_from_backend.load(Ordering::Relaxed)
    }
}

type MetricsMap = FxHashMap<BackendAddr, Arc<BackendMetrics>>;

/// The metrics of every backend, readable without a lock on the connection path.
///
/// Rebuilt on every publish ([`Self::retain_table`]) to hold exactly the table's backends plus
/// those a live connection still holds; a backend picked from a table published a moment
/// before the rebuild is added on first use.
#[derive(Debug, Default)]
pub struct MetricsRegistry {
    map: ArcSwap<MetricsMap>,
}

impl MetricsRegistry {
    /// The metrics of `addr`, created on first use.
    pub fn get(&self, addr: BackendAddr) -> Arc<BackendMetrics> {
        if let Some(m) = self.map.load().get(&addr) {
            return Arc::clone(m);
        }
        let mut created = None;
        self.map.rcu(|map| {
            let mut next = MetricsMap::clone(map);
            let entry = next.entry(addr).or_insert_with(|| Arc::clone(created.get_or_insert_with(Default::default)));
            created = Some(Arc::clone(entry));
            next
        });
        created.unwrap_or_default()
    }

    /// The metrics of `addr` if it has any (the exporter's read: never creates).
    pub fn peek(&self, addr: BackendAddr) -> Option<Arc<BackendMetrics>> {
        self.map.load().get(&addr).cloned()
    }

    /// Keeps the backends of `table` (creating their entries) and those still in use.
    pub fn retain_table(&self, table: &RoutingTable) {
        self.map.rcu(|map| {
            let mut next = MetricsMap::default();
            for fe in table.frontends() {
                let short_circuit = fe.local_origin.iter().flat_map(|lo| lo.scheduler.backends().iter());
                for b in fe.backends().iter().chain(short_circuit) {
                    let m = map.get(&b.addr).cloned().unwrap_or_default();
                    next.insert(b.addr, m);
                }
            }
            for (addr, m) in map.iter() {
                if Arc::strong_count(m) > 1 {
                    next.entry(*addr).or_insert_with(|| Arc::clone(m));
                }
            }
            next
        });
    }

    /// Backends with metrics now (for tests and the exporter's sizing).
    pub fn len(&self) -> usize {
        self.map.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> BackendAddr {
        BackendAddr(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    #[test]
    fn connect_latency_lands_in_its_bucket() {
        let m = BackendMetrics::default();
        for us in [10u64, 60, 300, 2_000, 9_000_000] {
            m.observe_connect(Duration::from_micros(us));
        }
        let h = m.connect_latency().get_sample_count();
        assert_eq!(h, 5);
        assert!((m.connect_latency().get_sample_sum() - 9.002_370).abs() < 1e-9);
    }

    #[test]
    fn failures_are_counted_by_reason() {
        let m = BackendMetrics::default();
        m.record_failure(ConnectFailure::Refused);
        m.record_failure(ConnectFailure::Refused);
        m.record_failure(ConnectFailure::Timeout);
        m.record_retry();
        assert_eq!(m.failures(ConnectFailure::Refused), 2);
        assert_eq!(m.failures(ConnectFailure::Timeout), 1);
        assert_eq!(m.failures(ConnectFailure::Other), 0);
        assert_eq!(m.retries(), 1);
    }

    #[test]
    fn registry_shares_an_entry_and_forgets_departed_unused_backends() {
        let reg = MetricsRegistry::default();
        let a = reg.get(addr("10.0.0.1:80"));
        a.add_bytes(3, 4);
        assert!(Arc::ptr_eq(&a, &reg.get(addr("10.0.0.1:80"))));
        let _b = reg.get(addr("10.0.0.2:80"));
        drop(a);
        // An empty table: only the entry a connection still holds (b) stays.
        reg.retain_table(&RoutingTable::default());
        assert!(reg.peek(addr("10.0.0.1:80")).is_none());
        assert!(reg.peek(addr("10.0.0.2:80")).is_some());
    }
}
