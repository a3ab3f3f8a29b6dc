//! The Kubernetes API source: kube-rs watchers on Services, EndpointSlices and this Node,
//! feeding the same [`ClusterIndex`] and [`Publisher`] as the manifests source.
//!
//! # Layout
//!
//! - [`watch`]: the three watchers; each object is converted to the compact model at receipt.
//! - `apply` (private): events → index, with the first-list and relist rules.
//! - [`stats`]: counters and latency histograms (unregistered; the daemon exports them).
//! - [`client`]: building the API client (in-cluster, or `--kubeconfig`).
//!
//! # Guarantees
//!
//! - The first table is published only after every watched resource has been listed in full;
//!   [`KubeSource::synced`] turns true at that publish (the daemon's `/healthz` waits for it).
//! - A failed list or watch is retried after a backoff; while the API server is away the
//!   published table is left exactly as it is.
//! - A `410 Gone` relists; objects missing from the new list are removed only when that list
//!   completes, so the table never passes through a half-listed state.
//! - Publishes are rate-limited by [`KubeSourceConfig::min_sync_period`] (kube-proxy's
//!   `--min-sync-period`): a change after a quiet period is published at once; changes arriving
//!   sooner than the period after the last publish are coalesced into one publish at its end.

mod apply;
pub mod client;
pub mod stats;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::compile::CompileOptions;
use crate::index::ClusterIndex;
use crate::publish::{PublishLog, Publisher, build_and_publish};
use apply::Applier;
pub use client::{KubeSourceError, kube_client};
pub use stats::{DurationHistogram, KubeSourceStats};
pub use watch::{TRIGGER_TIME_ANNOTATION, Watched};

/// Events buffered between the watchers and the index. Enough to absorb a list page or two
/// while a table is being built; beyond that the watchers wait (back-pressure, not loss).
const CHANNEL: usize = 2048;
/// At most this many events are applied before the publish deadline is looked at again, so a
/// continuous flood still publishes once per period.
const DRAIN: usize = 1024;

/// Settings of the API source.
#[derive(Clone, Debug)]
pub struct KubeSourceConfig {
    /// Minimum time between two publishes (kube-proxy's `--min-sync-period`).
    ///
    /// 100 ms by default. The first change after a quiet period is published immediately, so
    /// this is not a delay added to an isolated change; it bounds how often a burst (a rolling
    /// update touching a slice many times a second) rebuilds the table and reprograms the
    /// data plane: at most ten times a second, each rebuild costing one copy of the frontend
    /// map. kube-proxy's 1 s suits iptables-restore of the whole ruleset; a table swap here is
    /// far cheaper, so the bound can be tighter and a burst's tail waits at most 100 ms.
    pub min_sync_period: Duration,
    /// Objects per list page (client-go's default is 500): bounds the memory one list response
    /// costs in a large cluster.
    pub page_size: u32,
    /// A label selector for the Services watch, applied by the API server. `None` watches every
    /// Service (replacing kube-proxy). [`BESIDE_KUBE_PROXY`] watches only the Services labelled
    /// for tpvs, which kube-proxy skips: the two proxies then share a node without both
    /// intercepting the same Service. Either way the watch also excludes Services labelled
    /// `service.kubernetes.io/headless` (see [`services_label_selector`]).
    pub service_selector: Option<String>,
}

/// The Services label selector for running beside kube-proxy.
pub const BESIDE_KUBE_PROXY: &str = "service.kubernetes.io/service-proxy-name=tpvs";

/// The label selector the Services watch sends: never a Service labelled
/// `service.kubernetes.io/headless` (kube-proxy's informer excludes them the same way, so the
/// API server never sends them), plus the operator's selector if any.
pub fn services_label_selector(service_selector: Option<&str>) -> String {
    let not_headless = format!("!{}", crate::model::HEADLESS_LABEL);
    match service_selector.map(str::trim).filter(|s| !s.is_empty()) {
        Some(sel) => format!("{sel},{not_headless}"),
        None => not_headless,
    }
}

impl Default for KubeSourceConfig {
    fn default() -> Self {
        KubeSourceConfig { min_sync_period: Duration::from_millis(100), page_size: 500, service_selector: None }
    }
}

/// Watches the API and publishes the compiled table.
pub struct KubeSource {
    client: kube::Client,
    opts: CompileOptions,
    publisher: Arc<Publisher>,
    config: KubeSourceConfig,
    synced: Arc<AtomicBool>,
    stats: Arc<KubeSourceStats>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource").field("config", &self.config).field("synced", &self.synced()).finish()
    }
}

impl KubeSource {
    pub fn new(client: kube::Client, opts: CompileOptions, publisher: Arc<Publisher>, config: KubeSourceConfig) -> Self {
        KubeSource {
            client,
            opts,
            publisher,
            config,
            synced: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(KubeSourceStats::default()),
        }
    }

