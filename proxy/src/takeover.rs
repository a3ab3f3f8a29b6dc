//! The successor's side of a hand-over ([`crate::handover`]): find the running owner of our
//! nft table, check that it speaks our protocol and runs with our flags, receive its
//! listeners; later say Ready and become the owner.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use tracing::{info, warn};

use crate::handover::{self, Detached, Flags, Message, ProtocolError};
use crate::listeners::ListenerSet;
use crate::ownership::{self, HandOff, Identity, Ownership};

#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("the running tpvs (pid {pid}) refused the takeover: {reason}")]
    Refused { pid: u32, reason: String },
    #[error(
        "cannot take over from the running tpvs (pid {pid}): its flags differ ({}); start with the same flags, or stop it first",
        .differences.join("; ")
    )]
    Flags { pid: u32, differences: Vec<String> },
    #[error("cannot take over from the running tpvs on nft table {table:?}: {source}")]
    Protocol {
        table: String,
        #[source]
        source: ProtocolError,
    },
    #[error("the running tpvs (pid {pid}) sent listeners that are not ours: {what}")]
    Listeners { pid: u32, what: String },
    /// This instance handed over to the running one (or to a predecessor of it) and is being
    /// replaced: it must not take the node back, only stand by.
    #[error("the running tpvs (pid {pid}) refused the takeover: {reason}")]
    Replaced { pid: u32, reason: String },
}

/// A takeover in progress: the listeners are ours to serve on, the predecessor still serves.
#[derive(Debug)]
pub struct Takeover {
    stream: UnixStream,
    pub predecessor: u32,
    pub predecessor_binary: String,
    /// What this instance will be once it owns the table (it remembers the predecessor).
    pub identity: Identity,
    /// The predecessor's admin and health-check node-port listeners, by address.
    pub admin: Vec<(SocketAddr, OwnedFd)>,
}

/// The predecessor's confirmation that it let go, and what this instance adopted.
#[derive(Debug, Clone, Copy)]
pub struct Released {
    /// Connections the predecessor still relays (not handed over).
    pub open_connections: usize,
    pub connections: usize,
    pub flows: usize,
}

/// Connects to the owner of `flags.nft_table` and receives its listeners. `Ok(None)`: nobody
/// owns the table (start cold). Every error leaves the running instance as it was.
pub fn begin(flags: &Flags, identity: &Identity) -> Result<Option<(Takeover, ListenerSet)>, TakeoverError> {
    let table = flags.nft_table.clone();
    let proto = |source: ProtocolError| TakeoverError::Protocol { table: table.clone(), source };
    let addr = ownership::address(&table).map_err(|e| proto(e.into()))?;
    let mut stream = match UnixStream::connect_addr(&addr) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) => return Err(proto(e.into())),
    };
    stream.set_read_timeout(Some(handover::STEP_TIMEOUT)).map_err(|e| proto(e.into()))?;
    stream.set_write_timeout(Some(handover::STEP_TIMEOUT)).map_err(|e| proto(e.into()))?;
    let (pid, binary, theirs, successor) = match handover::read_message(&mut stream).map_err(proto)? {
        Message::Hello { pid, binary, flags, instance, replaced } => (pid, binary, flags, identity.succeeding(&instance, &replaced)),
        other => {
            return Err(proto(ProtocolError::Io(std::io::Error::other(format!("expected a hello, got {other:?}")))));
        }
    };
    let differences = theirs.differences(flags);
    if !differences.is_empty() {
        return Err(TakeoverError::Flags { pid, differences });
    }
    info!(predecessor = pid, predecessor_binary = %binary, "taking over from the running tpvs");
    let request = Message::TakeOver { binary: handover::binary_version(), flags: flags.clone(), instance: identity.instance.clone() };
    handover::write_message(&mut stream, &request).map_err(proto)?;
    let (tcp, udp, admin) = match handover::read_message(&mut stream).map_err(proto)? {
        Message::Listeners { tcp, udp, admin } => (tcp, udp, admin),
        Message::Refused { reason } if successor.replaced(&identity.instance) => return Err(TakeoverError::Replaced { pid, reason }),
        Message::Refused { reason } => return Err(TakeoverError::Refused { pid, reason }),
        other => {
            return Err(proto(ProtocolError::Io(std::io::Error::other(format!("expected listeners, got {other:?}")))));
        }
    };
    let n: usize = tcp.iter().chain(&udp).map(|p| p.iter().filter(|x| **x).count()).sum();
    let mut fds = handover::recv_fds(&stream, n.saturating_add(admin.len())).map_err(proto)?;
    let admin: Vec<(SocketAddr, OwnedFd)> = admin.into_iter().zip(fds.split_off(n.min(fds.len()))).collect();
    for (addr, fd) in &admin {
        verify(fd, socket2::Type::STREAM, *addr).map_err(|what| TakeoverError::Listeners { pid, what })?;
    }
    let set = ListenerSet::from_fds(&tcp, &udp, fds)
        .ok_or_else(|| TakeoverError::Listeners { pid, what: "descriptor count does not match the announcement".into() })?;
    check(&set, flags).map_err(|what| TakeoverError::Listeners { pid, what })?;
    if set.tcp.len() != flags.workers || (flags.udp_proxy_port != 0 && set.udp.len() != flags.workers) {
        return Err(TakeoverError::Listeners {
            pid,
            what: format!("{} TCP and {} UDP listener pairs for {} workers", set.tcp.len(), set.udp.len(), flags.workers),
        });
    }
    Ok(Some((Takeover { stream, predecessor: pid, predecessor_binary: binary, identity: successor, admin }, set)))
}

