//! The hand-over protocol: how a running `tpvs run` gives its listeners and its rules to a
//! successor (an upgrade, a restart with the same flags) without one SYN or datagram meeting
//! a closed port.
//!
//! It is spoken on the ownership socket ([`crate::ownership`]), the abstract Unix socket
//! `@tpvs/<nft-table>`. Abstract names belong to the network namespace: instances in other
//! namespaces never find each other, and the name dies with its process (no stale path after
//! a crash; nothing to put on a hostPath). Only a peer with the owner's uid, or root, is
//! answered (`SO_PEERCRED`, filled by the kernel).
//!
//! Every message is a frame: one byte of protocol version ([`PROTOCOL`]), a u32 body length
//! (little endian, at most [`MAX_FRAME`]), then a JSON body ([`Message`]). Descriptors travel
//! with `SCM_RIGHTS` on a one-byte message right after the frame that announces them.
//!
//! ```text
//! successor                         running instance (predecessor)
//!     connect  ──────────────────▶
//!              ◀──────────────────  Hello { pid, binary, flags, instance, replaced }
//!     TakeOver { binary, flags,   ─▶   (version, flags and instance checked: Refused { reason }
//!                instance }             ends it)
//!              ◀──────────────────  Listeners { tcp, udp, admin } + SCM_RIGHTS (every
//!                                     listener, the admin and health-check ones too)
//!   workers start on those sockets, table published, rules re-synced (adopted, not re-made)
//!     Ready  ────────────────────▶    stops accepting, closes its copies, frees the name
//!              ◀──────────────────  Released { open_connections }
//!   binds the name; is the owner      drains its open connections, exits 0, rules kept
//! ```
//!
//! Instance identities (`--instance-id`, the pod's UID in the DaemonSet) stop a ping-pong: an
//! old pod's container that exits 0 after handing over is restarted by the kubelet, and would
//! take the node back from the new pod. The owner remembers who handed over to it (and to its
//! predecessors: `replaced`), refuses a takeover from any of them, and the refused instance
//! stands by, owning nothing, until it is stopped.
//!
//! The predecessor gives up nothing before `Ready`: a successor that fails, hangs or lies
//! before that leaves it serving as before. A probe (`tpvs cleanup`) reads the hello and
//! hangs up. Not handed over yet: established TCP connections (the predecessor relays them
//! until they end, up to `--shutdown-grace`) and UDP flows (their replies keep flowing through
//! the predecessor's upstream sockets until it exits; the client's next datagram after the
//! hand-over opens a flow in the successor). The admin and health-check node-port listeners
//! pass like the data path's: the successor serves the same accept queues once the
//! predecessor has let go, so no probe is refused or reset.

use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Version of the hand-over protocol. Bump it for any change in the messages' meaning; both
/// sides refuse a version they do not speak.
pub const PROTOCOL: u8 = 3;

/// Largest frame body accepted (a hello with the longest flags is well under 1 KiB).
pub const MAX_FRAME: u32 = 64 * 1024;

/// Descriptors per `SCM_RIGHTS` message (the kernel's limit is 253).
const FDS_PER_MESSAGE: usize = 200;

/// Most descriptors a hand-over carries (4 listeners per worker).
pub const MAX_FDS: usize = 4096;

/// The binary's version, stated in hellos (for logs; compatibility is [`PROTOCOL`]).
pub fn binary_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// The flags both instances must share: a successor with different ones would inherit
/// listeners on the wrong port, or rules marking for another route table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flags {
    pub nft_table: String,
    pub fwmark: u32,
    pub route_table: u32,
    pub proxy_port: u16,
    pub udp_proxy_port: u16,
    /// Resolved (`--workers 0` is the CPU count): one listener pair per worker.
    pub workers: usize,
}

impl Flags {
    /// Each flag that differs, as `--flag: running X, this one Y`.
    pub fn differences(&self, mine: &Flags) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |flag: &str, theirs: String, ours: String| {
            if theirs != ours {
                out.push(format!("{flag}: running {theirs}, this one {ours}"));
            }
        };
        cmp("--nft-table", self.nft_table.clone(), mine.nft_table.clone());
        cmp("--fwmark", format!("{:#x}", self.fwmark), format!("{:#x}", mine.fwmark));
        cmp("--route-table", self.route_table.to_string(), mine.route_table.to_string());
        cmp("--proxy-port", self.proxy_port.to_string(), mine.proxy_port.to_string());
        cmp("--udp-proxy-port", self.udp_proxy_port.to_string(), mine.udp_proxy_port.to_string());
        cmp("--workers", self.workers.to_string(), mine.workers.to_string());
        out
    }
}

