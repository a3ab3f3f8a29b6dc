//! `tpvs ready` flags: which table, which instance, and where its health is answered.

use std::net::SocketAddr;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct ReadyArgs {
    /// Name of the nftables table whose owner is asked (as `tpvs run --nft-table`).
    #[arg(long, default_value = "tpvs")]
    pub nft_table: String,
    /// The instance that must own the table (as `tpvs run --instance-id`; the DaemonSet passes
    /// the pod's UID).
    #[arg(long, value_name = "ID", env = "TPVS_INSTANCE_ID")]
    pub instance_id: String,
    /// Where the owner answers `/healthz` (a wildcard `--healthz-bind-address` answers on
    /// loopback).
    #[arg(long, default_value = "127.0.0.1:10256")]
    pub healthz: SocketAddr,
}
