//! Both directions of one proxied connection, until both have ended (or one failed, or the
//! connection sat idle too long).
//!
//! Half-close is passed through: when the client finishes sending, the backend gets a FIN and
//! may still answer; the connection ends when both directions have seen end of stream. An error
//! in either direction (a reset) resets both sides, so neither peer waits on a dead partner.

use std::cell::Cell;
use std::io;
use std::time::{Duration, Instant};

use schedulers::BackendStats;
use tokio::net::TcpStream;

use super::splice::{PipePool, transfer};
use crate::sockopt::reset_on_close;

/// How bytes are moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RelayMode {
    /// `splice(2)` through pooled pipes: zero-copy, no per-connection buffers.
    Splice,
    /// Read/write through user-space buffers (for comparison and for kernels without splice
    /// on sockets). No idle timeout in this mode.
    Copy,
}

/// How a relay ended (for logs and counters).
#[derive(Debug)]
pub enum Ended {
    /// Both directions reached end of stream.
    Closed,
    /// One direction failed; both sides were reset.
    Failed(io::Error),
    /// No byte moved for the idle timeout; both sides were reset.
    Idle,
}

pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    stats: &BackendStats,
    pool: &PipePool,
    mode: RelayMode,
    idle: Option<Duration>,
) -> Ended {
    if mode == RelayMode::Copy {
        return relay_copy(client, upstream, stats).await;
    }
    let (up_pipe, down_pipe) = match (pool.take(), pool.take()) {
        (Ok(a), Ok(b)) => (a, b),
        // Out of fds for pipes: still serve the connection, with buffers.
        _ => return relay_copy(client, upstream, stats).await,
    };
    let last = Cell::new(Instant::now());
    // The transfers borrow the pipes; they are dropped at the end of this block, before the
    // pipes go back to the pool.
    let (ended, up_done, down_done) = {
        let up = transfer(&client, &upstream, &up_pipe, |n| {
            stats.add_bytes(n, 0);
            last.set(Instant::now());
        });
        let down = transfer(&upstream, &client, &down_pipe, |n| {
            stats.add_bytes(0, n);
            last.set(Instant::now());
        });
        let watchdog = idle_watch(&last, idle);
        tokio::pin!(up, down, watchdog);
        let (mut up_done, mut down_done) = (false, false);
        let ended = loop {
            tokio::select! {
                r = &mut up, if !up_done => match r {
                    Ok(_) => up_done = true,
                    Err(e) => break Ended::Failed(e),
                },
                r = &mut down, if !down_done => match r {
                    Ok(_) => down_done = true,
                    Err(e) => break Ended::Failed(e),
                },
                () = &mut watchdog => break Ended::Idle,
            }
            if up_done && down_done {
                break Ended::Closed;
            }
        };
        (ended, up_done, down_done)
    };
    if !matches!(ended, Ended::Closed) {
        reset_on_close(&client);
        reset_on_close(&upstream);
    }
    // Only a direction that finished cleanly left its pipe empty.
    if up_done {
        pool.give(up_pipe);
    }
    if down_done {
        pool.give(down_pipe);
    }
    ended
}

async fn idle_watch(last: &Cell<Instant>, idle: Option<Duration>) {
    let Some(idle) = idle else { return std::future::pending().await };
    loop {
        let deadline = last.get() + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    }
}

async fn relay_copy(mut client: TcpStream, mut upstream: TcpStream, stats: &BackendStats) -> Ended {
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((to_backend, from_backend)) => {
            stats.add_bytes(to_backend, from_backend);
            Ended::Closed
        }
        Err(e) => {
            reset_on_close(&client);
            reset_on_close(&upstream);
            Ended::Failed(e)
        }
    }
}
