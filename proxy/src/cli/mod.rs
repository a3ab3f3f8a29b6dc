//! The command line: subcommands and their flags (kube-proxy's names where one exists).
//!
//! Only the flag definitions live here, with the small value types and parsers they need:
//! nothing in this tree reaches into the commands, so any command (and the admin server) can
//! take its flags from here without an import cycle. Running the chosen command is the
//! `commands` module's job.

mod admin;
mod cleanup;
mod explain;
mod interception;
mod list;
mod outlier;
mod ready;
mod run;
mod table;

use clap::{Parser, Subcommand};

pub use admin::{AdminArgs, BindAddress};
pub use cleanup::CleanupArgs;
pub use explain::{ExplainArgs, ExplainProtocol};
pub use interception::InterceptionArgs;
pub use list::ListArgs;
pub use outlier::OutlierArgs;
pub use ready::ReadyArgs;
pub use run::RunArgs;
pub use table::TableArgs;

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
    // Boxed: its flags outweigh the other subcommands' several times over.
    Run(Box<RunArgs>),
    /// Remove every rule and route `tpvs run` installs in this network namespace.
    Cleanup(CleanupArgs),
    /// Succeed when this instance (--instance-id) owns the node's table and is healthy: the
    /// DaemonSet's readiness check, which an HTTP probe on the shared host port cannot make.
    Ready(ReadyArgs),
    /// Explain why a connection to DEST goes where it goes, or nowhere: the frontend, the
    /// Service, each endpoint's verdict, the scheduler's decision, what the client sees, and
    /// (from the running daemon) the rule and connection counters. Exit code: 0 forwarded,
    /// 1 refused, dropped or no frontend, 2 bad input.
    Explain(ExplainArgs),
}

impl Command {
    /// Log level without `-v`: the daemon narrates, one-shot tools stay quiet.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::List(_) => "warn",
            Command::Run(_) => "info",
            Command::Cleanup(_) | Command::Ready(_) => "warn",
            // What the table refused is part of the answer, not a warning to log.
            Command::Explain(_) => "error",
        }
    }
}
