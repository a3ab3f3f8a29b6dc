//! End-to-end tests: the real `tpvs run` binary in a network-namespace lab (see `lab`), real
//! TPROXY rules, real bytes. Run as root; without root or nftables/iproute2 they fail, unless
//! `TPVS_SKIP_E2E=1`.

mod lab;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use lab::{Lab, Svc, lab, manifests};

const CLUSTER_IP: &str = "10.96.0.10";
const WEB: &str = "10.96.0.10:80";


fn web(endpoints: &[usize]) -> Svc {
    endpoints.iter().fold(Svc::new("web", CLUSTER_IP), |s, k| s.endpoint(&format!("10.1.{k}.2"), "node1"))
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s}: {e}"))
}

#[test]
fn clusterip_cluster_policy_uses_node_ip_and_passes_half_close() {
    let Some(mut lab) = lab(2, &[0, 1]) else { return };
    lab.write_manifests(&manifests(&[web(&[0, 1])]));
    lab.start_tpvs(&[]);
    lab.wait_serving(WEB);
    for _ in 0..4 {
        let h = lab.hello(WEB).unwrap_or_else(|e| panic!("hello: {e}"));
        let k = if h.backend == "be0" { 0 } else { 1 };
        // Cluster policy: the backend sees the node's own address on its link.
        assert_eq!(h.peer.ip(), ip(&format!("10.1.{k}.1")), "{h:?}");
    }
    // Bytes sent just before the client's FIN still reach the backend and come back: the FIN
    // is passed on only after the data, and the other direction stays open.
    let mut conn = lab.open(WEB).unwrap_or_else(|e| panic!("open: {e}"));
    assert_eq!(conn.echo("ping\n").unwrap_or_else(|e| panic!("echo: {e}")), "ping\n");
    // Larger than the socket buffers, so the echo is still flowing back when the FIN goes out.
    let rest = conn.send_and_finish(vec![b'x'; 300_000]).unwrap_or_else(|e| panic!("half-close: {e}"));
    assert_eq!(rest.len(), 300_000, "every byte echoed after the client's FIN");
}

#[test]
fn nodeport_answers_on_node_address() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    let mut svc = web(&[0]);
    svc.kind = "NodePort";
    svc.node_port = Some(30080);
    lab.write_manifests(&manifests(&[svc]));
    lab.start_tpvs(&[]);
    lab.wait_serving(WEB);
    let h = lab.hello("10.0.0.1:30080").unwrap_or_else(|e| panic!("nodeport: {e}"));
    assert_eq!(h.backend, "be0");
    assert_eq!(h.peer.ip(), ip("10.1.0.1"));
    // A port that is no NodePort is not intercepted: nothing listens there, the node refuses.
    let err = lab.hello("10.0.0.1:30081").err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::ConnectionRefused));
}

#[test]
fn loadbalancer_ip_with_local_policy_keeps_client_ip() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    lab.serve_node2();
    let mut svc = web(&[0]).endpoint("10.2.0.2", "node2");
    svc.kind = "LoadBalancer";
    svc.node_port = Some(30090);
    svc.external_policy = "Local";
    svc.lb_ingress = Some("10.99.0.10".into());
    lab.write_manifests(&manifests(&[svc]));
    lab.start_tpvs(&[]);
    lab.wait_serving("10.99.0.10:80");
    for _ in 0..6 {
        let h = lab.hello("10.99.0.10:80").unwrap_or_else(|e| panic!("lb: {e}"));
        assert_eq!(h.backend, "be0", "Local: only this node's endpoint");
        assert_eq!(h.peer.ip(), ip("10.0.0.2"), "Local: the backend sees the real client");
    }
    // The NodePort of a Local Service behaves the same.
    let h = lab.hello("10.0.0.1:30090").unwrap_or_else(|e| panic!("nodeport: {e}"));
    assert_eq!((h.backend.as_str(), h.peer.ip()), ("be0", ip("10.0.0.2")));
}

