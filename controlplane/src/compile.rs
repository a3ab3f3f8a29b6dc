//! Service + its EndpointSlices (+ this node) → frontends, with kube-proxy's semantics.
//!
//! Pure: no I/O, no clock. The same inputs always give the same frontends, which is what lets
//! the golden tests pin the behaviour and lets the index recompile one Service at a time.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use schedulers::{Backend, BackendAddr, BackendSet, EndpointCondition, Scheduler, SchedulerKind, SchedulerOptions, StatsRegistry};

use crate::explain::{Considered, EndpointVerdict, Exclusion, FrontendRecord, Topology};
use crate::local_traffic::{LocalTrafficOptions, pod_sources};
use crate::model::{EndpointInfo, NodeInfo, ServiceInfo, ServicePortInfo, SliceInfo};
use crate::source_ranges::allowed_sources;
use crate::table::{Frontend, FrontendKey, FrontendKind, LocalOrigin, ServicePortName, TrafficPolicy, WhenEmpty};

/// Node-wide settings of the compiler.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// This node's name (`--hostname-override`): endpoints with this `nodeName` are local.
    pub node_name: Option<String>,
    /// Scheduler for Services without the `tpvs/scheduler` annotation (`--scheduler`).
    pub default_scheduler: SchedulerKind,
    pub scheduler_options: SchedulerOptions,
    /// Shared per-backend counters, so rebuilt sets keep their connection counts.
    pub registry: Arc<StatsRegistry>,
    /// The only ranges externalIPs and load-balancer IPs may come from
    /// (`--external-ip-cidrs`); empty allows all, as kube-proxy does.
    pub external_ip_cidrs: Vec<ipnet::IpNet>,
    /// This node's IP of its family (`--bind-address`), over the Node object's.
    pub bind_address: Option<IpAddr>,
    /// Which clients are this node's pods (`--detect-local-mode`, `--cluster-cidr`).
    pub local_traffic: LocalTrafficOptions,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            node_name: None,
            default_scheduler: SchedulerKind::Rr,
            scheduler_options: SchedulerOptions::default(),
            registry: Arc::new(StatsRegistry::new()),
            external_ip_cidrs: Vec::new(),
            bind_address: None,
            local_traffic: LocalTrafficOptions::default(),
        }
    }
}

/// One endpoint resolved for one Service port.
#[derive(Clone, Debug)]
struct PortEndpoint<'a> {
    addr: SocketAddr,
    info: &'a EndpointInfo,
    local: bool,
}

impl PortEndpoint<'_> {
    fn serving_terminating(&self) -> bool {
        self.info.serving && self.info.terminating
    }
}

/// Which topology hints apply (kube-proxy's `topologyModeFromHints`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TopologyMode {
    None,
    Node,
    Zone,
}

/// Hints are honoured only when every ready endpoint carries them and at least one names this
/// node (or zone); otherwise a half-hinted slice would starve whole zones, so all endpoints are
/// used. Node hints win over zone hints (`trafficDistribution: PreferSameNode`).
fn topology_mode(eps: &[PortEndpoint<'_>], node: &NodeInfo) -> TopologyMode {
    let (mut all_node_hints, mut has_for_node) = (true, false);
    let (mut all_zone_hints, mut has_for_zone) = (true, false);
    let mut any_ready = false;
    for ep in eps.iter().filter(|e| e.info.ready) {
        any_ready = true;
        if ep.info.node_hints.is_empty() {
            all_node_hints = false;
        } else if node.name.as_ref().is_some_and(|n| ep.info.node_hints.contains(n)) {
            has_for_node = true;
        }
        if ep.info.zone_hints.is_empty() {
            all_zone_hints = false;
        } else if node.zone.as_ref().is_some_and(|z| ep.info.zone_hints.contains(z)) {
            has_for_zone = true;
        }
    }
    if !any_ready {
        return TopologyMode::None;
    }
    if all_node_hints && has_for_node {
        return TopologyMode::Node;
    }
    if all_zone_hints && has_for_zone {
        return TopologyMode::Zone;
    }
    TopologyMode::None
}

fn available_for_topology(ep: &PortEndpoint<'_>, mode: TopologyMode, node: &NodeInfo) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::Node => node.name.as_ref().is_some_and(|n| ep.info.node_hints.contains(n)),
        TopologyMode::Zone => node.zone.as_ref().is_some_and(|z| ep.info.zone_hints.contains(z)),
    }
}

