//! The UDP flow table: which backend each (client, frontend) pair is talking to, and when that
//! association ends. Sans-io: no sockets, no clock of its own — every call that needs the time
//! is handed `now` — so creation, touching, expiry and eviction are tested here exactly,
//! without sleeping.
//!
//! Storage is a slab (`Vec` of slots plus a free list) indexed by [`FlowId`], with a hash map
//! from [`FlowKey`] to id. Ids carry a generation so an id kept by the socket layer (the
//! upstream socket's epoll token) can never reach a different flow that reused the slot.
//!
//! Timeouts follow conntrack's UDP model, which operators already tune for DNS and statsd:
//! a flow lives [`Timeouts::idle`] after its last datagram (conntrack's
//! `nf_conntrack_udp_timeout`, 30 s); a flow that has seen a reply *and* is still active
//! [`STREAM_AFTER`] after it began is a stream (VoIP, QUIC, tunnels) and lives
//! [`Timeouts::stream`] (`nf_conntrack_udp_timeout_stream`, 120 s). A one-shot DNS query
//! never becomes a stream, however many retries it sends within the first two seconds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use std::sync::Arc;

use controlplane::{Frontend, FrontendKey, RoutingTable, TrafficPolicy};
use rustc_hash::FxBuildHasher;
use schedulers::BackendAddr;

use crate::addrs::{ClientAddr, OrigDstAddr};

/// How long after its first datagram a replied flow must still be active to count as a stream
/// (conntrack's rule: two seconds).
pub const STREAM_AFTER: Duration = Duration::from_secs(2);

/// One flow's identity: the client's address and the address it sent to (the VIP:port or the
/// node address:NodePort, which is also the address replies must come from).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: ClientAddr,
    pub dst: OrigDstAddr,
}

/// Idle timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// For flows that are not streams (DNS-like request/response, one-way datagrams).
    pub idle: Duration,
    /// For streams: replied flows still active after [`STREAM_AFTER`].
    pub stream: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { idle: Duration::from_secs(30), stream: Duration::from_secs(120) }
    }
}

/// A flow's handle: slot index and the slot's generation when the flow was created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowId {
    index: u32,
    generation: u32,
}

impl FlowId {
    /// Packs the id into an epoll token.
    pub fn to_token(self) -> u64 {
        u64::from(self.generation) << 32 | u64::from(self.index)
    }

    pub fn from_token(token: u64) -> FlowId {
        FlowId { index: token as u32, generation: (token >> 32) as u32 }
    }

    pub fn index(self) -> u32 {
        self.index
    }
}

/// One flow and what the caller keeps with it (`V`: its sockets and counters' guards).
#[derive(Debug)]
pub struct Flow<V> {
    pub key: FlowKey,
    /// The table entry that matched (for a NodePort: `0.0.0.0:port`, not the node's address).
    pub frontend: FrontendKey,
    pub backend: BackendAddr,
    pub created: Instant,
    pub last_seen: Instant,
    /// Datagrams the backend sent back so far.
    pub replies: u64,
    pub value: V,
}

impl<V> Flow<V> {
    /// Whether this flow earned the stream timeout.
    pub fn is_stream(&self) -> bool {
        self.replies > 0 && self.last_seen.saturating_duration_since(self.created) >= STREAM_AFTER
    }

    /// The timeout in force for this flow.
    pub fn timeout(&self, t: &Timeouts) -> Duration {
        if self.is_stream() { t.stream } else { t.idle }
    }

    /// When the flow expires if nothing more is seen.
    pub fn deadline(&self, t: &Timeouts) -> Instant {
        self.last_seen + self.timeout(t)
    }
}

#[derive(Debug)]
struct Slot<V> {
    generation: u32,
    flow: Option<Flow<V>>,
}

/// The flow table of one worker.
#[derive(Debug)]
pub struct FlowTable<V> {
    timeouts: Timeouts,
    by_key: HashMap<FlowKey, FlowId, FxBuildHasher>,
    slots: Vec<Slot<V>>,
    free: Vec<u32>,
}

