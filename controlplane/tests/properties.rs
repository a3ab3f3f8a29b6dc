//! Property tests: generated (and hostile) Services and EndpointSlices through the manifest
//! parser, the model, the compiler and the incremental index.
//!
//! Whatever the input: nothing panics; every error names its file, document and object; and
//! the table keeps its invariants: no frontend address of the node's own or of no unicast
//! kind, a ClusterIP never taken by another Service, every frontend's backends what its traffic
//! policy allows, everything a Service asked for either served for it or refused with a reason
//! naming it, and an index fed change by change equal to one built at once. Addresses come
//! from a small pool so that collisions, the interesting case, are common. The case counts are
//! modest so the whole file runs in seconds in CI; `PROPTEST_CASES` raises them by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use controlplane::addresses::class_problem;
use controlplane::compile::compile_service;
use controlplane::model::{NodeInfo, ServiceInfo, SliceInfo};
use controlplane::{
    ClusterIndex, CompileOptions, FrontendKind, IpNet, ManifestError, ManifestSource, ObjectKey, Publisher, Refusal, RoutingTable,
    TrafficPolicy,
};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proptest::prelude::*;
use serde_json::{Value, json};

const NODE: &str = "node-a";
const NS: &str = "p";

fn config(cases: u32) -> ProptestConfig {
    // `PROPTEST_CASES` (read by the default config) still wins, for a longer run by hand.
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Frontend addresses: a small shared pool (collisions), every kind the table must refuse,
/// a few other families, and strings that are no address at all.
fn frontend_ip() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (0u8..4).prop_map(|i| format!("10.96.0.{i}")),
        2 => (0u8..2).prop_map(|i| format!("fd00::{i}")),
        2 => (0u8..2).prop_map(|i| format!("192.0.2.{i}")),
        4 => prop::sample::select(vec![
            "0.0.0.0", "127.0.0.1", "127.9.9.9", "169.254.169.254", "224.0.0.5", "255.255.255.255", "::", "::1",
            "fe80::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.96.0.1",
        ])
        .prop_map(str::to_string),
        1 => "[0-9a-f.:]{0,10}",
    ]
}

fn endpoint_ip() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0u8..5).prop_map(|i| format!("10.1.0.{i}")),
        2 => (0u8..3).prop_map(|i| format!("fd01::{i}")),
        1 => "[0-9a-z.:]{0,8}",
    ]
}

fn port() -> impl Strategy<Value = i64> {
    prop_oneof![8 => prop::sample::select(vec![53i64, 80, 443]), 1 => any::<i32>().prop_map(i64::from), 1 => Just(0i64)]
}

fn protocol() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => prop::sample::select(vec!["TCP", "UDP"]).prop_map(|p| json!(p)),
        1 => Just(json!("SCTP")),
        1 => Just(Value::Null),
        1 => "[A-Z]{0,4}".prop_map(|p| json!(p)),
    ]
}

fn policy() -> impl Strategy<Value = Value> {
    prop_oneof![3 => Just(json!("Cluster")), 3 => Just(json!("Local")), 1 => Just(Value::Null)]
}

/// One Service as the API (or a careless hand) would write it.
fn service(i: usize) -> impl Strategy<Value = Value> {
    let ports = prop::collection::vec(
        (0usize..3, port(), protocol(), prop::option::of(prop_oneof![Just(30000i64), Just(30001), any::<i32>().prop_map(i64::from)])),
        0..3,
    );
    (
        prop::sample::select(vec!["ClusterIP", "NodePort", "LoadBalancer", "ExternalName", "Bogus"]),
        prop::collection::vec(frontend_ip(), 0..3),
        prop::collection::vec(frontend_ip(), 0..3),
        prop::collection::vec(frontend_ip(), 0..3),
        ports,
        (policy(), policy()),
        prop::option::of(prop_oneof![Just(json!("None")), Just(json!("ClientIP")), Just(json!("Sticky"))]),
        prop::option::of(prop::sample::select(vec!["rr", "lc", "maglev", "fastest"])),
    )
        .prop_map(move |(kind, cluster, external, lb, ports, (etp, itp), affinity, scheduler)| {
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(n, port, proto, node_port)| json!({"name": format!("p{n}"), "port": port, "protocol": proto, "nodePort": node_port}))
                .collect();
            let annotations = scheduler.map(|s| json!({"tpvs/scheduler": s})).unwrap_or(Value::Null);
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": format!("s{i}"), "namespace": NS, "annotations": annotations},
                "spec": {
                    "type": kind,
                    "clusterIP": cluster.first(),
                    "clusterIPs": cluster,
                    "externalIPs": external,
                    "ports": ports,
                    "externalTrafficPolicy": etp,
                    "internalTrafficPolicy": itp,
                    "sessionAffinity": affinity,
                },
                "status": {"loadBalancer": {"ingress": lb.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>()}},
            })
        })
}