/// Each received descriptor must be a listening socket of the right kind on our port.
fn check(set: &ListenerSet, flags: &Flags) -> Result<(), String> {
    for fd in set.tcp.iter().flatten().flatten() {
        verify_port(fd, socket2::Type::STREAM, flags.proxy_port)?;
    }
    for fd in set.udp.iter().flatten().flatten() {
        verify_port(fd, socket2::Type::DGRAM, flags.udp_proxy_port)?;
    }
    Ok(())
}

fn verify_port(fd: &OwnedFd, kind: socket2::Type, port: u16) -> Result<(), String> {
    let s = socket2::SockRef::from(fd);
    let ty = s.r#type().map_err(|e| format!("not a socket: {e}"))?;
    let local = s.local_addr().ok().and_then(|a| a.as_socket()).map(|a| a.port());
    if ty != kind || local != Some(port) {
        return Err(format!("a {ty:?} socket on port {local:?} where a {kind:?} listener on port {port} was expected"));
    }
    Ok(())
}

/// An admin listener must be a TCP socket bound to the address it was announced with.
fn verify(fd: &OwnedFd, kind: socket2::Type, addr: SocketAddr) -> Result<(), String> {
    let s = socket2::SockRef::from(fd);
    let ty = s.r#type().map_err(|e| format!("not a socket: {e}"))?;
    let local = s.local_addr().ok().and_then(|a| a.as_socket());
    // An address announced with port 0 was bound to whatever port the kernel chose.
    let matches = local.is_some_and(|l| l.ip() == addr.ip() && (addr.port() == 0 || l.port() == addr.port()));
    if ty != kind || !matches {
        return Err(format!("a {ty:?} socket on {local:?} where a {kind:?} listener on {addr} was announced"));
    }
    Ok(())
}

/// How long the successor tries to bind the name the predecessor frees.
const CLAIM_WITHIN: Duration = Duration::from_secs(5);

impl Takeover {
    /// Everything is ready here: the predecessor may let go. Adopts its established
    /// connections and flows batch by batch (`data_path` relays them at once, acknowledging
    /// each batch), then claims the name; a failure to claim it (after the predecessor let go)
    /// is returned beside the release, since this instance must serve regardless.
    pub fn finish(mut self, flags: &Flags, data_path: &dyn HandOff) -> Result<(Released, Result<Ownership, ownership::OwnershipError>), TakeoverError> {
        let table = flags.nft_table.clone();
        let proto = |source: ProtocolError| TakeoverError::Protocol { table: table.clone(), source };
        // Until Ready is out, the predecessor has given up nothing: an error here is ours.
        handover::write_message(&mut self.stream, &Message::Ready).map_err(proto)?;
        // The predecessor pauses and takes out every connection before the first batch.
        let _ = self.stream.set_read_timeout(Some(handover::DETACH_TIMEOUT + 2 * handover::STEP_TIMEOUT));
        let (mut connections, mut flows) = (0, 0);
        let released = loop {
            // Adopted batches are ours from their acknowledgement on: whatever fails later,
            // this instance serves. At worst both serve the same sockets and the same rules
            // for a while, never neither.
            match self.adopt_one(data_path) {
                Ok(Some((c, f))) => {
                    connections += c;
                    flows += f;
                }
                Ok(None) => {}
                Err(BatchesEnd::Released(open_connections)) => break Released { open_connections, connections, flows },
                Err(BatchesEnd::Other(answer)) => match *answer {
                    Message::Refused { reason } if connections + flows == 0 => {
                        return Err(TakeoverError::Refused { pid: self.predecessor, reason });
                    }
                    other => {
                        warn!(predecessor = self.predecessor, answer = ?other, connections, flows, "the hand-over of the connections ended without a release; serving what was adopted");
                        break Released { open_connections: 0, connections, flows };
                    }
                },
            }
        };
        // The predecessor frees the name right after Released.
        Ok((released, Ownership::claim_within(flags, &self.identity, CLAIM_WITHIN)))
    }

