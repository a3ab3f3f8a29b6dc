//! The hand-over protocol: how a running `tpvs run` gives its listeners, its rules and its
//! established connections and UDP flows to a successor (an upgrade, a restart with the same
//! flags) without one SYN or datagram meeting a closed port and without one connection cut.
//!
//! It is spoken on the ownership socket ([`crate::ownership`]), the abstract Unix socket
//! `@tpvs/<nft-table>`. Abstract names belong to the network namespace: instances in other
//! namespaces never find each other, and the name dies with its process (no stale path after
//! a crash; nothing to put on a hostPath). Only a peer with the owner's uid, or root, is
//! answered (`SO_PEERCRED`, filled by the kernel).
//!
//! Every message is a frame: one byte of protocol version ([`PROTOCOL`]), a u32 body length
//! (little endian, at most [`MAX_FRAME`]), then a JSON body ([`Message`]). Descriptors travel
//! with `SCM_RIGHTS` on a one-byte message right after the frame that announces them (and
//! after its tail, for [`Message::Connections`]).
//!
//! ```text
//! successor                         running instance (predecessor)
//!     connect  ──────────────────▶
//!              ◀──────────────────  Hello { pid, binary, flags, instance, replaced }
//!     TakeOver { binary, flags,   ─▶   (version, flags and instance checked: Refused { reason }
//!                instance }             ends it)
//!              ◀──────────────────  Listeners { tcp, udp, admin } + SCM_RIGHTS (every
//!                                     listener, the admin and health-check ones too)
//!   workers start on those sockets (gate closed), table published, rules re-synced
//!     Ready  ────────────────────▶    stops accepting (listeners kept), pauses every relay
//!                                     and flow at a safe point, takes them out
//!              ◀──────────────────  Connections { pairs, tail } + tail + SCM_RIGHTS (2 per pair)
//!   relays them at once (pending bytes first)
//!     Adopted { count } ─────────▶    closes its copies of that batch
//!              ...                    (batches of PAIRS_PER_BATCH until none is left)
//!              ◀──────────────────  Flows { flows } + SCM_RIGHTS (1 per flow)
//!   each on the worker of the same index
//!     Adopted { count } ─────────▶    (batches of FLOWS_PER_BATCH)
//!              ◀──────────────────  Released { open_connections }
//!   opens its gate, binds the name;   closes its listeners, leaves the rules, frees the
//!   is the owner                      name, exits 0 (logging what it passed)
//! ```
//!
//! Instance identities (`--instance-id`, the pod's UID in the DaemonSet) stop a ping-pong: an
//! old pod's container that exits 0 after handing over is restarted by the kubelet, and would
//! take the node back from the new pod. The owner remembers who handed over to it (and to its
//! predecessors: `replaced`), refuses a takeover from any of them, and the refused instance
//! stands by, owning nothing, until it is stopped.
//!
//! The predecessor gives up nothing before `Ready`: a successor that fails, hangs or lies
//! before that leaves it serving as before. After `Ready` it keeps its copy of every batch
//! (sockets and pending bytes) until the successor acknowledges that batch; if the successor
//! dies, errs or stays silent for [`STEP_TIMEOUT`] first, the predecessor relays every
//! unacknowledged connection and flow itself again, accepts again on the listeners it kept
//! open (SYNs and datagrams queued on them meanwhile), keeps the rules and its name, and a
//! later successor can try again. Once a batch is acknowledged it is the successor's: a
//! successor never gives up after `Ready` (at worst both relay for a moment, never neither).
//! A probe (`tpvs cleanup`) reads the hello and hangs up.
//!
//! # A connection in the middle of a transfer
//!
//! A relay pauses between two reads, never inside one. What tpvs had read and not yet
//! written travels in the frame's tail: at most one copy-buffer spill or one pipe's content
//! per direction ([`MAX_PENDING`]). Everything else stays in the kernel's socket buffers
//! (the client's unsent data, the backend's unread data), which move with the sockets, so a
//! transfer of any size continues byte-exact; the sender only sees its window close for the
//! length of the pause. Half-closes pass as flags: a direction whose end of stream was passed
//! on stays closed. A connection still connecting to its backend when the pause comes is
//! handed over as soon as its relay starts. The successor counts each adopted connection on
//! its backend (the dispatcher's `adopt`), or relays it to its end uncounted by any scheduler
//! when the backend left its table.
//!
//! # UDP flows
//!
//! A flow passes with its connected upstream socket (replies queued on it move with it), its
//! client, destination, backend and timestamps, to the worker of the same index: the
//! listeners are the same `SO_REUSEPORT` sockets, so the kernel keeps giving the client's
//! datagrams to that worker, which finds the flow and its backend. A flow whose backend or
//! frontend the successor's table no longer has is closed, as a table change would close it.
//!
//! # The admin and health-check sockets
//!
//! The admin and health-check node-port listeners pass like the data path's: the successor
//! serves the same accept queues once the predecessor has let go, so no probe is refused or
//! reset.

