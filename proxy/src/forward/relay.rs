//! Both directions of one proxied connection, until both have ended (or one failed, or the
//! connection sat idle too long), driven by one future in the connection's task.
//!
//! Half-close is passed through: when the client finishes sending, the backend gets a FIN and
//! may still answer; the connection ends when both directions have seen end of stream. An error
//! in either direction (a reset) resets both sides, so neither peer waits on a dead partner.
//!
//! # Adaptive copying
//!
//! Most connections through a Service proxy carry small messages (requests, responses, RPCs).
//! For those, `splice(2)` is the expensive way: socket → pipe → socket is two syscalls per
//! message plus a third to learn the socket is drained, and each splice takes pipe and page
//! references that a plain copy of a few hundred bytes does not need. So a direction starts by
//! copying through the worker's one scratch buffer: `recv` into it, `send` out of it at once —
//! two syscalls per message, and a read shorter than the buffer proves the socket drained
//! (edge-triggered readiness), so no third call. Nothing stays in the buffer between polls, so
//! every connection of the worker shares it; bytes the destination cannot take yet (its send
//! buffer is full) move to a small per-direction spill vector, freed once written.
//!
//! A read that fills the scratch buffer means the direction carries bulk: it then borrows a
//! pipe from the worker's pool and splices, zero-copy, until a fill comes back small again
//! (the bulk is over), when the pipe goes back to the pool.
//!
//! # Keeping the pipe busy
//!
//! A splicing direction does not wait for its pipe to empty before filling it again: it
//! drains while the destination takes bytes and fills while the pipe has room and the source
//! has bytes, in one loop, and waits only when neither can move. The pipe is big (see
//! [`super::splice`]), so one fill takes what the socket holds, and the relay sleeps only when
//! the backend (or client) is slower than the sender or the sender is idle.
//!
//! One subtlety: a pipe counts buffers, not bytes (one per socket fragment, however small),
//! so a fill into a pipe that holds bytes may find it full while the socket still has data.
//! Such a refusal says nothing about the socket, so it does not clear the socket's readiness
//! (edge-triggered: a cleared readiness with data waiting would never be signalled again);
//! only a fill into an empty pipe learns that the socket is drained.
//!
//! # Pausing for a hand-over
//!
//! When the worker's [`Pause`] is set, the relay stops at its next poll, before moving
//! another byte: between two reads, never inside one. What it read and has not written yet
//! is at most one spill (copying) or one pipe's content (splicing, at most
//! [`super::splice::PIPE_SIZE`]), read out of the pipe;
//! it comes back in [`Suspended`] with the two sockets and whether each direction has
//! already passed its end of stream on. Everything else is in the kernel's socket buffers,
//! which move with the sockets. A relay started from [`Resume`] writes the pending bytes
//! first, then relays as any other.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::AsRawFd;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::detach::Pause;
use super::splice::{Pipe, PipePool};
use crate::dispatch::Lease;
use crate::sockopt::{enable_keepalive, reset_on_close};

/// How bytes are moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RelayMode {
    /// Small messages copied through a per-worker buffer; a direction that carries bulk
    /// switches to `splice(2)` through a pooled pipe (zero-copy).
    Splice,
    /// Always copy through user-space buffers (for comparison, and for kernels without splice
    /// on sockets).
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
    /// Stopped for a hand-over: the connection goes on elsewhere.
    Paused(Box<Suspended>),
}

/// A connection stopped at a safe point (see "Pausing for a hand-over" above).
#[derive(Debug)]
pub struct Suspended {
    pub client: std::net::TcpStream,
    pub upstream: std::net::TcpStream,
    /// Read from the client, not yet written to the backend.
    pub to_backend: Vec<u8>,
    /// Read from the backend, not yet written to the client.
    pub to_client: Vec<u8>,
    /// The client's end of stream was passed on to the backend.
    pub client_closed: bool,
    /// The backend's end of stream was passed on to the client.
    pub backend_closed: bool,
    /// When the connection began (in whichever instance accepted it).
    pub started: Instant,
    /// Bytes relayed over the connection's whole life, each way.
    pub bytes_to_backend: u64,
    pub bytes_from_backend: u64,
}