#[test]
fn external_ip_reaches_remote_endpoint_from_node_address() {
    let Some(mut lab) = lab(1, &[]) else { return };
    lab.serve_node2();
    let mut svc = Svc::new("remote", "10.96.0.20").endpoint("10.2.0.2", "node2");
    svc.external_ips = vec!["10.98.0.10".into()];
    lab.write_manifests(&manifests(&[svc]));
    lab.start_tpvs(&[]);
    let h = lab.wait_serving("10.98.0.10:80");
    assert_eq!(h.backend, "node2");
    assert_eq!(h.peer.ip(), ip("10.2.0.1"), "Cluster policy toward another node: the node's address");
}

#[test]
fn ipv6_cluster_ip() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    let svc = Svc::new("web6", "fd00:96::10").endpoint("fd01:0::2", "node1");
    lab.write_manifests(&manifests(&[svc]));
    lab.start_tpvs(&[]);
    let h = lab.wait_serving("[fd00:96::10]:80");
    assert_eq!(h.backend, "be0");
    assert_eq!(h.peer.ip(), ip("fd01::1"));
}

#[test]
fn ipv6_loadbalancer_ip_with_local_policy_keeps_client_ip() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    let mut svc = Svc::new("web6", "fd00:96::20").endpoint("fd01:0::2", "node1");
    svc.kind = "LoadBalancer";
    svc.node_port = Some(30110);
    svc.external_policy = "Local";
    svc.lb_ingress = Some("fd00:99::10".into());
    lab.write_manifests(&manifests(&[svc]));
    lab.start_tpvs(&[]);
    let h = lab.wait_serving("[fd00:99::10]:80");
    assert_eq!((h.backend.as_str(), h.peer.ip()), ("be0", ip("fd00::2")), "IPv6 Local: the backend sees the client");
}

#[test]
fn local_policy_without_local_endpoints_drops() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    lab.serve_node2();
    let mut elsewhere = Svc::new("elsewhere", "10.96.0.30").endpoint("10.2.0.2", "node2");
    elsewhere.kind = "LoadBalancer";
    elsewhere.node_port = Some(30100);
    elsewhere.external_policy = "Local";
    elsewhere.lb_ingress = Some("10.99.0.30".into());
    lab.write_manifests(&manifests(&[web(&[0]), elsewhere]));
    lab.start_tpvs(&[]);
    lab.wait_serving(WEB);
    let started = Instant::now();
    let err = lab.connect_from(&lab.client.clone(), "10.99.0.30:80", Duration::from_millis(1500)).err();
    let kind = err.as_ref().map(std::io::Error::kind);
    assert!(matches!(kind, Some(ErrorKind::TimedOut | ErrorKind::WouldBlock)), "dropped, not refused: {err:?}");
    assert!(started.elapsed() >= Duration::from_millis(1400));
    // ...by tpvs's rule, not by a missing route: only the node's and its pods' connections
    // go on (the short-circuit to all endpoints), the rest is dropped.
    let map = lab.node_sh(&["nft", "list", "map", "inet", "tpvs", "frontends4"]).unwrap_or_else(|e| panic!("{e}"));
    // Elements carry their packet counters (`... counter packets N bytes M : goto ...`):
    // this one counted the dropped SYNs.
    let element = map
        .split([',', '{', '}'])
        .map(str::trim)
        .find(|e| e.starts_with("10.99.0.30 . tcp . 80 "))
        .unwrap_or_else(|| panic!("no element for 10.99.0.30: {map}"));
    assert!(element.ends_with(": goto local_origin_tcp"), "{element}");
    let chain = lab.node_sh(&["nft", "list", "chain", "inet", "tpvs", "local_origin_tcp"]).unwrap_or_else(|e| panic!("{e}"));
    assert!(chain.contains("goto no_local"), "{chain}");
    assert!(!element.contains("counter packets 0 "), "the drops were counted: {element}");
    // The ClusterIP follows internalTrafficPolicy (Cluster) and still reaches node2.
    let h = lab.hello("10.96.0.30:80").unwrap_or_else(|e| panic!("cluster ip: {e}"));
    assert_eq!(h.backend, "node2");
}

