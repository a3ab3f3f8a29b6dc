//! `/api/table`: the live routing table with its counters, as JSON, for `tpvs list` and
//! scripts. The same shape as `tpvs list --json` (see [`crate::list::JsonTable`]), so one
//! renderer serves both.

use controlplane::RoutingTable;

use crate::dispatch::telemetry::MetricsRegistry;
use crate::list::{JsonTable, json_view};

pub fn live_view(table: &RoutingTable, metrics: Option<&MetricsRegistry>) -> JsonTable {
    json_view(table, metrics)
}
