//! The transparent listeners' event loops: one thread per worker, each with its own
//! single-threaded runtime and its own `SO_REUSEPORT` listeners; a connection is accepted,
//! connected upstream and relayed on the same thread, with no cross-thread hand-off.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use controlplane::Protocol;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::Shared;
use super::accept::{PIPE_POOL, accept_admitted, spare};
use super::connect::forward_to;
use super::detach::{Command, Relays, serve_commands};
use super::load::WorkerLoad;
use super::splice::PipePool;
use super::steering::{Steering, pin_current_thread};
use crate::addrs::{ClientAddr, OrigDstAddr, canonical, wildcard_listen_addrs};
use crate::handover::DetachedPair;
use crate::listeners::{Gate, Pair, Release, Serve};
use crate::slots::Slot;
use crate::sockopt::{self, reset_on_close};
use crate::workers::{self, Ready, StartError};

/// The running workers.
#[derive(Debug)]
pub struct Workers {
    pub threads: Vec<JoinHandle<()>>,
    /// Whether the IPv6 listeners are up (IPv6 may be disabled in the namespace).
    pub ipv6: bool,
    pub control: Control,
}

/// Reaches every worker's established connections from another thread (a hand-over).
#[derive(Debug, Clone)]
pub struct Control {
    workers: Vec<tokio::sync::mpsc::UnboundedSender<Command>>,
}

impl Control {
    /// Pauses every worker's connections at a safe point and takes them out. Blocks (not on a
    /// runtime thread) until each worker answered or `within` passed; a worker that did not
    /// answer in time keeps relaying what it has.
    pub fn detach(&self, within: std::time::Duration) -> Vec<DetachedPair> {
        let (tx, rx) = std::sync::mpsc::channel();
        let asked = self.workers.iter().filter(|w| w.send(Command::Detach(tx.clone())).is_ok()).count();
        drop(tx);
        let deadline = std::time::Instant::now() + within;
        let mut out = Vec::new();
        for _ in 0..asked {
            match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                Ok(pairs) => out.extend(pairs),
                Err(_) => {
                    warn!("a worker did not detach its connections in time; it keeps relaying them");
                    break;
                }
            }
        }
        out
    }

    /// Relays `pairs` here, spread over the workers.
    pub fn adopt(&self, pairs: Vec<DetachedPair>) {
        let n = self.workers.len().max(1);
        let mut shares: Vec<Vec<DetachedPair>> = (0..n).map(|_| Vec::new()).collect();
        for (i, p) in pairs.into_iter().enumerate() {
            if let Some(share) = shares.get_mut(i % n) {
                share.push(p);
            }
        }
        for (w, share) in self.workers.iter().zip(shares) {
            if !share.is_empty() && w.send(Command::Adopt(share)).is_err() {
                warn!("a worker is gone; connections given to it are closed");
            }
        }
    }
}

/// Binds every worker's transparent listeners (`[v4, v6]`; no v6 in a namespace without it).
pub fn bind_listeners(port: u16, backlog: i32, workers: usize) -> Result<Vec<Pair>, StartError> {
    let [v4, v6] = wildcard_listen_addrs(port);
    let bind = |addr: SocketAddr| {
        sockopt::transparent_listener(addr, backlog).map(OwnedFd::from).map_err(|source| StartError::Bind { what: "transparent TCP", addr, source })
    };
    let mut pairs = Vec::with_capacity(workers.max(1));
    for index in 0..workers.max(1) {
        let l4 = bind(v4)?;
        let l6 = match bind(v6) {
            Ok(l) => Some(l),
            Err(e) => {
                // A namespace without IPv6 still serves IPv4.
                if index == 0 {
                    warn!(error = %e, "no IPv6 transparent listener; IPv6 Services are not served");
                }
                None
            }
        };
        pairs.push([Some(l4), l6]);
    }
    Ok(pairs)
}

/// Starts one thread per listener pair; returns once every worker holds its listeners. Each
/// waits at `gate` before accepting, and lets go of its listeners when `release` fires.
/// `steering` (already resolved) is applied to the listeners' groups, whether they were bound
/// here or handed over, and with `Cpu` worker `i` is pinned to CPU `i`.
pub fn start(shared: Arc<Shared>, listeners: Vec<Pair>, gate: Gate, release: Release, steering: Steering) -> Result<Workers, StartError> {
    let ipv6 = listeners.iter().all(|[_, v6]| v6.is_some());
    // Any member of a group carries the group's program: worker 0's listeners.
    for fd in listeners.first().into_iter().flatten().flatten() {
        steering.apply(fd.as_fd()).map_err(|source| StartError::Setup { what: "TCP steering", worker: 0, source })?;
    }
    let mut listeners = listeners.into_iter();
    let mut control = Control { workers: Vec::new() };
    let spawned = workers::spawn("tpvs-worker", shared.config.workers, |index| {
        let shared = Arc::clone(&shared);
        let pair = listeners.next().ok_or(StartError::Vanished(index))?;
        let (gate, release) = (gate.clone(), release.clone());
        let (tx, commands) = tokio::sync::mpsc::unbounded_channel();
        control.workers.push(tx);
        Ok(move |ready: Ready<()>| {
            if steering == Steering::Cpu
                && let Err(source) = pin_current_thread(index)
            {
                return ready.fail(StartError::Setup { what: "TCP (pinning to its CPU)", worker: index, source });
            }
            run_worker(index, shared, pair, (gate, release, commands), ready)
        })
    })?;
    drop(spawned.reports);
    Ok(Workers { threads: spawned.threads, ipv6, control })
}