use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
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
    /// A batch of established TCP connections ([`PAIRS_PER_BATCH`] at most). `tail` bytes
    /// follow the frame: each pair's pending bytes toward the backend, then toward the client,
    /// in pair order; then two descriptors per pair (client side, backend side).
    Connections {
        pairs: Vec<PairRecord>,
        tail: u32,
    },
    /// A batch of UDP flows ([`FLOWS_PER_BATCH`] at most); one descriptor per flow follows
    /// (its connected upstream socket).
    Flows {
        flows: Vec<FlowRecord>,
    },
    /// The successor holds the batch just sent and relays it: the sender may close its copies.
    Adopted {
        count: usize,
    },
    Released {
        open_connections: usize,
    },
}

/// Connections per [`Message::Connections`] batch (two descriptors each, within one
/// `SCM_RIGHTS` message).
pub const PAIRS_PER_BATCH: usize = FDS_PER_MESSAGE / 2;

/// Flows per [`Message::Flows`] batch.
pub const FLOWS_PER_BATCH: usize = FDS_PER_MESSAGE;

/// Most bytes one direction of a connection can have in flight inside tpvs: one read of the
/// copy buffer (64 KiB) or one pipe's content (at most `forward::splice::PIPE_SIZE`, 1 MiB),
/// never both (a direction splices only once its copy spill is written). Anything beyond
/// stays in the kernel's socket buffers, which move with the sockets.
pub const MAX_PENDING: u32 = 1024 * 1024;

/// One established TCP connection as it passes: who talks to whom, what was in flight inside
/// tpvs, and how far it got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairRecord {
    pub client: SocketAddr,
    /// The address the client dialled (names the frontend).
    pub frontend: SocketAddr,
    pub backend: SocketAddr,
    /// Bytes read from the client and not yet written to the backend (in the tail).
    pub pending_to_backend: u32,
    /// Bytes read from the backend and not yet written to the client (in the tail).
    pub pending_to_client: u32,
    /// The client finished sending and its FIN was passed on to the backend.
    pub client_closed: bool,
    /// The backend finished sending and its FIN was passed on to the client.
    pub backend_closed: bool,
    pub bytes_to_backend: u64,
    pub bytes_from_backend: u64,
    /// Since the connection was accepted (by whichever instance accepted it).
    pub age_ms: u64,
}

/// One UDP flow as it passes: the worker whose listener receives its client's datagrams (the
/// same sockets, so the same worker index), its identity and its timestamps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowRecord {
    pub worker: usize,
    pub client: SocketAddr,
    /// The address the client sent to (names the frontend; replies come from it).
    pub dst: SocketAddr,
    pub backend: SocketAddr,
    /// Made for a `Local` frontend (its upstream socket is bound to the client's address).
    pub local: bool,
    pub age_ms: u64,
    pub idle_ms: u64,
    pub replies: u64,
}

/// A connection taken out of a relay at a safe point: its two sockets and the bytes tpvs had
/// read but not yet written.
#[derive(Debug)]
pub struct DetachedPair {
    pub client: OwnedFd,
    pub upstream: OwnedFd,
    pub to_backend: Vec<u8>,
    pub to_client: Vec<u8>,
    pub record: PairRecord,
}

/// A UDP flow taken out of its worker: its connected upstream socket.
#[derive(Debug)]
pub struct DetachedFlow {
    pub upstream: OwnedFd,
    pub record: FlowRecord,
}

/// Everything established that a hand-over moves.
#[derive(Debug, Default)]
pub struct Detached {
    pub pairs: Vec<DetachedPair>,
    pub flows: Vec<DetachedFlow>,
}

