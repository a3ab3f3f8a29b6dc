//! SIGTERM with no successor (a node drain, an uninstall), against the real `tpvs run` in the
//! namespace lab: the instance stops accepting but keeps the rules, so an established
//! connection keeps flowing for `--shutdown-grace`; it exits 0 by itself when the grace runs
//! out or as soon as the last connection closes, or at once on a second signal, and the nft
//! table is gone after every one of those exits. While it drains, `/healthz` says 503 with
//! `nodeEligible: false` (load balancers steer away) and `/livez` stays 200. Root and
//! nftables/iproute2 required (or `TPVS_SKIP_E2E=1`).

mod admin_http;
mod lab;

use std::time::{Duration, Instant};

use lab::{Lab, Svc, lab, manifests};

const VIP: &str = "10.96.0.10:80";
const HEALTHZ: &str = "10.0.0.1:10256";

fn start(grace: &str) -> Option<Lab> {
    let mut lab = lab(1, &[0])?;
    lab.write_manifests(&manifests(&[Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1")]));
    lab.start_tpvs(&["--shutdown-grace", grace]);
    lab.wait_serving(VIP);
    Some(lab)
}

fn table_present(lab: &Lab) -> bool {
    lab.node_sh(&["nft", "list", "table", "inet", "tpvs"]).is_ok()
}

/// Sends SIGTERM and waits until the instance says it is draining.
fn sigterm(lab: &Lab) {
    assert!(lab.signal_tpvs(libc::SIGTERM), "no tpvs to signal");
    let draining = lab.wait_for(Duration::from_secs(5), || lab.tpvs_log().contains("stopped accepting").then_some(()));
    assert!(draining.is_some(), "no drain after SIGTERM; log:\n{}", lab.tpvs_log());
}

#[test]
fn after_sigterm_an_open_connection_flows_until_the_grace_then_the_rules_go() {
    let Some(mut lab) = start("3s") else { return };
    let mut conn = lab.open(VIP).unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    sigterm(&lab);
    // An echo every 100 ms for two seconds: the rules still carry the connection's packets
    // to its socket, and the instance relays them.
    for i in 0..20 {
        let msg = format!("echo {i}\n");
        match conn.echo(&msg) {
            Ok(got) => assert_eq!(got, msg),
            Err(e) => panic!("echo {i} failed {:?} after SIGTERM: {e}; log:\n{}", t0.elapsed(), lab.tpvs_log()),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(table_present(&lab), "the rules stay during the grace");
    let client = lab.client.clone();
    let healthz = admin_http::get(&client, HEALTHZ, "/healthz").unwrap_or_else(|e| panic!("/healthz while draining: {e}"));
    assert_eq!(healthz.status, 503, "/healthz while draining");
    assert_eq!(healthz.json()["nodeEligible"], serde_json::Value::Bool(false), "{healthz:?}");
    let livez = admin_http::get(&client, HEALTHZ, "/livez").unwrap_or_else(|e| panic!("/livez while draining: {e}"));
    assert_eq!(livez.status, 200, "/livez while draining");
    // No new connection is accepted: the listeners are closed, and the rules drop a SYN that
    // meets none (never reset, never routed on), so the client only retransmits: its 1 s
    // connect times out.
    let refused_at = Instant::now();
    let new = lab.connect_from(&lab.client.clone(), VIP, Duration::from_secs(1));
    let kind = new.as_ref().err().map(std::io::Error::kind);
    eprintln!("a new connection during the drain: {:?} after {:?}", new.err(), refused_at.elapsed());
    assert_eq!(kind, Some(std::io::ErrorKind::TimedOut), "a new connection during the drain must be dropped, not accepted or refused");
    let status = lab.wait_tpvs_exit(Duration::from_secs(5));
    let waited = t0.elapsed();
    assert!(status.is_some_and(|s| s.success()), "{status:?}; log:\n{}", lab.tpvs_log());
    assert!(waited >= Duration::from_millis(2900) && waited < Duration::from_secs(5), "exited {waited:?} after SIGTERM, not at the 3 s grace");
    assert!(!table_present(&lab), "the nft table is removed at the end of the grace");
    let log = lab.tpvs_log();
    assert!(log.contains("connections_cut=1") && log.contains("grace ran out"), "{log}");
    assert!(conn.echo("gone?\n").is_err(), "the connection ends with the process");
}

#[test]
fn after_sigterm_the_instance_exits_as_soon_as_the_last_connection_closes() {
    let Some(mut lab) = start("20s") else { return };
    let mut conn = lab.open(VIP).unwrap_or_else(|e| panic!("{e}"));
    sigterm(&lab);
    assert_eq!(conn.echo("still there\n").unwrap_or_else(|e| panic!("{e}")), "still there\n");
    let closed = Instant::now();
    conn.finish().unwrap_or_else(|e| panic!("{e}"));
    let status = lab.wait_tpvs_exit(Duration::from_secs(5));
    let waited = closed.elapsed();
    assert!(status.is_some_and(|s| s.success()), "{status:?}; log:\n{}", lab.tpvs_log());
    assert!(waited < Duration::from_secs(2), "exited {waited:?} after the last connection closed, not at once");
    assert!(!table_present(&lab), "the nft table is removed");
    let log = lab.tpvs_log();
    assert!(log.contains("connections_drained=1") && log.contains("connections_cut=0"), "{log}");
}

#[test]
fn a_second_sigterm_ends_the_drain_at_once() {
    let Some(mut lab) = start("20s") else { return };
    let mut conn = lab.open(VIP).unwrap_or_else(|e| panic!("{e}"));
    sigterm(&lab);
    assert_eq!(conn.echo("still there\n").unwrap_or_else(|e| panic!("{e}")), "still there\n");
    let second = Instant::now();
    assert!(lab.signal_tpvs(libc::SIGTERM));
    let status = lab.wait_tpvs_exit(Duration::from_secs(5));
    let waited = second.elapsed();
    assert!(status.is_some_and(|s| s.success()), "{status:?}; log:\n{}", lab.tpvs_log());
    assert!(waited < Duration::from_secs(1), "exited {waited:?} after the second SIGTERM, not at once");
    assert!(!table_present(&lab), "the nft table is removed");
    let log = lab.tpvs_log();
    assert!(log.contains("connections_cut=1") && log.contains("ended_by=\"SIGTERM\""), "{log}");
}

#[test]
fn after_a_hand_over_the_open_connections_flow_on_in_the_successor() {
    let Some(mut lab) = start("20s") else { return };
    let mut conn = lab.open(VIP).unwrap_or_else(|e| panic!("{e}"));
    let mut old = lab.start_successor(&[]).unwrap_or_else(|| panic!("no running instance"));
    // The open connection moves with the hand-over: the old instance has nothing to drain
    // and exits by itself, long before the kubelet's SIGTERM could matter.
    let status = lab::load::wait_exit(&mut old, Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "{status:?}; log:\n{}", lab.tpvs_log_of(0));
    let log = lab.tpvs_log_of(0);
    assert!(log.contains("connections_passed=1") && log.contains("connections_cut=0"), "{log}");
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        let msg = format!("echo {i}\n");
        assert_eq!(conn.echo(&msg).unwrap_or_else(|e| panic!("echo {i} after the hand-over: {e}; log:\n{}", lab.tpvs_log())), msg);
    }
    assert!(table_present(&lab), "the successor's rules stay");
    lab.hello(VIP).unwrap_or_else(|e| panic!("the successor serves: {e}"));
}
