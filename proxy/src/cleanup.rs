//! `tpvs cleanup`: removes everything `tpvs run` installs in this network namespace (the nft
//! table, the policy-routing rules and routes), for a daemon that was killed without its
//! clean shutdown. Idempotent: running it twice, or with nothing installed, succeeds.

use std::process::ExitCode;

use anyhow::Context as _;
use crate::cli::CleanupArgs;

pub fn run(args: &CleanupArgs) -> anyhow::Result<ExitCode> {
    crate::netfilter::remove_all(&args.interception.nft_table, args.interception.routing())
        .context("removing the tpvs interception")?;
    Ok(ExitCode::SUCCESS)
}
