//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of M slots filled so
//! that every backend owns an almost equal share and a membership change remaps few slots.
//!
//! Population, as in the paper (§3.4, Pseudocode 1): backend i has a preference list
//! `permutation[i][j] = (offset_i + j · skip_i) mod M` with `offset = h1(name) mod M` and
//! `skip = h2(name) mod (M − 1) + 1`. Backends take turns round-robin; on its turn a backend
//! claims the next slot of its list that is still empty. M prime makes every `skip` coprime
//! to M, so each list is a full permutation and the loop always finds an empty slot.
//!
//! Weights: on round r, a backend of weight w takes a turn when `r · w ≥ turns_taken · w_max`,
//! so it fills at w / w_max the rate of the heaviest (the weighted variant Envoy uses). With
//! equal weights every backend takes every round: exactly the paper's algorithm.
//!
//! Lookup is `table[flow_hash mod M]`; a retry walks forward from that slot to the first slot
//! owned by a backend not yet tried, which spreads a failed backend's retries over the others
//! the same way the table spreads its flows.
//!
//! Backend names are their address text, hashed with two fixed seeds, so every tpvs process on
//! every node builds the same table for the same set — which is what makes Maglev useful in
//! front of an ECMP fabric, and what the golden tests pin.

use std::sync::Arc;

use crate::backend::BackendSet;
use crate::context::{PickContext, Tried};
use crate::scheduler::{BackendIndex, Scheduler, SchedulerKind};
use crate::mix::hash_bytes;

/// The paper's default: prime, and ≫ 100 × backends for the sets Services usually have.
pub const DEFAULT_TABLE_SIZE: usize = 65537;

/// The largest table built (64 MiB of u32). A larger request is clamped to it first: a
/// mistyped size must not take the node's memory down.
pub const MAX_TABLE_SIZE: usize = 1 << 24;

/// Seeds of h1 (offset) and h2 (skip); fixed forever, since changing them remaps every flow.
const SEED_OFFSET: u64 = 0x6d61_676c_6576_6f66;
const SEED_SKIP: u64 = 0x6d61_676c_6576_736b;

/// Marks a slot not yet claimed during population.
const EMPTY: u32 = u32::MAX;

#[derive(Debug)]
pub struct Maglev {
    set: Arc<BackendSet>,
    /// Slot → set index; empty when nothing is pickable.
    table: Vec<u32>,
    /// M as u64, the modulus of lookups.
    size: u64,
    /// Pickable set indices, so a retry can tell quickly whether any is left.
    pickable: Vec<u32>,
}

/// One backend's preference list, in the paper's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Preference {
    pub(crate) index: u32,
    pub(crate) offset: usize,
    pub(crate) skip: usize,
    pub(crate) weight: u64,
}

/// The smallest prime ≥ n (n ≥ 2). Trial division by odd numbers: at most ~4 000 divisions for
/// sizes up to 2^24, once per build.
pub fn next_prime(n: usize) -> usize {
    // `usize::is_multiple_of` needs Rust 1.87; the workspace's rust-version is 1.85.
    #[allow(clippy::manual_is_multiple_of)]
    fn is_prime(n: usize) -> bool {
        if n < 2 {
            return false;
        }
        if n % 2 == 0 {
            return n == 2;
        }
        let mut d = 3;
        while d * d <= n {
            if n % d == 0 {
                return false;
            }
            d += 2;
        }
        true
    }
    let mut p = n.max(2);
    while !is_prime(p) {
        p += 1;
    }
    p
}

/// The number of slots `Maglev::new` builds for a requested size: clamped to
/// `2..=MAX_TABLE_SIZE`, then rounded up to the next prime.
pub fn table_size_for(requested: usize) -> usize {
    next_prime(requested.clamp(2, MAX_TABLE_SIZE))
}

/// `a^e mod m` for m < 2^32 (products stay below 2^64).
fn pow_mod(mut a: u64, mut e: u64, m: u64) -> u64 {
    let mut r = 1 % m;
    a %= m;
    while e > 0 {
        if e & 1 == 1 {
            r = r * a % m;
        }
        a = a * a % m;
        e >>= 1;
    }
    r
}

