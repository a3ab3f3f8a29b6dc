//! The routing table: the one contract between the control plane and the data plane.
//!
//! Immutable once built. The data plane looks up the original destination of every new
//! connection or flow here, so lookup is a single hash probe on a small `Copy` key.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashMap;
use schedulers::{BackendSet, Scheduler, SchedulerKind};

use crate::error::Refusal;
use crate::explain::{FrontendRecord, NotProxied};

/// Transport protocol of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One address:port/protocol a Service is reachable at.
///
/// NodePorts are keyed with the unspecified address of their family (`0.0.0.0` / `::`): they
/// answer on every node-port address, and which addresses those are is the data plane's
/// configuration (`--nodeport-addresses`), not the Service's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Protocol,
}

impl FrontendKey {
    pub fn new(addr: IpAddr, port: u16, proto: Protocol) -> Self {
        FrontendKey { addr, port, proto }
    }

    /// The key a NodePort is stored under for the family of `family_of`.
    pub fn node_port(family_of: IpAddr, port: u16, proto: Protocol) -> Self {
        let addr = match family_of {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        FrontendKey { addr, port, proto }
    }

    pub fn is_node_port(&self) -> bool {
        self.addr.is_unspecified()
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{}:{}", a, self.port),
            IpAddr::V6(a) => write!(f, "[{}]:{}", a, self.port),
        }
    }
}

/// Which Service field made this frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

impl FrontendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::LoadBalancer => "LoadBalancer",
            FrontendKind::ExternalIp => "ExternalIP",
        }
    }

    /// ClusterIPs follow `internalTrafficPolicy`; everything reachable from outside the cluster
    /// follows `externalTrafficPolicy`.
    pub fn is_external(self) -> bool {
        !matches!(self, FrontendKind::ClusterIp)
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The traffic policy in force for one frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrafficPolicy {
    /// Any endpoint in the cluster; the backend sees the node's address.
    Cluster,
    /// Only endpoints on this node; the backend sees the client's own address.
    Local,
}

impl TrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        }
    }
}

impl fmt::Display for TrafficPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the data plane does with a new connection when the frontend has no backend to pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WhenEmpty {
    /// The Service has no usable endpoint anywhere: refuse at once (TCP RST / ICMP
    /// port-unreachable), never let the client hang (kube-proxy's REJECT).
    Reject,
    /// Local policy and endpoints exist only on other nodes: drop, so an external load
    /// balancer's health check (503) steers traffic away (kube-proxy's DROP).
    Drop,
}

impl WhenEmpty {
    pub fn as_str(self) -> &'static str {
        match self {
            WhenEmpty::Reject => "reject",
            WhenEmpty::Drop => "drop",
        }
    }
}

/// Identity of the Service port a frontend belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The Service port's name ("" for a single unnamed port).
    pub port: Arc<str>,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
        }
    }
}

/// `sessionAffinity: ClientIP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Affinity {
    pub timeout: Duration,
}

/// Everything the data plane needs to serve one frontend.
#[derive(Debug, Clone)]
pub struct Frontend {
    pub key: FrontendKey,
    pub kind: FrontendKind,
    pub service: ServicePortName,
    pub policy: TrafficPolicy,
    pub affinity: Option<Affinity>,
    pub when_empty: WhenEmpty,
    /// `spec.healthCheckNodePort` of an `externalTrafficPolicy: Local` LoadBalancer Service.
    pub health_check_node_port: Option<u16>,
    /// Ready local endpoints of this Service port (and family).
    pub local_endpoints: usize,
    /// Distinct ready local endpoint IPs across all the Service's ports (of this frontend's
    /// family): what the health-check node port reports, counted as kube-proxy counts it, so
    /// a pod serving two ports counts once and ports with different pods add up.
    pub service_local_endpoints: usize,
    /// The only client ranges this frontend accepts (`loadBalancerSourceRanges`, of this
    /// frontend's family); empty accepts all. Set on LoadBalancer frontends only: kube-proxy
    /// leaves NodePorts, ClusterIPs and externalIPs open.
    pub source_ranges: Arc<[ipnet::IpNet]>,
    pub scheduler: Arc<dyn Scheduler>,
    /// Why the backend set is what it is (for `tpvs explain`; the data path never reads it).
    pub explanation: Arc<FrontendRecord>,
    /// Set on the external frontends (NodePort, load-balancer IP, externalIP) of an
    /// `externalTrafficPolicy: Local` Service with endpoints anywhere: connections that start
    /// on this node are served from the cluster-wide set (see [`LocalOrigin`]).
    pub local_origin: Option<LocalOrigin>,
}

/// kube-proxy's short-circuit of local traffic to an `externalTrafficPolicy: Local` external
/// address: a connection from this node's own addresses or from `pod_sources` (its pods, per
/// `--detect-local-mode`) is served from every ready endpoint of the Service (`scheduler`,
/// what `Cluster` would pick), as if it had gone out to the load balancer and come back in;
/// any other client gets the Local set. Without it a pod on a node with no local endpoint
/// could not reach its own Service's external address.
#[derive(Debug, Clone)]
pub struct LocalOrigin {
    /// The pods' source ranges, of this frontend's family only.
    pub pod_sources: Arc<[ipnet::IpNet]>,
    pub scheduler: Arc<dyn Scheduler>,
    /// Why `scheduler`'s set is what it is (the Service's `Cluster` record; for `tpvs explain`).
    pub explanation: Arc<FrontendRecord>,
}

