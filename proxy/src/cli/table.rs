//! The flags every subcommand that compiles a table shares (`list`, `explain`, `run`).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use controlplane::{CompileOptions, DetectLocalMode, IpNet, LocalTrafficOptions};
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
    /// Overrides tpvs's idea of this node's IP of its family (otherwise the Node object's
    /// first InternalIP, else ExternalIP). kube-proxy's flag and meaning: nothing binds to it.
    /// It decides whether the node lies inside a Service's `loadBalancerSourceRanges`.
    /// 0.0.0.0 or :: (the default) means not set.
    #[arg(long, value_name = "IP", value_parser = parse_bind_address)]
    pub bind_address: Option<IpAddr>,
    /// How traffic from this node's pods is recognised, so that it reaches an
    /// `externalTrafficPolicy: Local` Service's NodePort, load-balancer IP or externalIP through
    /// all its endpoints (kube-proxy's short-circuit): ClusterCIDR (sources inside
    /// `--cluster-cidr`) or NodeCIDR (inside the Node's `spec.podCIDRs`). The node's own
    /// connections are always recognised. BridgeInterface and InterfaceNamePrefix are refused:
    /// a userspace proxy does not see the interface a connection came in on.
    #[arg(long, value_name = "MODE", default_value = "ClusterCIDR", value_parser = parse_detect_local_mode)]
    pub detect_local_mode: DetectLocalMode,
    /// The pods' address ranges across the cluster (comma-separated, one per family), for
    /// `--detect-local-mode ClusterCIDR`; the first of each family is used, as in kube-proxy.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',', value_parser = parse_cidr)]
    pub cluster_cidr: Vec<IpNet>,
}

impl TableArgs {
    /// The compiler settings these flags describe; `list` and `run` must compile alike, so
    /// both take them from here.
    pub fn compile_options(&self) -> CompileOptions {
        CompileOptions {
            node_name: self.hostname_override.clone(),
            default_scheduler: self.scheduler,
            external_ip_cidrs: self.external_ip_cidrs.clone(),
            bind_address: self.bind_address,
            local_traffic: LocalTrafficOptions { mode: self.detect_local_mode, cluster_cidrs: self.cluster_cidr.clone() },
            ..CompileOptions::default()
        }
    }
}

fn parse_scheduler(s: &str) -> Result<SchedulerKind, String> {
    s.parse().map_err(|e: schedulers::UnknownScheduler| e.to_string())
}

fn parse_detect_local_mode(s: &str) -> Result<DetectLocalMode, String> {
    s.parse().map_err(|e: controlplane::DetectLocalModeError| e.to_string())
}

/// An IP address; the unspecified one (kube-proxy's default) means "not set".
fn parse_bind_address(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s.trim().parse().map_err(|_| format!("{s:?} is not an IP address"))?;
    if ip.is_unspecified() {
        return Err("0.0.0.0 and :: mean \"not set\": leave the flag out".to_string());
    }
    Ok(ip)
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

    fn options(args: &[&str]) -> Result<controlplane::CompileOptions, String> {
        let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
        match cli.command {
            Command::List(a) => Ok(a.table.compile_options()),
            Command::Run(a) => Ok(a.table.compile_options()),
            _ => Err("other command".into()),
        }
    }

    #[test]
    fn local_traffic_flags_reach_the_compiler_and_interface_modes_are_refused() {
        let o = options(&["tpvs", "run", "--manifests", "m", "--cluster-cidr", "10.1.0.0/16,fd01::/48", "--bind-address", "10.0.0.1"]);
        let o = o.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.local_traffic.mode, controlplane::DetectLocalMode::ClusterCidr, "kube-proxy's default");
        let cidrs: Vec<String> = o.local_traffic.cluster_cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(cidrs, ["10.1.0.0/16", "fd01::/48"]);
        assert_eq!(o.bind_address, "10.0.0.1".parse().ok());
        let o = options(&["tpvs", "list", "--manifests", "m", "--detect-local-mode", "NodeCIDR"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.local_traffic.mode, controlplane::DetectLocalMode::NodeCidr);
        let bad = options(&["tpvs", "run", "--manifests", "m", "--detect-local-mode", "BridgeInterface"]);
        assert!(bad.as_ref().is_err_and(|e| e.contains("not supported by tpvs")), "{bad:?}");
        let bad = options(&["tpvs", "run", "--manifests", "m", "--bind-address", "0.0.0.0"]);
        assert!(bad.as_ref().is_err_and(|e| e.contains("not set")), "{bad:?}");
    }
}
