//! The tables of kube-proxy's own tests (`pkg/proxy`), ported row by row: the facts of each
//! row (its inputs, and the endpoint sets kube-proxy ends up with) rebuilt as the API objects
//! that carry them (k8s-openapi types) and compiled by tpvs's real conversion and index. One
//! module per kube-proxy test file; a row kube-proxy has that means nothing for tpvs is named
//! in a comment with the reason it is left out.
//!
//! kube-proxy's tables assert its internal maps (every endpoint with its conditions); tpvs
//! has no such map, so a row is checked through what it decides: the endpoints each frontend
//! sends to (ready ones, else serving-terminating ones, per traffic policy), what a frontend
//! with none does, and the health-check count.

pub mod endpoint_slice_cache;
pub mod endpoints_change_tracker;
pub mod service_change_tracker;
pub mod topology;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForZone};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::Case;

/// Every ported row.
pub fn cases() -> Vec<Case> {
    let mut all = topology::cases();
    all.extend(endpoint_slice_cache::cases());
    all.extend(endpoints_change_tracker::cases());
    all.extend(service_change_tracker::cases());
    all
}

/// A Service port: name, port, protocol, node port.
pub fn port(name: &str, port: i32, protocol: &str, node_port: Option<i32>) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port,
        protocol: Some(protocol.to_string()),
        node_port,
        ..ServicePort::default()
    }
}

/// A Service of type `kind` on `cluster_ip`; `edit` sets the rest of its spec.
pub fn service(ns: &str, name: &str, kind: &str, cluster_ip: &str, ports: Vec<ServicePort>, edit: impl FnOnce(&mut ServiceSpec)) -> Service {
    let mut spec = ServiceSpec {
        type_: Some(kind.to_string()),
        cluster_ip: Some(cluster_ip.to_string()),
        cluster_ips: Some(vec![cluster_ip.to_string()]),
        ports: Some(ports),
        ..ServiceSpec::default()
    };
    edit(&mut spec);
    Service {
        metadata: ObjectMeta { name: Some(name.to_string()), namespace: Some(ns.to_string()), ..ObjectMeta::default() },
        spec: Some(spec),
        status: None,
    }
}

/// An endpoint's conditions as kube-proxy's tables give them (unset ones left out).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cond {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

pub const READY: Cond = Cond { ready: Some(true), serving: Some(true), terminating: Some(false) };
pub const NOT_READY: Cond = Cond { ready: Some(false), serving: Some(false), terminating: Some(false) };
pub const SERVING_TERMINATING: Cond = Cond { ready: Some(false), serving: Some(true), terminating: Some(true) };
/// No `conditions` at all.
pub const UNSET: Cond = Cond { ready: None, serving: None, terminating: None };

/// One endpoint address.
pub fn endpoint(ip: &str, cond: Cond, node: Option<&str>, zone_hints: &[&str]) -> Endpoint {
    let conditions = (cond.ready.is_some() || cond.serving.is_some() || cond.terminating.is_some())
        .then_some(EndpointConditions { ready: cond.ready, serving: cond.serving, terminating: cond.terminating });
    let hints = (!zone_hints.is_empty()).then(|| EndpointHints {
        for_zones: Some(zone_hints.iter().map(|z| ForZone { name: z.to_string() }).collect()),
        ..EndpointHints::default()
    });
    Endpoint {
        addresses: vec![ip.to_string()],
        conditions,
        node_name: node.map(str::to_string),
        hints,
        ..Endpoint::default()
    }
}

/// A slice port: name (`None`: unset), port (`None`: "all ports"), protocol.
pub fn slice_port(name: Option<&str>, port: Option<i32>, protocol: &str) -> EndpointPort {
    EndpointPort { name: name.map(str::to_string), port, protocol: Some(protocol.to_string()), ..EndpointPort::default() }
}

/// An EndpointSlice `name` of Service `ns/service`.
pub fn slice(ns: &str, service: &str, name: &str, address_type: &str, ports: Vec<EndpointPort>, endpoints: Vec<Endpoint>) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            labels: Some([(controlplane::model::SERVICE_NAME_LABEL.to_string(), service.to_string())].into()),
            ..ObjectMeta::default()
        },
        address_type: address_type.to_string(),
        endpoints,
        ports: Some(ports),
    }
}

/// A modulus that never divides an endpoint's index (kube-proxy's tables use 999).
pub const NEVER: u32 = 999;

/// kube-proxy's test helper: slice `{service}-{slice_num}` with `n` endpoints
/// `10.0.{offset}.{i}` (i from 1); endpoint i is not ready when `i % unready_mod == 0`,
/// terminating (and so not ready, still serving unless also unready) when
/// `i % terminating_mod == 0`, and on `hosts[i % len]`; ports `port-{k}`, TCP.
#[allow(clippy::too_many_arguments)]
pub fn generated(service: &str, ns: &str, slice_num: u32, offset: u32, n: u32, unready_mod: u32, terminating_mod: u32, hosts: &[&str], ports: &[Option<i32>]) -> EndpointSlice {
    let ports = ports.iter().enumerate().map(|(k, p)| slice_port(Some(&format!("port-{k}")), *p, "TCP")).collect();
    let endpoints = (1..=n)
        .map(|i| {
            let ready = i % unready_mod != 0;
            let terminating = i % terminating_mod == 0;
            let cond = Cond { ready: Some(ready && !terminating), serving: Some(ready), terminating: Some(terminating) };
            let host = (!hosts.is_empty()).then(|| hosts[i as usize % hosts.len()]);
            endpoint(&format!("10.0.{offset}.{i}"), cond, host, &[])
        })
        .collect();
    slice(ns, service, &format!("{service}-{slice_num}"), "IPv4", ports, endpoints)
}

