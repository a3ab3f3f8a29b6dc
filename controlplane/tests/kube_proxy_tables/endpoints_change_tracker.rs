//! `pkg/proxy/endpointschangetracker_test.go`: endpoints as slices are added, changed and
//! removed, and the local ready endpoints the health check counts.
//!
//! - `TestGetLocalEndpointIPs`: ported; kube-proxy's per-Service set of local ready endpoint
//!   IPs is what each Service's health-check node port reports (its size). Case[0] ("nothing")
//!   is left out: no Service, nothing to observe.
//! - `TestUpdateEndpointsMap`: ported; the previous slices are compiled first, then replaced
//!   by the current ones (a slice missing from them is deleted), and the resulting endpoints
//!   of each Service port and local count of each Service are checked. kube-proxy's
//!   `expectedChangedEndpoints` and `expectedConntrackCleanupRequired` are left out:
//!   bookkeeping of its resync and conntrack cleanup, which tpvs has no counterpart of (it
//!   recompiles what changed and holds no conntrack state). The "empty" row is left out: no
//!   objects, nothing to observe.
//! - `TestEndpointSliceUpdate` and `TestCheckoutChanges`: ported the same way (starting or
//!   applied slices, then the update); their return values (whether anything changed) are
//!   kube-proxy's bookkeeping and are not checked, the resulting endpoints are.
//! - `TestLastChangeTriggerTime`: left out, it pins the `endpoints.kubernetes.io/
//!   last-change-trigger-time` annotation feeding kube-proxy's programming-latency metric;
//!   no endpoint set depends on it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{Cond, NEVER, READY, SERVING_TERMINATING, UNSET, endpoint, generated, port, service, slice, slice_port};
use crate::{Case, Expect, Objects, backends, when_empty};

const HOST: &str = "host";

/// A slice `{name}-{n}` of Service `ns/name`: endpoints (address, on this node, conditions)
/// and UDP ports (name, number), as kube-proxy's table builds them.
fn eps(ns: &str, name: &str, n: u32, endpoints: &[(&str, bool, Cond)], ports: &[(&str, i32)]) -> EndpointSlice {
    let endpoints = endpoints.iter().map(|(ip, local, cond)| endpoint(ip, *cond, local.then_some(HOST), &[])).collect();
    let ports = ports.iter().map(|(p, num)| slice_port(Some(p), Some(*num), "UDP")).collect();
    slice(ns, name, &format!("{name}-{n}"), "IPv4", ports, endpoints)
}

/// The Service port number each port name of the table gets (its own target port where it
/// has one; unique per Service).
fn service_port(name: &str) -> i32 {
    match name {
        "" => 11,
        "p11-2" => 1102,
        other => other.trim_start_matches('p').parse().unwrap_or_else(|_| panic!("port name {other:?}")),
    }
}

/// The ClusterIP of table Service `ns/name` (`nsK/epK` → 10.96.10.K).
fn cluster_ip(svc: &str) -> String {
    let k = svc.rsplit_once("ep").map_or("9", |(_, k)| k);
    format!("10.96.10.{k}")
}

