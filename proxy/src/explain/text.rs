//! The answer as a person would give it: the diagnosis first, then the six steps, one fact a
//! line. Names come from input and are escaped like `tpvs list` escapes them.

use std::fmt::Write as _;

use super::report::{Outcome, Report};
use crate::list::printable;

/// The text of `report`; pure, so golden tests pin it.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let mut line = |s: String| {
        let _ = writeln!(o, "{}", printable(&s));
    };
    line(format!("Diagnosis: {}", r.diagnosis));
    let client = r.client.as_deref().map(|c| format!(" from {c}")).unwrap_or_default();
    let asked = format!("{}/{}{client}", r.destination, r.protocol);
    match &r.frontend {
        None => {
            line(format!("1. Interception: no frontend matches {asked} (table generation {}).", r.generation));
            for n in &r.nearest {
                let label = match n.kind.as_str() {
                    "same_address" => "same address, other port",
                    "same_port" => "same port, other address",
                    "same_port_not_proxied" => "same port",
                    "other_node_port" => "other NodePort",
                    _ => "because",
                };
                line(format!("   {label}: {}", n.text));
            }
            line(format!("5. Client: {}.", r.experience));
        }
        Some(f) => {
            let how = if f.matched_as == "node_port" { "NodePort" } else { f.kind.as_str() };
            line(format!(
                "1. Interception: {asked} matches the {how} frontend {}/{} (table generation {}).",
                f.address, r.protocol, r.generation
            ));
            for n in &r.nearest {
                line(format!("   note: {}", n.text));
            }
            let why = if f.policy_field == "internalTrafficPolicy" {
                "ClusterIPs follow internalTrafficPolicy"
            } else {
                "addresses reachable from outside follow externalTrafficPolicy"
            };
            line(format!("2. Service: {}, type {}; traffic policy {} ({why}).", f.service, f.service_type, f.policy));
            let mut knobs = format!("   scheduler {}", f.scheduler);
            if let Some(t) = f.affinity_timeout_seconds {
                let _ = write!(knobs, "; session affinity ClientIP for {t} s");
            }
            if !f.source_ranges.is_empty() {
                let _ = write!(knobs, "; only clients from {}", f.source_ranges.join(", "));
            }
            if let Some(t) = &f.topology {
                let _ = write!(knobs, "; topology hints in force for {t}");
            }
            line(format!("{knobs}."));
            if let Some(sc) = &r.short_circuit {
                line(format!("   short-circuit: {}.", sc.why));
            }
            let used = r.endpoints.iter().filter(|e| e.used).count();
            let legend = if r.endpoints.is_empty() { "." } else { " (node/zone, verdict):" };
            let set = if r.short_circuit.as_ref().is_some_and(|sc| sc.applies) { " (all endpoints, for this client)" } else { "" };
            line(format!(
                "3. Endpoints: {} listed by {} EndpointSlice(s); the scheduler sees {used}{set}{legend}",
                r.endpoints.len(),
                f.slices
            ));
            let place = |e: &super::report::EndpointView| match (&e.node, &e.zone) {
                (Some(n), Some(z)) => format!("{n}/{z}"),
                (Some(n), None) => n.clone(),
                (None, Some(z)) => format!("-/{z}"),
                (None, None) => "-".to_string(),
            };
            let width = r.endpoints.iter().map(|e| e.address.len()).max().unwrap_or(0);
            let place_width = r.endpoints.iter().map(|e| place(e).len()).max().unwrap_or(0);
            for e in &r.endpoints {
                line(format!("   {:<width$}  {:<place_width$}  {}", e.address, place(e), e.why));
            }
            if let Some(d) = &r.decision {
                line(format!("4. Decision: {}.", d.text));
                if d.backend.is_none() {
                    for c in &d.candidates {
                        let ewma = c.ewma_ms.map(|m| format!(", latency estimate {m} ms")).unwrap_or_default();
                        line(format!(
                            "   candidate {}: weight {}, {} active, {} connections{ewma}",
                            c.address, c.weight, c.active, c.connections
                        ));
                    }
                }
            }
            line(format!("5. Client: {}.", r.experience));
        }
    }
    match &r.live {
        None if r.source == "manifests" => {
            line("6. Live evidence: none offline (run without --manifests to ask the running daemon).".into())
        }
        None => {}
        Some(l) => {
            match &l.rule {
                Some(rule) => line(format!(
                    "6. Live: rule {} \"{}\" counted {} packets ({} bytes) since the rules were last replaced.",
                    rule.map,
                    rule.element,
                    rule.packets.map_or("?".into(), |p| p.to_string()),
                    rule.bytes.map_or("?".into(), |b| b.to_string())
                )),
                None => line("6. Live: no rule element for this frontend (nothing intercepts it).".into()),
            }
            line(format!(
                "   frontend: {} connections to its backends (a backend's counters count every frontend reaching it).",
                l.frontend_connections
            ));
            for b in &l.backends {
                let failures: Vec<String> =
                    b.failures.iter().filter(|(_, n)| **n > 0).map(|(why, n)| format!("{n} {why}")).collect();
                let failures = if failures.is_empty() { "no failed connects".to_string() } else { failures.join(", ") + " connect failures" };
                let ejected = b.ejected_for_seconds.map(|s| format!("; ejected for {s} s more")).unwrap_or_default();
                line(format!(
                    "   backend {}: {} active, {} connections, {failures}, {} retries{ejected}.",
                    b.address, b.active, b.connections, b.retries
                ));
            }
        }
    }
    let verdict = match r.outcome {
        Outcome::Forwarded => "forwarded",
        Outcome::Refused => "refused",
        Outcome::Dropped => "dropped",
        Outcome::NoFrontend => "no frontend",
        Outcome::NotIntercepted => "not intercepted",
    };
    line(format!("Verdict: {verdict}."));
    o
}
