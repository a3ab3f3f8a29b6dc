//! What `tpvs explain` is asked: DEST, `--from` and `--protocol`, checked before anything
//! is read, so bad input costs one clear line and exit code 2.

use std::net::{IpAddr, SocketAddr};

use controlplane::Protocol;

/// Where the packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// An address and port: a ClusterIP, load-balancer or external IP, or a node address.
    Addr(SocketAddr),
    /// A bare port: a NodePort on this node.
    NodePort(u16),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Addr(a) => a.fmt(f),
            Destination::NodePort(p) => write!(f, "NodePort {p}"),
        }
    }
}

/// One question: a packet from `client` to `destination` over `protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub destination: Destination,
    /// The client's address; port 0 when `--from` gave none.
    pub client: Option<SocketAddr>,
    pub protocol: Protocol,
}

/// Bad input: the message is the whole answer (one line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

fn port(s: &str, what: &str) -> Result<u16, InputError> {
    let n: u64 = s.parse().map_err(|_| InputError(format!("{what}: {s:?} is not a port number")))?;
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| InputError(format!("{what}: port {n} is out of range 1-65535")))
}

fn ip(s: &str, what: &str) -> Result<IpAddr, InputError> {
    s.parse().map_err(|_| InputError(format!("{what}: {s:?} is not an IP address")))
}

/// `IP:PORT`, `[IPv6]:PORT`; with `port_optional`, also a bare IP (port 0).
fn addr(s: &str, what: &str, port_optional: bool) -> Result<SocketAddr, InputError> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) =
            rest.split_once(']').ok_or_else(|| InputError(format!("{what}: {s:?} has no closing ']'")))?;
        let host = ip(host, what)?;
        if !host.is_ipv6() {
            return Err(InputError(format!("{what}: brackets are for IPv6 addresses, {host} is IPv4")));
        }
        return match tail.strip_prefix(':') {
            Some(p) => Ok(SocketAddr::new(host, port(p, what)?)),
            None if tail.is_empty() && port_optional => Ok(SocketAddr::new(host, 0)),
            None => Err(InputError(format!("{what}: {s:?} needs a port: [{host}]:PORT"))),
        };
    }
    match s.matches(':').count() {
        0 if port_optional => Ok(SocketAddr::new(ip(s, what)?, 0)),
        0 => Err(InputError(format!("{what}: {s:?} needs a port: IP:PORT, or a bare PORT for a NodePort"))),
        1 => {
            let (host, p) = s.split_once(':').unwrap_or((s, ""));
            Ok(SocketAddr::new(ip(host, what)?, port(p, what)?))
        }
        // Several colons: an IPv6 address. Without brackets a port cannot be told apart from
        // the address's last group, so a port needs them; a client may be a bare address.
        _ => match s.parse::<IpAddr>() {
            Ok(a) if port_optional => Ok(SocketAddr::new(a, 0)),
            _ => Err(InputError(format!("{what}: an IPv6 address with a port needs brackets: [ADDRESS]:PORT (got {s:?})"))),
        },
    }
}

impl Query {
    /// Checks the command line's DEST, `--from` and protocol.
    pub fn parse(destination: &str, from: Option<&str>, protocol: Protocol) -> Result<Query, InputError> {
        let d = destination.trim();
        let destination = if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) {
            Destination::NodePort(port(d, "DEST")?)
        } else if d.is_empty() {
            return Err(InputError("DEST is empty: give IP:PORT, [IPv6]:PORT, or a bare PORT for a NodePort".into()));
        } else {
            Destination::Addr(addr(d, "DEST", false)?)
        };
        let client = from.map(|f| addr(f, "--from", true)).transpose()?;
        if let (Destination::Addr(d), Some(c)) = (destination, client)
            && d.is_ipv4() != c.is_ipv4()
        {
            let fam = |a: SocketAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(InputError(format!(
                "--from {} is {} but DEST {} is {}: a packet keeps its family",
                c.ip(),
                fam(c),
                d,
                fam(d)
            )));
        }
        Ok(Query { destination, client, protocol })
    }

    /// Whether the client is IPv6 (a bare NodePort follows the client's family; IPv4 without
    /// one).
    pub fn v6(&self) -> bool {
        match (self.destination, self.client) {
            (Destination::Addr(a), _) => a.is_ipv6(),
            (Destination::NodePort(_), Some(c)) => c.is_ipv6(),
            (Destination::NodePort(_), None) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(d: &str, from: Option<&str>) -> Result<Query, String> {
        Query::parse(d, from, Protocol::Tcp).map_err(|e| e.0)
    }

    #[test]
    fn destinations_parse() {
        assert_eq!(q("10.96.0.10:80", None).map(|q| q.destination), Ok(Destination::Addr("10.96.0.10:80".parse().unwrap_or_else(|e| panic!("{e}")))));
        assert_eq!(q("[fd00::10]:80", None).map(|q| q.destination.to_string()), Ok("[fd00::10]:80".into()));
        assert_eq!(q("30080", None).map(|q| q.destination), Ok(Destination::NodePort(30080)));
        let c = q("10.96.0.10:80", Some("10.0.0.5")).map(|q| q.client);
        assert_eq!(c, Ok(Some("10.0.0.5:0".parse().unwrap_or_else(|e| panic!("{e}")))));
        assert!(q("30080", Some("fd00::5")).is_ok_and(|q| q.v6()));
    }

    #[test]
    fn bad_input_says_what_is_wrong_in_one_line() {
        for (d, from, want) in [
            ("10.96.0.10", None, "needs a port"),
            ("10.96.0.10:70000", None, "out of range 1-65535"),
            ("10.96.0.10:0", None, "out of range"),
            ("99999", None, "out of range"),
            ("fd00::10:80", None, "needs brackets"),
            ("web:80", None, "is not an IP address"),
            ("10.96.0.10:http", None, "is not a port number"),
            ("[10.0.0.1]:80", None, "brackets are for IPv6"),
            ("10.96.0.10:80", Some("fd00::5"), "--from fd00::5 is IPv6 but DEST 10.96.0.10:80 is IPv4"),
            ("", None, "DEST is empty"),
        ] {
            let got = q(d, from);
            assert!(got.as_ref().is_err_and(|e| e.contains(want) && !e.contains('\n')), "{d:?}: {got:?}");
        }
    }
}
