//! TCP socket construction for the data path (the transparent listeners and the upstream
//! sockets), and the one raw `setsockopt` helper the UDP sockets share.
//!
//! Options are set once where they are inherited: a socket accepted from a listener copies the
//! listener's `TCP_NODELAY` and keepalive settings, so the hot accept path spends no syscall on
//! them.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

/// Keepalive on both legs: a client or backend that vanished without a FIN (node reboot, cable)
/// must not pin a connection slot and a backend's active count forever.
fn keepalive() -> TcpKeepalive {
    TcpKeepalive::new().with_time(Duration::from_secs(60)).with_interval(Duration::from_secs(10)).with_retries(6)
}

/// A listener that accepts connections addressed to any IP (TPROXY delivers them here); the
/// accepted socket's local address is the client's original destination.
///
/// `SO_REUSEPORT`: every worker binds its own listener on the same port and the kernel spreads
/// new connections across them (TPROXY's listener lookup honours reuseport groups), so accepts
/// never contend on one queue and each connection lives on one core from SYN to close.
pub fn transparent_listener(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let s = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv4() {
        s.set_ip_transparent_v4(true)?;
    } else {
        s.set_only_v6(true)?;
        s.set_ip_transparent_v6(true)?;
    }
    s.set_tcp_nodelay(true)?;
    // Sets SO_KEEPALIVE too.
    s.set_tcp_keepalive(&keepalive())?;
    s.bind(&addr.into())?;
    // The kernel clamps this to net.core.somaxconn of the namespace; asking for the most
    // means the sysctl alone decides (see `backlog_limit`).
    s.listen(backlog)?;
    Ok(s.into())
}

/// The accept-queue limit the kernel will actually apply.
pub fn backlog_limit() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok()?.trim().parse().ok()
}

/// A socket ready to connect to a backend.
///
/// With `source` (Local policy) it is bound to the client's own IP with `IP_TRANSPARENT`, so the
/// backend sees the real client; `IP_BIND_ADDRESS_NO_PORT` defers the port choice to
/// `connect()`, where the kernel picks one unique for the whole 4-tuple instead of reserving a
/// port per bind — otherwise a busy client IP would exhaust the ephemeral range at a few
/// tens of thousands of connections. Without `source` (Cluster) the kernel picks the node's
/// own address toward the backend.
///
/// One setsockopt on the Cluster path (`TCP_NODELAY`): keepalive is armed later, by the relay,
/// on connections that live long enough to need it ([`enable_keepalive`]).
pub fn upstream_socket(backend: SocketAddr, source: Option<IpAddr>) -> io::Result<Socket> {
    let domain = if backend.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let s = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    s.set_tcp_nodelay(true)?;
    if let Some(src) = source.map(|ip| ip.to_canonical()) {
        // A client of the other family cannot be spoofed toward this backend; the kernel's
        // own source is the only honest choice then.
        if src.is_ipv4() == backend.is_ipv4() {
            if src.is_ipv4() {
                s.set_ip_transparent_v4(true)?;
                set_bind_address_no_port(&s)?;
            } else {
                s.set_ip_transparent_v6(true)?;
                // IP_BIND_ADDRESS_NO_PORT is an IPPROTO_IP option but applies to v6 too.
                set_bind_address_no_port(&s)?;
            }
            s.bind(&SocketAddr::new(src, 0).into())?;
        }
    }
    Ok(s)
}

fn set_bind_address_no_port(s: &Socket) -> io::Result<()> {
    set_int(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
}

/// An integer socket option socket2 has no setter for.
pub fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the caller's fd is open for the duration of the call (a bad one is EBADF, not
    // undefined behaviour); a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(fd, level, name, (&value as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Turns on keepalive (the same settings as the listener's, which accepted sockets inherit).
pub fn enable_keepalive<S: AsFd>(s: &S) -> io::Result<()> {
    // Sets SO_KEEPALIVE too.
    SockRef::from(s).set_tcp_keepalive(&keepalive())
}

/// Makes the next close send a RST instead of a FIN: the client learns at once that the
/// connection is refused instead of seeing an orderly but empty reply.
pub fn reset_on_close<S: AsFd>(s: &S) {
    let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
}