/// `(a + b) mod m` for a, b < m.
#[inline(always)]
fn wrap_add(a: usize, b: usize, m: usize) -> usize {
    let c = a + b;
    if c >= m { c - m } else { c }
}

/// 1 if slot `c` is taken in the bitset, else 0. Callers keep c < M; reading out of range as
/// "taken" only keeps the function total without a panic path.
#[inline(always)]
fn is_taken(taken: &[u64], c: usize) -> u64 {
    taken.get(c / 64).map_or(1, |w| (w >> (c % 64)) & 1)
}

/// Fills an M-slot table from preference lists (paper Pseudocode 1 plus the weighted turns).
///
/// Two phases that produce the identical table, for speed. Filling slot k by probing costs
/// about M / (M − k) probes, so most of the M·ln M probes happen while the table is nearly
/// full. Once at most √M / 2 slots are empty, a backend's next empty slot is found directly
/// instead: slot e comes j = (e − c) · skip⁻¹ mod M steps after its cursor c (M is prime, so
/// skip has an inverse), and the empty slot with the smallest j is exactly the one probing
/// would have reached first. That turns ~M·ln(√M) probes into ~M/8 multiplications.
pub(crate) fn populate(m: usize, prefs: &[Preference]) -> Vec<u32> {
    /// A backend's progress through its preference list.
    struct Cursor {
        /// The slot permutation[i][next_i] itself, advanced by +skip mod M: the same sequence
        /// as the paper's (offset + j·skip) mod M, without a multiply or divide per probe.
        next: usize,
        skip: usize,
        /// skip⁻¹ mod M, for the direct search of the last phase.
        inv_skip: u64,
        turns: u64,
        weight: u64,
        index: u32,
    }

    let Some(max_w) = prefs.iter().map(|p| p.weight).max().filter(|&w| w > 0) else {
        return Vec::new();
    };
    let m64 = m as u64;
    let mut cursors: Vec<Cursor> = prefs
        .iter()
        .map(|p| Cursor {
            next: p.offset,
            skip: p.skip,
            // Fermat: M prime, so skip^(M−2) is skip's inverse.
            inv_skip: pow_mod(p.skip as u64, m64.saturating_sub(2), m64),
            turns: 0,
            weight: p.weight,
            index: p.index,
        })
        .collect();
    let mut table = vec![EMPTY; m];
    // Probing asks "is slot c taken?" at random positions; asking a bitset (8 KiB for 65 537
    // slots, L1-resident) instead of the 256 KiB table keeps those probes cache hits.
    let mut taken = vec![0u64; m.div_ceil(64)];
    let tail_from = m.isqrt() / 2;
    // The empty slots, once at most `tail_from` are left (empty before that).
    let mut empties: Vec<usize> = Vec::new();
    let mut filled = 0;
    let mut round: u64 = 0;
    loop {
        for cur in cursors.iter_mut() {
            // Weighted turn-taking; u64 cannot overflow: round ≤ M ≤ 2^24 and w < 2^32.
            if round * cur.weight < cur.turns * max_w {
                continue;
            }
            cur.turns += 1;
            let c = if empties.is_empty() {
                let mut c = cur.next;
                // Terminates: M is prime so the list visits every slot, and one is still empty.
                // (Testing four preferences per iteration to save branches measured slower.)
                while is_taken(&taken, c) == 1 {
                    c = wrap_add(c, cur.skip, m);
                }
                if let Some(w) = taken.get_mut(c / 64) {
                    *w |= 1 << (c % 64);
                }
                c
            } else {
                let from = cur.next;
                let steps = |e: usize| {
                    let d = if e >= from { e - from } else { e + m - from };
                    d as u64 * cur.inv_skip % m64
                };
                // Distinct slots are distinct step counts (a bijection), so no ties.
                let Some((k, _)) = empties.iter().enumerate().min_by_key(|&(_, &e)| steps(e)) else {
                    return table;
                };
                empties.swap_remove(k)
            };
            if let Some(slot) = table.get_mut(c) {
                *slot = cur.index;
            }
            cur.next = wrap_add(c, cur.skip, m);
            filled += 1;
            if filled == m {
                return table;
            }
            if empties.is_empty() && m - filled <= tail_from {
                empties = (0..m).filter(|&c| is_taken(&taken, c) == 0).collect();
            }
        }
        round += 1;
    }
}

