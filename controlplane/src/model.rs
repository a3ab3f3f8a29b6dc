//! Compact, validated forms of the Kubernetes objects the proxy needs.
//!
//! Objects arrive as k8s-openapi's `Service`, `EndpointSlice` and `Node`; they are converted
//! once, at ingestion, into these small structs: only the fields that change the routing table
//! are kept (memory stays proportional to what the proxy uses, not to what the API returns),
//! and every string that must be an IP or a known enum is checked here, so the compiler works
//! on facts and a malformed object is rejected with a reason before it can touch the table.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use k8s_openapi::api::core::v1::{Node, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use schedulers::SchedulerKind;

use crate::error::ObjectError;
use crate::explain::{NotProxied, PortSpec, Unserved};
use crate::table::{Affinity, Protocol};

/// The label kube-proxy uses to let another proxy own a Service.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label that marks a Service no node proxy should see (kube-proxy's informer selects
/// `!service.kubernetes.io/headless`), whatever its clusterIP: set by controllers that serve
/// the Service some other way.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The value of [`SERVICE_PROXY_NAME_LABEL`] that means "tpvs proxies this".
pub const OUR_PROXY_NAME: &str = "tpvs";
/// Per-Service scheduler choice.
pub const SCHEDULER_ANNOTATION: &str = "tpvs/scheduler";
/// Per-endpoint weights: `KEY=WEIGHT,...`, KEY being an endpoint IP or its targetRef name.
pub const WEIGHTS_ANNOTATION: &str = "tpvs/weights";
/// The label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The Node label holding its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10_800);

/// namespace/name of a Service or an EndpointSlice (both are namespaced, and the proxy never
/// needs to tell the two kinds apart by key: each lives in its own map).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey { namespace: Arc::from(namespace), name: Arc::from(name) }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortInfo {
    pub name: Arc<str>,
    pub port: u16,
    pub node_port: Option<u16>,
    pub protocol: Protocol,
}

/// What the compiler needs of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub key: ObjectKey,
    pub cluster_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePortInfo>,
    /// Node ports are opened only for NodePort and LoadBalancer Services.
    pub exposes_node_ports: bool,
    pub external_policy_local: bool,
    pub internal_policy_local: bool,
    pub affinity: Option<Affinity>,
    pub health_check_node_port: Option<u16>,
    /// `spec.loadBalancerSourceRanges`: the only clients its load-balancer IPs accept (all
    /// when empty).
    pub load_balancer_source_ranges: Vec<IpNet>,
    pub scheduler: Option<SchedulerKind>,
    /// Weight per endpoint IP or targetRef name.
    pub weights: BTreeMap<String, u32>,
    pub traffic_distribution: Option<String>,
    /// `spec.type` ("ClusterIP" when unset), for `tpvs explain`.
    pub service_type: Arc<str>,
    /// Load-balancer ingress IPs with `ipMode: Proxy`: never frontends, kept to explain why.
    pub ip_mode_proxy_ips: Vec<IpAddr>,
}

/// Why a Service is not proxied at all (not an error: kube-proxy skips these too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    Headless,
    /// Labelled [`HEADLESS_LABEL`].
    HeadlessLabel,
    ExternalName,
    OtherProxy(String),
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skipped::Headless => f.write_str("headless (clusterIP: None)"),
            Skipped::HeadlessLabel => write!(f, "labelled {HEADLESS_LABEL}"),
            Skipped::ExternalName => f.write_str("type ExternalName"),
            Skipped::OtherProxy(p) => write!(f, "{SERVICE_PROXY_NAME_LABEL}={p}"),
        }
    }
}

fn parse_ip(field: &str, s: &str) -> Result<IpAddr, ObjectError> {
    s.trim().parse().map_err(|_| ObjectError::invalid(field, format!("{s:?} is not an IP address")))
}

/// A source range as the API server accepts it: a CIDR, surrounding spaces ignored and host
/// bits masked off (legacy objects may carry them).
fn parse_cidr(field: &str, s: &str) -> Result<IpNet, ObjectError> {
    s.trim()
        .parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|_| ObjectError::invalid(field, format!("{s:?} is not a CIDR")))
}

fn parse_protocol(field: &str, p: Option<&str>) -> Result<Protocol, ObjectError> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(ObjectError::invalid(field, format!("unknown protocol {other:?}"))),
    }
}

fn port_u16(field: &str, p: i32) -> Result<u16, ObjectError> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ObjectError::invalid(field, format!("port {p} is out of range 1-65535")))
}

