//! The admin server flags of `tpvs run` (kube-proxy's names and defaults).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::units::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Address of the metrics server (`/metrics`, `/proxyMode`, `/api/table`); empty disables it.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:10249", value_parser = parse_bind)]
    pub metrics_bind_address: BindAddress,
    /// Address of the health server (`/healthz`, `/livez`); empty disables it.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:10256", value_parser = parse_bind)]
    pub healthz_bind_address: BindAddress,
    /// `/healthz` fails when a published table has waited this long for its rules (kube-proxy
    /// uses twice its sync period).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub healthz_pending_timeout: Duration,
    /// Per-backend series on /metrics for at most this many backends, the busiest (most
    /// connections); every backend still counts in the per-Service-port `tpvs_service_*`
    /// families. About 30 series a backend: raise it with care on large clusters.
    #[arg(long, default_value_t = 1000)]
    pub metrics_max_backends: usize,
}

/// A server address, or none (the flag set to "") to turn that server off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddress(pub Option<SocketAddr>);

fn parse_bind(s: &str) -> Result<BindAddress, String> {
    if s.is_empty() {
        return Ok(BindAddress(None));
    }
    s.parse().map(|a| BindAddress(Some(a))).map_err(|e| format!("{s:?}: expected IP:PORT ({e})"))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command, RunArgs};

    fn run_args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["tpvs", "run", "--manifests", "m.yaml"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Run(a)) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn admin_flags_default_to_kube_proxys_addresses_and_empty_turns_a_server_off() {
        let a = run_args(&[]).admin;
        assert_eq!(a.metrics_bind_address.0.map(|s| s.to_string()).as_deref(), Some("127.0.0.1:10249"));
        assert_eq!(a.healthz_bind_address.0.map(|s| s.to_string()).as_deref(), Some("0.0.0.0:10256"));
        let a = run_args(&["--metrics-bind-address", "", "--healthz-bind-address", "[::1]:1"]).admin;
        assert_eq!(a.metrics_bind_address.0, None);
        assert_eq!(a.healthz_bind_address.0.map(|s| s.to_string()).as_deref(), Some("[::1]:1"));
        let mut argv = vec!["tpvs", "run", "--metrics-bind-address", "nonsense"];
        argv.push("--manifests");
        argv.push("m.yaml");
        assert!(Cli::try_parse_from(argv).is_err());
    }
}
