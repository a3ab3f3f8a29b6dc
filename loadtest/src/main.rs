use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = loadtest::cli::Cli::parse();
    match loadtest::cli::main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tpvs-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
