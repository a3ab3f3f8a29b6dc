//! Which clients count as this node's own, for kube-proxy's short-circuit of
//! `externalTrafficPolicy: Local`: a connection from this node or one of its pods to the
//! Service's external address (NodePort, load-balancer IP, externalIP) is served from all the
//! Service's endpoints, as if it had gone out to the load balancer and come back, so a pod on
//! a node without a local endpoint can still reach its own Service's external address.
//!
//! Policy only: which address ranges are the pods' (`--detect-local-mode`, `--cluster-cidr`,
//! the Node's `spec.podCIDRs`). The node's own addresses are the data plane's to know (they
//! change under it); it counts them as local too, as kube-proxy's `fib saddr type local` does.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;

use crate::model::NodeInfo;

/// `--detect-local-mode`: how pod traffic is told apart from the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DetectLocalMode {
    /// Sources inside `--cluster-cidr` (kube-proxy's default).
    #[default]
    ClusterCidr,
    /// Sources inside this node's `spec.podCIDRs`.
    NodeCidr,
}

impl DetectLocalMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DetectLocalMode::ClusterCidr => "ClusterCIDR",
            DetectLocalMode::NodeCidr => "NodeCIDR",
        }
    }
}

impl fmt::Display for DetectLocalMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `--detect-local-mode` tpvs does not offer, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DetectLocalModeError {
    #[error(
        "--detect-local-mode {0} is not supported by tpvs: it tells pod traffic apart by the \
         interface a packet arrived on, and a connection handed to a userspace proxy by TPROXY \
         does not carry that interface; use ClusterCIDR (with --cluster-cidr) or NodeCIDR"
    )]
    ByInterface(String),
    #[error("--detect-local-mode {0:?}: unknown mode (expected ClusterCIDR or NodeCIDR)")]
    Unknown(String),
}

impl FromStr for DetectLocalMode {
    type Err = DetectLocalModeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "ClusterCIDR" => Ok(DetectLocalMode::ClusterCidr),
            "NodeCIDR" => Ok(DetectLocalMode::NodeCidr),
            mode @ ("BridgeInterface" | "InterfaceNamePrefix") => Err(DetectLocalModeError::ByInterface(mode.to_string())),
            other => Err(DetectLocalModeError::Unknown(other.to_string())),
        }
    }
}

/// The node-wide settings of local-traffic detection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalTrafficOptions {
    pub mode: DetectLocalMode,
    /// `--cluster-cidr`, both families.
    pub cluster_cidrs: Vec<IpNet>,
}

/// The source ranges that count as this node's pods: the first range of each family of the
/// mode's list, as kube-proxy builds one detector per family from the first CIDR of it. Empty
/// when the list is (no `--cluster-cidr`, or a Node without pod ranges): then only the node's
/// own connections are short-circuited.
pub fn pod_sources(opts: &LocalTrafficOptions, node: &NodeInfo) -> Vec<IpNet> {
    let list = match opts.mode {
        DetectLocalMode::ClusterCidr => &opts.cluster_cidrs,
        DetectLocalMode::NodeCidr => &node.pod_cidrs,
    };
    let mut out: Vec<IpNet> = Vec::with_capacity(2);
    for net in list {
        if !out.iter().any(|n| n.addr().is_ipv4() == net.addr().is_ipv4()) {
            out.push(*net);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap_or_else(|e| panic!("bad test range {s}: {e}"))).collect()
    }

    #[test]
    fn the_first_range_of_each_family_counts() {
        let opts = LocalTrafficOptions { mode: DetectLocalMode::ClusterCidr, cluster_cidrs: nets(&["10.1.0.0/16", "fd01::/48", "10.9.0.0/16"]) };
        assert_eq!(pod_sources(&opts, &NodeInfo::default()), nets(&["10.1.0.0/16", "fd01::/48"]));
        let node = NodeInfo { pod_cidrs: nets(&["10.1.3.0/24", "fd01:3::/64"]), ..NodeInfo::default() };
        let opts = LocalTrafficOptions { mode: DetectLocalMode::NodeCidr, cluster_cidrs: nets(&["10.1.0.0/16"]) };
        assert_eq!(pod_sources(&opts, &node), nets(&["10.1.3.0/24", "fd01:3::/64"]));
        assert_eq!(pod_sources(&opts, &NodeInfo::default()), Vec::<IpNet>::new(), "no pod ranges yet: none");
    }

    #[test]
    fn interface_modes_are_refused_with_the_reason() {
        assert_eq!("ClusterCIDR".parse(), Ok(DetectLocalMode::ClusterCidr));
        assert_eq!("NodeCIDR".parse(), Ok(DetectLocalMode::NodeCidr));
        let err = "BridgeInterface".parse::<DetectLocalMode>().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("not supported") && err.contains("TPROXY"), "{err}");
        assert!("InterfaceNamePrefix".parse::<DetectLocalMode>().is_err());
        assert!(matches!("clustercidr".parse::<DetectLocalMode>(), Err(DetectLocalModeError::Unknown(_))));
    }
}
