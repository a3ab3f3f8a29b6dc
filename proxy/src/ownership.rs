//! Who owns the interception in this network namespace, and how it hands it over.
//!
//! The running instance holds an abstract Unix socket named after its nft table
//! (`@tpvs/<table>`) bound for as long as it owns the table. Abstract names belong to the
//! network namespace and vanish with the process that bound them (even on SIGKILL), so the
//! name is taken exactly while an owner lives, and a crash never leaves a stale lock behind.
//!
//! Whoever connects gets a hello ([`crate::handover`]): the owner's pid, binary version and
//! the flags a successor must share, and its instance identity. Each peer is served on a
//! thread of its own, so a probe is answered while a successor loads its table. A probe
//! (`tpvs cleanup`, `tpvs ready`) hangs up after the hello; a successor (`tpvs run` with the
//! same flags) asks to take over and receives the listeners; once the successor says it is
//! ready — and nothing before — the owner stops accepting, passes its established
//! connections and flows batch by batch ([`HandOff`] is the data path's side), and releases
//! everything when the last batch is acknowledged; a successor that fails before that leaves
//! the owner relaying and serving everything again. The
//! owner's pid is also read with `SO_PEERCRED`, which the kernel fills from the listener and
//! the owner cannot forge.

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::handover::{self, Detached, Flags, Message, ProtocolError};
use crate::listeners::ListenerSet;

/// Version of what the owner says on its socket (the hand-over protocol's).
pub const HELLO_VERSION: u8 = handover::PROTOCOL;

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

pub(crate) fn address(table: &str) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(lock_name(table).as_bytes())
}

/// Who this instance is (`--instance-id`) and which instances it replaced: a takeover from
/// one of those is refused (a restarted container of an old pod must not take the node back).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// Empty: none given; such an instance is never refused for who it is.
    pub instance: String,
    /// Most recent last, at most [`REMEMBERED`].
    pub replaced: Vec<String>,
}

/// How many replaced instances an owner remembers (through its predecessors too): far more
/// than the pods a rollout can leave on one node.
pub const REMEMBERED: usize = 16;

impl Identity {
    pub fn new(instance: &str) -> Identity {
        Identity { instance: instance.to_string(), replaced: Vec::new() }
    }

    /// This instance after taking over from `predecessor`, which had replaced `theirs`.
    pub fn succeeding(&self, predecessor: &str, theirs: &[String]) -> Identity {
        let mut replaced: Vec<String> = theirs.iter().chain(std::iter::once(&predecessor.to_string())).filter(|i| !i.is_empty()).cloned().collect();
        replaced.dedup();
        let excess = replaced.len().saturating_sub(REMEMBERED);
        replaced.drain(..excess);
        Identity { instance: self.instance.clone(), replaced }
    }

    /// Whether `instance` handed over to this one (or to a predecessor of it).
    pub fn replaced(&self, instance: &str) -> bool {
        !instance.is_empty() && self.replaced.iter().any(|r| r == instance)
    }
}

/// What a running instance can give a successor, set once it serves.
pub struct Offer {
    /// Second descriptors of the workers' listeners.
    pub listeners: ListenerSet,
    /// Second descriptors of the admin servers' listeners, by address, as they are at the
    /// moment of the hand-over (health-check node ports come and go with the table).
    pub admin: Box<dyn Fn() -> std::io::Result<AdminListeners> + Send>,
    /// The data path's side of the hand-over.
    pub data_path: Box<dyn HandOff>,
}

/// What the data path does during a hand-over, on either side (implemented by `run`).
pub trait HandOff: Send + Sync {
    /// Stops accepting; the listeners stay open here.
    fn pause(&self);
    /// Takes every established connection and flow out of the workers at a safe point.
    fn detach(&self) -> Detached;
    /// Relays these here (a successor's adoption, or the predecessor taking back what a
    /// failed successor had not adopted).
    fn adopt(&self, what: Detached);
    /// Accepts again after a pause.
    fn resume(&self);
    /// Everything is handed over: close the listeners, leave the rules to the successor.
    /// Returns the connections still open here (a worker late to detach keeps its own).
    fn release(&self) -> usize;
}