#[test]
fn no_endpoints_is_refused_within_a_second() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    lab.write_manifests(&manifests(&[web(&[0]), Svc::new("empty", "10.96.0.99")]));
    lab.start_tpvs(&[]);
    lab.wait_serving(WEB);
    let started = Instant::now();
    let err = lab.hello("10.96.0.99:80").err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::ConnectionRefused));
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
}

#[test]
fn rr_is_exactly_even_over_the_wire() {
    let Some(mut lab) = lab(3, &[0, 1, 2]) else { return };
    lab.write_manifests(&manifests(&[web(&[0, 1, 2])]));
    lab.start_tpvs(&["--scheduler", "rr"]);
    lab.wait_serving(WEB);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..30 {
        let h = lab.hello(WEB).unwrap_or_else(|e| panic!("hello: {e}"));
        *seen.entry(h.backend).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = [("be0".to_string(), 10), ("be1".to_string(), 10), ("be2".to_string(), 10)].into();
    assert_eq!(seen, expected);
}

#[test]
fn client_ip_affinity_sticks_to_one_backend() {
    let Some(mut lab) = lab(3, &[0, 1, 2]) else { return };
    let mut svc = web(&[0, 1, 2]);
    svc.affinity_secs = Some(600);
    lab.write_manifests(&manifests(&[svc]));
    lab.start_tpvs(&[]);
    let first = lab.wait_serving(WEB);
    for _ in 0..12 {
        let h = lab.hello(WEB).unwrap_or_else(|e| panic!("hello: {e}"));
        assert_eq!(h.backend, first.backend, "ClientIP affinity");
    }
}

#[test]
fn endpoint_removed_mid_traffic_drains() {
    let Some(mut lab) = lab(2, &[0, 1]) else { return };
    lab.write_manifests(&manifests(&[web(&[0, 1])]));
    lab.start_tpvs(&[]);
    lab.wait_serving(WEB);
    // An established connection to be1.
    let mut on_be1 = lab
        .wait_for(Duration::from_secs(5), || lab.open(WEB).ok().filter(|c| c.hello.backend == "be1"))
        .unwrap_or_else(|| panic!("never reached be1"));
    lab.write_manifests(&manifests(&[web(&[0])]));
    // The table change reaches new connections: wait until several in a row skip be1.
    let mut streak = 0;
    let switched = lab.wait_for(Duration::from_secs(10), || {
        let h = lab.hello(WEB).ok()?;
        streak = if h.backend == "be0" { streak + 1 } else { 0 };
        (streak >= 4).then_some(())
    });
    assert!(switched.is_some(), "be1 still picked after removal");
    let before = lab.accepted("be1");
    for _ in 0..10 {
        let h = lab.hello(WEB).unwrap_or_else(|e| panic!("hello: {e}"));
        assert_eq!(h.backend, "be0");
    }
    assert_eq!(lab.accepted("be1"), before, "no new connection to the removed endpoint");
    // ...while the established one keeps flowing both ways.
    assert_eq!(on_be1.echo("still here\n").unwrap_or_else(|e| panic!("drain: {e}")), "still here\n");
    assert!(on_be1.finish().is_ok());
}

#[test]
fn refusing_backend_is_skipped_by_retry() {
    // be1 has an address but nothing listens: its connects are refused.
    let Some(mut lab) = lab(3, &[0, 2]) else { return };
    lab.write_manifests(&manifests(&[web(&[0, 1, 2])]));
    lab.start_tpvs(&[]);
    lab.wait_serving(WEB);
    for _ in 0..12 {
        let h = lab.hello(WEB).unwrap_or_else(|e| panic!("every connection must succeed: {e}"));
        assert_ne!(h.backend, "be1");
    }
    assert!(lab.accepted("be0") > 0 && lab.accepted("be2") > 0);
}

#[test]
fn malformed_manifests_update_keeps_forwarding() {
    let Some(mut lab) = lab(2, &[0, 1]) else { return };
    lab.write_manifests(&manifests(&[web(&[0])]));
    lab.start_tpvs(&[]);
    lab.wait_serving(WEB);
    lab.write_manifests("apiVersion: v1\nkind: Service\nmetadata: {name: web\nspec: [unbalanced\n");
    std::thread::sleep(Duration::from_millis(600));
    for _ in 0..4 {
        let h = lab.hello(WEB).unwrap_or_else(|e| panic!("after malformed update: {e}"));
        assert_eq!(h.backend, "be0");
    }
    // A good update after the bad one applies.
    lab.write_manifests(&manifests(&[web(&[1])]));
    let moved = lab.wait_for(Duration::from_secs(10), || lab.hello(WEB).ok().filter(|h| h.backend == "be1"));
    assert!(moved.is_some(), "a good update after a malformed one must apply");
}

#[test]
fn node_itself_reaches_cluster_ip() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    lab.serve_node2();
    // Like a real node, the node has a route covering the Service range (toward node2 here):
    // the output hook must divert the node's own connection to the proxy before it leaves.
    sh_node(&lab, &["ip", "route", "add", "10.96.0.0/16", "via", "10.2.0.2"]);
    lab.write_manifests(&manifests(&[web(&[0])]));
    lab.start_tpvs(&[]);
    lab.wait_serving(WEB);
    let node = lab.node.clone();
    let h = lab.open_from(&node, WEB).unwrap_or_else(|e| panic!("from the node: {e}"));
    assert_eq!(h.hello.backend, "be0");
}

