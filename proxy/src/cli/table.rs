//! The flags every subcommand that compiles a table shares (`list`, `explain`, `run`).

use std::path::PathBuf;

use clap::Args;
use controlplane::{CompileOptions, IpNet};
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
    /// The only ranges a Service's `spec.externalIPs` and `status.loadBalancer.ingress[].ip`
    /// may come from (CIDRs or single IPs, comma-separated); others are refused and reported.
    /// Not set: all are accepted, as kube-proxy does. ClusterIPs and NodePorts are not
    /// restricted by it; node, loopback, link-local and multicast addresses, and another
    /// Service's ClusterIP, are refused whatever it says.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',', value_parser = parse_cidr)]
    pub external_ip_cidrs: Vec<IpNet>,
}

impl TableArgs {
    /// The compiler settings these flags describe; `list` and `run` must compile alike, so
    /// both take them from here.
    pub fn compile_options(&self) -> CompileOptions {
        CompileOptions {
            node_name: self.hostname_override.clone(),
            default_scheduler: self.scheduler,
            external_ip_cidrs: self.external_ip_cidrs.clone(),
            ..CompileOptions::default()
        }
    }
}

fn parse_scheduler(s: &str) -> Result<SchedulerKind, String> {
    s.parse().map_err(|e: schedulers::UnknownScheduler| e.to_string())
}

/// A CIDR, or a single address as its /32 or /128 (`--external-ip-cidrs 192.0.2.7`).
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("{s:?} is not a CIDR (e.g. 192.0.2.0/24, 2001:db8::/64) or an IP address"))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    #[test]
    fn external_ip_cidrs_parse_into_the_compile_options_of_list_and_run() {
        let cidrs = |args: &[&str]| -> Result<Vec<String>, String> {
            let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
            let table = match cli.command {
                Command::List(a) => a.table,
                Command::Run(a) => a.table,
                _ => return Err("other command".into()),
            };
            Ok(table.compile_options().external_ip_cidrs.iter().map(|n| n.to_string()).collect())
        };
        assert_eq!(
            cidrs(&["tpvs", "list", "--manifests", "m", "--external-ip-cidrs", "192.0.2.0/24, 2001:db8::/64,198.51.100.7"]),
            Ok(vec!["192.0.2.0/24".to_string(), "2001:db8::/64".into(), "198.51.100.7/32".into()])
        );
        assert_eq!(cidrs(&["tpvs", "run", "--manifests", "m", "--external-ip-cidrs", "10.9.9.9/8"]), Ok(vec!["10.0.0.0/8".to_string()]));
        assert_eq!(cidrs(&["tpvs", "list", "--manifests", "m"]), Ok(vec![]), "not set: everything allowed");
        let bad = cidrs(&["tpvs", "list", "--manifests", "m", "--external-ip-cidrs", "192.0.2.0/33"]);
        assert!(bad.as_ref().is_err_and(|e| e.contains("is not a CIDR")), "{bad:?}");
    }
}
