//! The terminal table: one row per scheduler, the best marked with `*`, and the per-backend
//! shares with the odd backends (stalled, slow, capped) in brackets.

use std::fmt::Write as _;

use crate::summary::{self, RunResult, ScenarioReport};

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2}s", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.1}ms")
    } else {
        format!("{v:.2}ms")
    }
}

/// Shares in backend order; when the listed backends are not simply #0..#n (an `external` run
/// lists those that answered), each is prefixed with its index.
fn shares(run: &RunResult) -> String {
    if run.backends.is_empty() && run.mode == "http-keep-alive" {
        return "n/a (HTTP replies do not name their backend)".to_string();
    }
    let contiguous = run.backends.iter().enumerate().all(|(i, b)| b.index == i);
    run.backends
        .iter()
        .map(|b| {
            let pct = format!("{:.1}", b.share * 100.0);
            let pct = if b.label.is_empty() { pct } else { format!("[{pct}]") };
            if contiguous { pct } else { format!("#{} {pct}", b.index) }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The table for one scenario, as plain text (also valid inside a Markdown code block).
pub fn render(sr: &ScenarioReport) -> String {
    let s = &sr.scenario;
    let mut out = String::new();
    let _ = writeln!(out, "== {} — {}", s.name, s.title);
    let _ = writeln!(out, "   {}", super::load_line(s));
    if sr.time_scale != 1.0 {
        let _ = writeln!(out, "   time line scaled by {}", sr.time_scale);
    }
    let odd: Vec<String> =
        s.backends.iter().enumerate().filter(|(_, b)| !b.label().is_empty()).map(|(i, b)| format!("#{i} {}", b.label())).collect();
    if !odd.is_empty() {
        let _ = writeln!(out, "   odd backends: {}", odd.join("; "));
    }
    let _ = writeln!(
        out,
        "  {:<8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}  share % by backend",
        "sched", "sent", "ok %", "p50", "p90", "p99", "p99.9", "max"
    );
    for r in &sr.runs {
        let mark = if sr.best.as_deref() == Some(r.scheduler.as_str()) { "*" } else { " " };
        let _ = writeln!(
            out,
            "{mark} {:<8} {:>8} {:>8.2} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
            r.scheduler,
            r.sent,
            r.success_rate * 100.0,
            ms(r.latency.p50),
            ms(r.latency.p90),
            ms(r.latency.p99),
            ms(r.latency.p999),
            ms(r.latency.max),
            shares(r)
        );
    }
    let failures: Vec<String> = sr
        .runs
        .iter()
        .filter(|r| r.failed > 0)
        .map(|r| {
            let why: Vec<String> = r.failures.iter().map(|(k, v)| format!("{k} {v}")).collect();
            format!("{}: {}", r.scheduler, why.join(", "))
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(out, "   failures — {}", failures.join("; "));
    }
    let recovered: Vec<String> = sr
        .runs
        .iter()
        .flat_map(|r| {
            r.recovery.iter().map(move |rc| {
                let back = rc.back_within.map_or("not within the run".to_string(), |s| format!("{s:.1} s"));
                format!("{} #{}: {back}", r.scheduler, rc.backend)
            })
        })
        .collect();
    if !recovered.is_empty() {
        let _ = writeln!(
            out,
            "   back to ≥ {:.0}% of fair share after recovering — {}",
            summary::BACK_AT_FAIR_FRACTION * 100.0,
            recovered.join("; ")
        );
    }
    let pinned: Vec<&str> = sr.runs.iter().filter(|r| summary::pinned(r)).map(|r| r.scheduler.as_str()).collect();
    if !pinned.is_empty() {
        let _ = writeln!(out, "   pinned (one backend served > 50% and > 2× its fair share, not eligible for best): {}", pinned.join(", "));
    }
    if let Some(b) = &sr.best {
        let _ = writeln!(out, "   * best: {b} (highest success rate, then lowest p99, then p99.9)");
    }
    out
}
