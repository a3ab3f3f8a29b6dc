//! Per-backend runtime state, in atomics, shared across table rebuilds.
//!
//! The data plane updates these on every connection; the least-connection and latency-aware
//! schedulers read them on every pick. They live behind an `Arc` handed out by
//! [`StatsRegistry`], keyed by backend address, so a rebuilt routing table (a new
//! `BackendSet`) sees the same counters and an lc scheduler does not forget the connections
//! that are still open.
//!
//! The active count also has watchers: the least-connection schedulers keep an index ordered by
//! it ([`crate::tournament`]), so every change of the count is reported to the indices of the
//! sets that contain the backend, on the thread that made it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::addr::BackendAddr;

/// Decay time constant of the peak-EWMA latency estimate (Finagle and Linkerd use 10 s).
pub const EWMA_DECAY_NS: f64 = 10_000_000_000.0;

/// The latency assumed for a backend never measured: optimistic enough that new backends get
/// traffic, pessimistic enough that a measured fast backend still wins.
pub const EWMA_DEFAULT_RTT_NS: f64 = 1_000_000.0;

/// Nanoseconds on a process-wide monotonic clock (0 = first call).
pub fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What the schedulers and the operator's `tpvs list` need to know about one backend address:
/// open and total connections, picks and failures, and the peak-EWMA latency estimate. (Metric
/// shapes such as latency histograms and byte counters are the data plane's, not here.)
#[derive(Debug)]
pub struct BackendStats {
    active: AtomicU64,
    connections: AtomicU64,
    picks: AtomicU64,
    failures: AtomicU64,
    /// f64 bits of the peak-EWMA latency estimate in nanoseconds.
    ewma_bits: AtomicU64,
    /// `now_nanos` at the last estimate update.
    ewma_stamp: AtomicU64,
    /// The last *answer* latency itself, in nanoseconds (a first byte back, or a timeout; not
    /// a connect): ewma's bounded exploration judges a probe by its own answer, not by the
    /// slow-moving estimate, and a connect that the kernel completed says nothing about how
    /// fast the application answers.
    last_answer: AtomicU64,
    /// `now_nanos` when `last_answer` was taken (0: never). Apart from `ewma_stamp`, which
    /// connects and a restart of the estimate also move.
    last_answer_at: AtomicU64,
    /// The indices to tell when `active` changes. Read on every open and close, written only
    /// when a scheduler over this backend is built or dropped: a lock-free snapshot.
    watchers: ArcSwap<Vec<Watcher>>,
}

/// An index ordered by backends' active counts (the least-connection family's tournament tree)
/// that must hear of every change to keep its order current.
pub(crate) trait ActiveWatch: Send + Sync {
    /// The active count of the backend the watcher registered as `slot` has changed.
    fn active_changed(&self, slot: u32);
}

/// One subscription: which index, and the backend's position in it.
#[derive(Clone)]
struct Watcher {
    watch: Arc<dyn ActiveWatch>,
    slot: u32,
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher").field("slot", &self.slot).finish_non_exhaustive()
    }
}

