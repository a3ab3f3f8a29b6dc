//! The one registered collector: everything read at scrape time, delegated to the table, data
//! path and control plane readers in the order their families were always gathered.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::{control_plane, data_path, spec, table};
use crate::admin::Sources;
use crate::netfilter::VerdictCounts;

/// Reads every live counter when scraped.
pub(super) struct ScrapeCollector {
    sources: Sources,
    descs: Vec<Desc>,
    /// Last kernel refusal counts read, reported again when a read fails (counters must not
    /// go backwards because `nft` was briefly unavailable).
    last_verdicts: Mutex<VerdictCounts>,
}

impl ScrapeCollector {
    pub(super) fn new(sources: Sources) -> prometheus::Result<Self> {
        let descs = spec::ALL
            .iter()
            .map(|s| Desc::new(s.name.to_string(), s.help.to_string(), s.labels.iter().map(|l| l.to_string()).collect(), HashMap::new()))
            .collect::<prometheus::Result<Vec<_>>>()?;
        Ok(ScrapeCollector { sources, descs, last_verdicts: Mutex::default() })
    }
}

impl Collector for ScrapeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let table = self.sources.publisher.current();
        let mut out = Vec::with_capacity(spec::ALL.len());
        let metrics = self.sources.forward.as_ref().map(|f| f.dispatch.metrics().as_ref());
        table::collect(&table, metrics, &mut out);
        data_path::collect(&self.sources, &self.last_verdicts, &mut out);
        control_plane::collect(&self.sources, &mut out);
        out
    }
}
