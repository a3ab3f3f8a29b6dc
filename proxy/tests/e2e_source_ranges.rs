//! End-to-end: `loadBalancerSourceRanges` in the namespace lab. A LoadBalancer IP whose ranges
//! hold the client (10.0.0.2 / fd00::2) serves it; one whose ranges leave it out drops its
//! packets (no reset, no answer: the client times out, as with kube-proxy), while the same
//! Service's NodePort and ClusterIP stay open, since kube-proxy applies the ranges to the
//! load-balancer IPs only.

mod admin_http;
mod lab;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use lab::{Lab, fenced, lab};

/// Connecting from the client to `dst` gets no answer at all within 1.5 s.
fn assert_dropped(lab: &Lab, dst: &str) {
    let started = Instant::now();
    let err = lab.connect_from(&lab.client.clone(), dst, Duration::from_millis(1500)).err();
    let kind = err.as_ref().map(std::io::Error::kind);
    assert!(
        matches!(kind, Some(ErrorKind::TimedOut | ErrorKind::WouldBlock)),
        "{dst}: a client outside the ranges must be dropped, got {err:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(1400), "{dst}: answered early: {err:?}");
}

/// The admin server's metrics, inside the node namespace.
const METRICS: &str = "127.0.0.1:10249";

/// `tpvs_source_range_dropped_packets_total` as scraped, once it is above zero.
fn scraped_out_of_range(lab: &Lab) -> f64 {
    let value = |body: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix("tpvs_source_range_dropped_packets_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    let node = lab.node.clone();
    let r = admin_http::wait_reply(lab, &node, METRICS, "/metrics", "source-range drops", |r| value(&r.body).is_some_and(|v| v > 0.0));
    value(&r.body).unwrap_or_default()
}

/// Packets the out-of-range chain dropped, from its counter.
fn out_of_range_packets(lab: &Lab) -> u64 {
    let text = lab.node_sh(&["nft", "list", "chain", "inet", "tpvs", "out_of_range"]).unwrap_or_else(|e| panic!("{e}"));
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet counter in:\n{text}"))
}

fn check_family(lab: &mut Lab, open_lb: &str, shut_lb: &str, shut_node_port: &str, shut_cluster_ip: &str, docs: &[String]) {
    lab.write_manifests(&docs.join("---\n"));
    lab.start_tpvs(&[]);
    let h = lab.wait_serving(open_lb);
    assert_eq!(h.backend, "be0", "a client inside the ranges is served");
    assert_dropped(lab, shut_lb);
    let dropped = out_of_range_packets(lab);
    assert!(dropped > 0, "the drop must be tpvs's source-range rule, not a missing route");
    assert!(scraped_out_of_range(lab) > 0.0, "the drops show in the metrics");
    // The same Service's other frontends ignore the ranges, as in kube-proxy.
    let h = lab.hello(shut_node_port).unwrap_or_else(|e| panic!("{shut_node_port}: the NodePort stays open: {e}"));
    assert_eq!(h.backend, "be0");
    let h = lab.hello(shut_cluster_ip).unwrap_or_else(|e| panic!("{shut_cluster_ip}: the ClusterIP stays open: {e}"));
    assert_eq!(h.backend, "be0");
    // The open Service keeps serving after the refused attempts.
    assert!(lab.hello(open_lb).is_ok());
}

#[test]
fn ipv4_source_ranges_admit_the_listed_clients_only() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    let docs = [
        fenced("open4", "10.96.0.40", "10.99.0.40", 30140, &["10.0.0.0/24"]),
        // The other family's range does not open the IPv4 address.
        fenced("shut4", "10.96.0.41", "10.99.0.41", 30141, &["192.0.2.0/24", "fd00::/64"]),
    ];
    check_family(&mut lab, "10.99.0.40:80", "10.99.0.41:80", "10.0.0.1:30141", "10.96.0.41:80", &docs);
}

#[test]
fn ipv6_source_ranges_admit_the_listed_clients_only() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    let docs = [
        fenced("open6", "fd00:96::40", "fd00:99::40", 30150, &["fd00::2/128"]),
        fenced("shut6", "fd00:96::41", "fd00:99::41", 30151, &["2001:db8::/32", "10.0.0.0/24"]),
    ];
    check_family(&mut lab, "[fd00:99::40]:80", "[fd00:99::41]:80", "[fd00::1]:30151", "[fd00:96::41]:80", &docs);
}
