//! The routing table as data: what `tpvs list --json` prints and the daemon's `/api/table`
//! serves (which `tpvs list` without `--manifests` reads back), so the offline and the live
//! listing share one schema and one text renderer. The field names are an interface: scripts
//! and the live listing parse them.

use controlplane::RoutingTable;
use serde::{Deserialize, Serialize};

use schedulers::stats::now_nanos;

use crate::dispatch::telemetry::MetricsRegistry;

/// The whole table, sorted as the listing prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JsonTable {
    pub generation: u64,
    pub frontends: Vec<JsonFrontend>,
}

/// One frontend: an address, port and protocol a Service answers on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JsonFrontend {
    pub protocol: String,
    pub address: String,
    pub kind: String,
    pub service: String,
    pub scheduler: String,
    pub policy: String,
    pub affinity_timeout_seconds: Option<u64>,
    pub when_empty: String,
    pub health_check_node_port: Option<u16>,
    /// What the health-check node port reports: distinct ready local endpoint IPs across all
    /// the Service's ports.
    pub local_endpoints: usize,
    /// `loadBalancerSourceRanges` in force on this frontend (LoadBalancer IPs only); absent
    /// when every client is accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<String>,
    pub backends: Vec<JsonBackend>,
    /// The short-circuit of an `externalTrafficPolicy: Local` external frontend: who counts as
    /// this node's own, and the cluster-wide endpoints they are served from. Absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_origin: Option<JsonLocalOrigin>,
}

/// Connections from this node (its own addresses) or its pods (`pod_sources`) to a `Local`
/// Service's external address pick from `backends`: every endpoint, as `Cluster` would.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JsonLocalOrigin {
    pub pod_sources: Vec<String>,
    pub backends: Vec<JsonBackend>,
}

/// One backend; the counters are the backend address's, shared by every frontend that
/// reaches it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JsonBackend {
    pub address: String,
    pub weight: u32,
    pub state: String,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub active: u64,
    pub connections: u64,
    #[serde(default)]
    pub picks: u64,
    #[serde(default)]
    pub failures: u64,
    #[serde(default)]
    pub bytes_to_backend: u64,
    #[serde(default)]
    pub bytes_from_backend: u64,
    /// Seconds of outlier ejection left (the backend is skipped by new picks); `None` when it
    /// is not ejected.
    #[serde(default)]
    pub ejected_for_seconds: Option<u64>,
}

/// Reads `table` and its live counters into the data form.
pub fn json_view(table: &RoutingTable, metrics: Option<&MetricsRegistry>) -> JsonTable {
    JsonTable {
        generation: table.generation,
        frontends: table
            .sorted()
            .into_iter()
            .map(|f| JsonFrontend {
                protocol: f.key.proto.as_str().to_string(),
                address: f.key.to_string(),
                kind: f.kind.as_str().to_string(),
                service: f.service.to_string(),
                scheduler: f.scheduler_kind().as_str().to_string(),
                policy: f.policy.as_str().to_string(),
                affinity_timeout_seconds: f.affinity.map(|a| a.timeout.as_secs()),
                when_empty: f.when_empty.as_str().to_string(),
                health_check_node_port: f.health_check_node_port,
                local_endpoints: f.service_local_endpoints,
                source_ranges: f.source_ranges.iter().map(ToString::to_string).collect(),
                backends: f.backends().iter().map(|b| json_backend(b, metrics)).collect(),
                local_origin: f.local_origin.as_ref().map(|lo| JsonLocalOrigin {
                    pod_sources: lo.pod_sources.iter().map(ToString::to_string).collect(),
                    backends: lo.scheduler.backends().iter().map(|b| json_backend(b, metrics)).collect(),
                }),
            })
            .collect(),
    }
}

fn json_backend(b: &schedulers::Backend, metrics: Option<&MetricsRegistry>) -> JsonBackend {
    // Bytes are the data path's metrics: none offline, or before any traffic.
    let m = metrics.and_then(|m| m.peek(b.addr));
    JsonBackend {
        address: b.addr.to_string(),
        weight: b.weight,
        state: b.condition.to_string(),
        node: b.node.as_deref().map(str::to_string),
        zone: b.zone.as_deref().map(str::to_string),
        active: b.stats.active(),
        connections: b.stats.connections(),
        picks: b.stats.picks(),
        failures: b.stats.failures(),
        bytes_to_backend: m.as_ref().map_or(0, |m| m.bytes_to_backend()),
        bytes_from_backend: m.as_ref().map_or(0, |m| m.bytes_from_backend()),
        ejected_for_seconds: m.as_ref().and_then(|m| {
            // Rounded up: a backend ejected for 0.3 s more still says 1 s.
            let left = m.outlier.ejected_for_ns(now_nanos());
            (left > 0).then(|| left.div_ceil(1_000_000_000))
        }),
    }
}