/// kube-proxy's `CategorizeEndpoints` for one Service port and one IP family: each endpoint's
/// verdict for the Cluster set and for the Local set. The sets are the endpoints whose verdict
/// is "used", so the reasons `tpvs explain` shows are the decisions themselves.
struct Categorized<'a> {
    eps: Vec<PortEndpoint<'a>>,
    cluster: Vec<EndpointVerdict>,
    local: Vec<EndpointVerdict>,
    topology: Topology,
    /// Some endpoint anywhere is ready or serving-terminating.
    has_any: bool,
    local_ready: usize,
}

impl<'a> Categorized<'a> {
    fn used(&self, verdicts: &[EndpointVerdict]) -> Vec<PortEndpoint<'a>> {
        self.eps.iter().zip(verdicts).filter(|(_, v)| v.is_used()).map(|(e, _)| e.clone()).collect()
    }
}

/// Why a not-ready endpoint is out of a set (the fallback having been decided already).
fn unready_reason(ep: &PortEndpoint<'_>, fallback: bool) -> EndpointVerdict {
    if ep.serving_terminating() {
        if fallback { EndpointVerdict::UsedTerminating } else { EndpointVerdict::Excluded(Exclusion::TerminatingWithReadyPeers) }
    } else if ep.info.terminating {
        EndpointVerdict::Excluded(Exclusion::TerminatingNotServing)
    } else {
        EndpointVerdict::Excluded(Exclusion::NotReady)
    }
}

fn categorize<'a>(eps: Vec<PortEndpoint<'a>>, node: &NodeInfo) -> Categorized<'a> {
    let mode = topology_mode(&eps, node);
    let in_cluster = |e: &PortEndpoint<'_>| e.info.ready && available_for_topology(e, mode, node);
    // KEP-1669: with no ready endpoint, serving-but-terminating ones still take traffic rather
    // than the client being refused during a rolling update.
    let cluster_fallback = !eps.iter().any(in_cluster);
    let cluster = eps
        .iter()
        .map(|e| match (e.info.ready, in_cluster(e), mode) {
            (true, true, _) => EndpointVerdict::Used,
            (true, false, TopologyMode::Node) => {
                EndpointVerdict::Excluded(Exclusion::NodeHint { hints: e.info.node_hints.clone() })
            }
            (true, false, _) => EndpointVerdict::Excluded(Exclusion::ZoneHint { hints: e.info.zone_hints.clone() }),
            (false, _, _) => unready_reason(e, cluster_fallback),
        })
        .collect();
    let has_any = eps.iter().any(|e| e.info.ready || e.serving_terminating());
    let local_ready = eps.iter().filter(|e| e.local && e.info.ready).count();
    let local = eps
        .iter()
        .map(|e| match (e.local, e.info.ready) {
            (false, _) => EndpointVerdict::Excluded(Exclusion::OtherNode),
            (true, true) => EndpointVerdict::Used,
            (true, false) => unready_reason(e, local_ready == 0),
        })
        .collect();
    let topology = match mode {
        TopologyMode::None => Topology::Unused,
        TopologyMode::Node => node.name.clone().map_or(Topology::Unused, Topology::Node),
        TopologyMode::Zone => node.zone.clone().map_or(Topology::Unused, Topology::Zone),
    };
    Categorized { eps, cluster, local, topology, has_any, local_ready }
}

