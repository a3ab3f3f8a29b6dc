//! Who owns the interception in this network namespace.
//!
//! The running instance holds an abstract Unix socket named after its nft table
//! (`@tpvs/<table>`) bound for its whole life. Abstract names belong to the network namespace
//! and vanish with the process that bound them (even on SIGKILL), so the name is taken exactly
//! while an owner lives, and a crash never leaves a stale lock behind. A second `tpvs run` with
//! the same table finds the name taken and stops before touching any rule; `tpvs cleanup`
//! refuses for the same reason.
//!
//! Whoever connects gets a hello: a version byte, then the owner's pid (u32, little endian).
//! The pid is also read with `SO_PEERCRED`, which the kernel fills from the listener and the
//! owner cannot forge; the hello is what a later hand-over protocol extends.

use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::Duration;

use tracing::debug;

/// Version of what the owner says on its socket.
pub const HELLO_VERSION: u8 = 1;

/// How long a probe waits for the owner's hello.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error(
        "another tpvs owns nft table {table:?} in this network namespace ({}); stop it first, or use another --nft-table",
        owner_text(*.pid)
    )]
    Taken { table: String, pid: Option<u32> },
    #[error("cannot claim the ownership socket for nft table {table:?}: {source}")]
    Io {
        table: String,
        #[source]
        source: std::io::Error,
    },
}

pub fn owner_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}"))
}

/// The abstract socket name for `table`.
pub fn lock_name(table: &str) -> String {
    format!("tpvs/{table}")
}

fn address(table: &str) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(lock_name(table).as_bytes())
}

/// The ownership of one nft table, held while this value lives.
#[derive(Debug)]
pub struct Ownership {
    table: String,
}

impl Ownership {
    /// Claims `table` for this process, or says who holds it. On success a thread answers
    /// probes for the life of the process (the socket is never closed before exit: the
    /// interception is removed before the process ends, and the name must not be free before
    /// that).
    pub fn claim(table: &str) -> Result<Ownership, OwnershipError> {
        let io = |source| OwnershipError::Io { table: table.to_string(), source };
        let addr = address(table).map_err(io)?;
        let listener = match UnixListener::bind_addr(&addr) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(OwnershipError::Taken { table: table.to_string(), pid: owner(table).ok().flatten().and_then(|o| o.pid) });
            }
            Err(e) => return Err(io(e)),
        };
        std::thread::Builder::new().name("tpvs-owner".into()).spawn(move || answer(listener)).map_err(io)?;
        Ok(Ownership { table: table.to_string() })
    }

    pub fn table(&self) -> &str {
        &self.table
    }
}

/// What a probe learned about the owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// As seen from this process: `SO_PEERCRED` when the owner is in our pid namespace,
    /// else the pid its hello states (in its own pid namespace).
    pub pid: Option<u32>,
    /// The hello's version byte, when the owner sent one in time.
    pub version: Option<u8>,
}

/// The current owner of `table` in this network namespace, if any.
pub fn owner(table: &str) -> std::io::Result<Option<Owner>> {
    let addr = address(table)?;
    let mut stream = match UnixStream::connect_addr(&addr) {
        Ok(s) => s,
        // Nobody bound the name.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
        Err(e) => return Err(e),
    };
    let cred_pid = peer_pid(&stream);
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    let mut hello = [0u8; 5];
    let (version, hello_pid) = match stream.read_exact(&mut hello) {
        Ok(()) => (Some(hello[0]), Some(u32::from_le_bytes([hello[1], hello[2], hello[3], hello[4]]))),
        Err(e) => {
            debug!(error = %e, "no hello from the owner");
            (None, None)
        }
    };
    Ok(Some(Owner { pid: cred_pid.or(hello_pid), version }))
}

/// Accepts probes and says hello; runs for the life of the process.
fn answer(listener: UnixListener) {
    let mut hello = [0u8; 5];
    hello[0] = HELLO_VERSION;
    hello[1..].copy_from_slice(&std::process::id().to_le_bytes());
    for conn in listener.incoming() {
        match conn {
            Ok(mut s) => {
                // A probe that does not read gets nothing more: never block on it.
                let _ = s.set_write_timeout(Some(PROBE_TIMEOUT));
                let _ = s.write_all(&hello);
            }
            Err(e) => {
                debug!(error = %e, "ownership socket accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The pid of the process that bound the peer listener (`SO_PEERCRED`).
fn peer_pid(stream: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket fd, and `cred`/`len` describe a writable ucred.
    let rc = unsafe {
        libc::getsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &raw mut len)
    };
    (rc == 0 && cred.pid > 0).then(|| cred.pid.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table name no other test process uses (abstract names are shared by the namespace).
    fn unique(name: &str) -> String {
        format!("test-{}-{name}", std::process::id())
    }

    #[test]
    fn a_second_claim_fails_naming_the_owner_pid() {
        let table = unique("second");
        let first = Ownership::claim(&table).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.table(), table);
        let err = Ownership::claim(&table).err().map(|e| e.to_string()).unwrap_or_default();
        let pid = std::process::id();
        assert!(err.contains("another tpvs owns nft table") && err.contains(&format!("pid {pid}")), "{err}");
        let o = owner(&table).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o, Some(Owner { pid: Some(pid), version: Some(HELLO_VERSION) }));
    }

    #[test]
    fn nobody_owns_an_unclaimed_table() {
        assert_eq!(owner(&unique("free")).ok().flatten(), None);
    }
}
