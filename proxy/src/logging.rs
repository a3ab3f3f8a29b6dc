//! Tracing setup: `RUST_LOG` wins; otherwise `-v` raises the default level.

use tracing_subscriber::EnvFilter;

/// `quiet_default` is the level with no `-v` (one-shot commands such as `list` want "warn" so
/// their output is just the answer).
pub fn init(verbose: u8, quiet_default: &'static str) {
    let default = match verbose {
        0 => quiet_default,
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // A second init (tests calling into the CLI twice) is harmless: keep the first subscriber.
    // Colour codes only for a terminal: daemon logs usually land in files and journald.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}
