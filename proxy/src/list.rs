//! `tpvs list`: the routing table printed in the spirit of `ipvsadm -Ln`.
//!
//! One line per frontend (protocol, address, scheduler, kind, Service port, policy, affinity),
//! then one `->` line per backend (address, weight, state, node, zone, counters). A frontend
//! with no backend says what the data plane does with its connections (reject or drop).
//!
//! Names come from input (a manifest may name a Service anything), so every name the text
//! prints is escaped: a newline or a terminal escape in a name cannot break or forge a line.
//! The JSON output carries them exactly.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use controlplane::{ManifestSource, Publisher, ReloadReport, RoutingTable};

use crate::cli::ListArgs;
use crate::view::{JsonBackend, JsonTable, json_view};

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
    // Errors go to stderr so `--json` output stays parseable; the exit code flags them, and a
    // refused frontend (a bad address, another Service's ClusterIP) is an error like any.
    eprint!("{}{}", render_errors(&report), render_refused(&table));
    let clean = report.errors.is_empty() && table.refused().is_empty();
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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
        if !f.source_ranges.is_empty() {
            let _ = write!(affinity, " sourceRanges:{}", f.source_ranges.join(","));
        }
        let _ = writeln!(
            out,
            "{:<4} {:<25} {:<9} {:<12} {:<30} {:<7} {}",
            f.protocol,
            f.address,
            f.scheduler,
            f.kind,
            printable(&f.service),
            f.policy,
            affinity,
        );
        if f.backends.is_empty() {
            let _ = writeln!(out, "  (no endpoints: {})", f.when_empty);
        }
        for b in &f.backends {
            backend_row(&mut out, "->", b);
        }
        if let Some(lo) = &f.local_origin {
            let pods = if lo.pod_sources.is_empty() { String::new() } else { format!(" and pods in {}", lo.pod_sources.join(",")) };
            let _ = writeln!(out, "  (from this node{pods}: all endpoints)");
            for b in &lo.backends {
                backend_row(&mut out, "=>", b);
            }
        }
    }
    out
}

fn backend_row(out: &mut String, arrow: &str, b: &JsonBackend) {
    // An ejected backend says so where its state goes: that is what the operator looks for
    // when one backend stops getting traffic.
    let state = match b.ejected_for_seconds {
        Some(s) => format!("Ejected:{s}s"),
        None => b.state.clone(),
    };
    let _ = writeln!(
        out,
        "  {arrow} {:<25} {:<6} {:<11} {:<16} {:<12} {:<10} {}",
        b.address,
        b.weight,
        state,
        printable(b.node.as_deref().unwrap_or("-")),
        printable(b.zone.as_deref().unwrap_or("-")),
        b.active,
        b.connections,
    );
}

/// The Services the source saw but does not proxy, and why.
pub fn render_skipped(report: &ReloadReport) -> String {
    let mut out = String::new();
    for (service, why) in &report.skipped {
        let _ = writeln!(out, "# not proxied: {}: {}", printable(&service.to_string()), printable(&why.to_string()));
    }
    out
}

/// One line per problem found in the manifests.
pub fn render_errors(report: &ReloadReport) -> String {
    let mut out = String::new();
    for e in &report.errors {
        let _ = writeln!(out, "error: {}", printable(&e.to_string()));
    }
    out
}

/// One line per frontend the table refused, naming the Service(s) and the address.
pub fn render_refused(table: &RoutingTable) -> String {
    let mut out = String::new();
    for r in table.refused() {
        let _ = writeln!(out, "error: {}", printable(&r.to_string()));
    }
    out
}

/// `s` with every control and invisible formatting character written as an escape (`\n`,
/// `\u{202e}`), and `\` doubled so an escape in the output is never ambiguous. Borrows when
/// there is nothing to escape, which for real Kubernetes names (DNS labels) is always.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || hidden(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if hidden(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Characters a terminal does not show as themselves: C0/C1 controls (newlines, escape
/// sequences), and the invisible format characters that reorder or hide text (bidi overrides
/// and isolates, zero-width characters, the byte-order mark, the soft hyphen).
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_what_a_terminal_hides_and_borrows_the_rest() {
        assert!(matches!(printable("default/web:http"), Cow::Borrowed("default/web:http")));
        assert_eq!(printable("a\nTCP  6.6.6.6:80"), "a\\nTCP  6.6.6.6:80");
        assert_eq!(printable("x\u{1b}[2Jy\r\t"), "x\\u{1b}[2Jy\\r\\t");
        assert_eq!(printable("evil\u{202e}txt.exe\u{200b}"), "evil\\u{202e}txt.exe\\u{200b}");
        assert_eq!(printable("back\\slash"), "back\\\\slash", "a literal backslash cannot forge an escape");
        assert_eq!(printable("zone-é-ü"), "zone-é-ü", "printable non-ASCII stays as it is");
        assert_eq!(printable("\u{85}\u{7f}"), "\\u{85}\\u{7f}");
    }
}
