//! Control-plane benchmarks: frontend lookup at growing table sizes, applying one EndpointSlice
//! change to a large cluster, and compiling a whole cluster from scratch.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use controlplane::model::{ServiceInfo, SliceInfo};
use controlplane::{ClusterIndex, CompileOptions, Protocol};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const ENDPOINTS_PER_SERVICE: usize = 10;

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a60_0000u32 + i as u32)
}

fn service(i: usize) -> ServiceInfo {
    let svc = Service {
        metadata: ObjectMeta { name: Some(format!("svc-{i}")), namespace: Some("bench".into()), ..Default::default() },
        spec: Some(ServiceSpec {
            cluster_ip: Some(vip(i).to_string()),
            ports: Some(vec![ServicePort { name: Some("http".into()), port: 80, ..Default::default() }]),
            ..Default::default()
        }),
        status: None,
    };
    match ServiceInfo::from_service(&svc) {
        Ok(Ok(info)) => info,
        other => panic!("bench service did not convert: {other:?}"),
    }
}

fn slice(i: usize, generation: u32) -> SliceInfo {
    let s = EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("svc-{i}-abc")),
            namespace: Some("bench".into()),
            labels: Some(BTreeMap::from([("kubernetes.io/service-name".into(), format!("svc-{i}"))])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort { name: Some("http".into()), port: Some(8080), ..Default::default() }]),
        endpoints: (0..ENDPOINTS_PER_SERVICE)
            .map(|e| Endpoint {
                addresses: vec![Ipv4Addr::from(0x0b00_0000u32 + (i * 16 + e) as u32 + generation).to_string()],
                ..Default::default()
            })
            .collect(),
    };
    match SliceInfo::from_slice(&s) {
        Ok(Some(info)) => info,
        other => panic!("bench slice did not convert: {other:?}"),
    }
}

fn cluster(services: usize) -> ClusterIndex {
    let mut index = ClusterIndex::new(CompileOptions::default());
    for i in 0..services {
        index.upsert_service(service(i));
        index.upsert_slice(slice(i, 0));
    }
    index
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("table_lookup");
    g.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for services in [10usize, 1_000, 10_000] {
        let (table, _) = cluster(services).build();
        // Probe a spread of existing VIPs so the cache sees a realistic mix.
        let probes: Vec<SocketAddr> =
            (0..1024).map(|k| SocketAddr::new(IpAddr::V4(vip((k * 7919) % services)), 80)).collect();
        let mut n = 0usize;
        g.bench_with_input(BenchmarkId::from_parameter(services), &table, |b, table| {
            b.iter(|| {
                n = (n + 1) & 1023;
                black_box(table.lookup(black_box(probes[n]), Protocol::Tcp, false).is_some())
            })
        });
    }
    g.finish();
}

fn slice_change(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply_one_slice_change");
    g.sample_size(30).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_millis(500));
    let services = 10_000;
    let mut index = cluster(services);
    let _ = index.build();
    let mut generation = 0u32;
    g.bench_function(BenchmarkId::new("services", services), |b| {
        b.iter(|| {
            generation = generation.wrapping_add(1);
            let i = (generation as usize * 31) % services;
            index.upsert_slice(slice(i, generation % 4 + 1));
            black_box(index.build().0.len())
        })
    });
    g.finish();
}

fn full_compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("compile_cluster");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function(BenchmarkId::new("services", 10_000), |b| b.iter(|| black_box(cluster(10_000).build().0.len())));
    g.finish();
}

criterion_group!(benches, lookup, slice_change, full_compile);
criterion_main!(benches);
