//! `tpvs run`: the node daemon. Wires the control plane's table to the data path and keeps the
//! interception rules in step with it.
//!
//! Start-up order is chosen so that no intercepted packet ever meets a missing piece:
//! signal handlers first (a SIGTERM during start-up still cleans up), listeners bound next
//! (TPROXY to a port nobody listens on answers clients "network unreachable"), then policy
//! routing and rules, then the first table. Shutdown removes the rules before exiting.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use controlplane::{BESIDE_KUBE_PROXY, KubeSource, KubeSourceConfig, ManifestSource, Publisher};
use tracing::{info, warn};

use crate::addrs::{CidrError, NodePortAddrs};
use crate::cli::TableArgs;
use crate::dispatch::telemetry::MetricsRegistry;
use crate::forward::{self, ForwardConfig, RelayMode, Shared};
use crate::netfilter::{Interception, RoutingConfig, RulesetConfig};
use crate::udp;
use crate::units::{parse_duration, parse_mark};

/// Where the interception lives; shared by `run` and `cleanup`, which must agree on it.
#[derive(Debug, Clone, Args)]
pub struct InterceptionArgs {
    /// Name of the nftables `inet` table tpvs owns (replaced whole on every change).
    #[arg(long, default_value = "tpvs", value_parser = parse_table_name)]
    pub nft_table: String,
    /// Firewall mark of intercepted packets; selects the policy-routing table.
    #[arg(long, default_value = "0x7470", value_parser = parse_mark)]
    pub fwmark: u32,
    /// Policy-routing table holding the `local` default route to lo.
    #[arg(long, default_value_t = 7470, value_parser = clap::value_parser!(u32).range(1..=0xfffe_ffff))]
    pub route_table: u32,
}

impl InterceptionArgs {
    pub fn routing(&self) -> RoutingConfig {
        RoutingConfig { mark: self.fwmark, table: self.route_table }
    }
}

fn parse_table_name(s: &str) -> Result<String, String> {
    // The name is spliced into nft's input: allow only what nft accepts as an identifier.
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok { Ok(s.to_string()) } else { Err(format!("{s:?}: letters, digits, '_' and '-', starting with a letter")) }
}

fn parse_nodeport_addrs(s: &str) -> Result<NodePortAddrs, CidrError> {
    NodePortAddrs::parse(s)
}

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
    /// Connections open at once; beyond it new ones are reset.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_connections: usize,
    /// Time allowed for one backend connect before trying the next candidate.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Further backends tried after a refused or timed-out connect (at most 7).
    #[arg(long, default_value_t = 3)]
    pub connect_retries: usize,
    /// Reset a connection after this long without traffic either way (0: never).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub idle_timeout: Duration,
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
    /// dropped and counted.
    #[arg(long, default_value_t = 131_072)]
    pub udp_max_flows: usize,
    #[command(flatten)]
    pub interception: InterceptionArgs,
    #[command(flatten)]
    pub admin: crate::admin::AdminArgs,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let source = match args.table.manifests.clone() {
        Some(path) => TableSource::Manifests(path),
        None => TableSource::Kube,
    };
    if let Err(e) = crate::limits::raise_fd_limit() {
        warn!(error = %e, "cannot raise the open-file limit");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("signal runtime")?;
    runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let interception = start(&args, source)?;
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: removing interception and exiting"),
            _ = int.recv() => info!("SIGINT: removing interception and exiting"),
        }
        interception.remove().context("removing the interception")?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Where the routing table comes from.
enum TableSource {
    /// `--manifests PATH`: offline, hot-reloaded.
    Manifests(PathBuf),
    /// The Kubernetes API (in-cluster or `--kubeconfig`).
    Kube,
}

