//! The three kinds of UDP socket the data path uses, and the epoll/eventfd plumbing of a
//! worker's loop.
//!
//! - the **listener**: `IP_TRANSPARENT` on `0.0.0.0:<port>` / `[::]:<port>`, the TPROXY target;
//!   `IP_RECVORIGDSTADDR` makes every datagram carry the VIP:port it was sent to. Each worker
//!   binds its own with `SO_REUSEPORT`: the kernel hashes a datagram's addresses to pick the
//!   socket (TPROXY's socket lookup honours reuseport groups), so one client flow always lands
//!   on the same worker and each worker owns its flows outright, with no lock.
//!   In plain listen mode ([`plain_listener`]) the same socket without `IP_TRANSPARENT`, bound
//!   to a local address, which is also where replies are sent from.
//! - a **reply socket** per frontend address: transparent, bound to VIP:port, never read;
//!   replies to clients are sent from it so they come *from the address the client sent to*
//!   (a reply from any other address or port would be dropped by the client's connected
//!   socket). Unconnected, so TPROXY's "established" lookup skips it and client datagrams still
//!   reach the listener.
//! - an **upstream socket** per flow, connected to the backend: for `Local` bound
//!   transparently to the client's own IP:port (the backend sees the client; the backend's
//!   replies are routed back by the `socket transparent` rule), for `Cluster` to the node's
//!   address with a kernel-chosen port.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::sockopt::set_int;

/// Receive buffer of a listener: a burst of a few thousand small datagrams must not be dropped
/// while a worker is busy with a batch.
const LISTENER_RCVBUF: usize = 8 << 20;

fn udp(addr: &SocketAddr) -> io::Result<Socket> {
    let domain = if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    Socket::new(domain, Type::DGRAM.nonblocking().cloexec(), Some(Protocol::UDP))
}

fn set_transparent(s: &Socket, v4: bool) -> io::Result<()> {
    if v4 { s.set_ip_transparent_v4(true) } else { s.set_ip_transparent_v6(true) }
}

/// The transparent listener of one worker for one family.
pub fn listener(addr: SocketAddr) -> io::Result<OwnedFd> {
    listening_socket(addr, true)
}

/// The plain-mode listener of one worker: an ordinary socket on an address of this host, which
/// also sends the replies (it is the address the client sent to). `IP_RECVORIGDSTADDR` still
/// applies — it reports the local address a datagram was sent to, the same key the
/// transparent path builds its flows from.
pub fn plain_listener(addr: SocketAddr) -> io::Result<OwnedFd> {
    listening_socket(addr, false)
}

fn listening_socket(addr: SocketAddr, transparent: bool) -> io::Result<OwnedFd> {
    let s = udp(&addr)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    let v4 = addr.is_ipv4();
    if !v4 {
        s.set_only_v6(true)?;
    }
    if transparent {
        set_transparent(&s, v4)?;
    }
    if v4 {
        set_int(s.as_raw_fd(), libc::SOL_IP, libc::IP_RECVORIGDSTADDR, 1)?;
    } else {
        set_int(s.as_raw_fd(), libc::SOL_IPV6, libc::IPV6_RECVORIGDSTADDR, 1)?;
    }
    // SO_RCVBUFFORCE passes net.core.rmem_max (we run with CAP_NET_ADMIN); fall back to the
    // capped size when it is refused.
    let forced = i32::try_from(LISTENER_RCVBUF).ok().map(|n| set_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, n));
    if !matches!(forced, Some(Ok(()))) {
        let _ = s.set_recv_buffer_size(LISTENER_RCVBUF);
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A socket that sends from `frontend` (a VIP:port that is not a local address).
pub fn reply_socket(frontend: SocketAddr) -> io::Result<OwnedFd> {
    let s = udp(&frontend)?;
    // Every worker binds its own reply socket for the same frontend.
    s.set_reuse_address(true)?;
    if frontend.is_ipv6() {
        s.set_only_v6(true)?;
    }
    set_transparent(&s, frontend.is_ipv4())?;
    // Nothing is ever read from it; the smallest buffer keeps stray datagrams from pinning
    // memory.
    let _ = s.set_recv_buffer_size(1);
    s.bind(&frontend.into())?;
    Ok(s.into())
}

/// A socket connected to `backend`; with `spoof`, bound transparently to that address (the
/// client's) first.
///
/// `SO_REUSEADDR` for the spoofed bind: one client port may talk to two Services at once, and
/// each flow needs its own socket bound to the same client address (they differ in the
/// backend they are connected to, which is what the kernel's lookup of the replies uses).
pub fn upstream(backend: SocketAddr, spoof: Option<SocketAddr>) -> io::Result<OwnedFd> {
    let s = udp(&backend)?;
    match spoof {
        Some(src) if src.is_ipv4() == backend.is_ipv4() => {
            s.set_reuse_address(true)?;
            set_transparent(&s, src.is_ipv4())?;
            if src.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.bind(&src.into())?;
        }
        _ => {
            let any = if backend.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
            s.bind(&SocketAddr::new(any, 0).into())?;
        }
    }
    s.connect(&SockAddr::from(backend))?;
    Ok(s.into())
}

/// A worker's epoll instance (level-triggered: a socket left with datagrams after a bounded
/// batch is reported again on the next wait, which keeps workers fair across sockets).
#[derive(Debug)]
pub struct Epoll(OwnedFd);

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: no pointers; the result is checked before it becomes an OwnedFd.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for readability; events carry `token`. Closing `fd` unregisters it.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: valid fds and a live event struct.
        let rc = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }

    /// Stops watching `fd`.
    pub fn del(&self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: valid fds and a live event struct (ignored by DEL, required by old kernels).
        let rc = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }

    /// Waits up to `timeout_ms` for events; returns how many were written to `events`.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: `events` is valid for `max` entries.
        let rc = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(e) }
    }
}

/// An eventfd that wakes a worker from another thread (a new routing table was published).
#[derive(Debug)]
pub struct Waker(OwnedFd);

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // SAFETY: no pointers; the result is checked before it becomes an OwnedFd.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        Ok(Waker(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn wake(&self) {
        // SAFETY: a valid eventfd; a failed write (counter saturated) still leaves it readable.
        unsafe { libc::eventfd_write(self.0.as_raw_fd(), 1) };
    }

    /// Resets the counter so the fd stops being readable.
    pub fn drain(&self) {
        let mut v: libc::eventfd_t = 0;
        // SAFETY: a valid eventfd and a live u64.
        unsafe { libc::eventfd_read(self.0.as_raw_fd(), &mut v) };
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