fn parse_weights(s: &str) -> Result<BTreeMap<String, u32>, ObjectError> {
    let mut out = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, w) = item.split_once('=').ok_or_else(|| {
            ObjectError::invalid(WEIGHTS_ANNOTATION, format!("{item:?} is not KEY=WEIGHT"))
        })?;
        let w: u32 = w.trim().parse().map_err(|_| {
            ObjectError::invalid(WEIGHTS_ANNOTATION, format!("weight {w:?} of {k:?} is not a whole number"))
        })?;
        if w > 65_535 {
            return Err(ObjectError::invalid(WEIGHTS_ANNOTATION, format!("weight {w} of {k:?} exceeds 65535")));
        }
        out.insert(k.trim().to_string(), w);
    }
    Ok(out)
}

#[cfg(test)]
impl ServiceInfo {
    /// A ClusterIP Service `t/name` on `cluster_ips` with nothing else set, for unit tests.
    pub(crate) fn for_test(name: &str, cluster_ips: Vec<IpAddr>) -> ServiceInfo {
        ServiceInfo {
            key: ObjectKey::new("t", name),
            cluster_ips,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            ports: Vec::new(),
            exposes_node_ports: false,
            external_policy_local: false,
            internal_policy_local: false,
            affinity: None,
            health_check_node_port: None,
            load_balancer_source_ranges: Vec::new(),
            scheduler: None,
            weights: BTreeMap::new(),
            traffic_distribution: None,
            service_type: Arc::from("ClusterIP"),
            ip_mode_proxy_ips: Vec::new(),
        }
    }
}

impl ServiceInfo {
    /// Converts a Service; `Ok(Err(skipped))` for Services kube-proxy would not proxy.
    pub fn from_service(svc: &Service) -> Result<Result<ServiceInfo, Skipped>, ObjectError> {
        let meta = &svc.metadata;
        let name = meta.name.as_deref().filter(|n| !n.is_empty()).ok_or(ObjectError::MissingName)?;
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        let key = ObjectKey::new(namespace, name);

        if meta.labels.as_ref().is_some_and(|l| l.contains_key(HEADLESS_LABEL)) {
            return Ok(Err(Skipped::HeadlessLabel));
        }
        if let Some(proxy) = meta.labels.as_ref().and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL))
            && proxy != OUR_PROXY_NAME
        {
            return Ok(Err(Skipped::OtherProxy(proxy.clone())));
        }
        let spec = svc.spec.as_ref().ok_or_else(|| ObjectError::invalid("spec", "missing"))?;
        let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
        if svc_type == "ExternalName" {
            return Ok(Err(Skipped::ExternalName));
        }
        let raw_ips: Vec<&str> = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
            _ => spec.cluster_ip.as_deref().into_iter().collect(),
        };
        if raw_ips.iter().any(|ip| ip.eq_ignore_ascii_case("None")) {
            return Ok(Err(Skipped::Headless));
        }
        let cluster_ips = raw_ips
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| parse_ip("spec.clusterIPs", s))
            .collect::<Result<Vec<_>, _>>()?;
        let external_ips = spec
            .external_ips
            .iter()
            .flatten()
            .map(|s| parse_ip("spec.externalIPs", s))
            .collect::<Result<Vec<_>, _>>()?;
        // kube-proxy leaves ingress IPs with ipMode "Proxy" to the load balancer: traffic to
        // them arrives already addressed to the node, so intercepting the VIP would be wrong.
        let ingress = || svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref()).into_iter().flatten();
        let load_balancer_ips = ingress()
            .filter(|ing| ing.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|ing| ing.ip.as_deref())
            .map(|s| parse_ip("status.loadBalancer.ingress[].ip", s))
            .collect::<Result<Vec<_>, _>>()?;
        let ip_mode_proxy_ips = ingress()
            .filter(|ing| ing.ip_mode.as_deref() == Some("Proxy"))
            .filter_map(|ing| ing.ip.as_deref())
            .map(|s| parse_ip("status.loadBalancer.ingress[].ip", s))
            .collect::<Result<Vec<_>, _>>()?;

        let ports = spec
            .ports
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, p)| convert_port(i, p))
            .collect::<Result<Vec<_>, _>>()?;

        let affinity = match spec.session_affinity.as_deref() {
            None | Some("None") => None,
            Some("ClientIP") => {
                let secs = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds);
                let timeout = match secs {
                    None => DEFAULT_AFFINITY_TIMEOUT,
                    Some(s) if (1..=86_400).contains(&s) => Duration::from_secs(s.unsigned_abs().into()),
                    Some(s) => {
                        return Err(ObjectError::invalid(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            format!("{s} is outside 1-86400"),
                        ));
                    }
                };
                Some(Affinity { timeout })
            }
            Some(other) => {
                return Err(ObjectError::invalid("spec.sessionAffinity", format!("unknown value {other:?}")));
            }
        };

        let annotations = meta.annotations.as_ref();
        let scheduler = annotations
            .and_then(|a| a.get(SCHEDULER_ANNOTATION))
            .map(|s| s.parse::<SchedulerKind>())
            .transpose()
            .map_err(|e| ObjectError::invalid(SCHEDULER_ANNOTATION, e.to_string()))?;
        let weights = match annotations.and_then(|a| a.get(WEIGHTS_ANNOTATION)) {
            Some(w) => parse_weights(w)?,
            None => BTreeMap::new(),
        };
        let exposes_node_ports = matches!(svc_type, "NodePort" | "LoadBalancer");
        let load_balancer_source_ranges = spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .map(|s| parse_cidr("spec.loadBalancerSourceRanges", s))
            .collect::<Result<Vec<_>, _>>()?;
        // 0 means "none allocated": kube-proxy proxies the Service and opens no health server.
        let health_check_node_port = match spec.health_check_node_port {
            None | Some(0) => None,
            Some(p) => Some(port_u16("spec.healthCheckNodePort", p)?),
        };

        Ok(Ok(ServiceInfo {
            key,
            cluster_ips,
            external_ips,
            load_balancer_ips,
            ports,
            exposes_node_ports,
            external_policy_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            internal_policy_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            affinity,
            health_check_node_port,
            load_balancer_source_ranges,
            scheduler,
            weights,
            traffic_distribution: spec.traffic_distribution.clone(),
            service_type: Arc::from(svc_type),
            ip_mode_proxy_ips,
        }))
    }
}

