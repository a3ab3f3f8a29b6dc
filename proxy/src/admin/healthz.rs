//! The proxy's own health, with kube-proxy's semantics (`/healthz`, `/livez` on `:10256`).
//!
//! kube-proxy is healthy while its rules follow its inputs: it remembers when it last applied
//! a change ("lastUpdated") and since when a change has been waiting ("oldest pending"); it is
//! unhealthy when a change has waited longer than a timeout (2 × its sync period). tpvs maps
//! that onto the table: a published table is a queued change, and it is applied once the
//! netfilter sync for it succeeded. A failed sync leaves the change pending (the old rules stay
//! in force), so a data path that keeps failing turns the node unhealthy after the timeout and
//! load balancers steer away, as they would from kube-proxy.
//!
//! Unlike kube-proxy, which answers healthy before its first sync, tpvs answers 503 until the
//! first table is live: a node that has not programmed a single Service must not receive
//! traffic from a load balancer.
//!
//! Like kube-proxy for a Node being deleted, a draining instance (SIGTERM with no successor:
//! it accepts no new connection) is not eligible: `/healthz` and the health-check node ports
//! answer 503 so load balancers steer away, while `/livez` stays 200 (the drain must not be
//! mistaken for a hang).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use hyper::StatusCode;
use hyper::header::HeaderValue;
use serde::Serialize;

use super::http::{Body, Req, not_found, respond};

/// kube-proxy prints a never-set time as Go's zero `time.Time`.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

#[derive(Debug, Default, Clone, Copy)]
struct State {
    /// When a table was last made live (rules applied).
    last_updated: Option<SystemTime>,
    /// The oldest published table not yet live.
    oldest_pending: Option<SystemTime>,
}

/// Tracks whether the rules follow the published tables.
#[derive(Debug)]
pub struct ProxyHealth {
    state: Mutex<State>,
    timeout: Duration,
    /// Set once the instance stops accepting (SIGTERM with no successor).
    draining: AtomicBool,
}

/// One evaluation of the health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The rules follow the published tables.
    pub healthy: bool,
    /// The node should get new traffic: false while draining.
    pub eligible: bool,
    pub last_updated: Option<SystemTime>,
    pub current_time: SystemTime,
}

impl ProxyHealth {
    pub fn new(timeout: Duration) -> Self {
        ProxyHealth { state: Mutex::new(State::default()), timeout, draining: AtomicBool::new(false) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A change was published and is waiting to be applied (kube-proxy's `QueuedUpdate`).
    pub fn queued(&self, now: SystemTime) {
        let mut s = self.lock();
        s.oldest_pending.get_or_insert(now);
    }

    /// Everything published so far is live (kube-proxy's `Updated`).
    pub fn updated(&self, now: SystemTime) {
        let mut s = self.lock();
        s.last_updated = Some(now);
        s.oldest_pending = None;
    }

    pub fn status(&self, now: SystemTime) -> Status {
        let s = *self.lock();
        let pending_too_long = s
            .oldest_pending
            .is_some_and(|since| now.duration_since(since).unwrap_or_default() >= self.timeout);
        Status {
            healthy: s.last_updated.is_some() && !pending_too_long,
            eligible: !self.draining.load(Ordering::Relaxed),
            last_updated: s.last_updated,
            current_time: now,
        }
    }

    /// This instance accepts no new connection any more: steer load balancers away.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the node should get new traffic (what `/healthz` and the health-check node
    /// ports report).
    pub fn is_healthy(&self) -> bool {
        let st = self.status(SystemTime::now());
        st.healthy && st.eligible
    }
}

fn rfc3339(t: Option<SystemTime>) -> String {
    t.and_then(|t| jiff::Timestamp::try_from(t).ok()).map_or_else(|| ZERO_TIME.to_string(), |t| t.to_string())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Healthz {
    last_updated: String,
    current_time: String,
    /// kube-proxy reports false while its Node is being deleted or drained by the
    /// autoscaler; tpvs reports false while it drains after SIGTERM (it does not watch the
    /// Node for that).
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
}

/// The `/healthz` and `/livez` routes (anything else: 404).
pub fn handle(health: &ProxyHealth, req: &Req) -> hyper::Response<Body> {
    let with_node = match req.path() {
        "/healthz" => true,
        "/livez" => false,
        _ => return not_found(),
    };
    let st = health.status(SystemTime::now());
    let body = Healthz {
        last_updated: rfc3339(st.last_updated),
        current_time: rfc3339(Some(st.current_time)),
        node_eligible: with_node.then_some(st.eligible),
    };
    let text = serde_json::to_string(&body).unwrap_or_default();
    let ok = st.healthy && (st.eligible || !with_node);
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut resp = respond(code, "application/json", text);
    resp.headers_mut().insert("X-Content-Type-Options", HeaderValue::from_static("nosniff"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn unhealthy_until_the_first_table_is_live() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        assert!(!h.status(at(0)).healthy);
        h.queued(at(0));
        assert!(!h.status(at(1)).healthy, "published but not applied yet");
        h.updated(at(1));
        assert!(h.status(at(2)).healthy);
    }

    #[test]
    fn a_change_pending_longer_than_the_timeout_is_unhealthy() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        h.updated(at(0));
        h.queued(at(10));
        assert!(h.status(at(69)).healthy, "pending, but within the timeout");
        // A later failure does not restart the clock: the oldest pending change counts.
        h.queued(at(50));
        assert!(!h.status(at(70)).healthy);
        h.updated(at(71));
        assert!(h.status(at(72)).healthy);
        assert_eq!(h.status(at(72)).last_updated, Some(at(71)));
    }

    #[test]
    fn body_has_kube_proxy_fields() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        let req = |p: &str| Req { method: hyper::Method::GET, uri: p.parse().unwrap_or_else(|e| panic!("{e}")), local: None };
        let r = handle(&h, &req("/healthz"));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        h.updated(SystemTime::now());
        assert_eq!(handle(&h, &req("/livez")).status(), StatusCode::OK);
        assert_eq!(handle(&h, &req("/other")).status(), StatusCode::NOT_FOUND);
        assert_eq!(rfc3339(None), ZERO_TIME);
        assert_eq!(handle(&h, &req("/healthz")).status(), StatusCode::OK);
        assert!(h.is_healthy());
        // Draining: not eligible for new traffic, but alive.
        h.drain();
        assert_eq!(handle(&h, &req("/healthz")).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(handle(&h, &req("/livez")).status(), StatusCode::OK);
        assert!(!h.is_healthy(), "health-check node ports answer 503 while draining");
        assert_eq!(rfc3339(Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1500))), "1970-01-01T00:00:01.5Z");
    }
}
