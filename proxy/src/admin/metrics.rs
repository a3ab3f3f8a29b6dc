//! Prometheus metrics, read at scrape time.
//!
//! Nothing on the data path knows about Prometheus: connections update the per-backend atomics
//! they already own (`schedulers::BackendStats`), and the [`TableCollector`] walks the live
//! routing table when `/metrics` is scraped. So there is no per-connection label lookup, and a
//! backend that leaves the table leaves the metrics with it.
//!
//! # Names
//!
//! kube-proxy's names where they mean the same thing (`kubeproxy_sync_proxy_rules_*`,
//! `kubeproxy_network_programming_duration_seconds`), `tpvs_*` for the rest.
//!
//! # Label cardinality
//!
//! Bounded by the routing table, never by traffic: no client address, no connection id.
//! - per backend (`namespace`, `service`, `port`, `backend`): one series set per endpoint of
//!   each Service port proxied by this node; `scheduler`, `reason`, `direction` multiply that
//!   by at most 1, 4 and 2. A backend address shared by two Services (the same pod port
//!   selected twice) shares its counters, and is reported under each Service.
//! - per Service port (`namespace`, `service`, `port`, `traffic_policy`): a few series each.
//! - everything else has fixed labels.
//!
//! Each endpoint costs 28 series (17 of them the connect histogram): on a cluster with 10 000
//! endpoints a node exports about 280 000; `deploy/prometheus/README.md` shows how to drop the
//! per-backend histogram at scrape time when that is too many.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use controlplane::{Frontend, Publisher, RoutingTable, TrafficPolicy, WhenEmpty};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder as _, Histogram, HistogramOpts, IntGauge, Opts, Registry, TextEncoder};
use schedulers::BackendStats;

use crate::dispatch::telemetry::{ConnectFailure, MetricsRegistry};
use tracing::debug;

use super::Sources;

/// Buckets of the sync and publish histograms, in seconds (kube-proxy's sync buckets:
/// exponential from 1 ms).
fn sync_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 15).unwrap_or_else(|_| vec![0.001, 0.01, 0.1, 1.0, 10.0])
}

/// Metrics that are observed as events happen (once per table publish), not read at scrape.
pub struct PublishMetrics {
    pub sync_duration: Histogram,
    pub sync_last_timestamp: prometheus::Gauge,
    pub publish_duration: Histogram,
    pub last_publish_timestamp: prometheus::Gauge,
    pub generation: IntGauge,
}

impl PublishMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = PublishMetrics {
            sync_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "kubeproxy_sync_proxy_rules_duration_seconds",
                    "Time to apply a routing table's rules to netfilter (one nft transaction).",
                )
                .buckets(sync_buckets()),
            )?,
            sync_last_timestamp: prometheus::Gauge::with_opts(Opts::new(
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time the rules were successfully brought in line with the table (Unix seconds).",
            ))?,
            publish_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "tpvs_table_publish_duration_seconds",
                    "Time from a source change to the compiled table being stored (before the rules sync).",
                )
                .buckets(sync_buckets()),
            )?,
            last_publish_timestamp: prometheus::Gauge::with_opts(Opts::new(
                "tpvs_table_last_publish_timestamp_seconds",
                "When the last routing table was published (Unix seconds).",
            ))?,
            generation: IntGauge::with_opts(Opts::new("tpvs_table_generation", "Generation of the live routing table."))?,
        };
        registry.register(Box::new(m.sync_duration.clone()))?;
        registry.register(Box::new(m.sync_last_timestamp.clone()))?;
        registry.register(Box::new(m.publish_duration.clone()))?;
        registry.register(Box::new(m.last_publish_timestamp.clone()))?;
        registry.register(Box::new(m.generation.clone()))?;
        Ok(m)
    }
}

/// The registry behind `/metrics`.
pub struct Metrics {
    registry: Registry,
    pub publish: PublishMetrics,
}

