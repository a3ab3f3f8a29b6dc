//! UDP request/response on one socket: one datagram each way, matched by request id; a
//! request whose reply has not come by its deadline has failed (a lost datagram looks exactly
//! like a slow one). Through a proxy the socket is one flow: one pick for the whole run.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::{Target, nanos};
use crate::pacer::Job;
use crate::record::{Failure, Recorder};
use crate::wire;

struct Pending {
    job: Job,
}

pub struct Client {
    sock: UdpSocket,
    target: Target,
    pending: Mutex<HashMap<u64, Pending>>,
    timeout: Duration,
    rec: Arc<Recorder>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("udp::Client").field("target", &self.target).finish_non_exhaustive()
    }
}

impl Client {
    /// Binds the socket and starts the receive and expiry loops on the current runtime.
    pub async fn start(target: Target, timeout: Duration, rec: Arc<Recorder>) -> io::Result<Arc<Client>> {
        let Target::Addr(a) = &target;
        let any = if a.is_ipv6() { SocketAddr::from(([0u16; 8], 0)) } else { SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)) };
        let sock = UdpSocket::bind(any).await?;
        let client = Arc::new(Client { sock, target, pending: Mutex::new(HashMap::new()), timeout, rec });
        tokio::spawn(Arc::clone(&client).receive_loop());
        tokio::spawn(Arc::clone(&client).expiry_loop());
        Ok(client)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn send(&self, job: Job) {
        let Target::Addr(dst) = self.target;
        self.pending().insert(job.id, Pending { job });
        if let Err(e) = self.sock.send_to(&wire::request(job.id), dst).await
            && self.pending().remove(&job.id).is_some()
        {
            self.rec.failed(job.measured, Failure::from_io(&e));
        }
    }

    async fn receive_loop(self: Arc<Self>) {
        let mut buf = [0u8; 64];
        loop {
            let Ok((n, _)) = self.sock.recv_from(&mut buf).await else { continue };
            let now = Instant::now();
            let Ok((backend, id)) = wire::parse_response(&buf[..n]) else { continue };
            let Some(p) = self.pending().remove(&id) else { continue };
            self.rec.ok(&p.job, backend, nanos(now.saturating_duration_since(p.job.due)), None);
        }
    }

    async fn expiry_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tick.tick().await;
            let now = Instant::now();
            let expired: Vec<Pending> = {
                let mut map = self.pending();
                let ids: Vec<u64> = map.iter().filter(|(_, p)| p.job.due + self.timeout <= now).map(|(id, _)| *id).collect();
                ids.iter().filter_map(|id| map.remove(id)).collect()
            };
            for p in expired {
                self.rec.failed(p.job.measured, Failure::Timeout);
            }
        }
    }
}
