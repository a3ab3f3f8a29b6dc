//! The dashboards and recording rules against a real Prometheus: `tpvs run` serves traffic in
//! the namespace lab, a Prometheus (Debian package `prometheus`) in the node's namespace
//! scrapes it every second and evaluates `deploy/prometheus/rules.yaml`, and every query of
//! `deploy/grafana/tpvs-dashboard.json` and of the recording rules must return data with a
//! finite value, so no dashboard panel is empty. The queries are read from those files, so
//! this test follows the dashboard as it changes.

mod admin_http;
mod lab;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lab::{Lab, Svc, in_netns, manifests};

const PROM: &str = "127.0.0.1:19090";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn read(rel: &str) -> String {
    let p = repo_file(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Every `expr` of every panel target, with the dashboard's variables set to "all".
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/tpvs-dashboard.json")).unwrap_or_else(|e| panic!("dashboard JSON: {e}"));
    let mut out = Vec::new();
    let top = dash["panels"].as_array().cloned().unwrap_or_default();
    // Panels inside collapsed rows are nested in the row's own `panels`.
    let nested: Vec<serde_json::Value> = top.iter().flat_map(|p| p["panels"].as_array().cloned().unwrap_or_default()).collect();
    for p in top.iter().chain(&nested) {
        for t in p["targets"].as_array().cloned().unwrap_or_default() {
            if let Some(expr) = t["expr"].as_str() {
                let q = expr
                    .replace("$__rate_interval", "1m")
                    .replace("$instance", ".*")
                    .replace("$namespace", ".*")
                    .replace("$service", ".*");
                out.push((format!("panel {:?}", p["title"].as_str().unwrap_or("?")), q));
            }
        }
    }
    assert!(out.len() >= 10, "the dashboard has fewer queries than expected: {out:?}");
    out
}

/// Each recording rule's name (its stored result) and expression.
fn recording_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut record: Option<String> = None;
    let text = read("deploy/prometheus/rules.yaml");
    let mut lines = text.lines().peekable();
    // A deliberately small reader for the file's own layout (`- record:` then `expr:`, the
    // expression on one line or as a `|` block), to avoid a YAML dependency in the tests.
    while let Some(line) = lines.next() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("- record:") {
            record = Some(name.trim().to_string());
        } else if let (Some(expr), Some(name)) = (t.strip_prefix("expr:"), record.as_ref()) {
            let mut e = expr.trim().to_string();
            if e == "|" {
                e.clear();
                while let Some(next) = lines.peek() {
                    if next.trim().is_empty() || next.trim_start().starts_with("- ") || next.trim_start().starts_with("labels:") {
                        break;
                    }
                    e.push_str(next.trim());
                    e.push(' ');
                    lines.next();
                }
            }
            out.push((format!("rule {name} (expr)"), e));
            out.push((format!("rule {name}"), name.clone()));
            record = None;
        } else if t.starts_with("- alert:") {
            record = None;
        }
    }
    assert!(out.len() >= 8, "recording rules not found in rules.yaml: {out:?}");
    out
}

/// Prometheus in the node namespace; killed on drop.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_prometheus(lab: &Lab) -> Prometheus {
    let dir = lab.dir.join("prometheus");
    std::fs::create_dir_all(dir.join("data")).unwrap_or_else(|e| panic!("prometheus dir: {e}"));
    let rules = repo_file("deploy/prometheus/rules.yaml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: tpvs\n    static_configs:\n      - targets: ['127.0.0.1:10249']\n",
        rules.display()
    );
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("prometheus config: {e}"));
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap_or_else(|e| panic!("log: {e}"));
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.node, "prometheus"])
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address={PROM}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("start prometheus (Debian package `prometheus`, scripts/setup installs it): {e}"));
    Prometheus(child)
}

fn prometheus_installed() -> bool {
    let ok = Command::new("prometheus").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !ok && std::env::var("TPVS_SKIP_E2E").is_ok_and(|v| v == "1") {
        eprintln!("skipping: no prometheus binary; TPVS_SKIP_E2E=1");
        return false;
    }
    assert!(ok, "this test needs Prometheus (Debian package `prometheus`; scripts/setup installs it)");
    true
}

/// One instant query; Ok(values) of the result's samples.
fn query(ns: &str, q: &str) -> Result<Vec<f64>, String> {
    let r = admin_http::get(ns, PROM, &format!("/api/v1/query?query={}", admin_http::encode(q))).map_err(|e| e.to_string())?;
    let v = serde_json::from_str::<serde_json::Value>(&r.body).map_err(|e| format!("{e}: {}", r.body))?;
    if v["status"] != "success" {
        return Err(format!("{}: {}", r.status, r.body));
    }
    let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
    Ok(result
        .iter()
        .filter_map(|s| s["value"][1].as_str().and_then(|x| x.parse::<f64>().ok()))
        .collect())
}

/// UDP echo on be0 at 10.1.0.2:5353, for the UDP Service.
fn udp_echo(lab: &Lab, stop: Arc<AtomicBool>) {
    let sock = in_netns(&lab.backends[0], || UdpSocket::bind("10.1.0.2:5353")).unwrap_or_else(|e| panic!("udp bind: {e}"));
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], peer);
            }
        }
    });
}

const UDP_SVC: &str = "apiVersion: v1
kind: Service
metadata:
  name: dns
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 10.96.0.53
  clusterIPs:
  - 10.96.0.53
  ports:
  - name: dns
    port: 53
    protocol: UDP
    targetPort: 5353
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: dns-abc12
  namespace: default
  labels:
    kubernetes.io/service-name: dns
