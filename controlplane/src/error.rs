//! Errors the control plane reports (and counts) without ever dropping the live table.

use std::path::PathBuf;

/// A Kubernetes object that cannot be used as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("metadata.name is missing")]
    MissingName,
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl ObjectError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ObjectError::Invalid { field: field.into(), reason: reason.into() }
    }
}

/// One problem found while loading manifests: which file, which document (counted from 1),
/// what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: cannot read: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: document {document}: not valid YAML: {reason}")]
    Yaml { path: PathBuf, document: usize, reason: String },
    #[error("{path}: document {document} ({kind} {name}): {reason}")]
    Object { path: PathBuf, document: usize, kind: String, name: String, reason: String },
    /// Larger than `ManifestLimits::max_file_bytes`: not read at all.
    #[error("{path}: {size} bytes, more than the limit of {limit}; not read")]
    TooLarge { path: PathBuf, size: u64, limit: u64 },
    /// Nested deeper than `ManifestLimits::max_depth`: refused before parsing, whose cost grows
    /// with the square of the depth.
    #[error("{path}: document {document}, line {line}: nested more than {limit} deep; not parsed")]
    TooDeep { path: PathBuf, document: usize, line: usize, limit: usize },
    /// More documents than `ManifestLimits::max_documents`: refused before parsing.
    #[error("{path}: more than {limit} YAML documents; not parsed")]
    TooManyDocuments { path: PathBuf, limit: usize },
}

/// Two Services claiming the same frontend: a ClusterIP keeps it against any other kind, and
/// otherwise the first in namespace/name order does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error("frontend {frontend} of {loser} is already served by {winner}; ignoring it for {loser}")]
pub struct FrontendConflict {
    pub frontend: String,
    pub winner: String,
    pub loser: String,
}

/// Why a Service may not have a frontend address it names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AddressProblem {
    /// `0.0.0.0` / `::`: the data plane keys NodePorts there, so it would answer on every
    /// node address (the node's own health and metrics ports included).
    Unspecified,
    /// Each node's own loopback: taking it would capture the node's local services.
    Loopback,
    /// Link-local: node-local by definition (and home of cloud metadata endpoints).
    LinkLocal,
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// An externalIP or load-balancer IP outside `--external-ip-cidrs`.
    NotAllowed,
    /// Another Service's ClusterIP (the CVE-2020-8554 man-in-the-middle): the ClusterIP's
    /// Service keeps it; the value is that Service, namespace/name.
    ClusterIpOf(String),
    /// An externalIP or load-balancer IP of an IP family the Service has no ClusterIP of: it
    /// has no endpoints of that family to send traffic to, and kube-proxy ignores it.
    OtherFamily,
}

impl AddressProblem {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            AddressProblem::Unspecified => "unspecified",
            AddressProblem::Loopback => "loopback",
            AddressProblem::LinkLocal => "link_local",
            AddressProblem::Multicast => "multicast",
            AddressProblem::Broadcast => "broadcast",
            AddressProblem::NotAllowed => "not_allowed",
            AddressProblem::ClusterIpOf(_) => "cluster_ip_taken",
            AddressProblem::OtherFamily => "other_family",
        }
    }
}

impl std::fmt::Display for AddressProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddressProblem::Unspecified => f.write_str("an unspecified address would take every address of the node"),
            AddressProblem::Loopback => f.write_str("a loopback address belongs to the node"),
            AddressProblem::LinkLocal => f.write_str("a link-local address belongs to the node's link"),
            AddressProblem::Multicast => f.write_str("a multicast address is no frontend"),
            AddressProblem::Broadcast => f.write_str("the broadcast address is no frontend"),
            AddressProblem::NotAllowed => f.write_str("outside --external-ip-cidrs"),
            AddressProblem::ClusterIpOf(owner) => write!(f, "it is the ClusterIP of {owner}, which keeps it"),
            AddressProblem::OtherFamily => f.write_str("the Service has no ClusterIP of this IP family (ignored, as kube-proxy does)"),
        }
    }
}

/// One address of a Service left out of the table; the Service's other frontends are served.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{service}: {field} {addr} refused: {problem}")]
pub struct AddressRefused {
    /// namespace/name.
    pub service: String,
    /// The field the address came from, as the API spells it.
    pub field: &'static str,
    pub addr: std::net::IpAddr,
    pub problem: AddressProblem,
}

/// A frontend the table leaves out, and why: carried by the table itself, so every reader
/// (the listing, metrics) sees the same set as the data plane.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Address(#[from] AddressRefused),
    #[error(transparent)]
    Conflict(#[from] FrontendConflict),
}

impl Refusal {
    /// Every value [`Self::reason`] can take, for exporting each (zero included).
    pub const REASONS: [&'static str; 9] = [
        "unspecified",
        "loopback",
        "link_local",
        "multicast",
        "broadcast",
        "not_allowed",
        "cluster_ip_taken",
        "other_family",
        "conflict",
    ];

    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Address(a) => a.problem.label(),
            Refusal::Conflict(_) => "conflict",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed() {
        let problems = [
            AddressProblem::Unspecified,
            AddressProblem::Loopback,
            AddressProblem::LinkLocal,
            AddressProblem::Multicast,
            AddressProblem::Broadcast,
            AddressProblem::NotAllowed,
            AddressProblem::ClusterIpOf("a/b".into()),
            AddressProblem::OtherFamily,
        ];
        let addr = std::net::IpAddr::from([0, 0, 0, 0]);
        let mut refusals: Vec<Refusal> = problems
            .into_iter()
            .map(|problem| AddressRefused { service: "t/s".into(), field: "spec.externalIPs", addr, problem }.into())
            .collect();
        refusals.push(FrontendConflict { frontend: "TCP 1.2.3.4:80".into(), winner: "a/b".into(), loser: "c/d".into() }.into());
        let reasons: Vec<&str> = refusals.iter().map(Refusal::reason).collect();
        assert_eq!(reasons, Refusal::REASONS);
    }
}
