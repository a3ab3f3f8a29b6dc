//! A tournament tree over a set's candidates, ordered by a rule that reads their live active
//! counts, so that "the best backend right now" is one atomic load instead of a scan.
//!
//! The tree is complete over `width` leaves (a power of two ≥ 2); leaf `i` is candidate `i`
//! (set order), padding leaves are empty. Every inner node stores the slot that wins its
//! subtree: the child winners are compared by the [`Order`], and on a tie the left one — the
//! earlier in set order — stays. Because the rule is a total preorder, the root therefore holds
//! the *first* best candidate, exactly what a strict-comparison scan in set order returns.
//!
//! Keeping it current: every candidate's [`BackendStats`](crate::stats::BackendStats) reports
//! each change of its active count ([`ActiveWatch`]), and the tree recomputes the path from
//! that leaf toward the root — at most log₂(width) comparisons, and it stops at the first node
//! whose winner neither changed nor is the changed backend (nothing above can differ: the
//! comparisons there read the same slots with the same counts). The counters change on any
//! thread, so the walks are serialised by one mutex per tree (picks never take it).
//!
//! Why the tree is exact once the updates are done. A thread changes a counter *before* it
//! takes the lock. Two facts hold between walks: (1) a node's winner is one of its children's
//! winners (a walk that changes a node always goes on to its parent); (2) a node whose stored
//! winner is not the rule's choice between its children's winners at the current counts has,
//! in its subtree, a backend whose counter changed and whose walk has not yet run: the change
//! of the winner of one of its children. By (1) that backend is the stored winner of every node
//! from its leaf up to this one, so its walk, which goes on while it is the winner or the
//! winner changes, reaches this node and recomputes it. When no walk is pending every node is
//! therefore its children's correct choice, and the root is the first best backend. A pick
//! racing with updates sees some recent winner — as a scan racing with them would.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::candidates::Candidate;
use crate::stats::ActiveWatch;

/// A rule ranking two candidates by their current counts.
pub(crate) trait Order: Send + Sync + 'static {
    /// Whether `a` is strictly better than `b`. Must be a strict weak order (a total preorder's
    /// "less than"), so ties are well defined and go to the earlier candidate.
    fn better(&self, a: &Candidate, b: &Candidate) -> bool;
}

/// An empty subtree.
const NONE: u32 = u32::MAX;

pub(crate) struct Tournament<O> {
    cands: Vec<Candidate>,
    order: O,
    /// Number of leaves: a power of two, ≥ 2 so the root is an inner node.
    width: usize,
    /// `nodes[1..width]`: the winning slot of each inner node (children of `k`: `2k`, `2k+1`;
    /// `nodes[0]` is unused). Leaves are implicit.
    nodes: Box<[AtomicU32]>,
    /// Serialises path recomputations (see the module doc); picks never take it.
    writer: Mutex<()>,
}

impl<O: Order> Tournament<O> {
    /// Builds the tree over `cands` (at most `u32::MAX - 1` of them: slots are u32) and
    /// subscribes it to every candidate's active count. The caller must call
    /// [`Self::unsubscribe`] before dropping its handle, or the stats keep the tree alive.
    pub(crate) fn new(mut cands: Vec<Candidate>, order: O) -> Arc<Self> {
        cands.truncate(NONE as usize);
        let width = cands.len().next_power_of_two().max(2);
        let nodes = (0..width).map(|_| AtomicU32::new(NONE)).collect();
        let tree = Arc::new(Tournament { cands, order, width, nodes, writer: Mutex::new(()) });
        let watch: Arc<dyn ActiveWatch> = Arc::clone(&tree) as Arc<dyn ActiveWatch>;
        for (slot, c) in (0u32..).zip(&tree.cands) {
            c.stats.watch(&watch, slot);
        }
        // Pairs with the SeqCst counter updates: a change this first computation misses has
        // seen the subscription above and will recompute its path itself.
        std::sync::atomic::fence(Ordering::SeqCst);
        tree.rebuild();
        tree
    }

    /// Ends the subscriptions made by [`Self::new`].
    pub(crate) fn unsubscribe(self: &Arc<Self>) {
        let watch: Arc<dyn ActiveWatch> = Arc::clone(self) as Arc<dyn ActiveWatch>;
        for c in &self.cands {
            c.stats.unwatch(&watch);
        }
    }

    pub(crate) fn candidates(&self) -> &[Candidate] {
        &self.cands
    }

    /// The first best candidate under the order, as of the last completed update; `None` when
    /// there are no candidates.
    #[inline]
    pub(crate) fn leader(&self) -> Option<&Candidate> {
        self.cands.get(self.nodes[1].load(Ordering::Acquire) as usize)
    }

    /// The winner stored at (or implied by) node `k` of the whole tree (leaves: `width..`).
    #[inline]
    fn winner(&self, k: usize) -> u32 {
        if k >= self.width {
            let slot = k - self.width;
            if slot < self.cands.len() { slot as u32 } else { NONE }
        } else {
            self.nodes[k].load(Ordering::Relaxed)
        }
    }

    /// Recomputes inner node `k` from its children (the left one wins ties); returns whether
    /// its winner changed, and the winner.
    #[inline]
    fn recompute(&self, k: usize) -> (bool, u32) {
        let (l, r) = (self.winner(2 * k), self.winner(2 * k + 1));
        let w = match (self.cands.get(l as usize), self.cands.get(r as usize)) {
            (Some(a), Some(b)) => {
                if self.order.better(b, a) {
                    r
                } else {
                    l
                }
            }
            (Some(_), None) => l,
            (None, _) => r,
        };
        let changed = self.nodes[k].swap(w, Ordering::AcqRel) != w;
        (changed, w)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot have left it half-written.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rebuild(&self) {
        let _held = self.lock();
        for k in (1..self.width).rev() {
            self.recompute(k);
        }
    }
}

impl<O: Order> ActiveWatch for Tournament<O> {
    fn active_changed(&self, slot: u32) {
        let _held = self.lock();
        let mut k = (self.width + slot as usize) / 2;
        while k >= 1 {
            let (changed, winner) = self.recompute(k);
            // Nothing above can change: this node kept its winner, and that winner is not the
            // backend whose count changed, so every comparison above reads the same slots
            // with the same counts as before (see the module doc).
            if !changed && winner != slot {
                break;
            }
            k /= 2;
        }
    }
}

impl<O> fmt::Debug for Tournament<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tournament").field("candidates", &self.cands.len()).finish_non_exhaustive()
    }
}
