//! The self-hosted target: the tpvs forwarding engine, in-process, in plain listen mode in
//! front of the loopback backends, with one scheduler over one frontend.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use controlplane::{Frontend, FrontendKey, FrontendKind, Protocol, ServicePortName, TrafficPolicy, WhenEmpty};
use schedulers::{Backend, BackendSet, BackendStats, Scheduler, SchedulerKind, SchedulerOptions};
use tpvs::addrs::NodePortAddrs;
use tpvs::dispatch::outlier::OutlierPolicy;
use tpvs::forward::{ForwardConfig, PlainServer, RelayMode, serve_plain};

/// Fresh stats for every backend: each scheduler starts from the same blank state.
pub fn scheduler(kind: SchedulerKind, backends: &[SocketAddr], seed: u64) -> Arc<dyn Scheduler> {
    let set = BackendSet::new(backends.iter().map(|a| Backend::new(*a, Arc::new(BackendStats::default()))).collect());
    schedulers::build(kind, Arc::new(set), &SchedulerOptions { seed, ..SchedulerOptions::default() })
}

/// Data-path settings: the daemon's defaults where they matter to latency (connect timeout,
/// retries, splice relay).
#[derive(Clone, Copy, Debug)]
pub struct ProxySettings {
    pub workers: usize,
    pub connect_timeout: Duration,
    pub connect_attempts: usize,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings { workers: 2, connect_timeout: Duration::from_secs(2), connect_attempts: 4 }
    }
}

/// Starts the engine on an ephemeral loopback port serving `scheduler`.
pub fn start_proxy(scheduler: Arc<dyn Scheduler>, name: &str, settings: ProxySettings) -> anyhow::Result<PlainServer> {
    let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let local_endpoints = scheduler.backends().len();
    let frontend = Frontend {
        key: FrontendKey::new(listen.ip(), 0, Protocol::Tcp),
        kind: FrontendKind::ClusterIp,
        service: ServicePortName { namespace: "loadtest".into(), name: name.into(), port: "".into() },
        policy: TrafficPolicy::Cluster,
        affinity: None,
        when_empty: WhenEmpty::Reject,
        health_check_node_port: None,
        local_endpoints,
        service_local_endpoints: local_endpoints,
        source_ranges: Arc::from([]),
        scheduler,
        explanation: Default::default(),
        local_origin: None,
    };
    let config = ForwardConfig {
        port: 0,
        workers: settings.workers,
        backlog: 4096,
        max_connections: 1_000_000,
        max_pipes: 1_000_000,
        connect_timeout: settings.connect_timeout,
        connect_attempts: settings.connect_attempts,
        idle_timeout: None,
        nodeport_addrs: NodePortAddrs::default(),
        mode: RelayMode::Splice,
        // The scheduler comparison measures the schedulers alone: no backend is taken out of
        // their hands.
        outliers: OutlierPolicy { consecutive_failures: 0, ..OutlierPolicy::default() },
    };
    Ok(serve_plain(listen, Arc::new(frontend), config)?)
}
