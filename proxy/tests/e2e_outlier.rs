//! Passive outlier detection, against the real `tpvs run` in the namespace lab: a backend
//! that blackholes SYNs is ejected after consecutive connect timeouts, new connections stop
//! paying its timeout, `tpvs list` and the metrics say so, and once it answers again it gets
//! traffic back. Root and nftables/iproute2 required (or `TPVS_SKIP_E2E=1`).

mod admin_http;
mod lab;

use std::time::{Duration, Instant};

use admin_http::get;
use lab::{Lab, Svc, lab, manifests, sh};

const WEB: &str = "10.96.0.10:80";
const METRICS: &str = "127.0.0.1:10249";
const BLACKHOLE: &str = "10.1.2.2:8080";

/// Drops every SYN to the backend's port inside its namespace: connects time out, as with a
/// node that went away without a trace.
fn blackhole(lab: &Lab, k: usize, on: bool) {
    let ns = &lab.backends[k];
    if on {
        sh(&["ip", "netns", "exec", ns, "nft", "add table inet blackhole; add chain inet blackhole input { type filter hook input priority 0; tcp dport 8080 tcp flags & (syn | ack) == syn drop; }"]);
    } else {
        sh(&["ip", "netns", "exec", ns, "nft", "delete table inet blackhole"]);
    }
}

/// One request through the ClusterIP: which backend answered and how long it took.
fn timed_hello(lab: &Lab) -> (String, Duration) {
    let started = Instant::now();
    let h = lab.hello(WEB).unwrap_or_else(|e| panic!("hello: {e}"));
    (h.backend, started.elapsed())
}

fn ejected_for(lab: &Lab) -> Option<u64> {
    let out = lab.node_sh(&[env!("CARGO_BIN_EXE_tpvs"), "list", "--json"]).unwrap_or_else(|e| panic!("tpvs list: {e}"));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("list --json: {e}: {out}"));
    let backends = json["frontends"][0]["backends"].as_array().cloned().unwrap_or_default();
    let b = backends.iter().find(|b| b["address"] == BLACKHOLE).unwrap_or_else(|| panic!("{json}"));
    b["ejected_for_seconds"].as_u64()
}

#[test]
fn a_blackholed_backend_is_ejected_then_readmitted() {
    let Some(mut lab) = lab(3, &[0, 1, 2]) else { return };
    let web = (0..3).fold(Svc::new("web", "10.96.0.10"), |s, k| s.endpoint(&format!("10.1.{k}.2"), "node1"));
    lab.write_manifests(&manifests(&[web]));
    // The lab's connect timeout is 500 ms; a short ejection keeps the test quick.
    lab.start_tpvs(&["--outlier-consecutive-failures", "3", "--outlier-base-ejection-time", "3s"]);
    lab.wait_serving(WEB);
    blackhole(&lab, 2, true);

    // rr sends every third connection to be2, which costs a connect timeout before the retry
    // reaches another backend: three such connections eject it.
    let mut slow = 0;
    for _ in 0..12 {
        let (backend, took) = timed_hello(&lab);
        assert_ne!(backend, "be2", "be2 cannot answer");
        if took >= Duration::from_millis(400) {
            slow += 1;
        }
    }
    assert_eq!(slow, 3, "exactly three connections paid the timeout before the ejection");
    let left = ejected_for(&lab);
    assert!(left.is_some_and(|s| (1..=3).contains(&s)), "tpvs list shows the ejection: {left:?}");
    let node = lab.node.clone();
    let metrics = get(&node, METRICS, "/metrics").unwrap_or_else(|e| panic!("metrics: {e}")).body;
    let ejected_line = metrics.lines().find(|l| l.starts_with("tpvs_backend_ejected{") && l.contains(BLACKHOLE));
    assert!(ejected_line.is_some_and(|l| l.ends_with(" 1")), "{ejected_line:?}");
    let count_line = metrics.lines().find(|l| l.starts_with("tpvs_backend_ejections_total{") && l.contains(BLACKHOLE));
    assert!(count_line.is_some_and(|l| l.ends_with(" 1")), "{count_line:?}");

    // While ejected nobody waits on it.
    for _ in 0..9 {
        let (_, took) = timed_hello(&lab);
        assert!(took < Duration::from_millis(400), "an ejected backend costs nothing: {took:?}");
    }

    // It recovers; when the ejection ends it is picked again and, answering, stays in.
    blackhole(&lab, 2, false);
    let back = lab.wait_for(Duration::from_secs(10), || {
        let (backend, _) = timed_hello(&lab);
        (backend == "be2").then_some(())
    });
    assert!(back.is_some(), "be2 gets traffic again after its ejection");
    assert_eq!(ejected_for(&lab), None);
    let seen: Vec<String> = (0..6).map(|_| timed_hello(&lab).0).collect();
    assert!(seen.iter().filter(|b| *b == "be2").count() >= 1, "back in rotation: {seen:?}");
}

#[test]
fn ejection_never_takes_more_than_the_allowed_share() {
    let Some(mut lab) = lab(2, &[0, 1]) else { return };
    let web = (0..2).fold(Svc::new("web", "10.96.0.10"), |s, k| s.endpoint(&format!("10.1.{k}.2"), "node1"));
    lab.write_manifests(&manifests(&[web]));
    lab.start_tpvs(&["--outlier-consecutive-failures", "1", "--outlier-max-ejection-percent", "50"]);
    lab.wait_serving(WEB);
    // Both backends blackholed: at most one of the two may be ejected, so connections still
    // try (and time out on) real backends rather than being refused by the proxy itself.
    blackhole(&lab, 0, true);
    blackhole(&lab, 1, true);
    for _ in 0..4 {
        let _ = lab.connect_from(&lab.client.clone(), WEB, Duration::from_secs(3)).map(|mut s| {
            use std::io::Read;
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
        });
    }
    let node = lab.node.clone();
    let metrics = get(&node, METRICS, "/metrics").unwrap_or_else(|e| panic!("metrics: {e}")).body;
    let ejected: usize = metrics.lines().filter(|l| l.starts_with("tpvs_backend_ejected{") && l.ends_with(" 1")).count();
    assert_eq!(ejected, 1, "half of two backends: {metrics}");
    blackhole(&lab, 0, false);
    blackhole(&lab, 1, false);
}