impl Detached {
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty() && self.flows.is_empty()
    }
}

/// Sends one batch of connections (at most [`PAIRS_PER_BATCH`]): frame, tail, descriptors.
pub fn send_pairs(stream: &mut UnixStream, batch: &[DetachedPair]) -> Result<(), ProtocolError> {
    let mut tail = Vec::new();
    let mut pairs = Vec::with_capacity(batch.len());
    for p in batch {
        tail.extend_from_slice(&p.to_backend);
        tail.extend_from_slice(&p.to_client);
        let len = |b: &[u8]| u32::try_from(b.len()).map_err(|_| ProtocolError::TooLong(u32::MAX));
        pairs.push(PairRecord { pending_to_backend: len(&p.to_backend)?, pending_to_client: len(&p.to_client)?, ..p.record.clone() });
    }
    let tail_len = u32::try_from(tail.len()).map_err(|_| ProtocolError::TooLong(u32::MAX))?;
    write_message(stream, &Message::Connections { pairs, tail: tail_len })?;
    stream.write_all(&tail)?;
    let fds: Vec<RawFd> = batch.iter().flat_map(|p| [p.client.as_raw_fd(), p.upstream.as_raw_fd()]).collect();
    sendmsg_fds(stream.as_raw_fd(), &fds)?;
    Ok(())
}

/// Receives the tail and descriptors a [`Message::Connections`] announced, after checking the
/// announcement (batch size, pending bytes per direction, tail length).
pub fn recv_pairs(stream: &mut UnixStream, pairs: Vec<PairRecord>, tail: u32) -> Result<Vec<DetachedPair>, ProtocolError> {
    let bad = |what: String| ProtocolError::Io(io::Error::new(io::ErrorKind::InvalidData, what));
    if pairs.len() > PAIRS_PER_BATCH {
        return Err(bad(format!("a batch of {} connections, over {PAIRS_PER_BATCH}", pairs.len())));
    }
    let mut total = 0u64;
    for p in &pairs {
        if p.pending_to_backend > MAX_PENDING || p.pending_to_client > MAX_PENDING {
            return Err(bad(format!("{} pending bytes for one connection, over {MAX_PENDING} per direction", p.pending_to_backend.max(p.pending_to_client))));
        }
        total += u64::from(p.pending_to_backend) + u64::from(p.pending_to_client);
    }
    if total != u64::from(tail) {
        return Err(bad(format!("a tail of {tail} bytes for {total} pending bytes")));
    }
    let mut bytes = vec![0u8; tail as usize];
    stream.read_exact(&mut bytes)?;
    let fds = recv_fds(stream, 2 * pairs.len())?;
    let mut fds = fds.into_iter();
    let mut at = 0usize;
    let mut out = Vec::with_capacity(pairs.len());
    for record in pairs {
        let (Some(client), Some(upstream)) = (fds.next(), fds.next()) else {
            return Err(ProtocolError::Descriptors { expected: 2 * out.len() + 2, got: 2 * out.len() });
        };
        let mut take = |n: u32| {
            let end = at + n as usize;
            let v = bytes.get(at..end).map(<[u8]>::to_vec).unwrap_or_default();
            at = end;
            v
        };
        let to_backend = take(record.pending_to_backend);
        let to_client = take(record.pending_to_client);
        out.push(DetachedPair { client, upstream, to_backend, to_client, record });
    }
    Ok(out)
}

/// Sends one batch of flows (at most [`FLOWS_PER_BATCH`]).
pub fn send_flows(stream: &mut UnixStream, batch: &[DetachedFlow]) -> Result<(), ProtocolError> {
    write_message(stream, &Message::Flows { flows: batch.iter().map(|f| f.record.clone()).collect() })?;
    let fds: Vec<RawFd> = batch.iter().map(|f| f.upstream.as_raw_fd()).collect();
    sendmsg_fds(stream.as_raw_fd(), &fds)?;
    Ok(())
}

