//! The data path's listening sockets as one set: what the workers start from, what a running
//! instance hands its successor, and the two switches around a hand-over.
//!
//! - [`ListenerSet`]: per worker, the transparent TCP and UDP listeners (`[v4, v6]`; v6 absent
//!   in a namespace without IPv6). Freshly bound at a cold start, or received from the
//!   predecessor at a takeover: the same sockets (the same `SO_REUSEPORT` group and accept
//!   queues), so no SYN or datagram ever meets a closed port.
//! - [`Gate`]: a worker holding listeners waits at the gate before it serves. A successor's
//!   workers wait until the predecessor has let go, a cold start's until its first routing
//!   table is published (over a killed instance's rules SYNs arrive at once), or they would
//!   take connections off the queues and reset them for want of a frontend.
//! - [`Release`]: the predecessor's switch, in three positions ([`Serve`]): accepting;
//!   paused while its connections and flows pass to the successor (the listeners stay open
//!   in this process, so a successor that fails half-way leaves them to resume here); and
//!   released once everything is handed over, when the workers close their copies (the
//!   successor holds the same sockets, so they stay open).

use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};

/// One worker's listeners: `[IPv4, IPv6]`.
pub type Pair = [Option<OwnedFd>; 2];

/// Every worker's listeners, TCP and UDP.
#[derive(Debug, Default)]
pub struct ListenerSet {
    pub tcp: Vec<Pair>,
    pub udp: Vec<Pair>,
}

impl ListenerSet {
    /// Second descriptors for the same sockets (what a hand-over sends, while the workers
    /// keep theirs).
    pub fn try_clone(&self) -> std::io::Result<ListenerSet> {
        let dup = |pairs: &[Pair]| -> std::io::Result<Vec<Pair>> {
            pairs
                .iter()
                .map(|[a, b]| {
                    let a = a.as_ref().map(OwnedFd::try_clone).transpose()?;
                    let b = b.as_ref().map(OwnedFd::try_clone).transpose()?;
                    Ok([a, b])
                })
                .collect()
        };
        Ok(ListenerSet { tcp: dup(&self.tcp)?, udp: dup(&self.udp)? })
    }

    /// Which listeners are present, per worker (the shape a hand-over announces).
    pub fn shape(pairs: &[Pair]) -> Vec<[bool; 2]> {
        pairs.iter().map(|[a, b]| [a.is_some(), b.is_some()]).collect()
    }

    /// Every descriptor, in shape order (TCP workers, then UDP workers; v4 before v6).
    pub fn into_fds(self) -> Vec<OwnedFd> {
        self.tcp.into_iter().chain(self.udp).flatten().flatten().collect()
    }

    /// Rebuilds a set from descriptors received in [`ListenerSet::into_fds`] order; `None`
    /// when their number does not match the shapes.
    pub fn from_fds(tcp: &[[bool; 2]], udp: &[[bool; 2]], fds: Vec<OwnedFd>) -> Option<ListenerSet> {
        let wanted: usize = tcp.iter().chain(udp).map(|p| p.iter().filter(|x| **x).count()).sum();
        if wanted != fds.len() {
            return None;
        }
        let mut it = fds.into_iter();
        let mut take =
            |shape: &[[bool; 2]]| -> Vec<Pair> { shape.iter().map(|[a, b]| [a.then(|| it.next()).flatten(), b.then(|| it.next()).flatten()]).collect() };
        let tcp = take(tcp);
        let udp = take(udp);
        Some(ListenerSet { tcp, udp })
    }

