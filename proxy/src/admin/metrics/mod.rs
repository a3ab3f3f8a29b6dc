//! Prometheus metrics, read at scrape time.
//!
//! Nothing on the data path knows about Prometheus: connections update the per-backend atomics
//! they already own (`schedulers::BackendStats`), and a collector walks the live
//! routing table when `/metrics` is scraped. So there is no per-connection label lookup, and a
//! backend that leaves the table leaves the metrics with it.
//!
//! # Names
//!
//! kube-proxy's names where they mean the same thing (`kubeproxy_sync_proxy_rules_*`,
//! `kubeproxy_network_programming_duration_seconds`), `tpvs_*` for the rest.
//!
//! # Label cardinality
//!
//! Bounded by the routing table, never by traffic: no client address, no connection id.
//! - per backend (`namespace`, `service`, `port`, `backend`): one series set per endpoint of
//!   each Service port proxied by this node; `scheduler`, `reason`, `direction` multiply that
//!   by at most 1, 4 and 2. A backend address shared by two Services (the same pod port
//!   selected twice) shares its counters, and is reported under each Service.
//! - per Service port (`namespace`, `service`, `port`, `traffic_policy`): a few series each.
//! - everything else has fixed labels.
//!
//! Each endpoint costs 28 series (17 of them the connect histogram): on a cluster with 10 000
//! endpoints a node exports about 280 000; `deploy/prometheus/README.md` shows how to drop the
//! per-backend histogram at scrape time when that is too many.

//! # Files
//!
//! `spec` names every scrape-time family; `exposition` builds families for the text format;
//! the `collector` reads the routing table (`table`), the data path (`data_path`) and the table
//! sources (`control_plane`); `publish` holds what is observed once per publish.

mod collector;
mod control_plane;
mod data_path;
mod exposition;
mod publish;
mod spec;
mod table;

use prometheus::{Encoder as _, Registry, TextEncoder};
use tracing::debug;

use super::Sources;
pub use publish::PublishMetrics;

/// The registry behind `/metrics`.
pub struct Metrics {
    registry: Registry,
    pub publish: PublishMetrics,
}

impl Metrics {
    pub fn new(sources: Sources) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let publish = PublishMetrics::new(&registry)?;
        registry.register(Box::new(collector::ScrapeCollector::new(sources)?))?;
        Ok(Metrics { registry, publish })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut out = Vec::with_capacity(64 * 1024);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            debug!(error = %e, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
