//! `tpvs run` flags: the data path, the table sources, the interception and the admin servers.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{AdminArgs, InterceptionArgs, OutlierArgs, TableArgs};
use crate::addrs::{CidrError, NodePortAddrs};
use crate::forward::{RelayMode, Steering};
use crate::units::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub table: TableArgs,
    /// Addresses NodePorts answer on: comma-separated CIDRs; empty means every local address
    /// except loopback.
    #[arg(long, value_name = "CIDR,...", default_value = "", value_parser = parse_nodeport_addrs)]
    pub nodeport_addresses: NodePortAddrs,
    /// Port of the transparent TCP listener (the TPROXY target; not reachable as a Service).
    #[arg(long, default_value_t = 15001)]
    pub proxy_port: u16,
    /// Event-loop threads, each with its own listener (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Which worker takes a new connection: `cpu`, the one on the CPU that received its SYN
    /// (workers pinned one per CPU, so connections follow the kernel's spread of packets over
    /// CPUs; needs --workers equal to the CPUs, numbered from 0, else falls back to `hash`
    /// with a warning), or `hash`, the kernel's hash of the addresses (workers not pinned).
    #[arg(long, value_enum, default_value = "hash")]
    pub worker_steering: Steering,
    /// Connections open at once; beyond it new ones are reset at once. Default: the TCP share
    /// of the open-file budget (two descriptors per connection); a larger value is lowered to
    /// it with a warning.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Time allowed for one backend connect before trying the next candidate.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Further backends tried after a refused or timed-out connect (at most 7).
    #[arg(long, default_value_t = 3)]
    pub connect_retries: usize,
    /// Reset a connection after this long without traffic either way (0: never).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// After handing its listeners to a successor, or after SIGTERM/SIGINT with none (then
    /// no new connection is accepted, the rules stay until the end), how long this instance
    /// keeps relaying the connections it still has before it exits (it exits as soon as they
    /// are gone, or at a second signal). Below the DaemonSet's terminationGracePeriodSeconds,
    /// so the kubelet's SIGKILL never comes first.
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Who this instance is, for hand-overs: an instance that handed over may not take over
    /// again from its successor (or theirs); refused, it stands by owning nothing until
    /// stopped. The DaemonSet passes the pod's UID, the same across restarts of the pod's
    /// container and different for every new pod. Empty (the default): never refused.
    #[arg(long, value_name = "ID", env = "TPVS_INSTANCE_ID", default_value = "")]
    pub instance_id: String,
    /// Kubeconfig for the API source (used when --manifests is not given); without it, the
    /// in-cluster service account, then KUBECONFIG / ~/.kube/config.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Shortest interval between two table publishes from the API source: changes arriving
    /// sooner are coalesced into one (kube-proxy's --min-sync-period).
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub min_sync_period: Duration,
    /// Proxy only Services labelled service.kubernetes.io/service-proxy-name=tpvs, leaving the
    /// rest to kube-proxy running beside tpvs.
    #[arg(long)]
    pub beside_kube_proxy: bool,
    /// How often the manifests are checked for changes.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub manifests_poll_interval: Duration,
    /// How long a changed manifest file must stay unchanged before it is applied, so that a
    /// file caught while being written is not (the first load does not wait). Writers should
    /// still write a new file and rename it over the old one: that is atomic.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub manifests_settle: Duration,
    /// How often the nft table and the policy routing are checked against what tpvs applied;
    /// anything deleted, flushed or altered is applied again (0: never check).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub rules_check_interval: Duration,
    /// How bytes are moved: zero-copy splice, or user-space copy.
    #[arg(long, value_enum, default_value = "splice")]
    pub forward_mode: RelayMode,
    /// Accept queue per listener (the kernel caps it at net.core.somaxconn).
    #[arg(long, default_value_t = 65535)]
    pub backlog: i32,
    /// Port of the transparent UDP listener (the TPROXY target for UDP frontends); 0 turns
    /// the UDP data path off (UDP frontends then only get their refusals and drops).
    #[arg(long, default_value_t = 15002)]
    pub udp_proxy_port: u16,
    /// Close a UDP flow after this long without a datagram either way (conntrack's
    /// nf_conntrack_udp_timeout). Must outlast the slowest reply a client waits for (a
    /// recursive DNS lookup takes seconds); each open flow holds one socket.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub udp_timeout: Duration,
    /// Idle timeout of UDP streams: flows that got a reply and are still active 2 s after they
    /// began (conntrack's nf_conntrack_udp_timeout_stream).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub udp_stream_timeout: Duration,
    /// UDP flows open at once (one socket each); a datagram that would open one more is
    /// dropped and counted. Default: the UDP share of the open-file budget (a quarter of what
    /// the reserve leaves), separate from TCP's so a UDP flood cannot take TCP's descriptors;
    /// a larger value is lowered to it with a warning.
    #[arg(long, value_name = "N")]
    pub udp_max_flows: Option<usize>,
    /// Percent of the UDP flows one client address may hold at once; its further new flows
    /// are dropped and counted, so one client cannot take every flow.
    #[arg(long, value_name = "PERCENT", default_value_t = 25, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub udp_source_share: u8,
    #[command(flatten)]
    pub outlier: OutlierArgs,
    #[command(flatten)]
    pub interception: InterceptionArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

fn parse_nodeport_addrs(s: &str) -> Result<NodePortAddrs, CidrError> {
    NodePortAddrs::parse(s)
}
