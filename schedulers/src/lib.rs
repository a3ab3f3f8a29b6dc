//! Backend sets and the scheduling algorithms that pick from them.
//!
//! # Layout
//!
//! - [`backend`]: the addressed [`Backend`] and the immutable [`BackendSet`] a scheduler is
//!   built from.
//! - [`stats`]: per-backend runtime state in atomics (active connections, peak-EWMA latency),
//!   handed out by a [`StatsRegistry`] keyed by backend address so it survives table rebuilds;
//!   [`connect`]: the connect-latency histogram and failure reasons kept in those stats.
//! - [`context`]: what a pick may look at ([`PickContext`]) and which candidates a retry must
//!   skip ([`Tried`]).
//! - [`kind`]: the [`Scheduler`] trait, the [`SchedulerKind`] names operators type, and
//!   [`build`], which turns a kind and a set into a ready scheduler.
//! - one module per algorithm family: [`rr`], [`wrr`], [`least`] (lc, wlc, sed, nq),
//!   [`hashing`] (dh, sh), [`random`], [`p2c`], [`maglev`], [`ewma`].
//!
//! Nothing here knows about sockets, async runtimes or Kubernetes: a scheduler is built once per
//! backend set, then `pick` is called through `&self` from any number of threads.

pub mod backend;
mod candidates;
pub mod connect;
pub mod context;
pub mod ewma;
pub mod hashing;
pub mod kind;
pub mod least;
pub mod maglev;
pub mod p2c;
pub mod random;
pub mod rr;
pub mod stats;
pub mod wrr;

mod mix;

pub use backend::{Backend, BackendAddr, BackendSet, EndpointCondition};
pub use context::{PickContext, Tried};
pub use kind::{BackendIndex, Scheduler, SchedulerKind, SchedulerOptions, UnknownScheduler, build};
pub use connect::{ConnectFailure, HistogramSnapshot};
pub use stats::{ActiveGuard, BackendStats, StatsRegistry};
