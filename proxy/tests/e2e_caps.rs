//! The key end-to-end paths under exactly the DaemonSet's capability set (read from
//! `deploy/daemonset.yaml`): as uid 0 holding only those capabilities, as the pod runs tpvs,
//! and as a non-root uid holding them as ambient capabilities. TCP through a ClusterIP, a
//! Local LoadBalancer IP that keeps the client's address (transparent upstream sockets), DNS
//! over UDP to a ClusterIP on port 53 (the reply socket binds VIP:53), and the health server.
//! Root, nftables/iproute2, setpriv, dnsmasq and dig required (or `TPVS_SKIP_E2E=1`).

mod admin_http;
mod lab;

use std::net::IpAddr;
use std::time::Duration;

use admin_http::wait_reply;
use lab::dns::{dig_in, dnsmasq};
use lab::{Privileges, Svc, daemonset_capabilities, lab, manifests};

const HEALTHZ: &str = "10.0.0.1:10256";
const DNS_VIP: &str = "10.96.0.53";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s}: {e}"))
}

fn key_paths_work_as(privileges: Privileges) {
    let Some(mut lab) = lab(2, &[0, 1]) else { return };
    lab.privileges = privileges;
    let _dns = dnsmasq(&lab, 1);
    let web = Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1");
    let mut lb = Svc::new("lb", "10.96.0.11").endpoint("10.1.0.2", "node1");
    lb.kind = "LoadBalancer";
    lb.node_port = Some(30091);
    lb.external_policy = "Local";
    lb.lb_ingress = Some("10.99.0.11".into());
    let mut dns = Svc::new("dns", DNS_VIP).endpoint("10.1.1.2", "node1");
    dns.protocol = "UDP";
    dns.port = 53;
    dns.target_port = 53;
    lab.write_manifests(&manifests(&[web, lb, dns]));
    lab.start_tpvs(&[]);

    let h = lab.wait_serving("10.96.0.10:80");
    assert_eq!((h.backend.as_str(), h.peer.ip()), ("be0", ip("10.1.0.1")), "ClusterIP, Cluster policy");
    let h = lab.hello("10.99.0.11:80").unwrap_or_else(|e| panic!("lb: {e}; log:\n{}", lab.tpvs_log()));
    assert_eq!(h.peer.ip(), ip("10.0.0.2"), "Local keeps the client's address");
    let client = lab.client.clone();
    let answer = lab.wait_for(Duration::from_secs(10), || dig_in(&client, DNS_VIP, "A").ok());
    assert_eq!(answer.as_deref(), Some("10.1.1.2"), "DNS through the ClusterIP on port 53; log:\n{}", lab.tpvs_log());
    let r = wait_reply(&lab, &client, HEALTHZ, "/healthz", "healthz", |r| r.status == 200);
    assert_eq!(r.status, 200);
    let log = lab.tpvs_log();
    assert!(!log.contains("without CAP_"), "no capability is reported missing:\n{log}");
}

#[test]
fn the_daemonset_grants_what_tpvs_checks_for() {
    let granted = daemonset_capabilities();
    let needed: Vec<String> = tpvs::capabilities::NEEDED.iter().map(|n| n.name.to_string()).collect();
    assert_eq!(granted, needed, "deploy/daemonset.yaml adds exactly the capabilities tpvs needs");
}

#[test]
fn key_paths_work_under_the_daemonsets_capabilities() {
    key_paths_work_as(Privileges::DaemonSet);
}

#[test]
fn key_paths_work_as_non_root_with_the_daemonsets_capabilities() {
    key_paths_work_as(Privileges::DaemonSetNonRoot);
}

#[test]
fn a_missing_required_capability_is_named_at_start() {
    let Some(lab) = lab(1, &[0]) else { return };
    lab.write_manifests(&manifests(&[Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1")]));
    // Without NET_ADMIN nothing can be installed: tpvs says so and exits before trying.
    let node = lab.node.clone();
    let manifests_path = lab.manifests.to_string_lossy().into_owned();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &node, "setpriv", "--inh-caps=-all", "--bounding-set=-all,+net_bind_service", "--"])
        .args([env!("CARGO_BIN_EXE_tpvs"), "run", "--manifests", &manifests_path, "--hostname-override", "node1"])
        .output()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("CAP_NET_ADMIN") && stderr.contains("nftables"), "{stderr}");
    let tables = lab.node_sh(&["nft", "list", "tables"]).unwrap_or_default();
    assert!(!tables.contains("tpvs"), "nothing installed: {tables}");
}