/// Where a relay starts: a new connection (the default), or one handed over mid-way.
#[derive(Debug, Default)]
pub struct Resume {
    pub to_backend: Vec<u8>,
    pub to_client: Vec<u8>,
    pub client_closed: bool,
    pub backend_closed: bool,
    /// How long ago the connection began.
    pub age: Duration,
    /// Bytes relayed before, each way.
    pub bytes_to_backend: u64,
    pub bytes_from_backend: u64,
}

/// How the poll loop ended, before the sockets are given back or closed.
enum Outcome {
    Ended(Ended),
    Paused,
}

/// The worker's scratch buffer. A read that fills it marks the direction as bulk.
const SCRATCH: usize = 64 * 1024;
/// A splice fill into an empty pipe smaller than this ends a direction's bulk phase once the
/// pipe is drained.
const SMALL: usize = 4 * 1024;
/// Upstream keepalive is armed once a connection has lived this long. The accepted side
/// inherits keepalive from the listener for free; the upstream side would pay four setsockopt
/// calls on every connect, while a connection that ends sooner than the keepalive idle time
/// (60 s) could never have sent a probe anyway. Arming late only delays the first probe of a
/// connection silent from the start by this much.
const KEEPALIVE_AFTER: Duration = Duration::from_secs(30);

thread_local! {
    /// One per worker thread: it holds bytes only within one poll, never across an await.
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

#[cfg(test)]
thread_local! {
    /// Fills into a pipe that still held bytes (tests check the pipelined path was taken).
    static REFILLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[allow(clippy::too_many_arguments)]
pub async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    lease: &Lease,
    pool: &PipePool,
    mode: RelayMode,
    idle: Option<Duration>,
    pause: &Pause,
    resume: Resume,
) -> Ended {
    let splice = mode == RelayMode::Splice;
    let mut up = Half { spill: resume.to_backend, done: resume.client_closed, ..Half::default() };
    let mut down = Half { spill: resume.to_client, done: resume.backend_closed, ..Half::default() };
    let now = Instant::now();
    let started = now.checked_sub(resume.age).unwrap_or(now);
    let mut last = now;
    // Registered once (the task's waker stays the same); afterwards only the flag is read.
    let mut paused = pin!(pause.notified());
    let mut pause_armed = false;
    let mut totals = (resume.bytes_to_backend, resume.bytes_from_backend);
    let mut keepalive_armed = false;
    let first = idle.map_or(KEEPALIVE_AFTER, |d| d.min(KEEPALIVE_AFTER));
    let mut timer = pin!(tokio::time::sleep(first));
    let mut timer_on = true;
    // When the client's current turn began (bytes toward the backend while none were waiting
    // for an answer): the next bytes back close the turn, and its duration feeds the backend's
    // peak-EWMA estimate. Connect latency alone misses an application that accepts
    // connections but stalls on requests; the first byte back does not.
    let mut turn_started: Option<Instant> = None;

    let outcome = poll_fn(|cx| {
        if !pause_armed {
            pause_armed = true;
            let _ = paused.as_mut().poll(cx);
        }
        if pause.is_set() {
            return Poll::Ready(Outcome::Paused);
        }
        let (mut to_backend, mut from_backend) = (0u64, 0u64);
        let mut failed = None;
        if !up.done {
            match up.poll(cx, &mut client, &mut upstream, pool, splice, down.done, &mut to_backend) {
                Poll::Ready(Ok(())) => up.done = true,
                Poll::Ready(Err(e)) => failed = Some(e),
                Poll::Pending => {}
            }
        }
        if failed.is_none() && !down.done {
            match down.poll(cx, &mut upstream, &mut client, pool, splice, up.done, &mut from_backend) {
                Poll::Ready(Ok(())) => down.done = true,
                Poll::Ready(Err(e)) => failed = Some(e),
                Poll::Pending => {}
            }
        }
        if to_backend + from_backend > 0 {
            lease.add_bytes(to_backend, from_backend);
            totals = (totals.0 + to_backend, totals.1 + from_backend);
            observe_turn(lease, &mut turn_started, to_backend, from_backend);
            if idle.is_some() {
                last = Instant::now();
            }
        }
        if let Some(e) = failed {
            return Poll::Ready(Outcome::Ended(Ended::Failed(e)));
        }
        if up.done && down.done {
            return Poll::Ready(Outcome::Ended(Ended::Closed));
        }
        while timer_on && timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if !keepalive_armed && now >= started + KEEPALIVE_AFTER {
                keepalive_armed = true;
                // Best effort: a socket that refuses it still relays.
                let _ = enable_keepalive(&upstream);
            }
            let idle_at = idle.map(|d| last + d);
            if idle_at.is_some_and(|at| now >= at) {
                return Poll::Ready(Outcome::Ended(Ended::Idle));
            }
            let keepalive_at = (!keepalive_armed).then(|| started + KEEPALIVE_AFTER);
            match idle_at.into_iter().chain(keepalive_at).min() {
                Some(at) => timer.as_mut().reset(at.into()),
                None => timer_on = false,
            }
        }
        Poll::Pending
    })
    .await;

    let ended = match outcome {
        Outcome::Ended(e) => e,
        Outcome::Paused => match suspend(client, upstream, &mut up, &mut down, (started, totals)) {
            Ok(s) => {
                give_back_pipes(pool, up, down);
                return Ended::Paused(Box::new(s));
            }
            Err((e, Some((c, u)))) => {
                client = c;
                upstream = u;
                Ended::Failed(e)
            }
            Err((e, None)) => return Ended::Failed(e),
        },
    };
    if !matches!(ended, Ended::Closed) {
        reset_on_close(&client);
        reset_on_close(&upstream);
    }
    give_back_pipes(pool, up, down);
    ended
}

