//! The cluster index: the current Services, slices and node, and the table compiled from them.
//!
//! Fed by events (from the manifests source or the API watchers), it remembers which Services
//! an event touched and recompiles only those on the next [`ClusterIndex::build`]: a change to
//! one EndpointSlice costs one Service's compile plus one copy of the frontend map, never a
//! re-parse of the world.

use std::collections::BTreeSet;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::compile::{CompileOptions, compile_service};
use crate::error::FrontendConflict;
use crate::model::{NodeInfo, ObjectKey, ServiceInfo, SliceInfo};
use crate::table::{Frontend, FrontendKey, RoutingTable};

#[derive(Debug)]
pub struct ClusterIndex {
    opts: CompileOptions,
    node: NodeInfo,
    /// Services by their key.
    services: FxHashMap<ObjectKey, ServiceInfo>,
    /// EndpointSlices by their own key (not their Service's).
    slices: FxHashMap<ObjectKey, SliceInfo>,
    /// Service key → the keys of the slices labelled with it.
    slices_of: FxHashMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// The frontend keys each Service currently holds in `frontends`.
    owned: FxHashMap<ObjectKey, Vec<FrontendKey>>,
    frontends: FxHashMap<FrontendKey, Arc<Frontend>>,
    /// Services to recompile on the next build.
    dirty: FxHashSet<ObjectKey>,
    /// Services that lost a frontend to another; retried whenever anything changes, so the
    /// loser takes over when the winner goes away.
    conflicted: FxHashSet<ObjectKey>,
}

impl ClusterIndex {
    pub fn new(opts: CompileOptions) -> Self {
        let node = NodeInfo { name: opts.node_name.as_deref().map(Arc::from), zone: None };
        ClusterIndex {
            opts,
            node,
            services: FxHashMap::default(),
            slices: FxHashMap::default(),
            slices_of: FxHashMap::default(),
            owned: FxHashMap::default(),
            frontends: FxHashMap::default(),
            dirty: FxHashSet::default(),
            conflicted: FxHashSet::default(),
        }
    }

    pub fn options(&self) -> &CompileOptions {
        &self.opts
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Whether a [`Self::build`] would change anything.
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceInfo> {
        self.services.values()
    }

    pub fn slices(&self) -> impl Iterator<Item = &SliceInfo> {
        self.slices.values()
    }

    pub fn service(&self, key: &ObjectKey) -> Option<&ServiceInfo> {
        self.services.get(key)
    }

    pub fn slice(&self, key: &ObjectKey) -> Option<&SliceInfo> {
        self.slices.get(key)
    }

    /// Updates this node's zone (from its Node object); every Service may change with it.
    pub fn set_node_zone(&mut self, zone: Option<Arc<str>>) {
        if self.node.zone != zone {
            self.node.zone = zone;
            self.dirty.extend(self.services.keys().cloned());
        }
    }

    pub fn upsert_service(&mut self, info: ServiceInfo) {
        if self.services.get(&info.key) == Some(&info) {
            return;
        }
        self.dirty.insert(info.key.clone());
        self.services.insert(info.key.clone(), info);
    }

    pub fn remove_service(&mut self, key: &ObjectKey) {
        if self.services.remove(key).is_some() {
            self.dirty.insert(key.clone());
        }
    }

    pub fn upsert_slice(&mut self, info: SliceInfo) {
        if self.slices.get(&info.key) == Some(&info) {
            return;
        }
        if let Some(old) = self.slices.get(&info.key)
            && old.service != info.service
        {
            let old_service = old.service.clone();
            self.unlink_slice(&old_service, &info.key);
        }
        self.dirty.insert(info.service.clone());
        self.slices_of.entry(info.service.clone()).or_default().insert(info.key.clone());
        self.slices.insert(info.key.clone(), info);
    }

    pub fn remove_slice(&mut self, key: &ObjectKey) {
        if let Some(old) = self.slices.remove(key) {
            self.unlink_slice(&old.service, key);
        }
    }

    fn unlink_slice(&mut self, service: &ObjectKey, key: &ObjectKey) {
        self.dirty.insert(service.clone());
        if let Some(set) = self.slices_of.get_mut(service) {
            set.remove(key);
            if set.is_empty() {
                self.slices_of.remove(service);
            }
        }
    }

    /// Recompiles the Services touched since the last build and returns the new table (its
    /// generation is stamped by the publisher), plus any frontend conflicts found.
    pub fn build(&mut self) -> (RoutingTable, Vec<FrontendConflict>) {
        let mut conflicts = Vec::new();
        if !self.dirty.is_empty() {
            self.dirty.extend(self.conflicted.drain());
        }
        let mut dirty: Vec<ObjectKey> = self.dirty.drain().collect();
        // Namespace/name order, so that which of two conflicting Services wins never depends
        // on event order.
        dirty.sort();
        for key in &dirty {
            for fk in self.owned.remove(key).unwrap_or_default() {
                if self.frontends.get(&fk).is_some_and(|f| same_service(f, key)) {
                    self.frontends.remove(&fk);
                }
            }
        }
        for key in &dirty {
            let Some(svc) = self.services.get(key) else { continue };
            let slices: Vec<&SliceInfo> = self
                .slices_of
                .get(key)
                .into_iter()
                .flatten()
                .filter_map(|sk| self.slices.get(sk))
                .collect();
            let mut owned = Vec::new();
            for frontend in compile_service(svc, &slices, &self.node, &self.opts) {
                let fk = frontend.key;
                if let Some(existing) = self.frontends.get(&fk) {
                    let holder = ObjectKey {
                        namespace: Arc::clone(&existing.service.namespace),
                        name: Arc::clone(&existing.service.name),
                    };
                    if holder != *key {
                        if holder < *key {
                            conflicts.push(FrontendConflict {
                                frontend: format!("{} {}", fk.proto, fk),
                                winner: holder.to_string(),
                                loser: key.to_string(),
                            });
                            self.conflicted.insert(key.clone());
                            continue;
                        }
                        // The newcomer sorts first: it takes the frontend, the holder retries.
                        conflicts.push(FrontendConflict {
                            frontend: format!("{} {}", fk.proto, fk),
                            winner: key.to_string(),
                            loser: holder.to_string(),
                        });
                        if let Some(keys) = self.owned.get_mut(&holder) {
                            keys.retain(|k| *k != fk);
                        }
                        self.conflicted.insert(holder);
                    }
                }
                self.frontends.insert(fk, Arc::new(frontend));
                owned.push(fk);
            }
            self.owned.insert(key.clone(), owned);
        }
        (RoutingTable::new(0, self.frontends.clone()), conflicts)
    }
}

fn same_service(f: &Frontend, key: &ObjectKey) -> bool {
    f.service.namespace == key.namespace && f.service.name == key.name
}
