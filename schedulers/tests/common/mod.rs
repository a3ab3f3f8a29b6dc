//! Builders shared by the integration tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use schedulers::{Backend, BackendSet, BackendStats, ClientAddr, OrigDstAddr, PickContext};

pub fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
}

/// One backend per weight at 10.0.x.y:80, each with fresh stats.
pub fn set(weights: &[u32]) -> Arc<BackendSet> {
    Arc::new(BackendSet::new(
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr = sock(&format!("10.0.{}.{}:80", i / 250, i % 250 + 1));
                Backend::new(addr, Arc::new(BackendStats::default())).with_weight(w)
            })
            .collect(),
    ))
}

/// A context for client `i`: distinct IP and port per i, dialling 10.96.0.10:80.
pub fn ctx(i: u32) -> PickContext {
    let client = SocketAddr::from(([192, 168, (i >> 8) as u8, i as u8], 1024 + (i % 60_000) as u16));
    PickContext::new(ClientAddr(client), OrigDstAddr(sock("10.96.0.10:80")))
}
