//! kube-proxy conformance, case by case.
//!
//! Each case is one fact of kube-proxy's endpoint selection (from its `pkg/proxy` tests:
//! the topology categorization, the service change tracker, the endpoints change tracker,
//! the EndpointSlice cache, the health-check server), written as the objects the API would
//! send and the frontends and endpoint sets kube-proxy ends up with. The objects go through
//! the same conversion as both sources (`ServiceInfo::from_service`, `SliceInfo::from_slice`,
//! `NodeInfo::from_node`) and the same index, so a case fails if tpvs picks differently.
//!
//! The hand-written cases below pin the fixes of the conformance issue; the tables of
//! kube-proxy's own tests are ported row by row in [`kube_proxy_tables`], one module per test
//! file, each row named after the kube-proxy case it mirrors. Add a case by adding a row.

mod kube_proxy_tables;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use controlplane::model::{NodeInfo, ObjectKey, ServiceInfo, SliceInfo};
use controlplane::{ClusterIndex, CompileOptions, FrontendKey, Protocol, RoutingTable};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// What kube-proxy does with the case's objects.
pub enum Expect {
    /// The frontend `PROTO addr:port` exists and sends to exactly these endpoints.
    Backends(String, Vec<String>),
    /// No frontend `PROTO addr:port`.
    NoFrontend(String),
    /// The Service `namespace/name` is not proxied at all.
    NotProxied(String),
    /// The health-check node port is open and reports this many local endpoints.
    HealthCheck { port: u16, local_endpoints: usize },
    /// No frontend of the case opens a health-check node port.
    NoHealthCheck,
    /// The frontend `PROTO addr:port` admits only clients in these ranges (none: all).
    SourceRanges(String, Vec<String>),
    /// Connections from this node or its pods to the frontend `PROTO addr:port` are served
    /// from exactly these endpoints (kube-proxy's short-circuit of an
    /// `externalTrafficPolicy: Local` external address to its cluster endpoints); `None`: the
    /// frontend has no such set.
    ShortCircuit(String, Option<Vec<String>>),
    /// The frontend `PROTO addr:port`, with no endpoint to pick, drops (`"drop"`: endpoints
    /// exist on other nodes only) or refuses (`"reject"`: none anywhere).
    WhenEmpty(String, &'static str),
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub fn backends(fe: &str, want: &[&str]) -> Expect {
    Expect::Backends(fe.into(), strings(want))
}

pub fn no_frontend(fe: &str) -> Expect {
    Expect::NoFrontend(fe.into())
}

pub fn not_proxied(svc: &str) -> Expect {
    Expect::NotProxied(svc.into())
}

pub fn source_ranges(fe: &str, want: &[&str]) -> Expect {
    Expect::SourceRanges(fe.into(), strings(want))
}

pub fn short_circuit(fe: &str, want: Option<&[&str]>) -> Expect {
    Expect::ShortCircuit(fe.into(), want.map(strings))
}

pub fn when_empty(fe: &str, what: &'static str) -> Expect {
    Expect::WhenEmpty(fe.into(), what)
}

/// Services and EndpointSlices, as the API sends them.
#[derive(Default)]
pub struct Objects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
}

/// Objects from YAML documents (`apiVersion` may be left out).
fn yaml(text: &str) -> Objects {
    let mut out = Objects::default();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let mut value = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("bad YAML: {e}\n{text}"));
        let kind = value.get("kind").and_then(|k| k.as_str()).map(str::to_string);
        let api_version = match kind.as_deref() {
            Some("EndpointSlice") => "discovery.k8s.io/v1",
            _ => "v1",
        };
        if let Some(map) = value.as_mapping_mut() {
            map.entry("apiVersion".into()).or_insert_with(|| api_version.into());
        }
        match kind.as_deref() {
            Some("Service") => out.services.push(serde_yaml::from_value(value).unwrap_or_else(|e| panic!("{e}\n{text}"))),
            Some("EndpointSlice") => out.slices.push(serde_yaml::from_value(value).unwrap_or_else(|e| panic!("{e}\n{text}"))),
            other => panic!("unexpected kind {other:?} in\n{text}"),
        }
    }
    out
}

