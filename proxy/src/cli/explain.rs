//! `tpvs explain` flags.

use std::net::SocketAddr;

use clap::{Args, ValueEnum};

use super::TableArgs;

/// The protocols a client can ask about (tpvs intercepts these two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainProtocol {
    Tcp,
    Udp,
}

impl From<ExplainProtocol> for controlplane::Protocol {
    fn from(p: ExplainProtocol) -> Self {
        match p {
            ExplainProtocol::Tcp => controlplane::Protocol::Tcp,
            ExplainProtocol::Udp => controlplane::Protocol::Udp,
        }
    }
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Where the packet goes: IP:PORT, [IPv6]:PORT, or a bare PORT for a NodePort on this node.
    #[arg(value_name = "DEST", allow_hyphen_values = true)]
    pub destination: String,
    /// The client: IP or IP:PORT ([IPv6]:PORT). Needed to say which backend a hashing
    /// scheduler (sh, maglev: with the port) or session affinity gives it.
    #[arg(long, value_name = "CLIENT_IP[:PORT]")]
    pub from: Option<String>,
    #[arg(long, value_enum, default_value = "tcp")]
    pub protocol: ExplainProtocol,
    /// Print JSON (schema: docs/explain.md) instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub table: TableArgs,
    /// Without --manifests: the running daemon's metrics address to ask.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:10249")]
    pub server: SocketAddr,
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    #[test]
    fn explain_flags_parse() {
        match Cli::try_parse_from(["tpvs", "explain", "10.96.0.10:80", "--from", "10.0.0.5", "--protocol", "udp"]).map(|c| c.command) {
            Ok(Command::Explain(a)) => {
                assert_eq!((a.destination.as_str(), a.from.as_deref()), ("10.96.0.10:80", Some("10.0.0.5")));
                assert_eq!(a.protocol, super::ExplainProtocol::Udp);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["tpvs", "explain", "1:1", "--protocol", "sctp"]).is_err());
    }
}