/// The Services the slices belong to, each with every port name any of them carries, as
/// eTP=Local LoadBalancers (node ports and a health check, so local endpoints are observable).
fn services_for(slices: &[&EndpointSlice]) -> Vec<Service> {
    let mut ports: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for s in slices {
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let svc = s.metadata.labels.as_ref().and_then(|l| l.get(controlplane::model::SERVICE_NAME_LABEL)).cloned().unwrap_or_default();
        let names = ports.entry((ns, svc)).or_default();
        for p in s.ports.iter().flatten() {
            let name = p.name.clone().unwrap_or_default();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    ports
        .into_iter()
        .map(|((ns, name), names)| {
            let svc_ports = names.iter().map(|p| port(p, service_port(p), "UDP", Some(30000 + service_port(p)))).collect();
            let hc = health_port(&format!("{ns}/{name}"));
            service(&ns, &name, "LoadBalancer", &cluster_ip(&name), svc_ports, |spec| {
                spec.external_traffic_policy = Some("Local".into());
                spec.health_check_node_port = Some(i32::from(hc));
            })
        })
        .collect()
}

fn health_port(svc: &str) -> u16 {
    let k: u16 = svc.rsplit_once("ep").and_then(|(_, k)| k.parse().ok()).unwrap_or(9);
    32000 + k
}

/// What kube-proxy's result says: per (Service, port name) the endpoints it routes to, and
/// per Service its local ready endpoint count.
struct Want {
    sets: &'static [(&'static str, &'static str, &'static [&'static str])],
    local: &'static [(&'static str, usize)],
}

fn expect(services: &[Service], want: &Want) -> Vec<Expect> {
    let mut out = Vec::new();
    for svc in services {
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let key = format!("{ns}/{name}");
        for p in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
            let pname = p.name.as_deref().unwrap_or_default();
            let fe = format!("UDP {}:{}", cluster_ip(name), p.port);
            let set = want.sets.iter().find(|(s, n, _)| *s == key && *n == pname).map_or(&[][..], |(_, _, set)| *set);
            out.push(backends(&fe, set));
            if set.is_empty() {
                out.push(when_empty(&fe, "reject"));
            }
        }
        let local = want.local.iter().find(|(s, _)| *s == key).map_or(0, |(_, n)| *n);
        out.push(Expect::HealthCheck { port: health_port(&key), local_endpoints: local });
    }
    out
}

fn case(mirrors: &str, hostname: &'static str, before: Vec<EndpointSlice>, after: Vec<EndpointSlice>, want: &Want) -> Case {
    let all: Vec<&EndpointSlice> = before.iter().chain(&after).collect();
    let services = services_for(&all);
    let expect = expect(&services, want);
    Case {
        mirrors: mirrors.to_string(),
        node: hostname,
        zone: None,
        before: Objects { services: services.clone(), slices: before },
        objects: Objects { services, slices: after },
        expect,
    }
}

const R: Cond = READY;
const U: Cond = UNSET;
const ST: Cond = SERVING_TERMINATING;

