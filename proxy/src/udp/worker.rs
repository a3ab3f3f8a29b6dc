//! UDP worker threads: each a plain epoll loop over its own listeners and its flows' upstream
//! sockets (or, in plain listen mode, over ordinary listeners serving one fixed frontend:
//! [`Serving`]). No async runtime: a datagram's whole way (receive, look up, send) is a few system
//! calls amortised over a batch, and nothing about it waits.
//!
//! One pass of the loop:
//! 1. wait (until the next expiry sweep at most);
//! 2. adopt a newly published table, closing flows whose backend left or was drained;
//! 3. client datagrams: `recvmmsg` a batch from the listener, find or open each one's flow,
//!    then `sendmmsg` the datagrams of each flow on its connected upstream socket;
//! 4. backend datagrams: `recvmmsg` from each readable upstream socket into a shared batch,
//!    then `sendmmsg` them to their clients grouped by reply socket; a flow's first reply
//!    is its backend's latency sample (first datagram in to first datagram back);
//! 5. now and then, expire idle flows.
//!
//! Around a hand-over the worker follows the listeners' switch ([`Serve`]): paused, it stops
//! watching its listeners (datagrams queue on them); resumed, it watches them again;
//! released, it closes its copies. Its flows leave through [`UdpCommand::Detach`] (each
//! upstream socket with its identity and timestamps) and arrive through
//! [`UdpCommand::Adopt`], on the worker with the same index: the listeners are the same
//! sockets, so the kernel keeps giving a client's datagrams to the same worker.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use controlplane::{Frontend, Protocol, RoutingTable};
use rustc_hash::FxHashMap;
use tracing::{debug, warn};

use super::batch::{BATCH, RawAddr, RecvBatch, SendBatch};
use super::flows::{Flow, FlowId, FlowKey, FlowTable, serves, still_backed};
use super::socket::{self, Epoll, Waker};
use super::stats::add;
use super::{UdpShared, UdpWorkers};
use crate::addrs::{ClientAddr, OrigDstAddr, canonical, wildcard_listen_addrs};
use crate::dispatch::Lease;
use crate::dispatch::telemetry::ConnectFailure;
use crate::handover::{DetachedFlow, FlowRecord};
use crate::listeners::{Gate, Pair, Release, Serve};
use crate::slots::{Refused, SharedSlot};
use crate::workers::{self, Ready, StartError};

// Epoll tokens above any flow token (a flow token is generation << 32 | slot index, and a
// worker never holds 2^32 - 3 slots).
const LISTENER_V4: u64 = u64::MAX;
const LISTENER_V6: u64 = u64::MAX - 1;
const WAKER: u64 = u64::MAX - 2;

/// `recvmmsg` rounds on a listener per wake-up: enough to drain a burst, bounded so the
/// backends' replies are not starved behind a flood of new client datagrams.
const LISTENER_ROUNDS: usize = 8;

/// Log "max flows reached" or "cannot bind a reply socket" at most this often per worker (each
/// is counted every time).
const FULL_WARN_EVERY: Duration = Duration::from_secs(10);

/// What a flow owns besides its table entry. Dropping it closes the upstream socket (which
/// also removes it from epoll) and releases the backend's lease and the flow slot.
struct FlowIo {
    upstream: OwnedFd,
    reply: Rc<OwnedFd>,
    /// The client's address as `sendmmsg` takes it, built once.
    client: RawAddr,
    /// Made under `Local` (spoofed source); otherwise under `Cluster`, from the frontend's own
    /// set or its short-circuit's. A table change keeps it only while that set has its backend.
    local: bool,
    lease: Lease,
    /// `None` only for a flow adopted over the cap (it was open already; it is not dropped).
    _slot: Option<SharedSlot<std::net::IpAddr>>,
}

