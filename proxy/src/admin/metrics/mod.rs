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
//! - per worker (`worker`): 3 series per TCP worker (`--workers`).
//! - everything else has fixed labels.
//!
//! Each endpoint costs about 30 series (17 of them the connect histogram), so per-backend
//! series are kept only for the `--metrics-max-backends` busiest backends (1000 by default);
//! the per-Service-port families (`tpvs_service_*`) sum every backend. The table's families are
//! written as text in bounded chunks (`text`), never built whole.

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
mod text;

use prometheus::{Encoder as _, Registry, TextEncoder};
use tracing::debug;

use super::Sources;
pub use publish::PublishMetrics;

/// Everything behind `/metrics`: the registry (fixed-size families) and the table's families,
/// written as text.
pub struct Metrics {
    registry: Registry,
    sources: Sources,
    max_backends: usize,
    pub publish: PublishMetrics,
}

impl Metrics {
    pub fn new(sources: Sources, max_backends: usize) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let publish = PublishMetrics::new(&registry)?;
        registry.register(Box::new(collector::ScrapeCollector::new(sources.clone())?))?;
        Ok(Metrics { registry, sources, max_backends, publish })
    }

    /// The text exposition format, handed to `sink` in chunks of about 64 KiB as it is
    /// written: a scrape holds one chunk at a time, however large the table.
    pub fn render_to(&self, sink: &mut dyn FnMut(String)) {
        let mut w = text::TextWriter::new(sink);
        let table = self.sources.publisher.current();
        let backend_metrics = self.sources.forward.as_ref().map(|f| f.dispatch.metrics().as_ref());
        table::write(&table, backend_metrics, self.max_backends, &mut w);
        let families = self.registry.gather();
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            debug!(error = %e, "encoding metrics");
        }
        w.raw(&String::from_utf8_lossy(&out));
    }

    /// The whole exposition as one string (tests, and callers that want it whole).
    pub fn render(&self) -> String {
        let mut all = String::new();
        self.render_to(&mut |chunk| all.push_str(&chunk));
        all
    }
}
