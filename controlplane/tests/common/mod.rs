//! Builders for Services and EndpointSlices as the API would return them (k8s-openapi types).

#![allow(dead_code)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub fn service(ns: &str, name: &str, cluster_ip: &str, port: i32) -> Service {
    Service {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some(ns.into()), ..Default::default() },
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip.into()),
            ports: Some(vec![ServicePort { name: Some("http".into()), port, ..Default::default() }]),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn slice(ns: &str, name: &str, service: &str, port: i32, ips: &[&str]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([("kubernetes.io/service-name".to_string(), service.to_string())])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort { name: Some("http".into()), port: Some(port), ..Default::default() }]),
        endpoints: ips
            .iter()
            .map(|ip| Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions { ready: Some(true), ..Default::default() }),
                ..Default::default()
            })
            .collect(),
    }
}