fn get_local_endpoint_ips() -> Vec<Case> {
    let one = |mirrors: &str, slices: Vec<EndpointSlice>, want: &Want| case(mirrors, HOST, Vec::new(), slices, want);
    // Case[4] and Case[5] share their Services; Case[5] makes 2.2.2.3 terminating.
    let case4_5 = |p23: Cond| {
        vec![
            eps("ns1", "ep1", 1, &[("1.1.1.1", false, R)], &[("p11", 11)]),
            eps("ns2", "ep2", 1, &[("2.2.2.2", true, R), ("2.2.2.22", true, R)], &[("p22", 22)]),
            eps("ns2", "ep2", 2, &[("2.2.2.3", true, p23)], &[("p23", 23)]),
            eps("ns4", "ep4", 1, &[("4.4.4.4", true, R), ("4.4.4.5", false, R)], &[("p44", 44)]),
            eps("ns4", "ep4", 2, &[("4.4.4.6", true, R)], &[("p45", 45)]),
        ]
    };
    vec![
        one(
            "TestGetLocalEndpointIPs/Case[1]: unnamed port",
            vec![eps("ns1", "ep1", 1, &[("1.1.1.1", false, R)], &[("", 11)])],
            &Want { sets: &[("ns1/ep1", "", &["1.1.1.1:11"])], local: &[] },
        ),
        one(
            "TestGetLocalEndpointIPs/Case[2]: unnamed port local",
            vec![eps("ns1", "ep1", 1, &[("1.1.1.1", true, R)], &[("", 11)])],
            &Want { sets: &[("ns1/ep1", "", &["1.1.1.1:11"])], local: &[("ns1/ep1", 1)] },
        ),
        one(
            "TestGetLocalEndpointIPs/Case[3]: named local and non-local ports for the same IP",
            vec![
                eps("ns1", "ep1", 1, &[("1.1.1.1", false, R), ("1.1.1.2", true, R)], &[("p11", 11)]),
                eps("ns1", "ep1", 2, &[("1.1.1.1", false, R), ("1.1.1.2", true, R)], &[("p12", 12)]),
            ],
            &Want { sets: &[("ns1/ep1", "p11", &["1.1.1.1:11", "1.1.1.2:11"]), ("ns1/ep1", "p12", &["1.1.1.1:12", "1.1.1.2:12"])], local: &[("ns1/ep1", 1)] },
        ),
        one(
            "TestGetLocalEndpointIPs/Case[4]: named local and non-local ports for different IPs",
            case4_5(R),
            &Want {
                sets: &[
                    ("ns1/ep1", "p11", &["1.1.1.1:11"]),
                    ("ns2/ep2", "p22", &["2.2.2.2:22", "2.2.2.22:22"]),
                    ("ns2/ep2", "p23", &["2.2.2.3:23"]),
                    ("ns4/ep4", "p44", &["4.4.4.4:44", "4.4.4.5:44"]),
                    ("ns4/ep4", "p45", &["4.4.4.6:45"]),
                ],
                local: &[("ns2/ep2", 3), ("ns4/ep4", 2)],
            },
        ),
        one(
            "TestGetLocalEndpointIPs/Case[5]: named local and non-local ports for different IPs, some not ready",
            case4_5(ST),
            &Want {
                sets: &[
                    ("ns1/ep1", "p11", &["1.1.1.1:11"]),
                    ("ns2/ep2", "p22", &["2.2.2.2:22", "2.2.2.22:22"]),
                    // Serving while terminating: still the port's only endpoint, not counted.
                    ("ns2/ep2", "p23", &["2.2.2.3:23"]),
                    ("ns4/ep4", "p44", &["4.4.4.4:44", "4.4.4.5:44"]),
                    ("ns4/ep4", "p45", &["4.4.4.6:45"]),
                ],
                local: &[("ns2/ep2", 2), ("ns4/ep4", 2)],
            },
        ),
        one(
            "TestGetLocalEndpointIPs/Case[6]: all endpoints are terminating",
            vec![
                eps("ns1", "ep1", 1, &[("1.1.1.1", false, ST)], &[("p11", 11)]),
                eps("ns2", "ep2", 1, &[("2.2.2.2", true, ST), ("2.2.2.22", true, ST)], &[("p22", 22)]),
                eps("ns2", "ep2", 2, &[("2.2.2.3", true, ST)], &[("p23", 23)]),
                eps("ns4", "ep4", 1, &[("4.4.4.4", true, ST), ("4.4.4.5", false, ST)], &[("p44", 44)]),
                eps("ns4", "ep4", 2, &[("4.4.4.6", true, ST)], &[("p45", 45)]),
            ],
            &Want {
                sets: &[
                    ("ns1/ep1", "p11", &["1.1.1.1:11"]),
                    ("ns2/ep2", "p22", &["2.2.2.2:22", "2.2.2.22:22"]),
                    ("ns2/ep2", "p23", &["2.2.2.3:23"]),
                    ("ns4/ep4", "p44", &["4.4.4.4:44", "4.4.4.5:44"]),
                    ("ns4/ep4", "p45", &["4.4.4.6:45"]),
                ],
                local: &[],
            },
        ),
    ]
}

// The slices of `TestUpdateEndpointsMap`, named after kube-proxy's builders.
fn unnamed_port(c: Cond) -> EndpointSlice {
    eps("ns1", "ep1", 1, &[("1.1.1.1", false, c)], &[("", 11)])
}
fn unnamed_port_local() -> EndpointSlice {
    eps("ns1", "ep1", 1, &[("1.1.1.1", true, U)], &[("", 11)])
}
fn empty_endpoint() -> EndpointSlice {
    eps("ns1", "ep1", 1, &[], &[])
}
fn named_port() -> EndpointSlice {
    eps("ns1", "ep1", 1, &[("1.1.1.1", false, U)], &[("p11", 11)])
}
fn named_ports_local_no_local() -> EndpointSlice {
    eps("ns1", "ep1", 1, &[("1.1.1.1", false, U), ("1.1.1.2", true, U)], &[("p11", 11), ("p12", 12)])
}
fn multiple_subsets(local_s2: bool) -> [EndpointSlice; 2] {
    [eps("ns1", "ep1", 1, &[("1.1.1.1", false, U)], &[("p11", 11)]), eps("ns1", "ep1", 2, &[("1.1.1.2", local_s2, U)], &[("p12", 12)])]
}