impl Maglev {
    /// Builds the table for `set`. `table_size` should be prime; if it is not, the next prime
    /// above it is used (so `Maglev::new(set, 65536)` builds 65537 slots), after clamping to
    /// `2..=MAX_TABLE_SIZE`. Keep it well above 100 × the backend count for even shares.
    pub fn new(set: Arc<BackendSet>, table_size: usize) -> Self {
        let m = table_size_for(table_size);
        let prefs: Vec<Preference> = set
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_pickable())
            .filter_map(|(i, b)| {
                let name = b.addr.to_string();
                let (h1, h2) = (hash_bytes(SEED_OFFSET, name.as_bytes()), hash_bytes(SEED_SKIP, name.as_bytes()));
                Some(Preference {
                    index: u32::try_from(i).ok().filter(|&i| i != EMPTY)?,
                    offset: (h1 % m as u64) as usize,
                    skip: (h2 % (m as u64 - 1)) as usize + 1,
                    weight: u64::from(b.weight),
                })
            })
            .collect();
        let pickable = prefs.iter().map(|p| p.index).collect();
        let table = populate(m, &prefs);
        Maglev { set, table, size: m as u64, pickable }
    }

    /// The lookup table: slot → set index. Empty when no backend is pickable.
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// M, the number of slots (prime).
    pub fn table_size(&self) -> usize {
        self.size as usize
    }

    /// The slot a flow hash selects.
    #[inline]
    pub fn slot_of(&self, flow_hash: u64) -> usize {
        (flow_hash % self.size) as usize
    }
}

