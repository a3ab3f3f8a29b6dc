//! What a pick may look at, and what a retry must skip.

use crate::addr::{ClientAddr, OrigDstAddr};
use crate::mix::{hash_ip, mix64};

/// The facts about one new connection or flow that a scheduler may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PickContext {
    /// The client's address as the proxy saw it.
    pub client: ClientAddr,
    /// The frontend address the client dialled (the Service VIP, node port, ...).
    pub orig_dst: OrigDstAddr,
    /// A hash of the whole flow; maglev keys on it.
    pub flow_hash: u64,
}

impl PickContext {
    pub fn new(client: ClientAddr, orig_dst: OrigDstAddr) -> Self {
        let flow_hash = mix64(
            hash_ip(client.ip())
                ^ hash_ip(orig_dst.ip()).rotate_left(17)
                ^ (u64::from(client.port()) << 16 | u64::from(orig_dst.port())),
        );
        PickContext { client, orig_dst, flow_hash }
    }

    /// Hash of the client's IP only (source hashing keys on this, like IPVS `sh`).
    pub fn source_hash(&self) -> u64 {
        hash_ip(self.client.ip())
    }

    /// Hash of the original destination IP (IPVS `dh`).
    pub fn destination_hash(&self) -> u64 {
        hash_ip(self.orig_dst.ip())
    }
}

/// Backends already tried for this connection, so a retry asks for the *next* candidate.
///
/// Retries are bounded by the data plane to a handful, so a tiny inline list beats any set.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tried {
    picked: [u32; Tried::CAPACITY],
    len: u8,
}

impl Tried {
    /// The most candidates one connection may try.
    pub const CAPACITY: usize = 8;

    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the retry budget still has room.
    pub fn has_room(&self) -> bool {
        usize::from(self.len) < Self::CAPACITY
    }

    /// Remembers `index`; returns false (and remembers nothing) when the budget is spent.
    pub fn push(&mut self, index: usize) -> bool {
        let Ok(index) = u32::try_from(index) else { return false };
        if !self.has_room() {
            return false;
        }
        self.picked[usize::from(self.len)] = index;
        self.len += 1;
        true
    }

    #[inline]
    pub fn contains(&self, index: usize) -> bool {
        self.picked[..usize::from(self.len)].iter().any(|&p| p as usize == index)
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
