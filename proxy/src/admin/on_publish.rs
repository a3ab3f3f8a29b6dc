//! What every table publish drives on the admin side: the health policy (is the published
//! table's rules live?), the publish and sync metrics, and the table the health-check node
//! port servers follow.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use controlplane::RoutingTable;
use tokio::sync::watch;
use tracing::warn;

use super::Sources;
use super::healthz::ProxyHealth;
use super::metrics::Metrics;
use crate::netfilter::SyncStats;

/// Registers the listener; it runs after every publish, after the netfilter listener
/// registered earlier, so the sync it judges is the one for this table. Call before the
/// first publish.
pub fn register(sources: &Sources, health: Arc<ProxyHealth>, metrics: Arc<Metrics>, tables: watch::Sender<Arc<RoutingTable>>) {
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
        let in_line = rules_in_line(sync);
        metrics.publish.record(&publisher, table, sync, in_line, now);
        if in_line {
            health.updated(now);
        } else {
            warn!(generation = table.generation, "table published but its rules are not live; /healthz fails if this lasts");
            health.queued(now);
        }
        tables.send_replace(Arc::clone(table));
    });
}

/// The health policy: a published table is live unless the rules sync it triggered failed
/// (the old rules then stay in force, and the change stays pending). Without an interception
/// there are no rules to wait for.
fn rules_in_line(sync: Option<(SyncStats, SyncStats)>) -> bool {
    sync.is_none_or(|(before, after)| after.failures == before.failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_sync_leaves_the_table_pending() {
        let stats = |syncs, failures| SyncStats { syncs, failures, ..SyncStats::default() };
        assert!(rules_in_line(None));
        assert!(rules_in_line(Some((stats(1, 0), stats(2, 0)))));
        assert!(rules_in_line(Some((stats(1, 1), stats(1, 1)))), "no sync ran: still in line");
        assert!(!rules_in_line(Some((stats(1, 0), stats(2, 1)))));
    }
}