/// What a UDP worker is asked from another thread (a hand-over).
#[derive(Debug)]
pub enum UdpCommand {
    /// Take every flow out and send them back.
    Detach(std::sync::mpsc::Sender<Vec<DetachedFlow>>),
    /// Relay these flows here.
    Adopt(Vec<DetachedFlow>),
    /// Return from the loop, closing every flow (the plain mode's end; the daemon's workers
    /// live as long as the process).
    Stop,
}

/// What a worker's listeners serve.
#[derive(Clone, Debug)]
pub enum Serving {
    /// TPROXY'd datagrams for any frontend in the table, by their original destination.
    Transparent,
    /// Plain listen mode: every datagram is for this one frontend, whatever address it came
    /// to, and replies leave from the listener itself.
    Plain(Arc<Frontend>),
}

/// A plain-mode worker's fixed frontend and the socket its replies are sent from.
struct PlainFrontend {
    frontend: Arc<Frontend>,
    /// A duplicate of the worker's listener descriptor (the same socket).
    reply: Rc<OwnedFd>,
}

/// A worker's commands, checked once per wake-up (an atomic load when there are none).
#[derive(Debug, Default)]
pub struct Mailbox {
    any: std::sync::atomic::AtomicBool,
    commands: std::sync::Mutex<Vec<UdpCommand>>,
}

impl Mailbox {
    pub fn post(&self, cmd: UdpCommand) {
        self.commands.lock().unwrap_or_else(|p| p.into_inner()).push(cmd);
        self.any.store(true, std::sync::atomic::Ordering::Release);
    }

