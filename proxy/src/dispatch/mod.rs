//! Every per-connection and per-flow decision of the data path, for TCP and UDP alike.
//!
//! The TCP workers, the plain listener and the UDP workers own sockets and bytes; they ask
//! this module which frontend a destination belongs to ([`Dispatcher::frontend`]), then walk
//! a [`Choice`]: session affinity first, then the Service's scheduler, then the scheduler's
//! next candidate after a failure, a bounded number of times. Each [`Attempt`] says what
//! source address the backend must see and is closed by its outcome (connected, opened,
//! failed, timed out); a success becomes a [`Lease`] held for the connection's or flow's life.
//! Every piece of feedback the schedulers and the metrics get (picks, retries, connect time,
//! timeouts, refusals, first-byte latency, bytes) is written here and nowhere else, so the
//! callers cannot disagree about what a failure means. [`Dispatcher::preview`] asks the same
//! affinity map and scheduler for `tpvs explain`, opening, counting and moving nothing.
//!
//! - [`affinity`]: the ClientIP session-affinity map.
//! - [`telemetry`]: per-backend metrics (connect latency histogram, failures by reason,
//!   retries, bytes), keyed by backend address.
//! - [`outlier`]: passive outlier detection: backends whose connects keep failing are
//!   skipped for a backoff period.
//! - [`node_addrs`]: this node's own addresses, which tell the node's own connections apart
//!   for the short-circuit of `externalTrafficPolicy: Local` (a frontend's `local_origin`).

pub mod affinity;
pub mod node_addrs;
pub mod outlier;
pub mod telemetry;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use controlplane::{Frontend, Protocol, RoutingTable, TableHandle, TrafficPolicy};
use schedulers::stats::now_nanos;
use schedulers::{ActiveGuard, Backend, BackendAddr, BackendSet, ClientAddr, OrigDstAddr, PickContext, PickKey, Scheduler, Tried};
use tracing::warn;

use crate::addrs::NodePortAddrs;
use affinity::AffinityTable;
use node_addrs::NodeAddrs;
use outlier::OutlierPolicy;
use telemetry::{BackendMetrics, ConnectFailure, MetricsRegistry};

/// Turns longer than this are not latency samples: a long poll or a server that pushes after
/// minutes of quiet would otherwise read as a dead slow backend.
const TURN_SAMPLE_MAX: Duration = Duration::from_secs(10);

/// The shared decision state of one data path (TCP or UDP): the table, the node-port filter,
/// the affinity map and the per-backend metrics.
#[derive(Debug)]
pub struct Dispatcher {
    table: TableHandle,
    nodeport_addrs: NodePortAddrs,
    affinity: AffinityTable,
    metrics: Arc<MetricsRegistry>,
    outliers: OutlierPolicy,
    node_addrs: NodeAddrs,
}

impl Dispatcher {
    pub fn new(table: TableHandle, nodeport_addrs: NodePortAddrs, metrics: Arc<MetricsRegistry>, outliers: OutlierPolicy) -> Self {
        Dispatcher { table, nodeport_addrs, affinity: AffinityTable::new(), metrics, outliers, node_addrs: NodeAddrs::default() }
    }

    /// The dispatcher with `node_addrs` as this node's addresses (`tpvs explain` offline gives
    /// the compiler's; the data path reads the node's interfaces).
    pub fn with_node_addrs(mut self, node_addrs: NodeAddrs) -> Self {
        self.node_addrs = node_addrs;
        self
    }

    pub fn table(&self) -> &TableHandle {
        &self.table
    }

    pub fn metrics(&self) -> &Arc<MetricsRegistry> {
        &self.metrics
    }

    /// The frontend a packet to `dst` belongs to in the current table.
    ///
    /// The frontend is cloned out, so the table may be replaced while the connection is
    /// connecting or relaying (it drains on the frontend it started with).
    pub fn frontend(&self, dst: OrigDstAddr, proto: Protocol) -> Option<Arc<Frontend>> {
        self.frontend_in(&self.table.load(), dst, proto)
    }

