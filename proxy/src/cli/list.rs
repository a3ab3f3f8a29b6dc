//! `tpvs list` flags.

use std::net::SocketAddr;

use clap::Args;

use super::TableArgs;

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub table: TableArgs,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Without --manifests: the running daemon's metrics address to read the live table from.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:10249")]
    pub server: SocketAddr,
    /// Live table: connection and byte totals per frontend and backend (like `ipvsadm --stats`).
    #[arg(long, conflicts_with = "manifests")]
    pub stats: bool,
    /// Live table: rates per second over one second (like `ipvsadm --rate`).
    #[arg(long, conflicts_with_all = ["manifests", "stats"])]
    pub rate: bool,
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    #[test]
    fn list_flags_parse() {
        match Cli::try_parse_from(["tpvs", "list", "--rate", "--server", "127.0.0.1:1"]).map(|c| c.command) {
            Ok(Command::List(a)) => assert!(a.rate && !a.stats && a.table.manifests.is_none()),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["tpvs", "list", "--rate", "--manifests", "x"]).is_err(), "rates need the daemon");
    }
}
