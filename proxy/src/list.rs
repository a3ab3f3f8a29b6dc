//! `tpvs list`: the routing table printed in the spirit of `ipvsadm -Ln`.
//!
//! One line per frontend (protocol, address, scheduler, kind, Service port, policy, affinity),
//! then one `->` line per backend (address, weight, state, node, zone, counters). A frontend
//! with no backend says what the data plane does with its connections (reject or drop).

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use controlplane::{ManifestSource, Publisher, ReloadReport, RoutingTable};

use crate::cli::ListArgs;
use crate::view::{JsonTable, json_view};

/// `tpvs list --manifests PATH`: the table `manifests` compile to with `args`' settings.
pub fn run(manifests: &Path, args: &ListArgs) -> anyhow::Result<ExitCode> {
    let publisher = Arc::new(Publisher::new());
    let mut source = ManifestSource::new(manifests.to_path_buf(), args.table.compile_options(), Arc::clone(&publisher));
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

/// The table as text; pure, so golden tests pin it.
pub fn render(table: &RoutingTable) -> String {
    render_view(&json_view(table, None))
}

/// The table as text from its data form: shared by the offline list and the live one.
pub fn render_view(table: &JsonTable) -> String {
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
            // An ejected backend says so where its state goes: that is what the operator
            // looks for when one backend stops getting traffic.
            let state = match b.ejected_for_seconds {
                Some(s) => format!("Ejected:{s}s"),
                None => b.state.clone(),
            };
            let _ = writeln!(
                out,
                "  -> {:<25} {:<6} {:<11} {:<16} {:<12} {:<10} {}",
                b.address,
                b.weight,
                state,
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
