//! `tpvs list`: the routing table printed in the spirit of `ipvsadm -Ln`.
//!
//! One line per frontend (protocol, address, scheduler, kind, Service port, policy, affinity),
//! then one `->` line per backend (address, weight, state, node, zone, counters). A frontend
//! with no backend says what the data plane does with its connections (reject or drop).

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use controlplane::{CompileOptions, ManifestSource, Publisher, ReloadReport, RoutingTable};

use crate::dispatch::telemetry::MetricsRegistry;
use serde::{Deserialize, Serialize};

use crate::cli::{ListArgs, TableArgs};

pub fn run(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let Some(path) = args.table.manifests.clone() else {
        anyhow::bail!("--manifests PATH is required (reading a running daemon comes with the admin API)");
    };
    let publisher = Arc::new(Publisher::new());
    let mut source = ManifestSource::new(path, compile_options(&args.table), Arc::clone(&publisher));
    let report = source.reload();
    let table = publisher.current();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json_view(&table, None))?);
    } else {
        print!("{}", render(&table));
        print!("{}", render_skipped(&report));
    }
    // Errors go to stderr so `--json` output stays parseable; the exit code flags them.
    eprint!("{}", render_errors(&report));
    Ok(if report.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The compiler settings the table flags describe.
pub fn compile_options(args: &TableArgs) -> CompileOptions {
    CompileOptions {
        node_name: args.hostname_override.clone(),
        default_scheduler: args.scheduler,
        ..CompileOptions::default()
    }
}

/// The table as text; pure, so golden tests pin it.
pub fn render(table: &RoutingTable) -> String {
    render_json(&json_view(table, None))
}

/// The table as text from its data form: shared by the offline list and the live one.
pub fn render_json(table: &JsonTable) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "tpvs routing table: generation {}, {} frontends", table.generation, table.frontends.len());
    let _ = writeln!(
        out,
        "Prot Frontend                  Scheduler Kind         Service                        Policy  Affinity"
    );
    let _ = writeln!(
        out,
        "  -> Backend                   Weight State       Node             Zone         ActiveConn Conns"
    );
    for f in &table.frontends {
        let mut affinity = match f.affinity_timeout_seconds {
            Some(t) => format!("ClientIP:{t}s"),
            None => "-".to_string(),
        };
        if let Some(port) = f.health_check_node_port {
            let _ = write!(affinity, " healthCheckNodePort:{port} localEndpoints:{}", f.local_endpoints);
        }
        let _ = writeln!(
            out,
            "{:<4} {:<25} {:<9} {:<12} {:<30} {:<7} {}",
            f.protocol, f.address, f.scheduler, f.kind, f.service, f.policy, affinity,
        );
        if f.backends.is_empty() {
            let _ = writeln!(out, "  (no endpoints: {})", f.when_empty);
            continue;
        }
        for b in &f.backends {
            let _ = writeln!(
                out,
                "  -> {:<25} {:<6} {:<11} {:<16} {:<12} {:<10} {}",
                b.address,
                b.weight,
                b.state,
                b.node.as_deref().unwrap_or("-"),
                b.zone.as_deref().unwrap_or("-"),
                b.active,
                b.connections,
            );
        }
    }
    out
}

/// The Services the source saw but does not proxy, and why.
pub fn render_skipped(report: &ReloadReport) -> String {
    let mut out = String::new();
    for (service, why) in &report.skipped {
        let _ = writeln!(out, "# not proxied: {service}: {why}");
    }
    out
}

/// One line per problem found in the manifests.
pub fn render_errors(report: &ReloadReport) -> String {
    let mut out = String::new();
    for e in &report.errors {
        let _ = writeln!(out, "error: {e}");
    }
    out
}

/// The table as data: `tpvs list --json`, and the daemon's `/api/table` (which `tpvs list`
/// without `--manifests` reads back).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JsonTable {
    pub generation: u64,
    pub frontends: Vec<JsonFrontend>,
}

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
    pub local_endpoints: usize,
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
}

/// The table with its counters; the byte counters come from the data path's `metrics` (none
/// offline).
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
                local_endpoints: f.local_endpoints,
                backends: f
                    .backends()
                    .iter()
                    .map(|b| {
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
                    }
                    })
                    .collect(),
            })
            .collect(),
    }
}
