//! Counters of the UDP data path (the UDP sibling of `forward::ForwardStats`), in relaxed
//! atomics: written by the workers, read by the metrics exporter and the tests.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a datagram was not forwarded.
#[derive(Debug, Default)]
pub struct UdpDrops {
    /// No frontend for the original destination (rules and table momentarily apart).
    pub no_frontend: AtomicU64,
    /// The frontend had no backend to pick.
    pub no_backend: AtomicU64,
    /// `--udp-max-flows` flows were open: the datagram would have started one more.
    pub max_flows: AtomicU64,
    /// The client's address held its share of the flows (`--udp-source-share`).
    pub source_share: AtomicU64,
    /// A socket for the flow could not be made (out of fds, bind or connect refused).
    pub socket: AtomicU64,
    /// The backend's port was closed (ICMP port unreachable): the flow is closed with it.
    pub backend_refused: AtomicU64,
    /// A socket toward a backend would not take the datagram (buffer full, error).
    pub send_to_backend: AtomicU64,
    /// The reply socket toward a client would not take the datagram.
    pub send_to_client: AtomicU64,
    /// No original destination on the datagram, or cut short.
    pub malformed: AtomicU64,
}

#[derive(Debug, Default)]
pub struct UdpStats {
    pub flows_created: AtomicU64,
    /// Closed after their idle timeout.
    pub flows_expired: AtomicU64,
    /// Closed because a table change removed or drained their backend (or changed the
    /// frontend's traffic policy).
    pub flows_evicted: AtomicU64,
    /// Received from a predecessor in a hand-over (or taken back from a failed successor).
    pub flows_adopted: AtomicU64,
    pub datagrams_from_clients: AtomicU64,
    pub datagrams_to_backends: AtomicU64,
    pub datagrams_from_backends: AtomicU64,
    pub datagrams_to_clients: AtomicU64,
    pub drops: UdpDrops,
}

/// A point-in-time copy, for logs, tests and exporters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UdpStatsSnapshot {
    pub flows_active: u64,
    pub flows_created: u64,
    pub flows_expired: u64,
    pub flows_evicted: u64,
    pub flows_adopted: u64,
    pub datagrams_from_clients: u64,
    pub datagrams_to_backends: u64,
    pub datagrams_from_backends: u64,
    pub datagrams_to_clients: u64,
    pub drop_no_frontend: u64,
    pub drop_no_backend: u64,
    pub drop_max_flows: u64,
    pub drop_source_share: u64,
    pub drop_socket: u64,
    pub drop_backend_refused: u64,
    pub drop_send_to_backend: u64,
    pub drop_send_to_client: u64,
    pub drop_malformed: u64,
}

#[inline]
pub(crate) fn add(c: &AtomicU64, n: usize) {
    if n > 0 {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl UdpStats {
    /// The counters, with `flows_active` (the flow slots taken, which the slot pool keeps).
    pub fn snapshot(&self, flows_active: usize) -> UdpStatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        UdpStatsSnapshot {
            flows_active: flows_active as u64,
            flows_created: g(&self.flows_created),
            flows_expired: g(&self.flows_expired),
            flows_evicted: g(&self.flows_evicted),
            flows_adopted: g(&self.flows_adopted),
            datagrams_from_clients: g(&self.datagrams_from_clients),
            datagrams_to_backends: g(&self.datagrams_to_backends),
            datagrams_from_backends: g(&self.datagrams_from_backends),
            datagrams_to_clients: g(&self.datagrams_to_clients),
            drop_no_frontend: g(&self.drops.no_frontend),
            drop_no_backend: g(&self.drops.no_backend),
            drop_max_flows: g(&self.drops.max_flows),
            drop_source_share: g(&self.drops.source_share),
            drop_socket: g(&self.drops.socket),
            drop_backend_refused: g(&self.drops.backend_refused),
            drop_send_to_backend: g(&self.drops.send_to_backend),
            drop_send_to_client: g(&self.drops.send_to_client),
            drop_malformed: g(&self.drops.malformed),
        }
    }
}

impl std::fmt::Display for UdpStatsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "flows active={} created={} expired={} evicted={} adopted={}; datagrams client→backend {}/{} backend→client {}/{}; \
             drops no_frontend={} no_backend={} max_flows={} source_share={} socket={} backend_refused={} send_to_backend={} send_to_client={} malformed={}",
            self.flows_active,
            self.flows_created,
            self.flows_expired,
            self.flows_evicted,
            self.flows_adopted,
            self.datagrams_from_clients,
            self.datagrams_to_backends,
            self.datagrams_from_backends,
            self.datagrams_to_clients,
            self.drop_no_frontend,
            self.drop_no_backend,
            self.drop_max_flows,
            self.drop_source_share,
            self.drop_socket,
            self.drop_backend_refused,
            self.drop_send_to_backend,
            self.drop_send_to_client,
            self.drop_malformed,
        )
    }
}