    /// Descriptors held.
    pub fn len(&self) -> usize {
        self.tcp.iter().chain(&self.udp).map(|p| p.iter().flatten().count()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Workers wait here before serving until the gate opens (once; it never closes). The UDP
/// workers block their thread on it; the TCP workers await it, so their runtime can adopt
/// handed-over connections meanwhile.
#[derive(Debug, Clone)]
pub struct Gate(Arc<GateInner>);

#[derive(Debug)]
struct GateInner {
    open: Mutex<bool>,
    cv: Condvar,
    tx: tokio::sync::watch::Sender<bool>,
}

impl Gate {
    fn new(open: bool) -> Gate {
        Gate(Arc::new(GateInner { open: Mutex::new(open), cv: Condvar::new(), tx: tokio::sync::watch::channel(open).0 }))
    }

    /// An open gate (a cold start: the rules come after the workers anyway).
    pub fn open() -> Gate {
        Gate::new(true)
    }

    /// A closed gate, opened by [`Gate::lift`].
    pub fn closed() -> Gate {
        Gate::new(false)
    }

    pub fn lift(&self) {
        *self.0.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.0.cv.notify_all();
        self.0.tx.send_replace(true);
    }

    /// Blocks the calling worker thread until the gate is open.
    pub fn wait(&self) {
        let mut g = self.0.open.lock().unwrap_or_else(|p| p.into_inner());
        while !*g {
            g = self.0.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Resolves once the gate is open.
    pub async fn opened(&self) {
        let mut rx = self.0.tx.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// Whether the workers serve their listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    Accepting,
    /// Not accepting, listeners kept: a hand-over of the connections is under way.
    Paused,
    /// A successor owns the listeners: close this process's copies.
    Released,
}

/// Tells the workers to stop accepting, to resume, or to let go of their listeners.
#[derive(Debug, Clone)]
pub struct Release {
    tx: Arc<tokio::sync::watch::Sender<Serve>>,
}

impl Default for Release {
    fn default() -> Self {
        Release { tx: Arc::new(tokio::sync::watch::channel(Serve::Accepting).0) }
    }
}

impl Release {
    /// What a worker watches.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Serve> {
        self.tx.subscribe()
    }

    /// Stops accepting, keeping the listeners (a released switch stays released).
    pub fn pause(&self) {
        self.tx.send_if_modified(|s| {
            let changed = *s == Serve::Accepting;
            if changed {
                *s = Serve::Paused;
            }
            changed
        });
    }

    /// Accepts again after a pause (a hand-over that failed half-way).
    pub fn resume(&self) {
        self.tx.send_if_modified(|s| {
            let changed = *s == Serve::Paused;
            if changed {
                *s = Serve::Accepting;
            }
            changed
        });
    }

    pub fn release(&self) {
        self.tx.send_replace(Serve::Released);
    }

    pub fn released(&self) -> bool {
        *self.tx.borrow() == Serve::Released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").map(OwnedFd::from).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_set_survives_flattening_and_a_wrong_count_is_refused() {
        let set = ListenerSet { tcp: vec![[Some(fd()), None], [Some(fd()), Some(fd())]], udp: vec![[Some(fd()), Some(fd())]] };
        let (tcp, udp) = (ListenerSet::shape(&set.tcp), ListenerSet::shape(&set.udp));
        assert_eq!(tcp, vec![[true, false], [true, true]]);
        let fds = set.into_fds();
        assert_eq!(fds.len(), 5);
        let mut short = fds;
        let last = short.pop();
        assert!(ListenerSet::from_fds(&tcp, &udp, short).is_none(), "four descriptors for five listeners");
        let mut again = Vec::new();
        again.extend(last);
        let back = ListenerSet::from_fds(&tcp, &[[true, false], [false, false], [false, false], [false, false]], again);
        assert_eq!(back.map(|s| s.len()), None, "one descriptor for a three-listener TCP shape");
    }

    #[test]
    fn a_released_switch_is_seen_by_subscribers() {
        let r = Release::default();
        let rx = r.subscribe();
        assert_eq!(*rx.borrow(), Serve::Accepting);
        r.pause();
        assert_eq!(*rx.borrow(), Serve::Paused);
        r.resume();
        assert_eq!(*rx.borrow(), Serve::Accepting);
        r.clone().release();
        r.resume();
        assert!(*rx.borrow() == Serve::Released && r.released(), "a released switch stays released");
    }
}
