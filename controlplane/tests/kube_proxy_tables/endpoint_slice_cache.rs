//! `pkg/proxy/endpointslicecache_test.go`: how slices add up to a Service port's endpoints.
//!
//! - `TestEndpointsMapFromESC` and `TestEndpointInfoByServicePort`: every row ported. Their
//!   slices come from kube-proxy's `generateEndpointSlice(WithOffset)` helper, rebuilt as
//!   [`super::generated`]; kube-proxy's expected map (each endpoint with its conditions) is checked
//!   through what tpvs routes: the Cluster set on the ClusterIP (ready endpoints, else
//!   serving-terminating ones) and the Local set on an `externalTrafficPolicy: Local` NodePort
//!   (the endpoints on the row's hostname).
//! - `TestEsDataChanged`: left out, kube-proxy-internal bookkeeping (whether a slice update
//!   must wake a resync) with no endpoint set to observe; tpvs's index compares converted
//!   objects and recompiles on any difference.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{NEVER, generated, port, service};
use crate::{Case, Expect, Objects, backends, when_empty};

/// `ns/name` with ports `port-0`, `port-1` (1000, 1001; node ports 30100, 30101), external
/// policy Local, on ClusterIP `cluster_ip`.
pub fn svc(ns: &str, name: &str, cluster_ip: &str) -> Service {
    let ports = vec![port("port-0", 1000, "TCP", Some(30100)), port("port-1", 1001, "TCP", Some(30101))];
    service(ns, name, "NodePort", cluster_ip, ports, |spec| spec.external_traffic_policy = Some("Local".into()))
}

/// The Cluster set of `port-k` (on the ClusterIP) and its Local set (on the NodePort).
pub fn sets(k: u16, cluster: &[&str], local: &[&str]) -> Vec<Expect> {
    let mut out = vec![backends(&format!("TCP 10.96.1.1:{}", 1000 + k), cluster), backends(&format!("TCP 0.0.0.0:{}", 30100 + k), local)];
    if cluster.is_empty() {
        out.push(when_empty(&format!("TCP 10.96.1.1:{}", 1000 + k), "reject"));
    }
    out
}

fn case(name: &str, hostname: &'static str, slices: Vec<EndpointSlice>, expect: Vec<Expect>) -> Case {
    Case {
        mirrors: name.to_string(),
        node: hostname,
        zone: None,
        before: Objects::default(),
        objects: Objects { services: vec![svc("ns1", "svc1", "10.96.1.1")], slices },
        expect,
    }
}