/// Endpoints of `port` across the Service's slices, deduplicated by address (slices may overlap
/// while the endpoint controller moves endpoints between them), in a stable order.
fn endpoints_for_port<'a>(
    port: &ServicePortInfo,
    slices: &[&'a SliceInfo],
    node: &NodeInfo,
    portless: &mut Vec<Considered>,
) -> Vec<PortEndpoint<'a>> {
    let mut by_addr: BTreeMap<SocketAddr, PortEndpoint<'a>> = BTreeMap::new();
    for slice in slices {
        // The endpoint controller names each slice port after the Service port it serves and
        // has already resolved a named targetPort to a number; match by name and protocol.
        let Some(sp) = slice.ports.iter().find(|sp| sp.name == port.name && sp.protocol == port.protocol) else {
            // explain: recorded, never used.
            let slice_ports: Vec<Arc<str>> = slice.ports.iter().map(|p| Arc::clone(&p.name)).collect();
            portless.extend(slice.endpoints.iter().map(|info| Considered {
                ip: info.ip,
                port: None,
                node: info.node.clone(),
                zone: info.zone.clone(),
                verdict: EndpointVerdict::Excluded(Exclusion::PortNotInSlice { slice_ports: slice_ports.clone() }),
            }));
            continue;
        };
        for info in &slice.endpoints {
            let addr = SocketAddr::new(info.ip, sp.port);
            let local = match (&info.node, &node.name) {
                (Some(ep_node), Some(me)) => ep_node == me,
                _ => false,
            };
            let candidate = PortEndpoint { addr, info, local };
            match by_addr.entry(addr) {
                Entry::Vacant(v) => {
                    v.insert(candidate);
                }
                // A pod IP reused before the old Pod is gone appears terminating in one slice
                // and ready in another: the live copy wins (as in kube-proxy), never the
                // terminating one, whichever slice comes first. Between otherwise equal
                // copies the one on this node wins, as kube-proxy favours a local copy.
                Entry::Occupied(mut o) => {
                    if precedence(&candidate) > precedence(o.get()) {
                        o.insert(candidate);
                    }
                }
            }
        }
    }
    by_addr.into_values().collect()
}

/// Which of two copies of one address to keep: not terminating first, then ready, then
/// serving, then on this node.
fn precedence(ep: &PortEndpoint<'_>) -> (bool, bool, bool, bool) {
    (!ep.info.terminating, ep.info.ready, ep.info.serving, ep.local)
}

fn family_matches(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// Builds schedulers lazily and shares one per distinct endpoint list within a Service port,
/// so a Service reachable at a ClusterIP, a NodePort and an LB IP keeps one scheduler (and one
/// maglev table) per policy instead of one per address.
struct SchedulerCache<'o> {
    kind: SchedulerKind,
    svc: &'o ServiceInfo,
    opts: &'o CompileOptions,
    built: Vec<(Vec<SocketAddr>, Arc<dyn Scheduler>)>,
}

impl SchedulerCache<'_> {
    fn get(&mut self, eps: &[PortEndpoint<'_>]) -> Arc<dyn Scheduler> {
        let addrs: Vec<SocketAddr> = eps.iter().map(|e| e.addr).collect();
        if let Some((_, s)) = self.built.iter().find(|(a, _)| *a == addrs) {
            return Arc::clone(s);
        }
        let backends = eps.iter().map(|e| self.backend(e)).collect();
        let s = schedulers::build(self.kind, Arc::new(BackendSet::new(backends)), &self.opts.scheduler_options);
        self.built.push((addrs, Arc::clone(&s)));
        s
    }

    fn backend(&self, ep: &PortEndpoint<'_>) -> Backend {
        Backend {
            addr: BackendAddr(ep.addr),
            weight: weight_of(self.svc, ep),
            condition: if ep.info.ready { EndpointCondition::Ready } else { EndpointCondition::ServingTerminating },
            node: ep.info.node.clone(),
            zone: ep.info.zone.clone(),
            stats: self.opts.registry.get(BackendAddr(ep.addr)),
        }
    }
}

