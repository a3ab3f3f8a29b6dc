//! The command line: `list`, `run` (self-hosted comparison), `serve` (profiled backends for an
//! external target) and `external` (load against any address).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use schedulers::SchedulerKind;

use crate::backends::{self, Epoch, Spec};
use crate::client::http::HttpRequest;
use crate::client::{Mode, Pacing, Protocol};
use crate::metrics::{self, Live};
use crate::report;
use crate::runner::{self, RunOptions};
use crate::scenario::{self, Scenario};
use crate::summary::{Report, ScenarioReport};
use crate::target::ProxySettings;

#[derive(Debug, Parser)]
#[command(name = "tpvs-loadtest", version, about = "Compare tpvs schedulers under open-loop load with latency-profiled backends")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the built-in scenarios.
    List,
    /// Run built-in scenarios against loopback backends through the in-process tpvs engine,
    /// once per scheduler.
    Run(RunArgs),
    /// Serve a scenario's backend profiles on the given addresses (to stand behind a real
    /// Service for `external`); runs until interrupted.
    Serve(ServeArgs),
    /// Re-render a JSON report (tables, HTML) with the current rules.
    Report(ReportArgs),
    /// Send open-loop load to any address (a Service VIP, a NodePort) and report; per-backend
    /// shares come from the backends' own replies (`serve`).
    External(ExternalArgs),
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Write the full report as JSON.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report with charts.
    #[arg(long, value_name = "PATH")]
    pub html: Option<PathBuf>,
    /// Serve live results in Prometheus text format on this address.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// No progress line and no per-run lines (tables are still printed).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Scenarios to run (default: all built-in ones).
    pub scenarios: Vec<String>,
    /// Multiply every time line (warm-up, measurement, stall windows and latency) by this; 0.1
    /// turns the 30 s stall into 3 s for CI.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Schedulers to compare, comma-separated (default: the scenario's, normally all twelve).
    #[arg(long, value_delimiter = ',')]
    pub schedulers: Vec<SchedulerKind>,
    /// Override the scenario's request rate (requests per second).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Override the scenario's transport.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Seed for service times and randomised schedulers: same seed, same run.
    #[arg(long, default_value_t = 0x7470_7673)]
    pub seed: u64,
    /// Run every scenario × scheduler once per seed (comma-separated; overrides --seed) and
    /// report per scheduler the median and the spread (min–max) across seeds; the best
    /// scheduler is decided on the medians.
    #[arg(long, value_delimiter = ',', value_name = "SEED,...")]
    pub seeds: Vec<u64>,
    /// Event-loop threads of the in-process tpvs engine.
    #[arg(long, default_value_t = 2)]
    pub proxy_workers: usize,
    /// Generator runtime threads.
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// How persistent-mode requests reach their connections: `direct` (the pacer thread
    /// writes them) or `handoff` (through the runtime, as before; for comparison).
    #[arg(long, value_enum, default_value = "direct")]
    pub pacing: Pacing,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Reports written by `run --json` or `external --json`. Several are merged scenario by
    /// scenario into one multi-seed report (each scenario's seeds pooled: e.g. seed 1 from one
    /// invocation and seeds 2 and 3 from another); a seed may not appear twice.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Built-in scenario whose backend profiles to serve, in order.
    #[arg(long, default_value = "one-stalled")]
    pub scenario: String,
    /// One address per backend (repeat, or comma-separate); fewer than the scenario has serves
    /// the first ones (from --index).
    #[arg(long, value_delimiter = ',', required = true)]
    pub listen: Vec<SocketAddr>,
    /// The scenario backend the first address plays (one pod per backend: pod K passes K).
    #[arg(long, default_value_t = 0)]
    pub index: usize,
    /// Answer UDP on the same addresses too.
    #[arg(long)]
    pub udp: bool,
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    #[arg(long, default_value_t = 0x7470_7673)]
    pub seed: u64,
}

/// What `external` sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolArg {
    /// tpvs-loadtest frames (backends run by `serve`; replies name their backend).
    Frames,
    /// HTTP/1.1 keep-alive GETs (any web server; needs --mode persistent; no per-backend
    /// shares, the replies do not name a backend).
    Http,
}

