//! The successor's side of a hand-over ([`crate::handover`]): find the running owner of our
//! nft table, check that it speaks our protocol and runs with our flags, receive its
//! listeners; later say Ready and become the owner.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use tracing::info;

use crate::handover::{self, Flags, Message, ProtocolError};
use crate::listeners::ListenerSet;
use crate::ownership::{self, Ownership};

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
}

/// A takeover in progress: the listeners are ours to serve on, the predecessor still serves.
#[derive(Debug)]
pub struct Takeover {
    stream: UnixStream,
    pub predecessor: u32,
    pub predecessor_binary: String,
}

/// The predecessor's confirmation that it let go.
#[derive(Debug, Clone, Copy)]
pub struct Released {
    pub open_connections: usize,
}

/// Connects to the owner of `flags.nft_table` and receives its listeners. `Ok(None)`: nobody
/// owns the table (start cold). Every error leaves the running instance as it was.
pub fn begin(flags: &Flags) -> Result<Option<(Takeover, ListenerSet)>, TakeoverError> {
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
    let (pid, binary, theirs) = match handover::read_message(&mut stream).map_err(proto)? {
        Message::Hello { pid, binary, flags } => (pid, binary, flags),
        other => {
            return Err(proto(ProtocolError::Io(std::io::Error::other(format!("expected a hello, got {other:?}")))));
        }
    };
    let differences = theirs.differences(flags);
    if !differences.is_empty() {
        return Err(TakeoverError::Flags { pid, differences });
    }
    info!(predecessor = pid, predecessor_binary = %binary, "taking over from the running tpvs");
    handover::write_message(&mut stream, &Message::TakeOver { binary: handover::binary_version(), flags: flags.clone() }).map_err(proto)?;
    let (tcp, udp) = match handover::read_message(&mut stream).map_err(proto)? {
        Message::Listeners { tcp, udp } => (tcp, udp),
        Message::Refused { reason } => return Err(TakeoverError::Refused { pid, reason }),
        other => {
            return Err(proto(ProtocolError::Io(std::io::Error::other(format!("expected listeners, got {other:?}")))));
        }
    };
    let n = tcp.iter().chain(&udp).map(|p| p.iter().filter(|x| **x).count()).sum();
    let fds = handover::recv_fds(&stream, n).map_err(proto)?;
    let set = ListenerSet::from_fds(&tcp, &udp, fds)
        .ok_or_else(|| TakeoverError::Listeners { pid, what: "descriptor count does not match the announcement".into() })?;
    check(&set, flags).map_err(|what| TakeoverError::Listeners { pid, what })?;
    if set.tcp.len() != flags.workers || (flags.udp_proxy_port != 0 && set.udp.len() != flags.workers) {
        return Err(TakeoverError::Listeners {
            pid,
            what: format!("{} TCP and {} UDP listener pairs for {} workers", set.tcp.len(), set.udp.len(), flags.workers),
        });
    }
    Ok(Some((Takeover { stream, predecessor: pid, predecessor_binary: binary }, set)))
}

/// Each received descriptor must be a listening socket of the right kind on our port.
fn check(set: &ListenerSet, flags: &Flags) -> Result<(), String> {
    let verify = |fd: &std::os::fd::OwnedFd, kind: socket2::Type, port: u16| -> Result<(), String> {
        let s = socket2::SockRef::from(fd);
        let ty = s.r#type().map_err(|e| format!("not a socket: {e}"))?;
        let local = s.local_addr().ok().and_then(|a| a.as_socket()).map(|a| a.port());
        if ty != kind || local != Some(port) {
            return Err(format!("a {ty:?} socket on port {local:?} where a {kind:?} listener on port {port} was expected"));
        }
        Ok(())
    };
    for fd in set.tcp.iter().flatten().flatten() {
        verify(fd, socket2::Type::STREAM, flags.proxy_port)?;
    }
    for fd in set.udp.iter().flatten().flatten() {
        verify(fd, socket2::Type::DGRAM, flags.udp_proxy_port)?;
    }
    Ok(())
}

/// How long the successor tries to bind the name the predecessor frees.
const CLAIM_WITHIN: Duration = Duration::from_secs(5);

impl Takeover {
    /// Everything is ready here: the predecessor may let go. Then claims the name; a failure
    /// to claim it (after the predecessor let go) is returned beside the release, since this
    /// instance must serve regardless.
    pub fn finish(mut self, flags: &Flags) -> Result<(Released, Result<Ownership, ownership::OwnershipError>), TakeoverError> {
        let table = flags.nft_table.clone();
        let proto = |source: ProtocolError| TakeoverError::Protocol { table: table.clone(), source };
        handover::write_message(&mut self.stream, &Message::Ready).map_err(proto)?;
        let released = match handover::read_message(&mut self.stream).map_err(proto)? {
            Message::Released { open_connections } => Released { open_connections },
            Message::Refused { reason } => {
                return Err(TakeoverError::Refused { pid: self.predecessor, reason });
            }
            other => {
                return Err(proto(ProtocolError::Io(std::io::Error::other(format!("expected released, got {other:?}")))));
            }
        };
        // The predecessor frees the name right after Released.
        Ok((released, Ownership::claim_within(flags, CLAIM_WITHIN)))
    }
}
