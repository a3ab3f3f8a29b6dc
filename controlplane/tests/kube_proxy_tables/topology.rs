//! `pkg/proxy/topology_test.go`, `TestCategorizeEndpoints`: which endpoints the Cluster and
//! the Local traffic policy use, with topology hints, readiness and terminating endpoints.
//!
//! Every row becomes one Service (ClusterIP 10.96.0.1, port 80; a NodePort 30080 where the
//! row's Service has one, which is what makes it externally accessible and its external
//! policy matter) and one slice, compiled for node `node-a`. kube-proxy's `clusterEndpoints`
//! are what a Cluster-policy frontend sends to, and for an `externalTrafficPolicy: Local`
//! NodePort, what the node's own and its pods' connections are short-circuited to;
//! `localEndpoints` are what a Local-policy frontend sends to; `hasAnyEndpoints` decides
//! whether a Local frontend with nothing local drops (endpoints elsewhere) or refuses (none).
//! Nothing of the table is left out.

use super::{Cond, NOT_READY, READY, SERVING_TERMINATING, endpoint, port, service, slice, slice_port};
use crate::{Case, Expect, Objects, backends, no_frontend, short_circuit, when_empty};

const NODE: &str = "node-a";
const CLUSTER_IP: &str = "TCP 10.96.0.1:80";
const NODE_PORT: &str = "TCP 0.0.0.0:30080";

/// An endpoint of a row: address:port, zone hints, conditions, on this node or not.
type Ep = (&'static str, &'static [&'static str], Cond, bool);

struct Row {
    name: &'static str,
    /// The node's zone label: `None` when the node has none.
    zone: Option<&'static str>,
    internal_local: bool,
    external_local: bool,
    /// The Service has a NodePort (kube-proxy's `nodePort: 8080` in the row).
    node_port: bool,
    endpoints: &'static [Ep],
    /// `None`: the Service does not use this kind of endpoints at all.
    cluster: Option<&'static [&'static str]>,
    local: Option<&'static [&'static str]>,
    /// kube-proxy's `allEndpoints` where both kinds are used.
    all: &'static [&'static str],
    only_remote: bool,
}

const R: Cond = READY;
const NR: Cond = NOT_READY;
const ST: Cond = SERVING_TERMINATING;
const A: &[&str] = &["zone-a"];
const B: &[&str] = &["zone-b"];
const C: &[&str] = &["zone-c"];
const NONE: &[&str] = &[];

/// The four endpoints most rows share, with their zone hints and readiness.
const ABCA: &[Ep] = &[("10.1.2.3:80", A, R, false), ("10.1.2.4:80", B, R, false), ("10.1.2.5:80", C, R, false), ("10.1.2.6:80", A, R, false)];