/// Admin listeners by address (what [`Offer::admin`] gives).
pub type AdminListeners = Vec<(std::net::SocketAddr, std::os::fd::OwnedFd)>;

/// A completed hand-over, as the predecessor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandedOver {
    pub listeners: usize,
    /// Connections still open here (not handed over), which drain as after a signal.
    pub open_connections: usize,
    /// Established TCP connections and UDP flows the successor adopted.
    pub connections: usize,
    pub flows: usize,
    pub successor_pid: Option<u32>,
}

/// The ownership of one nft table, held while this value lives (and until handed over).
pub struct Ownership {
    table: String,
    offer: Arc<Mutex<Option<Offer>>>,
    handed: Option<tokio::sync::oneshot::Receiver<HandedOver>>,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership").field("table", &self.table).finish_non_exhaustive()
    }
}

impl Ownership {
    /// Claims `table` for this process, or says who holds it. On success a thread answers
    /// probes and successors until the table is handed over (the socket is never closed
    /// before that or exit: the name must not be free while this instance owns the rules).
    pub fn claim(flags: &Flags, identity: &Identity) -> Result<Ownership, OwnershipError> {
        let table = flags.nft_table.as_str();
        match Self::bind(table)? {
            Some(listener) => Self::serve(listener, flags, identity),
            None => Err(OwnershipError::Taken { table: table.to_string(), pid: owner(table).ok().flatten().and_then(|o| o.pid) }),
        }
    }

    /// Claims `table` once its owner has handed it over and frees the name (it does so right
    /// after confirming the release): retries for up to `within`.
    pub fn claim_within(flags: &Flags, identity: &Identity, within: Duration) -> Result<Ownership, OwnershipError> {
        let deadline = std::time::Instant::now() + within;
        loop {
            match Self::bind(&flags.nft_table)? {
                Some(listener) => return Self::serve(listener, flags, identity),
                None if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                None => return Self::claim(flags, identity),
            }
        }
    }

