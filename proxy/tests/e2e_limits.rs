//! The file-descriptor budget, against the real `tpvs run` in the namespace lab, started under
//! `prlimit --nofile=N:N`: more TCP connections than the budget allows are reset at once (never
//! left hanging in the accept queue), the health and metrics servers keep answering at the cap,
//! and a UDP flood from one client's many source ports neither takes the descriptors TCP needs
//! nor every UDP flow. Root and nftables/iproute2 required (or `TPVS_SKIP_E2E=1`).

mod admin_http;
mod lab;

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use admin_http::{get, wait_reply};
use lab::{Lab, Svc, in_netns, lab, manifests};

const HEALTHZ: &str = "10.0.0.1:10256";
const METRICS: &str = "127.0.0.1:10249";
const WEB: &str = "10.96.0.10:80";
const DNS: &str = "10.96.0.53:53";
const ECHO_PORT: u16 = 5300;

/// A value of `series` (the full name with labels) from `/metrics`, read inside the node.
fn metric(lab: &Lab, series: &str) -> Option<f64> {
    let text = get(&lab.node, METRICS, "/metrics").ok()?.body;
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn web() -> Svc {
    Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1")
}

fn dns() -> Svc {
    let mut s = Svc::new("dns", "10.96.0.53");
    s.protocol = "UDP";
    s.port = 53;
    s.target_port = ECHO_PORT;
    s.endpoint("10.1.0.2", "node1")
}

/// Starts tpvs under an open-file limit of `nofile` and waits until `WEB` is served.
fn start_limited(lab: &mut Lab, nofile: u32, svcs: &[Svc]) {
    lab.wrapper = vec!["prlimit".into(), format!("--nofile={nofile}:{nofile}")];
    lab.write_manifests(&manifests(svcs));
    lab.start_tpvs(&[]);
    lab.wait_serving(WEB);
}

/// Both parities of the limit: whether the last descriptors go to a whole connection (two) or
/// leave one over decides whether an unbudgeted proxy resets the next client or leaves it
/// hanging in the accept queue.
#[test]
fn tcp_over_the_fd_budget_is_reset_at_once_and_admin_keeps_answering() {
    for nofile in [257, 256] {
        tcp_over_the_budget(nofile);
    }
}

fn tcp_over_the_budget(nofile: u32) {
    let Some(mut lab) = lab(1, &[0]) else { return };
    start_limited(&mut lab, nofile, &[web()]);
    let client = lab.client.clone();
    wait_reply(&lab, &client, HEALTHZ, "/healthz", "healthz", |r| r.status == 200);

    // Far more connections than the descriptors can carry: every attempt ends quickly, either
    // served (hello read) or reset/refused; none waits in an accept queue nobody drains.
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..200 {
        let started = Instant::now();
        match lab.open(WEB) {
            Ok(c) => held.push(c),
            Err(e) => {
                let took = started.elapsed();
                assert!(
                    took < Duration::from_secs(1) && !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                    "limit {nofile}: connection {i} over the budget hung for {took:?} ({e}) instead of being reset; {} served",
                    held.len()
                );
                refused += 1;
            }
        }
    }
    assert!(!held.is_empty() && refused > 0, "served {}, refused {refused}", held.len());

    // At the cap the daemon stays manageable: health from outside, metrics on the node.
    for _ in 0..5 {
        let h = get(&client, HEALTHZ, "/healthz").unwrap_or_else(|e| panic!("healthz at the cap: {e}\n{}", lab.tpvs_log()));
        assert_eq!(h.status, 200, "{h:?}");
    }
    // Refused at admission, before costing a backend connect attempt (which would count
    // against the backend as a failure).
    let over = metric(&lab, "tpvs_connections_rejected_total{reason=\"over_limit\"}").unwrap_or(0.0);
    assert!(over >= refused as f64, "over_limit {over} < refused {refused}");
    assert_eq!(metric(&lab, "tpvs_fd_limit"), Some(f64::from(nofile)), "the limit is exported");
    let cap = metric(&lab, "tpvs_fd_budget{use=\"tcp_connections\"}").unwrap_or_else(|| panic!("no TCP budget in /metrics"));
    assert_eq!(held.len() as f64, cap, "exactly the budgeted connections are served");
    for part in ["reserve", "udp_flows", "pipes"] {
        assert!(metric(&lab, &format!("tpvs_fd_budget{{use=\"{part}\"}}")).is_some_and(|v| v > 0.0), "budget part {part}");
    }
    let open = metric(&lab, "tpvs_fds_open").unwrap_or(0.0);
    assert!(open > 2.0 * cap && open < f64::from(nofile), "open fds {open} (cap {cap})");
    let log = lab.tpvs_log();
    assert!(log.contains("file-descriptor budget") && log.contains("tcp_connections"), "the split is logged:\n{log}");

    // Once connections close, new ones are served again.
    for c in held.drain(..) {
        let _ = c.finish();
    }
    let again = lab.wait_for(Duration::from_secs(5), || lab.hello(WEB).ok());
    assert!(again.is_some(), "served again after the connections closed");
}

#[test]
fn explicit_caps_above_the_budget_are_clamped_with_a_warning() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    lab.wrapper = vec!["prlimit".into(), "--nofile=512:512".into()];
    lab.write_manifests(&manifests(&[web()]));
    lab.start_tpvs(&["--max-connections", "100000", "--udp-max-flows", "100000"]);
    lab.wait_serving(WEB);
    let tcp = metric(&lab, "tpvs_fd_budget{use=\"tcp_connections\"}").unwrap_or(0.0);
    let udp = metric(&lab, "tpvs_fd_budget{use=\"udp_flows\"}").unwrap_or(0.0);
    assert!(tcp > 0.0 && tcp < 512.0 && udp > 0.0 && udp < 512.0, "tcp {tcp} udp {udp}");
    let log = lab.tpvs_log();
    assert!(log.contains("--max-connections") && log.contains("clamped"), "{log}");
    assert!(log.contains("--udp-max-flows"), "{log}");
}