/// One EndpointSlice of Service `s{of}`.
fn slice(i: usize, services: usize) -> impl Strategy<Value = Value> {
    let endpoint = (
        endpoint_ip(),
        any::<(Option<bool>, Option<bool>, Option<bool>)>(),
        prop::option::of(prop::sample::select(vec![NODE, "node-b"])),
    )
        .prop_map(|(ip, (ready, serving, terminating), node)| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                "nodeName": node,
            })
        });
    (
        0..services.max(1),
        prop_oneof![4 => Just("IPv4"), 2 => Just("IPv6"), 1 => Just("FQDN"), 1 => Just("Nope")],
        prop::collection::vec((0usize..3, port(), protocol()), 0..3),
        prop::collection::vec(endpoint, 0..4),
    )
        .prop_map(move |(of, family, ports, endpoints)| {
            let ports: Vec<Value> =
                ports.into_iter().map(|(n, port, proto)| json!({"name": format!("p{n}"), "port": port, "protocol": proto})).collect();
            json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": format!("s{of}-{i}"), "namespace": NS, "labels": {"kubernetes.io/service-name": format!("s{of}")}},
                "addressType": family,
                "ports": ports,
                "endpoints": endpoints,
            })
        })
}

/// Some Services and slices of them.
fn objects() -> impl Strategy<Value = Vec<Value>> {
    (1usize..7).prop_flat_map(|n| {
        let services: Vec<_> = (0..n).map(service).collect();
        let slices: Vec<_> = (0..n + 2).map(|i| slice(i, n)).collect();
        (services, slices).prop_map(|(mut a, b)| {
            a.extend(b);
            a
        })
    })
}

fn name_of(v: &Value) -> String {
    format!("{}/{}", v["metadata"]["namespace"].as_str().unwrap_or("default"), v["metadata"]["name"].as_str().unwrap_or("?"))
}

/// The objects that convert, as the index takes them.
fn convert(objects: &[Value]) -> (Vec<ServiceInfo>, Vec<SliceInfo>) {
    let (mut services, mut slices) = (Vec::new(), Vec::new());
    for v in objects {
        if v["kind"] == "Service" {
            if let Ok(Ok(Ok(s))) = serde_json::from_value::<Service>(v.clone()).map(|s| ServiceInfo::from_service(&s)) {
                services.push(s);
            }
        } else if let Ok(Ok(Some(s))) = serde_json::from_value::<EndpointSlice>(v.clone()).map(|s| SliceInfo::from_slice(&s)) {
            slices.push(s);
        }
    }
    (services, slices)
}

fn opts() -> CompileOptions {
    CompileOptions { node_name: Some(NODE.into()), ..CompileOptions::default() }
}

fn build(services: &[ServiceInfo], slices: &[SliceInfo]) -> RoutingTable {
    let mut index = ClusterIndex::new(opts());
    for s in services {
        index.upsert_service(s.clone());
    }
    for s in slices {
        index.upsert_slice(s.clone());
    }
    index.build().0
}

/// The table's contract with the data plane and with the operator.
fn check_invariants(table: &RoutingTable, services: &[ServiceInfo], slices: &[SliceInfo]) -> Result<(), TestCaseError> {
    check_invariants_with(table, services, slices, &[])
}

