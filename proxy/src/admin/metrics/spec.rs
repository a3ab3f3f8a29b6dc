//! Every family the scrape-time collectors emit: name, help, type and label names, in one
//! table so the names (an interface: dashboards and alerts use them) are reviewed in one place.
//! The event-observed families are registered in `publish`.

use prometheus::proto::MetricType;

/// Name, help, type and label names of a family the collector emits.
pub(super) struct Spec {
    pub(super) name: &'static str,
    pub(super) help: &'static str,
    pub(super) kind: MetricType,
    pub(super) labels: &'static [&'static str],
}

const C: MetricType = MetricType::COUNTER;
const G: MetricType = MetricType::GAUGE;
const H: MetricType = MetricType::HISTOGRAM;
const SVC: &[&str] = &["namespace", "service", "port"];
const BE: &[&str] = &["namespace", "service", "port", "backend"];

/// One constant per family (named like the collectors' variables, hence lower case), and
/// `ALL` for the collector's descriptors.
macro_rules! specs {
    ($($id:ident = $name:literal, $kind:ident, $labels:expr, $help:literal;)*) => {
        $(
            #[allow(non_upper_case_globals)]
            pub(super) const $id: Spec = Spec { name: $name, help: $help, kind: $kind, labels: $labels };
        )*
        pub(super) const ALL: &[&Spec] = &[$(&$id),*];
    };
}