/// A UDP backend answering every datagram (`"<peer> <payload>"`), until dropped.
struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn start(ns: &str, addr: SocketAddr) -> UdpEcho {
        let sock = in_netns(ns, || UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap_or_else(|e| panic!("{e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let _ = sock.send_to(format!("{peer} {}", String::from_utf8_lossy(&buf[..n])).as_bytes(), peer);
            }
        });
        UdpEcho { stop, thread: Some(thread) }
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

/// One datagram to `DNS` from namespace `ns` and local port `port`; the reply, if one comes
/// within `wait`.
fn udp_ask(ns: &str, src: &str, port: u16, wait: Option<Duration>) -> Option<String> {
    let bind: SocketAddr = format!("{src}:{port}").parse().ok()?;
    let s = in_netns(ns, || UdpSocket::bind(bind)).ok()?;
    s.send_to(b"q", DNS).ok()?;
    let wait = wait?;
    s.set_read_timeout(Some(wait)).ok()?;
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn a_udp_flood_takes_neither_tcp_nor_every_flow() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    let _echo = UdpEcho::start(&lab.backends[0].clone(), SocketAddr::from(([10, 1, 0, 2], ECHO_PORT)));
    start_limited(&mut lab, 1024, &[web(), dns()]);
    let client = lab.client.clone();
    let answered = lab.wait_for(Duration::from_secs(10), || udp_ask(&client, "10.0.0.2", 40000, Some(Duration::from_millis(300))));
    assert!(answered.is_some(), "the UDP Service answers; log:\n{}", lab.tpvs_log());

    // One client, 3000 source ports: far more flows than 1024 descriptors hold.
    for port in 20000..23000 {
        udp_ask(&client, "10.0.0.2", port, None);
    }
    // TCP Services still answer, at once.
    for _ in 0..5 {
        let started = Instant::now();
        lab.hello(WEB).unwrap_or_else(|e| panic!("TCP after the UDP flood: {e}\n{}", lab.tpvs_log()));
        assert!(started.elapsed() < Duration::from_secs(1), "TCP slowed by the UDP flood: {:?}", started.elapsed());
    }
    wait_reply(&lab, &client, HEALTHZ, "/livez", "livez after the flood", |r| r.status == 200);
    // Another client still gets a flow: the flooding client holds at most its share.
    let node2 = lab.node2.clone();
    let other = udp_ask(&node2, "10.2.0.2", 40001, Some(Duration::from_secs(1)));
    assert!(other.is_some(), "a second client is served during the flood; log:\n{}", lab.tpvs_log());
    let flows = metric(&lab, "tpvs_fd_budget{use=\"udp_flows\"}").unwrap_or(0.0);
    let share = metric(&lab, "tpvs_udp_flows_per_source_max").unwrap_or(0.0);
    let active = metric(&lab, "tpvs_udp_flows_active").unwrap_or(f64::MAX);
    assert!(share > 0.0 && share < flows, "per-source cap {share} of {flows}");
    assert!(active <= share + 2.0, "{active} flows open, the flooding client may hold {share} (+ the probe flows)");
    let dropped = metric(&lab, "tpvs_udp_drops_total{reason=\"source_share\"}").unwrap_or(0.0);
    assert!(dropped > 0.0, "the flood's excess is dropped and counted");
}
