//! The admin servers' listening sockets (metrics, `/healthz`, health-check node ports), as one
//! registry that a hand-over passes on whole.
//!
//! A successor takes the very sockets the running instance listens on (received with the
//! data path's listeners), so their accept queues carry on and no probe queued at the moment
//! of the switch is reset; it binds afresh only an address it did not receive, and closes
//! what it received but does not serve (once its first table has opened its health-check
//! node ports). The predecessor stops accepting on all of them when it lets go
//! ([`AdminSockets::release`]); connections it already accepted finish before it exits
//! ([`AdminSockets::wait_closed`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::conns::ConnLimit;

/// The admin listeners of this instance, and those a predecessor handed over.
#[derive(Debug)]
pub struct AdminSockets {
    inner: Mutex<Inner>,
    /// Set once a successor took over: every admin server stops accepting.
    released: watch::Sender<bool>,
    /// The servers' connection caps, which count their open connections.
    limits: Mutex<Vec<Arc<ConnLimit>>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Received from the predecessor and not (yet) used, by local address.
    inherited: BTreeMap<SocketAddr, OwnedFd>,
    /// A second descriptor of each listener in use, by local address: what a hand-over sends.
    open: BTreeMap<SocketAddr, OwnedFd>,
}

impl AdminSockets {
    /// `inherited`: the predecessor's admin listeners (none at a cold start).
    pub fn new(inherited: Vec<(SocketAddr, OwnedFd)>) -> AdminSockets {
        AdminSockets {
            inner: Mutex::new(Inner { inherited: inherited.into_iter().collect(), open: BTreeMap::new() }),
            released: watch::channel(false).0,
            limits: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A listener on `addr`: the predecessor's when it handed one over, else a new one
    /// (`SO_REUSEPORT`, so it binds beside a predecessor that did not hand it over).
    pub fn listener(&self, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        let mut inner = self.lock();
        let listener = match inner.inherited.remove(&addr) {
            Some(fd) => {
                let l = std::net::TcpListener::from(fd);
                l.set_nonblocking(true)?;
                l
            }
            None => super::reuseport_listener(addr)?,
        };
        inner.open.insert(addr, OwnedFd::from(listener.try_clone()?));
        Ok(listener)
    }

    /// The listener on `addr` was closed (a health-check node port no longer wanted).
    pub fn closed(&self, addr: SocketAddr) {
        self.lock().open.remove(&addr);
    }

    /// Closes what the predecessor handed over and this instance does not serve.
    pub fn close_unused(&self) -> usize {
        std::mem::take(&mut self.lock().inherited).len()
    }

    /// Second descriptors of every listener in use, for a successor.
    pub fn offer(&self) -> std::io::Result<Vec<(SocketAddr, OwnedFd)>> {
        self.lock().open.iter().map(|(a, fd)| Ok((*a, fd.try_clone()?))).collect()
    }

    /// A successor took the sockets: stop accepting on them (this instance's copies close).
    pub fn release(&self) {
        self.released.send_replace(true);
        self.lock().open.clear();
    }

    /// What each admin server watches to stop accepting.
    pub fn released(&self) -> watch::Receiver<bool> {
        self.released.subscribe()
    }

    /// Counts the connections of a server's cap in [`AdminSockets::wait_closed`].
    pub fn track(&self, limit: &Arc<ConnLimit>) {
        self.limits.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::clone(limit));
    }

    /// Admin connections open now, across every server.
    pub fn open_connections(&self) -> usize {
        self.limits.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|l| l.open()).sum()
    }

    /// After [`AdminSockets::release`]: waits (blocking) until the connections accepted before
    /// it are answered and closed, or `within` passes (an idle keep-alive connection is closed
    /// by its idle timeout anyway). Exiting earlier would reset a probe in mid-answer.
    pub fn wait_closed(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let open = self.open_connections();
            if open == 0 || Instant::now() >= deadline {
                return open;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(l: &std::net::TcpListener) -> SocketAddr {
        l.local_addr().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_received_socket_is_used_for_its_address_and_the_rest_closed() {
        let a = super::super::reuseport_listener("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"));
        let b = super::super::reuseport_listener("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"));
        let (addr_a, addr_b) = (local(&a), local(&b));
        let sockets = AdminSockets::new(vec![(addr_a, OwnedFd::from(a)), (addr_b, OwnedFd::from(b))]);
        let used = sockets.listener(addr_a).unwrap_or_else(|e| panic!("{e}"));
        // The very socket: a connection queued on it before is there to accept.
        let _client = std::net::TcpStream::connect(addr_a).unwrap_or_else(|e| panic!("{e}"));
        used.set_nonblocking(false).unwrap_or_else(|e| panic!("{e}"));
        assert!(used.accept().is_ok());
        assert_eq!(sockets.offer().map(|o| o.into_iter().map(|(a, _)| a).collect::<Vec<_>>()).ok(), Some(vec![addr_a]));
        assert_eq!(sockets.close_unused(), 1, "b was not used");
        assert!(std::net::TcpStream::connect(addr_b).is_err(), "an unused received socket is closed");
        let rx = sockets.released();
        sockets.release();
        assert!(*rx.borrow());
        assert_eq!(sockets.offer().map(|o| o.len()).ok(), Some(0));
    }
}
