//! End-to-end tests of the UDP data path: the real `tpvs run` in the namespace lab (see `lab`),
//! real TPROXY rules, a real DNS server (dnsmasq) queried with `dig` and loaded with `dnsperf`,
//! and UDP echo backends written here that report the peer they saw and count every datagram
//! they receive. Run as root; without root or the tools they fail, unless `TPVS_SKIP_E2E=1`.

mod lab;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lab::dns::{DNS_NAME, dig_in, dnsmasq};
use lab::{Lab, Svc, in_netns, manifests};

const DNS_VIP: &str = "10.96.0.53";
/// Where the echo backends listen (the Services map port 53 to it).
const ECHO_PORT: u16 = 5300;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s}: {e}"))
}

/// Whether the UDP e2e tests can run: the lab's prerequisites plus the DNS tools.
fn enabled() -> bool {
    if !lab::e2e_enabled() {
        return false;
    }
    let missing: Vec<&str> = ["dnsmasq", "dig", "dnsperf"]
        .into_iter()
        .filter(|tool| Command::new("sh").args(["-c", &format!("command -v {tool}")]).stdout(Stdio::null()).status().map_or(true, |s| !s.success()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("TPVS_SKIP_E2E").is_ok_and(|v| v == "1") {
        eprintln!("skipping UDP end-to-end test: missing {missing:?}; TPVS_SKIP_E2E=1");
        return false;
    }
    panic!("the UDP end-to-end tests need {missing:?} (Debian: dnsmasq, dnsutils, dnsperf; scripts/setup installs them)");
}

/// A UDP backend: answers every datagram with `"<name> <peer> <payload>"` and counts them.
struct UdpEcho {
    name: String,
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn start(ns: &str, name: &str, addr: SocketAddr) -> UdpEcho {
        let sock = in_netns(ns, || UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"));
        // A short timeout so the thread notices `stop` promptly.
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap_or_else(|e| panic!("{e}"));
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (rx, st, nm) = (Arc::clone(&received), Arc::clone(&stop), name.to_string());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else { continue };
                rx.fetch_add(1, Ordering::Relaxed);
                let reply = format!("{nm} {peer} {}", String::from_utf8_lossy(&buf[..n]));
                let _ = sock.send_to(reply.as_bytes(), peer);
            }
        });
        UdpEcho { name: name.to_string(), received, stop, thread: Some(thread) }
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Echo backends `be<k>` on 10.1.k.2 and fd01:k::2, port `ECHO_PORT`.
fn echoes(lab: &Lab, ks: &[usize]) -> Vec<UdpEcho> {
    let mut v = Vec::new();
    for &k in ks {
        let ns = &lab.backends[k];
        v.push(UdpEcho::start(ns, &format!("be{k}"), sa(&format!("10.1.{k}.2:{ECHO_PORT}"))));
        v.push(UdpEcho::start(ns, &format!("be{k}"), sa(&format!("[fd01:{k}::2]:{ECHO_PORT}"))));
    }
    v
}

fn received(echoes: &[UdpEcho], name: &str) -> usize {
    echoes.iter().filter(|e| e.name == name).map(UdpEcho::received).sum()
}

/// A reply from an echo backend.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Echo {
    backend: String,
    peer: SocketAddr,
    payload: String,
}

fn parse_echo(s: &str) -> Option<Echo> {
    let mut parts = s.splitn(3, ' ');
    let backend = parts.next()?.to_string();
    let peer = parts.next()?.parse().ok()?;
    Some(Echo { backend, peer, payload: parts.next().unwrap_or("").to_string() })
}

/// A client socket in the client namespace, connected to `dst`: replies from any other
/// address (say, the backend's own instead of the VIP) never reach it.
fn client_socket(lab: &Lab, dst: &str) -> UdpSocket {
    socket_in(&lab.client, dst)
}

/// [`client_socket`] in namespace `ns`.
fn socket_in(ns: &str, dst: &str) -> UdpSocket {
    let dst = sa(dst);
    let any = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = in_netns(ns, || UdpSocket::bind(any)).unwrap_or_else(|e| panic!("client bind in {ns}: {e}"));
    s.connect(dst).unwrap_or_else(|e| panic!("connect {dst}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(400))).unwrap_or_else(|e| panic!("{e}"));
    s
}

/// Sends `msg` and waits for one reply.
fn ask(s: &UdpSocket, msg: &str) -> io::Result<Echo> {
    s.send(msg.as_bytes())?;
    let mut buf = [0u8; 2048];
    let n = s.recv(&mut buf)?;
    parse_echo(&String::from_utf8_lossy(&buf[..n])).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad echo"))
}

/// Waits until `dst` answers through tpvs (listeners bound, rules installed).
fn wait_udp(lab: &Lab, dst: &str) -> Echo {
    let got = lab.wait_for(Duration::from_secs(15), || ask(&client_socket(lab, dst), "probe").ok());
    got.unwrap_or_else(|| panic!("{dst} never answered through tpvs; log:\n{}", lab.tpvs_log()))
}

fn udp_svc(name: &str, vip: &str, target_port: u16) -> Svc {
    let mut s = Svc::new(name, vip);
    s.protocol = "UDP";
    s.port = 53;
    s.target_port = target_port;
    s
}

fn echo_svc(name: &str, vip: &str, ks: &[usize]) -> Svc {
    ks.iter().fold(udp_svc(name, vip, ECHO_PORT), |s, k| s.endpoint(&format!("10.1.{k}.2"), "node1"))
}

fn lab(backends: usize) -> Option<Lab> {
    enabled().then(|| Lab::new(backends))
}

/// What dnsperf reported.
#[derive(Debug, Default)]
struct Perf {
    sent: u64,
    completed: u64,
    lost: u64,
    qps: f64,
}

fn parse_dnsperf(out: &str) -> Perf {
    let num = |key: &str| -> Option<f64> {
        let line = out.lines().find(|l| l.trim_start().starts_with(key))?;
        line.split(':').nth(1)?.split_whitespace().next()?.parse().ok()
    };
    Perf {
        sent: num("Queries sent").unwrap_or(0.0) as u64,
        completed: num("Queries completed").unwrap_or(0.0) as u64,
        lost: num("Queries lost").unwrap_or(0.0) as u64,
        qps: num("Queries per second").unwrap_or(0.0),
    }
}

/// A sample of the running tpvs's metrics (`/metrics` on its default address in the node).
fn metric(lab: &Lab, series: &str) -> Option<f64> {
    let text = lab.node_sh(&["curl", "-s", "--max-time", "2", "http://127.0.0.1:10249/metrics"]).ok()?;
    let line = text.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))?;
    line[series.len()..].trim().parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn dns_through_a_udp_cluster_ip_reaches_both_dnsmasq_backends() {
    let Some(mut lab) = lab(2) else { return };
    let _dns = [dnsmasq(&lab, 0), dnsmasq(&lab, 1)];
    let svc = udp_svc("dns", DNS_VIP, 53).endpoint("10.1.0.2", "node1").endpoint("10.1.1.2", "node1");
    lab.write_manifests(&manifests(&[svc]));
    lab.start_tpvs(&["--scheduler", "rr"]);
    let client = lab.client.clone();
    let first = lab.wait_for(Duration::from_secs(15), || dig_in(&client, DNS_VIP, "A").ok());
    assert!(first.is_some(), "dig through the VIP never answered; log:\n{}", lab.tpvs_log());
    // dig asks from a new source port each time: each query is a new flow, scheduled rr. The
    // answer names the backend; dig itself rejects an answer from any address but the VIP.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..10 {
        let a = dig_in(&client, DNS_VIP, "A").unwrap_or_else(|e| panic!("dig: {e}"));
        *seen.entry(a).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = [("10.1.0.2".to_string(), 5), ("10.1.1.2".to_string(), 5)].into();
    assert_eq!(seen, expected, "rr over two DNS backends");

    // A bounded load: 2 s, at most 2000 queries/s, from 4 sockets.
    let queries = lab.dir.join("queries.txt");
    std::fs::write(&queries, format!("{DNS_NAME} A\n")).unwrap_or_else(|e| panic!("{e}"));
    let q = queries.to_string_lossy().into_owned();
    let out = lab::try_sh(&["ip", "netns", "exec", &client, "dnsperf", "-s", DNS_VIP, "-p", "53", "-d", &q, "-l", "2", "-c", "4", "-Q", "2000", "-t", "2"])
        .unwrap_or_else(|e| panic!("dnsperf: {e}"));
    let perf = parse_dnsperf(&out);
    eprintln!("dnsperf through tpvs: {:.0} queries/s ({perf:?})", perf.qps);
    assert!(perf.sent >= 1000, "dnsperf sent too little: {out}");
    assert!(perf.lost * 100 <= perf.sent, "more than 1% of DNS queries lost: {out}");
    assert_eq!(perf.completed + perf.lost, perf.sent, "{out}");
}

#[test]
fn cluster_policy_uses_the_node_address_and_local_keeps_the_client() {
    let Some(mut lab) = lab(1) else { return };
    let _echo = echoes(&lab, &[0]);
    let cluster = echo_svc("echo", "10.96.0.54", &[0]);
    let mut local = echo_svc("echo-local", "10.96.0.55", &[0]);
    local.kind = "LoadBalancer";
    local.node_port = Some(30053);
    local.external_policy = "Local";
    local.lb_ingress = Some("10.99.0.53".into());
    lab.write_manifests(&manifests(&[cluster, local]));
    lab.start_tpvs(&[]);
    wait_udp(&lab, "10.96.0.54:53");

    let s = client_socket(&lab, "10.96.0.54:53");
    let e = ask(&s, "hello").unwrap_or_else(|e| panic!("cluster: {e}"));
    assert_eq!((e.backend.as_str(), e.peer.ip(), e.payload.as_str()), ("be0", sa("10.1.0.1:0").ip(), "hello"), "Cluster: the node's address");

    let s = client_socket(&lab, "10.99.0.53:53");
    let me = s.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let e = wait_for_echo(&lab, &s, "hi");
    assert_eq!(e.peer, SocketAddr::new(sa("10.0.0.2:0").ip(), me.port()), "Local: the backend sees the client's own address and port");
    // Several datagrams on one flow keep the same upstream (same peer port, same backend).
    for i in 0..5 {
        let again = ask(&s, &format!("n{i}")).unwrap_or_else(|e| panic!("local #{i}: {e}"));
        assert_eq!(again.peer, e.peer);
        assert_eq!(again.payload, format!("n{i}"));
    }
    // The NodePort of the Local Service behaves the same.
    let s = client_socket(&lab, "10.0.0.1:30053");
    let me = s.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let e = ask(&s, "np").unwrap_or_else(|e| panic!("nodeport: {e}"));
    assert_eq!(e.peer, SocketAddr::new(sa("10.0.0.2:0").ip(), me.port()));
}

/// Asks until one answer arrives (the first datagram of a flow may race the rules' install).
fn wait_for_echo(lab: &Lab, s: &UdpSocket, msg: &str) -> Echo {
    lab.wait_for(Duration::from_secs(10), || ask(s, msg).ok()).unwrap_or_else(|| panic!("no answer; log:\n{}", lab.tpvs_log()))
}

#[test]
fn removed_backend_gets_not_one_datagram_more() {
    let Some(mut lab) = lab(2) else { return };
    let echo = echoes(&lab, &[0, 1]);
    lab.write_manifests(&manifests(&[echo_svc("echo", "10.96.0.56", &[0, 1])]));
    lab.start_tpvs(&[]);
    wait_udp(&lab, "10.96.0.56:53");

    // One client port, sending all along: its flow is pinned to one backend.
    let s = client_socket(&lab, "10.96.0.56:53");
    let pinned = wait_for_echo(&lab, &s, "0").backend;
    for i in 1..20 {
        let e = ask(&s, &i.to_string()).unwrap_or_else(|e| panic!("#{i}: {e}"));
        assert_eq!(e.backend, pinned, "a flow stays on its backend");
    }
    let (gone_k, other) = if pinned == "be0" { (0, "be1") } else { (1, "be0") };
    let keep = 1 - gone_k;
    lab.write_manifests(&manifests(&[echo_svc("echo", "10.96.0.56", &[keep])]));

    // Keep sending from the same port until the flow is rescheduled onto the other backend.
    let mut seq = 100;
    let moved = lab.wait_for(Duration::from_secs(10), || {
        seq += 1;
        ask(&s, &seq.to_string()).ok().filter(|e| e.backend == other)
    });
    assert!(moved.is_some(), "the flow never left the removed backend; log:\n{}", lab.tpvs_log());
    let at_removal = received(&echo, &pinned);
    for i in 0..300 {
        seq += 1;
        if let Ok(e) = ask(&s, &seq.to_string()) {
            assert_eq!(e.backend, other, "datagram #{i} after the move answered by the removed backend");
        }
    }
    // Let anything in flight land before counting.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(received(&echo, &pinned), at_removal, "datagrams reached the removed backend after the table change");
    assert!(received(&echo, other) >= 300);
    // ...because the flow was closed by the table change itself, not by an idle timeout.
    assert!(lab.tpvs_log().contains("UDP flows closed by a table change"), "log:\n{}", lab.tpvs_log());
    let evicted = metric(&lab, r#"tpvs_udp_flows_evicted_total{reason="table_change"}"#);
    assert!(evicted.is_some_and(|n| n >= 1.0), "eviction counted in the metrics: {evicted:?}");
}

#[test]
fn idle_flow_expires_and_the_next_datagram_is_scheduled_afresh() {
    let Some(mut lab) = lab(2) else { return };
    let _echo = echoes(&lab, &[0, 1]);
    lab.write_manifests(&manifests(&[echo_svc("echo", "10.96.0.57", &[0, 1])]));
    lab.start_tpvs(&["--scheduler", "rr", "--udp-timeout", "1s"]);
    wait_udp(&lab, "10.96.0.57:53");
    let s = client_socket(&lab, "10.96.0.57:53");
    let first = wait_for_echo(&lab, &s, "a");
    // Within the timeout every datagram stays on the flow (rr would alternate new flows).
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(300));
        let e = ask(&s, &format!("b{i}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((e.backend.as_str(), e.peer), (first.backend.as_str(), first.peer), "touched flows do not expire");
    }
    std::thread::sleep(Duration::from_millis(1800));
    let after = ask(&s, "c").unwrap_or_else(|e| panic!("after expiry: {e}"));
    // A new flow: rr's next pick (the other backend), from a new upstream socket.
    assert_ne!(after.backend, first.backend, "the expired flow was scheduled afresh");
    assert_ne!(after.peer, first.peer);
}

#[test]
fn max_flows_cap_drops_new_flows_until_one_closes() {
    let Some(mut lab) = lab(1) else { return };
    let _echo = echoes(&lab, &[0]);
    lab.write_manifests(&manifests(&[echo_svc("echo", "10.96.0.58", &[0])]));
    // One client address here: its share is the whole table, so the global cap is what bites.
    lab.start_tpvs(&["--udp-max-flows", "2", "--udp-source-share", "100", "--udp-timeout", "1s"]);
    wait_udp(&lab, "10.96.0.58:53");
    // The probes' flows expire first.
    std::thread::sleep(Duration::from_millis(1500));
    let a = client_socket(&lab, "10.96.0.58:53");
    let b = client_socket(&lab, "10.96.0.58:53");
    let c = client_socket(&lab, "10.96.0.58:53");
    assert!(ask(&a, "a").is_ok() && ask(&b, "b").is_ok(), "two flows fit");
    for _ in 0..3 {
        let err = ask(&c, "c").err().map(|e| e.kind());
        assert!(matches!(err, Some(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)), "a third flow is dropped: {err:?}");
        // ...while the open flows keep working.
        assert!(ask(&a, "a").is_ok() && ask(&b, "b").is_ok());
    }
    assert!(lab.tpvs_log().contains("UDP flow table full"), "the cap is reported");
    let dropped = metric(&lab, r#"tpvs_udp_drops_total{reason="max_flows"}"#);
    assert!(dropped.is_some_and(|n| n >= 3.0), "and counted: {dropped:?}");
    assert_eq!(metric(&lab, "tpvs_udp_flows_active"), Some(2.0));
    // Once the open flows go idle and expire, the third gets its turn.
    std::thread::sleep(Duration::from_millis(1800));
    assert!(ask(&c, "c").is_ok(), "a closed flow frees its slot");
}

#[test]
fn client_ip_affinity_sticks_across_udp_flows() {
    let Some(mut lab) = lab(3) else { return };
    let _echo = echoes(&lab, &[0, 1, 2]);
    let mut svc = echo_svc("echo", "10.96.0.59", &[0, 1, 2]);
    svc.affinity_secs = Some(600);
    lab.write_manifests(&manifests(&[svc]));
    lab.start_tpvs(&[]);
    let first = wait_udp(&lab, "10.96.0.59:53");
    let mut seen = BTreeSet::new();
    for i in 0..9 {
        // A new source port each time: a new flow, the same client IP.
        let e = ask(&client_socket(&lab, "10.96.0.59:53"), &i.to_string()).unwrap_or_else(|e| panic!("{e}"));
        seen.insert(e.backend);
    }
    assert_eq!(seen, BTreeSet::from([first.backend]), "ClientIP affinity over UDP");
}

#[test]
fn ipv6_udp_cluster_ip_and_local_policy() {
    let Some(mut lab) = lab(1) else { return };
    let _echo = echoes(&lab, &[0]);
    let _dns = dnsmasq(&lab, 0);
    let cluster = udp_svc("echo6", "fd00:96::53", ECHO_PORT).endpoint("fd01:0::2", "node1");
    let dns6 = udp_svc("dns6", "fd00:96::54", 53).endpoint("fd01:0::2", "node1");
    let mut local = udp_svc("echo6-local", "fd00:96::55", ECHO_PORT).endpoint("fd01:0::2", "node1");
    local.kind = "LoadBalancer";
    local.node_port = Some(30054);
    local.external_policy = "Local";
    local.lb_ingress = Some("fd00:99::53".into());
    lab.write_manifests(&manifests(&[cluster, dns6, local]));
    lab.start_tpvs(&[]);
    let e = wait_udp(&lab, "[fd00:96::53]:53");
    assert_eq!((e.backend.as_str(), e.peer.ip()), ("be0", sa("[fd01::1]:0").ip()), "IPv6 Cluster: the node's address");

    let s = client_socket(&lab, "[fd00:99::53]:53");
    let me = s.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let e = wait_for_echo(&lab, &s, "v6");
    assert_eq!(e.peer, SocketAddr::new(sa("[fd00::2]:0").ip(), me.port()), "IPv6 Local: the backend sees the client");

    let client = lab.client.clone();
    let a = lab.wait_for(Duration::from_secs(5), || dig_in(&client, "fd00:96::54", "A").ok());
    assert_eq!(a.as_deref(), Some("10.1.0.2"), "DNS over an IPv6 UDP ClusterIP");
}

#[test]
fn udp_service_without_endpoints_is_refused_at_once() {
    let Some(mut lab) = lab(1) else { return };
    let _echo = echoes(&lab, &[0]);
    lab.write_manifests(&manifests(&[echo_svc("echo", "10.96.0.60", &[0]), udp_svc("empty", "10.96.0.61", ECHO_PORT)]));
    lab.start_tpvs(&[]);
    wait_udp(&lab, "10.96.0.60:53");
    let s = client_socket(&lab, "10.96.0.61:53");
    let started = Instant::now();
    // ICMP port unreachable surfaces as ECONNREFUSED on the connected socket.
    let err = ask(&s, "x").err().map(|e| e.kind());
    assert_eq!(err, Some(io::ErrorKind::ConnectionRefused));
    assert!(started.elapsed() < Duration::from_millis(400));
}

/// kube-proxy's short-circuit over UDP: a pod of this node (be0, inside `--cluster-cidr`)
/// sending to the load-balancer IP of a `Local` Service whose only endpoint runs on node2 is
/// served from the cluster-wide set. A table change that rebuilds that frontend (an endpoint
/// added) keeps its flow on the same upstream socket and backend, and so does a successor
/// adopting it; removing the backend from the set the flow was served from ends it.
#[test]
fn a_short_circuited_flow_keeps_its_backend_across_a_table_change() {
    let Some(mut lab) = lab(1) else { return };
    let _remote = UdpEcho::start(&lab.node2, "node2", sa(&format!("10.2.0.2:{ECHO_PORT}")));
    let svc = |endpoints: &[&str]| {
        let mut s = endpoints.iter().fold(udp_svc("elsewhere", "10.96.0.62", ECHO_PORT), |s, e| s.endpoint(e, "node2"));
        s.kind = "LoadBalancer";
        s.external_policy = "Local";
        s.node_port = Some(30062);
        s.lb_ingress = Some("10.99.0.62".into());
        s
    };
    lab.write_manifests(&manifests(&[svc(&["10.2.0.2"])]));
    lab.start_tpvs(&["--cluster-cidr", "10.1.0.0/16"]);
    let pod = lab.backends[0].clone();
    let s = socket_in(&pod, "10.99.0.62:53");
    let first = wait_for_echo(&lab, &s, "0");
    assert_eq!((first.backend.as_str(), first.peer.ip()), ("node2", sa("10.2.0.1:0").ip()), "served from all endpoints, as the node");

    // 10.2.0.3 answers nothing: a flow rescheduled onto it would go unanswered.
    lab.write_manifests(&manifests(&[svc(&["10.2.0.2", "10.2.0.3"])]));
    let tpvs = env!("CARGO_BIN_EXE_tpvs");
    let listed = lab.wait_for(Duration::from_secs(10), || {
        lab.node_sh(&[tpvs, "list"]).ok().filter(|l| l.contains(&format!("=> 10.2.0.3:{ECHO_PORT}")))
    });
    assert!(listed.is_some(), "the added endpoint never reached the short-circuit set; log:\n{}", lab.tpvs_log());
    for i in 1..=20 {
        let e = ask(&s, &i.to_string()).unwrap_or_else(|e| panic!("datagram #{i} after the table change: {e}; log:\n{}", lab.tpvs_log()));
        assert_eq!((e.backend.as_str(), e.peer), ("node2", first.peer), "datagram #{i}: the flow keeps its backend and upstream socket");
    }
    let evicted = metric(&lab, r#"tpvs_udp_flows_evicted_total{reason="table_change"}"#);
    assert_eq!(evicted, Some(0.0), "no flow closed by the table change");

    // A successor adopts the flow against the same set: it keeps its upstream socket.
    let mut old = lab.start_successor(&[]).unwrap_or_else(|| panic!("no running instance"));
    let exited = lab::wait_child(&mut old, Duration::from_secs(10));
    assert!(exited.is_some_and(|s| s.success()), "the predecessor did not hand over and exit 0 ({exited:?}):\n{}", lab.tpvs_log_of(0));
    for i in 21..=40 {
        let e = ask(&s, &i.to_string()).unwrap_or_else(|e| panic!("datagram #{i} after the hand-over: {e}; log:\n{}", lab.tpvs_log()));
        assert_eq!((e.backend.as_str(), e.peer), ("node2", first.peer), "datagram #{i}: the successor kept the flow");
    }

    // Its backend gone from the set it was served from: the flow ends with the change.
    lab.write_manifests(&manifests(&[svc(&["10.2.0.3"])]));
    let closed = lab.wait_for(Duration::from_secs(10), || {
        metric(&lab, r#"tpvs_udp_flows_evicted_total{reason="table_change"}"#).filter(|n| *n >= 1.0)
    });
    assert!(closed.is_some(), "the flow outlived its backend; log:\n{}", lab.tpvs_log());
    assert!(ask(&s, "after").is_err(), "no answer once the backend is gone (the only endpoint left serves nothing)");
}

#[test]
fn least_connection_steers_new_flows_away_from_a_backend_that_stopped_answering() {
    let Some(mut lab) = lab(2) else { return };
    let _echo = echoes(&lab, &[0]);
    // be1 has its port open and never answers: no "port unreachable", only silence, as a
    // stalled DNS server.
    let silent_addr = sa(&format!("10.1.1.2:{ECHO_PORT}"));
    let _silent = in_netns(&lab.backends[1], || UdpSocket::bind(silent_addr)).unwrap_or_else(|e| panic!("bind {silent_addr}: {e}"));
    lab.write_manifests(&manifests(&[echo_svc("echo", "10.96.0.63", &[0, 1])]));
    // Flows outlive the test: only answers can take them out of the count.
    lab.start_tpvs(&["--scheduler", "lc", "--udp-timeout", "120s"]);
    wait_udp(&lab, "10.96.0.63:53");
    const FLOWS: usize = 30;
    // A new source port per request (a resolver's fresh port per query): a new flow each.
    let unanswered = (0..FLOWS).filter(|i| ask(&client_socket(&lab, "10.96.0.63:53"), &format!("q{i}")).is_err()).count();
    // be1 holds at most one waiting flow more than be0 ever has (none: be0's are answered at
    // once), so it gets at most the first request. Counting answered flows as active, lc
    // alternates and about half the requests go unanswered.
    assert!(unanswered <= 1, "{unanswered} of {FLOWS} new flows went to the silent backend\n{}", lab.tpvs_log());
}
