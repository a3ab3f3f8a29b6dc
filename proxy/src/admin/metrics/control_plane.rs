//! The control plane's counters, read at scrape time: manifest reloads, Kubernetes watch
//! events and errors, rejected input (objects, and frontends the live table refuses), and
//! network-programming latency.

use std::time::Duration;

use prometheus::proto::MetricFamily;
use super::exposition::HistogramSnapshot;

use super::exposition::Fam;
use super::spec;
use crate::admin::Sources;

/// Buckets, count and sum of histograms merged across sources.
type Merged = (Vec<(f64, u64)>, u64, Duration);

/// Appends the sources' families (only those of the source this node runs).
pub(super) fn collect(sources: &Sources, out: &mut Vec<MetricFamily>) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut errors = Fam::new(&spec::config_errors);
    // Both sources measure programming latency on the same buckets; a node runs one.
    let mut programming: Option<Merged> = None;
    let mut merge = |h: &controlplane::kube_source::DurationHistogram| {
        let (b, c, s) = (h.buckets(), h.count(), h.sum());
        programming = Some(match programming.take() {
            None => (b, c, s),
            Some((pb, pc, ps)) => (pb.iter().zip(&b).map(|((le, x), (_, y))| (*le, x + y)).collect(), pc + c, ps + s),
        });
    };
    if let Some(m) = &sources.manifests {
        out.push(Fam::single(&spec::reloads, m.reloads_total.load(Relaxed) as f64));
        out.push(Fam::single(&spec::manifest_ok, m.last_reload_ok.load(Relaxed) as f64));
        errors.value(&[("source", "manifests")], m.errors_total.load(Relaxed) as f64);
        merge(&m.network_programming);
    }
    if let Some(k) = &sources.kube {
        out.push(Fam::single(&spec::kube_events, k.events_total.load(Relaxed) as f64));
        out.push(Fam::single(&spec::kube_watch_errors, k.watch_errors_total.load(Relaxed) as f64));
        errors.value(&[("source", "kubernetes")], k.object_errors_total.load(Relaxed) as f64);
        merge(&k.network_programming);
    }
    if !errors.mf.get_metric().is_empty() {
        out.push(errors.mf);
    }
    // A gauge of what is refused now (not a count of events): it falls back to zero when the
    // input is fixed, so an alert on it clears by itself.
    let table = sources.publisher.current();
    let mut refused = Fam::new(&spec::refused_frontends);
    // Every reason, zero included, so a dashboard sees the series before the first refusal.
    for reason in controlplane::Refusal::REASONS {
        let n = table.refused().iter().filter(|r| r.reason() == reason).count();
        refused.value(&[("reason", reason)], n as f64);
    }
    out.push(refused.mf);
    if let Some((buckets, count, sum)) = programming {
        let mut f = Fam::new(&spec::kp_programming);
        f.histogram(&[], &HistogramSnapshot { buckets, count, sum_seconds: sum.as_secs_f64() });
        out.push(f.mf);
    }
}
