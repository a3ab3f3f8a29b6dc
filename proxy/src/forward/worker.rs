//! The transparent listeners' event loops: one thread per worker, each with its own
//! single-threaded runtime and its own `SO_REUSEPORT` listeners; a connection is accepted,
//! connected upstream and relayed on the same thread, with no cross-thread hand-off.

use std::net::SocketAddr;
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

/// Starts `config.workers` threads and returns once every listener is bound.
pub fn start(shared: Arc<Shared>) -> Result<Workers, StartError> {
    let spawned = workers::spawn("tpvs-worker", shared.config.workers, |index| {
        let shared = Arc::clone(&shared);
        Ok(move |ready: Ready<bool>| run_worker(index, shared, ready))
    })?;
    let ipv6 = spawned.reports.iter().all(|v6| *v6);
    Ok(Workers { threads: spawned.threads, ipv6 })
}

fn run_worker(index: usize, shared: Arc<Shared>, ready: Ready<bool>) {
    let [v4, v6] = wildcard_listen_addrs(shared.config.port);
    let backlog = shared.config.backlog;
    let bind = |addr: SocketAddr| {
        sockopt::transparent_listener(addr, backlog).map_err(|source| StartError::Bind { what: "transparent TCP", addr, source })
    };
    let l4 = match bind(v4) {
        Ok(l) => l,
        Err(e) => return ready.fail(e),
    };
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
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(source) => return ready.fail(StartError::Setup { what: "TCP", worker: index, source }),
    };
    let has_v6 = l6.is_some();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let pool = Rc::new(PipePool::new(PIPE_POOL, Arc::clone(&shared.pipes)));
        let mut listeners = Vec::new();
        for (std_listener, addr) in [(Some(l4), v4), (l6, v6)] {
            let Some(std_listener) = std_listener else { continue };
            match TcpListener::from_std(std_listener) {
                Ok(l) => listeners.push(l),
                Err(source) => return ready.fail(StartError::Bind { what: "transparent TCP", addr, source }),
            }
        }
        spare::reserve();
        ready.ok(has_v6);
        debug!(worker = index, "listening");
        let mut tasks = Vec::new();
        for l in listeners {
            tasks.push(tokio::task::spawn_local(accept_loop(l, Arc::clone(&shared), Rc::clone(&pool))));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, pool: Rc<PipePool>) {
    loop {
        let (stream, peer, slot) = accept_admitted(&listener, &shared).await;
        tokio::task::spawn_local(serve(stream, ClientAddr(canonical(peer)), Arc::clone(&shared), Rc::clone(&pool), slot));
    }
}

/// A transparent connection: its local address is the destination the client dialled, which
/// names the frontend.
async fn serve(client: TcpStream, client_addr: ClientAddr, shared: Arc<Shared>, pool: Rc<PipePool>, _slot: Slot) {
    let Ok(orig) = client.local_addr().map(|a| OrigDstAddr(canonical(a))) else { return };
    let Some(fe) = shared.dispatch.frontend(orig, Protocol::Tcp) else {
        shared.stats.no_frontend.fetch_add(1, Ordering::Relaxed);
        debug!(client = %client_addr, dst = %orig, "no frontend; resetting");
        reset_on_close(&client);
        return;
    };
    forward_to(fe, client, client_addr, orig, &shared, &pool).await;
}
