//! Publishing: one atomic store per table change; readers never block.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::{debug, info, warn};

use crate::error::Refusal;
use crate::index::ClusterIndex;
use crate::table::RoutingTable;

/// What the data plane holds: load the current table with `handle.load()` on every new
/// connection or flow (a few nanoseconds, no lock).
pub type TableHandle = Arc<ArcSwap<RoutingTable>>;

type Listener = Box<dyn Fn(&Arc<RoutingTable>) + Send + Sync>;

/// The single writer of a [`TableHandle`].
///
/// Listeners run after each store, on the publishing thread: the data plane uses one to
/// reprogram its netfilter rules for the new set of frontends.
pub struct Publisher {
    handle: TableHandle,
    generation: AtomicU64,
    listeners: Mutex<Vec<Listener>>,
    last_publish: Mutex<Option<(Instant, Duration)>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("generation", &self.generation.load(Ordering::Relaxed)).finish()
    }
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

impl Publisher {
    /// Starts with an empty table at generation 0 (nothing is published until a source has
    /// completed its first full load).
    pub fn new() -> Self {
        Publisher {
            handle: Arc::new(ArcSwap::from_pointee(RoutingTable::default())),
            generation: AtomicU64::new(0),
            listeners: Mutex::new(Vec::new()),
            last_publish: Mutex::new(None),
        }
    }

    pub fn handle(&self) -> TableHandle {
        Arc::clone(&self.handle)
    }

    /// The table currently live.
    pub fn current(&self) -> Arc<RoutingTable> {
        self.handle.load_full()
    }

    /// Generation of the last published table (0 = nothing published yet).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Registers a callback run after every publish.
    pub fn on_publish(&self, listener: impl Fn(&Arc<RoutingTable>) + Send + Sync + 'static) {
        let mut l = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        l.push(Box::new(listener));
    }

    /// Stamps `table` with the next generation, stores it, and tells the listeners.
    /// `build_started` is when the change that led here began compiling (for the
    /// publish-duration metric).
    pub fn publish(&self, mut table: RoutingTable, build_started: Instant) -> Arc<RoutingTable> {
        let generation = self.generation.load(Ordering::Acquire) + 1;
        table.generation = generation;
        let table = Arc::new(table);
        self.handle.store(Arc::clone(&table));
        self.generation.store(generation, Ordering::Release);
        let took = build_started.elapsed();
        *self.last_publish.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), took));
        let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        for l in listeners.iter() {
            l(&table);
        }
        table
    }

    /// When the last publish happened and how long its compile+store took.
    pub fn last_publish(&self) -> Option<(Instant, Duration)> {
        *self.last_publish.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// At which level [`build_and_publish`] logs its "routing table published" line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PublishLog {
    /// Publishes that follow a person's edit (the manifests source): rare, worth seeing.
    Info,
    /// Publishes that follow the cluster (the API source): up to ten a second in a rollout, so
    /// only visible when asked for.
    Debug,
    /// The caller logs a line of its own instead (the API source's initial sync).
    Caller,
}

/// What both sources do once their index holds a change: build the table, report what it refused,
/// publish it, and log one summary line. `build_started` is when the change began being
/// processed; the publisher's duration metric and the line's `took_us` both count from it.
pub(crate) fn build_and_publish(
    index: &mut ClusterIndex,
    publisher: &Publisher,
    build_started: Instant,
    log: PublishLog,
) -> Arc<RoutingTable> {
    let (table, _) = index.build();
    // Logged when a refusal appears and when it clears, not on every rebuild it persists
    // through: a Service that lost a conflict is retried on every change, which in a busy
    // cluster is several times a second.
    let before = publisher.current();
    let (appeared, cleared) = refusal_changes(before.refused(), table.refused());
    for r in appeared {
        warn!(error = %r, reason = r.reason(), "frontend refused");
    }
    for r in cleared {
        info!(was = %r, "frontend no longer refused");
    }
    let table = publisher.publish(table, build_started);
    let took_us = build_started.elapsed().as_micros() as u64;
    match log {
        PublishLog::Info => {
            info!(generation = table.generation, frontends = table.len(), took_us, "routing table published");
        }
        PublishLog::Debug => {
            debug!(generation = table.generation, frontends = table.len(), took_us, "routing table published");
        }
        PublishLog::Caller => {}
    }
    table
}

/// The refusals in `now` that `before` did not have, and those of `before` that are gone.
fn refusal_changes<'a>(before: &'a [Refusal], now: &'a [Refusal]) -> (Vec<&'a Refusal>, Vec<&'a Refusal>) {
    let (was, is): (HashSet<&Refusal>, HashSet<&Refusal>) = (before.iter().collect(), now.iter().collect());
    (now.iter().filter(|r| !was.contains(r)).collect(), before.iter().filter(|r| !is.contains(r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FrontendConflict;

    fn conflict(loser: &str) -> Refusal {
        FrontendConflict { frontend: "TCP 10.96.0.1:80".into(), winner: "t/a".into(), loser: loser.into() }.into()
    }

    #[test]
    fn a_refusal_is_reported_when_it_appears_and_when_it_clears_not_while_it_lasts() {
        let (b, c, d) = (conflict("t/b"), conflict("t/c"), conflict("t/d"));
        let before = [b.clone(), c.clone()];
        let now = [c.clone(), d.clone()];
        assert_eq!(refusal_changes(&before, &now), (vec![&d], vec![&b]));
        assert_eq!(refusal_changes(&now, &now), (vec![], vec![]), "a lasting refusal is not logged again");
    }
}
