//! Choosing a backend and connecting to it: affinity first, then the scheduler, retrying the
//! scheduler's next candidate on refusal or timeout, a bounded number of times.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use controlplane::{Frontend, TrafficPolicy};
use schedulers::{ActiveGuard, BackendAddr, ConnectFailure, PickContext, Tried};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::affinity::AffinityTable;
use crate::addrs::{ClientAddr, OrigDstAddr};
use crate::sockopt;

/// A connected upstream, holding its backend's active-connection slot until dropped.
#[derive(Debug)]
pub struct Upstream {
    pub stream: TcpStream,
    pub backend: BackendAddr,
    /// Keeps lc/wlc/sed/nq/p2c's view of this backend exact for the connection's whole life.
    pub guard: ActiveGuard,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no backend to pick")]
    NoBackend,
    #[error("{attempts} connect attempt(s) failed; last to {backend}: {source}")]
    Exhausted {
        attempts: usize,
        backend: BackendAddr,
        #[source]
        source: io::Error,
    },
}

/// Limits for one connect.
#[derive(Clone, Copy, Debug)]
pub struct ConnectPolicy {
    pub timeout: Duration,
    /// Backends tried at most (first pick included), capped by what [`Tried`] can remember.
    pub attempts: usize,
}

pub async fn connect(
    fe: &Frontend,
    client: ClientAddr,
    orig: OrigDstAddr,
    affinity: &AffinityTable,
    policy: ConnectPolicy,
) -> Result<Upstream, ConnectError> {
    let set = fe.backends();
    let ctx = PickContext::new(client.0, orig.0);
    // Local: the backend must see the client itself; Cluster: the node's address (SNAT-like).
    let source = match fe.policy {
        TrafficPolicy::Local => Some(client.ip()),
        TrafficPolicy::Cluster => None,
    };
    let mut tried = Tried::new();
    let mut sticky = fe.affinity.and_then(|_| affinity.get(fe.key, client.ip(), Instant::now())).and_then(|addr| {
        // Only while that backend is still in the set and may take connections.
        set.iter().position(|b| b.addr == addr && b.is_pickable())
    });
    let attempts_max = policy.attempts.clamp(1, Tried::CAPACITY);
    let mut last: Option<(BackendAddr, io::Error)> = None;
    let mut attempts = 0;
    while attempts < attempts_max {
        let Some(index) = sticky.take().or_else(|| fe.scheduler.pick(&ctx, &tried)) else { break };
        let Some(backend) = set.get(index) else { break };
        attempts += 1;
        backend.stats.record_pick();
        if attempts > 1 {
            backend.stats.connect_outcomes().record_retry();
        }
        // Counted as active from the attempt on, like IPVS counts a connection from its SYN:
        // a burst of new connections must not all see the same idle backend in lc.
        let guard = backend.stats.open();
        let started = Instant::now();
        match tokio::time::timeout(policy.timeout, dial(backend.addr.0, source)).await {
            Ok(Ok(stream)) => {
                let took = nanos(started.elapsed());
                backend.stats.observe_latency_ns(took);
                backend.stats.observe_connect_ns(took);
                if let Some(a) = fe.affinity {
                    affinity.record(fe.key, client.ip(), backend.addr, a.timeout, Instant::now());
                }
                return Ok(Upstream { stream, backend: backend.addr, guard });
            }
            Ok(Err(e)) => {
                backend.stats.record_connect_failure(failure_reason(&e));
                last = Some((backend.addr, e));
            }
            Err(_) => {
                backend.stats.record_connect_failure(ConnectFailure::Timeout);
                // A timeout is the worst latency seen: peak-EWMA should steer away at once.
                backend.stats.observe_latency_ns(nanos(policy.timeout));
                last = Some((backend.addr, io::Error::new(io::ErrorKind::TimedOut, "connect timed out")));
            }
        }
        drop(guard);
        if !tried.push(index) {
            break;
        }
    }
    match last {
        Some((backend, source)) => Err(ConnectError::Exhausted { attempts, backend, source }),
        None => Err(ConnectError::NoBackend),
    }
}

/// The reason label a failed connect is counted under.
fn failure_reason(e: &io::Error) -> ConnectFailure {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
        io::ErrorKind::TimedOut => ConnectFailure::Timeout,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => ConnectFailure::Unreachable,
        _ => ConnectFailure::Other,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A non-blocking connect. The outcome is read from the first readiness event: writable alone
/// means established; a hang-up or error flag means it failed, and only then is `SO_ERROR`
/// asked for the reason — the established case spends no syscall beyond socket, `TCP_NODELAY`
/// and connect (plus the epoll registration).
async fn dial(backend: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = sockopt::upstream_socket(backend, source)?;
    match socket.connect(&backend.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    let ready = stream.ready(Interest::WRITABLE).await?;
    if ready.is_write_closed() || ready.is_error() {
        return Err(match stream.take_error() {
            Ok(Some(e)) | Err(e) => e,
            Ok(None) => io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed while connecting"),
        });
    }
    Ok(stream)
}
