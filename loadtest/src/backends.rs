//! Latency-profiled backends: TCP and UDP servers that answer each request after the service
//! time their [`BackendProfile`] gives it.
//!
//! A [`Farm`] runs its backends on a runtime of its own, so stopping a run tears down every
//! socket and timer at once (dropping the runtime) and the next scheduler starts from fresh
//! backends with the same time line. Service times are kept with the runtime's timer (1 ms
//! granularity), which is why built-in profiles work in milliseconds.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::profile::BackendProfile;
use crate::wire;

/// The clock every backend of a run reads its time line from.
#[derive(Clone, Copy, Debug)]
pub struct Epoch {
    /// When the measurement phase begins (the end of warm-up).
    pub measure_from: Instant,
}

impl Epoch {
    /// Time since the measurement began, `None` during warm-up.
    pub fn since(&self, now: Instant) -> Option<Duration> {
        now.checked_duration_since(self.measure_from)
    }
}

/// Running backends; dropping the farm stops them.
#[derive(Debug)]
pub struct Farm {
    pub addrs: Vec<SocketAddr>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Farm {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// One backend to start.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The backend's number: its replies carry it, and its service times are keyed by it.
    pub index: usize,
    pub bind: SocketAddr,
    pub profile: BackendProfile,
}

/// Where self-hosted backend `i` listens: its own loopback address, so that a refusing window
/// can close and re-open the listener without any other socket having taken the port.
pub fn loopback_addr(i: usize) -> SocketAddr {
    let i = u8::try_from(i % 250).unwrap_or(0);
    SocketAddr::from(([127, 0, 1, i + 1], 0))
}

/// Starts every backend (TCP, and UDP on the same address when `udp`), with `threads` runtime
/// workers, and returns once all are bound.
pub fn start(specs: &[Spec], seed: u64, epoch: Epoch, udp: bool, threads: usize) -> io::Result<Farm> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("loadtest-backend")
        .enable_all()
        .build()?;
    let addrs = runtime.block_on(async {
        let mut addrs = Vec::with_capacity(specs.len());
        for spec in specs {
            let listener = bind_tcp(spec.bind)?;
            let addr = listener.local_addr()?;
            let backend = Arc::new(Backend {
                index: spec.index,
                profile: spec.profile.clone(),
                seed,
                epoch,
                slots: spec.profile.concurrency.map(|c| Arc::new(Semaphore::new(c.max(1)))),
            });
            if udp {
                let sock = UdpSocket::bind(addr).await?;
                tokio::spawn(serve_udp(Arc::new(sock), Arc::clone(&backend)));
            }
            tokio::spawn(serve_tcp(listener, addr, backend));
            addrs.push(addr);
        }
        Ok::<_, io::Error>(addrs)
    })?;
    Ok(Farm { addrs, runtime: Some(runtime) })
}

#[derive(Debug)]
struct Backend {
    index: usize,
    profile: BackendProfile,
    seed: u64,
    epoch: Epoch,
    slots: Option<Arc<Semaphore>>,
}

impl Backend {
    /// Serves one request: waits for a capacity slot (queueing is part of the latency), then
    /// the service time.
    async fn answer(&self, id: u64) -> [u8; wire::FRAME] {
        let t = self.epoch.since(Instant::now());
        let _slot = match &self.slots {
            // The semaphore is never closed, so acquire only fails if it were; then serve
            // without a slot rather than drop the request.
            Some(s) => s.acquire().await.ok(),
            None => None,
        };
        let d = self.profile.service_time(self.seed, self.index, id, t);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        wire::response(u32::try_from(self.index).unwrap_or(u32::MAX), id)
    }
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    // Re-binding after a refusing window must succeed over the window's TIME_WAIT sockets.
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

async fn serve_tcp(listener: TcpListener, addr: SocketAddr, backend: Arc<Backend>) {
    let mut listener = Some(listener);
    loop {
        let now = Instant::now();
        let since = backend.epoch.since(now);
        // Inside the refusing window: no listener at all, so SYNs are answered with RST.
        if let (Some(w), Some(t)) = (backend.profile.refuse, since)
            && w.contains(t)
        {
            listener = None;
            tokio::time::sleep(w.end() - t).await;
            continue;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match bind_tcp(addr) {
                Ok(l) => l,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        // Wake at the next window start to close the listener.
        let next_refusal = match (backend.profile.refuse, since) {
            (Some(w), Some(t)) if t < w.start => Some(w.start - t),
            (Some(w), None) => Some(w.start + backend.epoch.measure_from.saturating_duration_since(now)),
            _ => None,
        };
        let wait = async {
            match next_refusal {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = l.accept() => {
                if let Ok((stream, _)) = r {
                    tokio::spawn(serve_conn(stream, Arc::clone(&backend)));
                }
                listener = Some(l);
            }
            () = wait => {}
        }
    }
}

async fn serve_conn(mut stream: TcpStream, backend: Arc<Backend>) {
    let mut buf = [0u8; wire::FRAME];
    // One request at a time per connection: the generator never pipelines.
    while stream.read_exact(&mut buf).await.is_ok() {
        let Ok(id) = wire::parse_request(&buf) else { return };
        let reply = backend.answer(id).await;
        if stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, backend: Arc<Backend>) {
    let mut buf = [0u8; 64];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else { continue };
        if backend.profile.refusing(backend.epoch.since(Instant::now())) {
            continue;
        }
        let Ok(id) = wire::parse_request(&buf[..n]) else { continue };
        let (sock, backend) = (Arc::clone(&sock), Arc::clone(&backend));
        tokio::spawn(async move {
            let reply = backend.answer(id).await;
            let _ = sock.send_to(&reply, peer).await;
        });
    }
}