    /// [`Self::frontend`] in a table the caller already holds (the UDP worker keeps one per
    /// batch).
    pub fn frontend_in(&self, table: &RoutingTable, dst: OrigDstAddr, proto: Protocol) -> Option<Arc<Frontend>> {
        table.lookup(dst.0, proto, self.nodeport_addrs.matches(dst.ip())).cloned()
    }

    /// The node-port addresses this data path treats as NodePort destinations.
    pub fn nodeport_addrs(&self) -> &NodePortAddrs {
        &self.nodeport_addrs
    }

    /// What a new connection from `client` to `dst` on `fe` would get now, asking the same
    /// endpoint-set choice, affinity map and scheduler [`Self::choose`] asks, and opening,
    /// counting and moving nothing: the scheduler is asked only when its pick depends on
    /// addresses alone.
    pub fn preview(&self, fe: &Frontend, client: Option<ClientAddr>, dst: OrigDstAddr) -> Preview {
        let served = self.endpoint_set(fe, client.map(|c| c.ip()));
        let set = served.scheduler.backends();
        let now = Instant::now();
        let sticky = match (fe.affinity, client) {
            (Some(_), Some(c)) => self
                .affinity
                .peek(fe.key, c.ip(), now)
                .and_then(|(addr, left)| set.iter().position(|b| b.addr == addr && b.is_pickable()).map(|i| (i, left))),
            _ => None,
        };
        let key = served.scheduler.kind().pick_key();
        let foretold = match (key, client) {
            (PickKey::State, _) => false,
            (PickKey::Destination, _) => true,
            // sh reads the client's IP only; `--from IP` leaves the port 0, which it ignores.
            (PickKey::ClientIp, Some(_)) => true,
            (PickKey::Flow, Some(c)) => c.port() != 0,
            (_, None) => false,
        };
        let ctx = PickContext::new(client.unwrap_or(ClientAddr(std::net::SocketAddr::new(dst.ip(), 0))), dst);
        let pick = if foretold { served.scheduler.pick(&ctx, &Tried::new()) } else { None };
        let ejected = |i: usize| {
            set.get(i).and_then(|b| self.metrics.peek(b.addr)).is_some_and(|m| m.outlier.is_ejected(now_nanos()))
        };
        Preview {
            sticky,
            pick,
            pick_key: key,
            foretold,
            pick_ejected: pick.is_some_and(ejected),
            backends: Arc::clone(set),
            policy: served.policy,
            local_client: served.local_client,
        }
    }

    /// A lease on `backend` for a connection or flow connected elsewhere (handed over by a
    /// predecessor): active from now on, with no pick, no affinity record and no latency
    /// sample. The bool says whether the frontend `dst` names still has that backend; when not,
    /// the lease holds stats of its own (the connection is relayed to its end all the same,
    /// and no scheduler counts it).
    pub fn adopt(&self, dst: OrigDstAddr, proto: Protocol, backend: BackendAddr) -> (Lease, bool) {
        // The frontend's own set, or the short-circuit set a local client was served from.
        let known = self.frontend(dst, proto).and_then(|fe| {
            let sets = std::iter::once(&fe.scheduler).chain(fe.local_origin.as_ref().map(|lo| &lo.scheduler));
            sets.flat_map(|s| s.backends().iter()).find(|b| b.addr == backend).map(|b| Arc::clone(&b.stats))
        });
        let found = known.is_some();
        let stats = known.unwrap_or_default();
        (Lease { backend, guard: stats.open(), metrics: self.metrics.get(backend) }, found)
    }

