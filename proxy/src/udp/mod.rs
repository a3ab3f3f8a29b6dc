//! The UDP data path: transparent flows with source preservation, and no stale flow ever.
//!
//! - [`flows`]: the flow table, sans-io with an injected clock (create, touch, expire, evict
//!   by backend); everything about *when* a flow ends is decided and tested there.
//! - [`socket`]: the listener (TPROXY target with `IP_RECVORIGDSTADDR`), the per-frontend
//!   reply sockets, the per-flow upstream sockets, epoll and the wake-up eventfd.
//! - [`batch`]: `recvmmsg`/`sendmmsg` over preallocated slots (all of the path's `unsafe`).
//! - [`worker`]: one thread per core, each a plain epoll loop owning its own flows (which
//!   it gives out and takes in at a hand-over).
//! - [`stats`]: counters (flows, datagrams, drops by reason).
//! - [`plain`]: plain listen mode — the same workers and flows behind an ordinary loopback
//!   socket serving one fixed frontend (the load tester's UDP target).
//!
//! Why no stale flow: kube-proxy's UDP bugs come from conntrack entries outliving the endpoint
//! they point at. Here every worker compares the table generation before each batch it
//! forwards and is woken by an eventfd on every publish; a flow whose backend left the table,
//! was drained (weight 0) or whose frontend changed policy is closed before any further
//! datagram is forwarded, and the client's next datagram is scheduled afresh.
//!
//! What schedulers learn from a flow: it holds its backend's active slot for its whole life
//! (until it expires idle, not when a request is answered — a datagram path cannot tell), and
//! its first reply is a latency sample (first datagram in to first datagram back, as the TCP
//! path's first byte). So with a flow per request the connection-counting schedulers see every
//! backend alike, stalled or not, and only the latency-aware ones see a stall.

pub mod batch;
pub mod flows;
pub mod plain;
pub mod socket;
pub mod stats;
pub mod worker;

use std::net::IpAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use controlplane::{RoutingTable, TableHandle};

use crate::addrs::NodePortAddrs;
use crate::dispatch::Dispatcher;
use crate::dispatch::outlier::OutlierPolicy;
use crate::dispatch::telemetry::MetricsRegistry;
use crate::slots::SharedPool;
pub use flows::Timeouts;
pub use stats::{UdpStats, UdpStatsSnapshot};

/// Everything the UDP data path is configured with.
#[derive(Clone, Debug)]
pub struct UdpConfig {
    /// Port of the transparent listeners (the TPROXY target), on 0.0.0.0 and `::`.
    pub port: u16,
    pub workers: usize,
    /// Flows open at once over all workers; a datagram that would open one more is dropped
    /// and counted (`drops.max_flows`).
    pub max_flows: usize,
    /// Flows one client address may hold at once, so one client (or one spoofing flood from
    /// many source ports) cannot take every flow; beyond it, `drops.source_share`.
    pub max_flows_per_source: usize,
    pub timeouts: Timeouts,
    pub nodeport_addrs: NodePortAddrs,
}

/// State shared by all UDP workers.
#[derive(Debug)]
pub struct UdpShared {
    /// Frontend lookup, affinity, picks and feedback (its own affinity map: the keys carry the
    /// protocol, so the TCP one would do, but separate maps keep the two paths independent).
    pub dispatch: Dispatcher,
    pub config: UdpConfig,
    pub stats: UdpStats,
    /// One slot per open flow (`max_flows`), shared out by client address.
    pub flows: Arc<SharedPool<IpAddr>>,
}

impl UdpShared {
    pub fn new(table: TableHandle, config: UdpConfig, metrics: Arc<MetricsRegistry>) -> Arc<Self> {
        Arc::new(UdpShared {
            // No outlier detection: a datagram path has no connect to fail and no success to
            // clear a record with (a refusal closes the flow and is counted instead).
            dispatch: Dispatcher::new(table, config.nodeport_addrs.clone(), metrics, OutlierPolicy { consecutive_failures: 0, ..OutlierPolicy::default() }),
            flows: SharedPool::new(config.max_flows, config.max_flows_per_source),
            config,
            stats: UdpStats::default(),
        })
    }

