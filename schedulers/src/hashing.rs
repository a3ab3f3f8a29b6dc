//! Source and destination hashing (IPVS `sh`, `dh`): a client IP (or a destination IP) always
//! lands on the same backend while that backend stays in the set.
//!
//! IPVS hashes into a 256-slot table filled round-robin over the destination list, so adding
//! or removing any destination reshuffles most keys. tpvs keeps the IPVS contract (same key →
//! same backend) and makes it survive membership changes: ownership is decided by weighted
//! rendezvous (highest-random-weight) hashing, so a key moves only when its own backend leaves
//! (or a new backend outbids it); removing *other* backends never moves it.
//!
//! Rendezvous needs O(n) per lookup, so it is precomputed: keys fall into [`BUCKETS`] buckets
//! (`key_hash % BUCKETS`, a mask since it is a power of two) and each bucket's owner is the
//! rendezvous winner for that bucket. A pick is then one table load. A retry ranks the
//! remaining backends for the same bucket, so it is the bucket's runner-up: also stable.
//!
//! A backend's identity is a hash of its address text (`10.0.0.1:80`), so the layout is the
//! same in every tpvs process on every node and across restarts.

use std::sync::Arc;

use crate::backend::BackendSet;
use crate::context::{PickContext, Tried};
use crate::scheduler::{BackendIndex, Scheduler, SchedulerKind};
use crate::mix::{hash_bytes, mix64};

/// Number of buckets keys are spread over. 4096 keeps the table at 16 KiB (L1-resident) while
/// giving each of a few hundred backends enough buckets for an even share.
pub const BUCKETS: usize = 4096;

/// Seed of the backend identity hash (fixed forever: changing it remaps every key).
const ID_SEED: u64 = 0x7470_7673_6873_6864;
/// Salt of the per-bucket hash, so bucket numbers and identities do not mix linearly.
const BUCKET_SALT: u64 = 0x6275_636b_6574_7321;

/// Which address the key is taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// The client's IP (`sh`): session affinity by client.
    Source,
    /// The original destination IP (`dh`): e.g. one cache per destination.
    Destination,
}

#[derive(Debug, Clone, Copy)]
struct Member {
    index: u32,
    id: u64,
    weight: u32,
}

#[derive(Debug)]
pub struct HashScheduler {
    set: Arc<BackendSet>,
    key: Key,
    members: Vec<Member>,
    /// Whether weights differ; equal weights rank by the raw score (same order, no floats).
    weighted: bool,
    /// Owner (set index) of each bucket; empty when nothing is pickable.
    table: Vec<u32>,
}

/// The identity hash of a backend address: deterministic across processes.
fn identity(addr: &crate::addr::BackendAddr) -> u64 {
    hash_bytes(ID_SEED, addr.to_string().as_bytes())
}

#[inline]
fn bucket_hash(bucket: usize) -> u64 {
    mix64(bucket as u64 ^ BUCKET_SALT)
}

/// The rendezvous score of `m` for a bucket: uniform in u64 when unweighted.
#[inline]
fn raw_score(m: &Member, bucket_hash: u64) -> u64 {
    mix64(m.id ^ bucket_hash)
}

