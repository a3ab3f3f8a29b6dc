//! The self-contained HTML report: no scripts, no external files; one section per scenario with
//! its table, percentile plot, share bars and shares over time. With several seeds, a table of
//! each scheduler's medians and their min–max range comes first; the charts are the first
//! seed's.

use std::fmt::Write as _;

use super::svg::{esc, percentile_plot, share_bars, share_timeline};
use crate::seeds::{SeedSpread, Spread};
use crate::summary::{Report, ScenarioReport};

const STYLE: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}\
table{border-collapse:collapse;font-size:13px;margin:0.6em 0}\
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}\
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}\
tr.best{background:#fff4c2;font-weight:bold}.odd{color:#d62728;font-weight:bold}\
section{margin-bottom:3em}p.small{font-size:12px;color:#555}";

fn ms(v: f64) -> String {
    if v >= 1000.0 { format!("{:.2} s", v / 1e3) } else { format!("{v:.2} ms") }
}

fn scenario_section(sr: &ScenarioReport) -> String {
    let s = &sr.scenario;
    let mut h = String::new();
    let _ = write!(h, "<section><h2>{} <small>({})</small></h2>", esc(&s.title), esc(&s.name));
    let _ = write!(h, "<p>{}</p><p class=\"small\">{}", esc(&s.about), esc(&super::load_line(s)));
    if sr.time_scale != 1.0 {
        let _ = write!(h, "; time line scaled by {}", sr.time_scale);
    }
    // The first seed's table and charts; with several seeds, the spread table comes first and
    // the first seed's table marks that seed's own best.
    let mut own_best = sr.best.as_deref();
    match &sr.spread {
        Some(spread) => {
            let seeds: Vec<String> = spread.seeds.iter().map(u64::to_string).collect();
            let _ = write!(h, "; seeds {}.</p>", seeds.join(", "));
            h.push_str(&spread_table(sr, spread));
            let _ = write!(h, "<h3>Seed {}</h3>", sr.seed);
            own_best = spread.best_by_seed.first().and_then(|b| b.as_deref());
        }
        None => {
            let _ = write!(h, "; seed {}.</p>", sr.seed);
        }
    }
    h.push_str("<table><tr><th>scheduler</th><th>sent</th><th>success</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>odd backends' share</th><th>failures</th></tr>");
    for r in &sr.runs {
        let best = own_best == Some(r.scheduler.as_str());
        let odd: f64 = r.backends.iter().filter(|b| !b.label.is_empty()).map(|b| b.share).sum();
        let has_odd = r.backends.iter().any(|b| !b.label.is_empty());
        let failures: Vec<String> = r.failures.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = write!(
            h,
            "<tr{}><td>{}{}</td><td>{}</td><td>{:.2}%</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if best { " class=\"best\"" } else { "" },
            if best { "★ " } else { "" },
            esc(&if crate::summary::pinned(r) { format!("{} (pinned)", r.scheduler) } else { r.scheduler.clone() }),
            r.sent,
            r.success_rate * 100.0,
            ms(r.latency.p50),
            ms(r.latency.p90),
            ms(r.latency.p99),
            ms(r.latency.p999),
            ms(r.latency.max),
            if has_odd { format!("<span class=\"odd\">{:.2}%</span>", odd * 100.0) } else { "—".to_string() },
            esc(&failures.join(", "))
        );
    }
    h.push_str("</table>");
    h.push_str("<h3>Latency by percentile</h3>");
    h.push_str(&percentile_plot(sr));
    h.push_str("<h3>Share of requests by backend</h3>");
    h.push_str(&share_bars(sr));
    let timeline = share_timeline(sr);
    if !timeline.is_empty() {
        h.push_str("<h3>Share of requests by backend, second by second</h3>");
        h.push_str(&timeline);
    }
    h.push_str("</section>");
    h
}

/// A median with its range under it.
fn spread_cell(median: String, min: String, max: String) -> String {
    format!("<td>{median}<br><small>{min} – {max}</small></td>")
}

fn ms_cell(s: &Spread) -> String {
    spread_cell(ms(s.median), ms(s.min), ms(s.max))
}

fn pct_cell(s: &Spread) -> String {
    let p = |v: f64| format!("{:.2}%", v * 100.0);
    spread_cell(p(s.median), p(s.min), p(s.max))
}

/// Each scheduler's medians across seeds, with their min–max range; the best on the medians
/// marked, and a note when some seed's own best differs.
fn spread_table(sr: &ScenarioReport, spread: &SeedSpread) -> String {
    let mut h = String::new();
    let _ = write!(h, "<h3>Median across {} seeds (min – max below each)</h3>", spread.seeds.len());
    h.push_str("<table><tr><th>scheduler</th><th>seeds</th><th>success</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>odd backends' share</th></tr>");
    for s in &spread.schedulers {
        let best = sr.best.as_deref() == Some(s.scheduler.as_str());
        let name = if s.pinned() { format!("{} (pinned)", s.scheduler) } else { s.scheduler.clone() };
        let _ = write!(
            h,
            "<tr{}><td>{}{}</td><td>{}</td>{}{}{}{}{}{}{}</tr>",
            if best { " class=\"best\"" } else { "" },
            if best { "★ " } else { "" },
            esc(&name),
            s.seeds,
            pct_cell(&s.success_rate),
            ms_cell(&s.p50),
            ms_cell(&s.p90),
            ms_cell(&s.p99),
            ms_cell(&s.p999),
            ms_cell(&s.max),
            s.odd_share.as_ref().map_or("<td>—</td>".to_string(), pct_cell),
        );
    }
    h.push_str("</table>");
    if spread.seeds_disagree(sr.best.as_deref()) {
        let each: Vec<String> =
            spread.seeds.iter().zip(&spread.best_by_seed).map(|(s, b)| format!("seed {s}: {}", b.as_deref().unwrap_or("none"))).collect();
        let _ = write!(h, "<p class=\"small\">The seeds disagree on the best — {}.</p>", esc(&each.join(", ")));
    }
    h
}

pub fn render(report: &Report) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tpvs scheduler comparison</title><style>{STYLE}</style></head><body>"
    );
    let _ = write!(
        h,
        "<h1>tpvs scheduler comparison</h1><p class=\"small\">{} on {} CPUs. Latency is measured from each request's \
         scheduled send time on an open-loop time line (coordinated-omission corrected); warm-up excluded. \
         ★ marks the best scheduler: highest success rate, then lowest p99, then p99.9, among those \
         that spread the load (a run where one backend served over half, and over twice its fair share — or over 90 % of two — is <i>pinned</i>).</p>",
        esc(&report.tool),
        report.cpus
    );
    for sr in &report.scenarios {
        h.push_str(&scenario_section(sr));
    }
    h.push_str("</body></html>\n");
    h
}
