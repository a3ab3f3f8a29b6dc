//! Why the table is what it is: the reasons the compiler and the index record as they build it,
//! for `tpvs explain` to read back.
//!
//! Nothing here decides anything: the compiler ([`crate::compile`]) decides which endpoints a
//! frontend uses and writes down, in the same step, why each of the others is left out; the
//! index ([`crate::index`]) writes down which Services and addresses it does not proxy. The data
//! path never reads these records: they hang off each [`crate::Frontend`] (one shared record per
//! Service port, family and policy) and off the [`crate::RoutingTable`], built once per compile.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::model::{ObjectKey, Skipped};
use crate::table::Protocol;

/// What the compiler knew about one frontend's endpoints when it built its backend set.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FrontendRecord {
    /// `spec.type` of the Service.
    pub service_type: Arc<str>,
    /// A LoadBalancer Service whose `status.loadBalancer.ingress` has no IP yet.
    pub load_balancer_pending: bool,
    /// EndpointSlices naming the Service (`kubernetes.io/service-name`).
    pub slices: usize,
    /// The topology hints that applied to the Cluster set.
    pub topology: Topology,
    /// Every endpoint the Service's slices name, with what became of it for this frontend.
    pub endpoints: Vec<Considered>,
}

/// Which topology hints the Cluster set honoured (kube-proxy's `topologyModeFromHints`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Topology {
    /// None: every ready endpoint is a candidate.
    #[default]
    Unused,
    /// Only endpoints hinted for this node.
    Node(Arc<str>),
    /// Only endpoints hinted for this node's zone.
    Zone(Arc<str>),
}

/// One endpoint as the compiler saw it for one frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Considered {
    pub ip: IpAddr,
    /// The port of the Service port in the endpoint's slice; `None` when the slice does not
    /// carry that port.
    pub port: Option<u16>,
    pub node: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    pub verdict: EndpointVerdict,
}

impl Considered {
    pub fn address(&self) -> String {
        match self.port {
            Some(p) => SocketAddr::new(self.ip, p).to_string(),
            None => self.ip.to_string(),
        }
    }
}

/// Whether the scheduler sees an endpoint, and why not when it does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointVerdict {
    /// Ready, and in the set the scheduler picks from.
    Used,
    /// Terminating but still serving, used because no endpoint of the set was ready (KEP-1669).
    UsedTerminating,
    Excluded(Exclusion),
}

impl EndpointVerdict {
    pub fn is_used(&self) -> bool {
        !matches!(self, EndpointVerdict::Excluded(_))
    }
}

/// Why an endpoint is left out of a frontend's backend set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    /// Not ready, and not a serving-terminating fallback.
    NotReady,
    /// Terminating and still serving, but ready endpoints exist, so the fallback did not apply.
    TerminatingWithReadyPeers,
    /// Terminating and no longer serving: never used.
    TerminatingNotServing,
    /// `Local` traffic policy and the endpoint runs on another node (or names none).
    OtherNode,
    /// Topology hints are in force and this endpoint's hints name other zones.
    ZoneHint { hints: Vec<Arc<str>> },
    /// Node hints are in force and this endpoint's hints name other nodes.
    NodeHint { hints: Vec<Arc<str>> },
    /// Selected, but its `tpvs/weights` weight is 0: the scheduler never picks it.
    WeightZero,
    /// Its EndpointSlice does not carry the Service port's name (only these ports).
    PortNotInSlice { slice_ports: Vec<Arc<str>> },
    /// Of the other IP family than the frontend's address.
    OtherFamily,
}

impl Exclusion {
    /// Stable code for scripts (`tpvs explain --json`).
    pub fn code(&self) -> &'static str {
        match self {
            Exclusion::NotReady => "not_ready",
            Exclusion::TerminatingWithReadyPeers => "terminating",
            Exclusion::TerminatingNotServing => "terminating_not_serving",
            Exclusion::OtherNode => "other_node",
            Exclusion::ZoneHint { .. } => "zone_hint",
            Exclusion::NodeHint { .. } => "node_hint",
            Exclusion::WeightZero => "weight_zero",
            Exclusion::PortNotInSlice { .. } => "port_not_in_slice",
            Exclusion::OtherFamily => "other_family",
        }
    }
}

fn names(list: &[Arc<str>]) -> String {
    list.iter().map(|s| s.as_ref()).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::NotReady => f.write_str("not ready"),
            Exclusion::TerminatingWithReadyPeers => {
                f.write_str("terminating (still serving, but ready endpoints exist, so the terminating fallback does not apply)")
            }
            Exclusion::TerminatingNotServing => f.write_str("terminating and no longer serving"),
            Exclusion::OtherNode => f.write_str("runs on another node, and the traffic policy is Local"),
            Exclusion::ZoneHint { hints } => write!(f, "topology hint for zone {} only", names(hints)),
            Exclusion::NodeHint { hints } => write!(f, "topology hint for node {} only", names(hints)),
            Exclusion::WeightZero => f.write_str("weight 0 (tpvs/weights): never picked"),
            Exclusion::PortNotInSlice { slice_ports } => {
                let ports: Vec<String> =
                    slice_ports.iter().map(|p| if p.is_empty() { "(unnamed)".to_string() } else { p.to_string() }).collect();
                write!(f, "its EndpointSlice has no port of this name (it has: {})", ports.join(", "))
            }
            Exclusion::OtherFamily => f.write_str("other IP family than the frontend"),
        }
    }
}

/// Why a Service, or one of its addresses, has no frontend at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unserved {
    /// The whole Service is skipped (headless, ExternalName, another proxy's).
    Service(Skipped),
    /// A load-balancer ingress IP with `ipMode: Proxy`: the load balancer delivers to the node.
    IpModeProxy,
}

impl Unserved {
    pub fn code(&self) -> &'static str {
        match self {
            Unserved::Service(Skipped::Headless) => "headless",
            Unserved::Service(Skipped::HeadlessLabel) => "headless_label",
            Unserved::Service(Skipped::ExternalName) => "external_name",
            Unserved::Service(Skipped::OtherProxy(_)) => "other_proxy",
            Unserved::IpModeProxy => "ip_mode_proxy",
        }
    }
}

impl fmt::Display for Unserved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unserved::Service(s) => s.fmt(f),
            Unserved::IpModeProxy => f.write_str(
                "its load-balancer ingress has ipMode: Proxy (the load balancer delivers to the node's own address)",
            ),
        }
    }
}

/// One port a Service not proxied asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    pub port: u16,
    pub protocol: Protocol,
    pub node_port: Option<u16>,
}

/// A Service (or some of its addresses) the table leaves out on purpose, with what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotProxied {
    pub service: ObjectKey,
    pub why: Unserved,
    /// The addresses it would have been reached at (those that parse).
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<PortSpec>,
}