/// Weighted rendezvous score `-w / ln(u)`, u uniform in (0, 1): a backend of weight w wins a
/// bucket with probability w / Σw (the standard weighted-HRW construction). For equal weights
/// it is increasing in u, so it ranks exactly like `raw_score`, which is why the integer path
/// may be used whenever weights are all equal without changing any owner.
#[inline]
fn weighted_score(m: &Member, bucket_hash: u64) -> f64 {
    // Top 53 bits plus one half: strictly inside (0, 1), so ln(u) is finite and negative.
    let u = ((raw_score(m, bucket_hash) >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
    -f64::from(m.weight) / u.ln()
}

impl HashScheduler {
    pub fn new(set: Arc<BackendSet>, key: Key) -> Self {
        let members: Vec<Member> = set
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_pickable())
            .filter_map(|(i, b)| {
                Some(Member { index: u32::try_from(i).ok()?, id: identity(&b.addr), weight: b.weight })
            })
            .collect();
        let weighted = members.windows(2).any(|w| w[0].weight != w[1].weight);
        let mut sched = HashScheduler { set, key, members, weighted, table: Vec::new() };
        if !sched.members.is_empty() {
            let all = Tried::new();
            sched.table = (0..BUCKETS).filter_map(|b| sched.rank_first(b, &all)).collect();
        }
        sched
    }

    pub fn key(&self) -> Key {
        self.key
    }

    /// The owner (set index) of every bucket, for tests and `tpvs list`.
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// The bucket a key hash falls into.
    #[inline]
    pub fn bucket_of(key_hash: u64) -> usize {
        (key_hash as usize) & (BUCKETS - 1)
    }

    /// The rendezvous winner for `bucket` among members not in `tried`; ties (astronomically
    /// rare) go to the first in set order.
    fn rank_first(&self, bucket: usize, tried: &Tried) -> Option<u32> {
        let bh = bucket_hash(bucket);
        let untried = self.members.iter().filter(|m| !tried.contains(m.index as usize));
        if self.weighted {
            let mut best: Option<(u32, f64)> = None;
            for m in untried {
                let s = weighted_score(m, bh);
                if best.is_none_or(|(_, b)| s > b) {
                    best = Some((m.index, s));
                }
            }
            best.map(|(i, _)| i)
        } else {
            let mut best: Option<(u32, u64)> = None;
            for m in untried {
                let s = raw_score(m, bh);
                if best.is_none_or(|(_, b)| s > b) {
                    best = Some((m.index, s));
                }
            }
            best.map(|(i, _)| i)
        }
    }
}

impl Scheduler for HashScheduler {
    fn kind(&self) -> SchedulerKind {
        match self.key {
            Key::Source => SchedulerKind::Sh,
            Key::Destination => SchedulerKind::Dh,
        }
    }

    fn backends(&self) -> &Arc<BackendSet> {
        &self.set
    }

    #[inline]
    fn pick(&self, ctx: &PickContext, tried: &Tried) -> Option<BackendIndex> {
        let key_hash = match self.key {
            Key::Source => ctx.source_hash(),
            Key::Destination => ctx.destination_hash(),
        };
        let bucket = Self::bucket_of(key_hash);
        if tried.is_empty() {
            return self.table.get(bucket).map(|&i| i as usize);
        }
        self.rank_first(bucket, tried).map(|i| i as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::addr::{ClientAddr, OrigDstAddr};
    use crate::backend::Backend;
    use crate::candidates::test_support::{addr_of, backend, ctx, set, sock};

    fn sh(set: Arc<BackendSet>) -> HashScheduler {
        HashScheduler::new(set, Key::Source)
    }

    fn addr_picked(s: &HashScheduler, c: &PickContext) -> Option<SocketAddr> {
        let i = s.pick(c, &Tried::new())?;
        Some(s.backends().get(i)?.addr.0)
    }

    #[test]
    fn same_key_same_backend() {
        let s = sh(set(&[1; 10]));
        for i in 0..500 {
            let a = s.pick(&ctx(i), &Tried::new());
            // Another port from the same client IP: sh keys on the IP only.
            let mut other = ctx(i);
            other.client.0.set_port(other.client.port().wrapping_add(7));
            assert_eq!(a, s.pick(&other, &Tried::new()));
            assert!(a.is_some());
        }
    }

    #[test]
    fn dh_keys_on_destination_only() {
        let s = HashScheduler::new(set(&[1; 10]), Key::Destination);
        let to = |dst: &str| PickContext::new(ClientAddr(sock("192.168.1.1:5000")), OrigDstAddr(sock(dst)));
        let from = |client: &str| PickContext::new(ClientAddr(sock(client)), OrigDstAddr(sock("10.96.0.10:80")));
        let first = s.pick(&from("192.168.1.1:1000"), &Tried::new());
        for k in 0..200u32 {
            let client = format!("192.168.{}.{}:{}", k / 200, k % 200 + 1, 1000 + k);
            assert_eq!(s.pick(&from(&client), &Tried::new()), first, "dh ignores the client");
        }
        let spread: std::collections::HashSet<_> = (0..200)
            .filter_map(|k| s.pick(&to(&format!("10.96.{}.{}:80", k / 200, k % 200 + 1)), &Tried::new()))
            .collect();
        assert_eq!(spread.len(), 10, "destinations spread over all backends");
    }

    #[test]
    fn keys_spread_evenly() {
        let s = sh(set(&[1; 8]));
        let mut counts = [0usize; 8];
        for &owner in s.table() {
            counts[owner as usize] += 1;
        }
        // 512 buckets each on average; HRW gives a binomial share, sd ≈ 21.
        for c in counts {
            assert!((400..=624).contains(&c), "bucket shares {counts:?}");
        }
        let mut hits = [0usize; 8];
        for i in 0..20_000 {
            if let Some(b) = s.pick(&ctx(i), &Tried::new()) {
                hits[b] += 1;
            }
        }
        assert!(hits.iter().all(|&h| h > 1_500), "client spread {hits:?}");
    }

    #[test]
    fn weights_shift_shares() {
        let s = sh(set(&[1, 3]));
        let heavy = s.table().iter().filter(|&&o| o == 1).count() as f64 / BUCKETS as f64;
        assert!((heavy - 0.75).abs() < 0.03, "weight-3 backend owns {heavy}");
    }

    #[test]
    fn stable_when_other_backends_leave() {
        for weights in [vec![1u32; 20], (1..=20).collect::<Vec<u32>>()] {
            let full = sh(set(&weights));
            // Rebuild from fresh Backend values (new stats) without every third backend.
            let kept: Vec<Backend> = (0..20).filter(|i| i % 3 != 1).map(|i| backend(addr_of(i), weights[i])).collect();
            let smaller = sh(Arc::new(BackendSet::new(kept)));
            let removed: Vec<SocketAddr> = (0..20).filter(|i| i % 3 == 1).map(addr_of).collect();
            let mut moved_because_removed = 0;
            for i in 0..5_000 {
                let c = ctx(i);
                let (before, after) = (addr_picked(&full, &c), addr_picked(&smaller, &c));
                let before = before.unwrap_or_else(|| panic!("no pick for key {i}"));
                if removed.contains(&before) {
                    moved_because_removed += 1;
                } else {
                    assert_eq!(Some(before), after, "key {i} moved though its backend stayed");
                }
            }
            assert!(moved_because_removed > 0);
        }
    }

    #[test]
    fn adding_a_backend_only_takes_keys_for_itself() {
        let before = sh(set(&[1; 9]));
        let after = sh(set(&[1; 10]));
        for b in 0..BUCKETS {
            let (x, y) = (before.table()[b], after.table()[b]);
            assert!(x == y || y == 9, "bucket {b} moved from {x} to {y}, not to the newcomer");
        }
    }

    #[test]
    fn retry_is_the_runner_up_and_excludes_tried() {
        let s = sh(set(&[1, 1, 1, 1, 0]));
        let c = ctx(42);
        let mut tried = Tried::new();
        let mut order = Vec::new();
        while let Some(i) = s.pick(&c, &tried) {
            assert!(!tried.contains(i));
            order.push(i);
            tried.push(i);
        }
        order.sort_unstable();
        assert_eq!(order, [0, 1, 2, 3], "every pickable backend once, the quiesced one never");
        // The runner-up is stable too: the same for a rebuilt set.
        let again = sh(set(&[1, 1, 1, 1, 0]));
        let mut t = Tried::new();
        t.push(s.pick(&c, &Tried::new()).unwrap_or(usize::MAX));
        assert_eq!(s.pick(&c, &t), again.pick(&c, &t));
    }

    #[test]
    fn golden_identity_hash() {
        // Pinned: a change here remaps every sh/dh client on upgrade.
        let s = sh(set(&[1, 1, 1]));
        let head: Vec<u32> = s.table()[..16].to_vec();
        assert_eq!(head, GOLDEN_SH_HEAD);
    }

    const GOLDEN_SH_HEAD: [u32; 16] = [0, 2, 0, 2, 0, 2, 2, 0, 0, 1, 1, 2, 0, 0, 1, 2];
}
