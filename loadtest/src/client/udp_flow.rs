//! UDP request/response with every request its own flow: a new socket from a new source
//! address per request, one datagram each way, then closed.
//!
//! What a UDP "request" is to an L4 proxy: nothing but a datagram. The proxy keys a flow on
//! the client's address and port (and where it sent to) and schedules only a flow's first
//! datagram; every later datagram from the same address and port follows it to the same
//! backend until the flow has been idle for its timeout. One socket for the whole run is thus
//! one pick for the whole run. To let the scheduler decide every request — as a DNS resolver's
//! fresh source port per query lets kube-proxy decide every query — each request is sent from
//! an address and port no open flow holds.
//!
//! A fresh ephemeral port alone is not enough: the proxy keeps a flow for its idle timeout
//! after the reply, and at 1 000 req/s with a 10 s timeout some 10 000 flows are open, over a
//! third of the ~28 000 ephemeral ports — a port the kernel hands out again would often land
//! on an open flow and inherit its backend. On loopback every 127.0.0.0/8 address is local,
//! so each request also takes the next of 16 million source addresses: no address recurs
//! within a run. Towards a non-loopback target the kernel chooses the source address (and
//! only the port is fresh).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::nanos;
use crate::pacer::Job;
use crate::record::{Failure, Recorder};
use crate::wire;

/// The source address of request `id` towards `target`.
pub fn source_for(id: u64, target: SocketAddr) -> SocketAddr {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => {
            // 127.0.0.1 up to 127.255.255.254, then round again.
            let host = 1 + (id % 0x00FF_FFFE) as u32;
            SocketAddr::from((Ipv4Addr::from(0x7F00_0000 | host), 0))
        }
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    }
}

/// One request on its own flow: bind, connect (so only the target's reply is read), send,
/// wait for the reply until the request's deadline, close.
pub async fn one_shot(target: SocketAddr, job: Job, timeout: Duration, rec: Arc<Recorder>) {
    let deadline = tokio::time::Instant::from_std(job.due + timeout);
    let outcome = tokio::time::timeout_at(deadline, exchange(target, job.id)).await;
    let now = Instant::now();
    match outcome {
        Ok(Ok(backend)) => rec.ok(&job, backend, nanos(now.saturating_duration_since(job.due)), None),
        Ok(Err(f)) => rec.failed(job.measured, f),
        // A lost datagram looks exactly like a slow one: both are a timeout.
        Err(_) => rec.failed(job.measured, Failure::Timeout),
    }
}

async fn exchange(target: SocketAddr, id: u64) -> Result<u32, Failure> {
    let io = |e: io::Error| Failure::from_io(&e);
    let sock = UdpSocket::bind(source_for(id, target)).await.map_err(io)?;
    sock.connect(target).await.map_err(io)?;
    sock.send(&wire::request(id)).await.map_err(io)?;
    let mut buf = [0u8; 64];
    loop {
        let n = sock.recv(&mut buf).await.map_err(io)?;
        // Anything but the answer to this request (nothing else should come) is skipped.
        if let Ok((backend, got)) = wire::parse_response(&buf[..n])
            && got == id
        {
            return Ok(backend);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_requests_get_distinct_source_addresses_and_others_leave_it_to_the_kernel() {
        let lo = SocketAddr::from(([127, 0, 0, 1], 53));
        let ips: std::collections::HashSet<IpAddr> = (0..100_000u64).map(|id| source_for(id, lo).ip()).collect();
        assert_eq!(ips.len(), 100_000, "a source address recurred within a run");
        assert!(ips.iter().all(|ip| ip.is_loopback()));
        // Neither the network nor the broadcast address of 127/8 is ever used.
        assert_eq!(source_for(0, lo).ip(), IpAddr::from([127, 0, 0, 1]));
        assert_eq!(source_for(0x00FF_FFFD, lo).ip(), IpAddr::from([127, 255, 255, 254]));
        assert_eq!(source_for(0x00FF_FFFE, lo).ip(), IpAddr::from([127, 0, 0, 1]));
        assert!((0..1000).all(|id| source_for(id, lo).port() == 0));
        let remote = SocketAddr::from(([192, 0, 2, 1], 53));
        assert_eq!(source_for(7, remote), SocketAddr::from(([0, 0, 0, 0], 0)));
    }
}
