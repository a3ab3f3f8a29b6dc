//! Metrics observed as events happen (once per table publish), not read at scrape: how long
//! compiling and syncing took, when they last happened, and the live generation.

use std::time::SystemTime;

use controlplane::{Publisher, RoutingTable};
use prometheus::{Gauge, Histogram, HistogramOpts, IntGauge, Opts, Registry};

use crate::netfilter::SyncStats;

/// Buckets of the sync and publish histograms, in seconds (kube-proxy's sync buckets:
/// exponential from 1 ms).
fn sync_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 15).unwrap_or_else(|_| vec![0.001, 0.01, 0.1, 1.0, 10.0])
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The families observed per publish (registered with the registry behind `/metrics`).
pub struct PublishMetrics {
    sync_duration: Histogram,
    sync_last_timestamp: Gauge,
    publish_duration: Histogram,
    last_publish_timestamp: Gauge,
    generation: IntGauge,
}

impl PublishMetrics {
    pub(super) fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = PublishMetrics {
            sync_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "kubeproxy_sync_proxy_rules_duration_seconds",
                    "Time to apply a routing table's rules to netfilter (one nft transaction).",
                )
                .buckets(sync_buckets()),
            )?,
            sync_last_timestamp: Gauge::with_opts(Opts::new(
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time the rules were successfully brought in line with the table (Unix seconds).",
            ))?,
            publish_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "tpvs_table_publish_duration_seconds",
                    "Time from a source change to the compiled table being stored (before the rules sync).",
                )
                .buckets(sync_buckets()),
            )?,
            last_publish_timestamp: Gauge::with_opts(Opts::new(
                "tpvs_table_last_publish_timestamp_seconds",
                "When the last routing table was published (Unix seconds).",
            ))?,
            generation: IntGauge::with_opts(Opts::new("tpvs_table_generation", "Generation of the live routing table."))?,
        };
        registry.register(Box::new(m.sync_duration.clone()))?;
        registry.register(Box::new(m.sync_last_timestamp.clone()))?;
        registry.register(Box::new(m.publish_duration.clone()))?;
        registry.register(Box::new(m.last_publish_timestamp.clone()))?;
        registry.register(Box::new(m.generation.clone()))?;
        Ok(m)
    }

    /// Records one publish of `table` at `now`. `sync` is the netfilter counters before and
    /// after the rules sync it triggered (none without an interception); `in_line` is whether
    /// that sync brought the rules in line, which stamps the last successful sync.
    pub fn record(
        &self,
        publisher: &Publisher,
        table: &RoutingTable,
        sync: Option<(SyncStats, SyncStats)>,
        in_line: bool,
        now: SystemTime,
    ) {
        self.generation.set(i64::try_from(table.generation).unwrap_or(i64::MAX));
        self.last_publish_timestamp.set(unix_seconds(now));
        if let Some((_, took)) = publisher.last_publish() {
            self.publish_duration.observe(took.as_secs_f64());
        }
        let Some((before, after)) = sync else { return };
        if after.syncs > before.syncs
            && let Some(d) = after.last_duration
        {
            self.sync_duration.observe(d.as_secs_f64());
        }
        if in_line {
            self.sync_last_timestamp.set(unix_seconds(now));
        }
    }
}
