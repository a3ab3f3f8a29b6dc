//! `tpvs list` against the running daemon: reads `/api/table` from its metrics address and
//! prints the live table, like `ipvsadm -Ln` (`--stats`: totals; `--rate`: per second over
//! one second).
//!
//! Counters belong to backend addresses (they survive table rebuilds and are shared by every
//! frontend reaching the same backend); a frontend's line sums its backends.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper::StatusCode;

use crate::admin::http;
use crate::cli::ListArgs;
use crate::list::render_view;
use crate::view::{JsonBackend, JsonFrontend, JsonTable};

/// How long the two `--rate` samples are apart (ipvsadm's rates are per second too).
const RATE_INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("runtime")?;
    runtime.block_on(async {
        let first = fetch(args.server).await?;
        let text = if args.rate {
            let started = Instant::now();
            tokio::time::sleep(RATE_INTERVAL).await;
            let second = fetch(args.server).await?;
            let rates = rates(&first, &second, started.elapsed());
            if args.json {
                serde_json::to_string_pretty(&rates)? + "\n"
            } else {
                render_rates(&second, &rates)
            }
        } else if args.json {
            serde_json::to_string_pretty(&first)? + "\n"
        } else if args.stats {
            render_stats(&first)
        } else {
            render_view(&first)
        };
        print!("{text}");
        Ok(ExitCode::SUCCESS)
    })
}

async fn fetch(server: SocketAddr) -> anyhow::Result<JsonTable> {
    let (status, body) = http::get(server, "/api/table", TIMEOUT)
        .await
        .with_context(|| format!("reading the live table from tpvs at {server} (is `tpvs run` up? --server sets the address)"))?;
    anyhow::ensure!(status == StatusCode::OK, "{server}/api/table answered {status}");
    serde_json::from_slice(&body).with_context(|| format!("{server}/api/table: unexpected answer"))
}

/// Every backend a frontend reaches, once: its own set, then those only the short-circuit of
/// local traffic reaches (a Local frontend with no local endpoint serves only those).
fn reached(f: &JsonFrontend) -> impl Iterator<Item = &JsonBackend> {
    let short_circuit = f.local_origin.iter().flat_map(|lo| lo.backends.iter());
    f.backends.iter().chain(short_circuit.filter(|b| !f.backends.iter().any(|own| own.address == b.address)))
}

/// The short-circuit's backends (`=>` rows).
fn short_circuit(f: &JsonFrontend) -> &[JsonBackend] {
    f.local_origin.as_ref().map_or(&[], |lo| lo.backends.as_slice())
}

fn sum(f: &JsonFrontend, field: impl Fn(&JsonBackend) -> u64) -> u64 {
    reached(f).map(field).fold(0u64, u64::saturating_add)
}

/// `ipvsadm -Ln --stats`: totals since each backend first appeared.
pub fn render_stats(table: &JsonTable) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "tpvs routing table: generation {}, {} frontends", table.generation, table.frontends.len());
    let _ = writeln!(out, "Prot Frontend                       Conns   Active Failures    InBytes   OutBytes");
    let _ = writeln!(out, "  -> Backend");
    let row = |out: &mut String, prefix: &str, addr: &str, c: [u64; 5]| {
        let _ = writeln!(out, "{prefix:<4} {addr:<25} {:>10} {:>8} {:>8} {:>10} {:>10}", c[0], c[1], c[2], c[3], c[4]);
    };
    for f in &table.frontends {
        let totals = [
            sum(f, |b| b.connections),
            sum(f, |b| b.active),
            sum(f, |b| b.failures),
            sum(f, |b| b.bytes_to_backend),
            sum(f, |b| b.bytes_from_backend),
        ];
        row(&mut out, &f.protocol, &f.address, totals);
        let rows = f.backends.iter().map(|b| ("  ->", b)).chain(short_circuit(f).iter().map(|b| ("  =>", b)));
        for (arrow, b) in rows {
            row(&mut out, arrow, &b.address, [b.connections, b.active, b.failures, b.bytes_to_backend, b.bytes_from_backend]);
        }
    }
    out
}

/// Per-second rates of one backend (or a frontend's sum) between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Rate {
    /// New connections per second.
    pub cps: f64,
    /// Failed connects per second.
    pub fps: f64,
    /// Bytes per second toward the backends (ipvsadm's InBPS).
    pub in_bps: f64,
    /// Bytes per second back to the clients (OutBPS).
    pub out_bps: f64,
}

/// Rates keyed by `"PROT frontend"` and `"PROT frontend -> backend"`.
pub type Rates = std::collections::BTreeMap<String, Rate>;

pub fn rates(before: &JsonTable, after: &JsonTable, elapsed: Duration) -> Rates {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let old: HashMap<(&str, &str, &str), &JsonBackend> = before
        .frontends
        .iter()
        .flat_map(|f| reached(f).map(move |b| ((f.protocol.as_str(), f.address.as_str(), b.address.as_str()), b)))
        .collect();
    let mut out = Rates::new();
    for f in &after.frontends {
        let mut total = Rate::default();
        for b in reached(f) {
            // A backend new since the first sample counts from zero.
            let prev = old.get(&(f.protocol.as_str(), f.address.as_str(), b.address.as_str()));
            let delta = |now: u64, then: fn(&JsonBackend) -> u64| now.saturating_sub(prev.map_or(0, |p| then(p))) as f64 / secs;
            let r = Rate {
                cps: delta(b.connections, |p| p.connections),
                fps: delta(b.failures, |p| p.failures),
                in_bps: delta(b.bytes_to_backend, |p| p.bytes_to_backend),
                out_bps: delta(b.bytes_from_backend, |p| p.bytes_from_backend),
            };
            total.cps += r.cps;
            total.fps += r.fps;
            total.in_bps += r.in_bps;
            total.out_bps += r.out_bps;
            out.insert(format!("{} {} -> {}", f.protocol, f.address, b.address), r);
        }
        out.insert(format!("{} {}", f.protocol, f.address), total);
    }
    out
}