/// Only a pipe every byte was spliced out of may be reused; after a failure it may hold some.
fn give_back_pipes(pool: &PipePool, up: Half, down: Half) {
    for half in [up, down] {
        if let (Some(pipe), 0) = (half.pipe, half.in_pipe) {
            pool.give(pipe);
        }
    }
}

/// Gives back the sockets (off the reactor) with the bytes in flight (see [`Suspended`]).
/// The bytes are taken out first: when that fails, nothing is consumed and the relay fails.
fn suspend(
    client: TcpStream,
    upstream: TcpStream,
    up: &mut Half,
    down: &mut Half,
    (started, (bytes_to_backend, bytes_from_backend)): (Instant, (u64, u64)),
) -> Result<Suspended, (io::Error, Option<(TcpStream, TcpStream)>)> {
    let pending = up.take_pending().and_then(|a| Ok((a, down.take_pending()?)));
    let (to_backend, to_client) = match pending {
        Ok(p) => p,
        Err(e) => return Err((e, Some((client, upstream)))),
    };
    // `into_std` fails only when the runtime is shutting down, with the sockets lost anyway.
    let gone = |e: io::Error| io::Error::new(e.kind(), format!("taking a socket off the reactor: {e}"));
    let client = client.into_std();
    let upstream = upstream.into_std();
    match (client, upstream) {
        (Ok(client), Ok(upstream)) => {
            Ok(Suspended {
            client,
            upstream,
            to_backend,
            to_client,
            client_closed: up.done,
            backend_closed: down.done,
            started,
            bytes_to_backend,
            bytes_from_backend,
        })
        }
        (Err(e), _) | (_, Err(e)) => Err((gone(e), None)),
    }
}

/// Request/response turn accounting for the latency estimate (see `turn_started` in `relay`).
fn observe_turn(lease: &Lease, turn_started: &mut Option<Instant>, to_backend: u64, from_backend: u64) {
    if from_backend > 0
        && let Some(began) = turn_started.take()
    {
        lease.turn_took(began.elapsed());
    }
    if to_backend > 0 && from_backend == 0 && turn_started.is_none() {
        *turn_started = Some(Instant::now());
    }
}

