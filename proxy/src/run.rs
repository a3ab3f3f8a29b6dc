//! `tpvs run`: the node daemon. Wires the control plane's table to the data path and keeps the
//! interception rules in step with it.
//!
//! Start-up order is chosen so that no intercepted packet ever meets a missing piece:
//! signal handlers first (a SIGTERM during start-up still cleans up), listeners bound next
//! (a Service packet TPROXY finds no listener for is dropped by the rules, and retransmitted),
//! then policy routing and rules, then the first table; the workers serve from the first
//! table on, and hold what reaches them before it in their accept queues.
//!
//! Over the rules an instance left when it was killed, a cold start adopts them as they are
//! (its first table replaces them in one transaction) rather than installing an empty table
//! first, which would let Service traffic be routed out of the node until then.
//!
//! A SIGTERM (or SIGINT) with no successor means the node is going away (a drain, an
//! uninstall): the instance stops accepting at once (its listeners close, so new connections
//! go to the nodes that stay instead of starting a transfer that would be cut), but keeps the
//! rules, which carry the established connections' packets to their sockets, and relays those
//! for `--shutdown-grace`; `/healthz` and the health-check node ports answer 503 meanwhile,
//! so load balancers steer away. It removes the interception and exits 0 as soon as none is left,
//! when the grace runs out, or at a second signal, whichever comes first.
//!
//! Before all of it, the instance claims the network namespace's ownership of its nft table
//! ([`crate::ownership`]). When another instance owns it, this one takes over instead
//! ([`crate::takeover`], protocol in [`crate::handover`]): it starts on the running
//! instance's listeners, adopts its rules, and the running one lets go only once this one is
//! ready; with other flags it stops there, having touched nothing. After the claim, every
//! step that changes the node registers its undo, and a start-up that fails removes what it
//! installed and nothing else ([`crate::startup_guard`]); an adopted table and routes are
//! never undone (they are the predecessor's until it lets go).
//!
//! An instance whose `--instance-id` already handed over to the owner (an old pod's restarted
//! container, during a DaemonSet rollout) is refused, and stands by owning nothing until a
//! signal ends it (exit 0), rather than exiting to be restarted again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use controlplane::{BESIDE_KUBE_PROXY, KubeSource, KubeSourceConfig, ManifestSource, Publisher};
use tracing::{info, warn};