/// What is said on the hand-over socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    Hello {
        pid: u32,
        binary: String,
        flags: Flags,
        /// The owner's `--instance-id` (empty: none given).
        #[serde(default)]
        instance: String,
        /// The instances that handed over to the owner, directly or through its
        /// predecessors (most recent last): none of them may take over again.
        #[serde(default)]
        replaced: Vec<String>,
    },
    TakeOver {
        binary: String,
        flags: Flags,
        /// The successor's `--instance-id` (empty: none given, never refused for it).
        #[serde(default)]
        instance: String,
    },
    Refused {
        reason: String,
    },
    /// Listeners present per worker (`[v4, v6]`), then the admin servers' listeners (metrics,
    /// `/healthz`, health-check node ports) by address; their descriptors follow, in that order.
    Listeners {
        tcp: Vec<[bool; 2]>,
        udp: Vec<[bool; 2]>,
        #[serde(default)]
        admin: Vec<std::net::SocketAddr>,
    },
    Ready,
    Released {
        open_connections: usize,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the peer speaks hand-over protocol version {theirs}; this binary speaks {PROTOCOL}")]
    Version { theirs: u8 },
    #[error("a hand-over frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLong(u32),
    #[error("a malformed hand-over message: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("the peer hung up")]
    Closed,
    #[error("expected {expected} descriptors, got {got}")]
    Descriptors { expected: usize, got: usize },
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub fn write_message(stream: &mut UnixStream, msg: &Message) -> Result<(), ProtocolError> {
    let body = serde_json::to_vec(msg).map_err(ProtocolError::Malformed)?;
    let len = u32::try_from(body.len()).map_err(|_| ProtocolError::TooLong(u32::MAX))?;
    let mut frame = Vec::with_capacity(5 + body.len());
    frame.push(PROTOCOL);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame)?;
    Ok(())
}

/// Reads one frame (within the stream's read timeout). A clean hang-up before the first byte
/// is [`ProtocolError::Closed`]; one inside a frame is an I/O error (truncated).
pub fn read_message(stream: &mut UnixStream) -> Result<Message, ProtocolError> {
    let mut version = [0u8; 1];
    if stream.read(&mut version)? == 0 {
        return Err(ProtocolError::Closed);
    }
    if version[0] != PROTOCOL {
        return Err(ProtocolError::Version { theirs: version[0] });
    }
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLong(len));
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(ProtocolError::Malformed)
}

/// Sends `fds` with `SCM_RIGHTS`, in order, in as many one-byte messages as needed.
pub fn send_fds(stream: &UnixStream, fds: &[OwnedFd]) -> Result<(), ProtocolError> {
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        let raw: Vec<RawFd> = chunk.iter().map(|f| f.as_raw_fd()).collect();
        sendmsg_fds(stream.as_raw_fd(), &raw)?;
    }
    Ok(())
}

/// Receives exactly `n` descriptors sent by [`send_fds`] (close-on-exec).
pub fn recv_fds(stream: &UnixStream, n: usize) -> Result<Vec<OwnedFd>, ProtocolError> {
    if n > MAX_FDS {
        return Err(ProtocolError::Descriptors { expected: MAX_FDS, got: n });
    }
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let want = (n - out.len()).min(FDS_PER_MESSAGE);
        let got = recvmsg_fds(stream.as_raw_fd(), want)?;
        if got.is_empty() {
            return Err(ProtocolError::Descriptors { expected: n, got: out.len() });
        }
        out.extend(got);
    }
    if out.len() != n {
        return Err(ProtocolError::Descriptors { expected: n, got: out.len() });
    }
    Ok(out)
}

/// A control buffer for `payload` bytes of ancillary data, and its size in bytes (u64
/// elements keep it aligned for `cmsghdr`).
fn control_buffer(payload: usize) -> (Vec<u64>, usize) {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    (vec![0u64; space.div_ceil(8)], space)
}

/// A message header carrying one data byte (`iov`) and the ancillary `control` buffer.
fn one_byte_msghdr(iov: &mut libc::iovec, control: &mut [u64], space: usize) -> libc::msghdr {
    // SAFETY: zeroed msghdr is a valid "no name, no data" header; fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    msg
}

