//! One scenario, once per scheduler: fresh backends, a fresh proxy (the TCP or the UDP
//! engine, by mode), the open-loop generator, then the numbers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use schedulers::{Scheduler, SchedulerKind};

use crate::backends::{self, Epoch, Spec};
use crate::client::{self, ClientConfig, Mode, Pacing, Target, UdpFlows};
use crate::metrics::Live;
use crate::pacer::Timeline;
use crate::progress::Progress;
use crate::record::Recorder;
use crate::scenario::Scenario;
use crate::summary::{self, ProxyCounters, RunResult, ScenarioReport};
use crate::target::{self, ProxySettings};
use tpvs::forward::PlainServer;
use tpvs::udp::PlainUdpServer;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub time_scale: f64,
    pub seed: u64,
    pub proxy: ProxySettings,
    pub client_threads: usize,
    pub backend_threads: usize,
    pub max_in_flight: u64,
    /// How persistent-mode requests reach their connections.
    pub pacing: Pacing,
    pub quiet: bool,
    /// Live results for `/metrics`, when served.
    pub live: Option<Arc<Live>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            time_scale: 1.0,
            seed: 0x7470_7673,
            proxy: ProxySettings::default(),
            client_threads: 1,
            backend_threads: 1,
            max_in_flight: 8_000,
            pacing: Pacing::default(),
            quiet: false,
            live: None,
        }
    }
}

/// Runs `scenario` (already scaled) once per scheduler, or once directly.
pub fn run_scenario(scenario: &Scenario, opts: &RunOptions) -> anyhow::Result<ScenarioReport> {
    let kinds: Vec<Option<SchedulerKind>> =
        if scenario.direct { vec![None] } else { scenario.schedulers.iter().copied().map(Some).collect() };
    let mut runs = Vec::with_capacity(kinds.len());
    for kind in kinds {
        let run = run_one(scenario, kind, opts).with_context(|| {
            format!("scenario {} with {}", scenario.name, kind.map_or("no proxy".to_string(), |k| k.to_string()))
        })?;
        if !opts.quiet {
            let generator = run
                .generator
                .as_ref()
                .map(|g| format!("  generator error p50 {:.1}µs p99 {:.1}µs", g.p50 * 1e3, g.p99 * 1e3))
                .unwrap_or_default();
            eprintln!(
                "{:<16} {:<7} p50 {:8.2}ms  p99 {:8.2}ms  p99.9 {:8.2}ms  max {:8.2}ms  ok {:.2}%{generator}",
                scenario.name,
                run.scheduler,
                run.latency.p50,
                run.latency.p99,
                run.latency.p999,
                run.latency.max,
                run.success_rate * 100.0
            );
        }
        runs.push(run);
    }
    let best = summary::best(&runs).and_then(|i| runs.get(i)).map(|r| r.scheduler.clone());
    Ok(ScenarioReport {
        scenario: scenario.clone(),
        time_scale: opts.time_scale,
        seed: opts.seed,
        runs,
        best,
        other_seeds: Vec::new(),
        spread: None,
    })
}