pub struct Case {
    /// The kube-proxy test case (`TestFunction/case name`) or, where kube-proxy pins the fact
    /// in code rather than in a table, the function that implements it.
    pub mirrors: String,
    pub node: &'static str,
    /// This node's `topology.kubernetes.io/zone` label, when it has one.
    pub zone: Option<&'static str>,
    /// For a change-tracker case: the objects before the change, compiled first; the case's
    /// `objects` then replace them (what is not in `objects` is deleted).
    pub before: Objects,
    pub objects: Objects,
    pub expect: Vec<Expect>,
}

fn cases() -> Vec<Case> {
    use Expect::{HealthCheck, NoHealthCheck};
    vec![
        // Item: a Service labelled service.kubernetes.io/headless is never seen by kube-proxy
        // (its informer selects !service.kubernetes.io/headless), whatever its clusterIP.
        Case {
            mirrors: "informer selector !service.kubernetes.io/headless (e2e: Services should implement service.kubernetes.io/headless)".into(),
            node: "node-a",
            zone: None,
            before: Objects::default(),
            objects: yaml(r#"
kind: Service
metadata: {name: labelled, namespace: ns, labels: {service.kubernetes.io/headless: ""}}
spec: {clusterIP: 10.96.1.1, ports: [{name: p, port: 80}]}
---
kind: EndpointSlice
metadata: {name: labelled-1, namespace: ns, labels: {kubernetes.io/service-name: labelled}}
addressType: IPv4
ports: [{name: p, port: 8080}]
endpoints: [{addresses: [10.1.1.1]}]
---
kind: Service
metadata: {name: plain, namespace: ns}
spec: {clusterIP: 10.96.1.2, ports: [{name: p, port: 80}]}
---
kind: EndpointSlice
metadata: {name: plain-1, namespace: ns, labels: {kubernetes.io/service-name: plain}}
addressType: IPv4
ports: [{name: p, port: 8080}]
endpoints: [{addresses: [10.1.1.2]}]
"#),
            expect: vec![
                not_proxied("ns/labelled"),
                no_frontend("TCP 10.96.1.1:80"),
                backends("TCP 10.96.1.2:80", &["10.1.1.2:8080"]),
            ],
        },
        // Item: healthCheckNodePort 0 on an eTP=Local LoadBalancer: the Service is proxied,
        // no health server is opened.
        Case {
            mirrors: "servicechangetracker: healthCheckNodePort 0 is no health check (eTP=Local LoadBalancer still proxied)".into(),
            node: "node-a",
            zone: None,
            before: Objects::default(),
            objects: yaml(r#"
kind: Service
metadata: {name: lb, namespace: ns}
spec:
  type: LoadBalancer
  clusterIP: 10.96.2.1
  externalTrafficPolicy: Local
  healthCheckNodePort: 0
  ports: [{name: p, port: 80, nodePort: 30201}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.21}]}}
---
kind: EndpointSlice
metadata: {name: lb-1, namespace: ns, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: p, port: 8080}]
endpoints:
- {addresses: [10.1.2.1], nodeName: node-a}
- {addresses: [10.1.2.2], nodeName: node-b}
"#),
            expect: vec![
                backends("TCP 10.96.2.1:80", &["10.1.2.1:8080", "10.1.2.2:8080"]),
                backends("TCP 0.0.0.0:30201", &["10.1.2.1:8080"]),
                backends("TCP 192.0.2.21:80", &["10.1.2.1:8080"]),
                NoHealthCheck,
            ],
        },
        // Item: a single-stack IPv4 Service ignores IPv6 externalIPs and load-balancer
        // ingress IPs (and the reverse): no frontend of the other family.
        Case {
            mirrors: "TestServiceToServiceMap/service with both ipv4 and ipv6 configurations under ipv4 mode, ipv6 fields should be filtered".into(),
            node: "node-a",
            zone: None,
            before: Objects::default(),
            objects: yaml(r#"
kind: Service
metadata: {name: v4, namespace: ns}
spec:
  type: LoadBalancer
  clusterIP: 10.96.3.1
  externalIPs: [192.0.2.31, "2001:db8::31"]
  ports: [{name: p, port: 80, nodePort: 30301}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.32}, {ip: "2001:db8::32"}]}}