impl Scheduler for Maglev {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Maglev
    }

    fn backends(&self) -> &Arc<BackendSet> {
        &self.set
    }

    #[inline]
    fn pick(&self, ctx: &PickContext, tried: &Tried) -> Option<BackendIndex> {
        let slot = self.slot_of(ctx.flow_hash);
        if tried.is_empty() {
            return self.table.get(slot).map(|&i| i as usize);
        }
        // With more backends than slots some own no slot, so "something untried is left" is
        // checked on the table walk itself, bounded by M; the set check just makes the usual
        // exhausted case O(n) instead of O(M).
        if !self.pickable.iter().any(|&i| !tried.contains(i as usize)) {
            return None;
        }
        let (before, from) = self.table.split_at(slot.min(self.table.len()));
        from.iter().chain(before).map(|&i| i as usize).find(|&i| !tried.contains(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::candidates::test_support::{addr_of, backend, ctx, set, sock};

    /// The paper's algorithm taken literally (explicit permutation matrix, `next[i]` counters),
    /// plus the weighted turn rule stated in the module docs.
    fn reference_populate(m: usize, prefs: &[Preference]) -> Vec<u32> {
        let perm: Vec<Vec<usize>> =
            prefs.iter().map(|p| (0..m).map(|j| (p.offset + j * p.skip) % m).collect()).collect();
        let max_w = prefs.iter().map(|p| p.weight).max().unwrap_or(1);
        let mut next = vec![0; prefs.len()];
        let mut turns = vec![0; prefs.len()];
        let mut entry = vec![EMPTY; m];
        let mut n = 0;
        for round in 0.. {
            for i in 0..prefs.len() {
                if round * prefs[i].weight < turns[i] * max_w {
                    continue;
                }
                turns[i] += 1;
                let mut c = perm[i][next[i]];
                while entry[c] != EMPTY {
                    next[i] += 1;
                    c = perm[i][next[i]];
                }
                entry[c] = prefs[i].index;
                next[i] += 1;
                n += 1;
                if n == m {
                    return entry;
                }
            }
        }
        entry
    }

    fn pref(index: u32, offset: usize, skip: usize) -> Preference {
        Preference { index, offset, skip, weight: 1 }
    }

    #[test]
    fn paper_table_1_example() {
        // Eisenbud et al. Table 1: M = 7; B0 prefers 3,0,4,1,5,2,6 (offset 3, skip 4),
        // B1 0,2,4,6,1,3,5 (offset 0, skip 2), B2 3,4,5,6,0,1,2 (offset 3, skip 1).
        // Round 1: B0→3, B1→0, B2→(3 taken)4. Round 2: B0→(0,4 taken)1, B1→2, B2→5.
        // Round 3: B0→(5,2 taken)6. Lookup table: B1 B0 B1 B0 B2 B2 B0.
        let prefs = [pref(0, 3, 4), pref(1, 0, 2), pref(2, 3, 1)];
        assert_eq!(populate(7, &prefs), [1, 0, 1, 0, 2, 2, 0]);
        assert_eq!(reference_populate(7, &prefs), [1, 0, 1, 0, 2, 2, 0]);
    }

    #[test]
    fn fast_population_matches_the_literal_algorithm() {
        let weighted = |i: usize| 1 + (i % 4) as u32;
        for (m, n, w) in
            [(13, 3, false), (101, 7, false), (1009, 40, false), (65537, 20, false), (4099, 30, true), (16411, 7, true)]
        {
            let weights: Vec<u32> = (0..n).map(|i| if w { weighted(i) } else { 1 }).collect();
            let s = Maglev::new(set(&weights), m);
            let prefs: Vec<Preference> = (0..n)
                .map(|i| {
                    let name = addr_of(i).to_string();
                    Preference {
                        index: i as u32,
                        offset: (hash_bytes(SEED_OFFSET, name.as_bytes()) % m as u64) as usize,
                        skip: (hash_bytes(SEED_SKIP, name.as_bytes()) % (m as u64 - 1)) as usize + 1,
                        weight: u64::from(weights[i]),
                    }
                })
                .collect();
            assert_eq!(s.table(), reference_populate(m, &prefs), "M = {m}, n = {n}, weighted {w}");
        }
    }

    #[test]
    fn fast_population_matches_for_arbitrary_preferences() {
        // Many small primes and backend counts (including more backends than slots), so both
        // the probing phase and the direct last phase see every corner.
        let mut seed = 1u64;
        let mut rand = || {
            seed = crate::mix::mix64(seed.wrapping_add(crate::mix::GOLDEN_GAMMA));
            seed
        };
        for m in [2usize, 3, 5, 7, 11, 13, 17, 31, 61, 101, 257, 499, 1031, 4099] {
            for n in [1usize, 2, 3, 5, 8, 13, 40] {
                let prefs: Vec<Preference> = (0..n)
                    .map(|i| Preference {
                        index: i as u32,
                        offset: (rand() % m as u64) as usize,
                        skip: (rand() % (m as u64 - 1)) as usize + 1,
                        weight: 1 + rand() % 5,
                    })
                    .collect();
                assert_eq!(populate(m, &prefs), reference_populate(m, &prefs), "M = {m}, n = {n}");
            }
        }
    }

    #[test]
    fn modular_inverse() {
        for m in [2u64, 3, 13, 65537] {
            for s in 1..m.min(500) {
                assert_eq!(s * pow_mod(s, m - 2, m) % m, 1, "{s} mod {m}");
            }
        }
    }

    #[test]
    fn table_size_rounds_up_to_a_prime() {
        assert_eq!(next_prime(65536), 65537);
        assert_eq!(next_prime(65537), 65537);
        assert_eq!(next_prime(0), 2);
        assert_eq!(next_prime(14), 17);
        assert_eq!(next_prime(1 << 24), 16_777_259);
        assert_eq!(Maglev::new(set(&[1, 1]), 1000).table_size(), 1009);
        assert_eq!(Maglev::new(set(&[1, 1]), 0).table_size(), 2);
        // (Building the 16M-slot table itself would dominate the test run in debug builds.)
        assert_eq!(table_size_for(usize::MAX), 16_777_259);
        assert_eq!(table_size_for(65536), 65537);
    }

    fn counts(m: &Maglev, n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &o in m.table() {
            c[o as usize] += 1;
        }
        c
    }

    #[test]
    fn equal_weights_fill_within_one_slot() {
        // Every round hands each backend exactly one slot, so shares differ by at most one.
        let m = Maglev::new(set(&[1; 100]), DEFAULT_TABLE_SIZE);
        let c = counts(&m, 100);
        let (lo, hi) = (c.iter().min().copied(), c.iter().max().copied());
        assert_eq!((lo, hi), (Some(655), Some(656)));
    }

    #[test]
    fn weights_fill_proportionally() {
        let m = Maglev::new(set(&[1, 2, 3, 0, 4]), DEFAULT_TABLE_SIZE);
        let c = counts(&m, 5);
        assert_eq!(c[3], 0);
        for (i, w) in [(0, 1.0), (1, 2.0), (2, 3.0), (4, 4.0)] {
            let share = c[i] as f64 / DEFAULT_TABLE_SIZE as f64;
            assert!((share - w / 10.0).abs() < 0.001, "backend {i}: {share} for {c:?}");
        }
    }

    #[test]
    fn removing_one_of_100_moves_few_other_slots() {
        let full = Maglev::new(set(&[1; 100]), DEFAULT_TABLE_SIZE);
        let gone = 37;
        let rest: Vec<Backend> = (0..100).filter(|&i| i != gone).map(|i| backend(addr_of(i), 1)).collect();
        let smaller = Maglev::new(Arc::new(BackendSet::new(rest)), DEFAULT_TABLE_SIZE);
        // Compare by address: the smaller set's indices shift past the removed one.
        let addr = |m: &Maglev, i: u32| m.backends().get(i as usize).map(|b| b.addr);
        let mut others_moved = 0;
        for (slot, (&a, &b)) in full.table().iter().zip(smaller.table()).enumerate() {
            let (before, after) = (addr(&full, a), addr(&smaller, b));
            if a as usize == gone {
                assert_ne!(after, before, "slot {slot} still on the removed backend");
            } else if before != after {
                others_moved += 1;
            }
        }
        let frac = others_moved as f64 / DEFAULT_TABLE_SIZE as f64;
        assert!(frac <= 0.02, "{others_moved} slots ({frac:.4}) of remaining backends moved");
    }

    #[test]
    fn lookup_and_retry() {
        let m = Maglev::new(set(&[1, 1, 1, 0, 1]), 251);
        for i in 0..300 {
            let c = ctx(i);
            let first = m.pick(&c, &Tried::new());
            let slot = (c.flow_hash % 251) as usize;
            assert_eq!(first, m.table().get(slot).map(|&o| o as usize));
            // The retry is the owner of the next slot with an untried owner.
            let mut tried = Tried::new();
            tried.push(first.unwrap_or(usize::MAX));
            let expected = (1..251).map(|k| m.table()[(slot + k) % 251] as usize).find(|&o| Some(o) != first);
            assert_eq!(m.pick(&c, &tried), expected);
        }
    }

    /// Pinned: a change here remaps flows on upgrade. Checked by hand once: with M = 13 the
    /// hashes give B0 (10.0.0.1) offset 1 skip 12 → 1,0,12,11,10,9,8,...; B1 (10.0.0.2)
    /// offset 0 skip 3 → 0,3,6,9,12,2,...; B2 (10.0.0.3) offset 8 skip 5 → 8,0,5,10,2,7,...
    /// Rounds: B0 1, B1 0, B2 8 | B0 12, B1 3, B2 5 | B0 11, B1 6, B2 10 | B0 9, B1 2, B2 7 |
    /// B0 4 (table full).
    #[test]
    fn golden_small_table() {
        let s = Arc::new(BackendSet::new(
            ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"].iter().map(|a| backend(sock(a), 1)).collect(),
        ));
        let m = Maglev::new(s, 13);
        assert_eq!(m.table(), GOLDEN_13);
    }

    #[test]
    fn golden_default_table_head() {
        let s = Arc::new(BackendSet::new((1..=5).map(|k| backend(sock(&format!("10.0.0.{k}:8080")), 1)).collect()));
        let m = Maglev::new(s, DEFAULT_TABLE_SIZE);
        assert_eq!(&m.table()[..16], GOLDEN_65537_HEAD);
    }

    const GOLDEN_13: [u32; 13] = [1, 0, 1, 1, 0, 2, 1, 2, 2, 0, 2, 0, 0];
    const GOLDEN_65537_HEAD: [u32; 16] = [0, 0, 4, 1, 4, 1, 1, 3, 3, 4, 3, 0, 4, 1, 4, 3];
}
