//! What every worker of the TCP path, transparent or plain, does with its listener: accept,
//! admit under the connection budget (resetting the excess at once), and keep a pool of pipes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use super::Shared;
use crate::slots::Slot;
use crate::sockopt::reset_on_close;

/// Pipes a worker keeps for reuse (two per connection in flight; beyond this they are closed).
pub(super) const PIPE_POOL: usize = 1024;

/// The next accepted connection that fits under `--max-connections`, with its slot; the ones
/// over the limit are counted and reset. Shared by the transparent and the plain listeners.
pub(super) async fn accept_admitted(listener: &TcpListener, shared: &Arc<Shared>) -> (TcpStream, SocketAddr, Slot) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = shared.connections.try_take() else {
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