/// What a Service kube-proxy would not proxy names (the addresses and ports that parse), so
/// `tpvs explain` can say why an address of it does not answer.
pub fn not_proxied(svc: &Service, why: Skipped) -> Option<NotProxied> {
    let meta = &svc.metadata;
    let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
    let key = ObjectKey::new(meta.namespace.as_deref().unwrap_or("default"), name);
    let spec = svc.spec.as_ref();
    let addresses = spec
        .into_iter()
        .flat_map(|s| s.cluster_ips.iter().flatten().chain(s.cluster_ip.iter()).chain(s.external_ips.iter().flatten()))
        .chain(
            svc.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_ref()),
        )
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .fold(Vec::new(), |mut v, ip| {
            if !v.contains(&ip) {
                v.push(ip);
            }
            v
        });
    let ports = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, p)| convert_port(i, p).ok())
        .map(|p| PortSpec { port: p.port, protocol: p.protocol, node_port: p.node_port })
        .collect();
    Some(NotProxied { service: key, why: Unserved::Service(why), addresses, ports })
}

fn convert_port(i: usize, p: &ServicePort) -> Result<ServicePortInfo, ObjectError> {
    let field = format!("spec.ports[{i}]");
    Ok(ServicePortInfo {
        name: Arc::from(p.name.as_deref().unwrap_or("")),
        port: port_u16(&format!("{field}.port"), p.port)?,
        node_port: match p.node_port {
            Some(np) => Some(port_u16(&format!("{field}.nodePort"), np)?),
            None => None,
        },
        protocol: parse_protocol(&format!("{field}.protocol"), p.protocol.as_deref())?,
    })
}

/// One port of an EndpointSlice (the endpoint controller has already resolved the Service's
/// `targetPort`, by number or by name, into this number).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: Arc<str>,
    pub port: u16,
    pub protocol: Protocol,
}

/// One endpoint of a slice: its first address (kube-proxy uses only that) and conditions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub ip: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    pub zone_hints: Vec<Arc<str>>,
    pub node_hints: Vec<Arc<str>>,
    pub target_name: Option<Arc<str>>,
}

/// What the compiler needs of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    pub key: ObjectKey,
    pub service: ObjectKey,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<EndpointInfo>,
}

