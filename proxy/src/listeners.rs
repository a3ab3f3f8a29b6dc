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
//! - [`Release`]: the predecessor's switch: its workers stop accepting and close their
//!   copies of the listeners (the successor holds the same sockets, so they stay open).

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

/// Workers wait here before serving until the gate opens (once; it never closes).
#[derive(Debug, Clone)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// An open gate (a cold start: the rules come after the workers anyway).
    pub fn open() -> Gate {
        Gate(Arc::new((Mutex::new(true), Condvar::new())))
    }

    /// A closed gate, opened by [`Gate::lift`].
    pub fn closed() -> Gate {
        Gate(Arc::new((Mutex::new(false), Condvar::new())))
    }

    pub fn lift(&self) {
        let (open, cv) = &*self.0;
        *open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }

    /// Blocks the calling worker thread until the gate is open.
    pub fn wait(&self) {
        let (open, cv) = &*self.0;
        let mut g = open.lock().unwrap_or_else(|p| p.into_inner());
        while !*g {
            g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Tells the workers to let go of their listeners (a successor took them over).
#[derive(Debug, Clone)]
pub struct Release {
    tx: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Release {
    fn default() -> Self {
        Release { tx: Arc::new(tokio::sync::watch::channel(false).0) }
    }
}

impl Release {
    /// What a worker watches.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.tx.subscribe()
    }

    pub fn release(&self) {
        self.tx.send_replace(true);
    }

    pub fn released(&self) -> bool {
        *self.tx.borrow()
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
        assert!(!*rx.borrow());
        r.clone().release();
        assert!(*rx.borrow() && r.released());
    }
}