pub fn cases() -> Vec<Case> {
    let p80 = &[Some(80)];
    let mut out = vec![
        case(
            "TestEndpointsMapFromESC/1 slice, 2 hosts, ports 80,443",
            "host1",
            vec![generated("svc1", "ns1", 1, 1, 3, NEVER, NEVER, &["host1", "host2"], &[Some(80), Some(443)])],
            [
                sets(0, &["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"], &["10.0.1.2:80"]),
                sets(1, &["10.0.1.1:443", "10.0.1.2:443", "10.0.1.3:443"], &["10.0.1.2:443"]),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ),
        case(
            "TestEndpointsMapFromESC/2 slices, same port",
            "",
            vec![generated("svc1", "ns1", 1, 1, 3, NEVER, NEVER, &[], p80), generated("svc1", "ns1", 2, 2, 3, NEVER, NEVER, &[], p80)],
            sets(0, &["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.2.1:80", "10.0.2.2:80", "10.0.2.3:80"], &[]),
        ),
        // kube-proxy's two slices here share one name (svc1-1): the second replaces the first.
        case(
            "TestEndpointsMapFromESC/2 overlapping slices, same port",
            "",
            vec![generated("svc1", "ns1", 1, 1, 3, NEVER, NEVER, &[], p80), generated("svc1", "ns1", 1, 1, 4, NEVER, NEVER, &[], p80)],
            sets(0, &["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80"], &[]),
        ),
        // Endpoint 6 is not ready; the others are.
        case(
            "TestEndpointsMapFromESC/2 slices, overlapping endpoints, some endpoints unready in 1 or both",
            "",
            vec![generated("svc1", "ns1", 1, 1, 10, 3, NEVER, &[], p80), generated("svc1", "ns1", 1, 1, 10, 6, NEVER, &[], p80)],
            sets(0, &["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80", "10.0.1.5:80", "10.0.1.7:80", "10.0.1.8:80", "10.0.1.9:80", "10.0.1.10:80"], &[]),
        ),
        // 5 and 10 serving-terminating, 6 not ready: the ready ones are used.
        case(
            "TestEndpointsMapFromESC/2 slices, overlapping endpoints, some endpoints unready and some endpoints terminating",
            "",
            vec![generated("svc1", "ns1", 1, 1, 10, 3, 5, &[], p80), generated("svc1", "ns1", 1, 1, 10, 6, 5, &[], p80)],
            sets(0, &["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80", "10.0.1.7:80", "10.0.1.8:80", "10.0.1.9:80"], &[]),
        ),
        // Every endpoint not ready and not serving: nothing to send to.
        case(
            "TestEndpointsMapFromESC/2 slices, overlapping endpoints, all unready",
            "",
            vec![generated("svc1", "ns1", 1, 1, 10, 1, NEVER, &[], p80), generated("svc1", "ns1", 1, 1, 10, 1, NEVER, &[], p80)],
            sets(0, &[], &[]),
        ),
        case(
            "TestEndpointsMapFromESC/Nil port should not break anything",
            "host1",
            vec![generated("svc1", "ns1", 1, 1, 3, NEVER, NEVER, &["host1", "host2"], &[None])],
            sets(0, &[], &[]),
        ),
        // The same IPs on two port numbers of one port name are four endpoints.
        case(
            "TestEndpointsMapFromESC/Different endpoints with duplicate IPs should not be filtered",
            "host1",
            vec![
                generated("svc1", "ns1", 1, 1, 2, NEVER, NEVER, &["host1", "host2"], p80),
                generated("svc1", "ns1", 2, 1, 2, NEVER, NEVER, &["host1", "host2"], &[Some(8080)]),
            ],
            sets(0, &["10.0.1.1:80", "10.0.1.1:8080", "10.0.1.2:80", "10.0.1.2:8080"], &["10.0.1.2:80", "10.0.1.2:8080"]),
        ),
        case(
            "TestEndpointInfoByServicePort/simple use case with 3 endpoints",
            "host1",
            vec![generated("svc1", "ns1", 1, 1, 3, NEVER, NEVER, &["host1", "host2"], p80)],
            sets(0, &["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"], &["10.0.1.2:80"]),
        ),
        case(
            "TestEndpointInfoByServicePort/4 different slices with duplicate IPs",
            "host1",
            vec![
                generated("svc1", "ns1", 1, 1, 2, NEVER, NEVER, &["host1", "host2"], p80),
                generated("svc1", "ns1", 2, 1, 2, NEVER, NEVER, &["host1", "host2"], &[Some(8080)]),
            ],
            sets(0, &["10.0.1.1:80", "10.0.1.1:8080", "10.0.1.2:80", "10.0.1.2:8080"], &["10.0.1.2:80", "10.0.1.2:8080"]),
        ),
    ];
    // Slices of another Service, or of a same-named Service in another namespace, are not
    // this Service's.
    out.push(Case {
        mirrors: "TestEndpointsMapFromESC/3 slices with different services and namespaces".into(),
        node: "",
        zone: None,
        before: Objects::default(),
        objects: Objects {
            services: vec![svc("ns1", "svc1", "10.96.1.1"), svc("ns1", "svc2", "10.96.1.2"), svc("ns2", "svc1", "10.96.1.3")],
            slices: vec![
                generated("svc1", "ns1", 1, 1, 3, NEVER, NEVER, &[], p80),
                generated("svc2", "ns1", 2, 2, 3, NEVER, NEVER, &[], p80),
                generated("svc1", "ns2", 3, 3, 3, NEVER, NEVER, &[], p80),
            ],
        },
        expect: vec![
            backends("TCP 10.96.1.1:1000", &["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]),
            backends("TCP 10.96.1.2:1000", &["10.0.2.1:80", "10.0.2.2:80", "10.0.2.3:80"]),
            backends("TCP 10.96.1.3:1000", &["10.0.3.1:80", "10.0.3.2:80", "10.0.3.3:80"]),
        ],
    });
    out
}
