//! The factory: a [`SchedulerKind`] and a backend set in, a ready scheduler out, plus the
//! tunables some algorithms take.

use std::sync::Arc;

use crate::backend::BackendSet;
use crate::scheduler::{Scheduler, SchedulerKind};

/// Tunables that apply to some algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerOptions {
    /// Maglev lookup table size; must be prime (65537 unless told otherwise).
    pub maglev_table_size: usize,
    /// Seed for the randomised algorithms (random, p2c, ewma); fixed seeds make tests
    /// reproducible.
    pub seed: u64,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions { maglev_table_size: crate::maglev::DEFAULT_TABLE_SIZE, seed: 0x7470_7673 }
    }
}

/// Builds the scheduler `kind` over `set`.
pub fn build(kind: SchedulerKind, set: Arc<BackendSet>, opts: &SchedulerOptions) -> Arc<dyn Scheduler> {
    match kind {
        SchedulerKind::Rr => Arc::new(crate::rr::RoundRobin::new(set)),
        SchedulerKind::Wrr => Arc::new(crate::wrr::WeightedRoundRobin::new(set)),
        SchedulerKind::Lc => Arc::new(crate::least::LeastConnections::new(set, crate::least::Rule::Lc)),
        SchedulerKind::Wlc => Arc::new(crate::least::LeastConnections::new(set, crate::least::Rule::Wlc)),
        SchedulerKind::Sed => Arc::new(crate::least::LeastConnections::new(set, crate::least::Rule::Sed)),
        SchedulerKind::Nq => Arc::new(crate::least::LeastConnections::new(set, crate::least::Rule::Nq)),
        SchedulerKind::Dh => Arc::new(crate::hashing::HashScheduler::new(set, crate::hashing::Key::Destination)),
        SchedulerKind::Sh => Arc::new(crate::hashing::HashScheduler::new(set, crate::hashing::Key::Source)),
        SchedulerKind::Random => Arc::new(crate::random::WeightedRandom::new(set, opts.seed)),
        SchedulerKind::P2c => Arc::new(crate::p2c::PowerOfTwo::new(set, opts.seed)),
        SchedulerKind::Maglev => Arc::new(crate::maglev::Maglev::new(set, opts.maglev_table_size)),
        SchedulerKind::Ewma => Arc::new(crate::ewma::PeakEwma::new(set, opts.seed)),
    }
}