/// One direction: from one socket to the other.
#[derive(Default)]
struct Half {
    /// Bytes read but not yet accepted by the destination (copy mode; empty almost always).
    spill: Vec<u8>,
    /// How much of `spill` was written.
    spill_sent: usize,
    /// Set while the direction splices: it carries bulk.
    pipe: Option<Pipe>,
    /// Bytes in the pipe not yet spliced out.
    in_pipe: usize,
    /// The last fill of the pipe was small (the source had little): bulk is over once the
    /// pipe is drained.
    small_fill: bool,
    /// The source's end of stream was read while the pipe still held bytes: passed on once
    /// they are out.
    source_ended: bool,
    /// A read filled the scratch buffer: splice next.
    bulk: bool,
    done: bool,
}

/// What a mode's poll ended with, other than waiting.
enum Step {
    /// End of stream from the source (already passed on).
    Eof,
    /// Switch between copying and splicing.
    Switch,
}

impl Half {
    /// The bytes read and not yet written: the unwritten spill, or what sits in the pipe
    /// (read out of it, which leaves the pipe empty for the pool).
    fn take_pending(&mut self) -> io::Result<Vec<u8>> {
        let mut out = self.spill.split_off(self.spill_sent.min(self.spill.len()));
        self.spill = Vec::new();
        self.spill_sent = 0;
        if let Some(pipe) = &self.pipe
            && self.in_pipe > 0
        {
            out.extend_from_slice(&pipe.read_out(self.in_pipe)?);
            self.in_pipe = 0;
        }
        Ok(out)
    }

