//! `tpvs list`: the routing table printed in the spirit of `ipvsadm -Ln`.
//!
//! One line per frontend (protocol, address, scheduler, kind, Service port, policy, affinity),
//! then one `->` line per backend (address, weight, state, node, zone, counters). A frontend
//! with no backend says what the data plane does with its connections (reject or drop).

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use controlplane::{CompileOptions, ManifestSource, Publisher, ReloadReport, RoutingTable};
use serde::Serialize;

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
        println!("{}", serde_json::to_string_pretty(&json_view(&table))?);
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
    let mut out = String::new();
    let _ = writeln!(out, "tpvs routing table: generation {}, {} frontends", table.generation, table.len());
    let _ = writeln!(
        out,
        "Prot Frontend                  Scheduler Kind         Service                        Policy  Affinity"
    );
    let _ = writeln!(
        out,
        "  -> Backend                   Weight State       Node             Zone         ActiveConn Conns"
    );
    for f in table.sorted() {
        let mut affinity = match f.affinity {
            Some(a) => format!("ClientIP:{}s", a.timeout.as_secs()),
            None => "-".to_string(),
        };
        if let Some(port) = f.health_check_node_port {
            let _ = write!(affinity, " healthCheckNodePort:{port} localEndpoints:{}", f.local_endpoints);
        }
        let _ = writeln!(
            out,
            "{:<4} {:<25} {:<9} {:<12} {:<30} {:<7} {}",
            f.key.proto.as_str(),
            f.key.to_string(),
            f.scheduler_kind().as_str(),
            f.kind.as_str(),
            f.service.to_string(),
            f.policy.as_str(),
            affinity,
        );
        let backends = f.backends();
        if backends.is_empty() {
            let _ = writeln!(out, "  (no endpoints: {})", f.when_empty.as_str());
            continue;
        }
        for b in backends.iter() {
            let _ = writeln!(
                out,
                "  -> {:<25} {:<6} {:<11} {:<16} {:<12} {:<10} {}",
                b.addr.to_string(),
                b.weight,
                b.condition.to_string(),
                b.node.as_deref().unwrap_or("-"),
                b.zone.as_deref().unwrap_or("-"),
                b.stats.active(),
                b.stats.connections(),
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

#[derive(Serialize)]
pub struct JsonTable {
    pub generation: u64,
    pub frontends: Vec<JsonFrontend>,
}

#[derive(Serialize)]
pub struct JsonFrontend {
    pub protocol: &'static str,
    pub address: String,
    pub kind: &'static str,
    pub service: String,
    pub scheduler: &'static str,
    pub policy: &'static str,
    pub affinity_timeout_seconds: Option<u64>,
    pub when_empty: &'static str,
    pub health_check_node_port: Option<u16>,
    pub local_endpoints: usize,
    pub backends: Vec<JsonBackend>,
}

#[derive(Serialize)]
pub struct JsonBackend {
    pub address: String,
    pub weight: u32,
    pub state: String,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub active: u64,
    pub connections: u64,
}

pub fn json_view(table: &RoutingTable) -> JsonTable {
    JsonTable {
        generation: table.generation,
        frontends: table
            .sorted()
            .into_iter()
            .map(|f| JsonFrontend {
                protocol: f.key.proto.as_str(),
                address: f.key.to_string(),
                kind: f.kind.as_str(),
                service: f.service.to_string(),
                scheduler: f.scheduler_kind().as_str(),
                policy: f.policy.as_str(),
                affinity_timeout_seconds: f.affinity.map(|a| a.timeout.as_secs()),
                when_empty: f.when_empty.as_str(),
                health_check_node_port: f.health_check_node_port,
                local_endpoints: f.local_endpoints,
                backends: f
                    .backends()
                    .iter()
                    .map(|b| JsonBackend {
                        address: b.addr.to_string(),
                        weight: b.weight,
                        state: b.condition.to_string(),
                        node: b.node.as_deref().map(str::to_string),
                        zone: b.zone.as_deref().map(str::to_string),
                        active: b.stats.active(),
                        connections: b.stats.connections(),
                    })
                    .collect(),
            })
            .collect(),
    }
}