/// One scenario with one scheduler (`None`: straight to backend 0, no proxy).
pub fn run_one(scenario: &Scenario, kind: Option<SchedulerKind>, opts: &RunOptions) -> anyhow::Result<RunResult> {
    // A little lead time, so backends and proxy are up before the first request is due.
    let timeline = Timeline {
        start: Instant::now() + Duration::from_millis(300),
        rate: scenario.rate,
        warmup: scenario.warmup,
        measure: scenario.measure,
    };
    let rec = Arc::new(Recorder::for_timeline(&timeline));
    let specs: Vec<Spec> = scenario
        .backends
        .iter()
        .enumerate()
        .map(|(i, profile)| Spec { index: i, bind: backends::loopback_addr(i), profile: profile.clone() })
        .collect();
    let epoch = Epoch { measure_from: timeline.measure_from() };
    let farm = backends::start(&specs, opts.seed, epoch, scenario.mode == Mode::Udp, opts.backend_threads)
        .context("starting the loopback backends")?;

    let name = kind.map_or("direct", SchedulerKind::as_str);
    let sched: Option<Arc<dyn Scheduler>> = kind.map(|k| target::scheduler(k, &farm.addrs, opts.seed));
    let proxy = match (&sched, scenario.mode) {
        (None, _) => None,
        (Some(s), Mode::Udp) => Some(Engine::Udp(
            target::start_udp_proxy(Arc::clone(s), &scenario.name, opts.proxy, scenario.timeout).context("starting the tpvs UDP engine")?,
        )),
        (Some(s), _) => Some(Engine::Tcp(target::start_proxy(Arc::clone(s), &scenario.name, opts.proxy).context("starting the tpvs engine")?)),
    };
    let (target, target_label) = match &proxy {
        Some(p) => (Target::Addr(p.addr()), format!("tpvs plain listener {}", p.addr())),
        None => {
            let a = *farm.addrs.first().context("a direct scenario needs a backend")?;
            (Target::Addr(a), format!("backend {a} (no proxy)"))
        }
    };

    if let Some(live) = &opts.live {
        live.begin(&scenario.name, name, Arc::clone(&rec));
    }
    let progress = Progress::start(format!("{} {name}", scenario.name), timeline, Arc::clone(&rec), opts.quiet);
    let cfg = ClientConfig {
        mode: scenario.mode,
        connections: scenario.connections,
        timeout: scenario.timeout,
        max_in_flight: opts.max_in_flight,
        threads: opts.client_threads,
        pacing: opts.pacing,
        udp_flows: scenario.udp_flows,
        protocol: client::Protocol::Frames,
    };
    let stop = AtomicBool::new(false);
    let driven = client::drive(&target, timeline, cfg, &rec, &stop);
    progress.finish();
    driven.context("running the load")?;

    let counters = proxy.map(Engine::stop);
    let addrs = farm.addrs.clone();
    drop(farm);

    let sent = rec.sent.load(std::sync::atomic::Ordering::Relaxed);
    let mut run = rec.with(|t| {
        RunResult::from_tallies(name, scenario.mode.as_str(), &target_label, sent, scenario.measure.as_secs_f64(), t)
    });
    // Requests that neither succeeded nor failed by the end (a stuck task) are timeouts: the
    // report must account for every request it sent.
    let unresolved = run.sent.saturating_sub(run.recorded + run.failed);
    if unresolved > 0 {
        *run.failures.entry("timeout".to_string()).or_insert(0) += unresolved;
        run.failed += unresolved;
    }
    run.proxy = counters;
    annotate_backends(&mut run, scenario, &addrs, sched.as_deref());
    run.recovery = summary::recoveries(scenario, &run);
    if let Some(live) = &opts.live {
        live.end(&run);
    }
    Ok(run)
}

/// The self-hosted engine in front of the backends.
enum Engine {
    Tcp(PlainServer),
    Udp(PlainUdpServer),
}

impl Engine {
    fn addr(&self) -> SocketAddr {
        match self {
            Engine::Tcp(p) => p.addr,
            Engine::Udp(p) => p.addr,
        }
    }

    /// Stops it and returns its counters over the run.
    fn stop(self) -> ProxyCounters {
        use std::sync::atomic::Ordering::Relaxed;
        match self {
            Engine::Tcp(p) => {
                let s = &p.shared.stats;
                let c = ProxyCounters {
                    accepted: s.accepted.load(Relaxed),
                    connect_failed: s.connect_failed.load(Relaxed),
                    over_limit: s.over_limit.load(Relaxed),
                };
                p.stop();
                c
            }
            Engine::Udp(p) => {
                let s = p.shared.snapshot();
                p.stop();
                ProxyCounters {
                    accepted: s.flows_created,
                    connect_failed: s.drop_no_backend + s.drop_socket + s.drop_backend_refused,
                    over_limit: s.drop_max_flows + s.drop_source_share,
                }
            }
        }
    }
}

