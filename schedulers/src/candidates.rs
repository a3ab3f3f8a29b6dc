//! The pickable members of a set in a compact, cache-friendly form, shared by the schedulers
//! that read per-backend stats on every pick (lc family, p2c, ewma) and by retry paths.
//!
//! A `Backend` is large (address, names, zone, ...); a scan over hundreds of them for one
//! counter each would drag all of that through the cache. A `Candidate` is 16 bytes.

use std::sync::Arc;

use crate::backend::BackendSet;
use crate::context::Tried;
use crate::stats::BackendStats;

#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub(crate) stats: Arc<BackendStats>,
    pub(crate) weight: u32,
    /// Position in the set. u32 keeps the struct small; a set with more than 4 billion members
    /// cannot exist in practice, and `pickable` skips any index that would not fit.
    pub(crate) index: u32,
}

impl Candidate {
    #[inline]
    pub(crate) fn index(&self) -> usize {
        self.index as usize
    }
}

/// The members with weight > 0, in set order.
pub(crate) fn pickable(set: &BackendSet) -> Vec<Candidate> {
    set.iter()
        .enumerate()
        .filter(|(_, b)| b.is_pickable())
        .filter_map(|(i, b)| {
            Some(Candidate { stats: Arc::clone(&b.stats), weight: b.weight, index: u32::try_from(i).ok()? })
        })
        .collect()
}

/// How many candidates a retry may still choose from.
pub(crate) fn count_untried(cands: &[Candidate], tried: &Tried) -> usize {
    cands.iter().filter(|c| !tried.contains(c.index())).count()
}

/// The `k`-th (0-based, set order) candidate not in `tried`.
pub(crate) fn nth_untried<'a>(cands: &'a [Candidate], tried: &Tried, k: usize) -> Option<&'a Candidate> {
    nth_untried_pos(cands, tried, k).and_then(|p| cands.get(p))
}

/// The position in `cands` of the `k`-th candidate not in `tried` (for schedulers that keep
/// per-candidate state alongside `cands`).
pub(crate) fn nth_untried_pos(cands: &[Candidate], tried: &Tried, k: usize) -> Option<usize> {
    cands.iter().enumerate().filter(|(_, c)| !tried.contains(c.index())).map(|(p, _)| p).nth(k)
}

/// Builders shared by the unit tests of every algorithm module.
#[cfg(test)]
pub(crate) mod test_support {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use crate::addr::{ClientAddr, OrigDstAddr};
    use crate::backend::{Backend, BackendSet};
    use crate::context::PickContext;
    use crate::stats::BackendStats;

    pub(crate) fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
    }

    /// The address of the `i`-th test backend: 10.0.x.y:80, distinct for i < 62_500.
    pub(crate) fn addr_of(i: usize) -> SocketAddr {
        sock(&format!("10.0.{}.{}:80", i / 250, i % 250 + 1))
    }

    pub(crate) fn backend(addr: SocketAddr, weight: u32) -> Backend {
        Backend::new(addr, Arc::new(BackendStats::default())).with_weight(weight)
    }

    /// One backend per weight, at `addr_of(0)`, `addr_of(1)`, ...
    pub(crate) fn set(weights: &[u32]) -> Arc<BackendSet> {
        Arc::new(BackendSet::new(weights.iter().enumerate().map(|(i, &w)| backend(addr_of(i), w)).collect()))
    }

    /// A context for client `i` (distinct IP and port per i) dialling 10.96.0.10:80.
    pub(crate) fn ctx(i: u32) -> PickContext {
        let client = SocketAddr::from(([192, 168, (i >> 8) as u8, i as u8], 1024 + (i % 60_000) as u16));
        PickContext::new(ClientAddr(client), OrigDstAddr(sock("10.96.0.10:80")))
    }
}