/// Identity of a watcher, ignoring the vtable half of the fat pointer (two vtables for one
/// type may exist across codegen units).
fn same_watch(a: &Arc<dyn ActiveWatch>, b: &Arc<dyn ActiveWatch>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

impl Default for BackendStats {
    fn default() -> Self {
        BackendStats {
            active: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            picks: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            ewma_bits: AtomicU64::new(EWMA_DEFAULT_RTT_NS.to_bits()),
            ewma_stamp: AtomicU64::new(0),
            last_answer: AtomicU64::new(0),
            last_answer_at: AtomicU64::new(0),
            watchers: ArcSwap::from_pointee(Vec::new()),
        }
    }
}

impl BackendStats {
    /// Connections (or UDP flows) currently open to this backend.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections ever opened to this backend.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Times a scheduler chose this backend (including picks whose connect then failed).
    pub fn picks(&self) -> u64 {
        self.picks.load(Ordering::Relaxed)
    }

    /// Attempts on this backend that failed (a refused, timed-out or unreachable connect; a
    /// UDP flow whose backend answered "port unreachable").
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn record_pick(&self) {
        self.picks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks one connection open until the returned guard drops. Keeping the count exact is
    /// what makes lc/wlc/sed/nq/p2c correct, so the decrement is tied to a destructor.
    pub fn open(self: &Arc<Self>) -> ActiveGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        let mut guard = ActiveGuard { stats: Arc::clone(self), counted: false };
        guard.reacquire();
        guard
    }

    /// Sets the active count directly; for tests and benchmarks that need given counters.
    pub fn set_active(&self, n: u64) {
        self.active.swap(n, Ordering::SeqCst);
        self.notify_active_changed();
    }

    fn notify_active_changed(&self) {
        for w in self.watchers.load().iter() {
            w.watch.active_changed(w.slot);
        }
    }

    /// Subscribes `watch` to changes of the active count, as its `slot`. The caller must issue
    /// a SeqCst fence before it first reads the count (see `ActiveGuard::reacquire`).
    pub(crate) fn watch(&self, watch: &Arc<dyn ActiveWatch>, slot: u32) {
        self.watchers.rcu(|list| {
            let mut next = Vec::with_capacity(list.len() + 1);
            next.extend(list.iter().cloned());
            next.push(Watcher { watch: Arc::clone(watch), slot });
            next
        });
    }

    /// Ends every subscription of `watch` (the index's owner is being dropped).
    pub(crate) fn unwatch(&self, watch: &Arc<dyn ActiveWatch>) {
        self.watchers.rcu(|list| list.iter().filter(|w| !same_watch(&w.watch, watch)).cloned().collect::<Vec<_>>());
    }

    /// How many indices watch this backend (for tests: a dropped scheduler must leave none).
    #[cfg(test)]
    pub(crate) fn watcher_count(&self) -> usize {
        self.watchers.load().len()
    }

    /// Feeds one observed answer latency (first byte back, or a timeout) into the peak-EWMA
    /// estimate, and keeps it as the last answer.
    pub fn observe_latency_ns(&self, rtt_ns: u64) {
        self.observe_latency_at(rtt_ns, now_nanos());
    }

    /// [`Self::observe_latency_ns`] with an explicit clock, for deterministic tests.
    pub fn observe_latency_at(&self, rtt_ns: u64, now_ns: u64) {
        // The answer before its stamp (Release) so a reader that sees the new stamp (Acquire in
        // `last_answer`) sees this answer or a later one, never the one before.
        self.last_answer.store(rtt_ns, Ordering::Relaxed);
        self.last_answer_at.store(now_ns.max(1), Ordering::Release);
        self.blend_latency_at(rtt_ns, now_ns);
    }

    /// Feeds a completed connect's duration into the estimate only: it is a latency sample (a
    /// full accept queue shows there) but not an answer from the application.
    pub fn observe_connect_latency_ns(&self, rtt_ns: u64) {
        self.blend_latency_at(rtt_ns, now_nanos());
    }

    /// Peak-sensitive: a sample above the estimate replaces it at once (a backend that got slow
    /// is avoided immediately); a lower sample is blended in with a weight that grows with the
    /// time since the last update (a backend that recovered earns traffic back gradually).
    fn blend_latency_at(&self, rtt_ns: u64, now_ns: u64) {
        let rtt = rtt_ns as f64;
        // Stamp 0 means "never measured" to the readers; a sample at clock 0 is stamped 1.
        let last = self.ewma_stamp.swap(now_ns.max(1), Ordering::Relaxed);
        let elapsed = now_ns.saturating_sub(last) as f64;
        let w = (-elapsed / EWMA_DECAY_NS).exp();
        let _ = self.ewma_bits.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            let cost = f64::from_bits(bits);
            let next = if rtt > cost { rtt } else { cost * w + rtt * (1.0 - w) };
            Some(next.to_bits())
        });
    }

    /// The latency estimate as of its last sample, in nanoseconds.
    pub fn ewma_ns(&self) -> f64 {
        f64::from_bits(self.ewma_bits.load(Ordering::Relaxed))
    }

    /// The estimate as of `now_ns`. Without new samples it decays toward zero, as Finagle's
    /// read path does: a backend whose estimate spiked (a stall) gets picked again after a
    /// while instead of being shunned forever, and if it is still slow its next sample puts
    /// the estimate right back up. A backend never measured keeps the default.
    pub fn ewma_ns_at(&self, now_ns: u64) -> f64 {
        let stamp = self.ewma_stamp.load(Ordering::Relaxed);
        let cost = self.ewma_ns();
        if stamp == 0 {
            return cost;
        }
        let elapsed = now_ns.saturating_sub(stamp) as f64;
        cost * (-elapsed / EWMA_DECAY_NS).exp()
    }

    /// The estimate as stored and the clock reading of its last sample (0 = never measured).
    /// Two backends' decayed estimates compare without reading the clock: both decay by the
    /// same factor from a common `now`, so only the difference of their stamps matters.
    pub fn ewma_sample(&self) -> (f64, u64) {
        (self.ewma_ns(), self.ewma_stamp.load(Ordering::Relaxed))
    }

    /// The last answer latency (ns) and the clock reading it was taken at (0 = none yet).
    pub fn last_answer(&self) -> (u64, u64) {
        let stamp = self.last_answer_at.load(Ordering::Acquire);
        (self.last_answer.load(Ordering::Relaxed), stamp)
    }

    /// Replaces the estimate with `estimate_ns` as of `now_ns`, whatever it was: for a
    /// scheduler that has seen enough fresh evidence that the estimate's history (a peak the
    /// decay would take many seconds to forget) no longer describes the backend.
    pub fn restart_latency_estimate_at(&self, estimate_ns: f64, now_ns: u64) {
        self.ewma_bits.store(estimate_ns.to_bits(), Ordering::Relaxed);
        self.ewma_stamp.store(now_ns.max(1), Ordering::Relaxed);
    }

    /// Peak-EWMA load as of `now_ns`: estimated latency × (outstanding connections + 1), the
    /// quantity Finagle's and Linkerd's balancers minimise (one clock read per pick, not per
    /// backend).
    pub fn ewma_load_at(&self, now_ns: u64) -> f64 {
        self.ewma_ns_at(now_ns) * (self.active() as f64 + 1.0)
    }
}

