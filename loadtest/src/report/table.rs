//! The terminal table: one row per scheduler, the best marked with `*`, and the per-backend
//! shares with the odd backends (stalled, slow, capped) in brackets. With several seeds each
//! number is the median across seeds followed by its range, `17.4ms (17.1–18.0)`.

use std::fmt::Write as _;

use crate::seeds::{SeedSpread, Spread};
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
    match &sr.spread {
        Some(spread) => spread_rows(&mut out, sr, spread),
        None => run_rows(&mut out, sr),
    }
    let failures: Vec<String> = every_run(sr)
        .filter(|(_, r)| r.failed > 0)
        .map(|(seed, r)| {
            let why: Vec<String> = r.failures.iter().map(|(k, v)| format!("{k} {v}")).collect();
            format!("{}{}: {}", r.scheduler, seed_note(sr, seed), why.join(", "))
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(out, "   failures — {}", failures.join("; "));
    }
    let recovered: Vec<String> = every_run(sr)
        .flat_map(|(seed, r)| {
            r.recovery.iter().map(move |rc| {
                let back = rc.back_within.map_or("not within the run".to_string(), |s| format!("{s:.1} s"));
                format!("{}{} #{}: {back}", r.scheduler, seed_note(sr, seed), rc.backend)
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
    let pinned: Vec<&str> = match &sr.spread {
        Some(spread) => spread.schedulers.iter().filter(|s| s.pinned()).map(|s| s.scheduler.as_str()).collect(),
        None => sr.runs.iter().filter(|r| summary::pinned(r)).map(|r| r.scheduler.as_str()).collect(),
    };
    if !pinned.is_empty() {
        let most = if sr.spread.is_some() { " in most seeds" } else { "" };
        let _ = writeln!(out, "   pinned{most} (one backend served > 50% and > 2× its fair share, or > 90% of two; not eligible for best): {}", pinned.join(", "));
    }
    if let Some(b) = &sr.best {
        let on = if sr.spread.is_some() { " on the medians" } else { "" };
        let _ = writeln!(out, "   * best{on}: {b} (highest success rate, then lowest p99, then p99.9)");
    }
    if let Some(spread) = &sr.spread
        && spread.seeds_disagree(sr.best.as_deref())
    {
        let each: Vec<String> =
            spread.seeds.iter().zip(&spread.best_by_seed).map(|(s, b)| format!("seed {s} {}", b.as_deref().unwrap_or("none"))).collect();
        let _ = writeln!(out, "   seeds disagree on the best — {}", each.join(", "));
    }
    out
}

/// Every run of the report with its seed (the first seed's, then the others').
fn every_run(sr: &ScenarioReport) -> impl Iterator<Item = (u64, &RunResult)> {
    sr.runs.iter().map(|r| (sr.seed, r)).chain(sr.other_seeds.iter().flat_map(|s| s.runs.iter().map(|r| (s.seed, r))))
}

/// " (seed N)" when the report has several seeds.
fn seed_note(sr: &ScenarioReport, seed: u64) -> String {
    if sr.other_seeds.is_empty() { String::new() } else { format!(" (seed {seed})") }
}

/// A median and its range in the median's unit: `17.4ms (17.1–18.0)`.
fn ms_spread(s: &Spread) -> String {
    let (scale, unit, digits) = if s.median >= 1000.0 {
        (1e-3, "s", 2)
    } else if s.median >= 10.0 {
        (1.0, "ms", 1)
    } else {
        (1.0, "ms", 2)
    };
    let f = |v: f64| format!("{:.*}", digits, v * scale);
    format!("{}{unit} ({}–{})", f(s.median), f(s.min), f(s.max))
}

fn pct_spread(s: &Spread) -> String {
    format!("{:.2} ({:.2}–{:.2})", s.median * 100.0, s.min * 100.0, s.max * 100.0)
}

fn spread_rows(out: &mut String, sr: &ScenarioReport, spread: &SeedSpread) {
    let seeds: Vec<String> = spread.seeds.iter().map(u64::to_string).collect();
    let _ = writeln!(out, "   {} seeds ({}): median (min–max) across seeds", spread.seeds.len(), seeds.join(", "));
    let _ = writeln!(
        out,
        "  {:<8} {:>21} {:>21} {:>21} {:>21} {:>21} {:>21} {:>21}  median share % by backend",
        "sched", "ok %", "p50", "p90", "p99", "p99.9", "max", "odd share %"
    );
    let odd: Vec<bool> = sr.scenario.backends.iter().map(|b| !b.label().is_empty()).collect();
    for s in &spread.schedulers {
        let mark = if sr.best.as_deref() == Some(s.scheduler.as_str()) { "*" } else { " " };
        let shares: Vec<String> = s
            .shares
            .iter()
            .enumerate()
            .map(|(i, sh)| {
                let pct = format!("{:.1}", sh.median * 100.0);
                if odd.get(i).copied().unwrap_or(false) { format!("[{pct}]") } else { pct }
            })
            .collect();
        let _ = writeln!(
            out,
            "{mark} {:<8} {:>21} {:>21} {:>21} {:>21} {:>21} {:>21} {:>21}  {}",
            s.scheduler,
            pct_spread(&s.success_rate),
            ms_spread(&s.p50),
            ms_spread(&s.p90),
            ms_spread(&s.p99),
            ms_spread(&s.p999),
            ms_spread(&s.max),
            s.odd_share.as_ref().map_or("—".to_string(), pct_spread),
            shares.join(" ")
        );
    }
}

fn run_rows(out: &mut String, sr: &ScenarioReport) {
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
}