#[derive(Debug, Args)]
pub struct ExternalArgs {
    /// Where to send requests (the backends behind it must speak the tpvs-loadtest frames,
    /// or HTTP with --protocol http).
    #[arg(long)]
    pub target: SocketAddr,
    #[arg(long, value_enum, default_value = "frames")]
    pub protocol: ProtocolArg,
    /// HTTP: the path requested.
    #[arg(long, default_value = "/")]
    pub http_path: String,
    /// HTTP: the Host header (default: the target address).
    #[arg(long)]
    pub http_host: Option<String>,
    /// Also print one machine-readable line: `summary sent=N ok=N failed=N p50_ms=X p99_ms=X
    /// p999_ms=X max_ms=X generator_p99_us=X` (generator_p99_us=nan when not measured).
    #[arg(long)]
    pub summary_line: bool,
    #[arg(long, value_enum, default_value = "per-request")]
    pub mode: Mode,
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    #[arg(long, default_value = "30", value_parser = parse_secs)]
    pub duration: Duration,
    #[arg(long, default_value = "5", value_parser = parse_secs)]
    pub warmup: Duration,
    /// Persistent-mode pool size.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub timeout: Duration,
    /// A label for the report (e.g. the Service's scheduler).
    #[arg(long, default_value = "external")]
    pub label: String,
    #[command(flatten)]
    pub out: OutputArgs,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim_end_matches('s').parse().map_err(|e| format!("{s:?}: {e}"))?;
    if v.is_finite() && v >= 0.0 { Ok(Duration::from_secs_f64(v)) } else { Err(format!("{s:?}: not a duration")) }
}

