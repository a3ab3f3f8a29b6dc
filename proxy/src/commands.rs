//! Running the subcommand the command line chose. Kept out of [`crate::cli`] so the flag
//! definitions never depend on the commands that use them.

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Runs the chosen subcommand; the exit code says whether it succeeded.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        // With manifests: the table they compile to; without: the running daemon's.
        Command::List(args) => match &args.table.manifests {
            Some(path) => crate::list::run(path, &args),
            None => crate::list_live::run(&args),
        },
        Command::Run(args) => crate::run::run(*args),
        Command::Cleanup(args) => crate::cleanup::run(&args),
        Command::Ready(args) => crate::ready::run(&args),
        // Likewise: from manifests, or the running daemon's answer.
        Command::Explain(args) => Ok(match &args.table.manifests {
            Some(path) => crate::explain_cli::run_offline(path, &args),
            None => crate::explain_cli::run_live(&args),
        }),
    }
}