/// [`check_invariants`] for a table compiled with `--external-ip-cidrs` set to `allowed`.
fn check_invariants_with(
    table: &RoutingTable,
    services: &[ServiceInfo],
    slices: &[SliceInfo],
    allowed: &[IpNet],
) -> Result<(), TestCaseError> {
    let by_key: BTreeMap<ObjectKey, &ServiceInfo> = services.iter().map(|s| (s.key.clone(), s)).collect();
    let cluster_ips: BTreeSet<IpAddr> =
        services.iter().flat_map(|s| s.cluster_ips.iter().copied()).filter(|ip| class_problem(*ip).is_none()).collect();
    for f in table.frontends() {
        let owner = ObjectKey { namespace: Arc::clone(&f.service.namespace), name: Arc::clone(&f.service.name) };
        let svc = by_key.get(&owner).ok_or_else(|| TestCaseError::fail(format!("{} of unknown {owner}", f.key)))?;
        if f.kind == FrontendKind::NodePort {
            prop_assert!(f.key.addr.is_unspecified(), "NodePort keyed off the wildcard: {}", f.key);
        } else {
            prop_assert_eq!(class_problem(f.key.addr), None, "{} {} of {}", f.kind, f.key, owner);
        }
        match f.kind {
            FrontendKind::ClusterIp => prop_assert!(svc.cluster_ips.contains(&f.key.addr), "{} is not {owner}'s ClusterIP", f.key),
            FrontendKind::NodePort => {}
            _ => {
                prop_assert!(!cluster_ips.contains(&f.key.addr), "{} {} of {owner} takes a ClusterIP", f.kind, f.key);
                prop_assert!(
                    allowed.is_empty() || allowed.iter().any(|n| n.contains(&f.key.addr)),
                    "{} {} of {owner} is outside --external-ip-cidrs",
                    f.kind,
                    f.key
                );
            }
        }
        let local = if f.kind.is_external() { svc.external_policy_local } else { svc.internal_policy_local };
        prop_assert_eq!(f.policy == TrafficPolicy::Local, local, "{} policy", f.key);
        if f.policy == TrafficPolicy::Local {
            for b in f.backends().iter() {
                prop_assert_eq!(b.node.as_deref(), Some(NODE), "Local frontend {} has remote backend {}", f.key, b.addr);
            }
        }
        for b in f.backends().iter() {
            prop_assert_eq!(b.addr.0.is_ipv4(), f.key.addr.is_ipv4(), "{} backend {} of the other family", f.key, b.addr);
        }
    }
    // Everything a Service asked for is served for it, or refused with a reason naming it.
    let node = NodeInfo { name: Some(Arc::from(NODE)), ..NodeInfo::default() };
    for svc in services {
        let own: Vec<&SliceInfo> = slices.iter().filter(|s| s.service == svc.key).collect();
        for wanted in compile_service(svc, &own, &node, &opts()) {
            let served = table.get(&wanted.key).is_some_and(|f| *f.service.namespace == *svc.key.namespace && *f.service.name == *svc.key.name);
            let me = svc.key.to_string();
            let refused = table.refused().iter().any(|r| match r {
                // A NodePort opens per family of the Service's ClusterIPs: a refused ClusterIP
                // takes its family's NodePort with it.
                Refusal::Address(a) if wanted.kind == FrontendKind::NodePort => {
                    a.service == me && a.field == "spec.clusterIPs" && a.addr.is_ipv4() == wanted.key.addr.is_ipv4()
                }
                Refusal::Address(a) => a.service == me && a.addr == wanted.key.addr,
                Refusal::Conflict(c) => c.loser == me && c.frontend == format!("{} {}", wanted.key.proto, wanted.key),
            });
            prop_assert!(served || refused, "{} {} of {me} neither served nor refused; refused: {:?}", wanted.kind, wanted.key, table.refused());
        }
    }
    for r in table.refused() {
        let named = match r {
            Refusal::Address(a) => &a.service,
            Refusal::Conflict(c) => &c.loser,
        };
        prop_assert!(by_key.keys().any(|k| k.to_string() == *named), "refusal names no Service: {r}");
    }
    Ok(())
}

/// What a table serves, comparable across builds: key → (service, kind, backends).
fn served(table: &RoutingTable) -> BTreeMap<String, (String, FrontendKind, Vec<String>)> {
    table
        .frontends()
        .map(|f| (format!("{} {}", f.key.proto, f.key), (f.service.to_string(), f.kind, f.backends().iter().map(|b| b.addr.to_string()).collect())))
        .collect()
}

static FILES: AtomicUsize = AtomicUsize::new(0);

/// A manifests file that looks long settled (written a minute ago), removed on drop.
struct TempManifest(PathBuf);

