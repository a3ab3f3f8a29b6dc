//! Address hijacks, against the real `tpvs run` in the namespace lab: a Service naming the
//! unspecified address as an externalIP must not take the node's own ports (its health port
//! included), and a Service naming another Service's ClusterIP as an externalIP must not get
//! that ClusterIP's traffic (CVE-2020-8554), whichever name sorts first. Each refusal is logged,
//! counted in the metrics and fails `tpvs list --manifests`; the rest of the table is served.
//! Root and nftables/iproute2 required (or `TPVS_SKIP_E2E=1`).

mod admin_http;
mod lab;

use std::net::SocketAddr;
use std::time::Duration;

use admin_http::{get, wait_reply};
use lab::{Server, Svc, lab, manifests};

const HEALTHZ: &str = "10.0.0.1:10256";
const METRICS: &str = "127.0.0.1:10249";

/// The value of `tpvs_table_refused_frontends{reason="…"}` the daemon exports now.
fn refused_gauge(lab: &lab::Lab, reason: &str) -> Option<f64> {
    let node = lab.node.clone();
    let body = get(&node, METRICS, "/metrics").ok()?.body;
    let series = format!("tpvs_table_refused_frontends{{reason=\"{reason}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse().ok())
}

/// `tpvs list --manifests` on the lab's manifests: its stderr when it fails, as it must here.
fn list_errors(lab: &lab::Lab) -> String {
    let manifests = lab.manifests.to_string_lossy().into_owned();
    match lab.node_sh(&[env!("CARGO_BIN_EXE_tpvs"), "list", "--manifests", &manifests]) {
        Ok(out) => panic!("tpvs list must exit non-zero on a refused frontend; it printed:\n{out}"),
        Err(e) => e,
    }
}

#[test]
fn an_unspecified_external_ip_takes_neither_the_health_port_nor_other_node_traffic() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    // Something of the node's own on 10.0.0.1:9090 that a wildcard frontend would steal.
    let own: SocketAddr = "10.0.0.1:9090".parse().unwrap_or_else(|e| panic!("{e}"));
    let _own = Server::start(&lab.node.clone(), "node-own", own);
    let mut health = Svc::new("wild-health", "10.96.0.20").endpoint("10.1.0.2", "node1");
    health.port = 10256;
    health.external_ips = vec!["0.0.0.0".into()];
    let mut app = Svc::new("wild-app", "10.96.0.21").endpoint("10.1.0.2", "node1");
    app.port = 9090;
    app.external_ips = vec!["0.0.0.0".into()];
    lab.write_manifests(&manifests(&[health, app]));
    lab.start_tpvs(&[]);

    // The rest of each Service is served: its ClusterIP reaches its backend.
    assert_eq!(lab.wait_serving("10.96.0.20:10256").backend, "be0");
    assert_eq!(lab.wait_serving("10.96.0.21:9090").backend, "be0");

    // The node's health port still answers as the node's, from the client's side of the wire.
    let client = lab.client.clone();
    let r = wait_reply(&lab, &client, HEALTHZ, "/healthz", "the node's own /healthz", |r| r.status == 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"), "{r:?}");
    for _ in 0..4 {
        let live = get(&client, HEALTHZ, "/livez").unwrap_or_else(|e| panic!("livez on the node's address: {e}"));
        assert_eq!(live.status, 200, "{live:?}");
    }
    // So does the node's own server on another port: 4 of 4 reach it, none the Service's backend.
    for i in 0..4 {
        let h = lab.hello("10.0.0.1:9090").unwrap_or_else(|e| panic!("request {i} to the node's own port: {e}"));
        assert_eq!(h.backend, "node-own", "request {i} was taken by the wildcard frontend");
    }

    // Refused, and said so: log, metric, and the offline listing's exit code.
    assert!(lab.tpvs_log().contains("spec.externalIPs 0.0.0.0 refused"), "{}", lab.tpvs_log());
    let gauge = lab.wait_for(Duration::from_secs(5), || refused_gauge(&lab, "unspecified").filter(|v| *v == 2.0));
    assert_eq!(gauge, Some(2.0), "two Services named 0.0.0.0");
    let errors = list_errors(&lab);
    assert!(
        errors.contains("default/wild-health: spec.externalIPs 0.0.0.0 refused")
            && errors.contains("default/wild-app: spec.externalIPs 0.0.0.0 refused"),
        "{errors}"
    );
}

#[test]
fn an_external_ip_naming_another_services_cluster_ip_does_not_get_its_traffic() {
    let Some(mut lab) = lab(2, &[0, 1]) else { return };
    // `aaa-evil` sorts first: by name order alone it would win the ClusterIP's frontend.
    let dns = Svc::new("dns", "10.96.0.10").endpoint("10.1.0.2", "node1");
    let mut evil = Svc::new("aaa-evil", "10.96.0.66").endpoint("10.1.1.2", "node1");
    evil.external_ips = vec!["10.96.0.10".into()];
    lab.write_manifests(&manifests(&[evil, dns]));
    lab.start_tpvs(&[]);

    // The claimer keeps its own ClusterIP.
    assert_eq!(lab.wait_serving("10.96.0.66:80").backend, "be1");
    lab.wait_serving("10.96.0.10:80");
    let before = lab.accepted("be1");
    for i in 0..4 {
        let h = lab.hello("10.96.0.10:80").unwrap_or_else(|e| panic!("request {i} to the ClusterIP: {e}"));
        assert_eq!(h.backend, "be0", "request {i} to dns's ClusterIP reached the claimer's backend");
    }
    assert_eq!(lab.accepted("be1"), before, "the claimer's backend got none of the ClusterIP's connections");

    let log = lab.tpvs_log();
    assert!(
        log.contains("default/aaa-evil: spec.externalIPs 10.96.0.10 refused: it is the ClusterIP of default/dns"),
        "{log}"
    );
    let gauge = lab.wait_for(Duration::from_secs(5), || refused_gauge(&lab, "cluster_ip_taken").filter(|v| *v == 1.0));
    assert_eq!(gauge, Some(1.0));
    let errors = list_errors(&lab);
    assert!(errors.contains("default/aaa-evil") && errors.contains("default/dns") && errors.contains("10.96.0.10"), "{errors}");
}