fn sh_node(lab: &Lab, args: &[&str]) {
    if let Err(e) = lab.node_sh(args) {
        panic!("{e}");
    }
}

fn rules_present(lab: &Lab) -> (bool, bool) {
    let nft = lab.node_sh(&["nft", "list", "ruleset"]).unwrap_or_default();
    let rules4 = lab.node_sh(&["ip", "-4", "rule", "show"]).unwrap_or_default();
    let rules6 = lab.node_sh(&["ip", "-6", "rule", "show"]).unwrap_or_default();
    let routes = lab.node_sh(&["ip", "-4", "route", "show", "table", "7470"]).unwrap_or_default();
    (nft.contains("tpvs"), rules4.contains("7470") || rules6.contains("7470") || !routes.trim().is_empty())
}

#[test]
fn shutdown_and_cleanup_leave_no_rule() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    lab.write_manifests(&manifests(&[web(&[0])]));
    lab.start_tpvs(&[]);
    lab.wait_serving(WEB);
    assert_eq!(rules_present(&lab), (true, true));
    assert!(lab.stop_tpvs(libc::SIGTERM), "clean exit on SIGTERM; log:\n{}", lab.tpvs_log());
    assert_eq!(rules_present(&lab), (false, false), "SIGTERM removes everything");

    // Killed without a chance to clean up: `tpvs cleanup` does it, and is idempotent.
    lab.start_tpvs(&[]);
    lab.wait_serving(WEB);
    lab.stop_tpvs(libc::SIGKILL);
    assert_eq!(rules_present(&lab), (true, true));
    let bin = env!("CARGO_BIN_EXE_tpvs");
    lab.node_sh(&[bin, "cleanup"]).unwrap_or_else(|e| panic!("cleanup: {e}"));
    assert_eq!(rules_present(&lab), (false, false), "cleanup removes everything");
    lab.node_sh(&[bin, "cleanup"]).unwrap_or_else(|e| panic!("second cleanup: {e}"));
}
