//! `tpvs cleanup`: removes everything `tpvs run` installs in this network namespace (the nft
//! table, the policy-routing rules and routes), for a daemon that was killed without its
//! clean shutdown. Idempotent: running it twice, or with nothing installed, succeeds. Refuses
//! while a running instance owns the table, unless `--force`.

use std::process::ExitCode;

use anyhow::Context as _;
use tracing::warn;

use crate::cli::CleanupArgs;
use crate::ownership;

pub fn run(args: &CleanupArgs) -> anyhow::Result<ExitCode> {
    let table = &args.interception.nft_table;
    let owner = ownership::owner(table).context("checking for a running tpvs")?;
    if let Some(o) = owner {
        if !args.force {
            anyhow::bail!(
                "a running tpvs ({}) owns nft table {table:?} in this network namespace; stop it (it removes its rules on SIGTERM), or pass --force",
                ownership::owner_text(o.pid)
            );
        }
        warn!(owner = ownership::owner_text(o.pid), table = %table, "removing the rules of a running tpvs (--force)");
    }
    crate::netfilter::remove_all(table, args.interception.routing()).context("removing the tpvs interception")?;
    Ok(ExitCode::SUCCESS)
}