---
kind: EndpointSlice
metadata: {name: v4-1, namespace: ns, labels: {kubernetes.io/service-name: v4}}
addressType: IPv4
ports: [{name: p, port: 8080}]
endpoints: [{addresses: [10.1.3.1]}]
"#),
            expect: vec![
                backends("TCP 192.0.2.31:80", &["10.1.3.1:8080"]),
                backends("TCP 192.0.2.32:80", &["10.1.3.1:8080"]),
                no_frontend("TCP [2001:db8::31]:80"),
                no_frontend("TCP [2001:db8::32]:80"),
                no_frontend("TCP [::]:30301"),
            ],
        },
        Case {
            mirrors: "TestServiceToServiceMap/service with both ipv4 and ipv6 configurations under ipv6 mode, ipv4 fields should be filtered".into(),
            node: "node-a",
            zone: None,
            before: Objects::default(),
            objects: yaml(r#"
kind: Service
metadata: {name: v6, namespace: ns}
spec:
  type: LoadBalancer
  clusterIP: "fd00:96::41"
  externalIPs: [192.0.2.41, "2001:db8::41"]
  ports: [{name: p, port: 80, nodePort: 30401}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.42}, {ip: "2001:db8::42"}]}}
---
kind: EndpointSlice
metadata: {name: v6-1, namespace: ns, labels: {kubernetes.io/service-name: v6}}
addressType: IPv6
ports: [{name: p, port: 8080}]
endpoints: [{addresses: ["fd00:1::41"]}]
"#),
            expect: vec![
                backends("TCP [2001:db8::41]:80", &["[fd00:1::41]:8080"]),
                backends("TCP [2001:db8::42]:80", &["[fd00:1::41]:8080"]),
                no_frontend("TCP 192.0.2.41:80"),
                no_frontend("TCP 192.0.2.42:80"),
                no_frontend("TCP 0.0.0.0:30401"),
            ],
        },
        // Item: the health check counts distinct local ready endpoint IPs across all ports,
        // not the largest per-port count: one pod per port makes 2; one pod serving both
        // ports counts once.
        Case {
            mirrors: "EndpointsMap.LocalReadyEndpoints: multi-port Service, a different local pod per port counts 2".into(),
            node: "node-a",
            zone: None,
            before: Objects::default(),
            objects: yaml(r#"
kind: Service
metadata: {name: multi, namespace: ns}
spec:
  type: LoadBalancer
  clusterIP: 10.96.5.1
  externalTrafficPolicy: Local
  healthCheckNodePort: 32501
  ports: [{name: a, port: 80, nodePort: 30501}, {name: b, port: 81, nodePort: 30502}]
---
kind: EndpointSlice
metadata: {name: multi-a, namespace: ns, labels: {kubernetes.io/service-name: multi}}
addressType: IPv4
ports: [{name: a, port: 8080}]
endpoints:
- {addresses: [10.1.5.1], nodeName: node-a}
- {addresses: [10.1.5.9], nodeName: node-b}
---
kind: EndpointSlice
metadata: {name: multi-b, namespace: ns, labels: {kubernetes.io/service-name: multi}}
addressType: IPv4
ports: [{name: b, port: 8081}]
endpoints:
- {addresses: [10.1.5.2], nodeName: node-a}
- {addresses: [10.1.5.3], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
"#),
            expect: vec![
                backends("TCP 0.0.0.0:30501", &["10.1.5.1:8080"]),
                backends("TCP 0.0.0.0:30502", &["10.1.5.2:8081"]),
                HealthCheck { port: 32501, local_endpoints: 2 },
            ],
        },
        Case {
            mirrors: "EndpointsMap.LocalReadyEndpoints: multi-port Service, one local pod on both ports counts 1".into(),
            node: "node-a",
            zone: None,
            before: Objects::default(),
            objects: yaml(r#"
kind: Service
metadata: {name: shared, namespace: ns}
spec:
  type: LoadBalancer
  clusterIP: 10.96.6.1
  externalTrafficPolicy: Local
  healthCheckNodePort: 32601
  ports: [{name: a, port: 80, nodePort: 30601}, {name: b, port: 81, nodePort: 30602}]
---
kind: EndpointSlice
metadata: {name: shared-1, namespace: ns, labels: {kubernetes.io/service-name: shared}}
addressType: IPv4
ports: [{name: a, port: 8080}, {name: b, port: 8081}]
endpoints:
- {addresses: [10.1.6.1], nodeName: node-a}
- {addresses: [10.1.6.2], nodeName: node-b}
"#),
            expect: vec![HealthCheck { port: 32601, local_endpoints: 1 }],
        },
        // Item: the same IP in two slices, terminating in one and ready in the other (a pod
        // IP reused before the old Pod is gone): the non-terminating copy wins, whichever
        // slice sorts first.
        Case {
            mirrors: "EndpointSliceCache.addEndpoints: a pod IP reused while the old Pod terminates, the running one wins".into(),
            node: "node-a",
            zone: None,
            before: Objects::default(),
            objects: yaml(r#"
kind: Service
metadata: {name: reuse, namespace: ns}
spec: {clusterIP: 10.96.7.1, ports: [{name: p, port: 80}]}
---
kind: EndpointSlice
metadata: {name: reuse-a, namespace: ns, labels: {kubernetes.io/service-name: reuse}}
addressType: IPv4
ports: [{name: p, port: 8080}]
endpoints:
- {addresses: [10.1.7.1], conditions: {ready: false, serving: false, terminating: true}}
- {addresses: [10.1.7.2], conditions: {ready: false, serving: true, terminating: true}}
---
kind: EndpointSlice
metadata: {name: reuse-b, namespace: ns, labels: {kubernetes.io/service-name: reuse}}
addressType: IPv4
ports: [{name: p, port: 8080}]
endpoints:
- {addresses: [10.1.7.1], conditions: {ready: true, serving: true, terminating: false}}
- {addresses: [10.1.7.2], conditions: {ready: true, serving: true, terminating: false}}
"#),
            expect: vec![backends("TCP 10.96.7.1:80", &["10.1.7.1:8080", "10.1.7.2:8080"])],
        },
        // Item: missing conditions. A missing ready or serving reads as true, a missing
        // terminating as false; so a terminating endpoint that does not say serving is a
        // serving-terminating fallback when nothing is ready.
        Case {
            mirrors: "EndpointSliceCache.addEndpoints: terminating endpoint with serving unset reads as serving".into(),
            node: "node-a",
            zone: None,
            before: Objects::default(),
            objects: yaml(r#"
kind: Service
metadata: {name: unset, namespace: ns}
spec: {clusterIP: 10.96.8.1, ports: [{name: p, port: 80}]}
---
kind: EndpointSlice
metadata: {name: unset-1, namespace: ns, labels: {kubernetes.io/service-name: unset}}
addressType: IPv4
ports: [{name: p, port: 8080}]
endpoints:
- {addresses: [10.1.8.1], conditions: {ready: false, terminating: true}}
- {addresses: [10.1.8.2], conditions: {ready: false, serving: false, terminating: true}}
"#),
            expect: vec![backends("TCP 10.96.8.1:80", &["10.1.8.1:8080"])],
        },
        Case {
            mirrors: "EndpointSliceCache.addEndpoints: absent conditions read ready and serving, not terminating".into(),
            node: "node-a",
            zone: None,
            before: Objects::default(),
            objects: yaml(r#"
kind: Service
metadata: {name: absent, namespace: ns}
spec: {clusterIP: 10.96.9.1, ports: [{name: p, port: 80}]}
---
kind: EndpointSlice
metadata: {name: absent-1, namespace: ns, labels: {kubernetes.io/service-name: absent}}
addressType: IPv4
ports: [{name: p, port: 8080}]
endpoints:
- {addresses: [10.1.9.1]}
- {addresses: [10.1.9.2], conditions: {}}
- {addresses: [10.1.9.3], conditions: {serving: true}}
- {addresses: [10.1.9.4], conditions: {ready: false}}
"#),
            expect: vec![backends("TCP 10.96.9.1:80", &["10.1.9.1:8080", "10.1.9.2:8080", "10.1.9.3:8080"])],
        },
        Case {
            mirrors: "TestServiceToServiceMap/service with ipv4 configurations under ipv4 mode".into(),
            node: "node-a",
            zone: None,
            before: Objects::default(),
            objects: yaml(r#"
kind: Service
metadata: {name: valid-v4, namespace: ns}
spec:
  type: LoadBalancer
  clusterIP: 10.96.10.1
  externalIPs: [192.0.2.101]
  ports: [{name: p, port: 80, nodePort: 31001}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.101}, {ip: "2001:db8::101"}]}}
---
kind: EndpointSlice
metadata: {name: valid-v4-1, namespace: ns, labels: {kubernetes.io/service-name: valid-v4}}
addressType: IPv4
ports: [{name: p, port: 8080}]
endpoints: [{addresses: [10.1.10.1]}]
"#),
            expect: vec![
                backends("TCP 192.0.2.101:80", &["10.1.10.1:8080"]),
                no_frontend("TCP [2001:db8::101]:80"),
            ],
        },
        Case {
            mirrors: "TestServiceToServiceMap/service with ipv6 configurations under ipv6 mode".into(),
            node: "node-a",
            zone: None,
            before: Objects::default(),
            objects: yaml(r#"
kind: Service
metadata: {name: valid-v6, namespace: ns}
spec:
  type: LoadBalancer
  clusterIP: "fd00:96::111"
  externalIPs: ["2001:db8::111"]
  ports: [{name: p, port: 80, nodePort: 31101}]
status: {loadBalancer: {ingress: [{ip: 192.0.2.111}, {ip: "2001:db8::111"}]}}
---
kind: EndpointSlice
metadata: {name: valid-v6-1, namespace: ns, labels: {kubernetes.io/service-name: valid-v6}}
addressType: IPv6
ports: [{name: p, port: 8080}]
endpoints: [{addresses: ["fd00:1::111"]}]
"#),
            expect: vec![
                backends("TCP [2001:db8::111]:80", &["[fd00:1::111]:8080"]),
                backends("TCP [::]:31101", &["[fd00:1::111]:8080"]),
                no_frontend("TCP 192.0.2.111:80"),
                no_frontend("TCP 0.0.0.0:31101"),
            ],
        },
        // Two slices listing the same ten addresses; an address unready in one and ready in
        // the other is ready; unready in both, it is left out.
        Case {
            mirrors: "TestEndpointsMapFromESC/2 slices, overlapping endpoints, some endpoints unready in 1 or both".into(),
            node: "node-a",
            zone: None,
            before: Objects::default(),
            objects: yaml(r#"
kind: Service
metadata: {name: overlap, namespace: ns}
spec: {clusterIP: 10.96.12.1, ports: [{name: p, port: 80}]}
---
kind: EndpointSlice
metadata: {name: overlap-1, namespace: ns, labels: {kubernetes.io/service-name: overlap}}
addressType: IPv4
ports: [{name: p, port: 8080}]
endpoints:
- {addresses: [10.1.12.1]}
- {addresses: [10.1.12.2]}
- {addresses: [10.1.12.3], conditions: {ready: false, serving: false}}
- {addresses: [10.1.12.4]}
- {addresses: [10.1.12.5]}
- {addresses: [10.1.12.6], conditions: {ready: false, serving: false}}
- {addresses: [10.1.12.7]}
- {addresses: [10.1.12.8]}
- {addresses: [10.1.12.9], conditions: {ready: false, serving: false}}
- {addresses: [10.1.12.10]}
---
kind: EndpointSlice
metadata: {name: overlap-2, namespace: ns, labels: {kubernetes.io/service-name: overlap}}
addressType: IPv4
ports: [{name: p, port: 8080}]
endpoints:
- {addresses: [10.1.12.1]}
- {addresses: [10.1.12.2]}
- {addresses: [10.1.12.3]}
- {addresses: [10.1.12.4]}
- {addresses: [10.1.12.5]}
- {addresses: [10.1.12.6], conditions: {ready: false, serving: false}}
- {addresses: [10.1.12.7]}
- {addresses: [10.1.12.8]}
- {addresses: [10.1.12.9]}
- {addresses: [10.1.12.10]}
"#),
            expect: vec![backends(
                "TCP 10.96.12.1:80",
                &[
                    "10.1.12.1:8080",
                    "10.1.12.2:8080",
                    "10.1.12.3:8080",
                    "10.1.12.4:8080",
                    "10.1.12.5:8080",
                    "10.1.12.7:8080",
                    "10.1.12.8:8080",
                    "10.1.12.9:8080",
                    "10.1.12.10:8080",
                ],
            )],
        },
        // As above, with two addresses serving-terminating in both slices: they are neither
        // ready nor dropped, and stay out while ready endpoints exist.
        Case {
            mirrors: "TestEndpointsMapFromESC/2 slices, overlapping endpoints, some endpoints unready and some endpoints terminating".into(),
            node: "node-a",
            zone: None,
            before: Objects::default(),
            objects: yaml(r#"
kind: Service
metadata: {name: overlap-term, namespace: ns}
spec: {clusterIP: 10.96.13.1, ports: [{name: p, port: 80}]}
---
kind: EndpointSlice
metadata: {name: overlap-term-1, namespace: ns, labels: {kubernetes.io/service-name: overlap-term}}
addressType: IPv4
ports: [{name: p, port: 8080}]
endpoints:
- {addresses: [10.1.13.1]}
- {addresses: [10.1.13.2]}
- {addresses: [10.1.13.3], conditions: {ready: false, serving: false}}
- {addresses: [10.1.13.4]}
- {addresses: [10.1.13.5], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.1.13.6], conditions: {ready: false, serving: false}}
- {addresses: [10.1.13.7]}
- {addresses: [10.1.13.8]}
- {addresses: [10.1.13.9], conditions: {ready: false, serving: false}}
- {addresses: [10.1.13.10], conditions: {ready: false, serving: true, terminating: true}}
---
kind: EndpointSlice
metadata: {name: overlap-term-2, namespace: ns, labels: {kubernetes.io/service-name: overlap-term}}
addressType: IPv4
ports: [{name: p, port: 8080}]
endpoints:
- {addresses: [10.1.13.1]}
- {addresses: [10.1.13.2]}
- {addresses: [10.1.13.3]}
- {addresses: [10.1.13.4]}
- {addresses: [10.1.13.5], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.1.13.6], conditions: {ready: false, serving: false}}
- {addresses: [10.1.13.7]}
- {addresses: [10.1.13.8]}
- {addresses: [10.1.13.9]}
- {addresses: [10.1.13.10], conditions: {ready: false, serving: true, terminating: true}}
"#),
            expect: vec![backends(
                "TCP 10.96.13.1:80",
                &[
                    "10.1.13.1:8080",
                    "10.1.13.2:8080",
                    "10.1.13.3:8080",
                    "10.1.13.4:8080",
                    "10.1.13.7:8080",
                    "10.1.13.8:8080",
                    "10.1.13.9:8080",
                ],
            )],
        },
        // loadBalancerSourceRanges: kube-proxy trims spaces and keeps the ranges of the
        // proxier's family only; they fence the load-balancer IPs, not the ClusterIP, the
        // NodePort or the externalIPs (its firewall chain hangs off the LB IP rules only).
        Case {
            mirrors: "servicechangetracker: TestServiceToServiceMap/extra space LoadBalancerSourceRanges + proxier firewall chain for load-balancer IPs only".into(),
            node: "node-a",
            zone: None,
            before: Objects::default(),
            objects: yaml(r#"
kind: Service
metadata: {name: fenced, namespace: ns}
spec:
  type: LoadBalancer
  clusterIPs: [10.96.20.1, "fd00:96::20"]
  externalIPs: [192.0.2.20]
  loadBalancerSourceRanges: [" 10.1.2.0/28", "fd00:1::/64"]
  ports: [{name: p, port: 80, nodePort: 30820}]
status: {loadBalancer: {ingress: [{ip: 198.51.100.20}, {ip: "2001:db8::20"}]}}
"#),
            expect: vec![
                source_ranges("TCP 198.51.100.20:80", &["10.1.2.0/28"]),
                source_ranges("TCP [2001:db8::20]:80", &["fd00:1::/64"]),
                source_ranges("TCP 10.96.20.1:80", &[]),
                source_ranges("TCP 0.0.0.0:30820", &[]),
                source_ranges("TCP 192.0.2.20:80", &[]),
            ],
        },
        // The other family's ranges are dropped (MapCIDRsByIPFamily); with none of its own
        // left, the load-balancer IP has no firewall.
        Case {
            mirrors: "servicechangetracker: TestServiceToServiceMap/service with ipv6 configurations under ipv4 mode (source ranges filtered by family)".into(),
            node: "node-a",
            zone: None,
            before: Objects::default(),
            objects: yaml(r#"
kind: Service
metadata: {name: other-family-ranges, namespace: ns}
spec:
  type: LoadBalancer
  clusterIP: 10.96.21.1
  loadBalancerSourceRanges: ["2001:db8:1::/64"]
  ports: [{name: p, port: 80, nodePort: 30821}]
status: {loadBalancer: {ingress: [{ip: 198.51.100.21}]}}
"#),
            expect: vec![source_ranges("TCP 198.51.100.21:80", &[])],
        },
    ]
}

/// Feeds `objects` to the index the way both sources do; Services kube-proxy would not see
/// go to `skipped`, objects tpvs rejects to `rejected`. The keys of what was applied.
fn apply(index: &mut ClusterIndex, objects: &Objects, skipped: &mut BTreeSet<String>, rejected: &mut Vec<String>) -> (Vec<ObjectKey>, Vec<ObjectKey>) {
    let (mut services, mut slices) = (Vec::new(), Vec::new());
    for svc in &objects.services {
        match ServiceInfo::from_service(svc) {
            Ok(Ok(info)) => {
                services.push(info.key.clone());
                index.upsert_service(info);
            }
            Ok(Err(why)) => {
                let meta = &svc.metadata;
                skipped.insert(format!("{}/{}", meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or("")));
                eprintln!("skipped: {why}");
            }
            Err(e) => rejected.push(format!("the Service was rejected ({e}); kube-proxy proxies it")),
        }
    }
    for slice in &objects.slices {
        match SliceInfo::from_slice(slice) {
            Ok(Some(info)) => {
                slices.push(info.key.clone());
                index.upsert_slice(info);
            }
            Ok(None) => {}
            Err(e) => rejected.push(format!("the slice was rejected ({e}); kube-proxy reads it")),
        }
    }
    (services, slices)
}

/// This node's Node object, as the API would send it.
fn node_object(name: &str, zone: &str) -> Node {
    let mut node = Node::default();
    node.metadata.name = Some(name.to_string());
    node.metadata.labels = Some([(controlplane::model::ZONE_LABEL.to_string(), zone.to_string())].into());
    node
}

/// The case's table, the Services it left out, and the objects it rejected (kube-proxy rejects
/// none of the cases' objects).
fn run(case: &Case) -> (RoutingTable, BTreeSet<String>, Vec<String>) {
    let mut rejected = Vec::new();
    let mut skipped = BTreeSet::new();
    let opts = CompileOptions { node_name: Some(case.node.into()), ..CompileOptions::default() };
    let mut index = ClusterIndex::new(opts);
    if let Some(zone) = case.zone {
        index.set_node(Some(&NodeInfo::from_node(&node_object(case.node, zone))));
    }
    let (old_services, old_slices) = apply(&mut index, &case.before, &mut BTreeSet::new(), &mut rejected);
    if !old_services.is_empty() || !old_slices.is_empty() {
        index.build();
    }
    let (services, slices) = apply(&mut index, &case.objects, &mut skipped, &mut rejected);
    for gone in old_services.iter().filter(|k| !services.contains(k)) {
        index.remove_service(gone);
    }
    for gone in old_slices.iter().filter(|k| !slices.contains(k)) {
        index.remove_slice(gone);
    }
    (index.build().0, skipped, rejected)
}

fn frontend_key(case: &Case, s: &str) -> FrontendKey {
    let (proto, addr) = s.split_once(' ').unwrap_or_else(|| panic!("{}: {s:?} is not \"PROTO addr:port\"", case.mirrors));
    let proto = match proto {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        p => panic!("{}: protocol {p:?}", case.mirrors),
    };
    let addr: SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{}: {addr}: {e}", case.mirrors));
    FrontendKey::new(addr.ip(), addr.port(), proto)
}

fn addr_set(set: &schedulers::BackendSet) -> BTreeSet<String> {
    set.iter().map(|b| b.addr.0.to_string()).collect()
}

/// What differs from kube-proxy in one expectation, if anything.
fn check(case: &Case, table: &RoutingTable, skipped: &BTreeSet<String>, expect: &Expect) -> Option<String> {
    let get = |fe: &str| table.get(&frontend_key(case, fe));
    let want_set = |want: &[String]| want.iter().cloned().collect::<BTreeSet<String>>();
    match expect {
        Expect::Backends(fe, want) => match get(fe) {
            None => Some(format!("{fe}: no frontend, want {want:?}")),
            Some(f) => {
                let got = addr_set(f.backends());
                (got != want_set(want)).then(|| format!("{fe}: backends {got:?}, want {want:?}"))
            }
        },
        Expect::NoFrontend(fe) => get(fe).map(|f| format!("{fe}: frontend of {} exists", f.service)),
        Expect::NotProxied(svc) => (!skipped.contains(svc)).then(|| format!("{svc} is proxied")),
        Expect::HealthCheck { port, local_endpoints } => {
            let counts: BTreeSet<usize> =
                table.frontends().filter(|f| f.health_check_node_port == Some(*port)).map(|f| f.service_local_endpoints).collect();
            let want = BTreeSet::from([*local_endpoints]);
            (counts != want).then(|| format!("health check :{port} reports {counts:?}, want {want:?}"))
        }
        Expect::SourceRanges(fe, want) => match get(fe) {
            None => Some(format!("{fe}: no frontend, want source ranges {want:?}")),
            Some(f) => {
                let got: Vec<String> = f.source_ranges.iter().map(ToString::to_string).collect();
                (got != *want).then(|| format!("{fe}: source ranges {got:?}, want {want:?}"))
            }
        },
        Expect::NoHealthCheck => {
            let open: Vec<u16> = table.frontends().filter_map(|f| f.health_check_node_port).collect();
            (!open.is_empty()).then(|| format!("health check opened on {open:?}"))
        }
        Expect::ShortCircuit(fe, want) => match get(fe) {
            None => Some(format!("{fe}: no frontend, want short-circuit set {want:?}")),
            Some(f) => {
                let got = f.local_origin.as_ref().map(|lo| addr_set(lo.scheduler.backends()));
                let want = want.as_deref().map(want_set);
                (got != want).then(|| format!("{fe}: short-circuit set {got:?}, want {want:?}"))
            }
        },
        Expect::WhenEmpty(fe, what) => match get(fe) {
            None => Some(format!("{fe}: no frontend, want it to {what} when empty")),
            Some(f) => (f.when_empty.as_str() != *what).then(|| format!("{fe}: {} when empty, want {what}", f.when_empty.as_str())),
        },
    }
}

use serde::Deserialize as _;

#[test]
fn kube_proxy_conformance() {
    let mut failures = Vec::new();
    let all: Vec<Case> = cases().into_iter().chain(kube_proxy_tables::cases()).collect();
    for case in &all {
        let (table, skipped, rejected) = run(case);
        failures.extend(rejected.iter().map(|r| format!("{}: {r}", case.mirrors)));
        failures.extend(case.expect.iter().filter_map(|e| check(case, &table, &skipped, e)).map(|p| format!("{}: {p}", case.mirrors)));
    }
    assert!(failures.is_empty(), "differs from kube-proxy:\n{}", failures.join("\n"));
    eprintln!("{} kube-proxy cases agree", all.len());
}
