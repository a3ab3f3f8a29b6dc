//! What the routing table says, read at scrape time: per-backend counters (the atomics the
//! data path already keeps in `schedulers::BackendStats` and in the dispatcher's per-backend
//! metrics), per-Service-port endpoint gauges,
//! and frontends per protocol. Everything is keyed by what is in the table now, so a backend
//! that leaves the table leaves the metrics with it.

use std::collections::BTreeMap;
use std::sync::Arc;

use controlplane::{Frontend, RoutingTable, TrafficPolicy, WhenEmpty};
use schedulers::{BackendAddr, BackendStats};

use super::exposition::HistogramSnapshot;
use super::spec;
use super::text::{Family, TextWriter};
use crate::dispatch::telemetry::{BackendMetrics, ConnectFailure, MetricsRegistry};

/// A Service port: namespace, name, port name.
type SvcKey<'a> = (&'a str, &'a str, &'a str);

/// Per (Service port, backend address): its stats, once however many frontends share it.
struct BackendRow<'a> {
    service: SvcKey<'a>,
    addr: BackendAddr,
    stats: &'a Arc<BackendStats>,
    scheduler: &'static str,
    metrics: Option<Arc<BackendMetrics>>,
}

/// Per Service port: what its frontends add up to, and its backends' counters summed.
#[derive(Default)]
struct ServiceRow {
    endpoints: usize,
    local: usize,
    has_local_policy: bool,
    none: bool,
    no_local_internal: Option<bool>,
    no_local_external: Option<bool>,
    connections: u64,
    active: u64,
    bytes_to_backend: u64,
    bytes_from_backend: u64,
    failures: u64,
}

/// Writes the per-backend, per-Service-port and per-protocol families of `table`.
///
/// Per-backend series go only to the `max_backends` busiest backends (most connections; the
/// rest are counted in `tpvs_metrics_backends_omitted`): at about 30 series an endpoint, a
/// large cluster would otherwise export millions. The per-Service-port families cover every
/// backend, summed.
pub(super) fn write(table: &RoutingTable, metrics: Option<&MetricsRegistry>, max_backends: usize, w: &mut TextWriter<'_>) {
    let mut rows: Vec<BackendRow<'_>> = Vec::new();
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
        // A backend only the short-circuit of local traffic reaches is still the Service's.
        let short_circuit = fe.local_origin.iter().flat_map(|lo| lo.scheduler.backends().iter());
        for b in set.iter().chain(short_circuit) {
            rows.push(BackendRow { service: key, addr: b.addr, stats: &b.stats, scheduler: fe.scheduler_kind().as_str(), metrics: None });
        }
    }
    // One row per (Service port, backend), however many frontends of the port reach it.
    rows.sort_unstable_by(|a, b| (a.service, a.addr).cmp(&(b.service, b.addr)));
    rows.dedup_by(|a, b| (a.service, a.addr) == (b.service, b.addr));
    for row in &mut rows {
        row.metrics = metrics.and_then(|m| m.peek(row.addr));
        if let Some(s) = services.get_mut(&row.service) {
            s.connections += row.stats.connections();
            s.active += row.stats.active();
            if let Some(m) = &row.metrics {
                s.bytes_to_backend += m.bytes_to_backend();
                s.bytes_from_backend += m.bytes_from_backend();
                s.failures += ConnectFailure::ALL.iter().map(|why| m.failures(*why)).sum::<u64>();
            }
        }
    }
    let omitted = rows.len().saturating_sub(max_backends);
    if omitted > 0 {
        // The busiest first; ties by the stable (Service, address) order.
        rows.sort_by_key(|r| std::cmp::Reverse(r.stats.connections()));
        rows.truncate(max_backends);
        rows.sort_unstable_by(|a, b| (a.service, a.addr).cmp(&(b.service, b.addr)));
    }
    write_backends(&rows, w);
    w.family(&spec::be_omitted).value(&[], omitted as f64);
    write_services(&services, w);
    let mut fams = w.family(&spec::frontends);
    for proto in ["TCP", "UDP", "SCTP"] {
        fams.value(&[("protocol", proto)], frontends.get(proto).copied().unwrap_or(0) as f64);
    }
}