impl<V> FlowTable<V> {
    pub fn new(timeouts: Timeouts) -> Self {
        FlowTable { timeouts, by_key: HashMap::default(), slots: Vec::new(), free: Vec::new() }
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The flow for `key`, if one is open.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<FlowId> {
        self.by_key.get(key).copied()
    }

    #[inline]
    pub fn get(&self, id: FlowId) -> Option<&Flow<V>> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.flow.as_ref()
    }

    #[inline]
    pub fn get_mut(&mut self, id: FlowId) -> Option<&mut Flow<V>> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.flow.as_mut()
    }

    /// Opens a flow. A flow already open under the same key is replaced and returned (the
    /// socket layer only inserts after a failed lookup, so this is a safety net, not a path).
    pub fn insert(&mut self, key: FlowKey, frontend: FrontendKey, backend: BackendAddr, value: V, now: Instant) -> (FlowId, Option<Flow<V>>) {
        let old = self.by_key.get(&key).copied().and_then(|id| self.remove(id));
        let flow = Flow { key, frontend, backend, created: now, last_seen: now, replies: 0, value };
        let id = match self.free.pop() {
            Some(index) => {
                // The free list only holds indices of slots that exist.
                let slot = &mut self.slots[index as usize];
                slot.flow = Some(flow);
                FlowId { index, generation: slot.generation }
            }
            None => {
                let index = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Slot { generation: 0, flow: Some(flow) });
                FlowId { index, generation: 0 }
            }
        };
        self.by_key.insert(key, id);
        (id, old)
    }

    /// A datagram from the client: the flow stays alive.
    #[inline]
    pub fn touch_from_client(&mut self, id: FlowId, now: Instant) {
        if let Some(f) = self.get_mut(id) {
            f.last_seen = now;
        }
    }

    /// `n` datagrams from the backend: alive, and replied.
    #[inline]
    pub fn touch_from_backend(&mut self, id: FlowId, n: u64, now: Instant) {
        if let Some(f) = self.get_mut(id) {
            f.last_seen = now;
            f.replies += n;
        }
    }

    /// Closes one flow, handing it back.
    pub fn remove(&mut self, id: FlowId) -> Option<Flow<V>> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let flow = slot.flow.take()?;
        // A new generation: ids handed out for the old flow no longer resolve.
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        self.by_key.remove(&flow.key);
        Some(flow)
    }

    /// Moves every flow idle past its timeout at `now` into `out`; returns how many.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Flow<V>>) -> usize {
        let t = self.timeouts;
        self.remove_where(|f| now >= f.deadline(&t), out)
    }

    /// Moves every flow for which `evict` says true into `out` (a backend left the table or
    /// was drained); returns how many.
    pub fn evict_where(&mut self, evict: impl FnMut(&Flow<V>) -> bool, out: &mut Vec<Flow<V>>) -> usize {
        self.remove_where(evict, out)
    }

    /// Moves every flow to `backend` into `out`; returns how many.
    pub fn evict_backend(&mut self, backend: BackendAddr, out: &mut Vec<Flow<V>>) -> usize {
        self.remove_where(|f| f.backend == backend, out)
    }

    fn remove_where(&mut self, mut pred: impl FnMut(&Flow<V>) -> bool, out: &mut Vec<Flow<V>>) -> usize {
        // A full scan: it runs on a table change or once per sweep interval, never per
        // datagram, and a scan of a few hundred thousand slots costs well under a millisecond.
        let mut n = 0;
        for index in 0..self.slots.len() {
            let slot = &self.slots[index];
            let hit = slot.flow.as_ref().is_some_and(&mut pred);
            if hit {
                let id = FlowId { index: index as u32, generation: slot.generation };
                if let Some(f) = self.remove(id) {
                    out.push(f);
                    n += 1;
                }
            }
        }
        n
    }

    /// The earliest deadline among open flows (`None` when empty).
    pub fn next_deadline(&self) -> Option<Instant> {
        let t = self.timeouts;
        self.slots.iter().filter_map(|s| s.flow.as_ref()).map(|f| f.deadline(&t)).min()
    }

    pub fn iter(&self) -> impl Iterator<Item = (FlowId, &Flow<V>)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.flow.as_ref().map(|f| (FlowId { index: i as u32, generation: s.generation }, f)))
    }
}

