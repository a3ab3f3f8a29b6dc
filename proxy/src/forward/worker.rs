//! The transparent listeners' event loops: one thread per worker, each with its own
//! single-threaded runtime and its own `SO_REUSEPORT` listeners; a connection is accepted,
//! connected upstream and relayed on the same thread, with no cross-thread hand-off.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
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
use super::splice::PipePool;
use crate::addrs::{ClientAddr, OrigDstAddr, canonical, wildcard_listen_addrs};
use crate::listeners::{Gate, Pair, Release};
use crate::slots::Slot;
use crate::sockopt::{self, reset_on_close};
use crate::workers::{self, Ready, StartError};

/// The running workers.
#[derive(Debug)]
pub struct Workers {
    pub threads: Vec<JoinHandle<()>>,
    /// Whether the IPv6 listeners are up (IPv6 may be disabled in the namespace).
    pub ipv6: bool,
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
pub fn start(shared: Arc<Shared>, listeners: Vec<Pair>, gate: Gate, release: Release) -> Result<Workers, StartError> {
    let ipv6 = listeners.iter().all(|[_, v6]| v6.is_some());
    let mut listeners = listeners.into_iter();
    let spawned = workers::spawn("tpvs-worker", shared.config.workers, |index| {
        let shared = Arc::clone(&shared);
        let pair = listeners.next().ok_or(StartError::Vanished(index))?;
        let (gate, release) = (gate.clone(), release.clone());
        Ok(move |ready: Ready<()>| run_worker(index, shared, pair, gate, release, ready))
    })?;
    drop(spawned.reports);
    Ok(Workers { threads: spawned.threads, ipv6 })
}

fn run_worker(index: usize, shared: Arc<Shared>, pair: Pair, gate: Gate, release: Release, ready: Ready<()>) {
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
        ready.ok(());
        // Blocks this worker's thread only: nothing else runs on it before it serves.
        gate.wait();
        debug!(worker = index, "listening");
        let mut tasks = Vec::new();
        for l in listeners {
            tasks.push(tokio::task::spawn_local(accept_loop(l, Arc::clone(&shared), Rc::clone(&pool), stop.clone())));
        }
        // Released: the accept loops have dropped their listeners; the connections they
        // started keep relaying on this thread until they end.
        let _ = stop.wait_for(|r| *r).await;
        for t in tasks {
            let _ = t.await;
        }
        debug!(worker = index, "listeners released; relaying what is open");
        std::future::pending::<()>().await;
    });
}

/// Accepts until `stop` fires; then drops the listener (this process's descriptor only).
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, pool: Rc<PipePool>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|r| *r) => return,
            (stream, peer, slot) = accept_admitted(&listener, &shared) => {
                tokio::task::spawn_local(serve(stream, ClientAddr(canonical(peer)), Arc::clone(&shared), Rc::clone(&pool), slot));
            }
        }
    }
}

/// A transparent connection: its local address is the destination the client dialled, which
/// names the frontend.
async fn serve(client: TcpStream, client_addr: ClientAddr, shared: Arc<Shared>, pool: Rc<PipePool>, _slot: Slot) {
    let Ok(orig) = client.local_addr().map(|a| OrigDstAddr(canonical(a))) else {
        return;
    };
    let Some(fe) = shared.dispatch.frontend(orig, Protocol::Tcp) else {
        shared.stats.no_frontend.fetch_add(1, Ordering::Relaxed);
        debug!(client = %client_addr, dst = %orig, "no frontend; resetting");
        reset_on_close(&client);
        return;
    };
    forward_to(fe, client, client_addr, orig, &shared, &pool).await;
}