    /// The counters, with the flows open now.
    pub fn snapshot(&self) -> UdpStatsSnapshot {
        self.stats.snapshot(self.flows.taken())
    }
}

/// The running UDP workers.
#[derive(Debug)]
pub struct UdpWorkers {
    pub threads: Vec<JoinHandle<()>>,
    wakers: Vec<Arc<socket::Waker>>,
    mailboxes: Vec<Arc<worker::Mailbox>>,
    /// Whether the IPv6 listeners are up.
    pub ipv6: bool,
}

impl UdpWorkers {
    /// Wakes every worker (a new table was published: flows to departed backends are closed
    /// at once, not when the next datagram happens to arrive).
    pub fn wake(&self) {
        for w in &self.wakers {
            w.wake();
        }
    }

    /// Takes every worker's flows out for a hand-over; blocks until each answered or
    /// `within` passed (a worker late to answer keeps its flows).
    pub fn detach(&self, within: std::time::Duration) -> Vec<crate::handover::DetachedFlow> {
        let (tx, rx) = std::sync::mpsc::channel();
        for (m, w) in self.mailboxes.iter().zip(&self.wakers) {
            m.post(worker::UdpCommand::Detach(tx.clone()));
            w.wake();
        }
        drop(tx);
        let deadline = std::time::Instant::now() + within;
        let mut out = Vec::new();
        for _ in 0..self.mailboxes.len() {
            match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                Ok(flows) => out.extend(flows),
                Err(_) => break,
            }
        }
        out
    }

    /// Relays `flows` here, each on the worker of the index it had (the same listener).
    pub fn adopt(&self, flows: Vec<crate::handover::DetachedFlow>) {
        let n = self.mailboxes.len().max(1);
        let mut shares: Vec<Vec<crate::handover::DetachedFlow>> = (0..n).map(|_| Vec::new()).collect();
        for f in flows {
            let i = f.record.worker % n;
            if let Some(share) = shares.get_mut(i) {
                share.push(f);
            }
        }
        for ((m, w), share) in self.mailboxes.iter().zip(&self.wakers).zip(shares) {
            if !share.is_empty() {
                m.post(worker::UdpCommand::Adopt(share));
                w.wake();
            }
        }
    }

    /// Ends every worker (closing its flows) and joins them.
    pub fn stop(self) {
        for (m, w) in self.mailboxes.iter().zip(&self.wakers) {
            m.post(worker::UdpCommand::Stop);
            w.wake();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// A publisher callback that wakes the workers.
    pub fn on_publish(&self) -> impl Fn(&Arc<RoutingTable>) + Send + Sync + 'static {
        let wakers = self.wakers.clone();
        move |_| {
            for w in &wakers {
                w.wake();
            }
        }
    }
}

pub use plain::{PlainUdpServer, serve_plain_udp};
pub use worker::{Serving, bind_listeners, start, start_serving};

#[cfg(test)]
mod tests {
    use super::*;
    use arc_swap::ArcSwap;

    #[test]
    fn max_flows_caps_and_slots_release() {
        let table: TableHandle = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
        let cfg = UdpConfig {
            port: 0,
            workers: 1,
            max_flows: 2,
            max_flows_per_source: 2,
            timeouts: Timeouts::default(),
            nodeport_addrs: NodePortAddrs::AllLocal,
        };
        let shared = UdpShared::new(table, cfg, Arc::default());
        let client = IpAddr::from([10, 0, 0, 2]);
        let a = shared.flows.try_take(client);
        let b = shared.flows.try_take(client);
        assert!(a.is_ok() && b.is_ok());
        assert!(shared.flows.try_take(client).is_err(), "the third flow is over the cap");
        assert_eq!(shared.snapshot().flows_active, 2);
        drop(a);
        assert!(shared.flows.try_take(client).is_ok(), "a closed flow frees its slot");
    }
}