    /// The bound name, or `None` when someone holds it.
    fn bind(table: &str) -> Result<Option<UnixListener>, OwnershipError> {
        let io = |source| OwnershipError::Io { table: table.to_string(), source };
        let addr = address(table).map_err(io)?;
        match UnixListener::bind_addr(&addr) {
            Ok(l) => Ok(Some(l)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    fn serve(listener: UnixListener, flags: &Flags, identity: &Identity) -> Result<Ownership, OwnershipError> {
        let table = flags.nft_table.as_str();
        let io = |source| OwnershipError::Io { table: table.to_string(), source };
        let offer: Arc<Mutex<Option<Offer>>> = Arc::default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (o, f, id) = (Arc::clone(&offer), flags.clone(), identity.clone());
        std::thread::Builder::new().name("tpvs-owner".into()).spawn(move || answer(listener, f, id, o, tx)).map_err(io)?;
        Ok(Ownership { table: table.to_string(), offer, handed: Some(rx) })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// From now on a successor may take over: this instance serves.
    pub fn offer(&self, offer: Offer) {
        *self.offer.lock().unwrap_or_else(|p| p.into_inner()) = Some(offer);
    }

    /// Takes the offer back: no successor can take over from here on (this instance is
    /// shutting down). `None` when a successor already took it, which then owns the rules.
    pub fn withdraw(&self) -> Option<Offer> {
        self.offer.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Resolves when a successor has taken over (once).
    pub fn handed_over(&mut self) -> Option<tokio::sync::oneshot::Receiver<HandedOver>> {
        self.handed.take()
    }
}

/// What a probe learned about the owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// As seen from this process: `SO_PEERCRED` when the owner is in our pid namespace,
    /// else the pid its hello states (in its own pid namespace).
    pub pid: Option<u32>,
    /// The hello's protocol version, when the owner sent one in time.
    pub version: Option<u8>,
    /// The owner's `--instance-id`, from its hello (empty: none given).
    pub instance: Option<String>,
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
    let cred_pid = handover::peer_cred(&stream).and_then(|c| (c.pid > 0).then(|| c.pid.unsigned_abs()));
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    let (version, hello_pid, instance) = match handover::read_message(&mut stream) {
        Ok(Message::Hello { pid, instance, .. }) => (Some(HELLO_VERSION), Some(pid), Some(instance)),
        Ok(other) => {
            debug!(?other, "the owner said something other than hello");
            (None, None, None)
        }
        Err(ProtocolError::Version { theirs }) => (Some(theirs), None, None),
        Err(e) => {
            debug!(error = %e, "no hello from the owner");
            (None, None, None)
        }
    };
    Ok(Some(Owner { pid: cred_pid.or(hello_pid), version, instance }))
}

/// Accepts probes and successors, each served on a thread of its own (a probe — `tpvs ready`,
/// `tpvs cleanup` — is answered at once while a successor loads its table, which may take a
/// while), until one successor has taken over; then frees the name.
fn answer(listener: UnixListener, flags: Flags, identity: Identity, offer: Arc<Mutex<Option<Offer>>>, done: tokio::sync::oneshot::Sender<HandedOver>) {
    let hello = Arc::new(Message::Hello {
        pid: std::process::id(),
        binary: handover::binary_version(),
        flags: flags.clone(),
        instance: identity.instance.clone(),
        replaced: identity.replaced.clone(),
    });
    let (flags, identity) = (Arc::new(flags), Arc::new(identity));
    let done = Arc::new(Mutex::new(Some(done)));
    let handed = Arc::new(AtomicBool::new(false));
    let fd = listener.as_raw_fd();
    for conn in listener.incoming() {
        if handed.load(Ordering::Acquire) {
            // The name is freed as `listener` drops, right after this.
            return;
        }
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "ownership socket accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let (hello, flags, identity, offer, done, handed) =
            (Arc::clone(&hello), Arc::clone(&flags), Arc::clone(&identity), Arc::clone(&offer), Arc::clone(&done), Arc::clone(&handed));
        let spawned = std::thread::Builder::new().name("tpvs-owner-peer".into()).spawn(move || {
            let peer = handover::peer_cred(&stream);
            match serve_peer(&mut stream, &hello, &flags, &identity, &offer, peer) {
                Ok(Some(h)) => {
                    info!(
                        successor = owner_text(h.successor_pid),
                        listeners = h.listeners,
                        connections = h.connections,
                        flows = h.flows,
                        open_connections = h.open_connections,
                        "handed the listeners, the rules and the established connections over to a successor"
                    );
                    handed.store(true, Ordering::Release);
                    if let Some(tx) = done.lock().unwrap_or_else(|p| p.into_inner()).take() {
                        let _ = tx.send(h);
                    }
                    // Wakes the accept loop, which then frees the name. Only the one thread
                    // that took the offer gets here, and the loop keeps the descriptor open
                    // until it sees `handed`, set above.
                    // SAFETY: shutdown on a descriptor that is open (see above); no memory.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
                Ok(None) => {}
                Err(reason) => {
                    warn!(peer = owner_text(peer.and_then(|c| (c.pid > 0).then(|| c.pid.unsigned_abs()))), %reason, "a takeover was refused or failed; still serving");
                    let _ = handover::write_message(&mut stream, &Message::Refused { reason });
                }
            }
        });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a thread for a peer on the ownership socket");
        }
    }
}

/// One connection: a probe (`Ok(None)`), a completed hand-over, or why not (this instance
/// keeps everything in every error case: nothing is released before the successor's Ready).
fn serve_peer(
    stream: &mut UnixStream,
    hello: &Message,
    flags: &Flags,
    identity: &Identity,
    offer: &Mutex<Option<Offer>>,
    peer: Option<libc::ucred>,
) -> Result<Option<HandedOver>, String> {
    let _ = stream.set_write_timeout(Some(handover::STEP_TIMEOUT));
    let _ = stream.set_read_timeout(Some(handover::STEP_TIMEOUT));
    let text = |e: ProtocolError| e.to_string();
    handover::write_message(stream, hello).map_err(text)?;
    let request = match handover::read_message(stream) {
        // A probe: it read the hello and hung up.
        Err(ProtocolError::Closed) => return Ok(None),
        Err(e) => return Err(format!("bad request on the hand-over socket: {e}")),
        Ok(m) => m,
    };
    let Message::TakeOver { binary, flags: theirs, instance } = request else {
        return Err(format!("unexpected message on the hand-over socket: {request:?}"));
    };
    let uid = peer.map(|c| c.uid);
    if !uid.is_some_and(handover::may_take_over) {
        return Err(format!("a takeover from uid {} is refused: only the same user or root may take over", uid.map_or("unknown".into(), |u| u.to_string())));
    }
    if identity.replaced(&instance) {
        return Err(format!(
            "instance {instance:?} already handed over to this one (instance {:?}) and is being replaced; it may not take over again",
            identity.instance
        ));
    }
    let differences = flags.differences(&theirs);
    if !differences.is_empty() {
        return Err(format!("incompatible flags: {}", differences.join("; ")));
    }
    // The listeners are sent from copies: until Ready this instance keeps serving on its own.
    let (copies, admin) = {
        let guard = offer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(o) = guard.as_ref() else {
            return Err("the running instance is not offering its listeners (still starting, or shutting down); try again".into());
        };
        let copies = o.listeners.try_clone().map_err(|e| format!("cannot duplicate the listeners: {e}"))?;
        (copies, (o.admin)().map_err(|e| format!("cannot duplicate the admin listeners: {e}"))?)
    };
    let count = copies.len() + admin.len();
    let announce = Message::Listeners {
        tcp: ListenerSet::shape(&copies.tcp),
        udp: ListenerSet::shape(&copies.udp),
        admin: admin.iter().map(|(a, _)| *a).collect(),
    };
    handover::write_message(stream, &announce).map_err(text)?;
    let mut fds = copies.into_fds();
    fds.extend(admin.into_iter().map(|(_, fd)| fd));
    handover::send_fds(stream, &fds).map_err(text)?;
    info!(successor_binary = %binary, listeners = count, "listeners sent to a successor; waiting for it to be ready");
    let _ = stream.set_read_timeout(Some(handover::READY_TIMEOUT));
    match handover::read_message(stream) {
        Ok(Message::Ready) => {}
        Ok(other) => return Err(format!("expected Ready from the successor, got {other:?}")),
        Err(e) => return Err(format!("the successor did not become ready: {e}")),
    }
    let Some(o) = offer.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return Err("the offer vanished".into());
    };
    // Stop accepting (the listeners stay open here: SYNs and datagrams queue on them), then
    // take every connection and flow out and pass them, batch by batch. This process keeps
    // its copy of each batch until the successor says it adopted it.
    o.data_path.pause();
    let mut detached = o.data_path.detach();
    let (connections, flows) = (detached.pairs.len(), detached.flows.len());
    info!(connections, flows, "passing the established connections and flows to the successor");
    if let Err(e) = pass(stream, &mut detached) {
        let (left_pairs, left_flows) = (detached.pairs.len(), detached.flows.len());
        // No state in which neither owns them: what the successor did not adopt is relayed
        // here again, and this instance serves its listeners and rules as before.
        o.data_path.adopt(detached);
        o.data_path.resume();
        *offer.lock().unwrap_or_else(|p| p.into_inner()) = Some(o);
        return Err(format!(
            "the successor failed during the connection hand-over ({e}); relaying the {left_pairs} connections and {left_flows} flows it had not adopted here and accepting again"
        ));
    }
    let open_connections = o.data_path.release();
    drop(o.listeners);
    // The successor owns everything now: a failure to tell it is logged, not undone.
    if let Err(e) = handover::write_message(stream, &Message::Released { open_connections }) {
        warn!(error = %e, "could not confirm the release to the successor");
    }
    let successor_pid = peer.and_then(|c| (c.pid > 0).then(|| c.pid.unsigned_abs()));
    Ok(Some(HandedOver { listeners: count, open_connections, connections, flows, successor_pid }))
}

/// Sends the connections, then the flows, in batches; on an error `what` holds exactly what
/// was not acknowledged (this process's copies of the rest close then, or at the end).
fn pass(stream: &mut UnixStream, what: &mut Detached) -> Result<(), ProtocolError> {
    let _ = stream.set_read_timeout(Some(handover::STEP_TIMEOUT));
    let mut pairs = 0;
    let mut flows = 0;
    let sent = (|| {
        while pairs < what.pairs.len() {
            let n = (what.pairs.len() - pairs).min(handover::PAIRS_PER_BATCH);
            handover::send_pairs(stream, &what.pairs[pairs..pairs + n])?;
            acknowledged(stream, n)?;
            pairs += n;
        }
        while flows < what.flows.len() {
            let n = (what.flows.len() - flows).min(handover::FLOWS_PER_BATCH);
            handover::send_flows(stream, &what.flows[flows..flows + n])?;
            acknowledged(stream, n)?;
            flows += n;
        }
        Ok(())
    })();
    // Adopted by the successor: this process's copies close here.
    what.pairs.drain(..pairs);
    what.flows.drain(..flows);
    sent
}

fn acknowledged(stream: &mut UnixStream, n: usize) -> Result<(), ProtocolError> {
    match handover::read_message(stream)? {
        Message::Adopted { count } if count == n => Ok(()),
        other => Err(ProtocolError::Io(std::io::Error::other(format!("expected the adoption of {n}, got {other:?}")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(table: &str) -> Flags {
        Flags { nft_table: table.into(), fwmark: 1, route_table: 100, proxy_port: 15001, udp_proxy_port: 15002, workers: 1 }
    }

    /// A table name no other test process uses (abstract names are shared by the namespace).
    fn unique(name: &str) -> String {
        format!("test-{}-{name}", std::process::id())
    }

    #[test]
    fn a_second_claim_fails_naming_the_owner_pid() {
        let table = unique("second");
        let first = Ownership::claim(&flags(&table), &Identity::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.table(), table);
        let err = Ownership::claim(&flags(&table), &Identity::default()).err().map(|e| e.to_string()).unwrap_or_default();
        let pid = std::process::id();
        assert!(err.contains("another tpvs owns nft table") && err.contains(&format!("pid {pid}")), "{err}");
        let o = owner(&table).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o, Some(Owner { pid: Some(pid), version: Some(HELLO_VERSION), instance: Some(String::new()) }));
    }

    #[test]
    fn a_successor_remembers_its_predecessors_and_no_anonymous_one() {
        let b = Identity::new("pod-b").succeeding("pod-a", &[]);
        assert_eq!(b.replaced, ["pod-a"]);
        assert!(b.replaced("pod-a") && !b.replaced("pod-b") && !b.replaced(""));
        // C replaced B, which had replaced A: neither may come back.
        let c = Identity::new("pod-c").succeeding("pod-b", &b.replaced);
        assert_eq!(c.replaced, ["pod-a", "pod-b"]);
        // An instance without an id is never remembered, so never refused.
        assert_eq!(Identity::new("x").succeeding("", &[]).replaced, Vec::<String>::new());
        let many: Vec<String> = (0..40).map(|i| format!("pod-{i}")).collect();
        let d = Identity::new("pod-d").succeeding("pod-40", &many);
        assert_eq!(d.replaced.len(), REMEMBERED);
        assert_eq!(d.replaced.last().map(String::as_str), Some("pod-40"));
    }

    #[test]
    fn nobody_owns_an_unclaimed_table() {
        assert_eq!(owner(&unique("free")).ok().flatten(), None);
    }
}