addressType: IPv4
ports:
- name: dns
  port: 5353
  protocol: UDP
endpoints:
- addresses:
  - 10.1.0.2
  conditions:
    ready: true
  nodeName: node1
";

fn services(extra: bool) -> String {
    let mut svcs = vec![
        Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1").endpoint("10.1.1.2", "node1"),
        // be2 has no server: its connects are refused, counted, and retried on be1.
        Svc::new("flaky", "10.96.0.11").endpoint("10.1.1.2", "node1").endpoint("10.1.2.2", "node1"),
        // No endpoints: refused by the rules.
        Svc::new("empty", "10.96.0.12"),
    ];
    if extra {
        svcs.push(Svc::new("late", "10.96.0.13").endpoint("10.1.0.2", "node1"));
    }
    format!("{}---\n{UDP_SVC}", manifests(&svcs))
}

#[test]
fn rules_pass_promtool_check_and_their_unit_tests() {
    if !prometheus_installed() {
        return;
    }
    let dir = repo_file("deploy/prometheus");
    for args in [["check", "rules", "rules.yaml"], ["test", "rules", "rules_test.yaml"]] {
        let out = Command::new("promtool").args(args).current_dir(&dir).output().unwrap_or_else(|e| panic!("promtool: {e}"));
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_dashboard_and_recording_rule_query_returns_data() {
    if !lab::e2e_enabled() || !prometheus_installed() {
        return;
    }
    let started = Instant::now();
    let mut lab = Lab::new(3);
    lab.serve(0);
    lab.serve(1);
    let stop = Arc::new(AtomicBool::new(false));
    udp_echo(&lab, Arc::clone(&stop));
    lab.write_manifests(&services(false));
    lab.start_tpvs(&[]);
    lab.wait_serving("10.96.0.10:80");
    let prom = start_prometheus(&lab);

    // Traffic for the whole test: TCP to two Services (one with a dead backend), refused
    // connects to the Service without endpoints, and UDP datagrams.
    let lab = Arc::new(lab);
    let traffic = {
        let (lab, stop) = (Arc::clone(&lab), Arc::clone(&stop));
        std::thread::spawn(move || {
            let udp_dst: SocketAddr = "10.96.0.53:53".parse().unwrap_or_else(|e| panic!("{e}"));
            let udp = in_netns(&lab.client, || UdpSocket::bind("10.0.0.2:0")).unwrap_or_else(|e| panic!("udp: {e}"));
            let _ = udp.set_read_timeout(Some(Duration::from_millis(300)));
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                let _ = lab.hello("10.96.0.10:80");
                let _ = lab.hello("10.96.0.11:80");
                let _ = lab.connect_from(&lab.client, "10.96.0.12:80", Duration::from_millis(300));
                if udp.send_to(b"ping", udp_dst).is_ok() {
                    let _ = udp.recv_from(&mut buf);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // A change of the manifests once Prometheus has scraped the state before it: the
    // programming-latency and sync histograms then rise inside the query window.
    let node = lab.node.clone();
    let scraped = lab.wait_for(Duration::from_secs(20), || {
        query(&node, "count_over_time(tpvs_table_generation[1m]) >= 2").ok().filter(|v| !v.is_empty())
    });
    assert!(scraped.is_some(), "Prometheus never scraped tpvs twice; log:\n{}", lab::read_file(&lab.dir.join("prometheus/prometheus.log")));
    lab.write_manifests(&services(true));

    let mut queries = dashboard_queries();
    queries.extend(recording_queries());
    let deadline = Instant::now() + Duration::from_secs(35);
    let mut failing: Vec<String>;
    loop {
        failing = queries
            .iter()
            .filter_map(|(what, q)| match query(&node, q) {
                Ok(values) if values.iter().any(|v| v.is_finite()) => None,
                Ok(values) => Some(format!("{what}: no finite value ({values:?}): {q}")),
                Err(e) => Some(format!("{what}: {e}: {q}")),
            })
            .collect();
        if failing.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    // Not just zeros: each kind of event the traffic causes reached Prometheus.
    let positive = [
        "sum(tpvs_backend_connections_total{service=\"web\"})",
        "sum(tpvs_backend_connect_failures_total{service=\"flaky\",reason=\"refused\"})",
        "sum(tpvs_backend_connect_retries_total{service=\"flaky\"})",
        "sum(tpvs_refused_packets_total)",
        "sum(tpvs_udp_flows_created_total)",
        "sum(tpvs_udp_datagrams_total{direction=\"to_clients\"})",
        "sum(kubeproxy_network_programming_duration_seconds_count)",
        "sum(tpvs_backend_connect_duration_seconds_count)",
    ];
    let zero: Vec<String> = positive
        .iter()
        .filter(|q| !query(&node, q).is_ok_and(|v| v.iter().any(|x| *x > 0.0)))
        .map(|q| q.to_string())
        .collect();
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.join();
    drop(prom);
    assert!(zero.is_empty(), "expected counts above zero: {zero:?}\ntpvs log:\n{}", lab.tpvs_log());
    assert!(
        failing.is_empty(),
        "{} of {} queries return no data:\n{}\nprometheus log:\n{}\ntpvs log:\n{}",
        failing.len(),
        queries.len(),
        failing.join("\n"),
        lab::read_file(&lab.dir.join("prometheus/prometheus.log")),
        lab.tpvs_log()
    );
    eprintln!("{} queries returned data after {:?}", queries.len(), started.elapsed());
}
