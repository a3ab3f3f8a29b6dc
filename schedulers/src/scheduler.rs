//! The `Scheduler` trait every algorithm implements, and the names operators type for them.
//!
//! The algorithms depend on this module; [`crate::build`] depends on the algorithms. Keeping
//! the trait apart from the factory is what keeps the dependencies one way.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::backend::BackendSet;
use crate::context::{PickContext, Tried};

/// Position of a backend in the [`BackendSet`] the scheduler was built from.
pub type BackendIndex = usize;

/// A scheduling algorithm bound to one backend set.
///
/// Built once per set (precomputing whatever tables it needs), then picked from many times
/// through `&self` by many threads; per-pick state lives in atomics.
pub trait Scheduler: Send + Sync + fmt::Debug {
    fn kind(&self) -> SchedulerKind;

    /// The set this scheduler picks from.
    fn backends(&self) -> &Arc<BackendSet>;

    /// Picks a pickable backend (weight > 0) that is not in `tried`; `None` when there is none.
    ///
    /// With an empty `tried` this is the first choice; calling again after pushing the failed
    /// index gives the algorithm's next candidate, which is how the data plane retries a
    /// refused or timed-out connect.
    fn pick(&self, ctx: &PickContext, tried: &Tried) -> Option<BackendIndex>;
}

/// The algorithm names, as in `ipvsadm -s` where IPVS has the algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SchedulerKind {
    /// Round robin.
    Rr,
    /// Weighted round robin (IPVS interleaving by weight).
    Wrr,
    /// Least connections.
    Lc,
    /// Weighted least connections.
    Wlc,
    /// Destination hashing.
    Dh,
    /// Source hashing.
    Sh,
    /// Weighted random.
    Random,
    /// Shortest expected delay: (active + 1) / weight.
    Sed,
    /// Never queue: an idle backend if any, else sed.
    Nq,
    /// Power of two choices on active/weight.
    P2c,
    /// Maglev consistent hashing.
    Maglev,
    /// Peak-EWMA latency × load, chosen by power of two choices.
    Ewma,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 12] = [
        SchedulerKind::Rr,
        SchedulerKind::Wrr,
        SchedulerKind::Lc,
        SchedulerKind::Wlc,
        SchedulerKind::Dh,
        SchedulerKind::Sh,
        SchedulerKind::Random,
        SchedulerKind::Sed,
        SchedulerKind::Nq,
        SchedulerKind::P2c,
        SchedulerKind::Maglev,
        SchedulerKind::Ewma,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SchedulerKind::Rr => "rr",
            SchedulerKind::Wrr => "wrr",
            SchedulerKind::Lc => "lc",
            SchedulerKind::Wlc => "wlc",
            SchedulerKind::Dh => "dh",
            SchedulerKind::Sh => "sh",
            SchedulerKind::Random => "random",
            SchedulerKind::Sed => "sed",
            SchedulerKind::Nq => "nq",
            SchedulerKind::P2c => "p2c",
            SchedulerKind::Maglev => "maglev",
            SchedulerKind::Ewma => "ewma",
        }
    }
}

/// What a scheduler's first pick for a new connection depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PickKey {
    /// Only the client's IP (sh): the same client always gets the same backend.
    ClientIp,
    /// Only the destination IP (dh).
    Destination,
    /// The client's IP and port and the destination (maglev's flow hash).
    Flow,
    /// Live state (a cursor, counters, randomness): no pick can be foretold, and asking for
    /// one would move that state.
    State,
}

impl SchedulerKind {
    /// What the first pick depends on: a pick keyed on addresses alone is a pure function of
    /// them, so a tool may call it for a synthetic connection to say where a client goes.
    pub fn pick_key(self) -> PickKey {
        match self {
            SchedulerKind::Sh => PickKey::ClientIp,
            SchedulerKind::Dh => PickKey::Destination,
            SchedulerKind::Maglev => PickKey::Flow,
            _ => PickKey::State,
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scheduler {given:?}; expected one of rr, wrr, lc, wlc, dh, sh, random, sed, nq, p2c, maglev, ewma")]
pub struct UnknownScheduler {
    pub given: String,
}

impl FromStr for SchedulerKind {
    type Err = UnknownScheduler;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        // "peak-ewma" is how the literature names it; accept it as an alias.
        let wanted = if wanted == "peak-ewma" { "ewma".to_string() } else { wanted };
        SchedulerKind::ALL
            .into_iter()
            .find(|k| k.as_str() == wanted)
            .ok_or(UnknownScheduler { given: s.to_string() })
    }
}
