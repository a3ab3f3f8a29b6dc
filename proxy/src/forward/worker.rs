//! Event-loop threads: each binds its own `SO_REUSEPORT` transparent listeners and serves what
//! it accepts, start to finish, on its own single-threaded runtime.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use controlplane::{Frontend, Protocol};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::relay::{Ended, relay};
use super::splice::PipePool;
use super::upstream::{ConnectPolicy, connect};
use super::{ConnSlot, Shared};
use crate::addrs::{ClientAddr, OrigDstAddr, canonical};
use crate::sockopt::{self, reset_on_close};

/// Pipes a worker keeps for reuse (two per connection in flight; beyond this they are closed).
const PIPE_POOL: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind the transparent listener on {addr}: {source} (needs root or CAP_NET_ADMIN, and a free port)")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot start worker thread: {0}")]
    Thread(#[source] io::Error),
    #[error("worker {0} exited before its listeners were ready")]
    Vanished(usize),
}

/// The running workers.
#[derive(Debug)]
pub struct Workers {
    pub threads: Vec<JoinHandle<()>>,
    /// Whether the IPv6 listeners are up (IPv6 may be disabled in the namespace).
    pub ipv6: bool,
}

/// Starts `config.workers` threads and returns once every listener is bound, so the caller can
/// install the TPROXY rules knowing no intercepted SYN will find nobody listening.
pub fn start(shared: Arc<Shared>) -> Result<Workers, StartError> {
    let n = shared.config.workers.max(1);
    let (tx, rx) = mpsc::channel::<(usize, Result<bool, StartError>)>();
    let mut threads = Vec::with_capacity(n);
    for i in 0..n {
        let shared = Arc::clone(&shared);
        let tx = tx.clone();
        let t = std::thread::Builder::new()
            .name(format!("tpvs-worker-{i}"))
            .spawn(move || run_worker(i, shared, tx))
            .map_err(StartError::Thread)?;
        threads.push(t);
    }
    drop(tx);
    let mut ipv6 = true;
    for _ in 0..n {
        match rx.recv() {
            Ok((_, Ok(v6))) => ipv6 &= v6,
            Ok((_, Err(e))) => return Err(e),
            Err(_) => return Err(StartError::Vanished(n)),
        }
    }
    Ok(Workers { threads, ipv6 })
}

fn run_worker(index: usize, shared: Arc<Shared>, ready: mpsc::Sender<(usize, Result<bool, StartError>)>) {
    let [v4, v6] = shared.config.listen_addrs();
    let backlog = shared.config.backlog;
    let l4 = match sockopt::transparent_listener(v4, backlog) {
        Ok(l) => l,
        Err(source) => {
            let _ = ready.send((index, Err(StartError::Bind { addr: v4, source })));
            return;
        }
    };
    let l6 = match sockopt::transparent_listener(v6, backlog) {
        Ok(l) => Some(l),
        Err(e) => {
            // A namespace without IPv6 still serves IPv4.
            if index == 0 {
                warn!(addr = %v6, error = %e, "no IPv6 transparent listener; IPv6 Services are not served");
            }
            None
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send((index, Err(StartError::Thread(e))));
            return;
        }
    };
    let has_v6 = l6.is_some();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let pool = Rc::new(PipePool::new(PIPE_POOL));
        let mut listeners = Vec::new();
        for std_listener in std::iter::once(l4).chain(l6) {
            match TcpListener::from_std(std_listener) {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    let _ = ready.send((index, Err(StartError::Bind { addr: v4, source: e })));
                    return;
                }
            }
        }
        let _ = ready.send((index, Ok(has_v6)));
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

/// The next accepted connection that fits under `--max-connections`, with its slot; the ones
/// over the limit are counted and reset. Shared by the transparent and the plain listeners.
pub(super) async fn accept_admitted(listener: &TcpListener, shared: &Arc<Shared>) -> (TcpStream, SocketAddr, ConnSlot) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = shared.admit() else {
                    shared.stats.over_limit.fetch_add(1, Ordering::Relaxed);
                    reset_on_close(&stream);
                    continue;
                };
                return (stream, peer, slot);
            }
            Err(e) => {
                // Out of fds or memory: back off briefly instead of spinning; the kernel keeps
                // the queued SYNs meanwhile.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn serve(client: TcpStream, client_addr: ClientAddr, shared: Arc<Shared>, pool: Rc<PipePool>, _slot: ConnSlot) {
    let orig = match client.local_addr() {
        Ok(a) => OrigDstAddr(canonical(a)),
        Err(_) => return,
    };
    // One table load per connection; the frontend is cloned out so the table may be replaced
    // while this connection is connecting or relaying (it drains on the old frontend).
    let frontend = {
        let table = shared.table.load();
        table.lookup(orig.0, Protocol::Tcp, shared.config.nodeport_addrs.matches(orig.ip())).cloned()
    };
    let Some(fe) = frontend else {
        shared.stats.no_frontend.fetch_add(1, Ordering::Relaxed);
        debug!(client = %client_addr, dst = %orig, "no frontend; resetting");
        reset_on_close(&client);
        return;
    };
    forward_to(fe, client, client_addr, orig, &shared, &pool).await;
}

/// Everything after the frontend is known: connect upstream (with retry), then relay. Shared by
/// the transparent listeners and the plain listen mode ([`super::plain`]), so both measure the
/// same code.
pub(super) async fn forward_to(
    fe: Arc<Frontend>,
    client: TcpStream,
    client_addr: ClientAddr,
    orig: OrigDstAddr,
    shared: &Shared,
    pool: &PipePool,
) {
    let policy = ConnectPolicy { timeout: shared.config.connect_timeout, attempts: shared.config.connect_attempts };
    let upstream = match connect(&fe, client_addr, orig, &shared.affinity, policy).await {
        Ok(u) => u,
        Err(e) => {
            shared.stats.connect_failed.fetch_add(1, Ordering::Relaxed);
            debug!(service = %fe.service, client = %client_addr, dst = %orig, error = %e, "no backend reachable; resetting client");
            reset_on_close(&client);
            return;
        }
    };
    drop(fe);
    let ended = relay(client, upstream.stream, upstream.guard.stats(), pool, shared.config.mode, shared.config.idle_timeout).await;
    match ended {
        Ended::Closed => {}
        Ended::Idle => {
            shared.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            debug!(client = %client_addr, backend = %upstream.backend, "idle timeout");
        }
        Ended::Failed(e) => debug!(client = %client_addr, backend = %upstream.backend, error = %e, "connection reset"),
    }
    // `upstream.guard` drops here: the backend's active count goes down exactly when the
    // connection is over.
}
