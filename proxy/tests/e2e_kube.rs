//! End-to-end tests of the Kubernetes API source: the real `tpvs run --kubeconfig` in the
//! namespace lab, fed by the in-test API double (controlplane/tests/support/apiserver.rs)
//! serving on the node namespace's loopback, with real TPROXY rules and real bytes.
//!
//! Proves the wiring of `run.rs`'s `TableSource::Kube`: `/healthz` waits for the initial
//! lists, Services and EndpointSlices from the API reach the data plane (and their changes
//! reach new connections), an API outage leaves forwarding as it was, and
//! `--beside-kube-proxy` leaves unlabelled Services alone. Root and nftables/iproute2 required
//! (or `TPVS_SKIP_E2E=1`).

mod admin_http;
#[path = "../../controlplane/tests/support/apiserver.rs"]
mod apiserver;
mod lab;

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use admin_http::{get, wait_reply};
use apiserver::{ApiServer, Kind};
use k8s_openapi::api::core::v1::{Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lab::{BACKEND_PORT, Lab, SVC_PORT, lab};

/// The node name tpvs runs as (`--hostname-override`) and the endpoints' nodeName.
const NODE: &str = "node-a";
const CLUSTER_IP: &str = "10.96.0.10";
const WEB: &str = "10.96.0.10:80";
const HEALTHZ: &str = "10.0.0.1:10256";
const METRICS: &str = "127.0.0.1:10249";
const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";


/// The API double, listening on 127.0.0.1 inside the node namespace (where `tpvs run` is),
/// served by a runtime of its own. Dropping it stops the server, then the runtime.
struct Api {
    server: Option<ApiServer>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Api {
    fn start(lab: &Lab) -> Api {
        // The listener is bound on a thread that entered the node namespace, so it lives
        // there; the runtime's threads may serve it from anywhere.
        let (server, runtime) = lab::in_netns(&lab.node, || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("api-double")
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("API double runtime: {e}"));
            let server = runtime.block_on(ApiServer::start());
            (server, runtime)
        });
        Api { server: Some(server), runtime: Some(runtime) }
    }

    /// A kubeconfig for the double: plain HTTP, no credentials.
    fn kubeconfig(&self, lab: &Lab) -> PathBuf {
        let path = lab.dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\n\
             users:\n- name: anonymous\n  user: {{}}\ncontexts:\n- name: double\n  context:\n    cluster: double\n    \
             user: anonymous\ncurrent-context: double\n",
            self.url()
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// List or watch requests received for `path` (e.g. "/api/v1/services").
    fn requests_for(&self, path: &str, watch: bool) -> Vec<String> {
        let prefix = format!("{path}?");
        self.requests().into_iter().filter(|r| r.starts_with(&prefix) && r.contains("watch=true") == watch).collect()
    }
}

impl Deref for Api {
    type Target = ApiServer;
    fn deref(&self) -> &ApiServer {
        self.server.as_ref().unwrap_or_else(|| unreachable!("the server lives until drop"))
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        drop(self.server.take());
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Starts `tpvs run` on the API source as NODE, with the lab's data-path flags.
fn start_tpvs(lab: &mut Lab, api: &Api, extra: &[&str]) {
    let kubeconfig = api.kubeconfig(lab).to_string_lossy().into_owned();
    let mut args = vec!["--kubeconfig", &kubeconfig, "--hostname-override", NODE, "--min-sync-period", "50ms"];
    args.extend_from_slice(extra);
    lab.start_tpvs_with(&args);
}

fn node() -> Node {
    Node { metadata: ObjectMeta { name: Some(NODE.into()), ..Default::default() }, ..Default::default() }
}

/// A ClusterIP Service `name` on `ip`: port 80 → 8080 ("http"); labelled for tpvs when asked.
fn service(name: &str, ip: &str, for_tpvs: bool) -> Service {
    let labels = for_tpvs.then(|| BTreeMap::from([(PROXY_NAME_LABEL.to_string(), "tpvs".to_string())]));
    Service {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some("default".into()), labels, ..Default::default() },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(SVC_PORT),
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::Int(i32::from(BACKEND_PORT))),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The one EndpointSlice of Service `name`: the lab's backends `ks` (10.1.k.2:8080) on NODE.
fn slice(name: &str, ks: &[usize]) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{name}-abc12")),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([("kubernetes.io/service-name".to_string(), name.to_string())])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(i32::from(BACKEND_PORT)),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        endpoints: ks
            .iter()
            .map(|k| Endpoint {
                addresses: vec![format!("10.1.{k}.2")],
                conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
                node_name: Some(NODE.into()),
                ..Default::default()
            })
            .collect(),
    }
}


fn healthz(lab: &Lab) -> u16 {
    get(&lab.client, HEALTHZ, "/healthz").map_or(0, |r| r.status)
}

/// Waits until several new connections in a row reach `backend`.
fn wait_streak(lab: &Lab, backend: &str, what: &str) {
    let mut streak = 0;
    let done = lab.wait_for(Duration::from_secs(20), || {
        let h = lab.hello(WEB).ok()?;
        streak = if h.backend == backend { streak + 1 } else { 0 };
        (streak >= 4).then_some(())
    });
    assert!(done.is_some(), "{what}: new connections never settled on {backend}; log:\n{}", lab.tpvs_log());
}

/// `tpvs_kube_watch_errors_total` from the daemon's metrics (node loopback).
fn watch_errors(lab: &Lab) -> f64 {
    let r = get(&lab.node, METRICS, "/metrics").unwrap_or_else(|e| panic!("metrics: {e}"));
    r.body
        .lines()
        .find(|l| l.starts_with("tpvs_kube_watch_errors_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no tpvs_kube_watch_errors_total in the metrics:\n{}", r.body))
}

/// The frontend addresses of the live table, read with `tpvs list --json` in the node.
fn live_frontends(lab: &Lab) -> Vec<String> {
    let out = lab.node_sh(&[env!("CARGO_BIN_EXE_tpvs"), "list", "--json"]).unwrap_or_else(|e| panic!("tpvs list: {e}"));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("tpvs list --json ({e}): {out}"));
    json["frontends"].as_array().into_iter().flatten().filter_map(|f| f["address"].as_str().map(str::to_string)).collect()
}

