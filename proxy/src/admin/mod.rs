//! The admin side of `tpvs run`, at kube-proxy's addresses:
//!
//! - `--metrics-bind-address` (127.0.0.1:10249): `/metrics` ([`metrics`]), `/proxyMode`
//!   ("tpvs"), `/api/table` (the live table with counters, read by `tpvs list`; its
//!   schema is [`crate::view`]) and `/api/explain` (`tpvs explain`'s answer, see
//!   [`crate::explain`]). Both are unauthenticated, so they are answered only on
//!   connections to a loopback address; a metrics address off loopback gets a second listener
//!   on 127.0.0.1 at the same port for it.
//! - `--healthz-bind-address` (0.0.0.0:10256): `/healthz` and `/livez` ([`healthz`]).
//! - one server per `healthCheckNodePort` ([`healthcheck`]), opened and closed with the table.
//!
//! Two threads, each with its own small runtime, neither shared with the data path (per-core
//! single-threaded loops that must never run admin work): `tpvs-health` serves the health
//! server and the health-check node ports, `tpvs-metrics` the metrics server. A slow scrape,
//! a flood of scrapes or a loaded data path never delays a probe. [`http`] is the shared
//! bare-bones HTTP/1 server, [`conns`] its connection caps (idle clients are closed, and
//! evicted first at a cap); [`on_publish`] moves health and metrics along with every
//! published table; [`sockets`] holds the listeners a hand-over passes to a successor.

pub mod conns;
pub mod healthcheck;
pub mod healthz;
pub mod http;
pub mod metrics;
pub mod on_publish;
pub mod sockets;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use controlplane::{KubeSourceStats, Publisher, SourceStats};
use hyper::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::cli::AdminArgs;
use crate::forward::Shared;
use crate::limits;
use crate::netfilter::Interception;
use crate::listeners::Gate;
use conns::ConnLimit;
use healthz::ProxyHealth;
pub use sockets::AdminSockets;
use http::{Exec, Handler, Req, not_found, respond};

/// What `/proxyMode` answers (kube-proxy answers "iptables", "ipvs" or "nftables").
pub const PROXY_MODE: &str = "tpvs";

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

