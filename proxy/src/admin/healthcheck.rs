//! `healthCheckNodePort` servers: one listener per port that a Local-policy Service asks for,
//! opened and closed as tables are published.
//!
//! kube-proxy's contract, which cloud load balancers probe: any path; 200 when this node has
//! ready local endpoints for the Service and the proxy itself is healthy, else 503; a JSON body
//! `{"service":{"namespace","name"},"localEndpoints":N,"serviceProxyHealthy":bool}` and the
//! header `X-Load-Balancing-Endpoint-Weight: N` (some load balancers weight nodes by it).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use controlplane::RoutingTable;
use hyper::StatusCode;
use hyper::header::HeaderValue;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use super::conns::ConnLimit;
use super::sockets::AdminSockets;
use super::healthz::ProxyHealth;
use super::http::{self, Body, Exec, Req, respond};

/// How often ports that failed to bind are tried again (kube-proxy retries too).
const RETRY: Duration = Duration::from_secs(5);

/// What one health-check node port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealth {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

/// Port → Service, from a table (pure). A Service with several ports or families shares one
/// health-check port; it reports its distinct local ready endpoint IPs across all ports (the
/// larger family's count for a dual-stack Service), as kube-proxy does.
pub fn desired(table: &RoutingTable) -> BTreeMap<u16, ServiceHealth> {
    let mut out: BTreeMap<u16, ServiceHealth> = BTreeMap::new();
    for fe in table.frontends() {
        let Some(port) = fe.health_check_node_port else { continue };
        let entry = out.entry(port).or_insert_with(|| ServiceHealth {
            namespace: fe.service.namespace.to_string(),
            name: fe.service.name.to_string(),
            local_endpoints: 0,
        });
        entry.local_endpoints = entry.local_endpoints.max(fe.service_local_endpoints);
    }
    out
}

/// What health-check node port `port` answers for `table` now: its status code and the local
/// endpoints it reports; `None` when no Service of the table asks for that port. For
/// `tpvs explain`, so it says what the server says.
pub fn status_of(table: &RoutingTable, port: u16, proxy_healthy: bool) -> Option<(u16, usize)> {
    let want = desired(table);
    let service = want.get(&port)?;
    Some((answer(Some(service), proxy_healthy).status().as_u16(), service.local_endpoints))
}

#[derive(Serialize)]
struct Name<'a> {
    namespace: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body_<'a> {
    service: Name<'a>,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

/// The answer on a health-check node port (any path, any method).
pub fn answer(service: Option<&ServiceHealth>, proxy_healthy: bool) -> hyper::Response<Body> {
    // A port whose Service just went away answers like a Service without endpoints until the
    // listener closes.
    let (namespace, name, n) = service.map_or(("", "", 0), |s| (s.namespace.as_str(), s.name.as_str(), s.local_endpoints));
    let body = Body_ { service: Name { namespace, name }, local_endpoints: n, service_proxy_healthy: proxy_healthy };
    let code = if n > 0 && proxy_healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut resp = respond(code, "application/json", serde_json::to_string(&body).unwrap_or_default());
    let h = resp.headers_mut();
    h.insert("X-Content-Type-Options", HeaderValue::from_static("nosniff"));
    h.insert("X-Load-Balancing-Endpoint-Weight", HeaderValue::from(n));
    resp
}

type Shared = Arc<RwLock<Arc<BTreeMap<u16, ServiceHealth>>>>;

/// Follows the published tables and keeps one listener per wanted port, until `sockets` is
/// released (a successor took the ports over): then every port stops accepting.
pub async fn run(mut tables: watch::Receiver<Arc<RoutingTable>>, health: Arc<ProxyHealth>, sockets: Arc<AdminSockets>) {
    let shared: Shared = Arc::default();
    // One cap for all the ports together: their number follows the table, the budget not.
    let limit = ConnLimit::new(crate::limits::NODE_PORT_CONNECTIONS, http::IDLE_TIMEOUT);
    sockets.track(&limit);
    let mut running: HashMap<u16, (SocketAddr, watch::Sender<bool>)> = HashMap::new();
    let mut retry = tokio::time::interval(RETRY);
    let mut released = sockets.released();
    let mut first = true;
    loop {
        if *released.borrow_and_update() {
            // Dropping the senders stops every port's server.
            return;
        }
        let want = Arc::new(desired(&tables.borrow_and_update()));
        *shared.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&want);
        running.retain(|port, (addr, stop)| {
            let keep = want.contains_key(port);
            if !keep {
                info!(port, "health-check node port closed");
                let _ = stop.send(true);
                sockets.closed(*addr);
            }
            keep
        });
        for (port, svc) in want.iter() {
            if running.contains_key(port) {
                continue;
            }
            match bind(&sockets, *port) {
                Ok(listener) => {
                    info!(port, service = %format!("{}/{}", svc.namespace, svc.name), "health-check node port open");
                    let (stop, stopped) = watch::channel(false);
                    let addr = listener.local_addr().unwrap_or_else(|_| SocketAddr::from((Ipv6Addr::UNSPECIFIED, *port)));
                    running.insert(*port, (addr, stop));
                    let (shared, health, port) = (Arc::clone(&shared), Arc::clone(&health), *port);
                    let handler: http::Handler = Arc::new(move |_req: &Req| {
                        let map = Arc::clone(&shared.read().unwrap_or_else(|p| p.into_inner()));
                        answer(map.get(&port), health.is_healthy())
                    });
                    tokio::spawn(http::serve(listener, handler, Exec::Inline, Arc::clone(&limit), stopped));
                }
                Err(e) => warn!(port, error = %e, "cannot open health-check node port; retrying"),
            }
        }
        if std::mem::take(&mut first) {
            // The first table's ports are open: what a predecessor handed over beyond them is
            // not this instance's to serve.
            let closed = sockets.close_unused();
            if closed > 0 {
                info!(closed, "closed admin sockets handed over but not served here");
            }
        }
        let all_bound = want.keys().all(|p| running.contains_key(p));
        tokio::select! {
            changed = tables.changed() => if changed.is_err() { return },
            _ = retry.tick(), if !all_bound => {}
            _ = released.changed() => {}
        }
    }
}

/// Dual-stack `[::]:port` when IPv6 is there, else `0.0.0.0:port`: the predecessor's socket
/// when it handed one over, else a new one ([`AdminSockets::listener`]).
fn bind(sockets: &AdminSockets, port: u16) -> std::io::Result<TcpListener> {
    let std = match sockets.listener(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
        Ok(l) => l,
        Err(_) => sockets.listener(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?,
    };
    TcpListener::from_std(std)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(n: usize) -> ServiceHealth {
        ServiceHealth { namespace: "default".into(), name: "web".into(), local_endpoints: n }
    }

    #[test]
    fn healthy_only_with_local_endpoints_and_a_healthy_proxy() {
        assert_eq!(answer(Some(&svc(2)), true).status(), StatusCode::OK);
        assert_eq!(answer(Some(&svc(0)), true).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer(Some(&svc(2)), false).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer(None, true).status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = answer(Some(&svc(3)), true);
        assert_eq!(r.headers().get("X-Load-Balancing-Endpoint-Weight").and_then(|v| v.to_str().ok()), Some("3"));
    }
}