use crate::admin::AdminSockets;
use crate::cli::RunArgs;
use crate::dispatch::telemetry::MetricsRegistry;
use crate::forward::{self, ForwardConfig, Shared};
use crate::handover::Flags;
use crate::listeners::{Gate, ListenerSet, Pair, Release};
use crate::netfilter::{Interception, RulesetConfig};
use crate::ownership::{Identity, Offer, Ownership, OwnershipError};
use crate::startup_guard::StartupGuard;
use crate::takeover;
use crate::udp;

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    check_capabilities()?;
    let source = match args.table.manifests.clone() {
        Some(path) => TableSource::Manifests(path),
        None => TableSource::Kube,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("signal runtime")?;
    // The handlers are registered first (a signal during start-up is seen once start-up is
    // done), but start-up itself runs outside `block_on`: it builds runtimes of its own (the
    // admin server's) and drops them when it fails, which tokio forbids in async context.
    let (mut term, mut int) = {
        use tokio::signal::unix::{SignalKind, signal};
        let _ctx = runtime.enter();
        (signal(SignalKind::terminate()).context("SIGTERM handler")?, signal(SignalKind::interrupt()).context("SIGINT handler")?)
    };
    let mut serving = match start(&args, source) {
        Ok(s) => s,
        Err(e) => match e.downcast_ref::<takeover::TakeoverError>() {
            Some(takeover::TakeoverError::Replaced { pid, reason }) => {
                // An old pod's container restarted after handing over: taking the node back
                // would start a ping-pong with the new pod, and exiting would only be restarted
                // again. It holds nothing (no listener, no rule, no admin port: the owner
                // answers the node's probes) until the pod is deleted.
                warn!(owner = pid, %reason, "this instance was replaced: standing by, owning nothing, until stopped");
                let sig = runtime.block_on(async {
                    tokio::select! {
                        _ = term.recv() => "SIGTERM",
                        _ = int.recv() => "SIGINT",
                    }
                });
                info!(signal = sig, "stopped while standing by; exiting");
                return Ok(ExitCode::SUCCESS);
            }
            _ => return Err(e),
        },
    };
    let mut handed_rx = serving.ownership.as_mut().and_then(Ownership::handed_over);
    let end = runtime.block_on(async {
        let handed = async {
            match handed_rx.as_mut() {
                Some(rx) => rx.await.ok(),
                None => None,
            }
        };
        tokio::select! {
            _ = term.recv() => End::Signal("SIGTERM"),
            _ = int.recv() => End::Signal("SIGINT"),
            Some(h) = handed => End::HandedOver(h),
        }
    });
    match end {
        End::Signal(sig) => {
            // Withdrawing the offer closes the hand-over's copies of the listeners; a successor
            // that has already taken it owns the rules, and they must stay.
            let handed_over = match &serving.ownership {
                Some(o) => o.withdraw().is_none() && runtime.block_on(hand_over_ends(o, handed_rx.as_mut())),
                None => false,
            };
            (serving.stop_accepting)();
            // Load balancers stop sending new connections here: /healthz and the
            // health-check node ports answer 503 from now on (/livez stays 200).
            serving.health.drain();
            let open = serving.shared.open_connections();
            info!(signal = sig, open_connections = open, grace = ?args.shutdown_grace, "stopped accepting; relaying open connections until they end or the grace runs out");
            let drained = runtime.block_on(drain(&serving.shared, args.shutdown_grace, 1, &mut term, &mut int));
            if handed_over {
                info!(connections_cut = drained.left, ended_by = drained.by, "a successor took over during shutdown; exiting with the rules left in place");
            } else {
                serving.interception.remove().context("removing the interception")?;
                info!(
                    connections_drained = open.saturating_sub(drained.left),
                    connections_cut = drained.left,
                    ended_by = drained.by,
                    "removed the interception; exiting"
                );
            }
        }
        End::HandedOver(h) => {
            // Everything established moved to the successor; what is left here is only a
            // connection a worker was too late to detach. The first signal here is usually the
            // kubelet stopping the old pod once the new one is ready: this instance is already
            // draining, so only a second one cuts it.
            let drained = runtime.block_on(drain(&serving.shared, args.shutdown_grace, 2, &mut term, &mut int));
            // Probes this instance accepted before letting go are answered before it exits.
            let admin_cut = serving.admin.wait_closed(crate::admin::http::IDLE_TIMEOUT);
            info!(
                admin_connections_cut = admin_cut,
                listeners = h.listeners,
                successor = crate::ownership::owner_text(h.successor_pid),
                connections_passed = h.connections,
                flows_passed = h.flows,
                connections_open_at_hand_over = h.open_connections,
                connections_cut = drained.left,
                ended_by = drained.by,
                "handed over to a successor; exiting with the rules left in place"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A signal came while a successor holds the offer (its connections are passing): waits for
/// the hand-over to end, so no connection is caught between the two. True when it completed
/// (the successor owns everything); false when it failed (the offer came back, now withdrawn).
async fn hand_over_ends(ownership: &Ownership, handed: Option<&mut tokio::sync::oneshot::Receiver<crate::ownership::HandedOver>>) -> bool {
    let Some(handed) = handed else { return true };
    info!("a signal during a hand-over: letting it finish first");
    loop {
        tokio::select! {
            done = &mut *handed => return done.is_ok(),
            () = tokio::time::sleep(Duration::from_millis(20)) => {
                if ownership.withdraw().is_some() {
                    return false;
                }
            }
        }
    }
}

/// How a drain ended.
struct Drained {
    /// Connections still open at the end (cut by the exit).
    left: usize,
    /// What ended it: every connection closed, the grace ran out, or a second signal.
    by: &'static str,
}

/// How `tpvs run` ends.
enum End {
    /// Stopped: the interception is removed.
    Signal(&'static str),
    /// A successor took over: the rules are its now.
    HandedOver(crate::ownership::HandedOver),
}

/// Relays the connections still open (after a hand-over, or a signal with no successor) until
/// they are gone, `grace` runs out or the `signals`-th signal comes.
async fn drain(
    shared: &Shared,
    grace: Duration,
    mut signals: usize,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> Drained {
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let open = shared.open_connections();
        if open == 0 {
            return Drained { left: 0, by: "all closed" };
        }
        if tokio::time::Instant::now() >= deadline {
            return Drained { left: open, by: "grace ran out" };
        }
        let by = tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        signals = signals.saturating_sub(1);
        if signals == 0 {
            return Drained { left: shared.open_connections(), by };
        }
        info!(signal = by, open_connections = shared.open_connections(), "already draining; a second signal cuts the open connections");
    }
}

/// A serving instance: what the end of `run` needs.
struct Serving {
    interception: Arc<Interception>,
    shared: Arc<Shared>,
    /// Makes the workers close their listeners (TCP and UDP); open connections keep relaying.
    stop_accepting: StopAccepting,
    /// What `/healthz` and the health-check node ports report.
    health: Arc<crate::admin::healthz::ProxyHealth>,
    /// `None` only when a takeover could not claim the name after the predecessor let go.
    ownership: Option<Ownership>,
    /// The admin servers' sockets (handed over with the listeners).
    admin: Arc<AdminSockets>,
}

/// The workers' switch to stop accepting, shared by a hand-over and a shutdown.
type StopAccepting = Arc<dyn Fn() + Send + Sync>;

/// Where the routing table comes from.
enum TableSource {
    /// `--manifests PATH`: offline, hot-reloaded.
    Manifests(PathBuf),
    /// The Kubernetes API (in-cluster or `--kubeconfig`).
    Kube,
}

/// Everything up to "serving"; returns the interception so the caller can remove it. Claims
/// the namespace's ownership of the nft table before anything else (a second instance must not
/// even bind the `SO_REUSEPORT` listeners); any failure after that undoes what this start-up
/// installed, and only that ([`StartupGuard`]).
fn start(args: &RunArgs, source: TableSource) -> anyhow::Result<Serving> {
    let workers = match args.workers {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let flags = Flags {
        nft_table: args.interception.nft_table.clone(),
        fwmark: args.interception.fwmark,
        route_table: args.interception.route_table,
        proxy_port: args.proxy_port,
        udp_proxy_port: args.udp_proxy_port,
        workers,
    };
    let identity = Identity::new(&args.instance_id);
    // Either this instance owns the table from the start, or a running one hands it over.
    let (mut ownership, mut takeover) = match Ownership::claim(&flags, &identity) {
        Ok(o) => (Some(o), None),
        Err(OwnershipError::Taken { .. }) => match takeover::begin(&flags, &identity)? {
            Some(t) => (None, Some(t)),
            // The owner left between the two looks.
            None => (Some(Ownership::claim(&flags, &identity)?), None),
        },
        Err(e) => return Err(e.into()),
    };
    match (&ownership, &takeover) {
        (Some(o), _) => {
            info!(table = o.table(), lock = %format!("@{}", crate::ownership::lock_name(o.table())), "claimed the nft table for this network namespace")
        }
        (None, Some((t, set))) => {
            info!(predecessor = t.predecessor, listeners = set.len(), admin_listeners = t.admin.len(), "received the running instance's listeners")
        }
        (None, None) => {}
    }
    let mut guard = StartupGuard::new();
    let mut opts = args.table.compile_options();
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
    let budget = crate::limits::plan_and_install(crate::limits::BudgetInput {
        limit: crate::limits::raise_fd_limit().context("reading the open-file limit")?,
        workers,
        splice: args.forward_mode == forward::RelayMode::Splice,
        udp: args.udp_proxy_port != 0,
        max_connections: args.max_connections,
        udp_max_flows: args.udp_max_flows,
        udp_source_share: args.udp_source_share,
    })?;
    let config = ForwardConfig {
        port: args.proxy_port,
        workers,
        backlog: args.backlog,
        max_connections: budget.tcp_connections,
        max_pipes: budget.pipes,
        connect_timeout: args.connect_timeout,
        connect_attempts: args.connect_retries.saturating_add(1),
        idle_timeout: (!args.idle_timeout.is_zero()).then_some(args.idle_timeout),
        nodeport_addrs: args.nodeport_addresses.clone(),
        mode: args.forward_mode,
        outliers: args.outlier.policy(),
    };
    if let Some(limit) = crate::sockopt::backlog_limit().filter(|l| *l < args.backlog) {
        info!(somaxconn = limit, "accept queue capped by net.core.somaxconn; raise it for connection bursts");
    }
    // Per-backend data-path metrics, shared by the TCP and UDP paths; each publish keeps the
    // new table's backends and those still in use.
    let backend_metrics = Arc::new(MetricsRegistry::default());
    {
        let m = Arc::clone(&backend_metrics);
        publisher.on_publish(move |table| {
            m.retain_table(table);
            // Building a table (parsing, compiling) leaves freed memory in the allocator.
            crate::limits::release_free_memory();
        });
    }
    let shared = Shared::new(publisher.handle(), config, Arc::clone(&backend_metrics));
    // A successor's workers hold the predecessor's listeners but wait at the gate until the
    // predecessor has let go: until then every connection is the predecessor's, and the
    // kernel queues SYNs and datagrams on the shared sockets meanwhile.
    // A cold start's workers wait likewise until the first table is published: over the
    // rules a killed instance left, SYNs reach the new listeners at once, and a worker without
    // a table would reset them for want of a frontend; queued, they are served a moment later.
    let (listeners, gate) = match takeover.as_mut() {
        Some((_, set)) => (std::mem::take(set), Gate::closed()),
        None => {
            let gate = Gate::closed();
            let g = gate.clone();
            publisher.on_publish(move |_| g.lift());
            (bind_listeners(args, workers)?, gate)
        }
    };
    let offered = listeners.try_clone().context("duplicating the listeners for a later hand-over")?;
    // The admin servers likewise: a successor serves the predecessor's sockets, once it let go.
    let (admin_sockets, admin_gate) = match takeover.as_mut() {
        Some((t, _)) => (Arc::new(AdminSockets::new(std::mem::take(&mut t.admin))), Gate::closed()),
        None => (Arc::new(AdminSockets::new(Vec::new())), Gate::open()),
    };
    let release = Release::default();
    let steering = args.worker_steering.resolve(workers);
    let running = forward::start(Arc::clone(&shared), listeners.tcp, gate.clone(), release.clone(), steering)?;
    let tcp_control = running.control.clone();
    info!(workers, port = args.proxy_port, ipv6 = running.ipv6, steering = ?steering, "transparent listeners ready");
    let (udp, udp_workers) = match start_udp(args, &publisher, workers, backend_metrics, budget, (listeners.udp, gate.clone(), release.clone()))? {
        Some((s, w)) => (Some(s), Some(Arc::new(w))),
        None => (None, None),
    };

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
    if takeover.is_some() {
        // The predecessor's routing and table stay as they are: the table is re-synced from
        // this instance's routing table at its first publish (one atomic transaction: the
        // old rules apply until it commits), never deleted; neither is undone on failure,
        // since they are the predecessor's until it lets go.
        interception.adopt_routing();
    } else {
        let leftover = interception.leftover().context("looking for rules a previous instance left")?;
        if let Some(left) = leftover {
            // A killed instance's table: kept as it is until this instance's first table
            // replaces it in one transaction. Replacing it with an empty one now would let
            // Service traffic be routed on (out of the node) until then; kept, a SYN meets
            // either the new listeners or the drop for want of one, and is retransmitted.
            info!(table = %args.interception.nft_table, routing_complete = left.routing, "adopting the nft table and policy routes a previous instance left (killed or crashed)");
        }
        if leftover.is_some_and(|l| l.routing) {
            interception.adopt_routing();
        } else {
            let ic = Arc::clone(&interception);
            guard.on_failure("policy routing", move || Ok(ic.remove_routing()?));
            interception.install_routing().context("installing the policy routing")?;
        }
        // A start-up that fails undoes what it installed, and leaves a table it found.
        if leftover.is_none() {
            let ic = Arc::clone(&interception);
            guard.on_failure("nft table", move || Ok(ic.remove_table()?));
            interception.sync(&publisher.current()).context("installing the nft table")?;
        }
    }
    publisher.on_publish(interception.on_publish());
    let health;
    match source {
        TableSource::Manifests(path) => {
            let source = ManifestSource::new(path, opts, Arc::clone(&publisher)).with_settle(args.manifests_settle);
            // Before the first publish, so health and sync metrics see it.
            health = start_admin(args, &publisher, &interception, &shared, &udp, (Some(source.stats()), None), (&admin_sockets, &admin_gate))?;
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
            let kube = KubeSource::spawn(args.kubeconfig.clone(), opts, Arc::clone(&publisher), config)
                .context("starting the Kubernetes API source")?;
            health = start_admin(args, &publisher, &interception, &shared, &udp, (None, Some(kube.stats())), (&admin_sockets, &admin_gate))?;
            // Nothing is published until every initial list is complete; /healthz says 503
            // until then, and the interception forwards nothing it does not know.
            info!("waiting for the initial Services, EndpointSlices and Node lists");
            // Dropping the handle detaches the source's thread; it serves for the life of the
            // process, like the data-plane threads.
            drop(kube);
        }
    }
    if let Some((t, _)) = takeover {
        await_first_table(&publisher)?;
        interception.sync(&publisher.current()).context("re-syncing the adopted nft table")?;
        let adopter = DataPath {
            interception: Arc::clone(&interception),
            shared: Arc::clone(&shared),
            release: release.clone(),
            tcp: tcp_control.clone(),
            udp: udp_workers.clone(),
            admin: Arc::clone(&admin_sockets),
        };
        let (released, claimed) = t.finish(&flags, &adopter)?;
        // From here on this instance serves whatever happens: the predecessor has let go.
        gate.lift();
        admin_gate.lift();
        info!(
            connections_adopted = released.connections,
            flows_adopted = released.flows,
            predecessor_connections_draining = released.open_connections,
            "took over the listeners, the rules and the established connections"
        );
        match claimed {
            Ok(o) => ownership = Some(o),
            Err(e) => {
                warn!(error = %e, "serving, but without the ownership socket: a later instance cannot take over from this one")
            }
        }
    }
    if !args.rules_check_interval.is_zero() {
        interception.spawn_checker(args.rules_check_interval).context("starting the rules check")?;
    }
    guard.commit();
    let data_path = DataPath {
        interception: Arc::clone(&interception),
        shared: Arc::clone(&shared),
        release,
        tcp: tcp_control,
        udp: udp_workers,
        admin: Arc::clone(&admin_sockets),
    };
    let stop_accepting: StopAccepting = {
        let (release, udp) = (data_path.release.clone(), data_path.udp.clone());
        Arc::new(move || {
            release.release();
            if let Some(w) = &udp {
                w.wake();
            }
        })
    };
    if let Some(o) = &ownership {
        o.offer(Offer {
            listeners: offered,
            admin: {
                let sockets = Arc::clone(&admin_sockets);
                Box::new(move || sockets.offer())
            },
            data_path: Box::new(data_path),
        });
    }
    info!(generation = publisher.generation(), frontends = publisher.current().len(), "serving");
    Ok(Serving { interception, shared, stop_accepting, health, ownership, admin: admin_sockets })
}

/// The data path's side of a hand-over: both the predecessor's (pause, detach, release, or
/// take back and resume) and the successor's (adopt).
struct DataPath {
    interception: Arc<Interception>,
    shared: Arc<Shared>,
    release: Release,
    tcp: forward::Control,
    udp: Option<Arc<udp::UdpWorkers>>,
    /// The admin and health-check listeners: served until the release, then the successor's.
    admin: Arc<AdminSockets>,
}

impl DataPath {
    fn wake_udp(&self) {
        if let Some(w) = &self.udp {
            w.wake();
        }
    }
}

impl crate::ownership::HandOff for DataPath {
    fn pause(&self) {
        self.release.pause();
        self.wake_udp();
    }

    fn detach(&self) -> crate::handover::Detached {
        let pairs = self.tcp.detach(crate::handover::DETACH_TIMEOUT);
        let flows = self.udp.as_ref().map(|w| w.detach(crate::handover::STEP_TIMEOUT)).unwrap_or_default();
        crate::handover::Detached { pairs, flows }
    }

    fn adopt(&self, what: crate::handover::Detached) {
        self.tcp.adopt(what.pairs);
        if let Some(w) = &self.udp {
            w.adopt(what.flows);
        }
    }

    fn resume(&self) {
        self.release.resume();
        self.wake_udp();
    }

    fn release(&self) -> usize {
        // Rules first: nothing here may touch them once the successor owns them.
        self.interception.relinquish();
        self.release.release();
        self.wake_udp();
        self.admin.release();
        self.shared.open_connections()
    }
}

/// Binds the data path's listeners (a cold start).
fn bind_listeners(args: &RunArgs, workers: usize) -> anyhow::Result<ListenerSet> {
    let tcp = forward::bind_listeners(args.proxy_port, args.backlog, workers)?;
    let udp = if args.udp_proxy_port == 0 { Vec::new() } else { udp::bind_listeners(args.udp_proxy_port, workers)? };
    Ok(ListenerSet { tcp, udp })
}

/// How long a successor waits for its first routing table before giving up (the predecessor
/// keeps serving); within the predecessor's wait for Ready.
const FIRST_TABLE_WITHIN: Duration = Duration::from_secs(90);

/// A successor must not take connections before it knows the Services.
fn await_first_table(publisher: &Publisher) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + FIRST_TABLE_WITHIN;
    while publisher.generation() == 0 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no routing table within {FIRST_TABLE_WITHIN:?}; not taking over (the running instance keeps serving)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Starts the admin and health servers.
fn start_admin(
    args: &RunArgs,
    publisher: &Arc<Publisher>,
    interception: &Arc<Interception>,
    shared: &Arc<Shared>,
    udp: &Option<Arc<udp::UdpShared>>,
    (manifests, kube): (Option<Arc<controlplane::SourceStats>>, Option<Arc<controlplane::KubeSourceStats>>),
    (sockets, gate): (&Arc<AdminSockets>, &Gate),
) -> anyhow::Result<Arc<crate::admin::healthz::ProxyHealth>> {
    let sources = crate::admin::Sources {
        publisher: Arc::clone(publisher),
        interception: Some(Arc::clone(interception)),
        forward: Some(Arc::clone(shared)),
        manifests,
        kube,
        udp: udp.clone(),
    };
    crate::admin::start(&args.admin, sources, Arc::clone(sockets), gate.clone())
}

/// The UDP data path, unless `--udp-proxy-port 0` turned it off. Bound before any rule sends
/// it a datagram; woken on every publish so flows to a departed backend close at once (the
/// callback is registered before the netfilter one, which takes milliseconds).
fn start_udp(
    args: &RunArgs,
    publisher: &Arc<Publisher>,
    workers: usize,
    metrics: Arc<MetricsRegistry>,
    budget: &crate::limits::FdBudget,
    (listeners, gate, release): (Vec<Pair>, Gate, Release),
) -> anyhow::Result<Option<(Arc<udp::UdpShared>, udp::UdpWorkers)>> {
    if args.udp_proxy_port == 0 {
        info!("UDP data path off (--udp-proxy-port 0)");
        return Ok(None);
    }
    anyhow::ensure!(args.udp_proxy_port != args.proxy_port, "--udp-proxy-port must differ from --proxy-port");
    let config = udp::UdpConfig {
        port: args.udp_proxy_port,
        workers,
        max_flows: budget.udp_flows,
        max_flows_per_source: budget.udp_flows_per_source,
        timeouts: udp::Timeouts { idle: args.udp_timeout.max(Duration::from_millis(100)), stream: args.udp_stream_timeout.max(args.udp_timeout) },
        nodeport_addrs: args.nodeport_addresses.clone(),
    };
    let shared = udp::UdpShared::new(publisher.handle(), config, metrics);
    let running = udp::start(Arc::clone(&shared), listeners, gate, release)?;
    info!(workers, port = args.udp_proxy_port, ipv6 = running.ipv6, "transparent UDP listeners ready");
    publisher.on_publish(running.on_publish());
    // The threads serve for the life of the process, like the TCP ones; `shared` is what the
    // stats are read from, `running` what a hand-over wakes.
    Ok(Some((shared, running)))
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

/// Refuses to start without the capabilities the interception needs, and says which
/// features a missing optional one breaks (before anything is installed).
fn check_capabilities() -> anyhow::Result<()> {
    let effective = match crate::capabilities::effective() {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "cannot read this process's capabilities; not checking them");
            return Ok(());
        }
    };
    let assessment = crate::capabilities::assess(effective, crate::capabilities::unprivileged_port_start());
    if let Some(error) = assessment.error() {
        anyhow::bail!(error);
    }
    for need in &assessment.missing_optional {
        warn!(capability = need.name, "without CAP_{}: {}", need.name, need.features);
    }
    Ok(())
}
