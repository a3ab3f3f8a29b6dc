//! The `tpvs` binary: parse the command line, hand off to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = tpvs::cli::Cli::parse();
    tpvs::logging::init(cli.verbose, cli.command.default_log_level());
    match tpvs::commands::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tpvs: {err:#}");
            ExitCode::FAILURE
        }
    }
}
