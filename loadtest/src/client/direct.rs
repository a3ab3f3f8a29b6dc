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
//! generator's error in a latency is how late the pacer wrote the request.

use std::collections::VecDeque;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
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
    state: Mutex<PoolState>,
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

#[derive(Debug, Default)]
struct PoolState {
    /// Connected connections with nothing in flight, in the order they became idle.
    idle: VecDeque<usize>,
    /// Due requests no connection was free for.
    queue: VecDeque<Job>,
}

/// A request on the wire: the job and how late it went out after its due time (zero for a
/// queued job, written as soon as a connection freed up).
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
            state: Mutex::new(PoolState::default()),
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
        lock(&self.shared.state).idle.len()
    }

    /// Puts `job` on the wire now if a connection is idle, else queues it.
    pub fn submit(&self, job: Job) {
        let k = {
            let mut st = lock(&self.shared.state);
            match st.idle.pop_front() {
                Some(k) => k,
                None => return st.queue.push_back(job),
            }
        };
        let send_lag = Instant::now().saturating_duration_since(job.due);
        self.shared.send(k, job, send_lag);
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

    /// Connection `k` is free: it takes the oldest queued request, or goes idle.
    fn freed(&self, k: usize) {
        let next = {
            let mut st = lock(&self.state);
            match st.queue.pop_front() {
                Some(job) => job,
                None => return st.idle.push_back(k),
            }
        };
        self.send(k, next, Duration::ZERO);
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
        shared.freed(k);
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
                shared.freed(k);
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
