//! The self-hosted target: the tpvs forwarding engine, in-process, in plain listen mode in
//! front of the loopback backends, with one scheduler over one frontend — the TCP engine
//! ([`start_proxy`]) or the UDP one ([`start_udp_proxy`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use controlplane::{Frontend, FrontendKey, FrontendKind, Protocol, ServicePortName, TrafficPolicy, WhenEmpty};
use schedulers::{Backend, BackendSet, BackendStats, Scheduler, SchedulerKind, SchedulerOptions};
use tpvs::addrs::NodePortAddrs;
use tpvs::dispatch::outlier::OutlierPolicy;
use tpvs::forward::{ForwardConfig, PlainServer, RelayMode, serve_plain};
use tpvs::udp::{PlainUdpServer, Timeouts, UdpConfig, serve_plain_udp};

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

fn loopback_any_port() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
}

/// The one frontend the plain listener serves.
fn frontend(scheduler: Arc<dyn Scheduler>, name: &str, protocol: Protocol) -> Frontend {
    let local_endpoints = scheduler.backends().len();
    Frontend {
        key: FrontendKey::new(loopback_any_port().ip(), 0, protocol),
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
    }
}

/// Starts the engine on an ephemeral loopback port serving `scheduler`.
pub fn start_proxy(scheduler: Arc<dyn Scheduler>, name: &str, settings: ProxySettings) -> anyhow::Result<PlainServer> {
    let frontend = frontend(scheduler, name, Protocol::Tcp);
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
    Ok(serve_plain(loopback_any_port(), Arc::new(frontend), config)?)
}

/// Starts the engine's UDP data path on an ephemeral loopback port serving `scheduler`; a flow
/// idle for `idle` expires.
///
/// `idle` is the request timeout rather than the daemon's 30 s: with a flow per request the
/// open flows are the request rate times the idle timeout, each with its upstream socket, and
/// a flow needs to outlive only the wait for its reply (a later reply is a timeout anyway).
pub fn start_udp_proxy(scheduler: Arc<dyn Scheduler>, name: &str, settings: ProxySettings, idle: Duration) -> anyhow::Result<PlainUdpServer> {
    let frontend = frontend(scheduler, name, Protocol::Udp);
    let config = UdpConfig {
        port: 0,
        workers: settings.workers,
        // Far above what a run opens: a flow refused for a cap would be the proxy's failure,
        // not the scheduler's.
        max_flows: 1_000_000,
        max_flows_per_source: 1_000_000,
        timeouts: Timeouts { idle, stream: Timeouts::default().stream.max(idle) },
        nodeport_addrs: NodePortAddrs::default(),
    };
    Ok(serve_plain_udp(loopback_any_port(), Arc::new(frontend), config)?)
}
