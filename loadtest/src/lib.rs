//! `tpvs-loadtest`: compares tpvs schedulers under open-loop load, against backends with
//! known latency profiles, and reports what each scheduler did to the tail.
//!
//! # Layout
//!
//! - [`cli`]: the command line (`list`, `run`, `serve`, `external` with `--protocol http`, and
//!   `report`, which re-renders a JSON report or merges several into one multi-seed report).
//! - [`scenario`]: the built-in scenarios and their time-scaling for CI.
//! - [`profile`]: backend latency profiles (constant, lognormal, bimodal; stall and refusal
//!   windows; concurrency caps), reproducible from a seed; [`rng`]: the seeded generator.
//! - [`backends`]: loopback (or any-address) TCP/UDP servers that follow a profile;
//!   [`wire`]: the 16-byte request/response frames they speak.
//! - [`target`]: the self-hosted target — the tpvs forwarding engine (TCP or UDP) in plain
//!   listen mode.
//! - [`pacer`]: the open-loop time line (latency from the scheduled send time), paced by a
//!   thread at real-time priority where allowed; [`client`]: the generator that puts it on the
//!   wire (TCP per-request / persistent — written by the pacing thread itself — and UDP; on
//!   persistent connections either the frames or HTTP/1.1 keep-alive `GET`s, for targets that
//!   are ordinary web servers), and measures its own error per request from the kernel's
//!   receive timestamps.
//! - [`record`]: HdrHistograms overall and per backend, failures by reason, successes per
//!   second and backend.
//! - [`runner`]: one scenario once per scheduler; [`seeds`]: several seeds of a scenario, each
//!   scheduler's median and spread across them, the best on the medians; [`progress`]: the live progress line;
//!   [`metrics`]: optional live `/metrics`.
//! - [`summary`]: the serializable results (shares per second, a recovered backend's time to
//!   get its share back) and the "best scheduler" and "pinned" rules; [`report`]: the terminal
//!   table and the self-contained HTML page with SVG charts; [`units`]: how
//!   durations and scheduler names are written in the JSON.

pub mod backends;
pub mod cli;
pub mod client;
pub mod metrics;
pub mod pacer;
pub mod profile;
pub mod progress;
pub mod record;
pub mod report;
pub mod rng;
pub mod runner;
pub mod scenario;
pub mod seeds;
pub mod summary;
pub mod target;
pub mod units;
pub mod wire;
