//! Building metric families by hand for the text exposition format: the collectors read
//! counters that already exist (backend stats, data-path atomics, source stats), so they
//! describe values rather than owning `prometheus` metric objects.

use prometheus::Histogram;
use prometheus::proto::{self, MetricFamily, MetricType};

use super::spec::Spec;

/// A histogram as the exposition writes it: `(upper bound in seconds, cumulative count)`
/// ending with `+Inf`, the count and the sum.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// The buckets of a `prometheus` histogram kept outside any registry.
    pub fn of(h: &Histogram) -> HistogramSnapshot {
        use prometheus::core::Metric as _;
        let m = h.metric();
        let p = m.get_histogram();
        let count = p.get_sample_count();
        let mut buckets: Vec<(f64, u64)> = p.get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())).collect();
        buckets.push((f64::INFINITY, count));
        HistogramSnapshot { buckets, count, sum_seconds: p.get_sample_sum() }
    }
}

/// Label pairs of one sample, in exposition order.
pub(super) type Labels<'a> = &'a [(&'a str, &'a str)];

/// One metric family under construction.
pub(super) struct Fam {
    pub(super) mf: MetricFamily,
}

impl Fam {
    pub(super) fn new(spec: &Spec) -> Fam {
        let mut mf = MetricFamily::default();
        mf.set_name(spec.name.to_string());
        mf.set_help(spec.help.to_string());
        mf.set_field_type(spec.kind);
        Fam { mf }
    }

    fn metric(labels: Labels<'_>) -> proto::Metric {
        let mut m = proto::Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(k, v)| {
                    let mut l = proto::LabelPair::default();
                    l.set_name((*k).to_string());
                    l.set_value((*v).to_string());
                    l
                })
                .collect(),
        );
        m
    }

    /// A family of one unlabelled sample.
    pub(super) fn single(spec: &Spec, v: f64) -> MetricFamily {
        let mut f = Fam::new(spec);
        f.value(&[], v);
        f.mf
    }

    /// One counter or gauge sample, as the family's type says.
    pub(super) fn value(&mut self, labels: Labels<'_>, v: f64) {
        let mut m = Self::metric(labels);
        match self.mf.get_field_type() {
            MetricType::COUNTER => {
                let mut c = proto::Counter::default();
                c.set_value(v);
                m.set_counter(c);
            }
            _ => {
                let mut g = proto::Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
            }
        }
        self.mf.mut_metric().push(m);
    }

    pub(super) fn histogram(&mut self, labels: Labels<'_>, snap: &HistogramSnapshot) {
        let mut m = Self::metric(labels);
        let mut h = proto::Histogram::default();
        h.set_sample_count(snap.count);
        h.set_sample_sum(snap.sum_seconds);
        h.set_bucket(
            snap.buckets
                .iter()
                // The text encoder writes `+Inf` from the count itself.
                .filter(|(le, _)| le.is_finite())
                .map(|(le, n)| {
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(*le);
                    b.set_cumulative_count(*n);
                    b
                })
                .collect(),
        );
        m.set_histogram(h);
        self.mf.mut_metric().push(m);
    }
}