/// Whether a flow of `frontend` to `backend` may keep its backend when `new` replaces `old`:
/// the frontend is still there and still has the set the flow was served from (`local`: the
/// flow was made for `Local`, with the client's address as its source; otherwise under
/// `Cluster`, from the frontend's own set or, on a `Local` frontend, from the short-circuit's
/// cluster-wide set that serves this node and its pods), and the backend is still in that set
/// and pickable (not drained to weight 0). Anything else ends the flow, so the client's next
/// datagram is scheduled afresh instead of going to a backend the Service no longer names.
pub fn still_backed(old: &RoutingTable, new: &RoutingTable, frontend: &FrontendKey, backend: BackendAddr, local: bool) -> bool {
    let Some(fe) = new.get(frontend) else { return false };
    if old.get(frontend).is_some_and(|o| Arc::ptr_eq(o, fe)) {
        // The very same frontend (unchanged by this publish): nothing to re-check.
        return true;
    }
    serves(fe, backend, local)
}

/// Whether `fe` still serves a flow made for `local` (see [`still_backed`]) from `backend`:
/// the set of the policy the flow was made under has it, pickable.
pub fn serves(fe: &Frontend, backend: BackendAddr, local: bool) -> bool {
    let served_as = if local { TrafficPolicy::Local } else { TrafficPolicy::Cluster };
    let Some(scheduler) = fe.scheduler_for(served_as) else { return false };
    let set = scheduler.backends().as_slice();
    // Sets are sorted by address; the linear scan is the fallback for one that is not.
    let found = match set.binary_search_by_key(&backend, |b| b.addr) {
        Ok(i) => set.get(i),
        Err(_) => set.iter().find(|b| b.addr == backend),
    };
    found.is_some_and(schedulers::Backend::is_pickable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use controlplane::Protocol;

    fn sa(s: &str) -> std::net::SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
    }

    fn key(client: &str) -> FlowKey {
        FlowKey { client: ClientAddr(sa(client)), dst: OrigDstAddr(sa("10.96.0.10:53")) }
    }

    fn fe() -> FrontendKey {
        FrontendKey::new(sa("10.96.0.10:53").ip(), 53, Protocol::Udp)
    }

    fn be(s: &str) -> BackendAddr {
        BackendAddr(sa(s))
    }

    fn table() -> FlowTable<&'static str> {
        FlowTable::new(Timeouts { idle: Duration::from_secs(30), stream: Duration::from_secs(120) })
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn create_lookup_remove_and_stale_ids() {
        let mut t = table();
        let now = Instant::now();
        let k = key("10.0.0.2:5353");
        assert_eq!(t.lookup(&k), None);
        let (id, old) = t.insert(k, fe(), be("10.1.0.2:53"), "a", now);
        assert!(old.is_none());
        assert_eq!(t.lookup(&k), Some(id));
        assert_eq!(t.get(id).map(|f| f.value), Some("a"));
        assert_eq!(t.len(), 1);
        let gone = t.remove(id).map(|f| f.value);
        assert_eq!(gone, Some("a"));
        assert!(t.is_empty());
        // The slot is reused by the next flow; the old id must not reach it.
        let (id2, _) = t.insert(key("10.0.0.3:1"), fe(), be("10.1.0.2:53"), "b", now);
        assert_eq!(id2.index(), id.index());
        assert!(t.get(id).is_none(), "a stale id resolves to nothing");
        assert!(t.remove(id).is_none());
        assert_eq!(FlowId::from_token(id2.to_token()), id2);
        assert_eq!(t.get(FlowId::from_token(id2.to_token())).map(|f| f.value), Some("b"));
    }

    #[test]
    fn insert_over_an_open_key_hands_back_the_old_flow() {
        let mut t = table();
        let now = Instant::now();
        let k = key("10.0.0.2:5353");
        t.insert(k, fe(), be("10.1.0.2:53"), "a", now);
        let (id, old) = t.insert(k, fe(), be("10.1.1.2:53"), "b", now);
        assert_eq!(old.map(|f| f.value), Some("a"));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(id).map(|f| f.backend), Some(be("10.1.1.2:53")));
    }

    #[test]
    fn idle_flows_expire_and_touch_keeps_them() {
        let mut t = table();
        let t0 = Instant::now();
        let (quiet, _) = t.insert(key("10.0.0.2:1000"), fe(), be("10.1.0.2:53"), "quiet", t0);
        let (busy, _) = t.insert(key("10.0.0.2:1001"), fe(), be("10.1.0.2:53"), "busy", t0);
        t.touch_from_client(busy, t0 + S(20));
        let mut out = Vec::new();
        assert_eq!(t.expire(t0 + S(29), &mut out), 0, "not yet");
        assert_eq!(t.expire(t0 + S(30), &mut out), 1);
        assert_eq!(out.pop().map(|f| f.value), Some("quiet"));
        assert!(t.get(quiet).is_none());
        assert_eq!(t.next_deadline(), Some(t0 + S(50)));
        assert_eq!(t.expire(t0 + S(50), &mut out), 1);
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn replied_flows_still_active_after_two_seconds_become_streams() {
        let mut t = table();
        let t0 = Instant::now();
        // A DNS query answered at once and retried within the first second: not a stream.
        let (dns, _) = t.insert(key("10.0.0.2:2000"), fe(), be("10.1.0.2:53"), "dns", t0);
        t.touch_from_backend(dns, 1, t0 + Duration::from_millis(5));
        t.touch_from_client(dns, t0 + S(1));
        // One-way traffic for a long time (statsd): never a stream.
        let (oneway, _) = t.insert(key("10.0.0.2:2001"), fe(), be("10.1.0.2:53"), "oneway", t0);
        t.touch_from_client(oneway, t0 + S(10));
        // Replies and still active after 2 s: a stream.
        let (voip, _) = t.insert(key("10.0.0.2:2002"), fe(), be("10.1.0.2:53"), "voip", t0);
        t.touch_from_backend(voip, 3, t0 + S(1));
        t.touch_from_client(voip, t0 + S(10));
        let flows: Vec<_> = [dns, oneway, voip].iter().map(|id| t.get(*id).map(Flow::is_stream)).collect();
        assert_eq!(flows, vec![Some(false), Some(false), Some(true)]);
        let mut out = Vec::new();
        t.expire(t0 + S(41), &mut out);
        let mut gone: Vec<_> = out.drain(..).map(|f| f.value).collect();
        gone.sort_unstable();
        assert_eq!(gone, vec!["dns", "oneway"]);
        assert_eq!(t.expire(t0 + S(129), &mut out), 0, "the stream lives 120 s after its last datagram");
        assert_eq!(t.expire(t0 + S(130), &mut out), 1);
    }

    #[test]
    fn evict_by_backend_and_by_predicate() {
        let mut t = table();
        let now = Instant::now();
        let gone = be("10.1.1.2:53");
        let mut ids = Vec::new();
        for port in 0..10u16 {
            let backend = if port % 2 == 0 { gone } else { be("10.1.0.2:53") };
            ids.push(t.insert(key(&format!("10.0.0.2:{}", 3000 + port)), fe(), backend, "x", now).0);
        }
        let mut out = Vec::new();
        assert_eq!(t.evict_backend(gone, &mut out), 5);
        assert!(out.iter().all(|f| f.backend == gone));
        assert_eq!(t.len(), 5);
        assert!(t.iter().all(|(_, f)| f.backend != gone));
        // The next datagram of an evicted flow finds nothing and is scheduled afresh.
        assert_eq!(t.lookup(&key("10.0.0.2:3000")), None);
        out.clear();
        assert_eq!(t.evict_where(|f| f.key.client.0.port() == 3001, &mut out), 1);
        assert_eq!(t.len(), 4);
    }
}