impl Metrics {
    pub fn new(sources: Sources) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let publish = PublishMetrics::new(&registry)?;
        registry.register(Box::new(TableCollector::new(sources)?))?;
        Ok(Metrics { registry, publish })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut out = Vec::with_capacity(64 * 1024);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            debug!(error = %e, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// One metric family under construction.
struct Fam {
    mf: MetricFamily,
}

type Labels<'a> = &'a [(&'a str, &'a str)];

impl Fam {
    fn new(spec: &Spec) -> Fam {
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

    fn value(&mut self, labels: Labels<'_>, v: f64) {
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

    fn histogram(&mut self, labels: Labels<'_>, snap: &HistogramSnapshot) {
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

/// Name, help, type and label names of a family the collector emits.
struct Spec {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const C: MetricType = MetricType::COUNTER;
const G: MetricType = MetricType::GAUGE;
const H: MetricType = MetricType::HISTOGRAM;
const SVC: &[&str] = &["namespace", "service", "port"];
const BE: &[&str] = &["namespace", "service", "port", "backend"];

macro_rules! specs {
    ($($id:ident = $name:literal, $kind:ident, $labels:expr, $help:literal;)*) => {
        #[allow(non_upper_case_globals)]
        mod spec {
            use super::*;
            $(pub const $id: Spec = Spec { name: $name, help: $help, kind: $kind, labels: $labels };)*
            pub const ALL: &[&Spec] = &[$(&$id),*];
        }
    };
}

specs! {
    be_conns = "tpvs_backend_connections_total", C, BE,
        "Connections opened to the backend (counted from the connect attempt, like IPVS).";
    be_active = "tpvs_backend_connections_active", G, BE, "Connections open to the backend now.";
    be_closed = "tpvs_backend_connections_closed_total", C, BE, "Connections to the backend that have ended.";
    be_bytes = "tpvs_backend_bytes_total", C, &["namespace", "service", "port", "backend", "direction"],
        "Bytes relayed, by direction (to_backend, from_backend).";
    be_picks = "tpvs_backend_picks_total", C, &["namespace", "service", "port", "backend", "scheduler"],
        "Times the Service's scheduler chose the backend.";
    be_failures = "tpvs_backend_connect_failures_total", C, &["namespace", "service", "port", "backend", "reason"],
        "Failed connect attempts to the backend, by reason (refused, timeout, unreachable, other).";
    be_retries = "tpvs_backend_connect_retries_total", C, BE,
        "Connect attempts to the backend that retried a connection another backend had failed.";
    be_latency = "tpvs_backend_connect_duration_seconds", H, BE,
        "Time to establish the upstream TCP connection to the backend.";
    svc_backends = "tpvs_service_endpoints", G, SVC,
        "Endpoints the Service port's frontends may pick (most over its frontends).";
    svc_local = "tpvs_service_local_endpoints", G, SVC, "Ready endpoints of the Service port on this node.";
    svc_none = "tpvs_service_no_endpoints", G, SVC,
        "1 when a frontend of the Service port has no endpoint anywhere (connections are refused).";
    svc_no_local = "tpvs_service_no_local_endpoints", G, &["namespace", "service", "port", "traffic_policy"],
        "1 when a Local-policy frontend of the Service port has no endpoint on this node (traffic is dropped).";
    kp_no_local = "kubeproxy_sync_proxy_rules_no_local_endpoints_total", G, &["traffic_policy"],
        "Service ports with a Local traffic policy and no local endpoints (internal or external policy).";
    kp_programming = "kubeproxy_network_programming_duration_seconds", H, &[],
        "From a change of the Service's endpoints (EndpointSlice trigger time, or the manifest's modification) to its rules being live.";
    frontends = "tpvs_table_frontends", G, &["protocol"], "Frontends in the live routing table.";
    accepted = "tpvs_connections_accepted_total", C, &[], "TCP connections accepted by the transparent listeners.";
    open = "tpvs_connections_open", G, &[], "TCP connections open through the proxy now.";
    rejected = "tpvs_connections_rejected_total", C, &["reason"],
        "Accepted connections reset by the proxy (no_frontend, connect_failed: every candidate failed, over_limit).";
    idle = "tpvs_connections_idle_closed_total", C, &[], "Connections reset after the idle timeout.";
    refused = "tpvs_refused_packets_total", C, &[],
        "Packets refused by the rules because their Service has no endpoints (reset / ICMP unreachable).";
    dropped = "tpvs_dropped_packets_total", C, &[],
        "Packets dropped by the rules because their Local-policy Service has no endpoint on this node.";
    syncs = "tpvs_netfilter_syncs_total", C, &[], "nft transactions run to follow the table.";
    sync_failures = "tpvs_netfilter_sync_failures_total", C, &[],
        "nft transactions that failed (the previous rules stayed in force).";
    reloads = "tpvs_manifest_reloads_total", C, &[], "Reloads of the manifests source.";
    config_errors = "tpvs_config_errors_total", C, &["source"],
        "Rejected input: manifest errors, or Kubernetes objects the model refused.";
    manifest_ok = "tpvs_manifest_last_reload_success", G, &[], "1 when the last manifests reload had no error.";
    kube_events = "tpvs_kube_events_total", C, &[], "Watch events received from the Kubernetes API.";
    kube_watch_errors = "tpvs_kube_watch_errors_total", C, &[], "List/watch failures (each followed by a retry).";
    udp_active = "tpvs_udp_flows_active", G, &[], "UDP flows open now.";
    udp_created = "tpvs_udp_flows_created_total", C, &[], "UDP flows created.";
    udp_evicted = "tpvs_udp_flows_evicted_total", C, &["reason"],
        "UDP flows closed: idle (their timeout passed) or table_change (backend removed or drained).";
    udp_datagrams = "tpvs_udp_datagrams_total", C, &["direction"],
        "UDP datagrams relayed (from_clients, to_backends, from_backends, to_clients).";
    udp_drops = "tpvs_udp_drops_total", C, &["reason"], "UDP datagrams dropped, by reason.";
}

/// Reads every live counter when scraped.
pub struct TableCollector {
    sources: Sources,
    descs: Vec<Desc>,
    /// Last kernel refusal counts read, reported again when a read fails (counters must not
    /// go backwards because `nft` was briefly unavailable).
    last_verdicts: Mutex<crate::netfilter::VerdictCounts>,
}

impl TableCollector {
    pub fn new(sources: Sources) -> prometheus::Result<Self> {
        let descs = spec::ALL
            .iter()
            .map(|s| Desc::new(s.name.to_string(), s.help.to_string(), s.labels.iter().map(|l| l.to_string()).collect(), HashMap::new()))
            .collect::<prometheus::Result<Vec<_>>>()?;
        Ok(TableCollector { sources, descs, last_verdicts: Mutex::default() })
    }
}

/// Per (Service port, backend address): its stats, once however many frontends share it.
struct BackendRow<'a> {
    addr: schedulers::BackendAddr,
    stats: &'a Arc<BackendStats>,
    scheduler: &'static str,
}

#[derive(Default)]
struct ServiceRow {
    endpoints: usize,
    local: usize,
    has_local_policy: bool,
    none: bool,
    no_local_internal: Option<bool>,
    no_local_external: Option<bool>,
}

impl Collector for TableCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let table = self.sources.publisher.current();
        let mut out = Vec::with_capacity(spec::ALL.len());
        let metrics = self.sources.forward.as_ref().map(|f| f.dispatch.metrics().as_ref());
        collect_table(&table, metrics, &mut out);
        self.collect_data_path(&mut out);
        self.collect_sources(&mut out);
        out
    }
}

type SvcKey<'a> = (&'a str, &'a str, &'a str);

/// Buckets, count and sum of histograms merged across sources.
type Merged = (Vec<(f64, u64)>, u64, Duration);

fn collect_table(table: &RoutingTable, metrics: Option<&MetricsRegistry>, out: &mut Vec<MetricFamily>) {
    let mut backends: BTreeMap<(SvcKey<'_>, String), BackendRow<'_>> = BTreeMap::new();
    let mut services: BTreeMap<SvcKey<'_>, ServiceRow> = BTreeMap::new();
    let mut frontends: BTreeMap<&'static str, usize> = BTreeMap::new();
    for fe in table.frontends() {
        let fe: &Frontend = fe;
        *frontends.entry(fe.key.proto.as_str()).or_default() += 1;
        let key: SvcKey<'_> = (&fe.service.namespace, &fe.service.name, &fe.service.port);
        let set = fe.backends();
        let pickable = set.iter().filter(|b| b.is_pickable()).count();
        let row = services.entry(key).or_default();
        row.endpoints = row.endpoints.max(pickable);
        row.local = row.local.max(fe.local_endpoints);
        if pickable == 0 && fe.when_empty == WhenEmpty::Reject {
            row.none = true;
        }
        if fe.policy == TrafficPolicy::Local {
            row.has_local_policy = true;
            let slot = if fe.kind.is_external() { &mut row.no_local_external } else { &mut row.no_local_internal };
            *slot = Some(slot.unwrap_or(false) || pickable == 0);
        }
        for b in set.iter() {
            backends
                .entry((key, b.addr.to_string()))
                .or_insert(BackendRow { addr: b.addr, stats: &b.stats, scheduler: fe.scheduler_kind().as_str() });
        }
    }

    let mut conns = Fam::new(&spec::be_conns);
    let mut active = Fam::new(&spec::be_active);
    let mut closed = Fam::new(&spec::be_closed);
    let mut bytes = Fam::new(&spec::be_bytes);
    let mut picks = Fam::new(&spec::be_picks);
    let mut failures = Fam::new(&spec::be_failures);
    let mut retries = Fam::new(&spec::be_retries);
    let mut latency = Fam::new(&spec::be_latency);
    for (((ns, svc, port), addr), row) in &backends {
        let l: [(&str, &str); 4] = [("namespace", ns), ("service", svc), ("port", port), ("backend", addr)];
        let s = row.stats;
        let (opened, now_active) = (s.connections(), s.active());
        conns.value(&l, opened as f64);
        active.value(&l, now_active as f64);
        closed.value(&l, opened.saturating_sub(now_active) as f64);
        picks.value(&[l[0], l[1], l[2], l[3], ("scheduler", row.scheduler)], s.picks() as f64);
        // A backend no connection has reached yet has no data-path metrics: all zero.
        let m = metrics.and_then(|m| m.peek(row.addr)).unwrap_or_default();
        for (dir, v) in [("to_backend", m.bytes_to_backend()), ("from_backend", m.bytes_from_backend())] {
            bytes.value(&[l[0], l[1], l[2], l[3], ("direction", dir)], v as f64);
        }
        for why in ConnectFailure::ALL {
            failures.value(&[l[0], l[1], l[2], l[3], ("reason", why.as_str())], m.failures(why) as f64);
        }
        retries.value(&l, m.retries() as f64);
        latency.histogram(&l, &HistogramSnapshot::of(m.connect_latency()));
    }

    let mut endpoints = Fam::new(&spec::svc_backends);
    let mut local = Fam::new(&spec::svc_local);
    let mut none = Fam::new(&spec::svc_none);
    let mut no_local = Fam::new(&spec::svc_no_local);
    let (mut kp_internal, mut kp_external) = (0usize, 0usize);
    for ((ns, svc, port), row) in &services {
        let l: [(&str, &str); 3] = [("namespace", ns), ("service", svc), ("port", port)];
        endpoints.value(&l, row.endpoints as f64);
        if row.has_local_policy {
            local.value(&l, row.local as f64);
        }
        none.value(&l, f64::from(u8::from(row.none)));
        for (policy, flag, total) in
            [("internal", row.no_local_internal, &mut kp_internal), ("external", row.no_local_external, &mut kp_external)]
        {
            if let Some(f) = flag {
                no_local.value(&[l[0], l[1], l[2], ("traffic_policy", policy)], f64::from(u8::from(f)));
                *total += usize::from(f);
            }
        }
    }
    let mut kp = Fam::new(&spec::kp_no_local);
    kp.value(&[("traffic_policy", "internal")], kp_internal as f64);
    kp.value(&[("traffic_policy", "external")], kp_external as f64);
    let mut fams = Fam::new(&spec::frontends);
    for proto in ["TCP", "UDP", "SCTP"] {
        fams.value(&[("protocol", proto)], frontends.get(proto).copied().unwrap_or(0) as f64);
    }
    for f in [conns, active, closed, bytes, picks, failures, retries, latency, endpoints, local, none, no_local, kp, fams] {
        // An empty family (no backend yet) is left out rather than exposed without samples.
        if !f.mf.get_metric().is_empty() {
            out.push(f.mf);
        }
    }
}

impl TableCollector {
    fn collect_data_path(&self, out: &mut Vec<MetricFamily>) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(fwd) = &self.sources.forward {
            let st = &fwd.stats;
            let mut f = Fam::new(&spec::accepted);
            f.value(&[], st.accepted.load(Relaxed) as f64);
            out.push(f.mf);
            let mut f = Fam::new(&spec::open);
            f.value(&[], fwd.open_connections() as f64);
            out.push(f.mf);
            let mut f = Fam::new(&spec::rejected);
            for (reason, c) in [("no_frontend", &st.no_frontend), ("connect_failed", &st.connect_failed), ("over_limit", &st.over_limit)] {
                f.value(&[("reason", reason)], c.load(Relaxed) as f64);
            }
            out.push(f.mf);
            let mut f = Fam::new(&spec::idle);
            f.value(&[], st.idle_closed.load(Relaxed) as f64);
            out.push(f.mf);
        }
        if let Some(ic) = &self.sources.interception {
            let counts = {
                let mut last = self.last_verdicts.lock().unwrap_or_else(|p| p.into_inner());
                match ic.verdict_counts() {
                    Ok(c) => *last = c,
                    Err(e) => debug!(error = %e, "reading the rules' counters"),
                }
                *last
            };
            for (spec, v) in [(&spec::refused, counts.refused), (&spec::dropped, counts.dropped)] {
                let mut f = Fam::new(spec);
                f.value(&[], v as f64);
                out.push(f.mf);
            }
            let s = ic.stats();
            for (spec, v) in [(&spec::syncs, s.syncs), (&spec::sync_failures, s.failures)] {
                let mut f = Fam::new(spec);
                f.value(&[], v as f64);
                out.push(f.mf);
            }
        }
        // Zeros when the UDP data path is off, so dashboards and alerts see zeros rather
        // than "no data".
        let u = self.sources.udp.as_ref().map(|u| u.snapshot()).unwrap_or_default();
        let mut f = Fam::new(&spec::udp_active);
        f.value(&[], u.flows_active as f64);
        out.push(f.mf);
        let mut f = Fam::new(&spec::udp_created);
        f.value(&[], u.flows_created as f64);
        out.push(f.mf);
        let mut f = Fam::new(&spec::udp_evicted);
        f.value(&[("reason", "idle")], u.flows_expired as f64);
        f.value(&[("reason", "table_change")], u.flows_evicted as f64);
        out.push(f.mf);
        let mut f = Fam::new(&spec::udp_datagrams);
        for (dir, v) in [
            ("from_clients", u.datagrams_from_clients),
            ("to_backends", u.datagrams_to_backends),
            ("from_backends", u.datagrams_from_backends),
            ("to_clients", u.datagrams_to_clients),
        ] {
            f.value(&[("direction", dir)], v as f64);
        }
        out.push(f.mf);
        let mut f = Fam::new(&spec::udp_drops);
        for (reason, v) in [
            ("no_frontend", u.drop_no_frontend),
            ("no_backend", u.drop_no_backend),
            ("max_flows", u.drop_max_flows),
            ("socket", u.drop_socket),
            ("backend_refused", u.drop_backend_refused),
            ("send_to_backend", u.drop_send_to_backend),
            ("send_to_client", u.drop_send_to_client),
            ("malformed", u.drop_malformed),
        ] {
            f.value(&[("reason", reason)], v as f64);
        }
        out.push(f.mf);
    }

    fn collect_sources(&self, out: &mut Vec<MetricFamily>) {
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
        if let Some(m) = &self.sources.manifests {
            let mut f = Fam::new(&spec::reloads);
            f.value(&[], m.reloads_total.load(Relaxed) as f64);
            out.push(f.mf);
            let mut f = Fam::new(&spec::manifest_ok);
            f.value(&[], m.last_reload_ok.load(Relaxed) as f64);
            out.push(f.mf);
            errors.value(&[("source", "manifests")], m.errors_total.load(Relaxed) as f64);
            merge(&m.network_programming);
        }
        if let Some(k) = &self.sources.kube {
            let mut f = Fam::new(&spec::kube_events);
            f.value(&[], k.events_total.load(Relaxed) as f64);
            out.push(f.mf);
            let mut f = Fam::new(&spec::kube_watch_errors);
            f.value(&[], k.watch_errors_total.load(Relaxed) as f64);
            out.push(f.mf);
            errors.value(&[("source", "kubernetes")], k.object_errors_total.load(Relaxed) as f64);
            merge(&k.network_programming);
        }
        if !errors.mf.get_metric().is_empty() {
            out.push(errors.mf);
        }
        if let Some((buckets, count, sum)) = programming {
            let mut f = Fam::new(&spec::kp_programming);
            f.histogram(&[], &HistogramSnapshot { buckets, count, sum_seconds: sum.as_secs_f64() });
            out.push(f.mf);
        }
    }
}

/// Called after every publish (after the netfilter listener): records the sync and publish
/// metrics and moves the proxy health along. Returns whether the rules are in line.
pub fn after_publish(
    m: &PublishMetrics,
    publisher: &Publisher,
    table: &RoutingTable,
    sync: Option<(crate::netfilter::SyncStats, crate::netfilter::SyncStats)>,
) -> bool {
    m.generation.set(i64::try_from(table.generation).unwrap_or(i64::MAX));
    let now = SystemTime::now();
    m.last_publish_timestamp.set(unix_seconds(now));
    if let Some((_, took)) = publisher.last_publish() {
        m.publish_duration.observe(took.as_secs_f64());
    }
    let Some((before, after)) = sync else { return true };
    if after.syncs > before.syncs
        && let Some(d) = after.last_duration
    {
        m.sync_duration.observe(d.as_secs_f64());
    }
    let ok = after.failures == before.failures;
    if ok {
        m.sync_last_timestamp.set(unix_seconds(now));
    }
    ok
}
/// A histogram as the exposition writes it: `(upper bound in seconds, cumulative count)`
/// ending with `+Inf`, the count and the sum.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
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

