//! `tpvs explain DEST`: why a connection goes where it goes, or nowhere.
//!
//! Two sources, like `tpvs list`: `--manifests` compiles the manifests exactly as the daemon
//! would (no root, no daemon) and answers from that table; without it the running daemon
//! answers from its own table, affinity map and counters ([`LiveExplainer`], served at
//! `/api/explain` on its metrics address, loopback only), adding the live evidence. The
//! command line's two ways of asking are [`crate::explain_cli`]'s.
//!
//! - [`query`]: DEST, `--from` and `--protocol`, checked first (bad input: one line, exit 2).
//! - [`report`]: the answer as data (the `--json` schema), read from the table, the compiler's
//!   records and the dispatcher; nothing there re-decides what they decided.
//! - [`text`]: the answer as a person would give it.

pub mod query;
pub mod report;
pub mod text;

use std::process::ExitCode;
use std::sync::Arc;

use controlplane::{Protocol, Publisher, RoutingTable};
use hyper::StatusCode;

use crate::cli::ExplainArgs;
use crate::dispatch::Dispatcher;
use crate::dispatch::outlier::OutlierPolicy;
use crate::dispatch::telemetry::MetricsRegistry;
use crate::forward::Shared;
use crate::list::printable;
use crate::netfilter::Interception;
use query::{Destination, InputError, Query};
use report::{LiveSources, Report, Sources};

/// Exit code for bad input, or a question that could not be asked (no daemon).
const USAGE: u8 = 2;

/// Checks the question, gets its answer from `ask`, prints it; the exit code is 0 when the
/// connection is forwarded, 1 when it is refused, dropped or meets no frontend, 2 when the
/// question is bad or could not be asked.
pub fn answer(args: &ExplainArgs, ask: impl FnOnce(&Query) -> anyhow::Result<Report>) -> ExitCode {
    let query = match Query::parse(&args.destination, args.from.as_deref(), args.protocol.into()) {
        Ok(q) => q,
        Err(e) => return usage(&e),
    };
    let report = match ask(&query) {
        Ok(r) => r,
        Err(e) => return usage(&InputError(format!("{e:#}"))),
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => return usage(&InputError(e.to_string())),
        }
    } else {
        print!("{}", text::render(&report));
    }
    ExitCode::from(report.outcome.exit_code())
}

fn usage(e: &InputError) -> ExitCode {
    eprintln!("tpvs explain: {}", printable(&e.0));
    ExitCode::from(USAGE)
}

/// The query string the daemon is asked with: plain fields (an IPv6 address's colons are
/// allowed in a query; brackets are not).
pub fn query_string(q: &Query) -> String {
    let mut s = match q.destination {
        Destination::Addr(a) => format!("ip={}&port={}", a.ip(), a.port()),
        Destination::NodePort(p) => format!("port={p}"),
    };
    if let Some(c) = q.client {
        s.push_str(&format!("&from_ip={}&from_port={}", c.ip(), c.port()));
    }
    s.push_str(&format!("&protocol={}", q.protocol.as_str().to_ascii_lowercase()));
    s
}

pub fn parse_query_string(qs: &str) -> Result<Query, InputError> {
    let field = |name: &str| qs.split('&').find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')));
    let port = field("port").ok_or_else(|| InputError("port is missing".into()))?;
    let dest = match field("ip") {
        Some(ip) if ip.contains(':') => format!("[{ip}]:{port}"),
        Some(ip) => format!("{ip}:{port}"),
        None => port.to_string(),
    };
    let from = field("from_ip").map(|ip| match (field("from_port"), ip.contains(':')) {
        (Some(p), true) if p != "0" => format!("[{ip}]:{p}"),
        (Some(p), false) if p != "0" => format!("{ip}:{p}"),
        _ => ip.to_string(),
    });
    let protocol = match field("protocol") {
        None | Some("tcp") => Protocol::Tcp,
        Some("udp") => Protocol::Udp,
        Some(other) => return Err(InputError(format!("protocol {other:?} is not tcp or udp"))),
    };
    Query::parse(&dest, from.as_deref(), protocol)
}

/// The daemon's side: answers `/api/explain` from the live table, the data path's dispatcher
/// (its affinity map, node-port filter and per-backend metrics) and the installed rules.
pub struct LiveExplainer {
    pub publisher: Arc<Publisher>,
    pub forward: Option<Arc<Shared>>,
    pub interception: Option<Arc<Interception>>,
    pub udp: bool,
    /// What a health-check node port of the table answers now (the health server's rule).
    pub health_check: Arc<HealthCheckRule>,
}

/// Status and local endpoints a health-check node port of a table answers with.
pub type HealthCheckRule = dyn Fn(&RoutingTable, u16) -> Option<(u16, usize)> + Send + Sync;

impl LiveExplainer {
    /// The JSON answer to one request's query string; a bad query is a 400 with its reason.
    pub fn answer(&self, query: Option<&str>) -> (StatusCode, String) {
        let q = match parse_query_string(query.unwrap_or_default()) {
            Ok(q) => q,
            Err(e) => return (StatusCode::BAD_REQUEST, e.0),
        };
        let table = self.publisher.current();
        // Without the TCP data path (a plain-listen test setup), a dispatcher of its own with
        // the rules' node-port addresses: no affinity entries, no counters to read.
        let own;
        let dispatcher = match &self.forward {
            Some(f) => &f.dispatch,
            None => {
                let np = self.interception.as_ref().map(|i| i.nodeport_addrs().clone()).unwrap_or_default();
                own = Dispatcher::new(self.publisher.handle(), np, Arc::new(MetricsRegistry::default()), OutlierPolicy::default());
                &own
            }
        };
        let live = LiveSources {
            interception: self.interception.as_deref(),
            metrics: dispatcher.metrics(),
            udp: self.udp,
            is_local: &is_local_address,
        };
        let health_check = |port: u16| (self.health_check)(&table, port);
        let report = report::explain(&q, &Sources { table: &table, dispatcher, health_check: &health_check, live: Some(live) });
        match serde_json::to_string(&report) {
            Ok(j) => (StatusCode::OK, j),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// Whether `ip` is an address of this network namespace: only those can be bound without
/// `IP_FREEBIND`/`IP_TRANSPARENT` (the kernel's own `fib daddr type local` answer).
fn is_local_address(ip: std::net::IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_gets_the_question_asked() {
        for (d, from, p) in [
            ("10.96.0.10:80", Some("10.0.0.5:4000"), Protocol::Tcp),
            ("[fd00::10]:53", Some("fd00::5"), Protocol::Udp),
            ("30080", None, Protocol::Tcp),
            ("30080", Some("[fd00::5]:1234"), Protocol::Tcp),
        ] {
            let q = Query::parse(d, from, p).unwrap_or_else(|e| panic!("{d}: {e}"));
            assert_eq!(parse_query_string(&query_string(&q)), Ok(q), "{d}");
        }
        assert!(parse_query_string("ip=10.0.0.1").is_err());
        assert!(parse_query_string("ip=10.0.0.1&port=80&protocol=sctp").is_err());
    }

    #[test]
    fn only_the_namespaces_own_addresses_are_local() {
        assert!(is_local_address(std::net::IpAddr::from([127, 0, 0, 1])));
        // TEST-NET-3: never assigned to a test machine.
        assert!(!is_local_address(std::net::IpAddr::from([203, 0, 113, 254])));
    }
}
