//! The cluster index: the current Services, slices and node, and the table compiled from them.
//!
//! Fed by events (from the manifests source or the API watchers), it remembers which Services
//! an event touched and recompiles only those on the next [`ClusterIndex::build`]: a change to
//! one EndpointSlice costs one Service's compile plus one copy of the frontend map, never a
//! re-parse of the world.

use std::collections::BTreeSet;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::addresses::{AddressBook, vet};
use crate::compile::{CompileOptions, compile_service};
use crate::error::{FrontendConflict, Refusal};
use crate::explain::{NotProxied, PortSpec, Unserved};
use crate::model::{NodeInfo, ObjectKey, ServiceInfo, SliceInfo};
use crate::table::{Frontend, FrontendKey, FrontendKind, RoutingTable};

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
    /// ClusterIP owners and external claims, for vetting each Service's addresses.
    addresses: AddressBook,
    /// What each Service asked for and was refused, as of its last compile (or its loss of a
    /// frontend to another Service since).
    refused: FxHashMap<ObjectKey, Vec<Refusal>>,
    /// explain: Services the sources skip (headless, ExternalName, another proxy's), by key.
    skipped: FxHashMap<ObjectKey, NotProxied>,
    skipped_changed: bool,
}

impl ClusterIndex {
    pub fn new(opts: CompileOptions) -> Self {
        let node = node_facts(&opts, None);
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
            addresses: AddressBook::default(),
            refused: FxHashMap::default(),
            skipped: FxHashMap::default(),
            skipped_changed: false,
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
        !self.dirty.is_empty() || self.skipped_changed
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

    /// Takes what this node's Node object says (zone, addresses, pod ranges; `None` when it is
    /// gone); every Service may change with it. Whether anything changed.
    pub fn set_node(&mut self, object: Option<&NodeInfo>) -> bool {
        let next = node_facts(&self.opts, object);
        if self.node == next {
            return false;
        }
        self.node = next;
        self.dirty.extend(self.services.keys().cloned());
        true
    }

    pub fn upsert_service(&mut self, info: ServiceInfo) {
        if self.services.get(&info.key) == Some(&info) {
            return;
        }
        self.remove_skipped(&info.key);
        let key = info.key.clone();
        self.dirty.insert(key.clone());
        // A ClusterIP appearing or leaving changes which addresses other Services may claim.
        let touched = self.addresses.update(self.services.get(&key), Some(&info));
        self.dirty.extend(touched);
        self.services.insert(key, info);
    }

    pub fn remove_service(&mut self, key: &ObjectKey) {
        self.remove_skipped(key);
        if let Some(old) = self.services.remove(key) {
            self.dirty.insert(key.clone());
            let touched = self.addresses.update(Some(&old), None);
            self.dirty.extend(touched);
        }
    }

    /// explain: remembers a Service that is not proxied (and forgets a proxied one of that
    /// name); it changes no frontend, only what the next table says about it.
    pub fn upsert_skipped(&mut self, skipped: NotProxied) {
        if self.skipped.get(&skipped.service) == Some(&skipped) {
            return;
        }
        self.remove_service(&skipped.service);
        self.skipped_changed = true;
        self.skipped.insert(skipped.service.clone(), skipped);
    }

    /// explain: forgets a skipped Service (deleted, or proxied now).
    pub fn remove_skipped(&mut self, key: &ObjectKey) {
        if self.skipped.remove(key).is_some() {
            self.skipped_changed = true;
        }
    }

    pub fn skipped(&self) -> impl Iterator<Item = &NotProxied> {
        self.skipped.values()
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
    /// generation is stamped by the publisher, and it carries every refusal in force), plus
    /// what this build's compiles refused (a Service retried after losing a conflict reports
    /// it again: compare tables' [`RoutingTable::refused`] to see what changed).
    pub fn build(&mut self) -> (RoutingTable, Vec<Refusal>) {
        let mut found = Vec::new();
        if !self.dirty.is_empty() {
            self.dirty.extend(self.conflicted.drain());
        }
        let mut dirty: Vec<ObjectKey> = self.dirty.drain().collect();
        // Namespace/name order, so that which of two conflicting Services wins never depends
        // on event order.
        dirty.sort();
        for key in &dirty {
            self.refused.remove(key);
            for fk in self.owned.remove(key).unwrap_or_default() {
                if self.frontends.get(&fk).is_some_and(|f| same_service(f, key)) {
                    self.frontends.remove(&fk);
                }
            }
        }
        for key in &dirty {
            let Some(svc) = self.services.get(key) else { continue };
            let (svc, bad_addresses) = vet(svc, &self.opts.external_ip_cidrs, &self.addresses);
            let mut refused: Vec<Refusal> = bad_addresses.into_iter().map(Refusal::from).collect();
            let slices: Vec<&SliceInfo> = self
                .slices_of
                .get(key)
                .into_iter()
                .flatten()
                .filter_map(|sk| self.slices.get(sk))
                .collect();
            let mut owned = Vec::new();
            for frontend in compile_service(&svc, &slices, &self.node, &self.opts) {
                let fk = frontend.key;
                if let Some(existing) = self.frontends.get(&fk) {
                    let holder = ObjectKey {
                        namespace: Arc::clone(&existing.service.namespace),
                        name: Arc::clone(&existing.service.name),
                    };
                    if holder != *key {
                        let conflict = |winner: &ObjectKey, loser: &ObjectKey| FrontendConflict {
                            frontend: format!("{} {}", fk.proto, fk),
                            winner: winner.to_string(),
                            loser: loser.to_string(),
                        };
                        if rank(existing.kind, &holder) < rank(frontend.kind, key) {
                            refused.push(conflict(&holder, key).into());
                            self.conflicted.insert(key.clone());
                            continue;
                        }
                        // The newcomer ranks first: it takes the frontend, the holder retries.
                        let lost = Refusal::from(conflict(key, &holder));
                        found.push(lost.clone());
                        self.refused.entry(holder.clone()).or_default().push(lost);
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
            if !refused.is_empty() {
                found.extend(refused.iter().cloned());
                self.refused.insert(key.clone(), refused);
            }
        }
        let mut all: Vec<(&ObjectKey, &Vec<Refusal>)> = self.refused.iter().collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        let all: Arc<[Refusal]> = all.into_iter().flat_map(|(_, r)| r.iter().cloned()).collect();
        self.skipped_changed = false;
        let table = RoutingTable::new(0, self.frontends.clone())
            .with_refused(all)
            .with_not_proxied(self.not_proxied())
            .with_node_ips(self.node.ips.iter().copied().collect());
        (table, found)
    }

    /// explain: the skipped Services and every `ipMode: Proxy` ingress address, by Service.
    fn not_proxied(&self) -> Arc<[NotProxied]> {
        let ip_mode = self.services.values().filter(|s| !s.ip_mode_proxy_ips.is_empty()).map(|s| NotProxied {
            service: s.key.clone(),
            why: Unserved::IpModeProxy,
            addresses: s.ip_mode_proxy_ips.clone(),
            ports: s.ports.iter().map(|p| PortSpec { port: p.port, protocol: p.protocol, node_port: p.node_port }).collect(),
        });
        let mut all: Vec<NotProxied> = self.skipped.values().cloned().chain(ip_mode).collect();
        all.sort_by(|a, b| a.service.cmp(&b.service));
        all.into()
    }
}

/// Who keeps a frontend two Services claim: a ClusterIP against any other kind (an address
/// handed out by the cluster beats one written into a Service), then namespace/name order.
fn rank(kind: FrontendKind, service: &ObjectKey) -> (bool, &ObjectKey) {
    (kind != FrontendKind::ClusterIp, service)
}

fn same_service(f: &Frontend, key: &ObjectKey) -> bool {
    f.service.namespace == key.namespace && f.service.name == key.name
}

/// This node as the compiler sees it: its name from the options, the rest from its Node
/// object, with `--bind-address` taking the place of the object's IP of its family (as
/// kube-proxy's does).
fn node_facts(opts: &CompileOptions, object: Option<&NodeInfo>) -> NodeInfo {
    let mut ips: Vec<std::net::IpAddr> = opts.bind_address.into_iter().collect();
    for ip in object.map(|o| o.ips.as_slice()).unwrap_or_default() {
        if !ips.iter().any(|known| known.is_ipv4() == ip.is_ipv4()) {
            ips.push(*ip);
        }
    }
    NodeInfo {
        name: opts.node_name.as_deref().map(Arc::from),
        zone: object.and_then(|o| o.zone.clone()),
        ips,
        pod_cidrs: object.map(|o| o.pod_cidrs.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::explain::Unserved;
    use crate::model::Skipped;

    fn skipped(name: &str) -> NotProxied {
        NotProxied {
            service: ObjectKey::new("t", name),
            why: Unserved::Service(Skipped::ExternalName),
            addresses: vec![IpAddr::from([10, 96, 0, 9])],
            ports: Vec::new(),
        }
    }

    fn names(table: &RoutingTable) -> Vec<(String, &'static str)> {
        table.not_proxied().iter().map(|n| (n.service.to_string(), n.why.code())).collect()
    }

    #[test]
    fn the_table_names_what_it_does_not_proxy_and_forgets_it_when_proxied_or_gone() {
        let mut index = ClusterIndex::new(CompileOptions::default());
        index.upsert_skipped(skipped("alias"));
        assert!(index.has_changes(), "a skipped Service changes what the next table says");
        let mut lb = ServiceInfo::for_test("lb", vec![IpAddr::from([10, 96, 0, 8])]);
        lb.ip_mode_proxy_ips = vec![IpAddr::from([192, 0, 2, 8])];
        index.upsert_service(lb);
        let (table, _) = index.build();
        assert_eq!(names(&table), vec![("t/alias".to_string(), "external_name"), ("t/lb".to_string(), "ip_mode_proxy")]);
        assert!(!index.has_changes());
        // Proxied now (type changed): the skipped record goes.
        index.upsert_service(ServiceInfo::for_test("alias", vec![IpAddr::from([10, 96, 0, 9])]));
        let (table, _) = index.build();
        assert_eq!(names(&table), vec![("t/lb".to_string(), "ip_mode_proxy")]);
        // Skipped again, then deleted.
        index.upsert_skipped(skipped("alias"));
        let (table, _) = index.build();
        assert_eq!(names(&table).len(), 2);
        index.remove_service(&ObjectKey::new("t", "alias"));
        let (table, _) = index.build();
        assert_eq!(names(&table), vec![("t/lb".to_string(), "ip_mode_proxy")]);
    }
}
