//! Newtypes for the roles a socket address plays in one proxied connection or flow.
//!
//! A transparent proxy juggles several addresses per connection (client, original destination,
//! backend) that are all `SocketAddr`s; swapping two of them compiles fine and silently
//! schedules or sends traffic by the wrong one, so each role gets its own type, from the
//! accepted socket all the way into a scheduler's pick.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The client's address, as the proxy saw it (the peer of the accepted socket, or the source
/// of a datagram).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// The address the client dialled (a Service VIP or a node port): with TPROXY the accepted
/// socket's *local* address is the original destination, no conntrack lookup needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrigDstAddr(pub SocketAddr);

/// The address a backend listens on (endpoint IP and target port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr(pub SocketAddr);

macro_rules! socket_addr_role {
    ($($role:ident),*) => {$(
        impl $role {
            pub fn ip(&self) -> IpAddr {
                self.0.ip()
            }

            pub fn port(&self) -> u16 {
                self.0.port()
            }
        }

        impl fmt::Display for $role {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

socket_addr_role!(ClientAddr, OrigDstAddr, BackendAddr);