specs! {
    be_conns = "tpvs_backend_connections_total", C, BE,
        "Connections opened to the backend (counted from the connect attempt, like IPVS).";
    be_active = "tpvs_backend_connections_active", G, BE, "Connections open to the backend now (UDP: flows awaiting its answer).";
    be_closed = "tpvs_backend_connections_closed_total", C, BE, "Connections to the backend that have ended.";
    be_bytes = "tpvs_backend_bytes_total", C, &["namespace", "service", "port", "backend", "direction"],
        "Bytes relayed, by direction (to_backend, from_backend).";
    be_picks = "tpvs_backend_picks_total", C, &["namespace", "service", "port", "backend", "scheduler"],
        "Times the Service's scheduler chose the backend.";
    be_failures = "tpvs_backend_connect_failures_total", C, &["namespace", "service", "port", "backend", "reason"],
        "Failed connect attempts to the backend, by reason (refused, timeout, unreachable, other).";
    be_retries = "tpvs_backend_connect_retries_total", C, BE,
        "Connect attempts to the backend that retried a connection another backend had failed.";
    be_ejections = "tpvs_backend_ejections_total", C, BE,
        "Times outlier detection ejected the backend after consecutive connect failures.";
    be_ejected = "tpvs_backend_ejected", G, BE, "1 while the backend is ejected (new connections skip it).";
    be_latency = "tpvs_backend_connect_duration_seconds", H, BE,
        "Time to establish the upstream TCP connection to the backend.";
    be_omitted = "tpvs_metrics_backends_omitted", G, &[],
        "Backends left out of the per-backend series of this scrape (--metrics-max-backends keeps the busiest).";
    svc_conns = "tpvs_service_connections_total", C, SVC, "Connections opened to the Service port's backends (summed over them).";
    svc_active = "tpvs_service_connections_active", G, SVC, "Connections open to the Service port's backends now (UDP: flows awaiting an answer).";
    svc_bytes = "tpvs_service_bytes_total", C, &["namespace", "service", "port", "direction"],
        "Bytes relayed to and from the Service port's backends, by direction.";
    svc_failures = "tpvs_service_connect_failures_total", C, SVC, "Failed connect attempts to the Service port's backends.";
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
    refused_frontends = "tpvs_table_refused_frontends", G, &["reason"],
        "Frontends the input names but the live table refuses, by reason (unspecified, loopback, link_local, multicast, broadcast, not_allowed, cluster_ip_taken, other_family, conflict); the log names each.";
    accepted = "tpvs_connections_accepted_total", C, &[], "TCP connections accepted by the transparent listeners.";
    open = "tpvs_connections_open", G, &[], "TCP connections open through the proxy now.";
    rejected = "tpvs_connections_rejected_total", C, &["reason"],
        "Accepted connections reset by the proxy (no_frontend, connect_failed: every candidate failed, over_limit).";
    worker_accepted = "tpvs_worker_connections_accepted_total", C, &["worker"],
        "TCP connections accepted by the worker's listeners (the kernel's reuseport steering decides which worker).";
    worker_open = "tpvs_worker_connections_open", G, &["worker"], "TCP connections the worker relays now (adopted ones included).";
    worker_busy = "tpvs_worker_busy_seconds_total", C, &["worker"],
        "CPU time (user and system) the worker's thread has used; its rate is the worker's utilisation (1 = a whole CPU).";
    idle = "tpvs_connections_idle_closed_total", C, &[], "Connections reset after the idle timeout.";
    adopted = "tpvs_connections_adopted_total", C, &["backend_known"],
        "Established TCP connections received from a predecessor at a takeover (or taken back from a successor that failed); backend_known=false: its backend is not in this table (relayed to its end, counted by no scheduler).";
    refused = "tpvs_refused_packets_total", C, &[],
        "Packets refused by the rules because their Service has no endpoints (reset / ICMP unreachable).";
    dropped = "tpvs_dropped_packets_total", C, &[],
        "Packets dropped by the rules because their Local-policy Service has no endpoint on this node.";
    out_of_range = "tpvs_source_range_dropped_packets_total", C, &[],
        "Packets to a load-balancer IP dropped because their source is outside the Service's loadBalancerSourceRanges.";
    syncs = "tpvs_netfilter_syncs_total", C, &[], "nft transactions run to follow the table.";
    sync_failures = "tpvs_netfilter_sync_failures_total", C, &[],
        "nft transactions that failed (the previous rules stayed in force).";
    reasserted = "tpvs_rules_reasserted_total", C, &["what"],
        "Times the rules were found deleted or altered under tpvs and applied again (nft_table, policy_routing).";
    reloads = "tpvs_manifest_reloads_total", C, &[], "Reloads of the manifests source.";
    config_errors = "tpvs_config_errors_total", C, &["source"],
        "Rejected input: manifest errors, or Kubernetes objects the model refused.";
    manifest_ok = "tpvs_manifest_last_reload_success", G, &[], "1 when the last manifests reload had no error.";
    kube_events = "tpvs_kube_events_total", C, &[], "Watch events received from the Kubernetes API.";
    kube_watch_errors = "tpvs_kube_watch_errors_total", C, &[], "List/watch failures (each followed by a retry).";
    udp_active = "tpvs_udp_flows_active", G, &[], "UDP flows open now.";
    udp_created = "tpvs_udp_flows_created_total", C, &[], "UDP flows created.";
    udp_adopted = "tpvs_udp_flows_adopted_total", C, &[], "UDP flows received from a predecessor at a takeover (or taken back).";
    udp_evicted = "tpvs_udp_flows_evicted_total", C, &["reason"],
        "UDP flows closed: idle (their timeout passed) or table_change (backend removed or drained).";
    udp_datagrams = "tpvs_udp_datagrams_total", C, &["direction"],
        "UDP datagrams relayed (from_clients, to_backends, from_backends, to_clients).";
    udp_drops = "tpvs_udp_drops_total", C, &["reason"], "UDP datagrams dropped, by reason.";
    udp_per_source = "tpvs_udp_flows_per_source_max", G, &[],
        "UDP flows one client address may hold at once (--udp-source-share of the flow cap).";
    fd_limit = "tpvs_fd_limit", G, &[], "The process's open-file limit (RLIMIT_NOFILE) the budget was split from.";
    fd_budget = "tpvs_fd_budget", G, &["use"],
        "The open-file limit's split: reserve (admin, health, children, listeners; descriptors), tcp_connections, pipes and udp_flows (caps).";
    fds_open = "tpvs_fds_open", G, &[], "Descriptors open in the process now.";
}