/// The endpoint's `tpvs/weights` weight: by IP, else by targetRef name, else 1.
fn weight_of(svc: &ServiceInfo, ep: &PortEndpoint<'_>) -> u32 {
    // Most Services carry no weights: skip formatting the address.
    if svc.weights.is_empty() {
        return 1;
    }
    svc.weights
        .get(&ep.info.ip.to_string())
        .or_else(|| ep.info.target_name.as_deref().and_then(|n| svc.weights.get(n)))
        .copied()
        .unwrap_or(1)
}

/// explain: the record of one frontend's endpoints, shared by the frontends of one Service
/// port, family and policy. `portless` are the endpoints of slices without this port; every
/// endpoint of the other family is listed as such.
fn record(
    svc: &ServiceInfo,
    slices: usize,
    cat: &Categorized<'_>,
    verdicts: &[EndpointVerdict],
    other_family: &[PortEndpoint<'_>],
    portless: &[Considered],
) -> Arc<FrontendRecord> {
    let considered = |e: &PortEndpoint<'_>, verdict: EndpointVerdict| Considered {
        ip: e.addr.ip(),
        port: Some(e.addr.port()),
        node: e.info.node.clone(),
        zone: e.info.zone.clone(),
        verdict,
    };
    let mut endpoints: Vec<Considered> = cat
        .eps
        .iter()
        .zip(verdicts)
        .map(|(e, v)| {
            // A used endpoint of weight 0 is in the scheduler's set but never picked.
            let v = if v.is_used() && weight_of(svc, e) == 0 { EndpointVerdict::Excluded(Exclusion::WeightZero) } else { v.clone() };
            considered(e, v)
        })
        .collect();
    endpoints.extend(other_family.iter().map(|e| considered(e, EndpointVerdict::Excluded(Exclusion::OtherFamily))));
    endpoints.extend(portless.iter().cloned());
    Arc::new(FrontendRecord {
        service_type: Arc::clone(&svc.service_type),
        load_balancer_pending: &*svc.service_type == "LoadBalancer"
            && svc.load_balancer_ips.is_empty()
            && svc.ip_mode_proxy_ips.is_empty(),
        slices,
        topology: cat.topology.clone(),
        endpoints,
    })
}