/// Everything up to "serving"; returns the interception so the caller can remove it.
fn start(args: &RunArgs, source: TableSource) -> anyhow::Result<Arc<Interception>> {
    let mut opts = crate::list::compile_options(&args.table);
    if opts.node_name.is_none() {
        // kube-proxy's default: the node is named after the host.
        opts.node_name = hostname();
    }
    match &source {
        TableSource::Manifests(path) => {
            info!(node = opts.node_name.as_deref().unwrap_or("?"), manifests = %path.display(), "starting")
        }
        TableSource::Kube => info!(node = opts.node_name.as_deref().unwrap_or("?"), "starting with the Kubernetes API source"),
    }
    let publisher = Arc::new(Publisher::new());
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let config = ForwardConfig {
        port: args.proxy_port,
        workers,
        backlog: args.backlog,
        max_connections: args.max_connections,
        connect_timeout: args.connect_timeout,
        connect_attempts: args.connect_retries.saturating_add(1),
        idle_timeout: (!args.idle_timeout.is_zero()).then_some(args.idle_timeout),
        nodeport_addrs: args.nodeport_addresses.clone(),
        mode: args.forward_mode,
    };
    if let Some(limit) = crate::sockopt::backlog_limit().filter(|l| *l < args.backlog) {
        info!(somaxconn = limit, "accept queue capped by net.core.somaxconn; raise it for connection bursts");
    }
    // Per-backend data-path metrics, shared by the TCP and UDP paths; each publish keeps the
    // new table's backends and those still in use.
    let backend_metrics = Arc::new(MetricsRegistry::default());
    {
        let m = Arc::clone(&backend_metrics);
        publisher.on_publish(move |table| m.retain_table(table));
    }
    let shared = Shared::new(publisher.handle(), config, Arc::clone(&backend_metrics));
    let running = forward::start(Arc::clone(&shared))?;
    info!(workers, port = args.proxy_port, ipv6 = running.ipv6, "transparent listeners ready");
    let udp = start_udp(args, &publisher, workers, backend_metrics)?;

    let interception = Interception::new(
        RulesetConfig {
            table: args.interception.nft_table.clone(),
            mark: args.interception.fwmark,
            tcp_port: args.proxy_port,
            udp_port: udp.as_ref().map(|_| args.udp_proxy_port),
            nodeport_addrs: args.nodeport_addresses.clone(),
        },
        args.interception.routing(),
    );
    if let Err(e) = interception.install(&publisher.current()) {
        let _ = interception.remove();
        return Err(e).context("installing the interception");
    }
    publisher.on_publish(interception.on_publish());
    match source {
        TableSource::Manifests(path) => {
            let source = ManifestSource::new(path, opts, Arc::clone(&publisher));
            // Before the first publish, so health and sync metrics see it.
            start_admin(args, &publisher, &interception, &shared, &udp, Some(source.stats()), None)?;
            // The first load happens inside `spawn`, on this thread, so the rules for the
            // manifests are in place when this returns; the watcher thread applies changes.
            let _watcher = source.spawn(args.manifests_poll_interval);
            if publisher.generation() == 0 {
                warn!("no routing table published yet");
            }
        }
        TableSource::Kube => {
            let config = KubeSourceConfig {
                min_sync_period: args.min_sync_period,
                service_selector: args.beside_kube_proxy.then(|| BESIDE_KUBE_PROXY.to_string()),
                ..KubeSourceConfig::default()
            };
            let kube = match KubeSource::spawn(args.kubeconfig.clone(), opts, Arc::clone(&publisher), config) {
                Ok(k) => k,
                Err(e) => {
                    let _ = interception.remove();
                    return Err(e).context("starting the Kubernetes API source");
                }
            };
            start_admin(args, &publisher, &interception, &shared, &udp, None, Some(kube.stats()))?;
            // Nothing is published until every initial list is complete; /healthz says 503
            // until then, and the interception forwards nothing it does not know.
            info!("waiting for the initial Services, EndpointSlices and Node lists");
            // Dropping the handle detaches the source's thread; it serves for the life of the
            // process, like the data-plane threads.
            drop(kube);
        }
    }
    info!(generation = publisher.generation(), frontends = publisher.current().len(), "serving");
    Ok(interception)
}

/// Starts the admin and health servers; on failure removes the interception already installed.
fn start_admin(
    args: &RunArgs,
    publisher: &Arc<Publisher>,
    interception: &Arc<Interception>,
    shared: &Arc<Shared>,
    udp: &Option<Arc<udp::UdpShared>>,
    manifests: Option<Arc<controlplane::SourceStats>>,
    kube: Option<Arc<controlplane::KubeSourceStats>>,
) -> anyhow::Result<()> {
    let sources = crate::admin::Sources {
        publisher: Arc::clone(publisher),
        interception: Some(Arc::clone(interception)),
        forward: Some(Arc::clone(shared)),
        manifests,
        kube,
        udp: udp.clone(),
    };
    if let Err(e) = crate::admin::start(&args.admin, sources) {
        let _ = interception.remove();
        return Err(e);
    }
    Ok(())
}

/// The UDP data path, unless `--udp-proxy-port 0` turned it off. Bound before any rule sends
/// it a datagram; woken on every publish so flows to a departed backend close at once (the
/// callback is registered before the netfilter one, which takes milliseconds).
fn start_udp(
    args: &RunArgs,
    publisher: &Arc<Publisher>,
    workers: usize,
    metrics: Arc<MetricsRegistry>,
) -> anyhow::Result<Option<Arc<udp::UdpShared>>> {
    if args.udp_proxy_port == 0 {
        info!("UDP data path off (--udp-proxy-port 0)");
        return Ok(None);
    }
    anyhow::ensure!(args.udp_proxy_port != args.proxy_port, "--udp-proxy-port must differ from --proxy-port");
    let config = udp::UdpConfig {
        port: args.udp_proxy_port,
        workers,
        max_flows: args.udp_max_flows,
        timeouts: udp::Timeouts { idle: args.udp_timeout.max(Duration::from_millis(100)), stream: args.udp_stream_timeout.max(args.udp_timeout) },
        nodeport_addrs: args.nodeport_addresses.clone(),
    };
    let shared = udp::UdpShared::new(publisher.handle(), config, metrics);
    let running = udp::start(Arc::clone(&shared))?;
    info!(workers, port = args.udp_proxy_port, ipv6 = running.ipv6, "transparent UDP listeners ready");
    publisher.on_publish(running.on_publish());
    // Dropping `running` detaches the threads: they serve for the life of the process, like
    // the TCP ones; `shared` is what the stats are read from.
    Ok(Some(shared))
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its full length; gethostname NUL-terminates on success
    // when the name fits, and we stop at the first NUL or the buffer's end either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}
