//! One connection from its frontend on: connect to the backends the dispatcher names, each
//! with a timeout, then relay. Shared by the transparent listeners and the plain listen mode,
//! so both measure the same code.
//!
//! Which backend, in which order, and what each outcome means for the schedulers is the
//! dispatcher's ([`crate::dispatch`]); this module only dials and reports.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use controlplane::Frontend;
use schedulers::{ClientAddr, OrigDstAddr};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tracing::debug;

use super::Shared;
use super::detach::Relays;
use super::relay::{Ended, Resume, relay};
use super::splice::PipePool;
use crate::dispatch::Lease;
use crate::dispatch::telemetry::ConnectFailure;
use crate::handover::{DetachedPair, PairRecord};
use crate::sockopt::{self, reset_on_close};

/// Connects upstream (with retry), then relays until both sides are done. The client is reset
/// when no backend can be reached.
pub async fn forward_to(
    fe: Arc<Frontend>,
    client: TcpStream,
    client_addr: ClientAddr,
    orig: OrigDstAddr,
    shared: &Shared,
    pool: &PipePool,
    relays: &Relays,
) {
    let connected = connect(&fe, client_addr, orig, shared).await;
    drop(fe);
    let Some((upstream, lease)) = connected else {
        shared.stats.connect_failed.fetch_add(1, Ordering::Relaxed);
        reset_on_close(&client);
        return;
    };
    let ended = relay(client, upstream, &lease, pool, shared.config.mode, shared.config.idle_timeout, relays.pause(), Resume::default()).await;
    finish(ended, client_addr, orig, &lease, shared, relays);
    // `lease` drops here: the backend's active count goes down exactly when the connection is
    // over here (ended, or handed over).
}

/// Counts and logs how a relay ended; a paused one is left with the worker's hand-over.
pub(super) fn finish(ended: Ended, client_addr: ClientAddr, orig: OrigDstAddr, lease: &Lease, shared: &Shared, relays: &Relays) {
    match ended {
        Ended::Closed => {}
        Ended::Idle => {
            shared.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            debug!(client = %client_addr, backend = %lease.backend(), "idle timeout");
        }
        Ended::Failed(e) => debug!(client = %client_addr, backend = %lease.backend(), error = %e, "connection reset"),
        Ended::Paused(s) => {
            let record = PairRecord {
                client: client_addr.0,
                frontend: orig.0,
                backend: lease.backend().0,
                // Filled in from the bytes themselves when sent.
                pending_to_backend: 0,
                pending_to_client: 0,
                client_closed: s.client_closed,
                backend_closed: s.backend_closed,
                bytes_to_backend: s.bytes_to_backend,
                bytes_from_backend: s.bytes_from_backend,
                age_ms: u64::try_from(s.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            };
            let s = *s;
            relays.put(DetachedPair { client: s.client.into(), upstream: s.upstream.into(), to_backend: s.to_backend, to_client: s.to_client, record });
        }
    }
}

/// Tries the dispatcher's candidates in turn; the first that connects wins.
async fn connect(fe: &Frontend, client: ClientAddr, orig: OrigDstAddr, shared: &Shared) -> Option<(TcpStream, Lease)> {
    let timeout = shared.config.connect_timeout;
    let mut choice = shared.dispatch.choose(fe, client, orig, shared.config.connect_attempts);
    let mut last: Option<io::Error> = None;
    while let Some(attempt) = choice.next_attempt() {
        let backend = attempt.backend();
        match tokio::time::timeout(timeout, dial(backend.0, attempt.spoofed_source().map(|c| c.ip()))).await {
            Ok(Ok(stream)) => return Some((stream, attempt.connected())),
            Ok(Err(e)) => {
                attempt.failed(ConnectFailure::of(&e));
                debug!(service = %fe.service, %client, %backend, error = %e, "connect failed");
                last = Some(e);
            }
            Err(_) => {
                attempt.timed_out(timeout);
                debug!(service = %fe.service, %client, %backend, "connect timed out");
                last = Some(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            }
        }
    }
    match last {
        Some(e) => debug!(service = %fe.service, %client, dst = %orig, attempts = choice.attempts(), error = %e, "no backend reachable; resetting client"),
        None => debug!(service = %fe.service, %client, dst = %orig, "no backend to pick; resetting client"),
    }
    None
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