/// Writes one backend's samples of a family.
type BackendSample<'r, 'f> = dyn Fn(&mut Family<'_, '_>, [(&str, &str); 4], &BackendRow<'r>, &BackendMetrics) + 'f;
/// Writes one Service port's samples of a family.
type ServiceSample<'f> = dyn Fn(&mut Family<'_, '_>, [(&str, &str); 3], &ServiceRow) + 'f;

/// The per-backend families, one family at a time (so nothing but the current chunk is held).
fn write_backends<'r>(rows: &[BackendRow<'r>], w: &mut TextWriter<'_>) {
    // Backends no connection has reached have no data-path metrics: all zero.
    let zero = BackendMetrics::default();
    let addrs: Vec<String> = rows.iter().map(|r| r.addr.to_string()).collect();
    let each = |w: &mut TextWriter<'_>, spec: &'static spec::Spec, f: &BackendSample<'r, '_>| {
        let mut fam = w.family(spec);
        for (row, addr) in rows.iter().zip(&addrs) {
            let (ns, svc, port) = row.service;
            let l = [("namespace", ns), ("service", svc), ("port", port), ("backend", addr.as_str())];
            f(&mut fam, l, row, row.metrics.as_deref().unwrap_or(&zero));
        }
    };
    let now = schedulers::stats::now_nanos();
    each(w, &spec::be_conns, &|f, l, r, _| f.value(&l, r.stats.connections() as f64));
    each(w, &spec::be_active, &|f, l, r, _| f.value(&l, r.stats.active() as f64));
    each(w, &spec::be_closed, &|f, l, r, _| f.value(&l, r.stats.connections().saturating_sub(r.stats.active()) as f64));
    each(w, &spec::be_bytes, &|f, l, _, m| {
        for (dir, v) in [("to_backend", m.bytes_to_backend()), ("from_backend", m.bytes_from_backend())] {
            f.value(&[l[0], l[1], l[2], l[3], ("direction", dir)], v as f64);
        }
    });
    each(w, &spec::be_picks, &|f, l, r, _| f.value(&[l[0], l[1], l[2], l[3], ("scheduler", r.scheduler)], r.stats.picks() as f64));
    each(w, &spec::be_failures, &|f, l, _, m| {
        for why in ConnectFailure::ALL {
            f.value(&[l[0], l[1], l[2], l[3], ("reason", why.as_str())], m.failures(why) as f64);
        }
    });
    each(w, &spec::be_retries, &|f, l, _, m| f.value(&l, m.retries() as f64));
    each(w, &spec::be_ejections, &|f, l, _, m| f.value(&l, m.outlier.ejections() as f64));
    each(w, &spec::be_ejected, &|f, l, _, m| f.value(&l, if m.outlier.is_ejected(now) { 1.0 } else { 0.0 }));
    each(w, &spec::be_latency, &|f, l, _, m| f.histogram(&l, &HistogramSnapshot::of(m.connect_latency())));
}