#[test]
fn healthz_is_503_until_the_initial_lists_complete_then_the_service_forwards() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    let api = Api::start(&lab);
    api.apply(node());
    api.apply(service("web", CLUSTER_IP, false));
    api.apply(slice("web", &[0]));
    api.hold_lists(Kind::EndpointSlices, true);
    start_tpvs(&mut lab, &api, &[]);

    // tpvs reached the double: Services are listed and watched, the slices list is waiting.
    let reached = lab.wait_for(Duration::from_secs(15), || {
        let slices = api.requests_for("/apis/discovery.k8s.io/v1/endpointslices", false);
        let services = api.requests_for("/api/v1/services", true);
        (!slices.is_empty() && !services.is_empty()).then_some(())
    });
    assert!(reached.is_some(), "tpvs never listed from the API double: {:?}\nlog:\n{}", api.requests(), lab.tpvs_log());
    let client = lab.client.clone();
    let r = wait_reply(&lab, &client, HEALTHZ, "/healthz", "healthz up", |_| true);
    assert_eq!(r.status, 503, "no table before every initial list is complete: {r:?}");
    assert_eq!(r.json()["lastUpdated"], "0001-01-01T00:00:00Z", "{}", r.body);
    // Nothing is intercepted before the first table.
    assert!(lab.hello(WEB).is_err(), "the VIP answered before the initial sync");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(healthz(&lab), 503, "a partial list must not be published");

    api.hold_lists(Kind::EndpointSlices, false);
    let r = wait_reply(&lab, &client, HEALTHZ, "/healthz", "healthz after the initial sync", |r| r.status == 200);
    assert!(r.json()["lastUpdated"].as_str().is_some_and(|t| t.starts_with("20")), "{}", r.body);
    let log = lab.tpvs_log();
    assert!(log.contains("initial sync complete"), "{log}");

    // Real bytes from the client namespace through the API's Service to the backend.
    let h = lab.wait_serving(WEB);
    assert_eq!(h.backend, "be0");
    let node_side: std::net::IpAddr = "10.1.0.1".parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(h.peer.ip(), node_side, "Cluster policy: the backend sees the node's address");
    let mut conn = lab.open(WEB).unwrap_or_else(|e| panic!("open: {e}"));
    assert_eq!(conn.echo("ping\n").unwrap_or_else(|e| panic!("echo: {e}")), "ping\n");
    let rest = conn.send_and_finish(vec![b'k'; 200_000]).unwrap_or_else(|e| panic!("send: {e}"));
    assert_eq!(rest.len(), 200_000, "every byte echoed");
    assert_eq!(live_frontends(&lab), vec![WEB.to_string()]);
}

