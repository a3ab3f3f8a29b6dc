//! The `tpvs` node daemon and its command-line tools.
//!
//! # Layout
//!
//! - [`cli`]: the command line's flag definitions (`tpvs run`, `tpvs list`, `tpvs cleanup`),
//!   one file per subcommand plus the shared table, interception and admin flags; it depends
//!   on no command. [`commands`]: runs the subcommand the command line chose.
//! - [`list`]: `tpvs list --manifests`, the routing table printed in the spirit of
//!   `ipvsadm -Ln`; [`list_live`]: the same for the running daemon, with counters and rates.
//! - [`view`]: the table as data, the schema of `tpvs list --json` and of the daemon's
//!   `/api/table`.
//! - [`admin`]: kube-proxy's admin contracts: the metrics server (`admin::metrics`: spec,
//!   exposition, one collector per source of counters, publish metrics), health (`healthz`,
//!   and `on_publish`, which applies the health policy after every publish) and the
//!   health-check node-port servers, over a small HTTP/1 server (`admin::http`).
//! - [`logging`]: tracing setup shared by every subcommand.
//! - [`run`]: `tpvs run`, the daemon: wires the control plane's table to the data path and
//!   the interception; [`cleanup`]: `tpvs cleanup`, removes the interception.
//! - [`netfilter`]: the nftables table (rendered by a pure function) and policy routing.
//! - [`forward`]: the TCP data path: per-core event loops on `SO_REUSEPORT` transparent
//!   listeners, backend choice with retry and affinity, splice relay.
//! - [`udp`]: the UDP data path: per-core epoll loops on `SO_REUSEPORT` transparent UDP
//!   listeners, a sans-io flow table, batched `recvmmsg`/`sendmmsg`, eviction on table change.
//! - [`sockopt`]: transparent listener and upstream socket construction.
//! - [`addrs`]: address newtypes (`ClientAddr`, `OrigDstAddr`) and the node-port filter.
//! - [`units`]: duration and mark flag parsing.
//!
//! Kubernetes semantics are the control plane's (`controlplane` crate); this crate owns the
//! mechanism: sockets, netfilter rules, forwarding and the admin endpoints.

pub mod admin;
pub mod cli;
pub mod commands;
pub mod list;
pub mod list_live;
pub mod logging;
pub mod addrs;
pub mod cleanup;
pub mod forward;
pub mod netfilter;
pub mod run;
pub mod sockopt;
pub mod udp;
pub mod units;
pub mod view;
