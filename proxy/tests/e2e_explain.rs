//! `tpvs explain` against a running daemon in the namespace lab: the live evidence it shows
//! (the verdict-map element's packet counter, the backends' connection counters, connect
//! failures and retries) must move when real traffic passes, the backend it foretells for a
//! client under `sh` must be the one the data path then picks, and the session-affinity entry
//! it shows must be the one the data path recorded.

mod lab;

use std::process::Output;

use lab::{Lab, Svc, lab, manifests};

const WEB: &str = "10.96.0.10:80";
const EMPTY: &str = "10.96.0.11:80";
const FLAKY: &str = "10.96.0.12:80";
const STICKY: &str = "10.96.0.13:80";
/// The web Service's NodePort on the node's address.
const NODE_PORT: &str = "10.0.0.1:30080";
/// The lab's client namespace address.
const CLIENT: &str = "10.0.0.2";

fn explain(lab: &Lab, args: &[&str]) -> Output {
    let mut full = vec!["netns", "exec", &lab.node, env!("CARGO_BIN_EXE_tpvs"), "explain"];
    full.extend_from_slice(args);
    std::process::Command::new("ip").args(&full).output().unwrap_or_else(|e| panic!("tpvs explain: {e}"))
}

fn explain_json(lab: &Lab, dest: &str) -> (serde_json::Value, Option<i32>) {
    let o = explain(lab, &[dest, "--from", CLIENT, "--json"]);
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{dest}: {e}: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)));
    (v, o.status.code())
}

fn packets(v: &serde_json::Value) -> u64 {
    v["live"]["rule"]["packets"].as_u64().unwrap_or_else(|| panic!("no rule packet counter in {v}"))
}

fn backend<'a>(v: &'a serde_json::Value, addr: &str) -> &'a serde_json::Value {
    v["live"]["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["address"] == addr))
        .unwrap_or_else(|| panic!("no live backend {addr} in {v}"))
}

