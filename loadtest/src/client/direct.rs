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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::nanos;
use super::tcp::{connect, generator_error, read_response};
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
}

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
    pub fn start(rt: &tokio::runtime::Handle, addr: SocketAddr, connections: usize, timeout: Duration, rec: Arc<Recorder>) -> DirectPool {
        let shared = Arc::new(Shared {
            conns: (0..connections.max(1)).map(|_| Conn::default()).collect(),
            state: Mutex::new(PoolState::default()),
            timeout,
            rec,
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
        let written = match lock(&conn.writer).as_ref() {
            // 16 bytes on a connection with nothing else in flight: the socket buffer has room,
            // so the non-blocking write completes; anything else is a broken connection.
            Some(w) => (&*w).write(&wire::request(job.id)).and_then(|n| {
                if n == wire::FRAME { Ok(()) } else { Err(io::ErrorKind::WriteZero.into()) }
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

/// Reads the reply to each request written on this connection; returns when it broke.
async fn serve(shared: &Shared, conn: &Conn, k: usize, stream: &TcpStream) {
    loop {
        conn.sent.notified().await;
        let Some(req) = lock(&conn.in_flight).take() else { continue };
        let job = req.job;
        if let Some(why) = req.failed {
            shared.rec.failed(job.measured, why);
            return;
        }
        let deadline = tokio::time::Instant::from_std(job.due + shared.timeout);
        let outcome = tokio::time::timeout_at(deadline, read_response(stream, job.id)).await;
        let now = Instant::now();
        match outcome {
            Ok(Ok((backend, lag))) => {
                // The reply arrived `lag` before this read: that wait is the generator's.
                let latency = now.saturating_duration_since(job.due).saturating_sub(lag.unwrap_or_default());
                shared.rec.ok(&job, backend, nanos(latency), generator_error(req.send_lag, lag, true));
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
