//! The health contracts over HTTP, against the real `tpvs run` in the namespace lab:
//! `/healthz` and `/livez` on :10256 before and after the first table, `/proxyMode` and
//! `/api/table` on the metrics address (and `tpvs list` reading it), and health-check node
//! ports opened, answering and closed as the table changes. Root and nftables/iproute2 required (or `TPVS_SKIP_E2E=1`).

mod admin_http;
mod lab;

use std::time::Duration;

use admin_http::{get, wait_reply};
use lab::{Svc, lab, manifests};

const HEALTHZ: &str = "10.0.0.1:10256";
const METRICS: &str = "127.0.0.1:10249";
const HCNP: u16 = 32100;



#[test]
fn healthz_fails_until_the_first_table_is_live_then_passes() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    // No manifests yet: the source cannot complete a first load, so nothing is published.
    lab.start_tpvs(&[]);
    let client = lab.client.clone();
    let r = wait_reply(&lab, &client, HEALTHZ, "/healthz", "healthz up", |_| true);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["lastUpdated"], "0001-01-01T00:00:00Z", "{body}");
    assert_eq!(body["nodeEligible"], true, "{body}");
    assert!(body["currentTime"].as_str().is_some_and(|t| t.starts_with("20")), "{body}");
    let live = get(&client, HEALTHZ, "/livez").unwrap_or_else(|e| panic!("livez: {e}"));
    assert_eq!(live.status, 503, "{live:?}");
    assert!(live.json().get("nodeEligible").is_none(), "livez has no nodeEligible: {}", live.body);

    lab.write_manifests(&manifests(&[Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1")]));
    let r = wait_reply(&lab, &client, HEALTHZ, "/healthz", "healthz after the first table", |r| r.status == 200);
    let updated = r.json()["lastUpdated"].as_str().unwrap_or_default().to_string();
    assert!(updated.starts_with("20"), "lastUpdated is set once a table is live: {}", r.body);
    assert_eq!(get(&client, HEALTHZ, "/livez").map(|r| r.status).ok(), Some(200));
    assert_eq!(get(&client, HEALTHZ, "/nope").map(|r| r.status).ok(), Some(404));

    // The metrics address: loopback of the node only, kube-proxy's /proxyMode.
    let node = lab.node.clone();
    let mode = get(&node, METRICS, "/proxyMode").unwrap_or_else(|e| panic!("proxyMode: {e}"));
    assert_eq!((mode.status, mode.body.as_str()), (200, "tpvs"));
    assert!(get(&client, "10.0.0.1:10249", "/metrics").is_err(), "metrics must not be reachable off the node by default");
    let table = get(&node, METRICS, "/api/table").unwrap_or_else(|e| panic!("api/table: {e}")).json();
    assert_eq!(table["frontends"][0]["address"], "10.96.0.10:80", "{table}");
    assert_eq!(table["frontends"][0]["backends"][0]["address"], "10.1.0.2:8080", "{table}");

    // `tpvs list` without manifests reads the same table from the daemon, with counters.
    lab.hello("10.96.0.10:80").unwrap_or_else(|e| panic!("hello: {e}"));
    let list = |args: &[&str]| {
        let mut full = vec![env!("CARGO_BIN_EXE_tpvs"), "list"];
        full.extend_from_slice(args);
        lab.node_sh(&full).unwrap_or_else(|e| panic!("tpvs list {args:?}: {e}"))
    };
    let text = list(&[]);
    assert!(text.contains("TCP  10.96.0.10:80") && text.contains("-> 10.1.0.2:8080"), "{text}");
    let stats = list(&["--stats"]);
    let line = stats.lines().find(|l| l.starts_with("TCP")).unwrap_or_default();
    let conns: u64 = line.split_whitespace().nth(2).and_then(|c| c.parse().ok()).unwrap_or(0);
    assert!(conns >= 1, "a connection was made: {stats}");
    let json: serde_json::Value = serde_json::from_str(&list(&["--json"])).unwrap_or_else(|e| panic!("list --json: {e}"));
    assert!(json["frontends"][0]["backends"][0]["bytes_from_backend"].as_u64().unwrap_or(0) > 0, "{json}");
    let rate = list(&["--rate"]);
    assert!(rate.contains("CPS") && rate.contains("10.1.0.2:8080"), "{rate}");
    let elsewhere = lab.node_sh(&[env!("CARGO_BIN_EXE_tpvs"), "list", "--server", "127.0.0.1:1"]);
    assert!(elsewhere.as_ref().is_err_and(|e| e.contains("is `tpvs run` up?")), "{elsewhere:?}");
}

fn local_lb(endpoints: &[(&str, &str)]) -> String {
    let mut svc = Svc::new("lb", "10.96.0.40");
    svc.kind = "LoadBalancer";
    svc.node_port = Some(30140);
    svc.external_policy = "Local";
    svc.lb_ingress = Some("10.99.0.40".into());
    for (addr, node) in endpoints {
        svc = svc.endpoint(addr, node);
    }
    // The lab's Service has no health-check node port field; it sits beside the policy.
    svc.yaml().replacen("  externalTrafficPolicy: Local\n", &format!("  externalTrafficPolicy: Local\n  healthCheckNodePort: {HCNP}\n"), 1)
}

#[test]
fn health_check_node_port_follows_local_endpoints_and_closes_with_the_service() {
    let Some(mut lab) = lab(2, &[0, 1]) else { return };
    lab.serve_node2();
    let web = manifests(&[Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1")]);
    lab.write_manifests(&format!("{web}---\n{}", local_lb(&[("10.1.0.2", "node1"), ("10.1.1.2", "node1"), ("10.2.0.2", "node2")])));
    lab.start_tpvs(&[]);
    lab.wait_serving("10.96.0.10:80");
    let client = lab.client.clone();
    let addr = format!("10.0.0.1:{HCNP}");

    // Any path; 200 with the node's local endpoints as body and weight.
    let r = wait_reply(&lab, &client, &addr, "/any/path?x=1", "hcnp open", |r| r.status == 200);
    assert_eq!(r.header("X-Load-Balancing-Endpoint-Weight"), Some("2"), "{r:?}");
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["service"]["namespace"], "default", "{body}");
    assert_eq!(body["service"]["name"], "lb", "{body}");
    assert_eq!(body["localEndpoints"], 2, "{body}");
    assert_eq!(body["serviceProxyHealthy"], true, "{body}");

    // Endpoints only on node2: 503, weight 0, so the load balancer skips this node.
    lab.write_manifests(&format!("{web}---\n{}", local_lb(&[("10.2.0.2", "node2")])));
    let r = wait_reply(&lab, &client, &addr, "/", "hcnp 503", |r| r.status == 503);
    assert_eq!(r.header("X-Load-Balancing-Endpoint-Weight"), Some("0"), "{r:?}");
    assert_eq!(r.json()["localEndpoints"], 0, "{}", r.body);
    assert_eq!(r.json()["serviceProxyHealthy"], true, "{}", r.body);

    // The Service goes away: the port closes.
    lab.write_manifests(&web);
    let closed = lab.wait_for(Duration::from_secs(10), || get(&client, &addr, "/").is_err().then_some(()));
    assert!(closed.is_some(), "health-check node port still open after its Service left; log:\n{}", lab.tpvs_log());

    // And opens again when it comes back.
    lab.write_manifests(&format!("{web}---\n{}", local_lb(&[("10.1.0.2", "node1")])));
    let r = wait_reply(&lab, &client, &addr, "/healthz", "hcnp reopened", |r| r.status == 200);
    assert_eq!(r.header("X-Load-Balancing-Endpoint-Weight"), Some("1"), "{r:?}");
}

/// A two-port Local LoadBalancer whose ports have different pods on this node: the port
/// counts distinct ready local endpoint IPs across all ports (2), as kube-proxy does, not the
/// largest per-port count (1); a pod serving both ports counts once.
fn two_port_lb(a: &[&str], b: &[&str]) -> String {
    let endpoints = |ips: &[&str]| -> String {
        ips.iter().map(|ip| format!("- {{addresses: [{ip}], nodeName: node1}}\n")).collect()
    };
    let slice = |port: &str, num: u16, ips: &[&str]| {
        if ips.is_empty() {
            return String::new();
        }
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: lb2-{port}, namespace: default, labels: {{kubernetes.io/service-name: lb2}}}}\naddressType: IPv4\nports: [{{name: {port}, port: {num}}}]\nendpoints:\n{}",
            endpoints(ips)
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: lb2, namespace: default}}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.41\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {HCNP}\n  ports: [{{name: a, port: 80, nodePort: 30141}}, {{name: b, port: 81, nodePort: 30142}}]\n{}{}",
        slice("a", 8080, a),
        slice("b", 8081, b)
    )
}

#[test]
fn health_check_node_port_counts_distinct_local_endpoints_across_ports() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    let web = manifests(&[Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1")]);
    lab.write_manifests(&format!("{web}---\n{}", two_port_lb(&["10.1.0.2"], &["10.1.1.2"])));
    lab.start_tpvs(&[]);
    lab.wait_serving("10.96.0.10:80");
    let client = lab.client.clone();
    let addr = format!("10.0.0.1:{HCNP}");

    let r = wait_reply(&lab, &client, &addr, "/", "hcnp open", |r| r.status == 200);
    assert_eq!(r.json()["localEndpoints"], 2, "{}", r.body);
    assert_eq!(r.header("X-Load-Balancing-Endpoint-Weight"), Some("2"), "{r:?}");

    // One pod behind both ports counts once.
    lab.write_manifests(&format!("{web}---\n{}", two_port_lb(&["10.1.0.2"], &["10.1.0.2"])));
    let r = wait_reply(&lab, &client, &addr, "/", "one pod on both ports", |r| {
        r.header("X-Load-Balancing-Endpoint-Weight") == Some("1")
    });
    assert_eq!(r.json()["localEndpoints"], 1, "{}", r.body);
}
