//! TCP request/response: one new connection per request, or a pool of persistent connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

use super::{nanos, stamp};
use crate::pacer::Job;
use crate::record::{Failure, Recorder};
use crate::wire;

/// A connected socket set up as every generator connection is: no Nagle delay, kernel receive
/// timestamps on (without them only the receive lag goes unmeasured).
pub(crate) async fn connect(addr: SocketAddr) -> Result<TcpStream, Failure> {
    let stream = TcpStream::connect(addr).await.map_err(|e| Failure::from_io(&e))?;
    let _ = stream.set_nodelay(true);
    let _ = stamp::enable(&stream);
    Ok(stream)
}

/// Reads the response to request `id`: the backend that served it and how long the reply
/// waited in the socket before this read.
pub(crate) async fn read_response(stream: &TcpStream, id: u64) -> Result<(u32, Option<Duration>), Failure> {
    let mut buf = [0u8; wire::FRAME];
    let lag = stamp::read_exact(stream, &mut buf).await.map_err(|e| Failure::from_io(&e))?;
    match wire::parse_response(&buf) {
        Ok((backend, got)) if got == id => Ok((backend, lag)),
        _ => Err(Failure::Protocol),
    }
}

/// One request on one exchange of frames; the backend and the reply's wait in the socket.
async fn exchange(stream: &mut TcpStream, id: u64) -> Result<(u32, Option<Duration>), Failure> {
    stream.write_all(&wire::request(id)).await.map_err(|e| Failure::from_io(&e))?;
    read_response(stream, id).await
}

/// The generator's error left in a recorded latency: `send_lag` (due time to the moment the
/// generator started the request) plus the reply's wait in the socket before it was read,
/// when the kernel reported it — unless the latency was already `corrected` for that wait
/// (then only the send lag remains).
pub(crate) fn generator_error(send_lag: Duration, recv_lag: Option<Duration>, corrected: bool) -> Option<u64> {
    recv_lag.map(|r| nanos(if corrected { send_lag } else { send_lag + r }))
}

/// Connect, one request, close: through a proxy, every request is a scheduling decision.
pub async fn one_shot(addr: SocketAddr, job: Job, timeout: Duration, rec: Arc<Recorder>) {
    // The task's start is when the generator begins the request (the connect is the target's).
    let send_lag = Instant::now().saturating_duration_since(job.due);
    let deadline = tokio::time::Instant::from_std(job.due + timeout);
    let outcome = tokio::time::timeout_at(deadline, async {
        let mut stream = connect(addr).await?;
        exchange(&mut stream, job.id).await
    })
    .await;
    let now = Instant::now();
    match outcome {
        Ok(Ok((backend, lag))) => {
            rec.ok(&job, backend, nanos(now.saturating_duration_since(job.due)), generator_error(send_lag, lag, false))
        }
        Ok(Err(why)) => rec.failed(job.measured, why),
        Err(_) => rec.failed(job.measured, Failure::Timeout),
    }
}

/// A pool of persistent connections fed from one queue: a request waits for the first free
/// connection, and the wait is part of its latency (it is measured from the due time).
#[derive(Debug)]
pub struct Pool {
    tx: mpsc::UnboundedSender<Job>,
}

impl Pool {
    pub fn start(rt: &tokio::runtime::Handle, addr: SocketAddr, connections: usize, timeout: Duration, rec: Arc<Recorder>) -> Pool {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..connections.max(1) {
            rt.spawn(conn_loop(addr, Arc::clone(&rx), timeout, Arc::clone(&rec)));
        }
        Pool { tx }
    }

    pub fn submit(&self, job: Job) {
        // The receivers live as long as any connection task; they only end after `self` drops.
        let _ = self.tx.send(job);
    }
}

async fn conn_loop(addr: SocketAddr, rx: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>, timeout: Duration, rec: Arc<Recorder>) {
    let mut conn: Option<TcpStream> = None;
    loop {
        // The tokio mutex is fair: idle connections take jobs in the order they became idle.
        let job = { rx.lock().await.recv().await };
        let Some(job) = job else { return };
        let send_lag = Instant::now().saturating_duration_since(job.due);
        let deadline = tokio::time::Instant::from_std(job.due + timeout);
        let outcome = tokio::time::timeout_at(deadline, async {
            if conn.is_none() {
                conn = Some(connect(addr).await?);
            }
            match conn.as_mut() {
                Some(s) => exchange(s, job.id).await,
                None => Err(Failure::Other),
            }
        })
        .await;
        let now = Instant::now();
        match outcome {
            Ok(Ok((backend, lag))) => {
                rec.ok(&job, backend, nanos(now.saturating_duration_since(job.due)), generator_error(send_lag, lag, false))
            }
            Ok(Err(why)) => {
                // The connection is in an unknown state (a frame may be half read): start over.
                conn = None;
                rec.failed(job.measured, why);
            }
            Err(_) => {
                conn = None;
                rec.failed(job.measured, Failure::Timeout);
            }
        }
    }
}