    /// Moves bytes until the source has nothing more or the destination is full; `Ready(Ok)`
    /// once the source's end of stream was passed on. `other_done`: the opposite direction has
    /// ended, so the connection closes right after this one and the FIN goes with the close.
    #[allow(clippy::too_many_arguments)]
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut TcpStream,
        to: &mut TcpStream,
        pool: &PipePool,
        splice: bool,
        other_done: bool,
        moved: &mut u64,
    ) -> Poll<io::Result<()>> {
        loop {
            let step = if self.pipe.is_some() {
                ready!(self.poll_splice(cx, from, to, moved))?
            } else {
                ready!(self.poll_copy(cx, from, to, splice, moved))?
            };
            match step {
                Step::Switch => match self.pipe.take() {
                    // Bulk is over: the pipe is empty, back to the pool.
                    Some(pipe) => pool.give(pipe),
                    None => {
                        self.bulk = false;
                        // Out of fds for a pipe: keep copying.
                        if let Ok(pipe) = pool.take() {
                            self.pipe = Some(pipe);
                            self.small_fill = false;
                            self.source_ended = false;
                        }
                    }
                },
                Step::Eof => {
                    if !other_done {
                        // The peer may already be gone; that is its news to deliver through
                        // the other direction, not an error of this one.
                        let _ = socket2::SockRef::from(&*to).shutdown(std::net::Shutdown::Write);
                    }
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut TcpStream,
        to: &mut TcpStream,
        splice: bool,
        moved: &mut u64,
    ) -> Poll<io::Result<Step>> {
        loop {
            while self.spill_sent < self.spill.len() {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.spill[self.spill_sent..]))?;
                if n == 0 {
                    return Poll::Ready(Err(write_zero()));
                }
                self.spill_sent += n;
            }
            if !self.spill.is_empty() {
                // Freed, not kept: a connection that was once slow holds no memory for life.
                self.spill = Vec::new();
                self.spill_sent = 0;
            }
            if self.bulk && splice {
                return Poll::Ready(Ok(Step::Switch));
            }
            let spill = &mut self.spill;
            let read = SCRATCH_BUF.with_borrow_mut(|buf| -> Poll<io::Result<usize>> {
                let n = {
                    let mut rb = ReadBuf::new(buf);
                    ready!(Pin::new(&mut *from).poll_read(cx, &mut rb))?;
                    rb.filled().len()
                };
                let mut off = 0;
                while off < n {
                    match Pin::new(&mut *to).poll_write(cx, &buf[off..n]) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Err(write_zero())),
                        Poll::Ready(Ok(m)) => off += m,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        // The destination is full (its writability is now awaited): keep the
                        // rest until it drains.
                        Poll::Pending => {
                            spill.extend_from_slice(&buf[off..n]);
                            break;
                        }
                    }
                }
                Poll::Ready(Ok(n))
            });
            match ready!(read)? {
                0 => return Poll::Ready(Ok(Step::Eof)),
                n => {
                    *moved += n as u64;
                    self.bulk = n == SCRATCH;
                }
            }
        }
    }

    /// Drains and fills the pipe in one loop (see "Keeping the pipe busy" above) until neither
    /// can move; `Switch` once the pipe is empty after a small fill, `Eof` once it is empty
    /// after the source ended.
    fn poll_splice(&mut self, cx: &mut Context<'_>, from: &mut TcpStream, to: &mut TcpStream, moved: &mut u64) -> Poll<io::Result<Step>> {
        let Some(pipe) = &self.pipe else { return Poll::Ready(Ok(Step::Switch)) };
        let capacity = pipe.capacity();
        loop {
            // Each side either moves bytes or ends up waiting with the task's waker
            // registered (a `Pending` readiness) or has nothing to do; the task sleeps only
            // when both wait, so it is always woken by whichever can move first.
            let mut drain_waits = self.in_pipe == 0;
            if self.in_pipe > 0 {
                match to.poll_write_ready(cx) {
                    Poll::Pending => drain_waits = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => match to.try_io(Interest::WRITABLE, || pipe.drain(to.as_raw_fd(), self.in_pipe)) {
                        Ok(0) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::WriteZero, "splice wrote nothing"))),
                        Ok(m) => self.in_pipe -= m.min(self.in_pipe),
                        // The send buffer is full; readiness was cleared, the next poll registers.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(e)),
                    },
                }
            }
            if self.in_pipe == 0 {
                if self.source_ended {
                    return Poll::Ready(Ok(Step::Eof));
                }
                if self.small_fill {
                    return Poll::Ready(Ok(Step::Switch));
                }
            }
            let mut fill_waits = self.source_ended || self.in_pipe >= capacity;
            if !fill_waits {
                match from.poll_read_ready(cx) {
                    Poll::Pending => fill_waits = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let room = capacity - self.in_pipe;
                        let filled = if self.in_pipe == 0 {
                            // An empty pipe has room: WouldBlock means the socket is drained.
                            from.try_io(Interest::READABLE, || pipe.fill(from.as_raw_fd(), room))
                        } else {
                            // WouldBlock may mean a pipe full of small buffers: readiness kept.
                            pipe.fill(from.as_raw_fd(), room)
                        };
                        match filled {
                            Ok(0) => self.source_ended = true,
                            Ok(n) => {
                                // Only a fill into an empty pipe had every buffer free: a short
                                // one then means the socket had little. Into a fuller pipe it
                                // may only mean the buffers ran out.
                                if self.in_pipe == 0 {
                                    self.small_fill = n < SMALL;
                                } else if n >= SMALL {
                                    self.small_fill = false;
                                }
                                #[cfg(test)]
                                if self.in_pipe > 0 {
                                    REFILLS.with(|r| r.set(r.get() + 1));
                                }
                                self.in_pipe += n;
                                *moved += n as u64;
                            }
                            // Readiness cleared: the next poll registers the waker.
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.in_pipe == 0 => continue,
                            // The pipe is full: the drain (waiting or not) makes room.
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => fill_waits = true,
                            Err(e) => return Poll::Ready(Err(e)),
                        }
                    }
                }
            }
            if drain_waits && fill_waits {
                return Poll::Pending;
            }
        }
    }
}

