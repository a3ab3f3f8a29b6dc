//! End-to-end: traffic that starts on the node, in the namespace lab.
//!
//! - kube-proxy's short-circuit of `externalTrafficPolicy: Local` (IPv4 and IPv6): connections from the node
//!   itself and from a pod on it (a namespace inside `--cluster-cidr`) to the Service's
//!   load-balancer IP or NodePort are served from all its endpoints, even with none on this
//!   node, while a client from outside is still dropped (and, with a local endpoint, still
//!   gets only that one); `tpvs explain` of such a client names the backend its connection
//!   reaches.
//! - kube-proxy's node exception to `loadBalancerSourceRanges`: with the node's IP inside a
//!   Service's ranges, a connection whose source is the load-balancer IP itself (the node
//!   holding the VIP as a local address, its connection looped back) is admitted; with the
//!   node outside the ranges it is dropped like any other outsider.

mod lab;

use std::io::{self, BufRead, BufReader, ErrorKind};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use lab::{Hello, Lab, Svc, fenced, lab, manifests, parse_hello};

/// A connection from namespace `ns` to `dst`, from `src` when given: the backend's hello.
fn hello_from(ns: &str, src: Option<&str>, dst: &str, timeout: Duration) -> io::Result<Hello> {
    let dst: SocketAddr = dst.parse().map_err(|_| io::Error::new(ErrorKind::InvalidInput, dst.to_string()))?;
    let domain = if dst.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let sock = lab::in_netns(ns, || socket2::Socket::new(domain, socket2::Type::STREAM, None))?;
    if let Some(src) = src {
        let ip: std::net::IpAddr = src.parse().map_err(|_| io::Error::new(ErrorKind::InvalidInput, src.to_string()))?;
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    sock.connect_timeout(&dst.into(), timeout)?;
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    parse_hello(&line)
}

/// `dst` gets no answer at all from `ns` (no reset: dropped, as kube-proxy drops it).
fn assert_dropped(ns: &str, src: Option<&str>, dst: &str) {
    let started = Instant::now();
    let err = hello_from(ns, src, dst, Duration::from_millis(1500)).err();
    let kind = err.as_ref().map(io::Error::kind);
    assert!(matches!(kind, Some(ErrorKind::TimedOut | ErrorKind::WouldBlock)), "{dst} from {ns}: must be dropped, got {err:?}");
    assert!(started.elapsed() >= Duration::from_millis(1400), "{dst} from {ns}: answered early: {err:?}");
}

fn node_sh(lab: &Lab, args: &[&str]) {
    if let Err(e) = lab.node_sh(args) {
        panic!("{e}");
    }
}

/// An `externalTrafficPolicy: Local` LoadBalancer Service with `endpoints` ((address, node)).
fn local_lb(name: &str, cluster_ip: &str, lb: &str, node_port: u16, endpoints: &[(&str, &str)]) -> Svc {
    let mut svc = Svc::new(name, cluster_ip);
    for (addr, node) in endpoints {
        svc = svc.endpoint(addr, node);
    }
    svc.kind = "LoadBalancer";
    svc.external_policy = "Local";
    svc.node_port = Some(node_port);
    svc.lb_ingress = Some(lb.to_string());
    svc
}

/// The node and a pod on it (be0, 10.1.0.2, inside `--cluster-cidr`) reach a Local Service
/// whose only endpoint runs on node2 through its load-balancer IP and its NodePort; a client
/// from outside is dropped on both.
#[test]
fn the_node_and_its_pods_reach_a_local_service_without_a_local_endpoint() {
    let Some(mut lab) = lab(1, &[]) else { return };
    lab.serve_node2();
    // Like a real node, the node routes the load balancer's range somewhere (toward node2
    // here): its own connection leaves from 10.2.0.1 and must be diverted to the proxy.
    node_sh(&lab, &["ip", "route", "add", "10.99.0.0/16", "via", "10.2.0.2"]);
    lab.write_manifests(&manifests(&[local_lb("elsewhere", "10.96.0.50", "10.99.0.50", 30150, &[("10.2.0.2", "node2")])]));
    lab.start_tpvs(&["--cluster-cidr", "10.1.0.0/16,fd01::/32"]);
    let (node, pod, client) = (lab.node.clone(), lab.backends[0].clone(), lab.client.clone());
    let from_node = lab
        .wait_for(Duration::from_secs(15), || hello_from(&node, None, "10.99.0.50:80", Duration::from_secs(2)).ok())
        .unwrap_or_else(|| panic!("the node never reached its Local Service's LB IP; log:\n{}", lab.tpvs_log()));
    assert_eq!(from_node.backend, "node2", "served from the cluster-wide set");
    let from_pod = hello_from(&pod, None, "10.99.0.50:80", Duration::from_secs(2)).unwrap_or_else(|e| panic!("pod → LB IP: {e}"));
    assert_eq!(from_pod.backend, "node2");
    let from_pod = hello_from(&pod, None, "10.1.0.1:30150", Duration::from_secs(2)).unwrap_or_else(|e| panic!("pod → NodePort: {e}"));
    assert_eq!(from_pod.backend, "node2");
    // Outsiders keep the Local policy: no endpoint here, dropped.
    assert_dropped(&client, None, "10.99.0.50:80");
    assert_dropped(&client, None, "10.0.0.1:30150");
    // The table says so: the short-circuit set is listed with the pods' range of its family.
    let listing = lab.node_sh(&[env!("CARGO_BIN_EXE_tpvs"), "list"]).unwrap_or_else(|e| panic!("tpvs list: {e}"));
    assert!(listing.contains("(from this node and pods in 10.1.0.0/16: all endpoints)"), "{listing}");
    assert!(listing.contains("=> 10.2.0.2:8080"), "{listing}");
}

/// The same in IPv6: the node and a pod (be0, fd01:0::2, inside `--cluster-cidr`) reach the
/// Local Service whose only endpoint is on node2 (fd02::2); the client (fd00::2) is dropped.
#[test]
fn ipv6_the_node_and_its_pods_reach_a_local_service_without_a_local_endpoint() {
    let Some(mut lab) = lab(1, &[]) else { return };
    lab.serve_node2();
    node_sh(&lab, &["ip", "-6", "route", "add", "fd00:99::/64", "via", "fd02::2"]);
    lab.write_manifests(&manifests(&[local_lb("elsewhere6", "fd00:96::50", "fd00:99::50", 30152, &[("fd02::2", "node2")])]));
    lab.start_tpvs(&["--cluster-cidr", "10.1.0.0/16,fd01::/32"]);
    let (node, pod, client) = (lab.node.clone(), lab.backends[0].clone(), lab.client.clone());
    let from_node = lab
        .wait_for(Duration::from_secs(15), || hello_from(&node, None, "[fd00:99::50]:80", Duration::from_secs(2)).ok())
        .unwrap_or_else(|| panic!("the node never reached its Local Service's LB IP; log:\n{}", lab.tpvs_log()));
    assert_eq!(from_node.backend, "node2", "served from the cluster-wide set");
    let from_pod = hello_from(&pod, None, "[fd00:99::50]:80", Duration::from_secs(2)).unwrap_or_else(|e| panic!("pod → LB IP: {e}"));
    assert_eq!(from_pod.backend, "node2");
    let from_pod = hello_from(&pod, None, "[fd01:0::1]:30152", Duration::from_secs(2)).unwrap_or_else(|e| panic!("pod → NodePort: {e}"));
    assert_eq!(from_pod.backend, "node2");
    assert_dropped(&client, None, "[fd00:99::50]:80");
    assert_dropped(&client, None, "[fd00::1]:30152");
}

/// `tpvs explain --from` a client, asked of the running daemon as JSON: the answer and the exit
/// code.
fn explain_json(lab: &Lab, dest: &str, from: &str) -> (serde_json::Value, Option<i32>) {
    let out = lab::in_netns(&lab.node, || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tpvs")).args(["explain", dest, "--from", from, "--json"]).output()
    })
    .unwrap_or_else(|e| panic!("tpvs explain: {e}"));
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{dest} from {from}: {e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    (v, out.status.code())
}

/// The live `tpvs explain` of a Local Service without a local endpoint says what the data path
/// does: a pod (be0) and the node (its own 10.0.0.1) are short-circuited to all endpoints and
/// get the backend explain names (sh: a function of the client's address, so foretold); an
/// outside client is dropped, as its real connection is.
#[test]
fn explain_tells_where_a_short_circuited_connection_goes() {
    let Some(mut lab) = lab(2, &[1]) else { return };
    lab.serve_node2();
    node_sh(&lab, &["ip", "route", "add", "10.99.0.0/16", "via", "10.2.0.2"]);
    // Both endpoints count as node2's (be1 is this node's namespace, named elsewhere), so
    // node1 has none: only the short-circuit reaches them.
    let svc = local_lb("shorted", "10.96.0.53", "10.99.0.53", 30153, &[("10.1.1.2", "node2"), ("10.2.0.2", "node2")]);
    lab.write_manifests(&manifests(&[svc]));
    lab.start_tpvs(&["--cluster-cidr", "10.1.0.0/16", "--scheduler", "sh"]);
    let dst = "10.99.0.53:80";
    let address_of = |name: &str| if name == "be1" { "10.1.1.2:8080" } else { "10.2.0.2:8080" };
    let (pod, node, client) = (lab.backends[0].clone(), lab.node.clone(), lab.client.clone());
    for (ns, from, client_is) in [(&pod, "10.1.0.2", "pod"), (&node, "10.0.0.1", "node")] {
        let h = lab
            .wait_for(Duration::from_secs(15), || hello_from(ns, Some(from), dst, Duration::from_secs(2)).ok())
            .unwrap_or_else(|| panic!("{from} never reached {dst}; log:\n{}", lab.tpvs_log()));
        let (v, code) = explain_json(&lab, dst, from);
        assert_eq!((v["outcome"].as_str(), code), (Some("forwarded"), Some(0)), "{from}: {v}");
        assert_eq!(v["short_circuit"]["applies"], true, "{from}: {v}");
        assert_eq!(v["short_circuit"]["client_is"], client_is, "{from}: {v}");
        assert_eq!(v["source_seen_by_backend"], "node", "{from}: {v}");
        assert_eq!(v["decision"]["backend"], address_of(&h.backend), "{from}: explain names another backend than {from}'s connection reached ({})", h.backend);
        let seen = v["live"]["backends"].as_array().and_then(|bs| bs.iter().find(|b| b["address"] == address_of(&h.backend)).cloned());
        assert!(seen.is_some_and(|b| b["connections"].as_u64().is_some_and(|n| n >= 1)), "{from}: its connection is counted: {v}");
    }
    let (v, code) = explain_json(&lab, dst, "10.0.0.2");
    assert_eq!((v["outcome"].as_str(), code), (Some("dropped"), Some(1)), "{v}");
    assert_eq!(v["short_circuit"]["applies"], false, "{v}");
    assert_dropped(&client, None, dst);
}

/// With a local endpoint, outsiders get only it (and the backend sees them), while the node's
/// pods are spread over every endpoint: the choice is made per connection.
#[test]
fn with_a_local_endpoint_only_outsiders_are_kept_local() {
    let Some(mut lab) = lab(2, &[0]) else { return };
    lab.serve_node2();
    lab.write_manifests(&manifests(&[local_lb("both", "10.96.0.51", "10.99.0.51", 30151, &[("10.1.0.2", "node1"), ("10.2.0.2", "node2")])]));
    lab.start_tpvs(&["--cluster-cidr", "10.1.0.0/16"]);
    let h = lab.wait_serving("10.99.0.51:80");
    assert_eq!((h.backend.as_str(), h.peer.ip().to_string().as_str()), ("be0", "10.0.0.2"), "Local: the client's own address");
    for _ in 0..5 {
        assert_eq!(lab.hello("10.99.0.51:80").map(|h| h.backend).ok().as_deref(), Some("be0"), "an outsider stays on this node");
    }
    // be1 (10.1.1.2) is a pod of this node: round robin over both endpoints.
    let pod = lab.backends[1].clone();
    let seen: Vec<String> = (0..4)
        .map(|_| hello_from(&pod, None, "10.99.0.51:80", Duration::from_secs(2)).unwrap_or_else(|e| panic!("pod → LB IP: {e}")).backend)
        .collect();
    assert!(seen.iter().any(|b| b == "node2") && seen.iter().any(|b| b == "be0"), "a pod is served from all endpoints: {seen:?}");
}

/// The node holds `vips` as local addresses (as with an L2 load balancer announcing them from
/// the node), so its connections to them leave with the VIP as source.
fn hold_vips(lab: &Lab, vips: &[&str]) {
    for vip in vips {
        let prefix = if vip.contains(':') { "128" } else { "32" };
        node_sh(lab, &["ip", "addr", "add", &format!("{vip}/{prefix}"), "dev", "lo"]);
    }
}

fn check_node_exception(lab: &mut Lab, near: &str, far: &str, docs: &[String], extra: &[&str]) {
    lab.write_manifests(&docs.join("---\n"));
    lab.start_tpvs(extra);
    let node = lab.node.clone();
    let near_ip = near.rsplit_once(':').map(|(ip, _)| ip.trim_matches(['[', ']'])).unwrap_or(near).to_string();
    let far_ip = far.rsplit_once(':').map(|(ip, _)| ip.trim_matches(['[', ']'])).unwrap_or(far).to_string();
    let h = lab
        .wait_for(Duration::from_secs(15), || hello_from(&node, Some(&near_ip), near, Duration::from_secs(2)).ok())
        .unwrap_or_else(|| panic!("the node in range never reached {near} from the VIP itself; log:\n{}", lab.tpvs_log()));
    assert_eq!(h.backend, "be0");
    // The node is outside `far`'s ranges: its VIP as a source is an outsider there.
    assert_dropped(&node, Some(&far_ip), far);
}

#[test]
fn ipv4_the_vip_as_source_is_admitted_when_the_node_is_in_range() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    hold_vips(&lab, &["10.99.0.60", "10.99.0.61"]);
    let docs = [
        fenced("near4", "10.96.0.60", "10.99.0.60", 30160, &["10.0.0.0/24"]),
        fenced("far4", "10.96.0.61", "10.99.0.61", 30161, &["192.0.2.0/24"]),
    ];
    // The node's IP from kube-proxy's flag.
    check_node_exception(&mut lab, "10.99.0.60:80", "10.99.0.61:80", &docs, &["--bind-address", "10.0.0.1"]);
}

#[test]
fn ipv6_the_vip_as_source_is_admitted_when_the_node_is_in_range() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    hold_vips(&lab, &["fd00:99::60", "fd00:99::61"]);
    // The node's IPs from its Node object, as kube-proxy learns them.
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\nstatus:\n  addresses:\n  - {type: InternalIP, address: 10.0.0.1}\n  - {type: InternalIP, address: \"fd00::1\"}\n".to_string();
    let docs = [
        node,
        fenced("near6", "fd00:96::60", "fd00:99::60", 30162, &["fd00::/64"]),
        fenced("far6", "fd00:96::61", "fd00:99::61", 30163, &["2001:db8::/32"]),
    ];
    check_node_exception(&mut lab, "[fd00:99::60]:80", "[fd00:99::61]:80", &docs, &[]);
}
