//! Addresses on the data path: the role newtypes (defined beside the schedulers, which take
//! them), canonical forms, the listeners' wildcard addresses, and the node-port address filter
//! (`--nodeport-addresses`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

pub use schedulers::{BackendAddr, ClientAddr, OrigDstAddr};

/// The wildcard addresses a data-path listener binds on one port: `0.0.0.0` and `::` (the
/// v6 one is `IPV6_V6ONLY`, so the two never overlap).
pub fn wildcard_listen_addrs(port: u16) -> [SocketAddr; 2] {
    [SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port), SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)]
}

/// Undoes IPv4-mapped IPv6 (`::ffff:a.b.c.d`), so a v4 client reaching a dual-stack socket is
/// looked up under its v4 address like everywhere else in the table.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?}: not an address or CIDR (expected e.g. 10.0.0.0/8 or fd00::/64)")]
    Syntax(String),
    #[error("{0:?}: prefix length too long for the address family")]
    Prefix(String),
}

/// An address block, `addr/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError::Prefix(format!("{addr}/{prefix}")));
        }
        // Store the network address, so `10.0.0.7/24` prints (and is compared) as `10.0.0.0/24`
        // and nft accepts it (nft rejects host bits in an interval element).
        Ok(Cidr { addr: mask(addr, prefix), prefix })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                let addr: IpAddr = a.parse().map_err(|_| CidrError::Syntax(s.to_string()))?;
                let prefix: u8 = p.parse().map_err(|_| CidrError::Syntax(s.to_string()))?;
                (addr, prefix)
            }
            None => {
                // A bare address is a host route, as kube-proxy accepts it.
                let addr: IpAddr = s.parse().map_err(|_| CidrError::Syntax(s.to_string()))?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which of the node's addresses answer on NodePorts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddrs {
    /// Every local address except loopback (kube-proxy's default in nftables mode: NodePorts on
    /// 127.0.0.1 would need `route_localnet`, which opens the node to martian traffic).
    #[default]
    AllLocal,
    /// Only local addresses inside these blocks.
    Cidrs(Vec<Cidr>),
}

impl NodePortAddrs {
    /// Parses `--nodeport-addresses`: a comma-separated CIDR list; empty means every local
    /// address.
    pub fn parse(s: &str) -> Result<Self, CidrError> {
        let cidrs = s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(Cidr::from_str).collect::<Result<Vec<_>, _>>()?;
        if cidrs.is_empty() { Ok(NodePortAddrs::AllLocal) } else { Ok(NodePortAddrs::Cidrs(cidrs)) }
    }

    /// Whether a connection that reached the listener with this destination may be a NodePort.
    ///
    /// The netfilter rules already admitted only local addresses, so for `AllLocal` this is
    /// just the loopback exclusion; it matters when the rules and the table are momentarily out
    /// of step (a VIP removed from the table but its rule not yet gone).
    pub fn matches(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match self {
            NodePortAddrs::AllLocal => !ip.is_loopback(),
            NodePortAddrs::Cidrs(c) => c.iter().any(|c| c.contains(ip)),
        }
    }

    pub fn v4(&self) -> impl Iterator<Item = &Cidr> {
        self.cidrs().iter().filter(|c| c.addr.is_ipv4())
    }

    pub fn v6(&self) -> impl Iterator<Item = &Cidr> {
        self.cidrs().iter().filter(|c| c.addr.is_ipv6())
    }

    fn cidrs(&self) -> &[Cidr] {
        match self {
            NodePortAddrs::AllLocal => &[],
            NodePortAddrs::Cidrs(c) => c,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
    }

    #[test]
    fn cidr_parses_masks_and_matches() {
        let c: Cidr = "10.1.2.3/16".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.to_string(), "10.1.0.0/16");
        assert!(c.contains(ip("10.1.255.1")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(!c.contains(ip("fd00::1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "v4-mapped is the v4 address");
        let host: Cidr = "fd00::5".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(host.to_string(), "fd00::5/128");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        let all: Cidr = "0.0.0.0/0".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(all.contains(ip("192.0.2.1")));
    }

    #[test]
    fn nodeport_addrs_default_excludes_loopback() {
        let d = NodePortAddrs::parse("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d, NodePortAddrs::AllLocal);
        assert!(d.matches(ip("10.0.0.1")));
        assert!(!d.matches(ip("127.0.0.1")));
        assert!(!d.matches(ip("::1")));
        let c = NodePortAddrs::parse("10.0.0.0/24, fd00::/64").unwrap_or_else(|e| panic!("{e}"));
        assert!(c.matches(ip("10.0.0.1")));
        assert!(!c.matches(ip("10.0.1.1")));
        assert_eq!(c.v4().count(), 1);
        assert_eq!(c.v6().count(), 1);
    }
}