type Switches = (Gate, Release, tokio::sync::mpsc::UnboundedReceiver<Command>);

fn run_worker(index: usize, shared: Arc<Shared>, pair: Pair, (gate, release, commands): Switches, ready: Ready<()>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(source) => {
            return ready.fail(StartError::Setup { what: "TCP", worker: index, source });
        }
    };
    let local = tokio::task::LocalSet::new();
    let mut stop = release.subscribe();
    local.block_on(&runtime, async move {
        let pool = Rc::new(PipePool::new(PIPE_POOL, Arc::clone(&shared.pipes)));
        let mut listeners = Vec::new();
        for fd in pair.into_iter().flatten() {
            let std_listener = std::net::TcpListener::from(fd);
            let registered = std_listener.set_nonblocking(true).and_then(|()| TcpListener::from_std(std_listener));
            match registered {
                Ok(l) => listeners.push(l),
                Err(source) => {
                    return ready.fail(StartError::Setup { what: "TCP", worker: index, source });
                }
            }
        }
        spare::reserve();
        let load = shared.worker_load(index);
        load.attach_to_current_thread();
        let relays = Relays::new(Arc::clone(&load));
        // Commands are served from the start: a successor adopts its predecessor's
        // connections before its gate opens.
        tokio::task::spawn_local(serve_commands(commands, Rc::clone(&relays), Arc::clone(&shared), Rc::clone(&pool)));
        ready.ok(());
        tokio::task::spawn_local(timer_heartbeat());
        gate.opened().await;
        debug!(worker = index, "listening");
        let mut tasks = Vec::new();
        for l in listeners {
            let (shared, pool, relays, load) = (Arc::clone(&shared), Rc::clone(&pool), Rc::clone(&relays), Arc::clone(&load));
            tasks.push(tokio::task::spawn_local(accept_loop(l, (shared, load), pool, relays, stop.clone())));
        }
        // Released: the accept loops have dropped their listeners; the connections they
        // started keep relaying on this thread until they end.
        let _ = stop.wait_for(|s| *s == Serve::Released).await;
        for t in tasks {
            let _ = t.await;
        }
        debug!(worker = index, "listeners released; relaying what is open");
        std::future::pending::<()>().await;
    });
}

/// How often a worker's timer driver wakes at the least; below the connect timeout (2 s by
/// default) so a connect's timeout timer never has the earliest deadline.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps a timer pending that fires sooner than any connect timeout.
///
/// A timer registered with an earlier deadline than the one the runtime's driver last promised
/// to wake at makes tokio wake the driver through its eventfd (a `write`, and one more
/// `epoll_wait` return), even on the driver's own thread. Every connect arms a timeout, and
/// with only the relays' later timers pending that was a wake-up for about every other
/// connection. A pending heartbeat moves the promised wake-up to at most `HEARTBEAT` ahead, so
/// connect timers never come first: one wake-up a second per worker instead of one for about
/// every other connection (see benches/RESULTS.md). With `--connect-timeout` at or below
/// `HEARTBEAT` the saving is lost, nothing else.
pub(super) async fn timer_heartbeat() {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
    }
}

/// Accepts while the switch says so, holds the listener while paused, and drops it (this
/// process's descriptor only) once released.
async fn accept_loop(
    listener: TcpListener,
    (shared, load): (Arc<Shared>, Arc<WorkerLoad>),
    pool: Rc<PipePool>,
    relays: Rc<Relays>,
    mut stop: tokio::sync::watch::Receiver<Serve>,
) {
    loop {
        let paused = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s != Serve::Accepting) => true,
            (stream, peer, slot) = accept_admitted(&listener, &shared, &load) => {
                let (shared, pool, relays) = (Arc::clone(&shared), Rc::clone(&pool), Rc::clone(&relays));
                tokio::task::spawn_local(serve(stream, ClientAddr(canonical(peer)), shared, pool, relays, slot));
                false
            }
        };
        if paused {
            let state = stop.wait_for(|s| *s != Serve::Paused).await.map(|s| *s);
            if !matches!(state, Ok(Serve::Accepting)) {
                return;
            }
        }
    }
}

/// A transparent connection: its local address is the destination the client dialled, which
/// names the frontend.
async fn serve(client: TcpStream, client_addr: ClientAddr, shared: Arc<Shared>, pool: Rc<PipePool>, relays: Rc<Relays>, _slot: Slot) {
    let _live = relays.enter();
    let Ok(orig) = client.local_addr().map(|a| OrigDstAddr(canonical(a))) else {
        return;
    };
    let Some(fe) = shared.dispatch.frontend(orig, Protocol::Tcp) else {
        shared.stats.no_frontend.fetch_add(1, Ordering::Relaxed);
        debug!(client = %client_addr, dst = %orig, "no frontend; resetting");
        reset_on_close(&client);
        return;
    };
    forward_to(fe, client, client_addr, orig, &shared, &pool, &relays).await;
}
