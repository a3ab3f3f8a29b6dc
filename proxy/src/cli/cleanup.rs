//! `tpvs cleanup` flags: only where the interception lives.

use clap::Args;

use super::InterceptionArgs;

#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub interception: InterceptionArgs,
}
