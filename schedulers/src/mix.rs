//! Small, fast, deterministic integer mixing shared by the hashing schedulers.
//!
//! Deterministic across processes and releases on purpose: a consistent-hash layout must not
//! change when tpvs restarts, or every node would remap its flows on upgrade.

/// SplitMix64 finaliser: a bijective avalanche of one 64-bit word.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a over bytes, then mixed: a stable hash of a backend's textual address.
pub(crate) fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// A stable hash of an IP address (v4 and v6 hash differently).
pub(crate) fn hash_ip(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(v4) => mix64(u64::from(u32::from(v4)) ^ 0x4),
        std::net::IpAddr::V6(v6) => {
            let v = u128::from(v6);
            mix64((v as u64) ^ mix64((v >> 64) as u64) ^ 0x6)
        }
    }
}

/// The SplitMix64 increment (2^64 / golden ratio, odd).
pub(crate) const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// A SplitMix64 generator whose state is one atomic counter.
///
/// `next_u64` is a single `fetch_add` plus [`mix64`], so any number of threads can draw through
/// `&self` without a lock, and a given seed replays the same sequence when drawn from one
/// thread (what the tests rely on). Statistical quality is SplitMix64's: ample for choosing
/// backends, not for cryptography.
#[derive(Debug)]
pub(crate) struct AtomicSplitMix {
    state: std::sync::atomic::AtomicU64,
}

impl AtomicSplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        AtomicSplitMix { state: std::sync::atomic::AtomicU64::new(seed) }
    }

    #[inline]
    pub(crate) fn next_u64(&self) -> u64 {
        let s = self.state.fetch_add(GOLDEN_GAMMA, std::sync::atomic::Ordering::Relaxed);
        mix64(s.wrapping_add(GOLDEN_GAMMA))
    }
}

/// Maps a uniform 64-bit `r` onto `0..n` by multiply-shift (Lemire's "fast range").
///
/// No division on the hot path; the bias is at most n / 2^64, far below anything measurable.
/// It uses the *high* bits of `r`, so two draws can come from one word by rotating it.
#[inline]
pub(crate) fn below(r: u64, n: usize) -> usize {
    ((u128::from(r) * n as u128) >> 64) as usize
}
