//! The one registered collector: the data path's and the control plane's counters, read at
//! scrape time (a fixed number of series; the table's families, which grow with the cluster,
//! are written as text by `table`).

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::{control_plane, data_path, spec};
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
        let mut out = Vec::with_capacity(spec::ALL.len());
        data_path::collect(&self.sources, &self.last_verdicts, &mut out);
        control_plane::collect(&self.sources, &mut out);
        out
    }
}
