//! Watch events applied to the [`ClusterIndex`], with the list/relist bookkeeping.
//!
//! Pure (no I/O, no clock of its own): the run loop feeds it received events and asks it when
//! a table may be built. Two rules live here:
//! - nothing may be published until every watched resource has completed its first list;
//! - on a relist (after 410 Gone, or a list retried after an error), objects are upserted as
//!   they arrive but removed only when that list completes: until then the index still holds
//!   the objects the old list had, so forwarding never sees a half-listed cluster.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use rustc_hash::FxHashSet;
use tracing::{debug, info, warn};

use super::stats::KubeSourceStats;
use super::watch::{Gone, Object, Received, Update, Watched};
use crate::index::ClusterIndex;
use crate::model::ObjectKey;

/// Keys seen by a list in progress.
#[derive(Debug)]
enum Seen {
    Services(FxHashSet<ObjectKey>),
    Slices(FxHashSet<ObjectKey>),
    Node(bool),
}

#[derive(Debug, Default)]
struct ListState {
    /// `Some` between a list's start and its completion.
    listing: Option<Seen>,
    /// Whether a list of this resource ever completed.
    synced: bool,
    started: bool,
}

/// Changes applied but not yet published.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Receipt times of the events that changed something (after the first publish only: the
    /// initial list is not a change anyone waits for).
    pub received: Vec<Instant>,
    /// Trigger times of the slices that changed.
    pub triggers: Vec<SystemTime>,
}

#[derive(Debug)]
pub(crate) struct Applier {
    pub index: ClusterIndex,
    lists: [ListState; 3],
    pub pending: Pending,
    published_once: bool,
    /// Trigger times older than this are not counted: like kube-proxy, the changes made before
    /// the proxy started are not network programming it did late.
    started_wall: SystemTime,
    stats: Arc<KubeSourceStats>,
}

impl Applier {
    pub fn new(index: ClusterIndex, watch_node: bool, stats: Arc<KubeSourceStats>) -> Self {
        let mut lists: [ListState; 3] = Default::default();
        if !watch_node {
            // Without a node name there is no Node to wait for.
            lists[Watched::Node.slot()].synced = true;
        }
        Applier {
            index,
            lists,
            pending: Pending::default(),
            published_once: false,
            started_wall: SystemTime::now(),
            stats,
        }
    }

    /// Every resource has completed its first list.
    pub fn synced(&self) -> bool {
        self.lists.iter().all(|l| l.synced)
    }

    /// Whether a build now would publish something: changes, or the first table.
    pub fn wants_publish(&self) -> bool {
        self.synced() && (self.index.has_changes() || !self.published_once)
    }

    /// Called after each publish.
    pub fn published(&mut self) {
        self.published_once = true;
    }

    pub fn apply(&mut self, msg: Received) {
        self.stats.events_total.fetch_add(1, Ordering::Relaxed);
        match msg.update {
            Update::ListStarted(what) => self.list_started(what),
            Update::Listed(object) => {
                self.mark_seen(&object);
                self.apply_object(object, msg.at);
            }
            Update::ListDone(what) => self.list_done(what, msg.at),
            Update::Applied(object) => self.apply_object(object, msg.at),
            Update::Deleted(gone) => self.delete(gone, msg.at),
            Update::Failed(what, error) => {
                self.stats.watch_errors_total.fetch_add(1, Ordering::Relaxed);
                warn!(resource = what.as_str(), %error, "watch failed; retrying after a backoff, the live table is kept");
            }
        }
    }

    fn list_started(&mut self, what: Watched) {
        let state = &mut self.lists[what.slot()];
        if state.started {
            self.stats.relists_total.fetch_add(1, Ordering::Relaxed);
            info!(resource = what.as_str(), "relisting; the current objects stay until the list completes");
        }
        state.started = true;
        // A list restarted midway (e.g. its continue token expired) starts its seen set over.
        state.listing = Some(match what {
            Watched::Services => Seen::Services(FxHashSet::default()),
            Watched::EndpointSlices => Seen::Slices(FxHashSet::default()),
            Watched::Node => Seen::Node(false),
        });
    }