const fn row(name: &'static str, endpoints: &'static [Ep]) -> Row {
    Row {
        name,
        zone: None,
        internal_local: false,
        external_local: false,
        node_port: false,
        endpoints,
        cluster: None,
        local: None,
        all: &[],
        only_remote: false,
    }
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            zone: Some("zone-a"),
            cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
            ..row("should use topology since all endpoints have hints, node has a zone label and and there are endpoints for the node's zone", ABCA)
        },
        Row {
            zone: Some("zone-a"),
            external_local: true,
            node_port: true,
            cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
            local: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
            all: &["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"],
            ..row(
                "externalTrafficPolicy: Local, topology ignored for Local endpoints",
                &[("10.1.2.3:80", A, R, true), ("10.1.2.4:80", B, R, true), ("10.1.2.5:80", C, R, false), ("10.1.2.6:80", A, R, false)],
            )
        },
        Row {
            zone: Some("zone-a"),
            internal_local: true,
            node_port: true,
            cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
            local: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
            all: &["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"],
            ..row(
                "internalTrafficPolicy: Local, topology ignored for Local endpoints",
                &[("10.1.2.3:80", A, R, true), ("10.1.2.4:80", B, R, true), ("10.1.2.5:80", C, R, false), ("10.1.2.6:80", A, R, false)],
            )
        },
        Row { cluster: Some(&["10.1.2.3:80"]), ..row("empty node labels", &[("10.1.2.3:80", A, R, false)]) },
        Row { zone: Some(""), cluster: Some(&["10.1.2.3:80"]), ..row("empty zone label", &[("10.1.2.3:80", A, R, false)]) },
        Row {
            zone: Some("zone-b"),
            cluster: Some(&["10.1.2.3:80"]),
            ..row("node in different zone, no endpoint filtering", &[("10.1.2.3:80", A, R, false)])
        },
        Row {
            zone: Some("zone-a"),
            cluster: Some(&["10.1.2.3:80"]),
            ..row(
                "unready endpoint",
                &[("10.1.2.3:80", A, R, false), ("10.1.2.4:80", B, R, false), ("10.1.2.5:80", C, R, false), ("10.1.2.6:80", A, NR, false)],
            )
        },
        Row {
            zone: Some("zone-a"),
            cluster: Some(&["10.1.2.4:80", "10.1.2.5:80"]),
            ..row(
                "only unready endpoints in same zone (should not filter)",
                &[("10.1.2.3:80", A, NR, false), ("10.1.2.4:80", B, R, false), ("10.1.2.5:80", C, R, false), ("10.1.2.6:80", A, NR, false)],
            )
        },
        Row {
            zone: Some("zone-a"),
            cluster: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"]),
            ..row(
                "missing hints, no filtering applied",
                &[("10.1.2.3:80", A, R, false), ("10.1.2.4:80", B, R, false), ("10.1.2.5:80", NONE, R, false), ("10.1.2.6:80", A, R, false)],
            )
        },
        Row {
            zone: Some("zone-c"),
            cluster: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
            ..row(
                "multiple hints per endpoint, filtering includes any endpoint with zone included",
                &[
                    ("10.1.2.3:80", &["zone-a", "zone-b", "zone-c"], R, false),
                    ("10.1.2.4:80", &["zone-b", "zone-c"], R, false),
                    ("10.1.2.5:80", &["zone-b", "zone-d"], R, false),
                    ("10.1.2.6:80", C, R, false),
                ],
            )
        },
        Row {
            zone: Some("zone-a"),
            external_local: true,
            node_port: true,
            cluster: Some(&["10.0.0.0:80", "10.0.0.2:80"]),
            local: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            all: &["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"],
            ..row(
                "conflicting topology and localness require merging allEndpoints",
                &[("10.0.0.0:80", A, R, true), ("10.0.0.1:80", B, R, true), ("10.0.0.2:80", A, R, false), ("10.0.0.3:80", B, R, false)],
            )
        },
        Row { internal_local: true, local: Some(&[]), ..row("internalTrafficPolicy: Local, with empty endpoints", &[]) },
        Row {
            internal_local: true,
            local: Some(&[]),
            only_remote: true,
            ..row("internalTrafficPolicy: Local, but all endpoints are remote", &[("10.0.0.0:80", NONE, R, false), ("10.0.0.1:80", NONE, R, false)])
        },
        Row {
            internal_local: true,
            local: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            ..row("internalTrafficPolicy: Local, all endpoints are local", &[("10.0.0.0:80", NONE, R, true), ("10.0.0.1:80", NONE, R, true)])
        },
        Row {
            internal_local: true,
            local: Some(&["10.0.0.0:80"]),
            ..row("internalTrafficPolicy: Local, some endpoints are local", &[("10.0.0.0:80", NONE, R, true), ("10.0.0.1:80", NONE, R, false)])
        },
        Row { cluster: Some(&[]), ..row("Cluster traffic policy, endpoints not Ready", &[("10.0.0.0:80", NONE, NR, false), ("10.0.0.1:80", NONE, NR, false)]) },
        Row {
            cluster: Some(&["10.0.0.1:80"]),
            ..row("Cluster traffic policy, some endpoints are Ready", &[("10.0.0.0:80", NONE, NR, false), ("10.0.0.1:80", NONE, R, false)])
        },
        Row {
            cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            ..row("Cluster traffic policy, all endpoints are terminating", &[("10.0.0.0:80", NONE, ST, true), ("10.0.0.1:80", NONE, ST, false)])
        },
        Row {
            internal_local: true,
            node_port: true,
            cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            local: Some(&["10.0.0.0:80"]),
            all: &["10.0.0.0:80", "10.0.0.1:80"],
            ..row("iTP: Local, eTP: Cluster, some endpoints local", &[("10.0.0.0:80", NONE, R, true), ("10.0.0.1:80", NONE, R, false)])
        },
        Row {
            external_local: true,
            node_port: true,
            cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            local: Some(&["10.0.0.0:80"]),
            all: &["10.0.0.0:80", "10.0.0.1:80"],
            ..row("iTP: Cluster, eTP: Local, some endpoints local", &[("10.0.0.0:80", NONE, R, true), ("10.0.0.1:80", NONE, R, false)])
        },
        Row {
            internal_local: true,
            external_local: true,
            node_port: true,
            cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            local: Some(&["10.0.0.0:80"]),
            all: &["10.0.0.0:80", "10.0.0.1:80"],
            ..row("iTP: Local, eTP: Local, some endpoints local", &[("10.0.0.0:80", NONE, R, true), ("10.0.0.1:80", NONE, R, false)])
        },
        Row {
            internal_local: true,
            external_local: true,
            node_port: true,
            cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            local: Some(&[]),
            all: &["10.0.0.0:80", "10.0.0.1:80"],
            ..row("iTP: Local, eTP: Local, all endpoints remote", &[("10.0.0.0:80", NONE, R, false), ("10.0.0.1:80", NONE, R, false)])
        },
        Row {
            internal_local: true,
            external_local: true,
            node_port: true,
            cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            local: Some(&[]),
            all: &["10.0.0.0:80", "10.0.0.1:80"],
            only_remote: true,
            ..row("iTP: Local, eTP: Local, all endpoints remote and terminating", &[("10.0.0.0:80", NONE, ST, false), ("10.0.0.1:80", NONE, ST, false)])
        },
        Row {
            external_local: true,
            node_port: true,
            cluster: Some(&["10.0.0.0:80"]),
            local: Some(&["10.0.0.2:80"]),
            all: &["10.0.0.0:80", "10.0.0.2:80"],
            ..row(
                "iTP: Cluster, eTP: Local, with terminating endpoints",
                &[("10.0.0.0:80", NONE, R, false), ("10.0.0.1:80", NONE, NR, true), ("10.0.0.2:80", NONE, ST, true), ("10.0.0.3:80", NONE, ST, false)],
            )
        },
        Row {
            external_local: true,
            cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
            all: &["10.0.0.0:80", "10.0.0.1:80"],
            ..row("externalTrafficPolicy ignored if not externally accessible", &[("10.0.0.0:80", NONE, R, false), ("10.0.0.1:80", NONE, R, true)])
        },
        Row {
            internal_local: true,
            local: Some(&["10.0.0.1:80"]),
            all: &["10.0.0.1:80"],
            ..row("no cluster endpoints for iTP:Local internal-only service", &[("10.0.0.0:80", NONE, R, false), ("10.0.0.1:80", NONE, R, true)])
        },
    ]
}

