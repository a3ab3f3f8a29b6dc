//! Each worker's share of the load, so an uneven spread over the workers is visible: the
//! connections it accepted, those it relays now, and the CPU time its thread has used.
//!
//! The counters are atomics the worker bumps per connection (no per-packet cost); the CPU time
//! is read from the kernel's per-thread accounting (`/proc/self/task/TID/stat`) only when
//! someone asks (a scrape), so measuring it costs the workers nothing.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// One worker's counters, shared with the admin endpoint.
#[derive(Debug, Default)]
pub struct WorkerLoad {
    accepted: AtomicU64,
    open: AtomicU64,
    /// The worker thread's kernel id, once it runs (0 before).
    tid: AtomicI32,
}

impl WorkerLoad {
    /// Called on the worker's own thread when it starts.
    pub fn attach_to_current_thread(&self) {
        // SAFETY: gettid has no preconditions and cannot fail.
        let tid = unsafe { libc::gettid() };
        self.tid.store(tid, Ordering::Relaxed);
    }

    pub(super) fn count_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections accepted by this worker's listeners (over-limit ones included).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections this worker relays (or connects) now, adopted ones included.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Seconds of CPU (user and system) the worker's thread has used; `None` before it ran or
    /// when the kernel's accounting cannot be read.
    pub fn busy_seconds(&self) -> Option<f64> {
        let tid = self.tid.load(Ordering::Relaxed);
        if tid == 0 {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
        let ticks = cpu_ticks(&stat)?;
        Some(ticks as f64 / clock_ticks_per_second()?)
    }
}

/// `utime + stime` (fields 14 and 15, in clock ticks) of a `/proc/.../stat` line. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (the state).
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then_some(hz as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_ticks_past_an_odd_command_name() {
        let stat = "4242 (tpvs-w (1) x) S 1 4242 4242 0 -1 4194560 120 0 0 0 37 5 0 0 20 0 3 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(42));
        assert_eq!(cpu_ticks("4242 (x) S 1"), None);
        assert_eq!(cpu_ticks("no parenthesis"), None);
    }

    /// This thread's CPU time as the kernel's resource accounting reports it.
    fn rusage_thread_seconds() -> f64 {
        // SAFETY: an all-zero rusage is a valid value; getrusage only writes into it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `ru` is a valid, writable rusage.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) }, 0);
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(ru.ru_utime) + secs(ru.ru_stime)
    }

    #[test]
    fn a_busy_thread_accumulates_cpu_time() {
        let load = WorkerLoad::default();
        assert_eq!(load.busy_seconds(), None, "no thread yet");
        load.attach_to_current_thread();
        let before = load.busy_seconds().unwrap_or(f64::NAN);
        // Spin until the thread has used 200 ms of CPU, however busy the machine is.
        let target = rusage_thread_seconds() + 0.2;
        let mut x = 0u64;
        while rusage_thread_seconds() < target {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let used = load.busy_seconds().unwrap_or(f64::NAN) - before;
        // Clock ticks are 10 ms: the two accountings agree within a few of them.
        assert!((0.15..0.5).contains(&used), "spun 200 ms of CPU, accounted {used} s");
    }
}
