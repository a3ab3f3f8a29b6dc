//! The text exposition format (0.0.4) written straight into chunks, for the families whose
//! size grows with the cluster (per Service port, per backend).
//!
//! Building those as `prometheus` protobuf families first and encoding them after cost about
//! 28 label-carrying objects per endpoint, all alive at once: at 100 000 endpoints one scrape
//! took the daemon from 217 MB to nearly 1 GB. Written line by line into a buffer that is
//! handed on every [`CHUNK`] bytes, a scrape's memory is one chunk, whatever the table's size.

use std::fmt::Write as _;

use prometheus::proto::MetricType;

use super::exposition::{HistogramSnapshot, Labels};
use super::spec::Spec;

/// Bytes gathered before they are handed to the sink.
pub(super) const CHUNK: usize = 64 * 1024;

/// Where finished chunks go (the HTTP response body, or a string in tests).
pub(super) type Sink<'a> = &'a mut dyn FnMut(String);

/// A text exposition under way.
pub(super) struct TextWriter<'a> {
    buf: String,
    sink: Sink<'a>,
}

impl<'a> TextWriter<'a> {
    pub(super) fn new(sink: Sink<'a>) -> Self {
        TextWriter { buf: String::with_capacity(CHUNK + 4096), sink }
    }

    /// Starts a family; its `# HELP`/`# TYPE` lines are written with its first sample, so a
    /// family with no sample is left out (as the protobuf encoder does).
    pub(super) fn family<'w>(&'w mut self, spec: &'static Spec) -> Family<'w, 'a> {
        Family { w: self, spec, started: false }
    }

    /// Text already in the exposition format (what the registry's encoder produced).
    pub(super) fn raw(&mut self, text: &str) {
        self.buf.push_str(text);
        self.maybe_flush();
    }

    fn maybe_flush(&mut self) {
        if self.buf.len() >= CHUNK {
            self.flush();
        }
    }

    pub(super) fn flush(&mut self) {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, String::with_capacity(CHUNK + 4096));
            (self.sink)(chunk);
        }
    }
}

impl Drop for TextWriter<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// One family being written.
pub(super) struct Family<'w, 'a> {
    w: &'w mut TextWriter<'a>,
    spec: &'static Spec,
    started: bool,
}

impl Family<'_, '_> {
    fn header(&mut self) {
        if self.started {
            return;
        }
        self.started = true;
        let kind = match self.spec.kind {
            MetricType::COUNTER => "counter",
            MetricType::GAUGE => "gauge",
            MetricType::HISTOGRAM => "histogram",
            _ => "untyped",
        };
        let buf = &mut self.w.buf;
        let _ = write!(buf, "# HELP {} ", self.spec.name);
        escape_help(buf, self.spec.help);
        let _ = writeln!(buf, "\n# TYPE {} {kind}", self.spec.name);
    }

    /// One counter or gauge sample.
    pub(super) fn value(&mut self, labels: Labels<'_>, v: f64) {
        self.header();
        let buf = &mut self.w.buf;
        buf.push_str(self.spec.name);
        write_labels(buf, labels, None);
        let _ = writeln!(buf, " {}", Number(v));
        self.w.maybe_flush();
    }

    /// One histogram: cumulative buckets (ending with `+Inf`), sum and count.
    pub(super) fn histogram(&mut self, labels: Labels<'_>, snap: &HistogramSnapshot) {
        self.header();
        let name = self.spec.name;
        let buf = &mut self.w.buf;
        let mut wrote_inf = false;
        for (le, n) in &snap.buckets {
            let le_text = if le.is_infinite() { "+Inf".to_string() } else { Number(*le).to_string() };
            wrote_inf |= le.is_infinite();
            let _ = write!(buf, "{name}_bucket");
            write_labels(buf, labels, Some(&le_text));
            let _ = writeln!(buf, " {n}");
        }
        if !wrote_inf {
            let _ = write!(buf, "{name}_bucket");
            write_labels(buf, labels, Some("+Inf"));
            let _ = writeln!(buf, " {}", snap.count);
        }
        let _ = write!(buf, "{name}_sum");
        write_labels(buf, labels, None);
        let _ = writeln!(buf, " {}", Number(snap.sum_seconds));
        let _ = write!(buf, "{name}_count");
        write_labels(buf, labels, None);
        let _ = writeln!(buf, " {}", snap.count);
        self.w.maybe_flush();
    }
}

fn write_labels(buf: &mut String, labels: Labels<'_>, le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    buf.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            buf.push(',');
        }
        first = false;
        buf.push_str(k);
        buf.push_str("=\"");
        escape_label_value(buf, v);
        buf.push('"');
    }
    buf.push('}');
}

/// Label values escape backslash, double quote and newline.
fn escape_label_value(buf: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '"' => buf.push_str("\\\""),
            '\n' => buf.push_str("\\n"),
            c => buf.push(c),
        }
    }
}

/// Help text escapes backslash and newline.
fn escape_help(buf: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '\n' => buf.push_str("\\n"),
            c => buf.push(c),
        }
    }
}

/// A sample value as the text format spells it (`+Inf`, `-Inf`, `NaN`, shortest decimal).
struct Number(f64);

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v.is_infinite() {
            f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
        } else {
            write!(f, "{v}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COUNTER: Spec = Spec { name: "t_total", help: "A \\ help\nline.", kind: MetricType::COUNTER, labels: &["a"] };
    const HIST: Spec = Spec { name: "t_seconds", help: "H.", kind: MetricType::HISTOGRAM, labels: &["a"] };

    fn render(f: impl FnOnce(&mut TextWriter<'_>)) -> (String, usize) {
        let mut out = String::new();
        let mut chunks = 0;
        {
            let mut sink = |c: String| {
                chunks += 1;
                out.push_str(&c);
            };
            let mut w = TextWriter::new(&mut sink);
            f(&mut w);
        }
        (out, chunks)
    }

    #[test]
    fn writes_the_text_format_and_escapes() {
        let (text, _) = render(|w| {
            let mut f = w.family(&COUNTER);
            f.value(&[("a", "x\"y\\z\nw")], 3.0);
            f.value(&[], 0.5);
            let mut h = w.family(&HIST);
            h.histogram(&[("a", "b")], &HistogramSnapshot { buckets: vec![(0.1, 1), (f64::INFINITY, 2)], count: 2, sum_seconds: 1.25 });
            let _empty = w.family(&COUNTER);
        });
        let expected = "# HELP t_total A \\\\ help\\nline.\n# TYPE t_total counter\nt_total{a=\"x\\\"y\\\\z\\nw\"} 3\nt_total 0.5\n\
                        # HELP t_seconds H.\n# TYPE t_seconds histogram\n\
                        t_seconds_bucket{a=\"b\",le=\"0.1\"} 1\nt_seconds_bucket{a=\"b\",le=\"+Inf\"} 2\n\
                        t_seconds_sum{a=\"b\"} 1.25\nt_seconds_count{a=\"b\"} 2\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn large_output_is_handed_on_in_bounded_chunks() {
        let (text, chunks) = render(|w| {
            let mut f = w.family(&COUNTER);
            for i in 0..20_000 {
                f.value(&[("a", &i.to_string())], f64::from(i));
            }
        });
        assert!(chunks >= text.len() / (CHUNK + 4096), "{chunks} chunks for {} bytes", text.len());
        assert!(chunks > 1);
        assert_eq!(text.lines().count(), 20_002);
    }
}
