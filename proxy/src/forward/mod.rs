//! The TCP data path: transparent listeners, one event loop per core, backend choice, relay.
//!
//! - `accept`: accept and admit under `--max-connections`, shared by both kinds of worker.
//! - [`worker`]: one thread per core, each with its own single-threaded runtime and its own
//!   `SO_REUSEPORT` listeners; a connection is accepted, connected upstream and relayed on the
//!   same thread, with no cross-thread hand-off or work stealing.
//! - [`connect`]: connecting to the backends a [`crate::dispatch::Choice`] names, with a
//!   timeout per attempt, and serving one connection from its frontend on (connect, relay).
//! - [`relay`]: both directions in one future, with half-close, idle timeout and byte
//!   counting; small messages copied through a per-worker buffer, bulk spliced.
//! - [`steering`]: which worker a new connection goes to (the kernel's hash, or the CPU that
//!   took the SYN through a reuseport BPF program, with workers pinned one per CPU).
//! - [`splice`]: zero-copy socket-to-socket transfer through pooled pipes, grown for bulk.
//! - [`load`]: each worker's accepted and open connections and CPU time (imbalance metrics).
//! - [`detach`]: a worker's live connections, paused and taken out for a hand-over, and
//!   connections adopted from another instance.
//! - [`plain`]: the same path behind an ordinary listener with one fixed frontend (no
//!   interception), for load tests.
//!
//! Why this shape is fast for new connections, measured against a naive forwarder that stalled
//! at a third of in-kernel DNAT's rate:
//! - the stall was not CPU but SYN retransmissions: the proxy, closing first toward the client
//!   after the backend's close, leaves the client-facing 4-tuple in TIME_WAIT, and a client that
//!   reuses the port had its SYN swallowed by that TIME_WAIT socket (through the `socket
//!   transparent` rule) and answered with a stale ACK; the client retried a second later. The
//!   rule set sends frontend traffic to TPROXY *first*, which retires the TIME_WAIT socket and
//!   gives the SYN to the listener (see `netfilter::ruleset`);
//! - accept queues: one listener per worker with the largest backlog the namespace allows, so a
//!   burst of SYNs is not dropped at a full queue (another source of SYN retransmits);
//! - `IP_BIND_ADDRESS_NO_PORT` on spoofed upstream sockets, so ports are unique per 4-tuple
//!   rather than per client IP;
//! - per connection: one table load (an `ArcSwap` read), one pick, no allocation for buffers
//!   (one scratch buffer per worker; pooled pipes for bulk), socket options inherited from the
//!   listener, one setsockopt on the upstream socket and no `SO_ERROR` query after a
//!   successful connect; per small request, one `recv` and one `send` per direction.

mod accept;
pub mod connect;
pub mod detach;
pub mod load;
pub mod plain;
pub mod relay;
pub mod splice;
pub mod steering;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use controlplane::TableHandle;

use crate::addrs::NodePortAddrs;
use crate::dispatch::Dispatcher;
use crate::dispatch::outlier::OutlierPolicy;
use crate::dispatch::telemetry::MetricsRegistry;
use crate::slots::SlotPool;
pub use load::WorkerLoad;
pub use relay::RelayMode;
pub use steering::Steering;

/// Everything the data path is configured with.
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// Port of the transparent listeners (the TPROXY target), bound on 0.0.0.0 and `::`.
    pub port: u16,
    /// Event-loop threads (each with its own listeners).
    pub workers: usize,
    pub backlog: i32,
    /// Connections open at once; beyond it a new connection is reset at once.
    pub max_connections: usize,
    /// Pipes (in use or pooled, all workers) for splicing; beyond it directions copy.
    pub max_pipes: usize,
    pub connect_timeout: Duration,
    /// Backends tried per connection (first pick included).
    pub connect_attempts: usize,
    /// Reset a connection after this long without a byte either way (`None`: never).
    pub idle_timeout: Option<Duration>,
    pub nodeport_addrs: NodePortAddrs,
    pub mode: RelayMode,
    /// Passive outlier detection on connect failures.
    pub outliers: OutlierPolicy,
}

/// Counters of the data path (exported by the admin endpoint).
#[derive(Debug, Default)]
pub struct ForwardStats {
    pub accepted: AtomicU64,
    /// No frontend for the original destination (rules and table momentarily apart).
    pub no_frontend: AtomicU64,
    /// Every candidate refused or timed out.
    pub connect_failed: AtomicU64,
    /// Reset because `max_connections` were open.
    pub over_limit: AtomicU64,
    pub idle_closed: AtomicU64,
    /// Connections adopted from a predecessor (or taken back from a failed successor).
    pub adopted: AtomicU64,
    /// Of those, connections whose backend is not in this instance's table (relayed anyway).
    pub adopted_without_backend: AtomicU64,
}

/// State shared by all workers.
#[derive(Debug)]
pub struct Shared {
    pub dispatch: Dispatcher,
    pub config: ForwardConfig,
    pub stats: ForwardStats,
    /// One slot per open connection (`max_connections`).
    pub connections: Arc<SlotPool>,
    /// One slot per pipe (`max_pipes`).
    pub pipes: Arc<SlotPool>,
    /// Each worker's load, in worker order.
    pub workers: Vec<Arc<WorkerLoad>>,
}

impl Shared {
    pub fn new(table: TableHandle, config: ForwardConfig, metrics: Arc<MetricsRegistry>) -> Arc<Self> {
        Arc::new(Shared {
            dispatch: Dispatcher::new(table, config.nodeport_addrs.clone(), metrics, config.outliers),
            connections: SlotPool::new(config.max_connections),
            pipes: SlotPool::new(config.max_pipes),
            workers: (0..config.workers.max(1)).map(|_| Arc::default()).collect(),
            config,
            stats: ForwardStats::default(),
        })
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.connections.taken()
    }

    /// Worker `index`'s load (a detached one, counted nowhere, for an index out of range).
    pub fn worker_load(&self, index: usize) -> Arc<WorkerLoad> {
        self.workers.get(index).cloned().unwrap_or_default()
    }
}

pub use plain::{PlainServer, serve_plain};
pub use worker::{Control, Workers, bind_listeners, start};
