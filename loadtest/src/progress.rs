//! The progress line: one line, rewritten in place on a terminal (a fresh line every 10 s
//! otherwise, so CI logs stay short), with the run's live counters.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::pacer::Timeline;
use crate::record::Recorder;

#[derive(Debug)]
pub struct Progress {
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    pub fn start(label: String, timeline: Timeline, rec: Arc<Recorder>, quiet: bool) -> Progress {
        let done = Arc::new(AtomicBool::new(false));
        let thread = (!quiet).then(|| {
            let done = Arc::clone(&done);
            std::thread::spawn(move || show(&label, timeline, &rec, &done))
        });
        Progress { done, thread }
    }

    pub fn finish(mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn show(label: &str, timeline: Timeline, rec: &Recorder, done: &AtomicBool) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty { Duration::from_millis(500) } else { Duration::from_secs(10) };
    let total = (timeline.warmup + timeline.measure).as_secs_f64();
    let mut last = Instant::now();
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() < every {
            continue;
        }
        last = Instant::now();
        let t = Instant::now().saturating_duration_since(timeline.start).as_secs_f64().min(total);
        let phase = if Instant::now() < timeline.measure_from() { "warm-up" } else { "measuring" };
        let p99 = rec.with(|t| if t.all.is_empty() { 0.0 } else { t.all.value_at_quantile(0.99) as f64 / 1e6 });
        let line = format!(
            "{label:<28} {phase:<9} {t:5.1}/{total:.0}s  sent {:>8}  ok {:>8}  failed {:>6}  in flight {:>5}  p99 {p99:8.2}ms",
            rec.sent.load(Ordering::Relaxed),
            rec.ok.load(Ordering::Relaxed),
            rec.failed.load(Ordering::Relaxed),
            rec.in_flight.load(Ordering::Relaxed),
        );
        let mut err = std::io::stderr().lock();
        let _ = if tty { write!(err, "\r{line}\x1b[K") } else { writeln!(err, "{line}") };
        let _ = err.flush();
    }
    if tty {
        let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
    }
}
