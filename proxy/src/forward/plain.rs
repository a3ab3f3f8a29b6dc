//! Plain listen mode: the same workers, connect and relay as the transparent data path, behind
//! an ordinary listener serving one fixed frontend.
//!
//! Used where interception is unavailable or beside the point — a load test comparing
//! schedulers on loopback needs no root, no nftables and no original destination: the
//! listening port alone says which frontend a connection is for. Everything after that choice
//! is [`super::connect::forward_to`], the transparent path's own code.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use controlplane::{Frontend, RoutingTable};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::connect::forward_to;
use super::detach::Relays;
use super::load::WorkerLoad;
use super::splice::PipePool;
use super::accept::{PIPE_POOL, accept_admitted};
use super::{ForwardConfig, Shared};
use crate::addrs::{ClientAddr, OrigDstAddr, canonical};
use crate::dispatch::telemetry::MetricsRegistry;
use crate::workers::{self, Ready, StartError};

/// A running plain-mode server; [`PlainServer::stop`] (or drop) ends it.
#[derive(Debug)]
pub struct PlainServer {
    /// The bound address (the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// Data-path counters (accepted, connect failures, ...), as in the daemon.
    pub shared: Arc<Shared>,
    stop: Option<watch::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl PlainServer {
    /// Stops accepting, drops every open connection and joins the workers.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // Closing the channel is the signal: every worker's select sees it.
        self.stop.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Serves `frontend` on `listen` with `config.workers` event-loop threads.
///
/// `config.port` and `config.nodeport_addrs` are ignored (there is no interception); the
/// connect policy, connection limit, relay mode and idle timeout apply as in the daemon.
pub fn serve_plain(listen: SocketAddr, frontend: Arc<Frontend>, config: ForwardConfig) -> Result<PlainServer, StartError> {
    let n = config.workers.max(1);
    let bind_error = |addr: SocketAddr| move |source| StartError::Bind { what: "plain TCP", addr, source };
    // The first listener fixes the port (the caller may ask for 0); the others join its
    // SO_REUSEPORT group, one per worker as in the transparent path.
    let first = plain_listener(listen, config.backlog).map_err(bind_error(listen))?;
    let addr = first.local_addr().map_err(bind_error(listen))?;
    let mut listeners = vec![Some(first)];
    for _ in 1..n {
        listeners.push(Some(plain_listener(addr, config.backlog).map_err(bind_error(addr))?));
    }
    let table = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
    let shared = Shared::new(table, config, Arc::new(MetricsRegistry::default()));
    let (stop, stopped) = watch::channel(());
    let spawned = workers::spawn("tpvs-plain", n, |i| {
        let listener = listeners.get_mut(i).and_then(Option::take).ok_or(StartError::Vanished(i))?;
        let (shared, fe, stopped) = (Arc::clone(&shared), Arc::clone(&frontend), stopped.clone());
        Ok(move |ready: Ready<()>| run_plain_worker(i, listener, addr, fe, shared, stopped, ready))
    });
    match spawned {
        Ok(s) => Ok(PlainServer { addr, shared, stop: Some(stop), threads: s.threads }),
        // Dropping `stop` ends the workers that did start.
        Err(e) => Err(e),
    }
}

fn run_plain_worker(
    index: usize,
    listener: std::net::TcpListener,
    addr: SocketAddr,
    fe: Arc<Frontend>,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<()>,
    ready: Ready<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(source) => return ready.fail(StartError::Setup { what: "plain TCP", worker: index, source }),
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(source) => return ready.fail(StartError::Bind { what: "plain TCP", addr, source }),
        };
        super::accept::spare::reserve();
        // As in the transparent workers, so both measure the same connect path.
        tokio::task::spawn_local(super::worker::timer_heartbeat());
        ready.ok(());
        let pool = Rc::new(PipePool::new(PIPE_POOL, Arc::clone(&shared.pipes)));
        let load = shared.worker_load(index);
        load.attach_to_current_thread();
        // Never paused: the plain mode has no hand-over.
        let relays = Relays::new(Arc::clone(&load));
        tokio::select! {
            () = accept_plain(&listener, &fe, (&shared, &load), &pool, &relays) => {}
            // Err: the sender is gone, which is the stop signal.
            _ = stopped.changed() => {}
        }
    });
    // Dropping the LocalSet dropped every connection task, closing their sockets.
}

async fn accept_plain(listener: &TcpListener, fe: &Arc<Frontend>, (shared, load): (&Arc<Shared>, &WorkerLoad), pool: &Rc<PipePool>, relays: &Rc<Relays>) {
    loop {
        let (stream, peer, slot) = accept_admitted(listener, shared, load).await;
        let Ok(orig) = stream.local_addr().map(|a| OrigDstAddr(canonical(a))) else { continue };
        let (fe, shared, pool, relays) = (Arc::clone(fe), Arc::clone(shared), Rc::clone(pool), Rc::clone(relays));
        tokio::task::spawn_local(async move {
            let _slot = slot;
            forward_to(fe, stream, ClientAddr(canonical(peer)), orig, &shared, &pool, &relays).await;
        });
    }
}

/// An ordinary listener with the options the transparent one sets (reuseport for one listener
/// per worker, no-delay inherited by accepted sockets), minus `IP_TRANSPARENT`.
fn plain_listener(addr: SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let s = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s.into())
}
