//! What the routing table says, read at scrape time: per-backend counters (the atomics the
//! data path already keeps in `schedulers::BackendStats` and in the dispatcher's per-backend
//! metrics), per-Service-port endpoint gauges,
//! and frontends per protocol. Everything is keyed by what is in the table now, so a backend
//! that leaves the table leaves the metrics with it.

use std::collections::BTreeMap;
use std::sync::Arc;

use controlplane::{Frontend, RoutingTable, TrafficPolicy, WhenEmpty};
use prometheus::proto::MetricFamily;
use schedulers::{BackendAddr, BackendStats};

use super::exposition::{Fam, HistogramSnapshot};
use super::spec;
use crate::dispatch::telemetry::{ConnectFailure, MetricsRegistry};

/// A Service port: namespace, name, port name.
type SvcKey<'a> = (&'a str, &'a str, &'a str);

/// Per (Service port, backend address): its stats, once however many frontends share it.
struct BackendRow<'a> {
    addr: BackendAddr,
    stats: &'a Arc<BackendStats>,
    scheduler: &'static str,
}

/// Per Service port: what its frontends add up to.
#[derive(Default)]
struct ServiceRow {
    endpoints: usize,
    local: usize,
    has_local_policy: bool,
    none: bool,
    no_local_internal: Option<bool>,
    no_local_external: Option<bool>,
}

/// Appends the per-backend, per-Service-port and per-protocol families of `table`.
pub(super) fn collect(table: &RoutingTable, metrics: Option<&MetricsRegistry>, out: &mut Vec<MetricFamily>) {
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
    let mut ejections = Fam::new(&spec::be_ejections);
    let mut ejected = Fam::new(&spec::be_ejected);
    let now = schedulers::stats::now_nanos();
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
        ejections.value(&l, m.outlier.ejections() as f64);
        ejected.value(&l, if m.outlier.is_ejected(now) { 1.0 } else { 0.0 });
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
    for f in [conns, active, closed, bytes, picks, failures, retries, ejections, ejected, latency, endpoints, local, none, no_local, kp, fams] {
        // An empty family (no backend yet) is left out rather than exposed without samples.
        if !f.mf.get_metric().is_empty() {
            out.push(f.mf);
        }
    }
}
