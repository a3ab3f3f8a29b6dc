//! Optional live `/metrics` (Prometheus text format) while a comparison runs: the current run's
//! counters and percentiles, and the summary of every finished run.
//!
//! A blocking thread with a minimal HTTP/1.0 responder: one scraper every few seconds does not
//! justify a web stack in a load generator.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::record::Recorder;
use crate::summary::{Percentiles, RunResult};

/// One exposition row: scenario, scheduler, sent, ok, failed, percentiles, in flight (live
/// run only).
type Row = (String, String, u64, u64, u64, Percentiles, Option<u64>);

#[derive(Debug, Default)]
pub struct Live {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    current: Option<(String, String, Arc<Recorder>)>,
    finished: Vec<Finished>,
}

#[derive(Debug)]
struct Finished {
    scenario: String,
    scheduler: String,
    sent: u64,
    recorded: u64,
    failed: u64,
    latency: Percentiles,
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn begin(&self, scenario: &str, scheduler: &str, rec: Arc<Recorder>) {
        self.lock().current = Some((scenario.to_string(), scheduler.to_string(), rec));
    }

    pub fn end(&self, run: &RunResult) {
        let mut s = self.lock();
        let scenario = s.current.take().map(|c| c.0).unwrap_or_default();
        s.finished.push(Finished {
            scenario,
            scheduler: run.scheduler.clone(),
            sent: run.sent,
            recorded: run.recorded,
            failed: run.failed,
            latency: run.latency,
        });
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let s = self.lock();
        let mut rows: Vec<Row> = s
            .finished
            .iter()
            .map(|f| (f.scenario.clone(), f.scheduler.clone(), f.sent, f.recorded, f.failed, f.latency, None))
            .collect();
        if let Some((sc, sch, rec)) = &s.current {
            let p = rec.with(|t| Percentiles::of(&t.all));
            rows.push((
                sc.clone(),
                sch.clone(),
                rec.sent.load(Ordering::Relaxed),
                rec.ok.load(Ordering::Relaxed),
                rec.failed.load(Ordering::Relaxed),
                p,
                Some(rec.in_flight.load(Ordering::Relaxed)),
            ));
        }
        drop(s);
        let mut out = String::new();
        out.push_str("# HELP tpvs_loadtest_requests_total Measured requests by outcome (warm-up excluded).\n");
        out.push_str("# TYPE tpvs_loadtest_requests_total counter\n");
        for (sc, sch, sent, ok, failed, _, _) in &rows {
            let _ = writeln!(out, "tpvs_loadtest_requests_total{{scenario=\"{sc}\",scheduler=\"{sch}\",outcome=\"sent\"}} {sent}");
            let _ = writeln!(out, "tpvs_loadtest_requests_total{{scenario=\"{sc}\",scheduler=\"{sch}\",outcome=\"ok\"}} {ok}");
            let _ = writeln!(out, "tpvs_loadtest_requests_total{{scenario=\"{sc}\",scheduler=\"{sch}\",outcome=\"failed\"}} {failed}");
        }
        out.push_str("# HELP tpvs_loadtest_latency_seconds Latency from the scheduled send time, by quantile.\n");
        out.push_str("# TYPE tpvs_loadtest_latency_seconds gauge\n");
        for (sc, sch, _, _, _, p, _) in &rows {
            for (q, v) in [("0.5", p.p50), ("0.9", p.p90), ("0.99", p.p99), ("0.999", p.p999), ("1", p.max)] {
                let _ = writeln!(
                    out,
                    "tpvs_loadtest_latency_seconds{{scenario=\"{sc}\",scheduler=\"{sch}\",quantile=\"{q}\"}} {}",
                    v / 1e3
                );
            }
        }
        out.push_str("# HELP tpvs_loadtest_in_flight Requests of the current run not answered yet.\n");
        out.push_str("# TYPE tpvs_loadtest_in_flight gauge\n");
        for (sc, sch, _, _, _, _, inflight) in &rows {
            if let Some(n) = inflight {
                let _ = writeln!(out, "tpvs_loadtest_in_flight{{scenario=\"{sc}\",scheduler=\"{sch}\"}} {n}");
            }
        }
        out
    }
}

/// Serves `live` on `addr` from a background thread; returns the bound address.
pub fn serve(addr: SocketAddr, live: Arc<Live>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("loadtest-metrics".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            // Read the request head (bounded); the path does not matter, every path is /metrics.
            let mut head = [0u8; 4096];
            let mut got = 0;
            while got < head.len() {
                match conn.read(&mut head[got..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        got += n;
                        if head[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            let body = live.render();
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })?;
    Ok(bound)
}