    /// True once the first complete table is live (never goes back to false: afterwards an
    /// API outage leaves the table as it is, which is still a table to serve).
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The flag behind [`Self::synced`], for the health endpoint (take it before `run`).
    pub fn synced_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.synced)
    }

    pub fn stats(&self) -> Arc<KubeSourceStats> {
        Arc::clone(&self.stats)
    }

    /// Runs until the task is dropped or aborted. Needs a tokio runtime with timers enabled.
    pub async fn run(self) {
        let started = Instant::now();
        let node_name = self.opts.node_name.clone();
        if node_name.is_none() {
            warn!("no node name (--hostname-override): the Node is not watched, topology hints ignore zones");
        }
        let (tx, mut rx) = mpsc::channel(CHANNEL);
        // Dropped with this future: the watchers stop with the source.
        let _watchers = watch::spawn_all(&self.client, node_name.as_deref(), &self.config, &tx);
        drop(tx);
        let mut applier = Applier::new(ClusterIndex::new(self.opts.clone()), node_name.is_some(), Arc::clone(&self.stats));
        let mut last_publish: Option<Instant> = None;
        loop {
            if applier.wants_publish() {
                let due = last_publish.map_or_else(Instant::now, |t| t + self.config.min_sync_period);
                if Instant::now() >= due {
                    self.publish(&mut applier, started);
                    last_publish = Some(Instant::now());
                    continue;
                }
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some(m) => drain(&mut applier, &mut rx, m),
                        None => return,
                    },
                    () = tokio::time::sleep_until(due.into()) => {}
                }
            } else {
                match rx.recv().await {
                    Some(m) => drain(&mut applier, &mut rx, m),
                    None => return,
                }
            }
        }
    }

    fn publish(&self, applier: &mut Applier, started: Instant) {
        let build_started = Instant::now();
        // Only this loop sets the flag, so it still tells whether this is the first publish. The
        // first one gets the initial-sync line below instead of the routine one.
        let first = !self.synced();
        let log = if first { PublishLog::Caller } else { PublishLog::Debug };
        let table = build_and_publish(&mut applier.index, &self.publisher, build_started, log);
        let live = Instant::now();
        let live_wall = SystemTime::now();
        applier.published();
        self.stats.publishes_total.fetch_add(1, Ordering::Relaxed);
        for at in applier.pending.received.drain(..) {
            self.stats.event_to_publish.observe(live.saturating_duration_since(at));
        }
        for t in applier.pending.triggers.drain(..) {
            // A trigger stamped in the future (skewed clocks) says nothing: skip it.
            if let Ok(d) = live_wall.duration_since(t) {
                self.stats.network_programming.observe(d);
            }
        }
        self.synced.store(true, Ordering::Release);
        if first {
            let took = started.elapsed();
            self.stats.initial_sync_nanos.store(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1), Ordering::Relaxed);
            info!(
                generation = table.generation,
                frontends = table.len(),
                took_ms = took.as_millis() as u64,
                "initial sync complete; routing table published"
            );
        }
    }

    /// One call for the daemon: builds the client (`kubeconfig`, else in-cluster) and runs the
    /// source on a thread of its own with its own runtime, so that neither list decoding nor a
    /// table build ever competes with the data plane's executor. Returns once the client is
    /// built; the first table follows when the initial lists are complete
    /// ([`KubeSourceHandle::synced`]).
    pub fn spawn(
        kubeconfig: Option<PathBuf>,
        opts: CompileOptions,
        publisher: Arc<Publisher>,
        config: KubeSourceConfig,
    ) -> Result<KubeSourceHandle, KubeSourceError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // The thread runs for the life of the process and nothing joins it: its handle is not kept.
        std::thread::Builder::new()
            .name("tpvs-kube".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("tpvs-kube")
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(KubeSourceError::Thread(e.to_string())));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match kube_client(kubeconfig.as_deref()).await {
                        Ok(client) => {
                            let source = KubeSource::new(client, opts, publisher, config);
                            let _ = ready_tx.send(Ok((source.synced_flag(), source.stats())));
                            source.run().await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| KubeSourceError::Thread(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok((synced, stats))) => Ok(KubeSourceHandle { synced, stats }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(KubeSourceError::Thread("the API source thread exited while starting".into())),
        }
    }
}

/// What the daemon keeps of a spawned [`KubeSource`].
#[derive(Debug)]
pub struct KubeSourceHandle {
    synced: Arc<AtomicBool>,
    stats: Arc<KubeSourceStats>,
}

impl KubeSourceHandle {
    /// True once the first complete table is live (for `/healthz`).
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> Arc<KubeSourceStats> {
        Arc::clone(&self.stats)
    }
}

/// Applies `first` and whatever else is already queued (up to [`DRAIN`]), so a burst that
/// arrived together is built into one table.
fn drain(applier: &mut Applier, rx: &mut mpsc::Receiver<watch::Received>, first: watch::Received) {
    applier.apply(first);
    for _ in 1..DRAIN {
        match rx.try_recv() {
            Ok(m) => applier.apply(m),
            Err(_) => break,
        }
    }
}