/// Binds the admin servers (failing start-up when an address is taken) or takes them from
/// `sockets` (a predecessor's), registers the publish listener that drives health and sync
/// metrics (call before the first publish), and starts the admin threads, which serve once
/// `gate` opens (a successor: once the predecessor let go). The servers stop accepting when
/// `sockets` is released (a successor took them); the bound addresses are logged here.
pub fn start(args: &AdminArgs, sources: Sources, sockets: Arc<AdminSockets>, gate: Gate) -> anyhow::Result<Arc<ProxyHealth>> {
    let health = Arc::new(ProxyHealth::new(args.healthz_pending_timeout));
    let returned = Arc::clone(&health);
    let metrics = Arc::new(metrics::Metrics::new(sources.clone(), args.metrics_max_backends).context("registering metrics")?);
    let (tables_tx, tables_rx) = watch::channel(sources.publisher.current());

    on_publish::register(&sources, Arc::clone(&health), Arc::clone(&metrics), tables_tx);

    let metrics_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Scrapes read the rules' counters through `nft`: a few blocking threads at most.
        .max_blocking_threads(4)
        .thread_name("tpvs-metrics-blocking")
        .build()
        .context("metrics runtime")?;
    let health_runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("health runtime")?;
    let bind = |addr: Option<SocketAddr>, what: &str, runtime: &tokio::runtime::Runtime| -> anyhow::Result<Option<TcpListener>> {
        let Some(addr) = addr else { return Ok(None) };
        let std = sockets.listener(addr).with_context(|| format!("binding the {what} server on {addr}"))?;
        let _guard = runtime.enter();
        Ok(Some(TcpListener::from_std(std).context("registering the listener")?))
    };
    let metrics_listener = bind(args.metrics_bind_address.0, "metrics", &metrics_runtime)?;
    // `/api/table` is served on loopback only; a metrics address off loopback gets a twin on
    // 127.0.0.1 for it (and for `tpvs list`'s default address).
    let table_listener =
        bind(loopback_twin(args.metrics_bind_address.0), "loopback /api/table (for a metrics address off loopback)", &metrics_runtime)?;
    let healthz_listener = bind(args.healthz_bind_address.0, "healthz", &health_runtime)?;
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let table_addr = table_listener.as_ref().and_then(|l| l.local_addr().ok());
    let healthz_addr = healthz_listener.as_ref().and_then(|l| l.local_addr().ok());

    let (publisher, forward) = (Arc::clone(&sources.publisher), sources.forward.clone());
    let (health_gate, health_sockets) = (gate.clone(), Arc::clone(&sockets));
    let explainer = Arc::new(crate::explain::LiveExplainer {
        publisher: Arc::clone(&sources.publisher),
        forward: sources.forward.clone(),
        interception: sources.interception.clone(),
        udp: sources.udp.is_some(),
        health_check: {
            let h = Arc::clone(&health);
            Arc::new(move |table: &controlplane::RoutingTable, port: u16| healthcheck::status_of(table, port, h.is_healthy()))
        },
    });
    std::thread::Builder::new()
        .name("tpvs-health".into())
        .spawn(move || {
            health_gate.wait();
            health_runtime.block_on(async move {
                let stop = health_sockets.released();
                if let Some(l) = healthz_listener {
                    let h = Arc::clone(&health);
                    let handler: Handler = Arc::new(move |req: &Req| healthz::handle(&h, req));
                    let limit = ConnLimit::new(limits::HEALTH_CONNECTIONS, http::IDLE_TIMEOUT);
                    health_sockets.track(&limit);
                    tokio::spawn(http::serve(l, handler, Exec::Inline, limit, stop.clone()));
                }
                healthcheck::run(tables_rx, health, health_sockets).await;
                // Released: the runtime stays, so the connections already accepted finish.
                std::future::pending::<()>().await;
            });
        })
        .context("starting the health thread")?;
    if metrics_listener.is_some() || table_listener.is_some() {
        std::thread::Builder::new()
            .name("tpvs-metrics".into())
            .spawn(move || {
                gate.wait();
                metrics_runtime.block_on(async move {
                    let stop = sockets.released();
                    let (m, p) = (Arc::clone(&metrics), Arc::clone(&publisher));
                    let backend_metrics = forward.as_ref().map(|f| Arc::clone(f.dispatch.metrics()));
                    let handler: Handler =
                        Arc::new(move |req: &Req| metrics_routes(&m, &p, backend_metrics.as_deref(), Some(&explainer), req));
                    let mut servers = Vec::new();
                    for l in [metrics_listener, table_listener].into_iter().flatten() {
                        let limit = ConnLimit::new(limits::METRICS_CONNECTIONS, http::IDLE_TIMEOUT);
                        sockets.track(&limit);
                        servers.push(tokio::spawn(http::serve(l, Arc::clone(&handler), Exec::Blocking, limit, stop.clone())));
                    }
                    for s in servers {
                        let _ = s.await;
                    }
                    std::future::pending::<()>().await;
                });
            })
            .context("starting the metrics thread")?;
    }
    if let Some(a) = metrics_addr {
        info!(addr = %a, "metrics server listening (/metrics, /proxyMode; /api/table from loopback only)");
    }
    if let Some(a) = table_addr {
        info!(addr = %a, "table server listening (/api/table, /metrics, /proxyMode)");
    }
    if let Some(a) = healthz_addr {
        info!(addr = %a, "health server listening (/healthz, /livez)");
    }
    // The caller marks a drain on it.
    Ok(returned)
}

