//! The charts, drawn as inline SVG by hand: a latency-by-percentile plot (log "nines" axis
//! across, log latency up, one line per scheduler), per-backend share bars, and the shares
//! second by second (one strip per scheduler).

use std::fmt::Write as _;

use crate::summary::ScenarioReport;

/// Distinguishable line colours, one per scheduler in run order; no pure red, which marks the
/// odd backends in the share bars.
const COLOURS: [&str; 12] = [
    "#4e79a7", "#f28e2b", "#8c564b", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#7f7f7f",
    "#17becf", "#1a1a1a",
];

pub fn colour(i: usize) -> &'static str {
    COLOURS[i % COLOURS.len()]
}

/// XML-escapes text for element content and attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Position on the "nines" axis: 0 at p0, 1 at p90, 2 at p99, ...
fn nines(percentile: f64) -> f64 {
    let tail = (1.0 - percentile / 100.0).max(1e-9);
    -tail.log10()
}

fn fmt_ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{} s", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v} ms")
    } else {
        format!("{} µs", v * 1000.0)
    }
}

/// The percentile plot. The maximum is drawn at the nines position of 1 − 1/n (where the last
/// sample sits), so a line ends where its data ends.
pub fn percentile_plot(sr: &ScenarioReport) -> String {
    let (w, h) = (760.0, 380.0);
    let (left, right, top, bottom) = (70.0, 130.0, 20.0, 45.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    // The curves, with the maximum moved to its sample position.
    let curves: Vec<Vec<(f64, f64)>> = sr
        .runs
        .iter()
        .map(|r| {
            let n = r.recorded.max(2) as f64;
            r.curve
                .iter()
                .map(|p| {
                    let x = if p.percentile >= 100.0 { (n).log10() } else { nines(p.percentile) };
                    (x, p.ms.max(0.001))
                })
                .collect()
        })
        .collect();
    let xmax = curves.iter().flatten().map(|p| p.0).fold(1.0f64, f64::max).ceil();
    let ymin_v = curves.iter().flatten().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let ymax_v = curves.iter().flatten().map(|p| p.1).fold(0.0f64, f64::max);
    let (ylo, yhi) = if ymin_v.is_finite() && ymax_v > 0.0 {
        (ymin_v.log10().floor(), ymax_v.log10().ceil().max(ymin_v.log10().floor() + 1.0))
    } else {
        (-1.0, 1.0)
    };
    let sx = |x: f64| left + x / xmax * pw;
    let sy = |v: f64| top + ph - (v.log10() - ylo) / (yhi - ylo) * ph;

    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(s, r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>"##);
    // Vertical grid: one line per nine.
    for k in 0..=(xmax as i32) {
        let x = sx(f64::from(k));
        let label = match k {
            0 => "0%".to_string(),
            k => format!("{}%", 100.0 - 100.0 * 10f64.powi(-k)),
        };
        let _ = write!(s, r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##, top + ph);
        let _ = write!(s, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#, top + ph + 16.0);
    }
    // Horizontal grid: one line per decade of latency.
    for d in (ylo as i32)..=(yhi as i32) {
        let v = 10f64.powi(d);
        let y = sy(v);
        let _ = write!(s, r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##, left + pw);
        let _ = write!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, left - 6.0, y + 4.0, esc(&fmt_ms(v)));
    }
    let _ = write!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (log scale of 1/(1−p))</text>"#, left + pw / 2.0, h - 6.0);
    let _ = write!(
        s,
        r#"<text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">latency from scheduled send (log)</text>"#,
        top + ph / 2.0
    );
    for (i, (r, c)) in sr.runs.iter().zip(&curves).enumerate() {
        if c.is_empty() {
            continue;
        }
        let best = sr.best.as_deref() == Some(r.scheduler.as_str());
        let pts: Vec<String> = c.iter().map(|(x, v)| format!("{:.1},{:.1}", sx(*x), sy(*v))).collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="{}" points="{}"><title>{}</title></polyline>"#,
            colour(i),
            if best { 3.5 } else { 1.6 },
            pts.join(" "),
            esc(&r.scheduler)
        );
        // Legend.
        let ly = top + 14.0 + i as f64 * 17.0;
        let lx = left + pw + 12.0;
        let _ = write!(s, r#"<line x1="{lx}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="3"/>"#, lx + 20.0, colour(i));
        let name = if best { format!("{} ★ best", r.scheduler) } else { r.scheduler.clone() };
        let _ = write!(s, r#"<text x="{:.1}" y="{:.1}">{}</text>"#, lx + 26.0, ly + 4.0, esc(&name));
    }
    s.push_str("</svg>");
    s
}

/// One row of bars per scheduler, one bar per backend, height proportional to its share of
/// successful requests; the dashed line is the fair share 1/n; odd backends are drawn in red.
pub fn share_bars(sr: &ScenarioReport) -> String {
    let n = sr.runs.iter().map(|r| r.backends.len()).max().unwrap_or(0).max(1);
    let odd: Vec<bool> = (0..n).map(|i| sr.scenario.backends.get(i).is_some_and(|b| !b.label().is_empty())).collect();
    // Scaled to the tallest bar, but no taller than four fair shares: a pinned run (one backend
    // at 100%) would otherwise flatten every other row; taller bars are clipped and labelled.
    let max_share = sr
        .runs
        .iter()
        .flat_map(|r| r.backends.iter().map(|b| b.share))
        .fold(1.0 / n as f64, f64::max)
        .min(4.0 / n as f64);
    let (row_h, bar_w, gap, left) = (46.0, 22.0, 4.0, 80.0);
    let w = (left + n as f64 * (bar_w + gap) + 150.0).max(620.0);
    let h = 30.0 + sr.runs.len() as f64 * row_h + 20.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    // Columns by position in the list: the scenario's backends in order (self-hosted), or
    // those that answered (external), labelled with their indices.
    let widest = sr.runs.iter().max_by_key(|r| r.backends.len());
    for i in 0..n {
        let x = left + i as f64 * (bar_w + gap) + bar_w / 2.0;
        let index = widest.and_then(|r| r.backends.get(i)).map_or(i, |b| b.index);
        let _ = write!(s, r#"<text x="{x:.1}" y="16" text-anchor="middle">#{index}</text>"#);
    }
    let fair = 1.0 / n as f64;
    for (ri, r) in sr.runs.iter().enumerate() {
        let base = 30.0 + (ri as f64 + 1.0) * row_h - 6.0;
        let scale = (row_h - 10.0) / max_share;
        let best = sr.best.as_deref() == Some(r.scheduler.as_str());
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-weight="{}">{}</text>"#,
            left - 8.0,
            base - 4.0,
            if best { "bold" } else { "normal" },
            esc(&if best { format!("★ {}", r.scheduler) } else { r.scheduler.clone() })
        );
        for (pos, b) in r.backends.iter().enumerate() {
            let x = left + pos as f64 * (bar_w + gap);
            let clipped = b.share > max_share;
            let bh = b.share.min(max_share) * scale;
            if clipped {
                let _ = write!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{:.0}%</text>"#,
                    x + bar_w / 2.0,
                    base - bh - 2.0,
                    b.share * 100.0
                );
            }
            let is_odd = odd.get(b.index).copied().unwrap_or(false);
            let (fill, stroke) = if is_odd { ("#d62728", "#000") } else { (colour(ri), "none") };
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{bar_w}" height="{bh:.1}" fill="{fill}" stroke="{stroke}"><title>{} #{}: {:.2}%</title></rect>"#,
                base - bh,
                esc(&r.scheduler),
                b.index,
                b.share * 100.0
            );
        }
        let fy = base - fair * scale;
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{fy:.1}" x2="{:.1}" y2="{fy:.1}" stroke="#333" stroke-dasharray="3,3"/>"##,
            left + n as f64 * (bar_w + gap)
        );
        let _ = write!(s, r##"<line x1="{left}" y1="{base:.1}" x2="{:.1}" y2="{base:.1}" stroke="#999"/>"##, left + n as f64 * (bar_w + gap));
        let oddshare: f64 = r.backends.iter().filter(|b| odd.get(b.index).copied().unwrap_or(false)).map(|b| b.share).sum();
        let note = if odd.iter().any(|o| *o) { format!("odd: {:.2}%", oddshare * 100.0) } else { String::new() };
        let _ = write!(s, r#"<text x="{:.1}" y="{:.1}">{}</text>"#, left + n as f64 * (bar_w + gap) + 8.0, base - 4.0, esc(&note));
    }
    let _ = write!(
        s,
        r#"<text x="{left}" y="{:.1}">bar height: share of successful requests; dashed: fair share {:.1}%; red: odd backend</text>"#,
        h - 4.0,
        fair * 100.0
    );
    s.push_str("</svg>");
    s
}

/// The shares second by second: one strip per scheduler, time across, share up, a line per
/// backend (odd backends in red, drawn last), the fair share dashed. Where a backend that was
/// slow or stalled gets its traffic back shows as its red line climbing to the dashed one.
pub fn share_timeline(sr: &ScenarioReport) -> String {
    let secs = sr.runs.iter().map(|r| r.per_second.len()).max().unwrap_or(0);
    let n = sr.runs.iter().flat_map(|r| r.per_second.iter().map(|s| s.share.len())).max().unwrap_or(0);
    if secs == 0 || n == 0 {
        return String::new();
    }
    let odd: Vec<bool> = (0..n).map(|i| sr.scenario.backends.get(i).is_some_and(|b| !b.label().is_empty())).collect();
    let fair = 1.0 / n as f64;
    // Up to three fair shares: enough to see a backend take more than its part, without one
    // pinned run flattening the rest (higher values are clipped at the strip's top).
    let top_share = (3.0 * fair).min(1.0);
    let (strip_h, gap, left, width) = (70.0, 14.0, 80.0, 640.0);
    let w = left + width + 20.0;
    let h = 10.0 + sr.runs.len() as f64 * (strip_h + gap) + 24.0;
    let sx = |t: f64| left + t / secs as f64 * width;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    for (ri, r) in sr.runs.iter().enumerate() {
        let y0 = 10.0 + ri as f64 * (strip_h + gap);
        let sy = |share: f64| y0 + strip_h - share.min(top_share) / top_share * strip_h;
        let _ = write!(s, r##"<rect x="{left}" y="{y0:.1}" width="{width}" height="{strip_h}" fill="#fafafa" stroke="#999"/>"##);
        let _ = write!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, left - 8.0, y0 + strip_h / 2.0 + 4.0, esc(&r.scheduler));
        let fy = sy(fair);
        let _ = write!(s, r##"<line x1="{left}" y1="{fy:.1}" x2="{:.1}" y2="{fy:.1}" stroke="#333" stroke-dasharray="3,3"/>"##, left + width);
        let order = (0..n).filter(|i| !odd[*i]).chain((0..n).filter(|i| odd[*i]));
        for b in order {
            // Each second's share drawn at the middle of its second.
            let pts: Vec<String> = r
                .per_second
                .iter()
                .map(|sec| format!("{:.1},{:.1}", sx(sec.t as f64 + 0.5), sy(sec.share.get(b).copied().unwrap_or(0.0))))
                .collect();
            let (stroke, width_px) = if odd[b] { ("#d62728", 2.2) } else { ("#9aa9bb", 1.0) };
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{stroke}" stroke-width="{width_px}" points="{}"><title>{} #{b}</title></polyline>"#,
                pts.join(" "),
                esc(&r.scheduler)
            );
        }
    }
    let base = 10.0 + sr.runs.len() as f64 * (strip_h + gap);
    let step = if secs > 30 { 5 } else { 1 };
    for t in (0..=secs).step_by(step) {
        let _ = write!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t}s</text>"#, sx(t as f64), base + 2.0);
    }
    let _ = write!(
        s,
        r#"<text x="{left}" y="{:.1}">share of each second's successful requests (0 to {:.0}%); dashed: fair share {:.1}%; red: odd backend</text>"#,
        h - 4.0,
        top_share * 100.0,
        fair * 100.0
    );
    s.push_str("</svg>");
    s
}