/// The per-Service-port families and kube-proxy's no-local-endpoints totals.
fn write_services(services: &BTreeMap<SvcKey<'_>, ServiceRow>, w: &mut TextWriter<'_>) {
    let each = |w: &mut TextWriter<'_>, spec: &'static spec::Spec, f: &ServiceSample<'_>| {
        let mut fam = w.family(spec);
        for ((ns, svc, port), row) in services {
            f(&mut fam, [("namespace", ns), ("service", svc), ("port", port)], row);
        }
    };
    each(w, &spec::svc_backends, &|f, l, r| f.value(&l, r.endpoints as f64));
    each(w, &spec::svc_local, &|f, l, r| {
        if r.has_local_policy {
            f.value(&l, r.local as f64);
        }
    });
    each(w, &spec::svc_none, &|f, l, r| f.value(&l, f64::from(u8::from(r.none))));
    each(w, &spec::svc_no_local, &|f, l, r| {
        for (policy, flag) in [("internal", r.no_local_internal), ("external", r.no_local_external)] {
            if let Some(flag) = flag {
                f.value(&[l[0], l[1], l[2], ("traffic_policy", policy)], f64::from(u8::from(flag)));
            }
        }
    });
    each(w, &spec::svc_conns, &|f, l, r| f.value(&l, r.connections as f64));
    each(w, &spec::svc_active, &|f, l, r| f.value(&l, r.active as f64));
    each(w, &spec::svc_bytes, &|f, l, r| {
        for (dir, v) in [("to_backend", r.bytes_to_backend), ("from_backend", r.bytes_from_backend)] {
            f.value(&[l[0], l[1], l[2], ("direction", dir)], v as f64);
        }
    });
    each(w, &spec::svc_failures, &|f, l, r| f.value(&l, r.failures as f64));
    let (mut internal, mut external) = (0usize, 0usize);
    for row in services.values() {
        internal += usize::from(row.no_local_internal == Some(true));
        external += usize::from(row.no_local_external == Some(true));
    }
    let mut kp = w.family(&spec::kp_no_local);
    kp.value(&[("traffic_policy", "internal")], internal as f64);
    kp.value(&[("traffic_policy", "external")], external as f64);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use controlplane::{CompileOptions, ManifestSource, Publisher};

    use super::*;

    /// `yaml` compiled as the daemon would, for node `node`.
    fn compiled(yaml: &str, node: Option<&str>) -> Arc<RoutingTable> {
        let dir = std::env::temp_dir().join(format!("tpvs-metrics-table-{}-{}", std::process::id(), yaml.len()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("m.yaml");
        std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("{e}"));
        let publisher = Arc::new(Publisher::new());
        let opts = CompileOptions { node_name: node.map(str::to_string), ..CompileOptions::default() };
        let mut source = ManifestSource::new(path, opts, Arc::clone(&publisher));
        let report = source.reload();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let _ = std::fs::remove_dir_all(&dir);
        publisher.current()
    }

    /// One Service with five endpoints.
    fn table() -> Arc<RoutingTable> {
        let endpoints: String = (1..=5).map(|i| format!("  - addresses: [10.1.0.{i}]\n    conditions: {{ready: true}}\n")).collect();
        compiled(
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
                 spec:\n  clusterIP: 10.96.0.10\n  ports: [{{name: http, port: 80, protocol: TCP}}]\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{endpoints}"
            ),
            None,
        )
    }

    #[test]
    fn a_backend_only_the_short_circuit_reaches_has_its_series() {
        // Local for both policies, its only endpoint on another node: no frontend's own set
        // holds it, the NodePort's short-circuit of local traffic does.
        let table = compiled(
            "apiVersion: v1\nkind: Service\nmetadata: {name: far, namespace: default}\n\
             spec:\n  type: NodePort\n  clusterIP: 10.96.0.11\n  externalTrafficPolicy: Local\n  internalTrafficPolicy: Local\n\
             \x20 ports: [{name: http, port: 80, protocol: TCP, nodePort: 30111}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: far-1, namespace: default, labels: {kubernetes.io/service-name: far}}\n\
             addressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\n\
             endpoints:\n  - addresses: [10.1.0.9]\n    nodeName: node-b\n",
            Some("node-a"),
        );
        assert!(table.frontends().all(|f| f.backends().is_empty()), "no local endpoint");
        let lo = table.frontends().find_map(|f| f.local_origin.as_ref()).unwrap_or_else(|| panic!("no short-circuit set"));
        let _open = lo.scheduler.backends().iter().map(|b| b.stats.open()).collect::<Vec<_>>();
        let mut text = String::new();
        {
            let mut sink = |c: String| text.push_str(&c);
            let mut w = TextWriter::new(&mut sink);
            write(&table, None, 10, &mut w);
        }
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("tpvs_backend_connections_total{")).collect();
        assert!(series.iter().any(|l| l.contains("10.1.0.9:8080")), "{text}");
    }

    #[test]
    fn only_the_busiest_backends_get_series_and_services_sum_them_all() {
        let table = table();
        let fe = table.frontends().next().unwrap_or_else(|| panic!("no frontend"));
        // Backend i has had i connections; two are open on .5.
        let mut guards = Vec::new();
        for (i, b) in fe.backends().iter().enumerate() {
            for _ in 0..=i {
                guards.push(b.stats.open());
            }
        }
        guards.truncate(guards.len() - 3);
        let mut text = String::new();
        {
            let mut sink = |c: String| text.push_str(&c);
            let mut w = TextWriter::new(&mut sink);
            write(&table, None, 2, &mut w);
        }
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("tpvs_backend_connections_total{")).collect();
        assert_eq!(series.len(), 2, "{text}");
        assert!(series.iter().any(|l| l.contains("10.1.0.5:8080")) && series.iter().any(|l| l.contains("10.1.0.4:8080")), "{series:?}");
        assert!(text.contains("\ntpvs_metrics_backends_omitted 3\n"), "{text}");
        let svc = "{namespace=\"default\",service=\"web\",port=\"http\"}";
        assert!(text.contains(&format!("\ntpvs_service_connections_total{svc} 15\n")), "{text}");
        assert!(text.contains(&format!("\ntpvs_service_connections_active{svc} 12\n")), "{text}");
        assert!(text.contains(&format!("\ntpvs_service_endpoints{svc} 5\n")), "{text}");
    }
}
