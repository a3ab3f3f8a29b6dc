//! The flags every subcommand that compiles a table shares (`list`, `run`).

use std::path::PathBuf;

use clap::Args;
use controlplane::CompileOptions;
use schedulers::SchedulerKind;

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

impl TableArgs {
    /// The compiler settings these flags describe; `list` and `run` must compile alike, so
    /// both take them from here.
    pub fn compile_options(&self) -> CompileOptions {
        CompileOptions {
            node_name: self.hostname_override.clone(),
            default_scheduler: self.scheduler,
            ..CompileOptions::default()
        }
    }
}

fn parse_scheduler(s: &str) -> Result<SchedulerKind, String> {
    s.parse().map_err(|e: schedulers::UnknownScheduler| e.to_string())
}
