//! `sessionAffinity: ClientIP`: which backend a client IP last reached through a frontend, until
//! the Service's timeout passes without a new connection.
//!
//! A sharded map behind plain mutexes: only frontends with affinity touch it, once per new
//! connection, and a shard lock is held for one hash probe, so contention stays negligible at
//! any realistic core count. Expiry is refreshed by every new connection (kube-proxy's `recent`
//! match does the same).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use controlplane::FrontendKey;
use rustc_hash::FxBuildHasher;
use schedulers::BackendAddr;

const SHARDS: usize = 16;
/// A shard this big is swept of expired entries on insert (amortised: every 1024 inserts).
const SWEEP_ABOVE: usize = 4096;

#[derive(Clone, Copy, Debug)]
struct Sticky {
    backend: BackendAddr,
    expires: Instant,
}

type Key = (FrontendKey, IpAddr);

#[derive(Debug)]
pub struct AffinityTable {
    shards: Vec<Mutex<HashMap<Key, Sticky, FxBuildHasher>>>,
}

impl Default for AffinityTable {
    fn default() -> Self {
        Self::new()
    }
}

impl AffinityTable {
    pub fn new() -> Self {
        AffinityTable { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect() }
    }

    fn shard(&self, key: &Key) -> &Mutex<HashMap<Key, Sticky, FxBuildHasher>> {
        // The modulo keeps the index in range whatever the hash.
        &self.shards[(FxBuildHasher.hash_one(key) as usize) % SHARDS]
    }

    /// The backend this client stuck to, if the stickiness has not expired.
    pub fn get(&self, frontend: FrontendKey, client: IpAddr, now: Instant) -> Option<BackendAddr> {
        let key = (frontend, client);
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        match shard.get(&key) {
            Some(s) if s.expires > now => Some(s.backend),
            Some(_) => {
                shard.remove(&key);
                None
            }
            None => None,
        }
    }

    /// The backend this client stuck to and how long the stickiness has left, without
    /// touching the entry (for `tpvs explain`).
    pub fn peek(&self, frontend: FrontendKey, client: IpAddr, now: Instant) -> Option<(BackendAddr, Duration)> {
        let key = (frontend, client);
        let shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        shard.get(&key).filter(|s| s.expires > now).map(|s| (s.backend, s.expires - now))
    }

    /// Records (or refreshes) that `client` reached `backend` through `frontend`.
    pub fn record(&self, frontend: FrontendKey, client: IpAddr, backend: BackendAddr, timeout: Duration, now: Instant) {
        let key = (frontend, client);
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        shard.insert(key, Sticky { backend, expires: now + timeout });
        if shard.len() > SWEEP_ABOVE && shard.len().is_multiple_of(1024) {
            shard.retain(|_, s| s.expires > now);
        }
    }

    /// Entries currently held (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use controlplane::Protocol;

    fn fe() -> FrontendKey {
        FrontendKey::new(IpAddr::from([10, 96, 0, 10]), 80, Protocol::Tcp)
    }

    #[test]
    fn sticks_until_timeout_and_refreshes() {
        let t = AffinityTable::new();
        let now = Instant::now();
        let client = IpAddr::from([10, 0, 0, 2]);
        let b = BackendAddr(std::net::SocketAddr::from(([10, 1, 0, 2], 8080)));
        assert_eq!(t.get(fe(), client, now), None);
        t.record(fe(), client, b, Duration::from_secs(10), now);
        assert_eq!(t.get(fe(), client, now + Duration::from_secs(9)), Some(b));
        t.record(fe(), client, b, Duration::from_secs(10), now + Duration::from_secs(9));
        assert_eq!(t.get(fe(), client, now + Duration::from_secs(18)), Some(b), "refreshed by the new connection");
        assert_eq!(t.get(fe(), client, now + Duration::from_secs(20)), None);
        assert!(t.is_empty(), "an expired entry is removed when seen");
        let other = IpAddr::from([10, 0, 0, 3]);
        t.record(fe(), client, b, Duration::from_secs(10), now);
        assert_eq!(t.get(fe(), other, now), None, "keyed by client IP");
    }
}