/// Every frontend of one Service, taking its addresses as given: the index vets them first
/// (see [`crate::addresses`]).
pub fn compile_service(
    svc: &ServiceInfo,
    slices: &[&SliceInfo],
    node: &NodeInfo,
    opts: &CompileOptions,
) -> Vec<Frontend> {
    let mut out = Vec::new();
    let kind = svc.scheduler.unwrap_or(opts.default_scheduler);
    let mut families: Vec<IpAddr> = Vec::new();
    for ip in svc.cluster_ips.iter().chain(&svc.load_balancer_ips).chain(&svc.external_ips) {
        if !families.iter().any(|f| family_matches(*f, *ip)) {
            families.push(*ip);
        }
    }
    let pods = pod_sources(&opts.local_traffic, node);
    let mut portless: Vec<Vec<Considered>> = Vec::new();
    let per_port: Vec<Vec<PortEndpoint<'_>>> = svc
        .ports
        .iter()
        .map(|p| {
            let mut none = Vec::new();
            let eps = endpoints_for_port(p, slices, node, &mut none);
            portless.push(none);
            eps
        })
        .collect();
    // kube-proxy's health-check count: distinct local ready IPs over all ports, per family.
    let service_local = |family: IpAddr| -> usize {
        per_port
            .iter()
            .flatten()
            .filter(|e| e.local && e.info.ready && family_matches(e.addr.ip(), family))
            .map(|e| e.addr.ip())
            .collect::<BTreeSet<IpAddr>>()
            .len()
    };
    for ((port, all), portless) in svc.ports.iter().zip(&per_port).zip(&portless) {
        let mut cache = SchedulerCache { kind, svc, opts, built: Vec::new() };
        for family in &families {
            let (eps, other_family): (Vec<_>, Vec<_>) =
                all.iter().cloned().partition(|e| family_matches(e.addr.ip(), *family));
            let cat = categorize(eps, node);
            let (cluster_set, local_set) = (cat.used(&cat.cluster), cat.used(&cat.local));
            // explain: built lazily, once per policy, only for policies a frontend uses.
            let (mut cluster_record, mut local_record) = (None, None);
            let service_local_endpoints = service_local(*family);
            let lb_ranges = allowed_sources(svc, *family, node);
            // kube-proxy short-circuits local traffic to the external addresses of a Local
            // Service whenever it has endpoints anywhere, local ones or not.
            let local_origin = (svc.external_policy_local && cat.has_any).then(|| LocalOrigin {
                pod_sources: pods.iter().filter(|n| family_matches(n.addr(), *family)).copied().collect(),
                scheduler: cache.get(&cluster_set),
                explanation: Arc::clone(
                    cluster_record.get_or_insert_with(|| record(svc, slices.len(), &cat, &cat.cluster, &other_family, portless)),
                ),
            });
            let name = ServicePortName {
                namespace: Arc::clone(&svc.key.namespace),
                name: Arc::clone(&svc.key.name),
                port: Arc::clone(&port.name),
            };
            let mut add = |key: FrontendKey, fkind: FrontendKind| {
                let local = if fkind.is_external() { svc.external_policy_local } else { svc.internal_policy_local };
                let (policy, chosen, verdicts, slot) = if local {
                    (TrafficPolicy::Local, &local_set, &cat.local, &mut local_record)
                } else {
                    (TrafficPolicy::Cluster, &cluster_set, &cat.cluster, &mut cluster_record)
                };
                let explanation = Arc::clone(
                    slot.get_or_insert_with(|| record(svc, slices.len(), &cat, verdicts, &other_family, portless)),
                );
                let when_empty = if local && cat.has_any { WhenEmpty::Drop } else { WhenEmpty::Reject };
                out.push(Frontend {
                    key,
                    kind: fkind,
                    service: name.clone(),
                    policy,
                    affinity: svc.affinity,
                    when_empty,
                    health_check_node_port: if fkind.is_external() && local {
                        svc.health_check_node_port
                    } else {
                        None
                    },
                    local_endpoints: cat.local_ready,
                    service_local_endpoints,
                    source_ranges: if fkind == FrontendKind::LoadBalancer {
                        Arc::clone(&lb_ranges)
                    } else {
                        Arc::from([])
                    },
                    scheduler: cache.get(chosen),
                    explanation,
                    local_origin: if fkind.is_external() { local_origin.clone() } else { None },
                });
            };
            for ip in svc.cluster_ips.iter().filter(|ip| family_matches(**ip, *family)) {
                add(FrontendKey::new(*ip, port.port, port.protocol), FrontendKind::ClusterIp);
            }
            // A NodePort opens for each IP family the Service itself has (its ClusterIPs).
            let family_is_services = svc.cluster_ips.iter().any(|ip| family_matches(*ip, *family));
            if let (true, true, Some(np)) = (svc.exposes_node_ports, family_is_services, port.node_port) {
                add(FrontendKey::node_port(*family, np, port.protocol), FrontendKind::NodePort);
            }
            for ip in svc.load_balancer_ips.iter().filter(|ip| family_matches(**ip, *family)) {
                add(FrontendKey::new(*ip, port.port, port.protocol), FrontendKind::LoadBalancer);
            }
            for ip in svc.external_ips.iter().filter(|ip| family_matches(**ip, *family)) {
                add(FrontendKey::new(*ip, port.port, port.protocol), FrontendKind::ExternalIp);
            }
        }
    }
    out
}