fn sendmsg_fds(sock: RawFd, fds: &[RawFd]) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let payload = std::mem::size_of_val(fds);
    let (mut control, space) = control_buffer(payload);
    let msg = one_byte_msghdr(&mut iov, &mut control, space);
    // SAFETY: the control buffer is `space` bytes, enough for one header and `payload` bytes
    // (CMSG_SPACE); CMSG_FIRSTHDR is non-null for a buffer that large.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
    }
    loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let rc = unsafe { libc::sendmsg(sock, &raw const msg, libc::MSG_NOSIGNAL) };
        if rc >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn recvmsg_fds(sock: RawFd, max: usize) -> Result<Vec<OwnedFd>, ProtocolError> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let payload = max * std::mem::size_of::<RawFd>();
    let (mut control, space) = control_buffer(payload);
    let mut msg = one_byte_msghdr(&mut iov, &mut control, space);
    let rc = loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let rc = unsafe { libc::recvmsg(sock, &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        if rc >= 0 {
            break rc;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e.into());
        }
    };
    if rc == 0 {
        return Err(ProtocolError::Closed);
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg`'s control area; the CMSG_* walk stays within
    // `msg_controllen`, and each SCM_RIGHTS payload holds descriptors now owned by this
    // process (taken into OwnedFd at once, so none leaks even on the error below).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(ProtocolError::Descriptors { expected: max, got: fds.len() });
    }
    Ok(fds)
}

/// The uid of the peer (`SO_PEERCRED`), filled by the kernel at connect.
pub fn peer_uid(stream: &UnixStream) -> Option<u32> {
    peer_cred(stream).map(|c| c.uid)
}

/// The peer's credentials (`SO_PEERCRED`).
pub fn peer_cred(stream: &UnixStream) -> Option<libc::ucred> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket fd, and `cred`/`len` describe a writable ucred.
    let rc = unsafe { libc::getsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &raw mut len) };
    (rc == 0).then_some(cred)
}

/// Whether a peer with `uid` may take over from this process: the same user, or root.
pub fn may_take_over(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    uid == 0 || uid == me
}

/// How long each step of a hand-over may take before the side waiting gives up (the
/// predecessor then keeps serving).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the predecessor waits for `Ready` after sending the listeners: the successor
/// loads its routing table first (the API source lists every Service and EndpointSlice).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Flags {
        Flags { nft_table: "tpvs".into(), fwmark: 0x1, route_table: 100, proxy_port: 15001, udp_proxy_port: 15002, workers: 2 }
    }

    #[test]
    fn messages_round_trip_and_differences_name_the_flag() {
        let (mut a, mut b) = UnixStream::pair().unwrap_or_else(|e| panic!("{e}"));
        let msg = Message::Hello { pid: 7, binary: binary_version(), flags: flags(), instance: "pod-a".into(), replaced: vec!["pod-0".into()] };
        write_message(&mut a, &msg).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_message(&mut b).ok(), Some(msg));
        let other = Flags { fwmark: 0x2, workers: 4, ..flags() };
        assert_eq!(flags().differences(&other), ["--fwmark: running 0x1, this one 0x2", "--workers: running 2, this one 4"]);
        assert!(flags().differences(&flags()).is_empty());
    }

    #[test]
    fn bad_frames_are_clear_errors() {
        let cases: [(&[u8], &str); 4] = [
            (&[2, 0, 0, 0, 0], "version 2"),
            (&[PROTOCOL, 255, 255, 255, 255], "over the"),
            (&[PROTOCOL, 3, 0, 0, 0, b'{', b'x', b'}'], "malformed"),
            (&[PROTOCOL, 9, 0, 0, 0, b'{'], "failed to fill whole buffer"),
        ];
        for (bytes, want) in cases {
            let (mut a, mut b) = UnixStream::pair().unwrap_or_else(|e| panic!("{e}"));
            a.write_all(bytes).unwrap_or_else(|e| panic!("{e}"));
            drop(a);
            let err = read_message(&mut b).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(want), "{bytes:?}: {err}");
        }
    }

    #[test]
    fn descriptors_pass_in_order_across_chunks() {
        let (a, b) = UnixStream::pair().unwrap_or_else(|e| panic!("{e}"));
        let n = FDS_PER_MESSAGE + 3;
        let mut files = Vec::new();
        for _ in 0..n {
            let (x, _y) = UnixStream::pair().unwrap_or_else(|e| panic!("{e}"));
            files.push(OwnedFd::from(x));
        }
        let inodes: Vec<u64> = files.iter().map(|f| inode(f.as_raw_fd())).collect();
        send_fds(&a, &files).unwrap_or_else(|e| panic!("{e}"));
        let got = recv_fds(&b, n).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.iter().map(|f| inode(f.as_raw_fd())).collect::<Vec<_>>(), inodes);
    }

    fn inode(fd: RawFd) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{fd}")).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0)
    }
}
