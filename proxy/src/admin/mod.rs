//! The admin side of `tpvs run`, at kube-proxy's addresses:
//!
//! - `--metrics-bind-address` (127.0.0.1:10249): `/metrics` ([`metrics`]), `/proxyMode`
//!   ("tpvs"), and `/api/table` (the live table with counters, read by `tpvs list`; [`api`]).
//! - `--healthz-bind-address` (0.0.0.0:10256): `/healthz` and `/livez` ([`healthz`]).
//! - one server per `healthCheckNodePort` ([`healthcheck`]), opened and closed with the table.
//!
//! All of it runs on one thread with its own small runtime: the data path's workers are
//! per-core single-threaded loops that must never run admin work, and a slow scrape must never
//! delay a connection. [`http`] is the shared bare-bones HTTP/1 server.

pub mod api;
pub mod healthcheck;
pub mod healthz;
pub mod http;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Args;
use controlplane::{KubeSourceStats, Publisher, RoutingTable, SourceStats};
use hyper::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::forward::Shared;
use crate::netfilter::{Interception, SyncStats};
use crate::units::parse_duration;
use healthz::ProxyHealth;
use http::{Exec, Handler, Req, not_found, respond};

/// What `/proxyMode` answers (kube-proxy answers "iptables", "ipvs" or "nftables").
pub const PROXY_MODE: &str = "tpvs";

/// The admin flags (kube-proxy's names).
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Address of the metrics server (`/metrics`, `/proxyMode`, `/api/table`); empty disables it.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:10249", value_parser = parse_bind)]
    pub metrics_bind_address: BindAddress,
    /// Address of the health server (`/healthz`, `/livez`); empty disables it.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:10256", value_parser = parse_bind)]
    pub healthz_bind_address: BindAddress,
    /// `/healthz` fails when a published table has waited this long for its rules (kube-proxy
    /// uses twice its sync period).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub healthz_pending_timeout: Duration,
}

/// A server address, or none (the flag set to "") to turn that server off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddress(pub Option<SocketAddr>);

fn parse_bind(s: &str) -> Result<BindAddress, String> {
    if s.is_empty() {
        return Ok(BindAddress(None));
    }
    s.parse().map(|a| BindAddress(Some(a))).map_err(|e| format!("{s:?}: expected IP:PORT ({e})"))
}

/// Everything the admin endpoints read.
#[derive(Clone)]
pub struct Sources {
    pub publisher: Arc<Publisher>,
    pub interception: Option<Arc<Interception>>,
    pub forward: Option<Arc<Shared>>,
    pub manifests: Option<Arc<SourceStats>>,
    pub kube: Option<Arc<KubeSourceStats>>,
    pub udp: Option<Arc<crate::udp::UdpShared>>,
}

/// The running admin thread.
#[derive(Debug)]
pub struct Admin {
    pub metrics_addr: Option<SocketAddr>,
    pub healthz_addr: Option<SocketAddr>,
    pub health: Arc<ProxyHealth>,
}

/// Binds the admin servers (failing start-up when an address is taken), registers the
/// publish listener that drives health and sync metrics (call before the first publish), and
/// starts the admin thread.
pub fn start(args: &AdminArgs, sources: Sources) -> anyhow::Result<Admin> {
    let health = Arc::new(ProxyHealth::new(args.healthz_pending_timeout));
    let metrics = Arc::new(metrics::Metrics::new(sources.clone()).context("registering metrics")?);
    let (tables_tx, tables_rx) = watch::channel(sources.publisher.current());

    register_listener(&sources, Arc::clone(&health), Arc::clone(&metrics), tables_tx);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Scrapes read the rules' counters through `nft`: a few blocking threads at most.
        .max_blocking_threads(4)
        .thread_name("tpvs-admin-blocking")
        .build()
        .context("admin runtime")?;
    let bind = |addr: Option<SocketAddr>, what: &str| -> anyhow::Result<Option<TcpListener>> {
        let Some(addr) = addr else { return Ok(None) };
        let std = std::net::TcpListener::bind(addr).with_context(|| format!("binding the {what} server on {addr}"))?;
        std.set_nonblocking(true).context("non-blocking listener")?;
        let _guard = runtime.enter();
        Ok(Some(TcpListener::from_std(std).context("registering the listener")?))
    };
    let metrics_listener = bind(args.metrics_bind_address.0, "metrics")?;
    let healthz_listener = bind(args.healthz_bind_address.0, "healthz")?;
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let healthz_addr = healthz_listener.as_ref().and_then(|l| l.local_addr().ok());

    let (health2, publisher, forward) = (Arc::clone(&health), Arc::clone(&sources.publisher), sources.forward.clone());
    std::thread::Builder::new()
        .name("tpvs-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                // Never signalled: the servers live as long as the process.
                let (_keep, stop) = watch::channel(false);
                if let Some(l) = metrics_listener {
                    let (m, p) = (Arc::clone(&metrics), Arc::clone(&publisher));
                    let backend_metrics = forward.as_ref().map(|f| Arc::clone(f.dispatch.metrics()));
                    let handler: Handler = Arc::new(move |req: &Req| metrics_routes(&m, &p, backend_metrics.as_deref(), req));
                    tokio::spawn(http::serve(l, handler, Exec::Blocking, stop.clone()));
                }
                if let Some(l) = healthz_listener {
                    let h = Arc::clone(&health2);
                    let handler: Handler = Arc::new(move |req: &Req| healthz::handle(&h, req));
                    tokio::spawn(http::serve(l, handler, Exec::Inline, stop.clone()));
                }
                healthcheck::run(tables_rx, health2).await;
            });
        })
        .context("starting the admin thread")?;
    if let Some(a) = metrics_addr {
        info!(addr = %a, "metrics server listening (/metrics, /proxyMode, /api/table)");
    }
    if let Some(a) = healthz_addr {
        info!(addr = %a, "health server listening (/healthz, /livez)");
    }
    Ok(Admin { metrics_addr, healthz_addr, health })
}

