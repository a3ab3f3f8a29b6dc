//! This node's own addresses, for telling the node's own connections apart (what kube-proxy's
//! `fib saddr type local` matches): a connection the node itself opened reaches the proxy with
//! one of them as its source.
//!
//! Read with `getifaddrs` and kept as a snapshot. Only the frontends that need the answer ask
//! (the external addresses of `externalTrafficPolicy: Local` Services), so no other connection
//! pays anything. A found address is answered from the snapshot; an address not found re-reads
//! the node's addresses when the snapshot is older than [`REREAD_ON_MISS`], so an address added
//! to the node is known within that time while a stream of outside clients costs at most one
//! read per interval. `tpvs explain --manifests` answers for a node it does not run on: it
//! gives the addresses the compiler knows instead ([`NodeAddrs::given`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::debug;

/// How stale the snapshot may be before a miss reads the addresses again.
pub const REREAD_ON_MISS: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Snapshot {
    /// `None` before the first read.
    read_at: Option<Instant>,
    /// Sorted.
    addrs: Vec<IpAddr>,
}

/// The node's addresses, shared by the workers of one data path.
#[derive(Debug, Default)]
pub struct NodeAddrs {
    snapshot: ArcSwap<Snapshot>,
    /// Given, not read: the node's addresses as the compiler knows them, for answering about a
    /// node this process does not run on (`tpvs explain --manifests`).
    given: bool,
}

impl NodeAddrs {
    /// Exactly `addrs` (and loopback), never read from this machine's interfaces.
    pub fn given(addrs: impl IntoIterator<Item = IpAddr>) -> NodeAddrs {
        let mut addrs: Vec<IpAddr> = addrs.into_iter().map(|ip| ip.to_canonical()).collect();
        addrs.sort_unstable();
        addrs.dedup();
        NodeAddrs { snapshot: ArcSwap::from_pointee(Snapshot { read_at: None, addrs }), given: true }
    }

    /// Whether `ip` is one of this node's addresses (loopback always is).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if ip.is_loopback() {
            return true;
        }
        let snap = self.snapshot.load();
        if snap.addrs.binary_search(&ip).is_ok() {
            return true;
        }
        if self.given || snap.read_at.is_some_and(|t| t.elapsed() < REREAD_ON_MISS) {
            return false;
        }
        match read_node_addrs() {
            Ok(mut addrs) => {
                addrs.sort_unstable();
                addrs.dedup();
                let found = addrs.binary_search(&ip).is_ok();
                self.snapshot.store(Arc::new(Snapshot { read_at: Some(Instant::now()), addrs }));
                found
            }
            Err(e) => {
                // Out of descriptors, most likely: the client is served as an outside one
                // (its Local set) rather than the connection failing here.
                debug!(error = %e, "reading the node's addresses failed");
                self.snapshot.store(Arc::new(Snapshot { read_at: Some(Instant::now()), addrs: snap.addrs.clone() }));
                false
            }
        }
    }
}

/// Every IPv4 and IPv6 address of every interface of this network namespace.
fn read_node_addrs() -> std::io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list it allocated into `head`, or fails and writes nothing.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, freed only below.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: a non-null ifa_addr points to a sockaddr whose family says its real type
            // and size; each cast below matches the family it is under.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once; no reference into it survives.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_the_namespaces_own_addresses_are_the_nodes() {
        let addrs = NodeAddrs::default();
        assert!(addrs.contains(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(addrs.contains(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        let own = read_node_addrs().unwrap_or_else(|e| panic!("getifaddrs: {e}"));
        for ip in own.iter().filter(|ip| !ip.is_loopback()) {
            assert!(addrs.contains(*ip), "{ip} is this namespace's");
        }
        // A documentation address is no interface's here.
        let outside: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 201));
        if !own.contains(&outside) {
            assert!(!addrs.contains(outside));
        }
    }

    #[test]
    fn given_addresses_are_the_only_ones_besides_loopback() {
        let node = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 201));
        let addrs = NodeAddrs::given([node]);
        assert!(addrs.contains(node) && addrs.contains(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        // An address of the machine asking is not the explained node's.
        let own = read_node_addrs().unwrap_or_else(|e| panic!("getifaddrs: {e}"));
        for ip in own.iter().filter(|ip| !ip.is_loopback() && **ip != node) {
            assert!(!addrs.contains(*ip), "{ip} is this machine's, not the node's");
        }
        assert!(!NodeAddrs::given([]).contains(node));
    }
}