    fn take(&self) -> Vec<UdpCommand> {
        if !self.any.swap(false, std::sync::atomic::Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.commands.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A backend's datagram waiting in the shared batch for its send to the client.
struct Pending {
    reply: Rc<OwnedFd>,
    slot: u16,
    to: RawAddr,
}

/// Binds every worker's transparent UDP listeners (`[v4, v6]`; no v6 without IPv6).
pub fn bind_listeners(port: u16, workers: usize) -> Result<Vec<Pair>, StartError> {
    let [a4, a6] = wildcard_listen_addrs(port);
    let mut pairs = Vec::with_capacity(workers.max(1));
    for index in 0..workers.max(1) {
        let l4 = socket::listener(a4).map_err(|source| StartError::Bind { what: "transparent UDP", addr: a4, source })?;
        let l6 = match socket::listener(a6) {
            Ok(l) => Some(l),
            Err(e) => {
                if index == 0 {
                    warn!(addr = %a6, error = %e, "no IPv6 transparent UDP listener; IPv6 UDP Services are not served");
                }
                None
            }
        };
        pairs.push([Some(l4), l6]);
    }
    Ok(pairs)
}

/// Starts one thread per listener pair; returns once every worker holds its listeners, so
/// TPROXY rules can be installed knowing no datagram meets a port nobody listens on. Each
/// waits at `gate` before reading, and lets go of its listeners when `release` fires (its
/// flows keep relaying replies until they expire).
pub fn start(shared: Arc<UdpShared>, listeners: Vec<Pair>, gate: Gate, release: Release) -> Result<UdpWorkers, StartError> {
    start_serving(shared, listeners, gate, release, &Serving::Transparent)
}

/// [`start`], for listeners that serve as `serving` says.
pub fn start_serving(shared: Arc<UdpShared>, listeners: Vec<Pair>, gate: Gate, release: Release, serving: &Serving) -> Result<UdpWorkers, StartError> {
    let ipv6 = listeners.iter().all(|[_, v6]| v6.is_some());
    let mut listeners = listeners.into_iter();
    let mut wakers = Vec::new();
    let mut mailboxes = Vec::new();
    let spawned = workers::spawn("tpvs-udp", shared.config.workers, |index| {
        let waker = Arc::new(Waker::new().map_err(|source| StartError::Setup { what: "UDP", worker: index, source })?);
        wakers.push(Arc::clone(&waker));
        let mailbox = Arc::new(Mailbox::default());
        mailboxes.push(Arc::clone(&mailbox));
        let shared = Arc::clone(&shared);
        let pair = listeners.next().ok_or(StartError::Vanished(index))?;
        let (gate, release, serving) = (gate.clone(), release.clone(), serving.clone());
        Ok(move |ready: Ready<()>| match Worker::new(index, shared, (waker, mailbox), pair, release, serving) {
            Ok(mut w) => {
                ready.ok(());
                gate.wait();
                w.run();
            }
            Err(e) => ready.fail(e),
        })
    })?;
    Ok(UdpWorkers { threads: spawned.threads, wakers, mailboxes, ipv6 })
}

struct Worker {
    index: usize,
    shared: Arc<UdpShared>,
    epoll: Epoll,
    waker: Arc<Waker>,
    mailbox: Arc<Mailbox>,
    /// `[v4, v6]`; v6 absent when the namespace has no IPv6.
    listeners: [Option<OwnedFd>; 2],
    /// Whether the listeners are watched (not while a hand-over pauses them).
    listening: bool,
    /// Pauses, resumes or releases the listeners around a hand-over.
    release: tokio::sync::watch::Receiver<Serve>,
    /// Plain listen mode's frontend (`None`: transparent, frontends from the table).
    plain: Option<PlainFrontend>,
    table: Arc<RoutingTable>,
    flows: FlowTable<FlowIo>,
    /// Reply sockets by frontend address, shared by that frontend's flows.
    replies: FxHashMap<std::net::SocketAddr, Rc<OwnedFd>>,
    /// Client datagrams.
    rx: RecvBatch,
    /// Backend datagrams, gathered across upstream sockets until flushed.
    up: RecvBatch,
    /// Slots of `up` filled since the last flush (a skipped datagram still uses its slot, so
    /// this can exceed `pending.len()`).
    up_used: usize,
    tx: SendBatch,
    // Scratch, allocated once.
    routes: Vec<(u32, u16, FlowId)>,
    pending: Vec<Pending>,
    removed: Vec<Flow<FlowIo>>,
    slots: Vec<u16>,
    names: Vec<RawAddr>,
    sweep_every: Duration,
    next_sweep: Instant,
    now: Instant,
    last_full_warn: Option<Instant>,
    last_socket_warn: Option<Instant>,
}

impl Worker {
    fn new(
        index: usize,
        shared: Arc<UdpShared>,
        (waker, mailbox): (Arc<Waker>, Arc<Mailbox>),
        pair: Pair,
        release: Release,
        serving: Serving,
    ) -> Result<Worker, StartError> {
        let [l4, l6] = pair;
        let setup = |source| StartError::Setup { what: "UDP", worker: index, source };
        let plain = match serving {
            Serving::Transparent => None,
            Serving::Plain(frontend) => {
                // Replies to a client must come from the address it sent to: the listener's.
                let listener = l4.as_ref().or(l6.as_ref()).ok_or(StartError::Vanished(index))?;
                Some(PlainFrontend { frontend, reply: Rc::new(listener.try_clone().map_err(setup)?) })
            }
        };
        let epoll = Epoll::new().map_err(setup)?;
        if let Some(l) = &l4 {
            epoll.add(l.as_raw_fd(), LISTENER_V4).map_err(setup)?;
        }
        if let Some(l) = &l6 {
            epoll.add(l.as_raw_fd(), LISTENER_V6).map_err(setup)?;
        }
        epoll.add(waker.raw(), WAKER).map_err(setup)?;
        let t = shared.config.timeouts;
        // Expiry is checked often enough that a flow outlives its timeout by at most an eighth
        // of it (and by at most a second).
        let sweep_every = (t.idle.min(t.stream) / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let now = Instant::now();
        let table = shared.dispatch.table().load_full();
        let flows = FlowTable::new(t);
        Ok(Worker {
            index,
            epoll,
            waker,
            mailbox,
            listeners: [l4, l6],
            listening: true,
            release: release.subscribe(),
            plain,
            table,
            flows,
            replies: FxHashMap::default(),
            rx: RecvBatch::new(),
            up: RecvBatch::new(),
            up_used: 0,
            tx: SendBatch::new(),
            routes: Vec::with_capacity(BATCH),
            pending: Vec::with_capacity(BATCH),
            removed: Vec::new(),
            slots: Vec::with_capacity(BATCH),
            names: Vec::with_capacity(BATCH),
            sweep_every,
            next_sweep: now + sweep_every,
            now,
            last_full_warn: None,
            last_socket_warn: None,
            shared,
        })
    }

    /// Serves until a [`UdpCommand::Stop`].
    fn run(&mut self) {
        debug!(worker = self.index, "UDP worker listening");
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            let wait = self.next_sweep.saturating_duration_since(Instant::now());
            let timeout_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX).max(1);
            let n = match self.epoll.wait(&mut events, timeout_ms) {
                Ok(n) => n,
                Err(e) => {
                    warn!(worker = self.index, error = %e, "epoll_wait failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            self.now = Instant::now();
            self.follow_switch();
            self.refresh_table();
            for cmd in self.mailbox.take() {
                match cmd {
                    UdpCommand::Detach(reply) => {
                        // Too late for the hand-over: the flows stay here.
                        if let Err(std::sync::mpsc::SendError(flows)) = reply.send(self.detach_flows()) {
                            self.adopt_flows(flows);
                        }
                    }
                    UdpCommand::Adopt(flows) => self.adopt_flows(flows),
                    UdpCommand::Stop => {
                        debug!(worker = self.index, flows = self.flows.len(), "UDP worker stopping");
                        return;
                    }
                }
            }
            for ev in &events[..n] {
                match ev.u64 {
                    LISTENER_V4 => self.on_listener(0),
                    LISTENER_V6 => self.on_listener(1),
                    WAKER => self.waker.drain(),
                    token => self.on_upstream(FlowId::from_token(token)),
                }
            }
            self.flush_replies();
            if self.now >= self.next_sweep {
                self.sweep();
            }
        }
    }

    /// Watches the listeners or not as the switch says.
    fn follow_switch(&mut self) {
        let state = *self.release.borrow();
        match state {
            Serve::Released if self.listeners.iter().any(Option::is_some) => self.let_go_of_listeners(),
            Serve::Paused if self.listening => {
                self.unwatch_listeners();
                self.listening = false;
            }
            Serve::Accepting if !self.listening => {
                for (l, token) in self.listeners.iter().zip([LISTENER_V4, LISTENER_V6]) {
                    if let Some(fd) = l
                        && let Err(e) = self.epoll.add(fd.as_raw_fd(), token)
                    {
                        warn!(worker = self.index, error = %e, "cannot watch a UDP listener again");
                    }
                }
                self.listening = true;
            }
            _ => {}
        }
    }

    fn unwatch_listeners(&self) {
        if !self.listening {
            return;
        }
        for fd in self.listeners.iter().flatten() {
            if let Err(e) = self.epoll.del(fd.as_raw_fd()) {
                debug!(worker = self.index, error = %e, "unwatching a UDP listener");
            }
        }
    }

    /// Takes every flow out for a hand-over: replies gathered so far are sent first, each
    /// upstream socket is unwatched (its epoll entry would outlive this descriptor) and given
    /// back with the flow's identity and timestamps. Their lease and slot end here.
    fn detach_flows(&mut self) -> Vec<DetachedFlow> {
        self.flush_replies();
        self.flows.evict_where(|_| true, &mut self.removed);
        let now = Instant::now();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity(self.removed.len());
        for f in self.removed.drain(..) {
            if let Err(e) = self.epoll.del(f.value.upstream.as_raw_fd()) {
                debug!(worker = self.index, error = %e, "unwatching an upstream socket");
            }
            let record = FlowRecord {
                worker: self.index,
                client: f.key.client.0,
                dst: f.key.dst.0,
                backend: f.backend.0,
                local: f.value.local,
                age_ms: ms(now.saturating_duration_since(f.created)),
                idle_ms: ms(now.saturating_duration_since(f.last_seen)),
                replies: f.replies,
            };
            out.push(DetachedFlow { upstream: f.value.upstream, record });
        }
        out
    }

    /// Relays flows handed over to this worker. A flow whose frontend or backend this table
    /// no longer has is closed, as a table change would close it here.
    fn adopt_flows(&mut self, flows: Vec<DetachedFlow>) {
        let shared = Arc::clone(&self.shared);
        let now = Instant::now();
        for DetachedFlow { upstream, record: r } in flows {
            let key = FlowKey { client: ClientAddr(canonical(r.client)), dst: OrigDstAddr(canonical(r.dst)) };
            let Some(fe) = shared.dispatch.frontend_in(&self.table, key.dst, Protocol::Udp) else {
                add(&shared.stats.flows_evicted, 1);
                debug!(worker = self.index, client = %key.client, dst = %key.dst, "an adopted flow's frontend is not in this table; closed");
                continue;
            };
            let backend = schedulers::BackendAddr(canonical(r.backend));
            let (lease, known) = shared.dispatch.adopt(key.dst, Protocol::Udp, backend);
            // Checked against the set the flow was served from (on a `Local` frontend, a flow
            // made under `Cluster` came through the short-circuit of this node's own traffic).
            if !known || !serves(&fe, backend, r.local) {
                add(&shared.stats.flows_evicted, 1);
                debug!(worker = self.index, client = %key.client, %backend, "an adopted flow's backend or policy changed; closed");
                continue;
            }
            let Ok(reply) = self.reply_socket(key.dst.0) else {
                add(&shared.stats.drops.socket, 1);
                continue;
            };
            let raw = upstream.as_raw_fd();
            let slot = shared.flows.try_take(key.client.0.ip()).ok();
            let io = FlowIo { upstream, reply, client: RawAddr::new(key.client.0), local: r.local, lease, _slot: slot };
            let (id, _replaced) = self.flows.insert(key, fe.key, backend, io, now);
            if let Some(f) = self.flows.get_mut(id) {
                f.created = now.checked_sub(Duration::from_millis(r.age_ms)).unwrap_or(now);
                f.last_seen = now.checked_sub(Duration::from_millis(r.idle_ms)).unwrap_or(now);
                f.replies = r.replies;
                if r.replies > 0 {
                    // Answered before the hand-over: idle until its client sends again.
                    f.value.lease.answered();
                }
            }
            if let Err(e) = self.epoll.add(raw, id.to_token()) {
                self.flows.remove(id);
                add(&shared.stats.drops.socket, 1);
                debug!(error = %e, "cannot watch an adopted upstream socket");
                continue;
            }
            add(&shared.stats.flows_adopted, 1);
            debug!(worker = self.index, client = %key.client, %backend, "adopted a UDP flow");
        }
    }

    /// A successor holds the same listeners now: stop watching them and close this process's
    /// descriptors. Unregistered first: the epoll entry belongs to the socket, which the
    /// successor keeps open, so closing alone would leave it reporting here.
    fn let_go_of_listeners(&mut self) {
        self.unwatch_listeners();
        self.listening = false;
        for l in self.listeners.iter_mut() {
            drop(l.take());
        }
        debug!(worker = self.index, "UDP listeners released; relaying replies of open flows");
    }

    /// Adopts a newly published table, closing every flow it no longer backs.
    fn refresh_table(&mut self) {
        let current = self.shared.dispatch.table().load();
        if current.generation == self.table.generation {
            return;
        }
        let next = arc_swap::Guard::into_inner(current);
        let old = std::mem::replace(&mut self.table, next);
        // Replies already gathered belong to flows that may be closed now.
        self.flush_replies();
        let table = &self.table;
        let n = self.flows.evict_where(|f| !still_backed(&old, table, &f.frontend, f.backend, f.value.local), &mut self.removed);
        add(&self.shared.stats.flows_evicted, n);
        if n > 0 {
            debug!(worker = self.index, generation = table.generation, evicted = n, "UDP flows closed by a table change");
        }
        self.removed.clear();
    }

    fn on_listener(&mut self, which: usize) {
        // An event reported before a pause: the datagrams stay queued for whoever serves next
        // (a flow opened here now would miss the hand-over).
        if !self.listening {
            return;
        }
        let Some(fd) = self.listeners[which].as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        for _ in 0..LISTENER_ROUNDS {
            let n = match self.rx.recv(fd, 0, BATCH) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) => {
                    debug!(worker = self.index, error = %e, "UDP listener receive failed");
                    return;
                }
            };
            // A table published while draining a burst applies from the next batch on.
            self.refresh_table();
            let now = Instant::now();
            self.now = now;
            let stats = &self.shared.stats;
            add(&stats.datagrams_from_clients, n);
            self.routes.clear();
            for slot in 0..n {
                let (Some(src), Some(dst)) = (self.rx.source(slot), self.rx.orig_dst(slot)) else {
                    add(&self.shared.stats.drops.malformed, 1);
                    continue;
                };
                if self.rx.truncated(slot) {
                    add(&self.shared.stats.drops.malformed, 1);
                    continue;
                }
                let key = FlowKey { client: ClientAddr(canonical(src)), dst: OrigDstAddr(canonical(dst)) };
                let id = match self.flows.lookup(&key) {
                    Some(id) => id,
                    None => match self.open_flow(key, now) {
                        Some(id) => id,
                        None => continue,
                    },
                };
                self.flows.touch_from_client(id, now);
                self.routes.push((id.index(), slot as u16, id));
            }
            self.forward_to_backends();
            if n < BATCH {
                return;
            }
        }
    }

    /// Sends the batch's routed datagrams, one `sendmmsg` per flow (in arrival order within a
    /// flow).
    fn forward_to_backends(&mut self) {
        self.routes.sort_unstable_by_key(|r| (r.0, r.1));
        let mut i = 0;
        while i < self.routes.len() {
            let id = self.routes[i].2;
            let mut j = i;
            self.slots.clear();
            while j < self.routes.len() && self.routes[j].2 == id {
                self.slots.push(self.routes[j].1);
                j += 1;
            }
            i = j;
            let Some(flow) = self.flows.get_mut(id) else {
                continue;
            };
            let sent = self.tx.send(flow.value.upstream.as_raw_fd(), &self.rx, &self.slots, None);
            flow.value.lease.add_bytes(sent.bytes, 0);
            if sent.datagrams > 0 {
                flow.value.lease.awaiting_answer();
            }
            let stats = &self.shared.stats;
            add(&stats.datagrams_to_backends, sent.datagrams);
            if let Some(e) = sent.error {
                let lost = self.slots.len() - sent.datagrams;
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    // An earlier datagram met a closed port (ICMP): this backend is not serving.
                    add(&stats.drops.backend_refused, lost);
                    self.close_refused(id);
                } else {
                    add(&stats.drops.send_to_backend, lost);
                    debug!(worker = self.index, error = %e, lost, "datagrams to a backend dropped");
                }
            }
        }
    }

    /// A flow's backend answered with ICMP port unreachable: close the flow so the client's
    /// next datagram is scheduled afresh, and tell the scheduler's stats.
    fn close_refused(&mut self, id: FlowId) {
        if let Some(f) = self.flows.remove(id) {
            f.value.lease.refused();
            debug!(worker = self.index, client = %f.key.client, backend = %f.backend, "backend port unreachable; flow closed");
        }
    }

    fn open_flow(&mut self, key: FlowKey, now: Instant) -> Option<FlowId> {
        // A handle of our own, so the dispatcher's borrow does not pin `self`.
        let shared = Arc::clone(&self.shared);
        let stats = &shared.stats;
        let Some(fe) = self.frontend_for(key.dst) else {
            add(&stats.drops.no_frontend, 1);
            debug!(client = %key.client, dst = %key.dst, "no UDP frontend; dropped");
            return None;
        };
        let slot = match shared.flows.try_take(key.client.0.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                let (counter, what) = match refused {
                    Refused::Full => (&stats.drops.max_flows, "UDP flow table full (--udp-max-flows); new flows are dropped"),
                    Refused::Share => (
                        &stats.drops.source_share,
                        "a UDP client holds its share of the flows (--udp-source-share); its new flows are dropped",
                    ),
                };
                add(counter, 1);
                if self.last_full_warn.is_none_or(|t| now.duration_since(t) >= FULL_WARN_EVERY) {
                    self.last_full_warn = Some(now);
                    warn!(
                        client = %key.client.0.ip(),
                        max_flows = shared.config.max_flows,
                        per_source = shared.config.max_flows_per_source,
                        "{what}"
                    );
                }
                return None;
            }
        };
        // One attempt: a datagram has no handshake to fail, so there is nothing to retry on.
        let mut choice = shared.dispatch.choose(&fe, key.client, key.dst, 1);
        let Some(attempt) = choice.next_attempt() else {
            add(&stats.drops.no_backend, 1);
            return None;
        };
        let reply = match self.reply_socket(key.dst.0) {
            Ok(r) => r,
            Err(e) => {
                add(&stats.drops.socket, 1);
                // Every datagram to this Service goes unanswered: say so (not at debug level),
                // but not once per datagram.
                if self.last_socket_warn.is_none_or(|t| now.duration_since(t) >= FULL_WARN_EVERY) {
                    self.last_socket_warn = Some(now);
                    let hint = if e.kind() == io::ErrorKind::PermissionDenied { " (a port below 1024 needs CAP_NET_BIND_SERVICE)" } else { "" };
                    warn!(dst = %key.dst, error = %e, "cannot bind a reply socket to the UDP Service address; its datagrams are dropped{hint}");
                }
                return None;
            }
        };
        let backend = attempt.backend();
        let spoof = attempt.spoofed_source();
        let local = spoof.is_some();
        let upstream = match socket::upstream(backend.0, spoof.map(|c| c.0)) {
            Ok(s) => Ok(s),
            // The client's own address:port is taken on this node (the node itself is the
            // client): the node's address is the only honest source left.
            Err(e) if local && e.kind() == io::ErrorKind::AddrInUse => socket::upstream(backend.0, None),
            Err(e) => Err(e),
        }
        .inspect_err(|e| debug!(client = %key.client, %backend, error = %e, "cannot open an upstream UDP socket"));
        let upstream = match upstream {
            Ok(s) => s,
            Err(e) => {
                attempt.failed(ConnectFailure::of(&e));
                add(&stats.drops.socket, 1);
                return None;
            }
        };
        let raw = upstream.as_raw_fd();
        let io = FlowIo { upstream, reply, client: RawAddr::new(key.client.0), local, lease: attempt.opened(), _slot: Some(slot) };
        let (id, _replaced) = self.flows.insert(key, fe.key, backend, io, now);
        if let Err(e) = self.epoll.add(raw, id.to_token()) {
            self.flows.remove(id);
            add(&stats.drops.socket, 1);
            debug!(error = %e, "cannot watch an upstream socket");
            return None;
        }
        add(&stats.flows_created, 1);
        Some(id)
    }

    /// The frontend a datagram sent to `dst` is for.
    fn frontend_for(&self, dst: OrigDstAddr) -> Option<Arc<Frontend>> {
        match &self.plain {
            Some(p) => Some(Arc::clone(&p.frontend)),
            None => self.shared.dispatch.frontend_in(&self.table, dst, Protocol::Udp),
        }
    }

    fn reply_socket(&mut self, frontend: std::net::SocketAddr) -> io::Result<Rc<OwnedFd>> {
        if let Some(p) = &self.plain {
            return Ok(Rc::clone(&p.reply));
        }
        if let Some(s) = self.replies.get(&frontend) {
            return Ok(Rc::clone(s));
        }
        let s = Rc::new(socket::reply_socket(frontend)?);
        self.replies.insert(frontend, Rc::clone(&s));
        Ok(s)
    }

    fn on_upstream(&mut self, id: FlowId) {
        if self.up_used >= BATCH {
            self.flush_replies();
        }
        // A stale token (the flow closed after epoll reported it) resolves to nothing.
        let Some(flow) = self.flows.get_mut(id) else {
            return;
        };
        let start = self.up_used;
        let got = self.up.recv(flow.value.upstream.as_raw_fd(), start, BATCH - start);
        let n = match got {
            Ok(n) => n,
            Err(e) => {
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    self.close_refused(id);
                } else {
                    debug!(worker = self.index, error = %e, "upstream receive failed; flow closed");
                    self.flows.remove(id);
                }
                return;
            }
        };
        if n == 0 {
            return;
        }
        self.up_used += n;
        if flow.replies == 0 {
            // The backend's first answer on this flow: for a request/response protocol (DNS)
            // the time it took to answer, which latency-aware schedulers need as much as the
            // TCP path's first byte back; a backend that stalls shows up here.
            flow.value.lease.turn_took(self.now.saturating_duration_since(flow.created));
        }
        flow.value.lease.answered();
        let mut bytes = 0u64;
        for slot in start..start + n {
            if self.up.truncated(slot) {
                add(&self.shared.stats.drops.malformed, 1);
                continue;
            }
            bytes += self.up.payload(slot).len() as u64;
            self.pending.push(Pending { reply: Rc::clone(&flow.value.reply), slot: slot as u16, to: flow.value.client });
        }
        flow.value.lease.add_bytes(0, bytes);
        add(&self.shared.stats.datagrams_from_backends, n);
        self.flows.touch_from_backend(id, n as u64, self.now);
    }