/// Holds one active connection on a backend; dropping it releases the slot.
///
/// A UDP flow is active only while its client waits for an answer: [`ActiveGuard::release`]
/// gives the slot back without ending the hold, [`ActiveGuard::reacquire`] takes it again.
#[derive(Debug)]
pub struct ActiveGuard {
    stats: Arc<BackendStats>,
    counted: bool,
}

impl ActiveGuard {
    pub fn stats(&self) -> &Arc<BackendStats> {
        &self.stats
    }

    /// Whether this hold is in the backend's active count now.
    pub fn is_counted(&self) -> bool {
        self.counted
    }

    /// Leaves the active count (idempotent); the guard keeps its stats for feedback.
    pub fn release(&mut self) {
        if self.counted {
            self.counted = false;
            self.stats.active.fetch_sub(1, Ordering::SeqCst);
            self.stats.notify_active_changed();
        }
    }

    /// Enters the active count again (idempotent); no new connection is counted.
    pub fn reacquire(&mut self) {
        if !self.counted {
            self.counted = true;
            // SeqCst (free on x86, where every read-modify-write is a full fence) pairs with
            // the fence in `watch`'s callers: either a new index sees this count when it first
            // computes its order, or this change sees the index's subscription and tells it.
            self.stats.active.fetch_add(1, Ordering::SeqCst);
            self.stats.notify_active_changed();
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.release();
    }
}

/// Hands out one shared [`BackendStats`] per backend address.
///
/// Entries are weak: when no table and no connection references a backend any more its stats
/// go away (a later re-add starts from zero, like a fresh IPVS destination).
#[derive(Debug, Default)]
pub struct StatsRegistry {
    entries: Mutex<HashMap<BackendAddr, Weak<BackendStats>>>,
}

impl StatsRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The stats for `addr`, created on first use.
    pub fn get(&self, addr: BackendAddr) -> Arc<BackendStats> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still a
        // valid map, so keep using it rather than taking the whole control plane down.
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = entries.get(&addr).and_then(Weak::upgrade) {
            return existing;
        }
        let fresh = Arc::new(BackendStats::default());
        entries.insert(addr, Arc::downgrade(&fresh));
        if entries.len() > 1024 && entries.len().is_power_of_two() {
            entries.retain(|_, w| w.strong_count() > 0);
        }
        fresh
    }

    /// Number of live entries (for tests and metrics).
    pub fn live(&self) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.values().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> BackendAddr {
        BackendAddr(s.parse().unwrap_or_else(|e| panic!("bad test address {s}: {e}")))
    }

    #[test]
    fn a_released_guard_leaves_the_active_count_until_reacquired() {
        let stats = Arc::new(BackendStats::default());
        let mut guard = stats.open();
        guard.release();
        guard.release();
        assert_eq!((stats.active(), guard.is_counted()), (0, false));
        guard.reacquire();
        guard.reacquire();
        assert_eq!((stats.active(), stats.connections()), (1, 1), "counted again, not a new connection");
        guard.release();
        drop(guard);
        assert_eq!(stats.active(), 0, "a released guard does not release twice");
        let counted = stats.open();
        drop(counted);
        assert_eq!(stats.active(), 0);
    }

    #[test]
    fn registry_returns_same_stats_for_same_address() {
        let reg = StatsRegistry::new();
        let a = reg.get(addr("10.0.0.1:80"));
        let guard = a.open();
        let again = reg.get(addr("10.0.0.1:80"));
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(again.active(), 1);
        drop(guard);
        assert_eq!(again.active(), 0);
        assert_eq!(again.connections(), 1);
        let other = reg.get(addr("10.0.0.2:80"));
        assert!(!Arc::ptr_eq(&a, &other));
    }

    #[test]
    fn registry_forgets_unreferenced_backends() {
        let reg = StatsRegistry::new();
        let a = reg.get(addr("10.0.0.1:80"));
        a.set_active(5);
        drop(a);
        assert_eq!(reg.live(), 0);
        assert_eq!(reg.get(addr("10.0.0.1:80")).active(), 0);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let s = BackendStats::default();
        s.observe_latency_at(50_000_000, 1_000);
        assert_eq!(s.ewma_ns(), 50_000_000.0, "a higher sample replaces the estimate");
        // One decay constant later a fast sample pulls the estimate most of the way down.
        s.observe_latency_at(1_000_000, 1_000 + EWMA_DECAY_NS as u64);
        let e = s.ewma_ns();
        let expected = 50e6 * (-1.0f64).exp() + 1e6 * (1.0 - (-1.0f64).exp());
        assert!((e - expected).abs() < 1.0, "got {e}, expected {expected}");
        s.set_active(3);
        let at = 1_000 + EWMA_DECAY_NS as u64;
        assert!((s.ewma_load_at(at) - e * 4.0).abs() < 1.0);
        // Read later without new samples, the estimate has decayed by e^-1 per decay constant.
        let later = s.ewma_ns_at(at + EWMA_DECAY_NS as u64);
        assert!((later - e * (-1.0f64).exp()).abs() < 1.0, "got {later}");
    }

    #[test]
    fn last_answer_is_the_raw_answer_and_a_restart_replaces_the_estimate() {
        let s = BackendStats::default();
        assert_eq!(s.last_answer(), (0, 0), "never measured");
        s.observe_latency_at(80_000_000, 1_000);
        s.observe_latency_at(4_000_000, 2_000);
        // The estimate still holds the 80 ms peak; the last answer is the 4 ms one.
        assert!(s.ewma_ns() > 79_000_000.0, "{}", s.ewma_ns());
        assert_eq!(s.last_answer(), (4_000_000, 2_000));
        // A connect moves the estimate's stamp but is no answer.
        s.observe_connect_latency_ns(100_000);
        assert_eq!(s.last_answer(), (4_000_000, 2_000));
        assert!(s.ewma_sample().1 > 2_000);
        s.restart_latency_estimate_at(6_000_000.0, u64::MAX / 2);
        assert_eq!(s.ewma_sample(), (6_000_000.0, u64::MAX / 2));
        assert_eq!(s.last_answer(), (4_000_000, 2_000), "a restart is not an answer");
    }

    #[test]
    fn unmeasured_backend_keeps_the_default_estimate() {
        let s = BackendStats::default();
        assert_eq!(s.ewma_ns_at(u64::MAX / 2), EWMA_DEFAULT_RTT_NS);
    }
}