impl LocalOrigin {
    /// Whether `client` is one of this node's pods (the node's own addresses are the data
    /// plane's to check).
    pub fn is_pod(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.pod_sources.iter().any(|n| n.contains(&client))
    }
}

impl Frontend {
    pub fn backends(&self) -> &Arc<BackendSet> {
        self.scheduler.backends()
    }

    /// The endpoint set that serves this frontend's connections made under `policy`: its own
    /// set under its own policy, the short-circuit's cluster-wide set under `Cluster` on a
    /// `Local` frontend that has one (kube-proxy's short-circuit of local traffic), none
    /// otherwise. What a connection or flow kept across a table change is checked against.
    pub fn scheduler_for(&self, policy: TrafficPolicy) -> Option<&Arc<dyn Scheduler>> {
        match (self.policy, policy, &self.local_origin) {
            (own, asked, _) if own == asked => Some(&self.scheduler),
            (TrafficPolicy::Local, TrafficPolicy::Cluster, Some(lo)) => Some(&lo.scheduler),
            _ => None,
        }
    }

    pub fn scheduler_kind(&self) -> SchedulerKind {
        self.scheduler.kind()
    }
}

/// The whole table: every frontend of every Service this node proxies.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    /// Bumps on every publish.
    pub generation: u64,
    frontends: FxHashMap<FrontendKey, Arc<Frontend>>,
    /// What the input asked for and the table left out, sorted by Service.
    refused: Arc<[Refusal]>,
    /// Services and addresses not proxied on purpose (for `tpvs explain`), sorted by Service.
    not_proxied: Arc<[NotProxied]>,
    /// This node's IPs as the compiler knows them (`--bind-address`, the Node object's).
    node_ips: Arc<[IpAddr]>,
}

impl RoutingTable {
    pub fn new(generation: u64, frontends: FxHashMap<FrontendKey, Arc<Frontend>>) -> Self {
        RoutingTable { generation, frontends, refused: Arc::new([]), not_proxied: Arc::new([]), node_ips: Arc::new([]) }
    }

    /// The table with this node's IPs as the compiler knows them.
    pub fn with_node_ips(mut self, node_ips: Arc<[IpAddr]>) -> Self {
        self.node_ips = node_ips;
        self
    }

    /// This node's IPs as the compiler knows them (one per family: `--bind-address`, else the
    /// Node object's): what `tpvs explain` offline counts as the node's own addresses. The
    /// data path asks the node's interfaces instead, which also know the addresses no object
    /// names.
    pub fn node_ips(&self) -> &[IpAddr] {
        &self.node_ips
    }

    /// The table with the Services and addresses it does not proxy on purpose.
    pub fn with_not_proxied(mut self, not_proxied: Arc<[NotProxied]>) -> Self {
        self.not_proxied = not_proxied;
        self
    }

    /// Services (headless, ExternalName, another proxy's) and addresses (`ipMode: Proxy`)
    /// left out on purpose, with the addresses and ports they name.
    pub fn not_proxied(&self) -> &[NotProxied] {
        &self.not_proxied
    }

    /// The table with the frontends its inputs named but it refused.
    pub fn with_refused(mut self, refused: Arc<[Refusal]>) -> Self {
        self.refused = refused;
        self
    }

    /// Every frontend refused (bad address, another Service's ClusterIP, a conflict), as of
    /// this table: an operator's to-do list, empty when the input is clean.
    pub fn refused(&self) -> &[Refusal] {
        &self.refused
    }

    /// The frontend for an exact address:port/protocol.
    #[inline]
    pub fn get(&self, key: &FrontendKey) -> Option<&Arc<Frontend>> {
        self.frontends.get(key)
    }

    /// The frontend a connection to `dst` reaches: the exact VIP first, then a NodePort when the
    /// caller says `dst` is one of this node's node-port addresses.
    #[inline]
    pub fn lookup(&self, dst: SocketAddr, proto: Protocol, dst_is_node_port_addr: bool) -> Option<&Arc<Frontend>> {
        let exact = FrontendKey::new(dst.ip(), dst.port(), proto);
        if let Some(f) = self.frontends.get(&exact) {
            return Some(f);
        }
        if dst_is_node_port_addr {
            return self.frontends.get(&FrontendKey::node_port(dst.ip(), dst.port(), proto));
        }
        None
    }

    pub fn len(&self) -> usize {
        self.frontends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
    }

    pub fn frontends(&self) -> impl Iterator<Item = &Arc<Frontend>> {
        self.frontends.values()
    }

    /// Frontends in a stable order (service, then kind, then address): for printing.
    pub fn sorted(&self) -> Vec<&Arc<Frontend>> {
        let mut v: Vec<_> = self.frontends.values().collect();
        v.sort_by(|a, b| (&a.service, a.kind, a.key).cmp(&(&b.service, b.kind, b.key)));
        v
    }
}