fn write_zero() -> io::Error {
    io::Error::new(io::ErrorKind::WriteZero, "the destination accepted no bytes")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A client socket, the proxy's two sockets and a backend socket, all on loopback.
    async fn pairs() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(front.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = front.accept().await.unwrap();
        let upstream = TcpStream::connect(back.local_addr().unwrap()).await.unwrap();
        let (backend, _) = back.accept().await.unwrap();
        (client, accepted, upstream, backend)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    async fn relay_both(mode: RelayMode) {
        let (mut client, accepted, upstream, mut backend) = pairs().await;
        let (lease, _stats) = Lease::detached();
        let pool = PipePool::new(4, crate::slots::SlotPool::new(8));
        let pause = Pause::default();
        let proxy = relay(accepted, upstream, &lease, &pool, mode, Some(Duration::from_secs(30)), &pause, Resume::default());
        let request = pattern(3 << 20, 1);
        let response = pattern(2 << 20, 7);
        let peers = async {
            // Small messages first (copied), then bulk each way (spliced), with half-close.
            for i in 0..50u8 {
                client.write_all(&[i; 100]).await.unwrap();
                let mut b = [0u8; 100];
                backend.read_exact(&mut b).await.unwrap();
                assert_eq!(b, [i; 100]);
                backend.write_all(&[i; 200]).await.unwrap();
                let mut b = [0u8; 200];
                client.read_exact(&mut b).await.unwrap();
                assert_eq!(b, [i; 200]);
            }
            let (sent, got) = tokio::join!(
                async {
                    client.write_all(&request).await.unwrap();
                    client.shutdown().await.unwrap();
                    let mut got = Vec::new();
                    client.read_to_end(&mut got).await.unwrap();
                    got
                },
                async {
                    let mut got = Vec::new();
                    backend.read_to_end(&mut got).await.unwrap();
                    backend.write_all(&response).await.unwrap();
                    backend.shutdown().await.unwrap();
                    got
                }
            );
            assert!(got == request, "backend got the request intact");
            assert!(sent == response, "client got the response intact");
        };
        let (ended, ()) = tokio::join!(proxy, peers);
        assert!(matches!(ended, Ended::Closed), "{ended:?}");
        // Bulk went through pipes (both back in the pool), small messages did not need one.
        assert_eq!(pool.idle(), if mode == RelayMode::Splice { 2 } else { 0 });
        let snap = (lease.metrics().bytes_to_backend(), lease.metrics().bytes_from_backend());
        assert_eq!(snap, (50 * 100 + (3 << 20), 50 * 200 + (2 << 20)));
    }

    #[tokio::test]
    async fn adaptive_relay_moves_small_and_bulk_intact_with_half_close() {
        relay_both(RelayMode::Splice).await;
    }

    #[tokio::test]
    async fn copy_relay_moves_small_and_bulk_intact_with_half_close() {
        relay_both(RelayMode::Copy).await;
    }

    /// A relay paused while the backend is not reading holds bytes in flight (the pipe when
    /// splicing, the spill when copying); a relay resumed from what it gave back delivers the
    /// whole transfer byte-exact, half-close included.
    async fn pause_mid_transfer_and_resume(mode: RelayMode) {
        let (mut client, accepted, upstream, mut backend) = pairs().await;
        let (lease, _stats) = Lease::detached();
        let pool = PipePool::new(4, crate::slots::SlotPool::new(8));
        // Big enough to fill the backend's socket buffers and the pipe behind them.
        let data = pattern(32 << 20, 5);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let pause = Pause::default();
        let mut got = vec![0u8; 1 << 20];
        let (ended, ()) = tokio::join!(relay(accepted, upstream, &lease, &pool, mode, None, &pause, Resume::default()), async {
            backend.read_exact(&mut got).await.unwrap();
            // Stop reading: the relay fills the backend's buffers and holds the next chunk.
            tokio::time::sleep(Duration::from_millis(100)).await;
            pause.set(true);
        });
        let Ended::Paused(s) = ended else { panic!("not paused: {ended:?}") };
        assert!(!s.to_backend.is_empty(), "a relay blocked on a full destination holds bytes in flight");
        assert!(s.to_backend.len() <= crate::handover::MAX_PENDING as usize);
        if mode == RelayMode::Splice {
            // A grown pipe's content, more than a default pipe (64 KiB) could hold.
            assert!(s.to_backend.len() > 64 * 1024, "{} bytes in the pipe", s.to_backend.len());
        }
        assert!(!s.client_closed && !s.backend_closed);
        pause.set(false);
        let (c, u) = (TcpStream::from_std(s.client).unwrap(), TcpStream::from_std(s.upstream).unwrap());
        let resume = Resume { to_backend: s.to_backend, to_client: s.to_client, bytes_to_backend: s.bytes_to_backend, ..Resume::default() };
        let (ended, rest) = tokio::join!(relay(c, u, &lease, &pool, mode, None, &pause, resume), async {
            let mut rest = Vec::new();
            backend.read_to_end(&mut rest).await.unwrap();
            backend.shutdown().await.unwrap();
            rest
        });
        let mut client = writer.await.unwrap();
        let mut tail = Vec::new();
        client.read_to_end(&mut tail).await.unwrap();
        assert!(matches!(ended, Ended::Closed), "{ended:?}");
        got.extend_from_slice(&rest);
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the transfer crossed the pause byte-exact");
    }

    #[tokio::test]
    async fn a_splicing_relay_paused_mid_transfer_resumes_byte_exact() {
        pause_mid_transfer_and_resume(RelayMode::Splice).await;
    }

    #[tokio::test]
    async fn a_copying_relay_paused_mid_transfer_resumes_byte_exact() {
        pause_mid_transfer_and_resume(RelayMode::Copy).await;
    }

    /// A backend reading slowly, in small pieces, drains the pipe a little at a time: the
    /// relay fills the pipe again while it still holds bytes, and every byte arrives in order.
    #[tokio::test]
    async fn a_pipe_refilled_before_it_drained_keeps_the_bytes_in_order() {
        let (mut client, accepted, upstream, mut backend) = pairs().await;
        let (lease, _stats) = Lease::detached();
        let pool = PipePool::new(4, crate::slots::SlotPool::new(8));
        let pause = Pause::default();
        let data = pattern(16 << 20, 9);
        let sent = data.clone();
        let before = REFILLS.with(|r| r.get());
        let proxy = relay(accepted, upstream, &lease, &pool, RelayMode::Splice, None, &pause, Resume::default());
        let peers = async {
            let ((), got) = tokio::join!(
                async {
                    client.write_all(&sent).await.unwrap();
                    client.shutdown().await.unwrap();
                },
                async {
                    let mut got = Vec::with_capacity(sent.len());
                    let mut piece = vec![0u8; 16 * 1024];
                    loop {
                        let n = backend.read(&mut piece).await.unwrap();
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&piece[..n]);
                        // Let the relay run between two small reads.
                        tokio::task::yield_now().await;
                    }
                    backend.shutdown().await.unwrap();
                    got
                }
            );
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            got
        };
        let (ended, got) = tokio::join!(proxy, peers);
        assert!(matches!(ended, Ended::Closed), "{ended:?}");
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the backend got the stream intact");
        let refills = REFILLS.with(|r| r.get()) - before;
        assert!(refills > 0, "the pipe was never filled while holding bytes");
    }

    #[tokio::test]
    async fn idle_connection_is_reset() {
        let (_client, accepted, upstream, _backend) = pairs().await;
        let (lease, _stats) = Lease::detached();
        let pool = PipePool::new(4, crate::slots::SlotPool::new(8));
        let pause = Pause::default();
        let ended = relay(accepted, upstream, &lease, &pool, RelayMode::Splice, Some(Duration::from_millis(100)), &pause, Resume::default()).await;
        assert!(matches!(ended, Ended::Idle), "{ended:?}");
    }

    #[test]
    fn a_request_response_turn_feeds_the_latency_estimate() {
        let (lease, stats) = Lease::detached();
        let mut turn = None;
        observe_turn(&lease, &mut turn, 100, 0);
        assert!(turn.is_some(), "bytes toward the backend open a turn");
        std::thread::sleep(Duration::from_millis(30));
        // More request bytes do not restart the turn.
        observe_turn(&lease, &mut turn, 50, 0);
        observe_turn(&lease, &mut turn, 0, 200);
        assert!(turn.is_none());
        assert!(stats.ewma_ns() >= 30e6, "the stall shows in the estimate: {}", stats.ewma_ns());
        // Bytes back with no turn open (server push) are no sample.
        let before = stats.ewma_ns();
        observe_turn(&lease, &mut turn, 0, 10);
        assert_eq!(stats.ewma_ns(), before);
    }
}
