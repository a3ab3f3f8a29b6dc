//! `tpvs cleanup` flags: only where the interception lives.

use clap::Args;

use super::InterceptionArgs;

#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub interception: InterceptionArgs,
    /// Remove the rules even while a running `tpvs run` owns them (it will re-install them
    /// at its next rules check unless it is stopped).
    #[arg(long)]
    pub force: bool,
}