#[test]
fn explain_live_counters_move_with_traffic_and_the_foretold_backend_is_the_one_picked() {
    let Some(mut lab) = lab(3, &[0, 1]) else { return };
    let mut web = Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1").endpoint("10.1.1.2", "node1");
    web.kind = "NodePort";
    web.node_port = Some(30080);
    let empty = Svc::new("empty", "10.96.0.11");
    // be2 has no server: its connects are refused and retried on be1.
    let flaky = Svc::new("flaky", "10.96.0.12").endpoint("10.1.1.2", "node1").endpoint("10.1.2.2", "node1");
    let mut sticky = Svc::new("sticky", "10.96.0.13").endpoint("10.1.0.2", "node1").endpoint("10.1.1.2", "node1");
    sticky.affinity_secs = Some(600);
    let rr = |name: &str| (format!("  name: {name}\n  namespace: default\n"), format!("  name: {name}\n  namespace: default\n  annotations:\n    tpvs/scheduler: rr\n"));
    let (flaky_from, flaky_to) = rr("flaky");
    let (sticky_from, sticky_to) = rr("sticky");
    let yaml = manifests(&[web, empty, flaky, sticky]).replace(&flaky_from, &flaky_to).replace(&sticky_from, &sticky_to);
    assert_eq!(yaml.matches("tpvs/scheduler: rr").count(), 2);
    lab.write_manifests(&yaml);
    // sh: the backend of a client is a function of its address, so explain can foretell it.
    lab.start_tpvs(&["--scheduler", "sh", "--outlier-consecutive-failures", "0"]);
    lab.wait_serving(WEB);

    let (before, code) = explain_json(&lab, WEB);
    assert_eq!((before["outcome"].as_str(), code), (Some("forwarded"), Some(0)), "{before}");
    assert_eq!(before["source"], "daemon");
    assert_eq!(before["live"]["rule"]["map"], "frontends4", "{before}");
    assert_eq!(before["live"]["rule"]["element"], "10.96.0.10 . tcp . 80 : goto tproxy_tcp", "{before}");
    let foretold = before["decision"]["backend"].as_str().unwrap_or_else(|| panic!("no foretold backend: {before}")).to_string();
    let be_name = if foretold == "10.1.0.2:8080" { "be0" } else { "be1" };
    let (packets_before, conns_before) = (packets(&before), backend(&before, &foretold)["connections"].as_u64().unwrap_or(0));

    const N: u64 = 5;
    for _ in 0..N {
        let h = lab.hello(WEB).unwrap_or_else(|e| panic!("hello: {e}"));
        assert_eq!(h.backend, be_name, "the data path picked another backend than explain foretold ({foretold})");
    }
    let (after, _) = explain_json(&lab, WEB);
    // Each connection is at least a SYN, an ACK and a FIN through the rule.
    assert!(packets(&after) >= packets_before + 3 * N, "rule counter {} -> {}: {after}", packets_before, packets(&after));
    let conns_after = backend(&after, &foretold)["connections"].as_u64().unwrap_or(0);
    assert_eq!(conns_after, conns_before + N, "backend counter: {after}");
    assert_eq!(after["live"]["frontend_connections"].as_u64(), Some(conns_after + other(&after, &foretold)), "{after}");

    // The NodePort recipe: on the node's address it matches the NodePort rule, which counts
    // the packets that reached the node; an address that is not the node's matches nothing.
    let (np_before, code) = explain_json(&lab, NODE_PORT);
    assert_eq!((np_before["outcome"].as_str(), code), (Some("forwarded"), Some(0)), "{np_before}");
    assert_eq!(np_before["frontend"]["matched_as"], "node_port", "{np_before}");
    assert_eq!(np_before["live"]["rule"]["map"], "nodeports4", "{np_before}");
    assert_eq!(np_before["live"]["rule"]["element"], "tcp . 30080 : goto tproxy_tcp", "{np_before}");
    assert_eq!(lab.hello(NODE_PORT).map(|h| h.backend).ok().as_deref(), Some(be_name));
    let (np_after, _) = explain_json(&lab, NODE_PORT);
    assert!(packets(&np_after) >= packets(&np_before) + 3, "{np_after}");
    let diagnosis = np_after["diagnosis"].as_str().unwrap_or_default();
    assert!(
        diagnosis.contains("NodePort 30080 answers on every local address except loopback; its rule counted"),
        "{diagnosis}"
    );
    let (elsewhere, code) = explain_json(&lab, "203.0.113.1:30080");
    assert_eq!((elsewhere["outcome"].as_str(), code), (Some("no_frontend"), Some(1)), "{elsewhere}");
    assert!(elsewhere["diagnosis"].as_str().unwrap_or_default().contains("203.0.113.1 is not an address of this node"), "{elsewhere}");

    // A Service without endpoints: refused at once by its rule, whose counter moves.
    let (refused, code) = explain_json(&lab, EMPTY);
    assert_eq!((refused["outcome"].as_str(), code), (Some("refused"), Some(1)), "{refused}");
    assert_eq!(refused["live"]["rule"]["element"], "10.96.0.11 . tcp . 80 : goto refuse");
    let p0 = packets(&refused);
    let err = lab.hello(EMPTY).err().map(|e| e.kind());
    assert_eq!(err, Some(std::io::ErrorKind::ConnectionRefused));
    let (refused_after, _) = explain_json(&lab, EMPTY);
    assert!(packets(&refused_after) > p0, "{refused_after}");

    // Connect failures and retries, by reason: rr alternates, so every other connection
    // meets be2's refusal first and is retried on be1.
    let (flaky_before, _) = explain_json(&lab, FLAKY);
    for _ in 0..6 {
        let h = lab.hello(FLAKY).unwrap_or_else(|e| panic!("hello flaky: {e}"));
        assert_eq!(h.backend, "be1");
    }
    let (flaky_after, _) = explain_json(&lab, FLAKY);
    let refused_of = |v: &serde_json::Value| backend(v, "10.1.2.2:8080")["failures"]["refused"].as_u64().unwrap_or(0);
    let retries_of = |v: &serde_json::Value| backend(v, "10.1.1.2:8080")["retries"].as_u64().unwrap_or(0);
    assert!(refused_of(&flaky_after) >= refused_of(&flaky_before) + 3, "{flaky_before}\n{flaky_after}");
    assert!(retries_of(&flaky_after) >= retries_of(&flaky_before) + 3, "{flaky_after}");
    assert_eq!(flaky_after["decision"]["scheduler"], "rr");
    let text = String::from_utf8_lossy(&explain(&lab, &[FLAKY, "--from", CLIENT]).stdout).into_owned();
    assert!(text.contains("6. Live: rule frontends4 \"10.96.0.12 . tcp . 80 : goto tproxy_tcp\" counted"), "{text}");
    assert!(text.contains("refused connect failures"), "{text}");
    // Session affinity: no sticky entry before the client's first connection; after it, the
    // entry the data path recorded, to the backend that served it, for the Service's timeout.
    let (sticky_before, _) = explain_json(&lab, STICKY);
    assert!(sticky_before["decision"]["sticky"].is_null(), "{sticky_before}");
    let h = lab.hello(STICKY).unwrap_or_else(|e| panic!("hello sticky: {e}"));
    let (sticky_after, _) = explain_json(&lab, STICKY);
    let served = if h.backend == "be0" { "10.1.0.2:8080" } else { "10.1.1.2:8080" };
    assert_eq!(sticky_after["decision"]["sticky"]["backend"], served, "{sticky_after}");
    assert_eq!(sticky_after["decision"]["backend"], served, "{sticky_after}");
    assert_eq!(sticky_after["decision"]["by"], "affinity", "{sticky_after}");
    let left = sticky_after["decision"]["sticky"]["expires_in_seconds"].as_u64().unwrap_or(0);
    assert!((590..=600).contains(&left), "{sticky_after}");
    for _ in 0..3 {
        assert_eq!(lab.hello(STICKY).map(|h2| h2.backend).ok(), Some(h.backend.clone()), "affinity holds");
    }

    if std::env::var_os("TPVS_EXPLAIN_SHOW").is_some() {
        for d in [WEB, EMPTY, FLAKY, STICKY, NODE_PORT, "203.0.113.1:30080"] {
            eprintln!("$ tpvs explain {d} --from {CLIENT}\n{}", String::from_utf8_lossy(&explain(&lab, &[d, "--from", CLIENT]).stdout));
        }
    }
}

/// Connections of the frontend's backends other than `addr`.
fn other(v: &serde_json::Value, addr: &str) -> u64 {
    v["live"]["backends"]
        .as_array()
        .map(|bs| bs.iter().filter(|b| b["address"] != addr).filter_map(|b| b["connections"].as_u64()).sum())
        .unwrap_or(0)
}