fn update_endpoints_map() -> Vec<Case> {
    let c = |name: &str, before: Vec<EndpointSlice>, after: Vec<EndpointSlice>, want: &Want| {
        case(&format!("TestUpdateEndpointsMap/{name}"), HOST, before, after, want)
    };
    let multi_ports_local = || {
        vec![
            eps("ns1", "ep1", 1, &[("1.1.1.1", true, U)], &[("p11", 11), ("p12", 12)]),
            eps("ns1", "ep1", 2, &[("1.1.1.3", false, U)], &[("p13", 13)]),
        ]
    };
    let ips_ports = || {
        vec![
            eps("ns1", "ep1", 1, &[("1.1.1.1", false, U), ("1.1.1.2", true, U)], &[("p11", 11), ("p12", 12)]),
            eps("ns1", "ep1", 2, &[("1.1.1.3", false, U), ("1.1.1.4", true, U)], &[("p13", 13), ("p14", 14)]),
            eps("ns2", "ep2", 1, &[("2.2.2.1", false, U), ("2.2.2.2", true, U)], &[("p21", 21), ("p22", 22)]),
        ]
    };
    vec![
        c("no change, unnamed port", vec![unnamed_port(U)], vec![unnamed_port(U)], &Want { sets: &[("ns1/ep1", "", &["1.1.1.1:11"])], local: &[] }),
        c(
            "no change, named port, local",
            vec![eps("ns1", "ep1", 1, &[("1.1.1.1", true, U)], &[("p11", 11)])],
            vec![eps("ns1", "ep1", 1, &[("1.1.1.1", true, U)], &[("p11", 11)])],
            &Want { sets: &[("ns1/ep1", "p11", &["1.1.1.1:11"])], local: &[("ns1/ep1", 1)] },
        ),
        c(
            "no change, multiple slices",
            multiple_subsets(false).to_vec(),
            multiple_subsets(false).to_vec(),
            &Want { sets: &[("ns1/ep1", "p11", &["1.1.1.1:11"]), ("ns1/ep1", "p12", &["1.1.1.2:12"])], local: &[] },
        ),
        c(
            "no change, multiple slices, multiple ports, local",
            multi_ports_local(),
            multi_ports_local(),
            &Want {
                sets: &[("ns1/ep1", "p11", &["1.1.1.1:11"]), ("ns1/ep1", "p12", &["1.1.1.1:12"]), ("ns1/ep1", "p13", &["1.1.1.3:13"])],
                local: &[("ns1/ep1", 1)],
            },
        ),
        c(
            "no change, multiple services, slices, IPs, and ports",
            ips_ports(),
            ips_ports(),
            &Want {
                sets: &[
                    ("ns1/ep1", "p11", &["1.1.1.1:11", "1.1.1.2:11"]),
                    ("ns1/ep1", "p12", &["1.1.1.1:12", "1.1.1.2:12"]),
                    ("ns1/ep1", "p13", &["1.1.1.3:13", "1.1.1.4:13"]),
                    ("ns1/ep1", "p14", &["1.1.1.3:14", "1.1.1.4:14"]),
                    ("ns2/ep2", "p21", &["2.2.2.1:21", "2.2.2.2:21"]),
                    ("ns2/ep2", "p22", &["2.2.2.1:22", "2.2.2.2:22"]),
                ],
                local: &[("ns1/ep1", 2), ("ns2/ep2", 1)],
            },
        ),
        c("add an EndpointSlice", vec![], vec![unnamed_port_local()], &Want { sets: &[("ns1/ep1", "", &["1.1.1.1:11"])], local: &[("ns1/ep1", 1)] }),
        c("remove an EndpointSlice", vec![unnamed_port_local()], vec![], &Want { sets: &[], local: &[] }),
        c(
            "add an IP and port",
            vec![named_port()],
            vec![named_ports_local_no_local()],
            &Want { sets: &[("ns1/ep1", "p11", &["1.1.1.1:11", "1.1.1.2:11"]), ("ns1/ep1", "p12", &["1.1.1.1:12", "1.1.1.2:12"])], local: &[("ns1/ep1", 1)] },
        ),
        c("remove an IP and port", vec![named_ports_local_no_local()], vec![named_port()], &Want { sets: &[("ns1/ep1", "p11", &["1.1.1.1:11"])], local: &[] }),
        c(
            "add a slice to an endpoint",
            vec![named_port()],
            multiple_subsets(true).to_vec(),
            &Want { sets: &[("ns1/ep1", "p11", &["1.1.1.1:11"]), ("ns1/ep1", "p12", &["1.1.1.2:12"])], local: &[("ns1/ep1", 1)] },
        ),
        c("remove a slice from an endpoint", multiple_subsets(false).to_vec(), vec![named_port()], &Want { sets: &[("ns1/ep1", "p11", &["1.1.1.1:11"])], local: &[] }),
        c(
            "rename a port",
            vec![named_port()],
            vec![eps("ns1", "ep1", 1, &[("1.1.1.1", false, U)], &[("p11-2", 11)])],
            &Want { sets: &[("ns1/ep1", "p11-2", &["1.1.1.1:11"])], local: &[] },
        ),
        c(
            "renumber a port",
            vec![named_port()],
            vec![eps("ns1", "ep1", 1, &[("1.1.1.1", false, U)], &[("p11", 22)])],
            &Want { sets: &[("ns1/ep1", "p11", &["1.1.1.1:22"])], local: &[] },
        ),
        c(
            "complex add and remove",
            vec![
                eps("ns1", "ep1", 1, &[("1.1.1.1", false, U)], &[("p11", 11)]),
                eps("ns2", "ep2", 1, &[("2.2.2.2", true, U), ("2.2.2.22", true, U)], &[("p22", 22)]),
                eps("ns2", "ep2", 2, &[("2.2.2.3", true, U)], &[("p23", 23)]),
                eps("ns4", "ep4", 1, &[("4.4.4.4", true, U), ("4.4.4.5", true, U)], &[("p44", 44)]),
                eps("ns4", "ep4", 2, &[("4.4.4.6", true, U)], &[("p45", 45)]),
            ],
            vec![
                eps("ns1", "ep1", 1, &[("1.1.1.1", false, U), ("1.1.1.11", false, U)], &[("p11", 11)]),
                eps("ns1", "ep1", 2, &[("1.1.1.2", false, U)], &[("p12", 12), ("p122", 122)]),
                eps("ns3", "ep3", 1, &[("3.3.3.3", false, U)], &[("p33", 33)]),
                eps("ns4", "ep4", 1, &[("4.4.4.4", true, U)], &[("p44", 44)]),
            ],
            &Want {
                sets: &[
                    ("ns1/ep1", "p11", &["1.1.1.1:11", "1.1.1.11:11"]),
                    ("ns1/ep1", "p12", &["1.1.1.2:12"]),
                    ("ns1/ep1", "p122", &["1.1.1.2:122"]),
                    ("ns3/ep3", "p33", &["3.3.3.3:33"]),
                    ("ns4/ep4", "p44", &["4.4.4.4:44"]),
                ],
                local: &[("ns4/ep4", 1)],
            },
        ),
        c("change from 0 endpoint address to 1 unnamed port", vec![empty_endpoint()], vec![unnamed_port(U)], &Want { sets: &[("ns1/ep1", "", &["1.1.1.1:11"])], local: &[] }),
        // Serving while terminating: the port's only endpoint, as a fallback.
        c("change from ready to terminating pod", vec![unnamed_port(R)], vec![unnamed_port(ST)], &Want { sets: &[("ns1/ep1", "", &["1.1.1.1:11"])], local: &[] }),
        c("change from terminating to empty pod", vec![unnamed_port(ST)], vec![empty_endpoint()], &Want { sets: &[], local: &[] }),
    ]
}

