//! Passive outlier detection: a backend whose connects keep failing is ejected — skipped by
//! new picks — for a backoff period, as HAProxy's `observe layer4` and Envoy's outlier
//! detection do.
//!
//! Without it a backend that blackholes SYNs costs every connection the scheduler sends it a
//! whole connect timeout before the retry, forever. Only failures that say something about
//! the backend count (refused, timed out, unreachable); a local failure (out of fds or ports)
//! does not. The rules:
//! - `consecutive_failures` failed connects in a row (no success between) eject the backend
//!   for `base_ejection_time × 2^(ejections so far)`, at most `max_ejection_time`;
//! - when the time is up the backend is picked again, and one more failure ejects it at once
//!   (half-open), while one success clears its record;
//! - never more than `max_ejection_percent` of a frontend's backends are ejected at once, so a
//!   flapping Service or a network blip never ejects everything; and a pick whose every
//!   candidate is ejected still goes to one of them rather than refusing the client.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The operator's settings (`--outlier-*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Failed connects in a row that eject a backend; 0 turns detection off.
    pub consecutive_failures: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    /// Most backends of one frontend ejected at once, in percent of its set.
    pub max_ejection_percent: u8,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

impl OutlierPolicy {
    pub fn enabled(&self) -> bool {
        self.consecutive_failures > 0
    }

    /// Whether one more ejection keeps `ejected + 1` of `set_len` within the share.
    pub fn may_eject_another(&self, ejected: usize, set_len: usize) -> bool {
        (ejected + 1) * 100 <= set_len * usize::from(self.max_ejection_percent)
    }

    fn ejection_time(&self, ejections_before: u32) -> Duration {
        let factor = 1u32 << ejections_before.min(16);
        self.base_ejection_time.saturating_mul(factor).min(self.max_ejection_time)
    }
}

/// One backend's record, in atomics (shared by every worker and every frontend reaching it).
/// Times are on the process's monotonic nanosecond clock (`schedulers::stats::now_nanos`).
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive: AtomicU32,
    /// Ejected while the clock is below this (0: never ejected).
    ejected_until: AtomicU64,
    /// Ejections since the last success; sets the next ejection's length.
    streak: AtomicU32,
    ejections: AtomicU64,
}

impl OutlierState {
    pub fn is_ejected(&self, now_ns: u64) -> bool {
        now_ns < self.ejected_until.load(Ordering::Relaxed)
    }

    /// Nanoseconds of ejection left (0 when not ejected).
    pub fn ejected_for_ns(&self, now_ns: u64) -> u64 {
        self.ejected_until.load(Ordering::Relaxed).saturating_sub(now_ns)
    }

    /// Times this backend was ejected since it first appeared.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    pub fn on_success(&self) {
        // Plain loads first: the common case (nothing to clear) writes nothing.
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
        if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; ejects when the policy says so and `may_eject()` (the share check,
    /// asked only then) agrees. Returns whether this call ejected the backend.
    pub fn on_failure(&self, now_ns: u64, policy: &OutlierPolicy, may_eject: impl FnOnce() -> bool) -> bool {
        if !policy.enabled() {
            return false;
        }
        let failures = self.consecutive.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if failures < policy.consecutive_failures || self.is_ejected(now_ns) || !may_eject() {
            return false;
        }
        let streak = self.streak.fetch_add(1, Ordering::Relaxed);
        let took = u64::try_from(policy.ejection_time(streak).as_nanos()).unwrap_or(u64::MAX);
        self.ejected_until.store(now_ns.saturating_add(took), Ordering::Relaxed);
        // Half-open on return: the first failure after the ejection ejects again.
        self.consecutive.store(policy.consecutive_failures.saturating_sub(1), Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn policy() -> OutlierPolicy {
        OutlierPolicy { consecutive_failures: 3, base_ejection_time: Duration::from_secs(10), max_ejection_time: Duration::from_secs(25), max_ejection_percent: 50 }
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let (p, o) = (policy(), OutlierState::default());
        assert!(!o.on_failure(S, &p, || true));
        assert!(!o.on_failure(S, &p, || true));
        o.on_success();
        assert!(!o.on_failure(S, &p, || true), "the count started again after the success");
        assert!(!o.on_failure(S, &p, || true));
        assert!(o.on_failure(S, &p, || true), "third in a row ejects");
        assert!(o.is_ejected(S + 9 * S));
        assert!(!o.is_ejected(S + 10 * S), "base ejection time");
        assert_eq!(o.ejections(), 1);
    }

    #[test]
    fn returning_backend_is_half_open_and_ejections_back_off_to_the_cap() {
        let (p, o) = (policy(), OutlierState::default());
        for _ in 0..3 {
            o.on_failure(0, &p, || true);
        }
        let back = 10 * S;
        assert!(o.on_failure(back, &p, || true), "one failure after return ejects again");
        assert_eq!(o.ejected_for_ns(back), 20 * S, "twice as long");
        let back = back + 20 * S;
        assert!(o.on_failure(back, &p, || true));
        assert_eq!(o.ejected_for_ns(back), 25 * S, "capped at the max ejection time");
        o.on_success();
        let later = back + 25 * S;
        for _ in 0..2 {
            assert!(!o.on_failure(later, &p, || true), "a success cleared the record");
        }
    }

    #[test]
    fn the_share_check_can_refuse_and_detection_can_be_off() {
        let (p, o) = (policy(), OutlierState::default());
        for _ in 0..5 {
            assert!(!o.on_failure(0, &p, || false));
        }
        assert!(!o.is_ejected(0));
        let off = OutlierPolicy { consecutive_failures: 0, ..p };
        for _ in 0..5 {
            assert!(!o.on_failure(0, &off, || true));
        }
        assert!(p.may_eject_another(0, 2) && !p.may_eject_another(1, 2), "half of two is one");
        assert!(!p.may_eject_another(0, 1), "a lone backend is never ejected at 50%");
    }
}