    /// The backends to try for one new connection or flow from `client` to `dst` on `fe`, at
    /// most `max_attempts` of them.
    pub fn choose<'a>(&'a self, fe: &'a Frontend, client: ClientAddr, dst: OrigDstAddr, max_attempts: usize) -> Choice<'a> {
        let ServedFrom { scheduler, policy, .. } = self.endpoint_set(fe, Some(client.ip()));
        let set = scheduler.backends();
        // Affinity only while that backend is still in the set and may take connections.
        let sticky = fe
            .affinity
            .and_then(|_| self.affinity.get(fe.key, client.ip(), Instant::now()))
            .and_then(|addr| set.iter().position(|b| b.addr == addr && b.is_pickable()));
        Choice {
            dispatcher: self,
            fe,
            scheduler,
            policy,
            ctx: PickContext::new(client, dst),
            tried: Tried::new(),
            sticky,
            attempts: 0,
            max_attempts: max_attempts.clamp(1, Tried::CAPACITY),
            exhausted: false,
            skipped_ejected: None,
        }
    }
}

impl Dispatcher {
    /// Which of a frontend's endpoint sets serves `client`, and under which policy: the
    /// cluster-wide set, as `Cluster`, for a connection from this node or one of its pods to
    /// an external address of a `Local` Service (kube-proxy's short-circuit); the frontend's
    /// own otherwise (and for an unknown client). Frontends without the short-circuit decide
    /// nothing here.
    fn endpoint_set<'a>(&self, fe: &'a Frontend, client: Option<IpAddr>) -> ServedFrom<'a> {
        let own = ServedFrom { scheduler: &fe.scheduler, policy: fe.policy, local_client: None };
        let (Some(lo), Some(ip)) = (&fe.local_origin, client) else { return own };
        let local_client = if lo.is_pod(ip) {
            LocalClient::Pod
        } else if self.node_addrs.contains(ip) {
            LocalClient::Node
        } else {
            return own;
        };
        ServedFrom { scheduler: &lo.scheduler, policy: TrafficPolicy::Cluster, local_client: Some(local_client) }
    }
}

/// The endpoint set a connection is served from.
struct ServedFrom<'a> {
    scheduler: &'a Arc<dyn Scheduler>,
    policy: TrafficPolicy,
    /// Set when the short-circuit of local traffic chose it: why the client counts as local.
    local_client: Option<LocalClient>,
}

/// Why a client counts as this node's own traffic for the short-circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalClient {
    /// Its address is in the pods' source ranges (`--detect-local-mode`).
    Pod,
    /// Its address is one of this node's.
    Node,
}

/// What [`Dispatcher::preview`] found.
#[derive(Debug, Clone)]
pub struct Preview {
    /// The set the scheduler picks from for this client (the indices below are into it).
    pub backends: Arc<BackendSet>,
    /// The policy this client is served under (`Cluster` when short-circuited).
    pub policy: TrafficPolicy,
    /// Set when the client is short-circuited to the cluster-wide set, with why it counts as
    /// local.
    pub local_client: Option<LocalClient>,
    /// The client's live affinity entry: the backend's index in the set, and the time left.
    pub sticky: Option<(usize, Duration)>,
    /// The scheduler's first choice, when it could be foretold.
    pub pick: Option<usize>,
    pub pick_key: PickKey,
    /// Whether the scheduler was asked (its pick depends on addresses the caller gave).
    pub foretold: bool,
    /// The first choice is ejected as an outlier: a connection goes to the next candidate.
    pub pick_ejected: bool,
}

/// The candidates of one new connection or flow, tried in order.
#[derive(Debug)]
pub struct Choice<'a> {
    dispatcher: &'a Dispatcher,
    fe: &'a Frontend,
    /// The endpoint set this connection picks from (the frontend's, or its short-circuit's).
    scheduler: &'a Arc<dyn Scheduler>,
    policy: TrafficPolicy,
    ctx: PickContext,
    tried: Tried,
    sticky: Option<usize>,
    attempts: usize,
    max_attempts: usize,
    /// `Tried` is full: no further candidate can be told apart from the ones already tried.
    exhausted: bool,
    /// The first ejected backend passed over, taken when every other candidate is used up.
    skipped_ejected: Option<usize>,
}

