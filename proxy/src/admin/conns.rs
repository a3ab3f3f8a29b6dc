//! The open connections of one admin server (or of a group of servers): a cap, and a deadline
//! for idle ones.
//!
//! The health ports are reachable from outside the node, and a connection costs a descriptor
//! from the process's budget. A server that simply stopped accepting at its cap would let any
//! client that opens connections and sends nothing starve the kubelet's probes (the pod is
//! then restarted and every proxied connection dropped). So:
//! - a connection that has no request in progress is *idle*; it is closed once idle for the
//!   idle timeout (a silent client, a trickled request head, a kept-alive connection);
//! - at the cap, a new connection evicts the connection idle the longest; only when every
//!   connection is in the middle of a request is the new one refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

#[derive(Debug)]
struct Entry {
    /// Requests being answered now.
    busy: usize,
    /// Since when no request has been in progress.
    idle_since: Instant,
    evict: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    conns: HashMap<u64, Entry>,
}

/// A connection cap with idle-first eviction and an idle deadline.
#[derive(Debug)]
pub struct ConnLimit {
    state: Mutex<State>,
    max: usize,
    idle_timeout: Duration,
}

impl ConnLimit {
    pub fn new(max: usize, idle_timeout: Duration) -> Arc<Self> {
        Arc::new(ConnLimit { state: Mutex::default(), max: max.max(1), idle_timeout })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection, closing the longest-idle one when at the cap; `None` when
    /// every open connection is answering a request.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Option<ConnGuard> {
        let mut st = self.lock();
        if st.conns.len() >= self.max {
            let oldest = st.conns.iter().filter(|(_, e)| e.busy == 0).min_by_key(|(_, e)| e.idle_since).map(|(id, _)| *id);
            let evicted = st.conns.remove(&oldest?)?;
            evicted.evict.notify_one();
        }
        let id = st.next;
        st.next += 1;
        let evict = Arc::new(Notify::new());
        st.conns.insert(id, Entry { busy: 0, idle_since: now, evict: Arc::clone(&evict) });
        Some(ConnGuard { owner: Arc::clone(self), id, evict })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().conns.len()
    }
}

/// One admitted connection; leaves the count when dropped.
#[derive(Debug)]
pub struct ConnGuard {
    owner: Arc<ConnLimit>,
    id: u64,
    evict: Arc<Notify>,
}

impl ConnGuard {
    /// A request arrived (its head is complete).
    pub fn begin(&self) {
        if let Some(e) = self.owner.lock().conns.get_mut(&self.id) {
            e.busy += 1;
        }
    }

    /// A request was answered.
    pub fn end(&self, now: Instant) {
        if let Some(e) = self.owner.lock().conns.get_mut(&self.id) {
            e.busy = e.busy.saturating_sub(1);
            e.idle_since = now;
        }
    }

    /// When the connection is due to be closed for idleness: `None` while a request is in
    /// progress; already past when it was evicted.
    pub fn idle_deadline(&self) -> Option<Instant> {
        match self.owner.lock().conns.get(&self.id) {
            Some(e) if e.busy > 0 => None,
            Some(e) => Some(e.idle_since + self.owner.idle_timeout),
            None => Some(Instant::now()),
        }
    }

    /// Resolves when the connection must close: evicted for a newer one, or idle too long.
    pub async fn closing(&self) {
        let idle = async {
            loop {
                match self.idle_deadline() {
                    Some(at) if at <= Instant::now() => return,
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    // Busy: look again after a timeout's worth (requests end in milliseconds).
                    None => tokio::time::sleep(self.owner.idle_timeout).await,
                }
            }
        };
        tokio::select! {
            () = self.evict.notified() => {}
            () = idle => {}
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.owner.lock().conns.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room() {
        let limit = ConnLimit::new(2, T);
        let t0 = Instant::now();
        let a = limit.admit(t0).unwrap_or_else(|| panic!("room"));
        let b = limit.admit(t0 + Duration::from_secs(1)).unwrap_or_else(|| panic!("room"));
        let c = limit.admit(t0 + Duration::from_secs(2)).unwrap_or_else(|| panic!("evicts a"));
        assert_eq!(limit.open(), 2);
        assert!(a.idle_deadline().is_some_and(|d| d <= Instant::now()), "the evicted one is due now");
        assert!(b.idle_deadline().is_some_and(|d| d > Instant::now()), "b stays");
        drop(a);
        assert_eq!(limit.open(), 2, "dropping an evicted guard does not remove another");
        drop((b, c));
        assert_eq!(limit.open(), 0);
    }

    #[test]
    fn busy_connections_are_never_evicted() {
        let limit = ConnLimit::new(2, T);
        let t0 = Instant::now();
        let a = limit.admit(t0).unwrap_or_else(|| panic!("room"));
        let b = limit.admit(t0).unwrap_or_else(|| panic!("room"));
        a.begin();
        b.begin();
        assert!(limit.admit(t0).is_none(), "every connection answering: the new one is refused");
        b.end(t0 + Duration::from_secs(1));
        assert!(b.idle_deadline().is_some_and(|d| d == t0 + Duration::from_secs(1) + T), "idle from the end of its request");
        assert!(a.idle_deadline().is_none(), "no deadline mid-request");
        let c = limit.admit(t0 + Duration::from_secs(2));
        assert!(c.is_some(), "b was idle, so it made room");
        assert!(a.idle_deadline().is_none(), "a, still busy, stays");
    }

    #[tokio::test]
    async fn a_silent_connection_closes_after_the_idle_timeout_and_an_evicted_one_at_once() {
        let short = Duration::from_millis(50);
        let limit = ConnLimit::new(1, short);
        let started = Instant::now();
        let a = limit.admit(started).unwrap_or_else(|| panic!("room"));
        a.closing().await;
        assert!(started.elapsed() >= short, "closed after {:?}", started.elapsed());
        let b = limit.admit(Instant::now()).unwrap_or_else(|| panic!("evicts a"));
        let at = Instant::now();
        b.begin();
        let _c = limit.admit(Instant::now());
        drop(a);
        // b was busy, so c was refused and b is not closing; once idle it is evictable.
        assert_eq!(limit.open(), 1);
        b.end(Instant::now());
        let c = limit.admit(Instant::now()).unwrap_or_else(|| panic!("evicts b"));
        b.closing().await;
        assert!(at.elapsed() < short, "an evicted connection closes at once");
        drop(c);
    }
}
