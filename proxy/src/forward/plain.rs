//! Plain listen mode: the same workers, connect and relay as the transparent data path, behind
//! an ordinary listener serving one fixed frontend.
//!
//! Used where interception is unavailable or beside the point — a load test comparing
//! schedulers on loopback needs no root, no nftables and no original destination: the
//! listening port alone says which frontend a connection is for. Everything after that choice
//! is [`super::worker::forward_to`], the transparent path's own code.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use controlplane::{Frontend, RoutingTable};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::splice::PipePool;
use super::worker::{StartError, accept_admitted, forward_to};
use super::{ForwardConfig, Shared};
use crate::addrs::{ClientAddr, OrigDstAddr, canonical};

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
    // The first listener fixes the port (the caller may ask for 0); the others join its
    // SO_REUSEPORT group, one per worker as in the transparent path.
    let first = plain_listener(listen, config.backlog).map_err(|source| StartError::Bind { addr: listen, source })?;
    let addr = first.local_addr().map_err(|source| StartError::Bind { addr: listen, source })?;
    let mut listeners = vec![first];
    for _ in 1..n {
        listeners.push(plain_listener(addr, config.backlog).map_err(|source| StartError::Bind { addr, source })?);
    }
    let shared = Shared::new(Arc::new(ArcSwap::from_pointee(RoutingTable::default())), config);
    let (stop, stopped) = watch::channel(());
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), StartError>>();
    let mut threads = Vec::with_capacity(n);
    for (i, listener) in listeners.into_iter().enumerate() {
        let (shared, fe, stopped, ready) = (Arc::clone(&shared), Arc::clone(&frontend), stopped.clone(), ready_tx.clone());
        let t = std::thread::Builder::new()
            .name(format!("tpvs-plain-{i}"))
            .spawn(move || run_plain_worker(listener, fe, shared, stopped, ready))
            .map_err(StartError::Thread)?;
        threads.push(t);
    }
    drop(ready_tx);
    let mut server = PlainServer { addr, shared, stop: Some(stop), threads };
    for i in 0..n {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                server.shutdown();
                return Err(StartError::Vanished(i));
            }
        }
    }
    Ok(server)
}

fn run_plain_worker(
    listener: std::net::TcpListener,
    fe: Arc<Frontend>,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<()>,
    ready: mpsc::Sender<Result<(), StartError>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(StartError::Thread(e)));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(source) => {
                let addr = SocketAddr::from(([0, 0, 0, 0], 0));
                let _ = ready.send(Err(StartError::Bind { addr, source }));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let pool = Rc::new(PipePool::new(1024));
        tokio::select! {
            () = accept_plain(&listener, &fe, &shared, &pool) => {}
            // Err: the sender is gone, which is the stop signal.
            _ = stopped.changed() => {}
        }
    });
    // Dropping the LocalSet dropped every connection task, closing their sockets.
}

async fn accept_plain(listener: &TcpListener, fe: &Arc<Frontend>, shared: &Arc<Shared>, pool: &Rc<PipePool>) {
    loop {
        let (stream, peer, slot) = accept_admitted(listener, shared).await;
        let orig = match stream.local_addr() {
            Ok(a) => OrigDstAddr(canonical(a)),
            Err(_) => continue,
        };
        let (fe, shared, pool) = (Arc::clone(fe), Arc::clone(shared), Rc::clone(pool));
        tokio::task::spawn_local(async move {
            let _slot = slot;
            forward_to(fe, stream, ClientAddr(canonical(peer)), orig, &shared, &pool).await;
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
