//! Persistent connections written by the pacer thread itself: a due request goes on the wire
//! from the thread that woke for it, with no hand-off to the runtime on the way (the hop that
//! set the generator's error at high rates: a runtime worker had to be woken, and on a busy
//! machine that wake-up waits for a time slice).
//!
//! Each connection has a task that owns its reading half. A request is written by the pacer
//! when a connection is idle; otherwise it queues, and the connection that frees up first
//! writes it from its task (the wait counts: latency is measured from the due time). Replies
//! carry the kernel's receive timestamp, so the time a reply waits for the task to run is the
//! generator's, not the target's: it is taken out of the latency, and what remains of the
//! generator's error in a latency is how late the request was written — by the pacer, after
//! its due time; by a connection's task, after the reply that freed the connection arrived.
//!
//! Which connections are idle is a flag per connection, claimed with a compare-and-swap, not
//! a locked list: the pacer (real-time priority) never waits for a lock a normal-priority task
//! may hold while preempted.

use std::collections::VecDeque;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::http::ResponseReader;
use super::tcp::{connect, generator_error, read_response};
use super::{Protocol, nanos, stamp};
use crate::pacer::Job;
use crate::record::{Failure, Recorder};
use crate::wire;

/// Pause before reconnecting a connection whose connect failed.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

#[derive(Debug)]
pub struct DirectPool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    conns: Vec<Conn>,
    /// Due requests no connection was free for, oldest first. Touched only when every
    /// connection is busy (past the target's knee), so its lock is off the pacer's usual path.
    overflow: Mutex<VecDeque<Job>>,
    /// `overflow.len()`, readable without the lock: with the connections' `IDLE` flags it is
    /// the hand-shake that lets neither a queued job nor an idle connection be overlooked.
    queued: AtomicUsize,
    /// Where the pacer's search for an idle connection starts: the one after the last it took,
    /// so the requests go round the connections.
    cursor: AtomicUsize,
    timeout: Duration,
    rec: Arc<Recorder>,
    protocol: Protocol,
    target: SocketAddr,
    /// The first unreadable reply is described on stderr (the rest are only counted): a
    /// target that speaks something else should say what, once.
    told_protocol_error: AtomicBool,
}

/// Backend index recorded for HTTP replies: they do not say which backend served them, so
/// they count in the totals and in no backend's share (the recorder ignores indices this large).
const NO_BACKEND: u32 = u32::MAX;

/// [`Conn::state`]: connected with nothing in flight, free for whoever claims it first.
const IDLE: u8 = 1;
/// [`Conn::state`]: connecting, or owned by whoever claimed it (a request is going out or in
/// flight).
const BUSY: u8 = 0;

/// A request on the wire: the job and how late it went out after it could have (its due time,
/// or for a queued job the moment a connection freed up if that was later).
#[derive(Clone, Copy, Debug)]
struct InFlight {
    job: Job,
    send_lag: Duration,
    /// Set when the write itself failed: nothing will answer.
    failed: Option<Failure>,
}

