//! The `tpvs` node daemon and its command-line tools.
//!
//! # Layout
//!
//! - [`cli`]: the command line's flag definitions (`tpvs run`, `tpvs list`, `tpvs cleanup`,
//!   `tpvs ready`, `tpvs explain`), one file per subcommand plus the shared table,
//!   interception and admin flags; it depends on no command. [`commands`]: runs the subcommand the command line chose.
//! - [`list`]: `tpvs list --manifests`, the routing table printed in the spirit of
//!   `ipvsadm -Ln`; [`list_live`]: the same for the running daemon, with counters and rates.
//! - [`explain`]: `tpvs explain DEST`, why a connection goes where it goes or nowhere, from
//!   manifests or the running daemon (the daemon's side of `/api/explain`), read from the
//!   compiler's records and the dispatcher's own pick; [`explain_cli`]: the command's two ways
//!   of asking (compile manifests, or ask the daemon).
//! - [`view`]: the table as data, the schema of `tpvs list --json` and of the daemon's
//!   `/api/table`.
//! - [`admin`]: kube-proxy's admin contracts: the metrics server (`admin::metrics`: spec,
//!   exposition, one collector per source of counters, publish metrics), health (`healthz`,
//!   and `on_publish`, which applies the health policy after every publish) and the
//!   health-check node-port servers, over a small HTTP/1 server (`admin::http`).
//! - [`logging`]: tracing setup shared by every subcommand.
//! - [`run`]: `tpvs run`, the daemon: wires the control plane's table to the data path and
//!   the interception; [`cleanup`]: `tpvs cleanup`, removes the interception; [`ready`]:
//!   `tpvs ready`, the DaemonSet's readiness check (this pod's instance owns the node).
//! - [`ownership`]: the per-namespace lock naming the instance that owns the nft table, and
//!   the owner's side of a hand-over; [`takeover`]: the successor's side; [`handover`]: the
//!   versioned protocol between them (listeners, then established connections and UDP flows
//!   in acknowledged batches); [`listeners`]: the listener sets they pass and the switches
//!   around a hand-over;
//!   [`startup_guard`]: undoes a start-up that fails.
//! - [`netfilter`]: the nftables table (rendered by a pure function) and policy routing.
//! - [`dispatch`]: every per-connection and per-flow decision, TCP and UDP alike: frontend
//!   lookup, which endpoint set serves the client (the short-circuit of local traffic to an
//!   `externalTrafficPolicy: Local` external address, with the node's own addresses), session
//!   affinity, pick with retry, and all feedback to the schedulers and the per-backend metrics.
//! - [`forward`]: the TCP data path: per-core event loops on `SO_REUSEPORT` transparent
//!   listeners, connect, splice relay, relays paused and taken out for a hand-over
//!   (`forward::detach`), per-worker load counters (`forward::load`) and CPU steering of new
//!   connections (`forward::steering`); and the plain listen mode for load tests.
//! - [`udp`]: the UDP data path: per-core epoll loops on `SO_REUSEPORT` transparent UDP
//!   listeners, a sans-io flow table, batched `recvmmsg`/`sendmmsg`, eviction on table change;
//!   and the plain listen mode for load tests (`udp::plain`).
//! - [`workers`]: the one way data-path threads start (bound, then ready, then serving).
//! - [`slots`]: budgets of open connections and flows.
//! - [`limits`]: the file-descriptor budget split from the process's limit; [`capabilities`]: the Linux
//!   capabilities each feature needs, checked at start.
//! - [`sockopt`]: TCP listener and upstream socket construction, raw socket options.
//! - [`addrs`]: the address roles, wildcard listen addresses and the node-port filter.
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
pub mod capabilities;
pub mod cleanup;
pub mod dispatch;
pub mod explain;
pub mod explain_cli;
pub mod forward;
pub mod handover;
pub mod limits;
pub mod listeners;
pub mod netfilter;
pub mod ownership;
pub mod ready;
pub mod run;
pub mod slots;
pub mod startup_guard;
pub mod takeover;
pub mod sockopt;
pub mod udp;
pub mod units;
pub mod view;
pub mod workers;