#[test]
fn slice_changes_reach_new_connections_and_an_api_outage_keeps_forwarding() {
    let Some(mut lab) = lab(2, &[0, 1]) else { return };
    let api = Api::start(&lab);
    api.apply(node());
    api.apply(service("web", CLUSTER_IP, false));
    api.apply(slice("web", &[0]));
    start_tpvs(&mut lab, &api, &[]);
    assert_eq!(lab.wait_serving(WEB).backend, "be0");

    // An endpoint added to the slice gets new connections.
    api.apply(slice("web", &[0, 1]));
    let added = lab.wait_for(Duration::from_secs(10), || lab.hello(WEB).ok().filter(|h| h.backend == "be1"));
    assert!(added.is_some(), "the added endpoint never got a connection; log:\n{}", lab.tpvs_log());

    // An endpoint removed gets none, while a connection already open to it keeps flowing.
    let mut on_be0 = lab
        .wait_for(Duration::from_secs(5), || lab.open(WEB).ok().filter(|c| c.hello.backend == "be0"))
        .unwrap_or_else(|| panic!("never reached be0"));
    api.apply(slice("web", &[1]));
    wait_streak(&lab, "be1", "endpoint removed");
    let be0_before = lab.accepted("be0");
    for _ in 0..8 {
        let h = lab.hello(WEB).unwrap_or_else(|e| panic!("hello: {e}"));
        assert_eq!(h.backend, "be1");
    }
    assert_eq!(lab.accepted("be0"), be0_before, "no new connection to the removed endpoint");
    assert_eq!(on_be0.echo("draining\n").unwrap_or_else(|e| panic!("drain: {e}")), "draining\n");
    assert!(on_be0.finish().is_ok());

    // The API goes away: the daemon notices, and forwarding goes on with the last table.
    let errors_before = watch_errors(&lab);
    api.set_down(true);
    let noticed = lab.wait_for(Duration::from_secs(10), || (watch_errors(&lab) > errors_before).then_some(()));
    assert!(noticed.is_some(), "the outage never showed in tpvs_kube_watch_errors_total; log:\n{}", lab.tpvs_log());
    // A change made while tpvs cannot see it.
    api.apply(slice("web", &[0]));
    for _ in 0..8 {
        let h = lab.hello(WEB).unwrap_or_else(|e| panic!("forwarding during the API outage: {e}"));
        assert_eq!(h.backend, "be1", "the table must stay as it was during the outage");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(healthz(&lab), 200, "an API outage after the initial sync keeps the node healthy");

    // Back up: the watchers reconnect and the missed change reaches the data plane.
    api.set_down(false);
    wait_streak(&lab, "be0", "after the API came back");
}

#[test]
fn beside_kube_proxy_proxies_only_services_labelled_for_tpvs() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    let api = Api::start(&lab);
    api.apply(node());
    api.apply(service("mine", "10.96.0.20", true));
    api.apply(slice("mine", &[0]));
    api.apply(service("theirs", "10.96.0.30", false));
    api.apply(slice("theirs", &[0]));
    start_tpvs(&mut lab, &api, &["--beside-kube-proxy"]);

    let h = lab.wait_serving("10.96.0.20:80");
    assert_eq!(h.backend, "be0");
    // The selector is applied by the API server: every Services list and watch carries it.
    let mut services = api.requests_for("/api/v1/services", false);
    services.extend(api.requests_for("/api/v1/services", true));
    assert!(!services.is_empty());
    let selector = "labelSelector=service.kubernetes.io%2Fservice-proxy-name%3Dtpvs";
    assert!(services.iter().all(|r| r.contains(selector)), "{services:?}");
    assert_eq!(live_frontends(&lab), vec!["10.96.0.20:80".to_string()], "only the labelled Service is in the table");
    let map = lab.node_sh(&["nft", "list", "map", "inet", "tpvs", "frontends4"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(map.contains("10.96.0.20 . tcp . 80") && !map.contains("10.96.0.30"), "{map}");

    // The unlabelled Service is kube-proxy's: tpvs does not intercept its VIP, so the packets
    // meet the lab node's own routing (no route there, no forwarding) and the connect times
    // out instead of reaching be0.
    let accepted = lab.accepted("be0");
    let client = lab.client.clone();
    let started = Instant::now();
    let err = lab.connect_from(&client, "10.96.0.30:80", Duration::from_secs(1)).err();
    assert!(err.is_some(), "the unlabelled Service's VIP was answered");
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
    assert_eq!(lab.accepted("be0"), accepted, "no connection reached the backend");

    // Labelling hands a Service to tpvs, removing the label hands it back.
    api.apply(service("theirs", "10.96.0.30", true));
    assert_eq!(lab.wait_serving("10.96.0.30:80").backend, "be0");
    api.apply(service("mine", "10.96.0.20", false));
    let released = lab.wait_for(Duration::from_secs(10), || {
        lab.connect_from(&client, "10.96.0.20:80", Duration::from_millis(500)).is_err().then_some(())
    });
    assert!(released.is_some(), "the unlabelled Service is still intercepted; log:\n{}", lab.tpvs_log());
    assert_eq!(live_frontends(&lab), vec!["10.96.0.30:80".to_string()]);
}
