//! Taking a worker's established connections out at a safe point (a hand-over to a
//! successor), and relaying connections taken out elsewhere (adopted from a predecessor, or
//! taken back after a successor failed half-way).
//!
//! Each worker keeps one [`Relays`]: a count of its live connections and a pause switch.
//! Registering costs a counter increment per connection; the relay checks a `Cell<bool>`
//! each time it is polled anyway and registers its task's waker once (a `Notify` waiter), so
//! the hand-over adds nothing per packet.
//!
//! On [`Command::Detach`] the worker sets the switch and wakes every relay; each stops between
//! two reads (never inside one), gives back its sockets and the bytes it had read but not
//! written ([`super::relay::Suspended`]), and leaves. A connection still connecting to its
//! backend detaches as soon as its relay starts. The worker answers once none is left.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use controlplane::Protocol;
use schedulers::BackendAddr;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::debug;

use super::Shared;
use super::load::WorkerLoad;
use super::connect::finish;
use super::relay::{Resume, relay};
use super::splice::PipePool;
use crate::addrs::{ClientAddr, OrigDstAddr, canonical};
use crate::handover::DetachedPair;

/// What a worker is asked from outside its thread.
#[derive(Debug)]
pub enum Command {
    /// Take every connection out and send them back.
    Detach(std::sync::mpsc::Sender<Vec<DetachedPair>>),
    /// Relay these here.
    Adopt(Vec<DetachedPair>),
}

/// The pause switch a relay watches.
#[derive(Debug, Default)]
pub struct Pause {
    set: Cell<bool>,
    notify: Notify,
}

impl Pause {
    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// What a relay registers its waker with (once).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    pub(crate) fn set(&self, on: bool) {
        self.set.set(on);
        if on {
            self.notify.notify_waiters();
        }
    }
}

/// One worker's live connections.
#[derive(Debug)]
pub struct Relays {
    pause: Pause,
    /// The worker's exported counters (`open` follows `live`).
    load: Arc<WorkerLoad>,
    live: Cell<usize>,
    none_left: Notify,
    out: RefCell<Vec<DetachedPair>>,
}

/// A connection counted live while this is held.
#[derive(Debug)]
pub struct Live(Rc<Relays>);

impl Drop for Live {
    fn drop(&mut self) {
        let n = self.0.live.get().saturating_sub(1);
        self.0.live.set(n);
        self.0.load.closed();
        if n == 0 {
            self.0.none_left.notify_waiters();
        }
    }
}

impl Relays {
    pub fn new(load: Arc<WorkerLoad>) -> Rc<Relays> {
        Rc::new(Relays { pause: Pause::default(), load, live: Cell::new(0), none_left: Notify::new(), out: RefCell::default() })
    }

    /// Counts one connection live until the guard drops.
    pub fn enter(self: &Rc<Self>) -> Live {
        self.live.set(self.live.get() + 1);
        self.load.opened();
        Live(Rc::clone(self))
    }

    pub fn pause(&self) -> &Pause {
        &self.pause
    }

    /// A relay that stopped for a hand-over leaves its connection here.
    pub fn put(&self, pair: DetachedPair) {
        self.out.borrow_mut().push(pair);
    }

    /// Pauses every relay and waits until none is left; the pairs they left.
    async fn detach_all(&self) -> Vec<DetachedPair> {
        self.pause.set(true);
        loop {
            let none_left = self.none_left.notified();
            let mut none_left = std::pin::pin!(none_left);
            none_left.as_mut().enable();
            if self.live.get() == 0 {
                break;
            }
            none_left.await;
        }
        // Nothing relays here any more; what is adopted next must not stop at once.
        self.pause.set(false);
        std::mem::take(&mut *self.out.borrow_mut())
    }
}

/// A worker's command loop (a task beside its accept loops).
pub async fn serve_commands(
    mut commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
    relays: Rc<Relays>,
    shared: Arc<Shared>,
    pool: Rc<PipePool>,
) {
    while let Some(cmd) = commands.recv().await {
        match cmd {
            Command::Detach(reply) => {
                let pairs = relays.detach_all().await;
                debug!(pairs = pairs.len(), "connections detached for a hand-over");
                // Too late (the hand-over went on without this worker): relay them here again.
                if let Err(std::sync::mpsc::SendError(pairs)) = reply.send(pairs) {
                    debug!(pairs = pairs.len(), "detached too late for the hand-over; relaying them here");
                    adopt_all(pairs, &shared, &pool, &relays);
                }
            }
            Command::Adopt(pairs) => adopt_all(pairs, &shared, &pool, &relays),
        }
    }
}

fn adopt_all(pairs: Vec<DetachedPair>, shared: &Arc<Shared>, pool: &Rc<PipePool>, relays: &Rc<Relays>) {
    for pair in pairs {
        tokio::task::spawn_local(adopted(pair, Arc::clone(shared), Rc::clone(pool), Rc::clone(relays)));
    }
}

/// Relays one handed-over connection: its pending bytes first, then as any other.
async fn adopted(pair: DetachedPair, shared: Arc<Shared>, pool: Rc<PipePool>, relays: Rc<Relays>) {
    let _live = relays.enter();
    // Counted against the connection budget like any other (never refused for it: the
    // connection exists already, and dropping it is what a hand-over must not do).
    let _slot = shared.connections.try_take();
    let r = &pair.record;
    let (client_addr, orig) = (ClientAddr(canonical(r.client)), OrigDstAddr(canonical(r.frontend)));
    let (lease, known) = shared.dispatch.adopt(orig, Protocol::Tcp, BackendAddr(canonical(r.backend)));
    shared.stats.adopted.fetch_add(1, Ordering::Relaxed);
    if !known {
        shared.stats.adopted_without_backend.fetch_add(1, Ordering::Relaxed);
        debug!(client = %client_addr, backend = %lease.backend(), "adopted a connection whose backend is not in this table; relaying it to the end");
    }
    let streams = tokio_stream(pair.client).and_then(|c| Ok((c, tokio_stream(pair.upstream)?)));
    let (client, upstream) = match streams {
        Ok(s) => s,
        Err(e) => {
            debug!(client = %client_addr, error = %e, "cannot register an adopted connection");
            return;
        }
    };
    let resume = Resume {
        to_backend: pair.to_backend,
        to_client: pair.to_client,
        client_closed: r.client_closed,
        backend_closed: r.backend_closed,
        age: Duration::from_millis(r.age_ms),
        bytes_to_backend: r.bytes_to_backend,
        bytes_from_backend: r.bytes_from_backend,
    };
    let ended = relay(client, upstream, &lease, &pool, shared.config.mode, shared.config.idle_timeout, relays.pause(), resume).await;
    finish(ended, client_addr, orig, &lease, &shared, &relays);
}

fn tokio_stream(fd: std::os::fd::OwnedFd) -> std::io::Result<TcpStream> {
    let s = std::net::TcpStream::from(fd);
    s.set_nonblocking(true)?;
    TcpStream::from_std(s)
}
