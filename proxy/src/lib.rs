//! The `tpvs` node daemon and its command-line tools.
//!
//! # Layout
//!
//! - [`cli`]: the command line (`tpvs run`, `tpvs list`, `tpvs cleanup`) and its dispatch.
//! - [`list`]: `tpvs list`, the routing table printed in the spirit of `ipvsadm -Ln`.
//! - [`logging`]: tracing setup shared by every subcommand.
//!
//! Kubernetes semantics are the control plane's (`controlplane` crate); this crate owns the
//! mechanism: sockets, netfilter rules, forwarding and the admin endpoints.

pub mod cli;
pub mod list;
pub mod logging;