fn metrics_routes(
    m: &metrics::Metrics,
    publisher: &Publisher,
    backend_metrics: Option<&crate::dispatch::telemetry::MetricsRegistry>,
    req: &Req,
) -> hyper::Response<http::Body> {
    match req.path() {
        "/metrics" => respond(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", m.render()),
        "/proxyMode" => respond(StatusCode::OK, "text/plain; charset=utf-8", PROXY_MODE),
        "/api/table" => {
            let view = api::live_view(&publisher.current(), backend_metrics);
            respond(StatusCode::OK, "application/json", serde_json::to_string(&view).unwrap_or_default())
        }
        _ => not_found(),
    }
}

/// After every publish (and after the netfilter listener, registered earlier): health, sync
/// and publish metrics, and the health-check servers' view of the table.
fn register_listener(
    sources: &Sources,
    health: Arc<ProxyHealth>,
    metrics: Arc<metrics::Metrics>,
    tables: watch::Sender<Arc<RoutingTable>>,
) {
    let weak = Arc::downgrade(&sources.publisher);
    let interception = sources.interception.clone();
    let seen: Mutex<SyncStats> = Mutex::new(interception.as_ref().map(|i| i.stats()).unwrap_or_default());
    sources.publisher.on_publish(move |table| {
        // Weak: the publisher owns this listener, a strong reference would be a cycle.
        let Some(publisher) = weak.upgrade() else { return };
        let sync = interception.as_ref().map(|i| {
            let after = i.stats();
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            let before = std::mem::replace(&mut *seen, after);
            (before, after)
        });
        let now = SystemTime::now();
        if metrics::after_publish(&metrics.publish, &publisher, table, sync) {
            health.updated(now);
        } else {
            warn!(generation = table.generation, "table published but its rules are not live; /healthz fails if this lasts");
            health.queued(now);
        }
        tables.send_replace(Arc::clone(table));
    });
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    fn run_args(extra: &[&str]) -> crate::run::RunArgs {
        let mut argv = vec!["tpvs", "run", "--manifests", "m.yaml"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Run(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn admin_flags_default_to_kube_proxys_addresses_and_empty_turns_a_server_off() {
        let a = run_args(&[]).admin;
        assert_eq!(a.metrics_bind_address.0.map(|s| s.to_string()).as_deref(), Some("127.0.0.1:10249"));
        assert_eq!(a.healthz_bind_address.0.map(|s| s.to_string()).as_deref(), Some("0.0.0.0:10256"));
        let a = run_args(&["--metrics-bind-address", "", "--healthz-bind-address", "[::1]:1"]).admin;
        assert_eq!(a.metrics_bind_address.0, None);
        assert_eq!(a.healthz_bind_address.0.map(|s| s.to_string()).as_deref(), Some("[::1]:1"));
        let mut argv = vec!["tpvs", "run", "--metrics-bind-address", "nonsense"];
        argv.push("--manifests");
        argv.push("m.yaml");
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn list_flags_parse() {
        match Cli::try_parse_from(["tpvs", "list", "--rate", "--server", "127.0.0.1:1"]).map(|c| c.command) {
            Ok(Command::List(a)) => assert!(a.rate && !a.stats && a.table.manifests.is_none()),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["tpvs", "list", "--rate", "--manifests", "x"]).is_err(), "rates need the daemon");
    }
}
