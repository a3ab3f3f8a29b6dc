//! Backend sets and the scheduling algorithms that pick from them.
//!
//! # Layout
//!
//! - [`addr`]: the address roles ([`ClientAddr`], [`OrigDstAddr`], [`BackendAddr`]) a pick
//!   is made over, so a client and a destination can never be swapped on the way in.
//! - [`backend`]: the addressed [`Backend`] and the immutable [`BackendSet`] a scheduler is
//!   built from.
//! - [`stats`]: per-backend runtime state in atomics (active connections, picks, failures,
//!   peak-EWMA latency), handed out by a [`StatsRegistry`] keyed by backend address so it
//!   survives table rebuilds.
//! - [`context`]: what a pick may look at ([`PickContext`]) and which candidates a retry must
//!   skip ([`Tried`]).
//! - [`scheduler`]: the [`Scheduler`] trait and the [`SchedulerKind`] names operators type.
//! - `tournament`: a tree over a set's candidates whose root is the first best one under an
//!   order of their live active counts, kept current by the stats' change notifications (the
//!   index behind [`least`]).
//! - one module per algorithm family, each depending only on the modules above: [`rr`],
//!   [`wrr`], [`least`] (lc, wlc, sed, nq), [`hashing`] (dh, sh), [`random`], [`p2c`],
//!   [`maglev`], [`ewma`].
//! - [`build`]: the factory turning a kind and a set into a ready scheduler (the one module
//!   that depends on every algorithm).
//!
//! Nothing here knows about sockets, async runtimes, metrics formats or Kubernetes: a
//! scheduler is built once per backend set, then `pick` is called through `&self` from any
//! number of threads.

pub mod addr;
pub mod backend;
pub mod build;
mod candidates;
pub mod context;
pub mod ewma;
pub mod hashing;
pub mod least;
pub mod maglev;
pub mod p2c;
pub mod random;
pub mod rr;
pub mod scheduler;
pub mod stats;
mod tournament;
pub mod wrr;

mod mix;

pub use addr::{BackendAddr, ClientAddr, OrigDstAddr};
pub use backend::{Backend, BackendSet, EndpointCondition};
pub use build::{SchedulerOptions, build};
pub use context::{PickContext, Tried};
pub use scheduler::{BackendIndex, PickKey, Scheduler, SchedulerKind, UnknownScheduler};
pub use stats::{ActiveGuard, BackendStats, StatsRegistry};
