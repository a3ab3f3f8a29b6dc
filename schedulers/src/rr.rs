//! Round robin (IPVS `rr`): each pickable backend in turn.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::BackendSet;
use crate::context::{PickContext, Tried};
use crate::scheduler::{BackendIndex, Scheduler, SchedulerKind};

#[derive(Debug)]
pub struct RoundRobin {
    set: Arc<BackendSet>,
    /// Indices of pickable backends, so a pick never scans quiesced ones.
    pickable: Vec<BackendIndex>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(set: Arc<BackendSet>) -> Self {
        let pickable = set.iter().enumerate().filter(|(_, b)| b.is_pickable()).map(|(i, _)| i).collect();
        RoundRobin { set, pickable, next: AtomicUsize::new(0) }
    }
}

impl Scheduler for RoundRobin {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Rr
    }

    fn backends(&self) -> &Arc<BackendSet> {
        &self.set
    }

    fn pick(&self, _ctx: &PickContext, tried: &Tried) -> Option<BackendIndex> {
        let n = self.pickable.len();
        if n == 0 {
            return None;
        }
        // A retry does not take another turn: one refused backend must not shift the rotation
        // for every other client, so it walks on from where the rotation stands.
        let start = if tried.is_empty() {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            self.next.load(Ordering::Relaxed)
        };
        (0..n).map(|step| self.pickable[(start + step) % n]).find(|&i| !tried.contains(i))
    }
}
