//! The load generator: the pacer's time line turned into requests on the wire.
//!
//! - [`tcp`]: request/response over a pool of persistent connections, or one new connection
//!   per request (the mode in which an L4 proxy's scheduler decides every request).
//! - [`direct`]: persistent connections the pacer thread writes on itself (the default
//!   persistent pacing: no thread hop between a request's due time and its send).
//! - [`http`]: HTTP/1.1 keep-alive `GET`s and the response reader, for targets that are
//!   ordinary web servers (on the direct pacing's connections).
//! - [`udp`]: request/response datagrams on one socket (one flow), matched to their request
//!   by id.
//! - [`udp_flow`]: one datagram each way on a socket of its own per request (a flow per
//!   request, the mode in which a UDP proxy's scheduler decides every request).
//! - [`stamp`]: reading a reply with the kernel's receive timestamp, to measure how long it
//!   waited for the generator.
//!
//! [`drive`] owns the generator's runtime and the pacer thread for one run.

pub mod direct;
pub mod http;
pub mod stamp;
pub mod tcp;
pub mod udp;
pub mod udp_flow;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::pacer::{self, Timeline};
use crate::record::{Failure, Recorder};

/// How requests travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A new TCP connection per request: the proxy's scheduler picks a backend per request.
    PerRequest,
    /// A fixed pool of TCP connections; requests wait for a free one (the wait counts).
    Persistent,
    /// One datagram each way per request.
    Udp,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::PerRequest => "tcp-per-request",
            Mode::Persistent => "tcp-persistent",
            Mode::Udp => "udp",
        }
    }
}

/// What a UDP request is to a proxy that keys flows on the client's address and port (see
/// [`udp_flow`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UdpFlows {
    /// Every request from a source address and port of its own: a new flow, scheduled on its
    /// own (as a resolver's fresh source port per DNS query).
    #[default]
    PerRequest,
    /// Every request from one socket: one flow, one pick for the whole run (a long-lived
    /// client such as a metrics sender).
    Shared,
}

/// How a due request reaches its persistent connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Pacing {
    /// The pacer thread writes it on an idle connection itself ([`direct`]); the reply's wait
    /// for the generator is measured by the kernel's timestamp and kept out of the latency.
    #[default]
    Direct,
    /// The pacer hands it to the runtime through a queue, a connection task writes it, and the
    /// latency ends when the task reads the reply (the generator before the direct pacing;
    /// kept to measure what the direct one gains).
    Handoff,
}

/// What the requests and replies are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// The 16-byte frames of [`crate::wire`] (`serve`'s backends, the self-hosted runs).
    #[default]
    Frames,
    /// One HTTP/1.1 keep-alive `GET` per request; persistent direct pacing only.
    Http(Arc<http::HttpRequest>),
}

/// Nanoseconds of `d`, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Where requests go.
#[derive(Clone, Debug)]
pub enum Target {
    /// One address (the in-process proxy, or an external VIP); TCP or UDP by mode.
    Addr(SocketAddr),
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub mode: Mode,
    /// Pool size in persistent mode.
    pub connections: usize,
    /// A request not answered this long after its due time has failed.
    pub timeout: Duration,
    /// Requests in flight beyond which new ones fail at once as generator overload (an fd and
    /// memory guard; reported, never silent).
    pub max_in_flight: u64,
    /// Generator runtime threads.
    pub threads: usize,
    /// Persistent mode only: how requests reach the connections.
    pub pacing: Pacing,
    /// UDP mode only: a flow per request or one for the run.
    pub udp_flows: UdpFlows,
    pub protocol: Protocol,
}

/// Runs the whole time line against `target`, recording into `rec`; returns after every
/// measured request has succeeded or failed.
pub fn drive(target: &Target, timeline: Timeline, cfg: ClientConfig, rec: &Arc<Recorder>, stop: &AtomicBool) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads.max(1))
        .thread_name("loadtest-client")
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    if cfg.protocol != Protocol::Frames && !(cfg.mode == Mode::Persistent && cfg.pacing == Pacing::Direct) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "HTTP requests need --mode persistent with --pacing direct"));
    }
    // The hand-off pacing is kept as the generator was before, without real-time pacing.
    let realtime = !(cfg.mode == Mode::Persistent && cfg.pacing == Pacing::Handoff);
    match (cfg.mode, target) {
        (Mode::Persistent, Target::Addr(addr)) if cfg.pacing == Pacing::Direct => {
            let pool = direct::DirectPool::start(&handle, *addr, cfg.connections, cfg.timeout, cfg.protocol.clone(), Arc::clone(rec));
            // Connect the pool before the first request is due, so no request pays a connect.
            while pool.idle() < cfg.connections.max(1) && Instant::now() < timeline.start {
                std::thread::sleep(Duration::from_millis(1));
            }
            pacer::run(timeline, stop, realtime, |job| {
                rec.start(job.measured);
                pool.submit(job);
            });
        }
        (Mode::Persistent, Target::Addr(addr)) => {
            let queue = tcp::Pool::start(&handle, *addr, cfg.connections, cfg.timeout, Arc::clone(rec));
            pacer::run(timeline, stop, realtime, |job| {
                rec.start(job.measured);
                queue.submit(job);
            });
            // Closing the queue lets the pool finish what is queued and exit.
            drop(queue);
        }
        (Mode::PerRequest, Target::Addr(addr)) => {
            spawn_each(timeline, stop, realtime, rec, cfg.max_in_flight, |job| {
                handle.spawn(tcp::one_shot(*addr, job, cfg.timeout, Arc::clone(rec)));
            });
        }
        (Mode::Udp, Target::Addr(addr)) if cfg.udp_flows == UdpFlows::PerRequest => {
            spawn_each(timeline, stop, realtime, rec, cfg.max_in_flight, |job| {
                handle.spawn(udp_flow::one_shot(*addr, job, cfg.timeout, Arc::clone(rec)));
            });
        }
        (Mode::Udp, target) => {
            let client = runtime.block_on(udp::Client::start(target.clone(), cfg.timeout, Arc::clone(rec)))?;
            pacer::run(timeline, stop, realtime, |job| {
                rec.start(job.measured);
                if rec.in_flight.load(Ordering::Relaxed) > cfg.max_in_flight {
                    rec.failed(job.measured, Failure::Overload);
                    return;
                }
                let c = Arc::clone(&client);
                handle.spawn(async move { c.send(job).await });
            });
        }
    }
    // Every request has its own deadline (due + timeout); past the last one, anything still
    // open is a stuck task, which the summary counts as timed out.
    let deadline = timeline.end() + cfg.timeout + Duration::from_secs(1);
    while rec.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(5));
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Paces the time line, starting one independent request per due time through `spawn` — or
/// failing it at once as generator overload when `max_in_flight` are already open.
fn spawn_each(timeline: Timeline, stop: &AtomicBool, realtime: bool, rec: &Recorder, max_in_flight: u64, mut spawn: impl FnMut(pacer::Job)) {
    pacer::run(timeline, stop, realtime, |job| {
        rec.start(job.measured);
        if rec.in_flight.load(Ordering::Relaxed) > max_in_flight {
            rec.failed(job.measured, Failure::Overload);
            return;
        }
        spawn(job);
    });
}