/// `ipvsadm -Ln --rate`.
pub fn render_rates(table: &JsonTable, rates: &Rates) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "tpvs routing table: generation {}, {} frontends", table.generation, table.frontends.len());
    let _ = writeln!(out, "Prot Frontend                         CPS      FPS      InBPS     OutBPS");
    let _ = writeln!(out, "  -> Backend");
    let row = |out: &mut String, prefix: &str, addr: &str, r: Rate| {
        let _ = writeln!(out, "{prefix:<4} {addr:<25} {:>10.0} {:>8.0} {:>10.0} {:>10.0}", r.cps, r.fps, r.in_bps, r.out_bps);
    };
    for f in &table.frontends {
        let total = rates.get(&format!("{} {}", f.protocol, f.address)).copied().unwrap_or_default();
        row(&mut out, &f.protocol, &f.address, total);
        // A backend's rate is its address's, under whichever set reaches it.
        let rows = f.backends.iter().map(|b| ("  ->", b)).chain(short_circuit(f).iter().map(|b| ("  =>", b)));
        for (arrow, b) in rows {
            let r = rates.get(&format!("{} {} -> {}", f.protocol, f.address, b.address)).copied().unwrap_or_default();
            row(&mut out, arrow, &b.address, r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(conns: u64, bytes: u64) -> JsonTable {
        JsonTable {
            generation: 3,
            frontends: vec![JsonFrontend {
                protocol: "TCP".into(),
                address: "10.96.0.10:80".into(),
                kind: "ClusterIP".into(),
                service: "default/web:http".into(),
                scheduler: "rr".into(),
                policy: "Cluster".into(),
                affinity_timeout_seconds: None,
                when_empty: "reject".into(),
                health_check_node_port: None,
                local_endpoints: 0,
                source_ranges: Vec::new(),
                backends: ["10.1.0.2:8080", "10.1.1.2:8080"]
                    .iter()
                    .map(|a| JsonBackend {
                        address: (*a).into(),
                        weight: 1,
                        state: "Ready".into(),
                        node: None,
                        zone: None,
                        active: 1,
                        connections: conns,
                        picks: conns,
                        failures: 0,
                        bytes_to_backend: bytes,
                        bytes_from_backend: 2 * bytes,
                        ejected_for_seconds: None,
                    })
                    .collect(),
                local_origin: None,
            }],
        }
    }

    #[test]
    fn stats_sum_backends_into_the_frontend_line() {
        let text = render_stats(&table(5, 100));
        let line = text.lines().find(|l| l.starts_with("TCP")).unwrap_or_default();
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols, ["TCP", "10.96.0.10:80", "10", "2", "0", "200", "400"]);
    }

    /// A Local frontend without local endpoints: only the short-circuit's backends carry its
    /// traffic, and a backend in both sets counts once.
    fn short_circuited(conns: u64) -> JsonTable {
        let mut t = table(conns, 100);
        let f = &mut t.frontends[0];
        let both = f.backends[1].clone();
        let mut only_elsewhere = both.clone();
        only_elsewhere.address = "10.2.0.2:8080".into();
        f.local_origin = Some(crate::view::JsonLocalOrigin { pod_sources: Vec::new(), backends: vec![both, only_elsewhere] });
        f.backends.truncate(1);
        f.backends[0].address = "10.1.1.2:8080".into();
        t
    }

    #[test]
    fn the_short_circuit_backends_count_and_show() {
        let text = render_stats(&short_circuited(5));
        let line = text.lines().find(|l| l.starts_with("TCP")).unwrap_or_default();
        assert_eq!(line.split_whitespace().nth(2), Some("10"), "10.1.1.2 once, 10.2.0.2 once: {text}");
        assert!(text.contains("  => 10.2.0.2:8080"), "{text}");
        let r = rates(&short_circuited(5), &short_circuited(15), Duration::from_secs(1));
        assert_eq!(r.get("TCP 10.96.0.10:80 -> 10.2.0.2:8080").map(|r| r.cps), Some(10.0));
        assert_eq!(r.get("TCP 10.96.0.10:80").map(|r| r.cps), Some(20.0));
        assert!(render_rates(&short_circuited(15), &r).contains("  => 10.2.0.2:8080"));
    }

    #[test]
    fn rates_are_per_second_differences() {
        let r = rates(&table(5, 100), &table(15, 300), Duration::from_secs(2));
        let be = r.get("TCP 10.96.0.10:80 -> 10.1.0.2:8080").copied().unwrap_or_default();
        assert_eq!(be, Rate { cps: 5.0, fps: 0.0, in_bps: 100.0, out_bps: 200.0 });
        let fe = r.get("TCP 10.96.0.10:80").copied().unwrap_or_default();
        assert_eq!(fe.cps, 10.0);
        assert!(render_rates(&table(15, 300), &r).contains("10.1.1.2:8080"));
    }
}