#[derive(Debug, Default)]
struct Conn {
    /// A second descriptor of the connected socket, for writes from the pacer thread; `None`
    /// while (re)connecting.
    writer: Mutex<Option<std::net::TcpStream>>,
    in_flight: Mutex<Option<InFlight>>,
    /// Tells the task a request is in flight.
    sent: Notify,
    /// [`IDLE`] or [`BUSY`]. The idle set is these flags rather than a locked list: the pacer
    /// runs at real-time priority, and a lock shared with the normal-priority connection tasks
    /// made it wait whenever one of them was preempted holding it.
    state: AtomicU8,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data whole; a panic elsewhere must not stop the load.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DirectPool {
    /// Starts `connections` connection tasks on `rt`; each joins the idle list once connected.
    pub fn start(
        rt: &tokio::runtime::Handle,
        addr: SocketAddr,
        connections: usize,
        timeout: Duration,
        protocol: Protocol,
        rec: Arc<Recorder>,
    ) -> DirectPool {
        let shared = Arc::new(Shared {
            conns: (0..connections.max(1)).map(|_| Conn::default()).collect(),
            overflow: Mutex::new(VecDeque::new()),
            queued: AtomicUsize::new(0),
            cursor: AtomicUsize::new(0),
            timeout,
            rec,
            protocol,
            target: addr,
            told_protocol_error: AtomicBool::new(false),
        });
        for k in 0..shared.conns.len() {
            rt.spawn(conn_task(Arc::clone(&shared), k, addr));
        }
        DirectPool { shared }
    }

    /// Connections connected and idle (to wait for the pool before the time line starts).
    pub fn idle(&self) -> usize {
        self.shared.conns.iter().filter(|c| c.state.load(Ordering::SeqCst) == IDLE).count()
    }

    /// Puts `job` on the wire now if a connection is idle, else queues it.
    pub fn submit(&self, job: Job) {
        let shared = &self.shared;
        // Jobs already waiting go first: this one joins them.
        if shared.queued.load(Ordering::SeqCst) == 0
            && let Some(k) = shared.claim_idle()
        {
            shared.send(k, job, Instant::now().saturating_duration_since(job.due));
            return;
        }
        {
            let mut q = lock(&shared.overflow);
            q.push_back(job);
            shared.queued.fetch_add(1, Ordering::SeqCst);
        }
        // A connection may have gone idle after the search above but before `queued` rose:
        // it saw no queued job, so the job must find it.
        shared.drain(job.due);
    }
}

impl Shared {
    /// Writes the request on connection `k` (idle, so nothing else is in flight on it) and
    /// hands it to the connection's task.
    fn send(&self, k: usize, job: Job, send_lag: Duration) {
        let Some(conn) = self.conns.get(k) else { return };
        let frame;
        let request: &[u8] = match &self.protocol {
            Protocol::Frames => {
                frame = wire::request(job.id);
                &frame
            }
            Protocol::Http(req) => req.bytes(),
        };
        let written = match lock(&conn.writer).as_ref() {
            // A short request on a connection with nothing else in flight: the socket buffer
            // has room, so the non-blocking write completes; anything else is a broken
            // connection.
            Some(w) => (&*w).write(request).and_then(|n| {
                if n == request.len() { Ok(()) } else { Err(io::ErrorKind::WriteZero.into()) }
            }),
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        let failed = written.err().map(|e| Failure::from_io(&e));
        *lock(&conn.in_flight) = Some(InFlight { job, send_lag, failed });
        conn.sent.notify_one();
    }

    /// Takes an idle connection for the caller, searching from the cursor on.
    fn claim_idle(&self) -> Option<usize> {
        let n = self.conns.len();
        let from = self.cursor.load(Ordering::Relaxed);
        for i in 0..n {
            let k = (from + i) % n;
            let claimed = self.conns.get(k).is_some_and(|c| {
                c.state.compare_exchange(IDLE, BUSY, Ordering::SeqCst, Ordering::Relaxed).is_ok()
            });
            if claimed {
                self.cursor.store(k + 1, Ordering::Relaxed);
                return Some(k);
            }
        }
        None
    }

    /// Connection `k` is free since `since` (for a reply: when the kernel received it): it
    /// goes idle, and queued requests take idle connections.
    fn freed(&self, k: usize, since: Instant) {
        if let Some(c) = self.conns.get(k) {
            c.state.store(IDLE, Ordering::SeqCst);
        }
        self.drain(since);
    }

    /// Sends queued requests on idle connections while there are both. Whoever makes the
    /// second of the two exist (a job queued, a connection idle) runs this after publishing
    /// its own change, so one of the two sides always sees the other.
    ///
    /// A queued job could have gone out at `ready` (when the connection freed up) or at its
    /// due time, whichever is later: the wait before that is the target's (every connection
    /// was busy), the time after it until the write is the generator's own error.
    fn drain(&self, ready: Instant) {
        while self.queued.load(Ordering::SeqCst) > 0 {
            let Some(k) = self.claim_idle() else { return };
            let job = {
                let mut q = lock(&self.overflow);
                let job = q.pop_front();
                if job.is_some() {
                    self.queued.fetch_sub(1, Ordering::SeqCst);
                }
                job
            };
            match job {
                Some(job) => self.send(k, job, Instant::now().saturating_duration_since(ready.max(job.due))),
                // Someone else took it: give the connection back and look again (a job queued
                // meanwhile may have missed it while it was claimed here).
                None => {
                    if let Some(c) = self.conns.get(k) {
                        c.state.store(IDLE, Ordering::SeqCst);
                    }
                }
            }
        }
    }
}

/// Connects (retrying until the runtime shuts down), then serves requests until the
/// connection breaks, then starts over.
async fn conn_task(shared: Arc<Shared>, k: usize, addr: SocketAddr) {
    let Some(conn) = shared.conns.get(k) else { return };
    loop {
        let stream = match connect(addr).await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        let writer = socket2::SockRef::from(&stream).try_clone().map(std::net::TcpStream::from);
        let Ok(writer) = writer else { continue };
        *lock(&conn.writer) = Some(writer);
        shared.freed(k, Instant::now());
        serve(&shared, conn, k, &stream).await;
        *lock(&conn.writer) = None;
    }
}

/// What one reply said: the backend that served it (frames only), how long it waited in the
/// socket, and whether the connection can carry the next request.
struct Reply {
    backend: u32,
    lag: Option<Duration>,
    keep_alive: bool,
    /// HTTP: a whole response with a non-2xx status.
    refused: bool,
}

/// Reads the reply to each request written on this connection; returns when it broke (or
/// the server asked to close it).
async fn serve(shared: &Shared, conn: &Conn, k: usize, stream: &TcpStream) {
    let mut http = match &shared.protocol {
        Protocol::Frames => None,
        Protocol::Http(_) => Some((ResponseReader::default(), vec![0u8; 16 * 1024])),
    };
    loop {
        conn.sent.notified().await;
        let Some(req) = lock(&conn.in_flight).take() else { continue };
        let job = req.job;
        if let Some(why) = req.failed {
            shared.rec.failed(job.measured, why);
            return;
        }
        let deadline = tokio::time::Instant::from_std(job.due + shared.timeout);
        let reply = async {
            match http.as_mut() {
                None => read_response(stream, job.id).await.map(|(backend, lag)| Reply {
                    backend,
                    lag,
                    keep_alive: true,
                    refused: false,
                }),
                Some((reader, buf)) => read_http(shared, stream, reader, buf).await,
            }
        };
        let outcome = tokio::time::timeout_at(deadline, reply).await;
        let now = Instant::now();
        match outcome {
            Ok(Ok(reply)) => {
                if reply.refused {
                    shared.rec.failed(job.measured, Failure::HttpStatus);
                } else {
                    // The reply arrived `lag` before this read: that wait is the generator's.
                    let latency = now.saturating_duration_since(job.due).saturating_sub(reply.lag.unwrap_or_default());
                    shared.rec.ok(&job, reply.backend, nanos(latency), generator_error(req.send_lag, reply.lag, true));
                }
                if !reply.keep_alive {
                    return;
                }
                shared.freed(k, now.checked_sub(reply.lag.unwrap_or_default()).unwrap_or(now));
            }
            Ok(Err(why)) => {
                shared.rec.failed(job.measured, why);
                return;
            }
            Err(_) => {
                shared.rec.failed(job.measured, Failure::Timeout);
                return;
            }
        }
    }
}

/// Reads one whole HTTP response; the wait measured is that of its last bytes (the response
/// is complete only when they arrive).
async fn read_http(shared: &Shared, stream: &TcpStream, reader: &mut ResponseReader, buf: &mut [u8]) -> Result<Reply, Failure> {
    loop {
        let (n, at) = stamp::read_some(stream, buf).await.map_err(|e| Failure::from_io(&e))?;
        let piece = buf.get(..n).unwrap_or_default();
        match reader.feed(piece) {
            Ok(None) => continue,
            Ok(Some(r)) => {
                return Ok(Reply {
                    backend: NO_BACKEND,
                    lag: stamp::waited_since(at),
                    keep_alive: r.keep_alive,
                    refused: !r.is_success(),
                });
            }
            Err(e) => {
                if !shared.told_protocol_error.swap(true, Ordering::Relaxed) {
                    eprintln!("tpvs-loadtest: unreadable reply from {}: {e} (counted as protocol failures)", shared.target);
                }
                return Err(Failure::Protocol);
            }
        }
    }
}

