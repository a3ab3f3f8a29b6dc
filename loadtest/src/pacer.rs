//! The open-loop time line: request *i* is due at `start + i / rate`, whether or not earlier
//! requests have been answered, and its latency is measured from that due time.
//!
//! This is the coordinated-omission correction of wrk2: a closed-loop tester that waits for a
//! reply before sending the next request stops sending exactly while the system is slow, so the
//! slow period contributes a handful of samples instead of the thousands of requests real users
//! would have sent. Here a late reply never delays the next send, and a late *send* (the pacer
//! itself falling behind) is charged to the request, not hidden.
//!
//! The pacer is a dedicated OS thread sleeping with 1 µs timer slack, not an async timer:
//! runtime timers tick at 1 ms, which would add up to a millisecond of error to every sample.
//! Where allowed it paces at real-time priority, so a busy machine does not make it late.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Which requests exist and when each is due.
#[derive(Clone, Copy, Debug)]
pub struct Timeline {
    pub start: Instant,
    pub rate: f64,
    pub warmup: Duration,
    pub measure: Duration,
}

/// One scheduled request.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    pub id: u64,
    /// When it was due: latency is measured from here.
    pub due: Instant,
    /// False during warm-up.
    pub measured: bool,
}

impl Timeline {
    pub fn measure_from(&self) -> Instant {
        self.start + self.warmup
    }

    pub fn end(&self) -> Instant {
        self.start + self.warmup + self.measure
    }

    /// Requests in the whole time line (warm-up included).
    pub fn total(&self) -> u64 {
        ((self.warmup + self.measure).as_secs_f64() * self.rate).floor() as u64
    }

    pub fn due(&self, id: u64) -> Instant {
        self.start + Duration::from_secs_f64(id as f64 / self.rate)
    }

    pub fn job(&self, id: u64) -> Job {
        let due = self.due(id);
        Job { id, due, measured: due >= self.measure_from() }
    }
}

/// Calls `dispatch` for every request at its due time, on the calling thread, at real-time
/// priority if `realtime` and allowed; returns when the time line is over or `stop` is set.
pub fn run(timeline: Timeline, stop: &AtomicBool, realtime: bool, mut dispatch: impl FnMut(Job)) {
    tight_timer_slack();
    let _realtime = realtime.then(RealTime::enter);
    let total = timeline.total();
    let mut next = 0u64;
    while next < total && !stop.load(Ordering::Relaxed) {
        let due = timeline.due(next);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
            continue;
        }
        // Everything already due goes out now (a burst if the pacer was descheduled); each
        // request still carries its own due time.
        while next < total && timeline.due(next) <= now {
            dispatch(timeline.job(next));
            next += 1;
        }
    }
}

/// Linux rounds a sleeping thread's wake-up up by its timer slack (50 µs by default); at
/// 20 000 requests/s that is a whole inter-arrival gap, so the pacer asks for 1 µs.
fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an unsigned long by value and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// Real-time (SCHED_FIFO) priority for the pacing thread while it paces, where the process may
/// have it (root, CAP_SYS_NICE); otherwise the thread keeps its normal priority.
///
/// On a busy machine a normal thread that wakes at its due time can wait milliseconds for a
/// time slice — the whole of the generator's send error. A real-time thread preempts every
/// normal one at once. It sleeps between requests and the kernel caps real-time threads at
/// 95 % of a CPU, so the rest of the machine keeps running.
struct RealTime {
    previous: Option<(libc::c_int, libc::sched_param)>,
}

impl RealTime {
    fn enter() -> RealTime {
        // SAFETY: sched_getscheduler/sched_getparam/sched_setscheduler on the calling thread
        // (pid 0) with a sched_param that lives across each call.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            let mut old = std::mem::zeroed::<libc::sched_param>();
            if policy < 0 || libc::sched_getparam(0, &raw mut old) != 0 {
                return RealTime { previous: None };
            }
            let fifo = libc::sched_param { sched_priority: 10 };
            let entered = libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const fifo) == 0;
            RealTime { previous: entered.then_some((policy, old)) }
        }
    }
}

impl Drop for RealTime {
    fn drop(&mut self) {
        if let Some((policy, old)) = self.previous {
            // SAFETY: as in `enter`: the calling thread, a live sched_param.
            unsafe {
                libc::sched_setscheduler(0, policy, &raw const old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_follow_the_rate_and_warmup() {
        let t = Timeline {
            start: Instant::now(),
            rate: 1000.0,
            warmup: Duration::from_millis(100),
            measure: Duration::from_millis(200),
        };
        assert_eq!(t.total(), 300);
        assert!(!t.job(99).measured);
        assert!(t.job(100).measured);
        assert_eq!(t.due(500) - t.start, Duration::from_millis(500));
    }

    #[test]
    fn dispatches_every_job_once_in_order() {
        let t = Timeline {
            start: Instant::now(),
            rate: 20_000.0,
            warmup: Duration::ZERO,
            measure: Duration::from_millis(50),
        };
        let stop = AtomicBool::new(false);
        let mut seen = Vec::new();
        run(t, &stop, true, |j| seen.push((j.id, Instant::now() >= j.due)));
        assert_eq!(seen.len(), 1000);
        assert!(seen.iter().enumerate().all(|(i, (id, late))| *id == i as u64 && *late));
    }
}
