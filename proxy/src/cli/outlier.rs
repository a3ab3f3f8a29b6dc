//! Passive outlier detection flags (`tpvs run`), named after Envoy's outlier detection.

use std::time::Duration;

use clap::Args;

use crate::dispatch::outlier::OutlierPolicy;
use crate::units::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct OutlierArgs {
    /// Eject a backend after this many failed connects in a row (refused, timed out or
    /// unreachable; a success resets the count); 0 turns outlier detection off.
    #[arg(long, default_value_t = 3)]
    pub outlier_consecutive_failures: u32,
    /// How long a first ejection lasts; each further ejection without a success in between
    /// doubles it.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub outlier_base_ejection_time: Duration,
    /// The longest an ejection lasts.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub outlier_max_ejection_time: Duration,
    /// Most of a frontend's backends ejected at once, in percent (a flapping Service never
    /// loses all its backends to ejection).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub outlier_max_ejection_percent: u8,
}

impl OutlierArgs {
    pub fn policy(&self) -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: self.outlier_consecutive_failures,
            base_ejection_time: self.outlier_base_ejection_time,
            max_ejection_time: self.outlier_max_ejection_time.max(self.outlier_base_ejection_time),
            max_ejection_percent: self.outlier_max_ejection_percent,
        }
    }
}