/// `TestEndpointSliceUpdate` and `TestCheckoutChanges`: Service ns1/svc1, ports port-0 and
/// port-1 (TCP), checked as in the EndpointSlice cache table.
fn slice_updates() -> Vec<Case> {
    use crate::kube_proxy_tables::endpoint_slice_cache::{sets, svc};
    let c = |name: &str, host: &'static str, before: Vec<EndpointSlice>, after: Vec<EndpointSlice>, expect: Vec<Expect>| Case {
        mirrors: name.to_string(),
        node: host,
        zone: None,
        before: Objects { services: vec![svc("ns1", "svc1", "10.96.1.1")], slices: before },
        objects: Objects { services: vec![svc("ns1", "svc1", "10.96.1.1")], slices: after },
        expect,
    };
    let both = &[Some(80), Some(443)];
    let hosts12 = &["host1", "host2"][..];
    let g = |n: u32, count: u32, unready: u32, terminating: u32, hosts: &[&str], ports: &[Option<i32>]| generated("svc1", "ns1", n, n, count, unready, terminating, hosts, ports);
    let starting = || vec![g(1, 3, NEVER, NEVER, hosts12, both), g(2, 2, NEVER, NEVER, hosts12, both)];
    let mut fqdn = g(2, 5, NEVER, NEVER, &["host1"], both);
    fqdn.address_type = "FQDN".into();
    let flat = |v: Vec<Vec<Expect>>| v.into_iter().flatten().collect::<Vec<_>>();
    let first_three = || flat(vec![sets(0, &["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"], &["10.0.1.2:80"]), sets(1, &["10.0.1.1:443", "10.0.1.2:443", "10.0.1.3:443"], &["10.0.1.2:443"])]);
    vec![
        c("TestEndpointSliceUpdate/add a simple slice that doesn't already exist", "host1", vec![], vec![g(1, 3, NEVER, NEVER, hosts12, both)], first_three()),
        c(
            "TestEndpointSliceUpdate/add the same slice that already exists",
            "host1",
            vec![g(1, 3, NEVER, NEVER, hosts12, both)],
            vec![g(1, 3, NEVER, NEVER, hosts12, both)],
            first_three(),
        ),
        c(
            "TestEndpointSliceUpdate/add an FQDN slice (invalid address type)",
            "host1",
            vec![g(1, 3, NEVER, NEVER, hosts12, both)],
            vec![g(1, 3, NEVER, NEVER, hosts12, both), fqdn],
            first_three(),
        ),
        c(
            "TestEndpointSliceUpdate/add a slice that overlaps with existing state",
            "host1",
            starting(),
            vec![g(1, 5, NEVER, NEVER, &["host1"], both), g(2, 2, NEVER, NEVER, hosts12, both)],
            flat(vec![
                sets(
                    0,
                    &["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80", "10.0.1.5:80", "10.0.2.1:80", "10.0.2.2:80"],
                    &["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80", "10.0.1.5:80", "10.0.2.2:80"],
                ),
                sets(
                    1,
                    &["10.0.1.1:443", "10.0.1.2:443", "10.0.1.3:443", "10.0.1.4:443", "10.0.1.5:443", "10.0.2.1:443", "10.0.2.2:443"],
                    &["10.0.1.1:443", "10.0.1.2:443", "10.0.1.3:443", "10.0.1.4:443", "10.0.1.5:443", "10.0.2.2:443"],
                ),
            ]),
        ),
        // The same addresses in two slices, on this node in one of them: kube-proxy keeps the
        // local copy.
        c(
            "TestEndpointSliceUpdate/add a slice that overlaps with existing state and partial ports",
            "host1",
            starting(),
            [starting(), vec![generated("svc1", "ns1", 3, 1, 5, NEVER, NEVER, &["host1"], &[Some(80)])]].concat(),
            flat(vec![
                sets(
                    0,
                    &["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80", "10.0.1.5:80", "10.0.2.1:80", "10.0.2.2:80"],
                    &["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80", "10.0.1.5:80", "10.0.2.2:80"],
                ),
                sets(1, &["10.0.1.1:443", "10.0.1.2:443", "10.0.1.3:443", "10.0.2.1:443", "10.0.2.2:443"], &["10.0.1.2:443", "10.0.2.2:443"]),
            ]),
        ),
        c(
            "TestEndpointSliceUpdate/remove a slice that overlaps with existing state",
            "host1",
            starting(),
            vec![g(2, 2, NEVER, NEVER, hosts12, both)],
            flat(vec![sets(0, &["10.0.2.1:80", "10.0.2.2:80"], &["10.0.2.2:80"]), sets(1, &["10.0.2.1:443", "10.0.2.2:443"], &["10.0.2.2:443"])]),
        ),
        c(
            "TestEndpointSliceUpdate/remove a slice that doesn't even exist in current state",
            "host1",
            vec![g(1, 5, NEVER, NEVER, &["host1"], both), g(2, 2, NEVER, NEVER, &["host1"], both)],
            vec![g(1, 5, NEVER, NEVER, &["host1"], both), g(2, 2, NEVER, NEVER, &["host1"], both)],
            flat(vec![
                sets(0, &["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80", "10.0.1.5:80", "10.0.2.1:80", "10.0.2.2:80"], &["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80", "10.0.1.4:80", "10.0.1.5:80", "10.0.2.1:80", "10.0.2.2:80"]),
                sets(1, &["10.0.1.1:443", "10.0.1.2:443", "10.0.1.3:443", "10.0.1.4:443", "10.0.1.5:443", "10.0.2.1:443", "10.0.2.2:443"], &["10.0.1.1:443", "10.0.1.2:443", "10.0.1.3:443", "10.0.1.4:443", "10.0.1.5:443", "10.0.2.1:443", "10.0.2.2:443"]),
            ]),
        ),
        c(
            "TestEndpointSliceUpdate/transition all endpoints to unready state",
            "host1",
            vec![g(1, 3, NEVER, NEVER, hosts12, both)],
            vec![g(1, 3, 1, NEVER, &["host1"], both)],
            flat(vec![sets(0, &[], &[]), sets(1, &[], &[])]),
        ),
        c(
            "TestEndpointSliceUpdate/transition all endpoints to ready state",
            "host1",
            vec![g(1, 2, 1, NEVER, hosts12, both)],
            vec![g(1, 2, NEVER, NEVER, &["host1"], both)],
            flat(vec![sets(0, &["10.0.1.1:80", "10.0.1.2:80"], &["10.0.1.1:80", "10.0.1.2:80"]), sets(1, &["10.0.1.1:443", "10.0.1.2:443"], &["10.0.1.1:443", "10.0.1.2:443"])]),
        ),
        // 10.0.1.3 and 10.0.2.2 stay not ready.
        c(
            "TestEndpointSliceUpdate/transition some endpoints to ready state",
            "host1",
            vec![g(1, 3, 2, NEVER, &["host1"], both), g(2, 2, 2, NEVER, &["host1"], both)],
            vec![g(1, 3, 3, NEVER, &["host1"], both), g(2, 2, 2, NEVER, &["host1"], both)],
            flat(vec![
                sets(0, &["10.0.1.1:80", "10.0.1.2:80", "10.0.2.1:80"], &["10.0.1.1:80", "10.0.1.2:80", "10.0.2.1:80"]),
                sets(1, &["10.0.1.1:443", "10.0.1.2:443", "10.0.2.1:443"], &["10.0.1.1:443", "10.0.1.2:443", "10.0.2.1:443"]),
            ]),
        ),
        // 10.0.1.2 serving-terminating, 10.0.1.3 not ready, 10.0.2.2 terminating and not
        // serving: the ready ones are used.
        c(
            "TestEndpointSliceUpdate/transition some endpoints to terminating state",
            "host1",
            vec![g(1, 3, 2, 2, &["host1"], both), g(2, 2, 2, 2, &["host1"], both)],
            vec![g(1, 3, 3, 2, &["host1"], both), g(2, 2, 2, 2, &["host1"], both)],
            flat(vec![sets(0, &["10.0.1.1:80", "10.0.2.1:80"], &["10.0.1.1:80", "10.0.2.1:80"]), sets(1, &["10.0.1.1:443", "10.0.2.1:443"], &["10.0.1.1:443", "10.0.2.1:443"])]),
        ),
        // 10.0.1.2 serving-terminating, 10.0.1.3 not ready: the ready one is used.
        c("TestCheckoutChanges/adding initial slice", "", vec![], vec![g(1, 3, 3, 2, &["host1"], &[Some(80)])], sets(0, &["10.0.1.1:80"], &[])),
        c(
            "TestCheckoutChanges/removing port in update",
            "",
            vec![g(1, 3, 3, NEVER, &["host1"], both)],
            vec![g(1, 3, 3, NEVER, &["host1"], &[Some(80)])],
            flat(vec![sets(0, &["10.0.1.1:80", "10.0.1.2:80"], &[]), sets(1, &[], &[])]),
        ),
    ]
}

pub fn cases() -> Vec<Case> {
    let mut out = get_local_endpoint_ips();
    out.extend(update_endpoints_map());
    out.extend(slice_updates());
    out
}
