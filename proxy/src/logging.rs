//! Tracing setup: `RUST_LOG` wins; otherwise `-v` raises tpvs's own level (`-vvv` everything).

use tracing_subscriber::EnvFilter;

/// `quiet_default` is the level with no `-v` (one-shot commands such as `list` want "warn" so
/// their output is just the answer).
pub fn init(verbose: u8, quiet_default: &'static str) {
    // `-v` raises tpvs's own crates only: the HTTP client stack under the API source logs
    // several lines per request at debug, which would drown what the operator asked for.
    let default = match verbose {
        0 => quiet_default.to_string(),
        1 => format!("{quiet_default},tpvs=debug,controlplane=debug,schedulers=debug"),
        2 => format!("{quiet_default},tpvs=trace,controlplane=trace,schedulers=trace"),
        _ => "trace".to_string(),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // A second init (tests calling into the CLI twice) is harmless: keep the first subscriber.
    // Colour codes only for a terminal: daemon logs usually land in files and journald.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}
