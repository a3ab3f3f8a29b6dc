//! The command line: subcommands and their flags (kube-proxy's names where one exists).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use schedulers::SchedulerKind;

#[derive(Debug, Parser)]
#[command(name = "tpvs", version, about = "Node-local Kubernetes Service proxy: TPROXY interception, pluggable schedulers")]
pub struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the routing table, like `ipvsadm -Ln`: the running daemon's (with counters), or
    /// the one manifests compile to (--manifests).
    List(ListArgs),
    /// Run the node proxy: intercept Service traffic with TPROXY and forward it (needs root).
    Run(crate::run::RunArgs),
    /// Remove every rule and route `tpvs run` installs in this network namespace.
    Cleanup(crate::cleanup::CleanupArgs),
}

impl Command {
    /// Log level without `-v`: the daemon narrates, one-shot tools stay quiet.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::List(_) => "warn",
            Command::Run(_) => "info",
            Command::Cleanup(_) => "warn",
        }
    }
}

/// Flags every subcommand that compiles a table shares.
#[derive(Debug, Clone, Args)]
pub struct TableArgs {
    /// Kubernetes manifests (a file or a directory of YAML/JSON): Services, EndpointSlices and
    /// optionally this Node, as `kubectl get svc,endpointslices -A -o yaml` prints them.
    #[arg(long, value_name = "PATH")]
    pub manifests: Option<PathBuf>,
    /// This node's name: endpoints with this `nodeName` are local.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub hostname_override: Option<String>,
    /// Scheduler for Services without a `tpvs/scheduler` annotation.
    #[arg(long, default_value = "rr", value_parser = parse_scheduler)]
    pub scheduler: SchedulerKind,
}

fn parse_scheduler(s: &str) -> Result<SchedulerKind, String> {
    s.parse().map_err(|e: schedulers::UnknownScheduler| e.to_string())
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub table: TableArgs,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Without --manifests: the running daemon's metrics address to read the live table from.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:10249")]
    pub server: std::net::SocketAddr,
    /// Live table: connection and byte totals per frontend and backend (like `ipvsadm --stats`).
    #[arg(long, conflicts_with = "manifests")]
    pub stats: bool,
    /// Live table: rates per second over one second (like `ipvsadm --rate`).
    #[arg(long, conflicts_with_all = ["manifests", "stats"])]
    pub rate: bool,
}

/// Runs the chosen subcommand; the exit code says whether it succeeded.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        // With manifests: the table they compile to; without: the running daemon's.
        Command::List(args) if args.table.manifests.is_some() => crate::list::run(&args),
        Command::List(args) => crate::list_live::run(&args),
        Command::Run(args) => crate::run::run(args),
        Command::Cleanup(args) => crate::cleanup::run(&args),
    }
}
