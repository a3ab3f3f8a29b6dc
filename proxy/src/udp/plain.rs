//! Plain listen mode for UDP: the daemon's UDP workers — flow table, batch I/O, scheduling per
//! new flow, expiry, stats — behind ordinary (non-transparent) sockets serving one fixed
//! frontend.
//!
//! The UDP twin of [`crate::forward::plain`]: a load test comparing schedulers on loopback
//! needs no root, no nftables and no original destination. Every datagram on the listening
//! port is for the one frontend; a flow is keyed as in the daemon (client address, address it
//! sent to), and the backend's replies go back from the listening socket itself, which is the
//! address the client sent to.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use controlplane::{Frontend, RoutingTable};

use super::socket;
use super::worker::{Serving, start_serving};
use super::{UdpConfig, UdpShared, UdpWorkers};
use crate::dispatch::telemetry::MetricsRegistry;
use crate::listeners::{Gate, Pair, Release};
use crate::workers::StartError;

/// A running plain-mode UDP server; [`PlainUdpServer::stop`] (or drop) ends it.
#[derive(Debug)]
pub struct PlainUdpServer {
    /// The bound address (the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// Flows, datagrams and drops, as in the daemon.
    pub shared: Arc<UdpShared>,
    workers: Option<UdpWorkers>,
}

impl PlainUdpServer {
    /// Closes every flow and joins the workers.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(w) = self.workers.take() {
            w.stop();
        }
    }
}

impl Drop for PlainUdpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Serves `frontend` on `listen` with `config.workers` epoll threads.
///
/// `config.port` and `config.nodeport_addrs` are ignored (there is no interception); the flow
/// caps and idle timeouts apply as in the daemon.
pub fn serve_plain_udp(listen: SocketAddr, frontend: Arc<Frontend>, config: UdpConfig) -> Result<PlainUdpServer, StartError> {
    let n = config.workers.max(1);
    let bind_error = |addr: SocketAddr| move |source| StartError::Bind { what: "plain UDP", addr, source };
    // The first socket fixes the port (the caller may ask for 0); the others join its
    // SO_REUSEPORT group, one per worker as in the transparent path: the kernel hashes a
    // client's addresses to one of them, so each worker owns its flows.
    let first = socket::plain_listener(listen).map_err(bind_error(listen))?;
    let addr = local_addr(&first).map_err(bind_error(listen))?;
    let mut pairs: Vec<Pair> = Vec::with_capacity(n);
    pairs.push(family_pair(addr, first));
    for _ in 1..n {
        let l = socket::plain_listener(addr).map_err(bind_error(addr))?;
        pairs.push(family_pair(addr, l));
    }
    // The table stays empty and is never published to: the frontend is fixed, so no flow is
    // ever evicted by a table change.
    let table = Arc::new(ArcSwap::from_pointee(RoutingTable::default()));
    let shared = UdpShared::new(table, UdpConfig { workers: n, ..config }, Arc::new(MetricsRegistry::default()));
    let workers = start_serving(Arc::clone(&shared), pairs, Gate::open(), Release::default(), &Serving::Plain(frontend))?;
    Ok(PlainUdpServer { addr, shared, workers: Some(workers) })
}

/// `[v4, v6]` as the workers take them.
fn family_pair(addr: SocketAddr, fd: std::os::fd::OwnedFd) -> Pair {
    if addr.is_ipv4() { [Some(fd), None] } else { [None, Some(fd)] }
}

fn local_addr(fd: &std::os::fd::OwnedFd) -> std::io::Result<SocketAddr> {
    let s = socket2::SockRef::from(fd);
    s.local_addr()?.as_socket().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an IP socket"))
}