    /// Sends the gathered backend datagrams to their clients, one `sendmmsg` per reply socket.
    fn flush_replies(&mut self) {
        self.up_used = 0;
        if self.pending.is_empty() {
            return;
        }
        self.pending.sort_unstable_by_key(|p| (p.reply.as_raw_fd(), p.slot));
        let mut i = 0;
        while i < self.pending.len() {
            let fd = self.pending[i].reply.as_raw_fd();
            let mut j = i;
            self.slots.clear();
            self.names.clear();
            while j < self.pending.len() && self.pending[j].reply.as_raw_fd() == fd {
                self.slots.push(self.pending[j].slot);
                self.names.push(self.pending[j].to);
                j += 1;
            }
            i = j;
            let sent = self.tx.send(fd, &self.up, &self.slots, Some(&self.names));
            add(&self.shared.stats.datagrams_to_clients, sent.datagrams);
            if let Some(e) = sent.error {
                let lost = self.slots.len() - sent.datagrams;
                add(&self.shared.stats.drops.send_to_client, lost);
                debug!(worker = self.index, error = %e, lost, "datagrams to a client dropped");
            }
        }
        self.pending.clear();
    }

    fn sweep(&mut self) {
        let n = self.flows.expire(self.now, &mut self.removed);
        add(&self.shared.stats.flows_expired, n);
        self.removed.clear();
        // Reply sockets no flow uses any more (their frontend went quiet or away).
        self.replies.retain(|_, s| Rc::strong_count(s) > 1);
        self.next_sweep = self.now + self.sweep_every;
    }
}
