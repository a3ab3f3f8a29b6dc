//! What every worker of the TCP path, transparent or plain, does with its listener: accept,
//! admit under the connection budget (resetting the excess at once), and keep a pool of pipes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use super::Shared;
use super::load::WorkerLoad;
use crate::slots::Slot;
use crate::sockopt::reset_on_close;

/// Pipes a worker keeps for reuse (two per connection in flight; beyond this they are closed).
pub(super) const PIPE_POOL: usize = 1024;

/// The next accepted connection that fits under `--max-connections`, with its slot; the ones
/// over the limit are counted and reset at once. Shared by the transparent and the plain
/// listeners.
///
/// When the process is out of descriptors anyway (`EMFILE`: something outside the budget took
/// them), waiting would leave every queued client hanging until its own timeout: the spare
/// descriptor this thread keeps is closed to make room, the next connection is accepted and
/// reset, and the spare is opened again.
pub(super) async fn accept_admitted(listener: &TcpListener, shared: &Arc<Shared>, load: &WorkerLoad) -> (TcpStream, SocketAddr, Slot) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                        load.count_accepted();
                let Some(slot) = shared.connections.try_take() else {
                    shared.stats.over_limit.fetch_add(1, Ordering::Relaxed);
                    reset_on_close(&stream);
                    continue;
                };
                return (stream, peer, slot);
            }
            Err(e) if out_of_fds(&e) => {
                // Free the spare and wait for the connection it makes room for: the queued
                // client at once, or the next one (the kernel reports EMFILE before it looks
                // at the queue, so an empty queue looks the same).
                spare::release();
                let next = listener.accept().await;
                match next {
                    Ok((stream, _)) => {
                        shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                        load.count_accepted();
                        shared.stats.over_limit.fetch_add(1, Ordering::Relaxed);
                        reset_on_close(&stream);
                        drop(stream);
                    }
                    Err(_) => {
                        // The freed descriptor went elsewhere meanwhile.
                        warn!(error = %e, "out of file descriptors; backing off");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                spare::reserve();
            }
            Err(e) => {
                // Out of memory or a transient error: back off briefly instead of spinning;
                // the kernel keeps the queued SYNs meanwhile.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// One descriptor per worker thread, held so an accept can still be made (and reset) when the
/// process has none left.
pub(super) mod spare {
    use std::cell::RefCell;
    use std::fs::File;

    thread_local! {
        static SPARE: RefCell<Option<File>> = const { RefCell::new(None) };
    }

    /// Opens this thread's spare (at worker start, while descriptors are plentiful).
    pub(in crate::forward) fn reserve() {
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.is_none() {
                *s = File::open("/dev/null").ok();
            }
        });
    }

    /// Closes this thread's spare, making room for one accept.
    pub(super) fn release() {
        SPARE.with(|s| drop(s.borrow_mut().take()));
    }
}