impl SliceInfo {
    /// Converts a slice; `Ok(None)` for slices the proxy ignores (FQDN address type, or not
    /// owned by a Service).
    pub fn from_slice(slice: &EndpointSlice) -> Result<Option<SliceInfo>, ObjectError> {
        let meta = &slice.metadata;
        let name = meta.name.as_deref().filter(|n| !n.is_empty()).ok_or(ObjectError::MissingName)?;
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        let Some(service) = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            return Ok(None);
        };
        let want_v6 = match slice.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            "FQDN" => return Ok(None),
            other => return Err(ObjectError::invalid("addressType", format!("unknown value {other:?}"))),
        };
        let ports = slice
            .ports
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, p)| {
                // A port without a number means "all ports" in the API; kube-proxy ignores it.
                let num = p.port?;
                Some((|| {
                    Ok(SlicePort {
                        name: Arc::from(p.name.as_deref().unwrap_or("")),
                        port: port_u16(&format!("ports[{i}].port"), num)?,
                        protocol: parse_protocol(&format!("ports[{i}].protocol"), p.protocol.as_deref())?,
                    })
                })())
            })
            .collect::<Result<Vec<_>, ObjectError>>()?;
        let mut endpoints = Vec::with_capacity(slice.endpoints.len());
        for (i, ep) in slice.endpoints.iter().enumerate() {
            let Some(first) = ep.addresses.first() else { continue };
            let ip = parse_ip(&format!("endpoints[{i}].addresses[0]"), first)?;
            if ip.is_ipv6() != want_v6 {
                return Err(ObjectError::invalid(
                    format!("endpoints[{i}].addresses[0]"),
                    format!("{ip} does not match addressType {}", slice.address_type),
                ));
            }
            let cond = ep.conditions.as_ref();
            // kube-proxy's reading of absent conditions: `ready` and `serving` default to true,
            // `terminating` to false. So a terminating endpoint that does not say it stopped
            // serving is a serving-terminating fallback candidate.
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(true);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            let hints = ep.hints.as_ref();
            endpoints.push(EndpointInfo {
                ip,
                ready,
                serving,
                terminating,
                node: ep.node_name.as_deref().map(Arc::from),
                zone: ep.zone.as_deref().map(Arc::from),
                zone_hints: hints
                    .and_then(|h| h.for_zones.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|z| Arc::from(z.name.as_str()))
                    .collect(),
                node_hints: hints
                    .and_then(|h| h.for_nodes.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|n| Arc::from(n.name.as_str()))
                    .collect(),
                target_name: ep.target_ref.as_ref().and_then(|t| t.name.as_deref()).map(Arc::from),
            });
        }
        Ok(Some(SliceInfo {
            key: ObjectKey::new(namespace, name),
            service: ObjectKey::new(namespace, service),
            ports,
            endpoints,
        }))
    }
}

/// What the compiler needs of this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// The node's IP of each family as kube-proxy picks it from `status.addresses`: the first
    /// InternalIP of that family, else its first ExternalIP (`--bind-address` overrides it).
    pub ips: Vec<IpAddr>,
    /// `spec.podCIDRs` (or the older `spec.podCIDR`): this node's pod ranges, what
    /// `--detect-local-mode NodeCIDR` counts as local traffic.
    pub pod_cidrs: Vec<IpNet>,
}

impl NodeInfo {
    pub fn from_node(node: &Node) -> NodeInfo {
        let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
        let of_type = |kind: &'static str| {
            addresses
                .into_iter()
                .flatten()
                .filter(move |a| a.type_ == kind)
                .filter_map(|a| a.address.trim().parse::<IpAddr>().ok())
        };
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in of_type("InternalIP").chain(of_type("ExternalIP")) {
            if !ips.iter().any(|known| known.is_ipv4() == ip.is_ipv4()) {
                ips.push(ip);
            }
        }
        let spec = node.spec.as_ref();
        let pod_cidrs = match spec.and_then(|s| s.pod_cidrs.as_ref()).filter(|c| !c.is_empty()) {
            Some(cidrs) => cidrs.iter().collect::<Vec<_>>(),
            None => spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
        };
        NodeInfo {
            name: node.metadata.name.as_deref().map(Arc::from),
            zone: node.metadata.labels.as_ref().and_then(|l| l.get(ZONE_LABEL)).map(|z| Arc::from(z.as_str())),
            ips,
            // Malformed ranges are left out: the API server validates them, and a missing
            // range only means fewer clients count as local.
            pod_cidrs: pod_cidrs.into_iter().filter_map(|c| c.trim().parse::<IpNet>().ok().map(|n| n.trunc())).collect(),
        }
    }

    /// The node's IP of `family`'s family, if known.
    pub fn ip_of_family(&self, family: IpAddr) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| ip.is_ipv4() == family.is_ipv4())
    }
}