    /// Reads one message after Ready: a batch (adopted and acknowledged: `Ok(Some(counts))`),
    /// the release (`Err(BatchesEnd::Released(open))`), or anything else (`Err(BatchesEnd::Other)`; a read error
    /// reads as a refusal naming it).
    fn adopt_one(&mut self, data_path: &dyn HandOff) -> Result<Option<(usize, usize)>, BatchesEnd> {
        let fail = |e: ProtocolError| BatchesEnd::Other(Box::new(Message::Refused { reason: e.to_string() }));
        let msg = handover::read_message(&mut self.stream).map_err(fail)?;
        let (what, counts) = match msg {
            Message::Connections { pairs, tail } => {
                let pairs = handover::recv_pairs(&mut self.stream, pairs, tail).map_err(fail)?;
                let n = pairs.len();
                (Detached { pairs, flows: Vec::new() }, (n, 0))
            }
            Message::Flows { flows } => {
                let flows = handover::recv_flows(&mut self.stream, flows).map_err(fail)?;
                let n = flows.len();
                (Detached { pairs: Vec::new(), flows }, (0, n))
            }
            Message::Released { open_connections } => return Err(BatchesEnd::Released(open_connections)),
            other => return Err(BatchesEnd::Other(Box::new(other))),
        };
        data_path.adopt(what);
        handover::write_message(&mut self.stream, &Message::Adopted { count: counts.0 + counts.1 }).map_err(fail)?;
        Ok(Some(counts))
    }
}

/// What ends the stream of batches after `Ready`.
enum BatchesEnd {
    /// The predecessor released everything, with this many connections still open on its side.
    Released(usize),
    /// Any other message (a refusal; a read error reads as one). Boxed: a message is large,
    /// and every batch's result would be as large.
    Other(Box<Message>),
}

#[cfg(test)]
mod tests {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::UnixListener;

    use super::*;

    fn flags(table: &str) -> Flags {
        Flags { nft_table: table.into(), fwmark: 0x7470, route_table: 7470, proxy_port: 15001, udp_proxy_port: 0, workers: 1 }
    }

    /// A fake owner of a table no other test uses, answering one successor with `script`.
    fn fake_owner(name: &str, script: impl FnOnce(UnixStream) + Send + 'static) -> Flags {
        let table = format!("test-{}-{name}", std::process::id());
        let addr = ownership::address(&table).unwrap_or_else(|e| panic!("{e}"));
        let listener = UnixListener::bind_addr(&addr).unwrap_or_else(|e| panic!("{e}"));
        std::thread::spawn(move || {
            if let Ok((s, _)) = listener.accept() {
                script(s);
            }
        });
        flags(&table)
    }

    fn error(flags: &Flags) -> String {
        match begin(flags, &Identity::default()) {
            Ok(_) => String::from("took over"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn nobody_to_take_over_from_is_a_cold_start() {
        assert!(matches!(begin(&flags(&format!("test-{}-nobody", std::process::id())), &Identity::default()), Ok(None)));
    }

    #[test]
    fn an_owner_speaking_another_protocol_version_is_refused_clearly() {
        let f = fake_owner("version", |mut s| {
            let _ = std::io::Write::write_all(&mut s, &[9, 2, 0, 0, 0, b'{', b'}']);
            std::thread::sleep(Duration::from_millis(200));
        });
        let e = error(&f);
        assert!(e.contains("the peer speaks hand-over protocol version 9; this binary speaks 3"), "{e}");
    }

    #[test]
    fn an_owner_with_other_flags_is_named_flag_by_flag() {
        let f = fake_owner("flags", |mut s| {
            let Ok(table) = ownership_table(&s) else { return };
            let theirs = Flags { fwmark: 0x1, ..flags(&table) };
            let _ = handover::write_message(&mut s, &Message::Hello { pid: 42, binary: "0.0.0".into(), flags: theirs, instance: String::new(), replaced: Vec::new() });
            std::thread::sleep(Duration::from_millis(200));
        });
        let e = error(&f);
        assert!(e.contains("the running tpvs (pid 42)") && e.contains("--fwmark: running 0x1, this one 0x7470"), "{e}");
    }

    #[test]
    fn listeners_that_are_not_ours_are_refused() {
        let f = fake_owner("wrong", |mut s| {
            let Ok(table) = ownership_table(&s) else { return };
            let _ = handover::write_message(&mut s, &Message::Hello { pid: 42, binary: "x".into(), flags: flags(&table), instance: String::new(), replaced: Vec::new() });
            if !matches!(handover::read_message(&mut s), Ok(Message::TakeOver { .. })) {
                return;
            }
            // A TCP listener on another port where ours was announced.
            let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") else { return };
            let _ = handover::write_message(&mut s, &Message::Listeners { tcp: vec![[true, false]], udp: vec![], admin: vec![] });
            let _ = handover::send_fds(&s, &[OwnedFd::from(l)]);
            std::thread::sleep(Duration::from_millis(200));
        });
        let e = error(&f);
        assert!(e.contains("sent listeners that are not ours") && e.contains("listener on port 15001 was expected"), "{e}");
    }

    /// The table a fake owner serves, read back from its own socket's name.
    fn ownership_table(s: &UnixStream) -> Result<String, ()> {
        let addr = s.local_addr().map_err(|_| ())?;
        let name = addr.as_abstract_name().ok_or(())?;
        Ok(String::from_utf8_lossy(name).trim_start_matches("tpvs/").to_string())
    }
}