    fn mark_seen(&mut self, object: &Object) {
        match object {
            Object::Service { key, .. } => {
                if let Some(Seen::Services(set)) = &mut self.lists[Watched::Services.slot()].listing {
                    set.insert(key.clone());
                }
            }
            Object::Slice { key, .. } => {
                if let Some(Seen::Slices(set)) = &mut self.lists[Watched::EndpointSlices.slot()].listing {
                    set.insert(key.clone());
                }
            }
            Object::Node(_) => {
                if let Some(Seen::Node(seen)) = &mut self.lists[Watched::Node.slot()].listing {
                    *seen = true;
                }
            }
            Object::Unnamed(_) => {}
        }
    }

    fn list_done(&mut self, what: Watched, at: Instant) {
        let state = &mut self.lists[what.slot()];
        let first = !state.synced;
        state.synced = true;
        let Some(seen) = state.listing.take() else { return };
        let mut removed = 0usize;
        match seen {
            Seen::Services(seen) => {
                let gone: Vec<ObjectKey> = self
                    .index
                    .services()
                    .map(|s| &s.key)
                    .chain(self.index.skipped().map(|s| &s.service))
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for k in &gone {
                    self.index.remove_service(k);
                }
                removed = gone.len();
            }
            Seen::Slices(seen) => {
                let gone: Vec<ObjectKey> =
                    self.index.slices().map(|s| s.key.clone()).filter(|k| !seen.contains(k)).collect();
                for k in &gone {
                    self.index.remove_slice(k);
                }
                removed = gone.len();
            }
            Seen::Node(seen) => {
                if !seen && self.index.set_node(None) {
                    removed = 1;
                }
            }
        }
        if removed > 0 {
            self.note(at, None);
        }
        if first {
            debug!(resource = what.as_str(), "initial list complete");
        } else {
            info!(resource = what.as_str(), removed, "relist complete");
        }
    }

    fn apply_object(&mut self, object: Object, at: Instant) {
        match object {
            Object::Service { key, converted, not_proxied } => match converted {
                Ok(Ok(info)) => {
                    if self.index.service(&key) != Some(&info) {
                        self.index.upsert_service(info);
                        self.note(at, None);
                    }
                }
                Ok(Err(skipped)) => {
                    debug!(service = %key, reason = %skipped, "service not proxied");
                    if self.index.service(&key).is_some() {
                        self.index.remove_service(&key);
                        self.note(at, None);
                    }
                    if let Some(np) = not_proxied {
                        self.index.upsert_skipped(*np);
                    }
                }
                Err(error) => self.object_error("Service", &key.to_string(), &error),
            },
            Object::Slice { key, converted, trigger } => match converted {
                Ok(Some(info)) => {
                    if self.index.slice(&key) != Some(&info) {
                        self.index.upsert_slice(info);
                        self.note(at, trigger);
                    }
                }
                Ok(None) => {
                    debug!(slice = %key, "slice ignored (FQDN or no service label)");
                    if self.index.slice(&key).is_some() {
                        self.index.remove_slice(&key);
                        self.note(at, trigger);
                    }
                }
                Err(error) => self.object_error("EndpointSlice", &key.to_string(), &error),
            },
            Object::Node(info) => {
                if self.index.set_node(Some(&info)) {
                    self.note(at, None);
                }
            }
            Object::Unnamed(what) => {
                self.stats.object_errors_total.fetch_add(1, Ordering::Relaxed);
                warn!(resource = what.as_str(), "object without metadata.name ignored");
            }
        }
    }

    fn object_error(&self, kind: &str, name: &str, error: &crate::error::ObjectError) {
        self.stats.object_errors_total.fetch_add(1, Ordering::Relaxed);
        warn!(kind, object = name, %error, "invalid object; keeping its last good version");
    }

    fn delete(&mut self, gone: Gone, at: Instant) {
        let changed = match gone {
            Gone::Service(key) => {
                let present = self.index.service(&key).is_some();
                self.index.remove_service(&key);
                present
            }
            Gone::Slice(key) => {
                let present = self.index.slice(&key).is_some();
                self.index.remove_slice(&key);
                present
            }
            Gone::Node => self.index.set_node(None),
            Gone::Unnamed => false,
        };
        if changed {
            self.note(at, None);
        }
    }

    fn note(&mut self, at: Instant, trigger: Option<SystemTime>) {
        if self.published_once {
            self.pending.received.push(at);
        }
        if let Some(t) = trigger.filter(|t| *t >= self.started_wall) {
            self.pending.triggers.push(t);
        }
    }
}

#[cfg(test)]
mod tests;