impl TempManifest {
    fn new(text: &str) -> TempManifest {
        let n = FILES.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("tpvs-prop-{}-{n}.yaml", std::process::id()));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        let past = SystemTime::now() - Duration::from_secs(60);
        if let Ok(f) = std::fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(past);
        }
        TempManifest(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempManifest {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn load(text: &str, allowed: &[IpNet]) -> (controlplane::ReloadReport, Arc<RoutingTable>, PathBuf) {
    let file = TempManifest::new(text);
    let publisher = Arc::new(Publisher::new());
    let opts = CompileOptions { external_ip_cidrs: allowed.to_vec(), ..opts() };
    let mut source = ManifestSource::new(file.path().to_path_buf(), opts, Arc::clone(&publisher));
    let report = source.reload();
    (report, publisher.current(), file.path().to_path_buf())
}

proptest! {
    #![proptest_config(config(48))]

    /// Generated objects through the whole offline path: every error names the file, the
    /// document and the object in it, and the table keeps its invariants.
    #[test]
    fn manifests_compile_to_a_table_that_keeps_its_invariants(
        objects in objects(),
        allowed in prop_oneof![
            2 => Just(Vec::new()),
            1 => prop::sample::subsequence(vec!["10.96.0.0/31", "192.0.2.0/24", "fd00::/127"], 1..3),
        ],
    ) {
        let allowed: Vec<IpNet> = allowed.iter().filter_map(|c| c.parse().ok()).collect();
        let text: String = objects.iter().map(|v| format!("{v}\n---\n")).collect();
        let (report, table, path) = load(&text, &allowed);
        for e in &report.errors {
            match e {
                ManifestError::Object { path: p, document, name, .. } => {
                    prop_assert_eq!(p, &path);
                    let doc = objects.get(document - 1).ok_or_else(|| TestCaseError::fail(format!("no document {document}: {e}")))?;
                    prop_assert_eq!(name, &name_of(doc), "{}", e);
                    prop_assert!(e.to_string().contains(name.as_str()), "{}", e);
                }
                other => prop_assert!(false, "generated YAML is well-formed: {other}"),
            }
        }
        let (services, slices) = convert(&objects);
        prop_assert_eq!(report.services, services.len());
        check_invariants_with(&table, &services, &slices, &allowed)?;
    }

    /// Fed change by change (upserts, removals, a build between each batch), the index ends
    /// where one built at once from the final objects does, invariants kept at every step.
    #[test]
    fn the_incremental_index_equals_a_fresh_build(
        first in objects(),
        second in objects(),
        order in prop::collection::vec(any::<prop::sample::Index>(), 1..6),
    ) {
        let (s1, l1) = convert(&first);
        let (s2, l2) = convert(&second);
        let mut index = ClusterIndex::new(opts());
        for s in &s1 { index.upsert_service(s.clone()); }
        for s in &l1 { index.upsert_slice(s.clone()); }
        let (t, _) = index.build();
        check_invariants(&t, &s1, &l1)?;
        // Apply the second set in a few batches, in a shuffled order, building between them.
        let mut steps: Vec<Result<ServiceInfo, SliceInfo>> = s2.iter().cloned().map(Ok).chain(l2.iter().cloned().map(Err)).collect();
        for (n, at) in order.iter().enumerate() {
            if !steps.is_empty() {
                let i = at.index(steps.len());
                steps.rotate_left(i);
            }
            let batch: Vec<_> = steps.drain(..steps.len().div_ceil(order.len() - n)).collect();
            for step in batch {
                match step {
                    Ok(s) => index.upsert_service(s),
                    Err(s) => index.upsert_slice(s),
                }
            }
            let _ = index.build();
        }
        for s in &s1 { if !s2.iter().any(|x| x.key == s.key) { index.remove_service(&s.key); } }
        for s in &l1 { if !l2.iter().any(|x| x.key == s.key) { index.remove_slice(&s.key); } }
        let (incremental, _) = index.build();
        let fresh = build(&s2, &l2);
        check_invariants(&incremental, &s2, &l2)?;
        prop_assert_eq!(served(&incremental), served(&fresh));
        let refused = |t: &RoutingTable| t.refused().iter().map(ToString::to_string).collect::<BTreeSet<_>>();
        prop_assert_eq!(refused(&incremental), refused(&fresh));
    }

    /// Arbitrary text never panics the parser: it yields objects or errors naming the file.
    #[test]
    fn arbitrary_text_never_panics_the_parser(text in prop_oneof![
        "\\PC{0,200}",
        prop::collection::vec(prop::sample::select(vec![
            "kind: Service\n", "kind: EndpointSlice\n", "kind: List\n", "items:\n", "- ", "metadata: {name: x}\n",
            "spec:\n", "  clusterIP: 0.0.0.0\n", "  ports: [{port: 99999}]\n", "---\n", "[", "]", "{", "}", ": ", "&a ", "*a ",
            "!!binary ", "\"", "'", "\t", "\n", "null\n", "endpoints: [{addresses: []}]\n", "addressType: IPv6\n",
        ]), 0..40).prop_map(|parts| parts.concat()),
    ]) {
        let (report, _, path) = load(&text, &[]);
        for e in &report.errors {
            let named = match e {
                ManifestError::Read { path: p, .. }
                | ManifestError::Yaml { path: p, .. }
                | ManifestError::Object { path: p, .. }
                | ManifestError::TooLarge { path: p, .. }
                | ManifestError::TooDeep { path: p, .. }
                | ManifestError::TooManyDocuments { path: p, .. } => p,
            };
            prop_assert_eq!(named, &path);
        }
    }
}