impl<'a> Choice<'a> {
    /// The next backend to try, already counted as active (like IPVS counts a connection from
    /// its SYN, so a burst of new connections does not all see the same idle backend in lc);
    /// `None` when the attempts are used up or no candidate is left.
    pub fn next_attempt(&mut self) -> Option<Attempt<'_, 'a>> {
        if self.exhausted || self.attempts >= self.max_attempts {
            return None;
        }
        let (index, backend, metrics) = self.next_candidate()?;
        self.attempts += 1;
        backend.stats.record_pick();
        if self.attempts > 1 {
            metrics.record_retry();
        }
        let guard = backend.stats.open();
        Some(Attempt { choice: self, index, backend, guard, metrics, started: Instant::now() })
    }

    /// Affinity, else the scheduler, passing over ejected backends (they count as tried, not
    /// as attempts); when only ejected ones are left, the first of them.
    fn next_candidate(&mut self) -> Option<(usize, &'a Backend, Arc<BackendMetrics>)> {
        let set: &'a Arc<BackendSet> = self.scheduler.backends();
        let now = self.dispatcher.outliers.enabled().then(now_nanos);
        loop {
            let picked = self.sticky.take().or_else(|| self.scheduler.pick(&self.ctx, &self.tried));
            let index = picked.or_else(|| self.skipped_ejected.take())?;
            let backend = set.get(index)?;
            let metrics = self.dispatcher.metrics.get(backend.addr);
            let ejected = now.is_some_and(|now| metrics.outlier.is_ejected(now));
            if !ejected || picked.is_none() {
                return Some((index, backend, metrics));
            }
            self.skipped_ejected.get_or_insert(index);
            if !self.tried.push(index) {
                // No room to remember more: settle for the first ejected one.
                let first = self.skipped_ejected.take().unwrap_or(index);
                let backend = set.get(first)?;
                return Some((first, backend, self.dispatcher.metrics.get(backend.addr)));
            }
        }
    }

    /// Backends tried so far.
    pub fn attempts(&self) -> usize {
        self.attempts
    }
}

/// One backend being tried. Dropping it without an outcome releases its active slot and
/// records nothing (the caller gave up, e.g. the client left).
#[derive(Debug)]
pub struct Attempt<'c, 'a> {
    choice: &'c mut Choice<'a>,
    index: usize,
    backend: &'a Backend,
    guard: ActiveGuard,
    metrics: Arc<BackendMetrics>,
    started: Instant,
}

impl Attempt<'_, '_> {
    pub fn backend(&self) -> BackendAddr {
        self.backend.addr
    }

    /// The address the backend must see as the source: the client itself under `Local`
    /// (kube-proxy keeps the client IP there), the node's own (`None`) under `Cluster`.
    pub fn spoofed_source(&self) -> Option<ClientAddr> {
        match self.choice.policy {
            TrafficPolicy::Local => Some(self.choice.ctx.client),
            TrafficPolicy::Cluster => None,
        }
    }

    /// A TCP connect succeeded: its duration feeds peak-EWMA and the connect histogram, and
    /// the backend's outlier record is cleared.
    pub fn connected(self) -> Lease {
        let took = self.started.elapsed();
        // A connect feeds the estimate but is no answer: ewma judges its probes by first bytes.
        self.backend.stats.observe_connect_latency_ns(nanos(took));
        self.metrics.observe_connect(took);
        self.metrics.outlier.on_success();
        self.established()
    }

    /// A UDP flow's upstream socket is open (no handshake, so no latency sample).
    pub fn opened(self) -> Lease {
        self.established()
    }

    fn established(self) -> Lease {
        let fe = self.choice.fe;
        if let Some(a) = fe.affinity {
            self.choice.dispatcher.affinity.record(fe.key, self.choice.ctx.client.ip(), self.backend.addr, a.timeout, Instant::now());
        }
        Lease { backend: self.backend.addr, guard: self.guard, metrics: self.metrics }
    }

    /// The attempt failed for `why`; the next call to [`Choice::next_attempt`] skips this
    /// backend.
    pub fn failed(self, why: ConnectFailure) {
        self.backend.stats.record_failure();
        self.metrics.record_failure(why);
        if why.blames_backend() {
            self.count_toward_ejection();
        }
        self.skip();
    }