/// Receives the descriptors a [`Message::Flows`] announced.
pub fn recv_flows(stream: &mut UnixStream, flows: Vec<FlowRecord>) -> Result<Vec<DetachedFlow>, ProtocolError> {
    if flows.len() > FLOWS_PER_BATCH {
        return Err(ProtocolError::Io(io::Error::new(io::ErrorKind::InvalidData, format!("a batch of {} flows, over {FLOWS_PER_BATCH}", flows.len()))));
    }
    let fds = recv_fds(stream, flows.len())?;
    Ok(fds.into_iter().zip(flows).map(|(upstream, record)| DetachedFlow { upstream, record }).collect())
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

/// How long the predecessor's workers may take to pause and take out their connections after
/// `Ready` (a connection still connecting to its backend detaches once connected, so this
/// covers a connect timeout with retries); a worker later than that keeps its connections
/// and the predecessor drains them (UDP workers answer within [`STEP_TIMEOUT`]). The successor
/// waits for the first batch this long plus two steps.
pub const DETACH_TIMEOUT: Duration = Duration::from_secs(30);

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

    fn record(pending_to_backend: u32, pending_to_client: u32) -> PairRecord {
        let a = |s: &str| s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        PairRecord {
            client: a("10.0.0.2:40000"),
            frontend: a("10.96.0.10:80"),
            backend: a("10.1.0.2:8080"),
            pending_to_backend,
            pending_to_client,
            client_closed: true,
            backend_closed: false,
            bytes_to_backend: 7,
            bytes_from_backend: 9,
            age_ms: 86_400_000,
        }
    }

    fn socket_fd() -> OwnedFd {
        let (x, _y) = UnixStream::pair().unwrap_or_else(|e| panic!("{e}"));
        OwnedFd::from(x)
    }

    #[test]
    fn a_batch_of_connections_passes_with_its_pending_bytes_and_sockets() {
        let (mut a, mut b) = UnixStream::pair().unwrap_or_else(|e| panic!("{e}"));
        let batch: Vec<DetachedPair> = (0..3u8)
            .map(|i| DetachedPair {
                client: socket_fd(),
                upstream: socket_fd(),
                to_backend: vec![i; usize::from(i) * 1000],
                to_client: vec![i + 100; 17],
                record: record(0, 0),
            })
            .collect();
        let inodes: Vec<u64> = batch.iter().flat_map(|p| [inode(p.client.as_raw_fd()), inode(p.upstream.as_raw_fd())]).collect();
        send_pairs(&mut a, &batch).unwrap_or_else(|e| panic!("{e}"));
        let Ok(Message::Connections { pairs, tail }) = read_message(&mut b) else { panic!("no batch") };
        assert_eq!(tail, 3000 + 3 * 17);
        let got = recv_pairs(&mut b, pairs, tail).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.len(), 3);
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p.to_backend, vec![i as u8; i * 1000]);
            assert_eq!(p.to_client, vec![i as u8 + 100; 17]);
            assert_eq!(p.record, record(p.to_backend.len() as u32, 17));
        }
        let back: Vec<u64> = got.iter().flat_map(|p| [inode(p.client.as_raw_fd()), inode(p.upstream.as_raw_fd())]).collect();
        assert_eq!(back, inodes, "the very same sockets, in order");
    }

    #[test]
    fn a_bad_batch_announcement_is_a_clear_error() {
        let cases: [(Vec<PairRecord>, u32, &str); 3] = [
            (vec![record(10, 0)], 11, "a tail of 11 bytes for 10 pending bytes"),
            (vec![record(MAX_PENDING + 1, 0)], MAX_PENDING + 1, "pending bytes for one connection, over"),
            (vec![record(0, 0); PAIRS_PER_BATCH + 1], 0, "a batch of 101 connections, over 100"),
        ];
        for (pairs, tail, want) in cases {
            let (_a, mut b) = UnixStream::pair().unwrap_or_else(|e| panic!("{e}"));
            let err = recv_pairs(&mut b, pairs, tail).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(want), "{want}: {err}");
        }
        // A tail cut short by a hang-up.
        let (mut a, mut b) = UnixStream::pair().unwrap_or_else(|e| panic!("{e}"));
        a.write_all(&[1, 2, 3]).unwrap_or_else(|e| panic!("{e}"));
        drop(a);
        let err = recv_pairs(&mut b, vec![record(10, 0)], 10).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("failed to fill whole buffer"), "{err}");
    }

    fn inode(fd: RawFd) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{fd}")).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0)
    }
}