/// Adds every backend (also those that served nothing), its address and label, and the
/// scheduler's own view of it.
fn annotate_backends(run: &mut RunResult, scenario: &Scenario, addrs: &[SocketAddr], sched: Option<&dyn Scheduler>) {
    let n = scenario.backends.len().max(run.backends.len());
    while run.backends.len() < n {
        let index = run.backends.len();
        run.backends.push(summary::BackendResult {
            index,
            addr: String::new(),
            label: String::new(),
            requests: 0,
            share: 0.0,
            latency: summary::Percentiles::default(),
            picks: None,
            connect_failures: None,
        });
    }
    run.pad_per_second(n);
    for b in &mut run.backends {
        if let Some(a) = addrs.get(b.index) {
            b.addr = a.to_string();
        }
        if let Some(p) = scenario.backends.get(b.index) {
            b.label = p.label();
        }
        if let Some(stats) = sched.and_then(|s| s.backends().get(b.index)).map(|be| &be.stats) {
            b.picks = Some(stats.picks());
            b.connect_failures = Some(stats.failures());
        }
    }
}

/// Load against any address: no backends or proxy of our own.
#[derive(Clone, Debug)]
pub struct ExternalSpec {
    pub target: SocketAddr,
    pub mode: Mode,
    pub rate: f64,
    pub warmup: Duration,
    pub measure: Duration,
    pub connections: usize,
    pub timeout: Duration,
    pub label: String,
    pub protocol: client::Protocol,
}

pub fn run_external(spec: &ExternalSpec, opts: &RunOptions) -> anyhow::Result<ScenarioReport> {
    anyhow::ensure!(spec.rate.is_finite() && spec.rate > 0.0, "the rate must be positive");
    let scenario = Scenario {
        name: "external".to_string(),
        title: format!("External target {}", spec.target),
        about: "Open-loop load against an address outside this process; backend shares come from the replies.".to_string(),
        backends: Vec::new(),
        rate: spec.rate,
        warmup: spec.warmup,
        measure: spec.measure,
        mode: spec.mode,
        connections: spec.connections,
        timeout: spec.timeout,
        direct: false,
        schedulers: Vec::new(),
        udp_flows: UdpFlows::Shared,
    };
    let timeline =
        Timeline { start: Instant::now() + Duration::from_millis(100), rate: spec.rate, warmup: spec.warmup, measure: spec.measure };
    let rec = Arc::new(Recorder::for_timeline(&timeline));
    if let Some(live) = &opts.live {
        live.begin("external", &spec.label, Arc::clone(&rec));
    }
    let progress = Progress::start(format!("external {}", spec.label), timeline, Arc::clone(&rec), opts.quiet);
    let cfg = ClientConfig {
        mode: spec.mode,
        connections: spec.connections,
        timeout: spec.timeout,
        max_in_flight: opts.max_in_flight,
        threads: opts.client_threads,
        pacing: opts.pacing,
        // Unchanged for external targets: one socket, so one flow to whatever is behind it.
        udp_flows: UdpFlows::Shared,
        protocol: spec.protocol.clone(),
    };
    let stop = AtomicBool::new(false);
    let driven = client::drive(&Target::Addr(spec.target), timeline, cfg, &rec, &stop);
    progress.finish();
    driven.context("running the load")?;
    let sent = rec.sent.load(std::sync::atomic::Ordering::Relaxed);
    // HTTP replies do not say which backend served them: the run has no per-backend shares.
    let mode = match spec.protocol {
        client::Protocol::Frames => spec.mode.as_str(),
        client::Protocol::Http(_) => "http-keep-alive",
    };
    let mut run = rec.with(|t| RunResult::from_tallies(&spec.label, mode, &spec.target.to_string(), sent, spec.measure.as_secs_f64(), t));
    let unresolved = run.sent.saturating_sub(run.recorded + run.failed);
    if unresolved > 0 {
        *run.failures.entry("timeout".to_string()).or_insert(0) += unresolved;
        run.failed += unresolved;
    }
    // Nothing here knows what stands behind the target: the backends are those that answered
    // (by the index each reply carried), and shares and the pinned rule are about them only.
    run.backends.retain(|b| b.requests > 0);
    if let Some(live) = &opts.live {
        live.end(&run);
    }
    let best = Some(run.scheduler.clone());
    Ok(ScenarioReport { scenario, time_scale: 1.0, seed: opts.seed, runs: vec![run], best, other_seeds: Vec::new(), spread: None })
}