    /// No answer within `timeout`: the worst latency seen, so peak-EWMA steers away at once.
    pub fn timed_out(self, timeout: Duration) {
        self.backend.stats.observe_latency_ns(nanos(timeout));
        self.backend.stats.record_failure();
        self.metrics.record_failure(ConnectFailure::Timeout);
        self.count_toward_ejection();
        self.skip();
    }

    fn count_toward_ejection(&self) {
        let dispatcher = self.choice.dispatcher;
        let policy = &dispatcher.outliers;
        let set = self.choice.scheduler.backends();
        let now = now_nanos();
        let share_allows = || {
            let ejected = set.iter().filter(|b| dispatcher.metrics.peek(b.addr).is_some_and(|m| m.outlier.is_ejected(now))).count();
            policy.may_eject_another(ejected, set.len())
        };
        if self.metrics.outlier.on_failure(now, policy, share_allows) {
            let secs = Duration::from_nanos(self.metrics.outlier.ejected_for_ns(now)).as_secs_f64();
            warn!(
                service = %self.choice.fe.service,
                backend = %self.backend.addr,
                ejected_for_s = secs,
                "backend ejected after {} consecutive connect failures",
                policy.consecutive_failures
            );
        }
    }

    fn skip(self) {
        if !self.choice.tried.push(self.index) {
            self.choice.exhausted = true;
        }
        // `guard` drops here: the backend is active only while being tried.
    }
}

/// A connection's or flow's hold on its backend: its active-connection slot (what lc, wlc,
/// sed, nq, p2c and ewma read) until dropped — a UDP flow's only while its client awaits an
/// answer — and the feedback the relay reports while it lives.
#[derive(Debug)]
pub struct Lease {
    backend: BackendAddr,
    guard: ActiveGuard,
    metrics: Arc<BackendMetrics>,
}

impl Lease {
    pub fn backend(&self) -> BackendAddr {
        self.backend
    }

    pub fn add_bytes(&self, to_backend: u64, from_backend: u64) {
        self.metrics.add_bytes(to_backend, from_backend);
    }

    /// A request/response turn took `took` from the client's first byte to the backend's
    /// first byte back: the latency an application that accepts connections but stalls on
    /// requests shows, which connect time alone misses.
    pub fn turn_took(&self, took: Duration) {
        if took <= TURN_SAMPLE_MAX {
            self.guard.stats().observe_latency_ns(nanos(took));
        }
    }

    /// A UDP flow's client sent datagrams: until the backend answers, the flow counts as
    /// active (what lc, wlc, sed, nq, p2c and ewma read as outstanding), so a backend that
    /// stops answering piles up waiting flows and is avoided at once.
    pub fn awaiting_answer(&mut self) {
        self.guard.reacquire();
    }

    /// The backend answered a UDP flow: it stops counting as active. An answered flow is not
    /// load (a DNS query's flow lingers until it expires), and counting it would hide a
    /// stalled backend among equally many idle flows on the healthy ones.
    pub fn answered(&mut self) {
        self.guard.release();
    }

    /// The backend answered a flow's datagram with "port unreachable": it is not serving.
    pub fn refused(&self) {
        self.guard.stats().record_failure();
        self.metrics.record_failure(ConnectFailure::Refused);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
impl Lease {
    /// A lease on a backend outside any table, with the stats it feeds, for unit tests of the
    /// relay.
    pub(crate) fn detached() -> (Lease, Arc<schedulers::BackendStats>) {
        let stats = Arc::new(schedulers::BackendStats::default());
        let addr = BackendAddr(std::net::SocketAddr::from(([127, 0, 0, 1], 1)));
        (Lease { backend: addr, guard: stats.open(), metrics: Arc::default() }, stats)
    }

    pub(crate) fn metrics(&self) -> &BackendMetrics {
        &self.metrics
    }
}
