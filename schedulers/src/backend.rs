//! Backends and the immutable sets schedulers are built from.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

pub use crate::addr::BackendAddr;
use crate::stats::BackendStats;

/// Why a backend is in a set.
///
/// `ServingTerminating` backends only appear when the control plane had no ready ones and fell
/// back to endpoints that are shutting down but still serving (KEP-1669); a scheduler treats
/// them like any other member, because being in the set is the control plane's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointCondition {
    Ready,
    ServingTerminating,
}

impl fmt::Display for EndpointCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointCondition::Ready => "Ready",
            EndpointCondition::ServingTerminating => "Terminating",
        })
    }
}

/// One endpoint a scheduler may pick.
#[derive(Clone, Debug)]
pub struct Backend {
    pub addr: BackendAddr,
    /// Relative share; 0 means quiesced (IPVS semantics: never picked for new connections).
    pub weight: u32,
    pub condition: EndpointCondition,
    /// Where the endpoint runs, for display and locality decisions made upstream.
    pub node: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// Shared runtime counters; the same `Arc` for the same address across rebuilds.
    pub stats: Arc<BackendStats>,
}

impl Backend {
    /// A ready backend with weight 1 and fresh stats: handy in tests and benches.
    pub fn new(addr: SocketAddr, stats: Arc<BackendStats>) -> Self {
        Backend {
            addr: BackendAddr(addr),
            weight: 1,
            condition: EndpointCondition::Ready,
            node: None,
            zone: None,
            stats,
        }
    }

    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Whether a scheduler may hand this backend a new connection.
    pub fn is_pickable(&self) -> bool {
        self.weight > 0
    }
}

/// An immutable, ordered set of backends. Order is the control plane's (sorted by address) so
/// that order-sensitive algorithms (rr, wrr tie-breaks) are reproducible across rebuilds.
#[derive(Clone, Debug, Default)]
pub struct BackendSet {
    backends: Vec<Backend>,
}

impl BackendSet {
    pub fn new(backends: Vec<Backend>) -> Self {
        BackendSet { backends }
    }

    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&Backend> {
        self.backends.get(index)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Backend> {
        self.backends.iter()
    }

    pub fn as_slice(&self) -> &[Backend] {
        &self.backends
    }

    /// True when no member may take a new connection (empty, or every weight is 0).
    pub fn none_pickable(&self) -> bool {
        !self.backends.iter().any(Backend::is_pickable)
    }
}

impl<'a> IntoIterator for &'a BackendSet {
    type Item = &'a Backend;
    type IntoIter = std::slice::Iter<'a, Backend>;
    fn into_iter(self) -> Self::IntoIter {
        self.backends.iter()
    }
}
