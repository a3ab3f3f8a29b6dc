//! The tpvs control plane: Kubernetes semantics, from API objects to the routing table.
//!
//! # Layout
//!
//! - [`table`]: the [`RoutingTable`] contract with the data plane (frontends keyed by
//!   address:port/protocol, each with its policy, affinity and scheduler).
//! - [`model`]: Services, EndpointSlices and the Node converted once, at ingestion, into the
//!   small validated structs the compiler needs; malformed objects are rejected here.
//! - [`addresses`]: which frontend addresses a Service may claim (no node, multicast or
//!   disallowed address, never another Service's ClusterIP).
//! - [`compile`]: one Service + its slices → its frontends, with kube-proxy's endpoint
//!   selection (ready, else serving-terminating; Local vs Cluster; topology hints).
//! - [`source_ranges`]: the clients a load-balancer IP admits (`loadBalancerSourceRanges`,
//!   with kube-proxy's allowance for the VIP itself as a source when the node is in range).
//! - [`local_traffic`]: which clients count as this node's own (`--detect-local-mode`,
//!   `--cluster-cidr`), for the short-circuit of `externalTrafficPolicy: Local`.
//! - [`index`]: the live set of objects, recompiling only the Services an event touched.
//! - [`publish`]: the single writer of the `ArcSwap` the data plane reads, and the one
//!   build-publish-log step both sources share.
//! - [`manifests`]: the offline source (a file or directory of YAML, hot-reloaded): listing
//!   and fingerprinting files, parsing them, keep-last-good merging, the polling thread.
//! - [`kube_source`]: the cluster source: kube-rs watchers on Services, EndpointSlices and this
//!   Node, publishing only after complete lists, coalescing bursts, measuring programming latency.
//! - [`error`]: what gets reported and counted when input is bad.
//! - [`explain`]: why the table is what it is (each endpoint left out, each Service or address
//!   not proxied), recorded by the compiler and the index for `tpvs explain`; never read by
//!   the data path.
//!
//! The model, compiler, index and table are pure: no I/O, no clock. The manifests source reads
//! files; the kube source's client talks to the Kubernetes API server. Nothing here touches
//! the data plane's sockets or rules: the `tpvs` binary owns all of that mechanism, and learns
//! of each new table through [`Publisher::on_publish`].

pub mod addresses;
pub mod compile;
pub mod error;
pub mod explain;
pub mod index;
pub mod kube_source;
pub mod local_traffic;
pub mod manifests;
pub mod model;
pub mod publish;
pub mod source_ranges;
pub mod table;

pub use compile::CompileOptions;
pub use error::{AddressProblem, AddressRefused, FrontendConflict, ManifestError, ObjectError, Refusal};
pub use ipnet::IpNet;
pub use index::ClusterIndex;
pub use local_traffic::{DetectLocalMode, DetectLocalModeError, LocalTrafficOptions};
pub use kube_source::{BESIDE_KUBE_PROXY, KubeSource, KubeSourceConfig, KubeSourceError, KubeSourceHandle, KubeSourceStats};
pub use manifests::{DEFAULT_SETTLE, ManifestLimits, ManifestSource, ReloadReport, SourceStats};
pub use model::ObjectKey;
pub use publish::{Publisher, TableHandle};
pub use table::{Affinity, Frontend, FrontendKey, FrontendKind, LocalOrigin, Protocol, RoutingTable, ServicePortName, TrafficPolicy, WhenEmpty};