fn metrics_routes(
    m: &Arc<metrics::Metrics>,
    publisher: &Publisher,
    backend_metrics: Option<&crate::dispatch::telemetry::MetricsRegistry>,
    explainer: Option<&crate::explain::LiveExplainer>,
    req: &Req,
) -> hyper::Response<http::Body> {
    match req.path() {
        "/metrics" => {
            let m = Arc::clone(m);
            http::respond_streaming(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", move |sink| {
                m.render_to(&mut |chunk| sink(bytes::Bytes::from(chunk)));
                // A scrape of a large table allocates on whichever blocking thread ran it.
                crate::limits::release_free_memory();
            })
        }
        "/proxyMode" => respond(StatusCode::OK, "text/plain; charset=utf-8", PROXY_MODE),
        // The whole table, unauthenticated: never off the node.
        "/api/table" if !req.local.is_some_and(is_loopback) => not_found(),
        // `tpvs explain` against the daemon: as private as the table it reads.
        "/api/explain" if !req.local.is_some_and(is_loopback) => not_found(),
        "/api/explain" => match explainer {
            Some(e) => {
                let (status, body) = e.answer(req.uri.query());
                respond(status, "application/json", body)
            }
            None => not_found(),
        },
        "/api/table" => {
            let view = crate::view::json_view(&publisher.current(), backend_metrics);
            respond(StatusCode::OK, "application/json", serde_json::to_string(&view).unwrap_or_default())
        }
        _ => not_found(),
    }
}

/// The loopback address on the metrics port, when the metrics address itself is neither
/// loopback nor a wildcard (a wildcard listener already answers on loopback).
fn loopback_twin(metrics: Option<SocketAddr>) -> Option<SocketAddr> {
    let addr = metrics?;
    if is_loopback(addr) || addr.ip().is_unspecified() {
        return None;
    }
    Some(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, addr.port())))
}

/// Loopback, including IPv4 loopback reached through a dual-stack `[::]` listener.
fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// A listener bound with `SO_REUSEPORT`, so an instance taking over from one that did not hand
/// its admin sockets over (an older version) binds beside it.
pub(crate) fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking().cloexec(), None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, local: &str) -> Req {
        Req { method: hyper::Method::GET, uri: path.parse().unwrap_or_else(|e| panic!("{e}")), local: local.parse().ok() }
    }

    #[test]
    fn the_table_is_served_on_loopback_only() {
        let m = Arc::new(
            metrics::Metrics::new(
                Sources { publisher: Arc::new(Publisher::new()), interception: None, forward: None, manifests: None, kube: None, udp: None },
                1000,
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let p = Publisher::new();
        let status = |path: &str, local: &str| metrics_routes(&m, &p, None, None, &req(path, local)).status();
        assert_eq!(status("/api/table", "127.0.0.1:10249"), StatusCode::OK);
        assert_eq!(status("/api/table", "[::1]:10249"), StatusCode::OK);
        assert_eq!(status("/api/table", "[::ffff:127.0.0.1]:10249"), StatusCode::OK);
        assert_eq!(status("/api/table", "10.0.0.1:10249"), StatusCode::NOT_FOUND);
        assert_eq!(status("/api/table", "none"), StatusCode::NOT_FOUND);
        assert_eq!(status("/proxyMode", "10.0.0.1:10249"), StatusCode::OK);
    }

    #[test]
    fn a_metrics_address_off_loopback_gets_a_loopback_twin_for_the_table() {
        let twin = |a: &str| loopback_twin(a.parse().ok()).map(|s| s.to_string());
        assert_eq!(twin("10.0.0.1:10249").as_deref(), Some("127.0.0.1:10249"));
        assert_eq!(twin("[fd00::1]:9000").as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(twin("127.0.0.1:10249"), None);
        assert_eq!(twin("0.0.0.0:10249"), None);
        assert_eq!(twin("[::]:10249"), None);
        assert_eq!(loopback_twin(None), None);
    }
}