pub fn main(cli: Cli) -> anyhow::Result<ExitCode> {
    // Connect-per-request load keeps thousands of sockets open (client, proxy both ways,
    // backend); a failure to raise the limit only shows as failed requests, which are counted.
    let _ = tpvs::limits::raise_fd_limit();
    match cli.command {
        Command::List => {
            for s in scenario::builtin() {
                println!("{:<20} {}\n{:<20} {}\n", s.name, s.title, "", report::load_line(&s));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run(args),
        Command::Serve(args) => serve(args),
        Command::Report(args) => rerender(args),
        Command::External(args) => external(args),
    }
}

fn start_metrics(out: &OutputArgs) -> anyhow::Result<Option<Arc<Live>>> {
    let Some(addr) = out.metrics_addr else { return Ok(None) };
    let live = Arc::new(Live::default());
    let bound = metrics::serve(addr, Arc::clone(&live)).with_context(|| format!("serving /metrics on {addr}"))?;
    eprintln!("live results on http://{bound}/metrics");
    Ok(Some(live))
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let names: Vec<String> =
        if args.scenarios.is_empty() { scenario::builtin().into_iter().map(|s| s.name).collect() } else { args.scenarios.clone() };
    let mut chosen: Vec<Scenario> = Vec::new();
    for n in &names {
        let s = scenario::find(n).with_context(|| format!("no built-in scenario {n:?} (see `tpvs-loadtest list`)"))?;
        chosen.push(s);
    }
    let opts = RunOptions {
        time_scale: args.time_scale,
        seed: args.seed,
        proxy: ProxySettings { workers: args.proxy_workers.max(1), ..ProxySettings::default() },
        client_threads: args.client_threads.max(1),
        pacing: args.pacing,
        live: start_metrics(&args.out)?,
        quiet: args.out.quiet,
        ..RunOptions::default()
    };
    let mut reports = Vec::new();
    for mut s in chosen {
        s = s.scaled(args.time_scale);
        if let Some(r) = args.rate {
            anyhow::ensure!(r.is_finite() && r > 0.0, "--rate must be positive");
            s.rate = r;
        }
        if let Some(m) = args.mode {
            s.mode = m;
        }
        if !args.schedulers.is_empty() && !s.direct {
            s.schedulers = args.schedulers.clone();
        }
        let seeds = if args.seeds.is_empty() { vec![args.seed] } else { args.seeds.clone() };
        let distinct: std::collections::BTreeSet<u64> = seeds.iter().copied().collect();
        anyhow::ensure!(distinct.len() == seeds.len(), "--seeds lists a seed twice: {seeds:?}");
        let mut per_seed = Vec::with_capacity(seeds.len());
        for seed in seeds {
            per_seed.push(runner::run_scenario(&s, &RunOptions { seed, ..opts.clone() })?);
        }
        let sr = crate::seeds::combine(per_seed).context("no seed to run")?;
        println!("{}", report::table::render(&sr));
        reports.push(sr);
    }
    write_outputs(&args.out, reports)?;
    Ok(ExitCode::SUCCESS)
}

fn write_outputs(out: &OutputArgs, scenarios: Vec<ScenarioReport>) -> anyhow::Result<()> {
    let report = Report {
        tool: format!("tpvs-loadtest {}", env!("CARGO_PKG_VERSION")),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        scenarios,
    };
    if let Some(p) = &out.json {
        let text = serde_json::to_string_pretty(&report).context("encoding the JSON report")?;
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("JSON report: {}", p.display());
    }
    if let Some(p) = &out.html {
        std::fs::write(p, report::html::render(&report)).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("HTML report: {}", p.display());
    }
    Ok(())
}

fn rerender(args: ReportArgs) -> anyhow::Result<ExitCode> {
    // Each scenario's reports from every input, in the order the scenarios first appear.
    let mut by_scenario: Vec<(String, Vec<ScenarioReport>)> = Vec::new();
    for input in &args.inputs {
        let text = std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
        let report: Report = serde_json::from_str(&text).with_context(|| format!("{} is not a report", input.display()))?;
        for sr in report.scenarios {
            match by_scenario.iter_mut().find(|(name, _)| *name == sr.scenario.name) {
                Some((_, reports)) => reports.push(sr),
                None => by_scenario.push((sr.scenario.name.clone(), vec![sr])),
            }
        }
    }
    let mut scenarios = Vec::with_capacity(by_scenario.len());
    for (name, reports) in by_scenario {
        if reports.len() < args.inputs.len() {
            eprintln!("scenario {name}: in {} of the {} reports; merged from those", reports.len(), args.inputs.len());
        }
        let merged = crate::seeds::merge(reports).map_err(anyhow::Error::msg)?;
        scenarios.extend(merged);
    }
    for sr in &mut scenarios {
        crate::seeds::rejudge(sr);
        println!("{}", report::table::render(sr));
    }
    write_outputs(&args.out, scenarios)?;
    Ok(ExitCode::SUCCESS)
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let s = scenario::find(&args.scenario)
        .with_context(|| format!("no built-in scenario {:?}", args.scenario))?
        .scaled(args.time_scale);
    let specs: Vec<Spec> = s
        .backends
        .iter()
        .enumerate()
        .skip(args.index)
        .zip(&args.listen)
        .map(|((index, profile), bind)| Spec { index, bind: *bind, profile: profile.clone() })
        .collect();
    anyhow::ensure!(!specs.is_empty(), "scenario {} has {} backends; --index {} is past them", s.name, s.backends.len(), args.index);
    // The profiles' windows count from the end of the scenario's warm-up, from now.
    let epoch = Epoch { measure_from: Instant::now() + s.warmup };
    let farm = backends::start(&specs, args.seed, epoch, args.udp, 2).context("starting backends")?;
    for (a, spec) in farm.addrs.iter().zip(&specs) {
        eprintln!("backend #{} on {a}: {} {}", spec.index, spec.profile.latency.describe(), spec.profile.label());
    }
    eprintln!("serving; interrupt to stop");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn external(args: ExternalArgs) -> anyhow::Result<ExitCode> {
    let protocol = match args.protocol {
        ProtocolArg::Frames => Protocol::Frames,
        ProtocolArg::Http => {
            anyhow::ensure!(args.mode == Mode::Persistent, "--protocol http needs --mode persistent (keep-alive connections)");
            let host = args.http_host.clone().unwrap_or_else(|| args.target.to_string());
            Protocol::Http(Arc::new(HttpRequest::get(&args.http_path, &host).map_err(anyhow::Error::msg)?))
        }
    };
    let live = start_metrics(&args.out)?;
    let sr = runner::run_external(
        &runner::ExternalSpec {
            target: args.target,
            mode: args.mode,
            rate: args.rate,
            warmup: args.warmup,
            measure: args.duration,
            connections: args.connections,
            timeout: args.timeout,
            label: args.label.clone(),
            protocol,
        },
        &RunOptions { live, quiet: args.out.quiet, ..RunOptions::default() },
    )?;
    println!("{}", report::table::render(&sr));
    if args.summary_line
        && let Some(r) = sr.runs.first()
    {
        let generator = r.generator.map_or("nan".to_string(), |g| format!("{:.1}", g.p99 * 1e3));
        println!(
            "summary sent={} ok={} failed={} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3} generator_p99_us={generator}",
            r.sent, r.recorded, r.failed, r.latency.p50, r.latency.p99, r.latency.p999, r.latency.max
        );
    }
    write_outputs(&args.out, vec![sr])?;
    Ok(ExitCode::SUCCESS)
}