impl Row {
    /// kube-proxy's `hasAnyEndpoints` for the row.
    fn has_any(&self) -> bool {
        let all = match (self.cluster, self.local) {
            (Some(c), None) => c,
            (None, Some(l)) => l,
            _ => self.all,
        };
        !all.is_empty() || self.only_remote
    }

    fn objects(&self) -> Objects {
        let node_port = self.node_port.then_some(30080);
        let kind = if self.node_port { "NodePort" } else { "ClusterIP" };
        let svc = service("ns", "svc", kind, "10.96.0.1", vec![port("", 80, "TCP", node_port)], |spec| {
            spec.internal_traffic_policy = Some(if self.internal_local { "Local" } else { "Cluster" }.into());
            spec.external_traffic_policy = Some(if self.external_local { "Local" } else { "Cluster" }.into());
        });
        let endpoints = self
            .endpoints
            .iter()
            .map(|(addr, hints, cond, local)| {
                let ip = addr.rsplit_once(':').map_or(*addr, |(ip, _)| ip);
                endpoint(ip, *cond, Some(if *local { NODE } else { "node-b" }), hints)
            })
            .collect();
        let slice = slice("ns", "svc", "svc-1", "IPv4", vec![slice_port(Some(""), Some(80), "TCP")], endpoints);
        Objects { services: vec![svc], slices: vec![slice] }
    }

    fn expect(&self) -> Vec<Expect> {
        let has_any = self.has_any();
        let empty = if has_any { "drop" } else { "reject" };
        let mut out = Vec::new();
        let set = |which: Option<&'static [&'static str]>, what: &str| {
            which.unwrap_or_else(|| panic!("{}: the row uses {what} endpoints but gives none", self.name))
        };
        let internal = if self.internal_local { set(self.local, "local") } else { set(self.cluster, "cluster") };
        out.push(backends(CLUSTER_IP, internal));
        if self.internal_local && internal.is_empty() {
            out.push(when_empty(CLUSTER_IP, empty));
        }
        out.push(short_circuit(CLUSTER_IP, None));
        if !self.node_port {
            out.push(no_frontend(NODE_PORT));
            return out;
        }
        if self.external_local {
            let local = set(self.local, "local");
            out.push(backends(NODE_PORT, local));
            if local.is_empty() {
                out.push(when_empty(NODE_PORT, empty));
            }
            out.push(short_circuit(NODE_PORT, has_any.then(|| set(self.cluster, "cluster"))));
        } else {
            out.push(backends(NODE_PORT, set(self.cluster, "cluster")));
            out.push(short_circuit(NODE_PORT, None));
        }
        out
    }
}

pub fn cases() -> Vec<Case> {
    rows()
        .into_iter()
        .map(|r| Case {
            mirrors: format!("TestCategorizeEndpoints/{}", r.name),
            node: NODE,
            zone: r.zone,
            before: Objects::default(),
            objects: r.objects(),
            expect: r.expect(),
        })
        .collect()
}
