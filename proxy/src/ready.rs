//! `tpvs ready`: the DaemonSet's readiness check. Succeeds when this pod's instance (its
//! `--instance-id`) owns the node's nft table and its `/healthz` says 200.
//!
//! An HTTP probe cannot tell the two pods of a rollout apart: both run in the host's network,
//! and until the hand-over completes the old instance answers the node's health port. Asked
//! over HTTP, the new pod would be ready at once, and the old one deleted (SIGTERM: its drain
//! removes the rules) while the new one may still be loading its table. The owner's hello on
//! the hand-over socket names its instance, so the new pod is ready only once it owns the
//! node, and a replaced instance standing by never is.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use crate::cli::ReadyArgs;
use crate::ownership;

/// How long the `/healthz` answer may take (well within a probe's timeout).
const HEALTHZ_TIMEOUT: Duration = Duration::from_millis(900);

pub fn run(args: &ReadyArgs) -> anyhow::Result<ExitCode> {
    let table = &args.nft_table;
    let Some(owner) = ownership::owner(table).context("asking for the owner of the nft table")? else {
        anyhow::bail!("no tpvs owns nft table {table:?} in this network namespace");
    };
    let Some(theirs) = owner.instance.as_deref() else {
        anyhow::bail!("the owner of nft table {table:?} ({}) did not say which instance it is (busy handing over?)", ownership::owner_text(owner.pid));
    };
    anyhow::ensure!(
        theirs == args.instance_id,
        "nft table {table:?} is owned by instance {theirs:?} ({}), not by this one ({:?})",
        ownership::owner_text(owner.pid),
        args.instance_id
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("runtime")?;
    let (status, body) = runtime.block_on(crate::admin::http::get(args.healthz, "/healthz", HEALTHZ_TIMEOUT))?;
    anyhow::ensure!(status.is_success(), "this instance owns the node but /healthz answers {status}: {}", String::from_utf8_lossy(&body).trim());
    Ok(ExitCode::SUCCESS)
}
