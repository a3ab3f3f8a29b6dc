//! The UDP plain listen mode end to end: real datagrams on loopback through the engine's UDP
//! workers to two backends. No root and no namespace: the plain mode has no interception, so
//! loopback in this process is the whole network.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use controlplane::{Frontend, FrontendKey, FrontendKind, Protocol, ServicePortName, TrafficPolicy, WhenEmpty};
use schedulers::{Backend, BackendSet, BackendStats, Scheduler, SchedulerKind, SchedulerOptions};
use tpvs::addrs::NodePortAddrs;
use tpvs::udp::{PlainUdpServer, Timeouts, UdpConfig, UdpStatsSnapshot, serve_plain_udp};

/// A payload the echo backends answer only after [`HOLD_FOR`] more, so that a test can watch
/// a flow while it waits.
const HOLD: &str = "hold";
const HOLD_FOR: Duration = Duration::from_secs(1);

/// A backend answering every datagram with `<name>|<payload>` after `delay` (and `HOLD` after
/// `HOLD_FOR` more), until dropped.
struct EchoBackend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoBackend {
    fn start(name: &'static str, delay: Duration) -> EchoBackend {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("backend bind: {e}"));
        let addr = sock.local_addr().unwrap_or_else(|e| panic!("{e}"));
        // Short reads, so the stop flag is seen soon after the test ends.
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap_or_else(|e| panic!("{e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
                std::thread::sleep(delay);
                if buf[..n] == *HOLD.as_bytes() {
                    std::thread::sleep(HOLD_FOR);
                }
                let mut reply = format!("{name}|").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&reply, from);
            }
        });
        EchoBackend { addr, stop, thread: Some(thread) }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn frontend(scheduler: Arc<dyn Scheduler>) -> Frontend {
    let n = scheduler.backends().len();
    Frontend {
        key: FrontendKey::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0, Protocol::Udp),
        kind: FrontendKind::ClusterIp,
        service: ServicePortName { namespace: "test".into(), name: "udp-plain".into(), port: "".into() },
        policy: TrafficPolicy::Cluster,
        affinity: None,
        when_empty: WhenEmpty::Reject,
        health_check_node_port: None,
        local_endpoints: n,
        service_local_endpoints: n,
        source_ranges: Arc::from([]),
        scheduler,
        explanation: Default::default(),
        local_origin: None,
    }
}

fn serve(backends: &[SocketAddr], idle: Duration) -> (PlainUdpServer, Arc<dyn Scheduler>) {
    serve_with(SchedulerKind::Rr, backends, idle)
}

fn serve_with(kind: SchedulerKind, backends: &[SocketAddr], idle: Duration) -> (PlainUdpServer, Arc<dyn Scheduler>) {
    let set = BackendSet::new(backends.iter().map(|a| Backend::new(*a, Arc::new(BackendStats::default()))).collect());
    let scheduler = schedulers::build(kind, Arc::new(set), &SchedulerOptions::default());
    let config = UdpConfig {
        port: 0,
        workers: 2,
        max_flows: 1024,
        max_flows_per_source: 1024,
        timeouts: Timeouts { idle, stream: idle },
        nodeport_addrs: NodePortAddrs::default(),
    };
    let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let server = serve_plain_udp(listen, Arc::new(frontend(Arc::clone(&scheduler))), config).unwrap_or_else(|e| panic!("serve: {e}"));
    (server, scheduler)
}

/// Sends `payload` on `sock` and returns the reply's text.
fn ask(sock: &UdpSocket, payload: &str) -> String {
    sock.send(payload.as_bytes()).unwrap_or_else(|e| panic!("send: {e}"));
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("no reply to {payload}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The counters once `done` holds of them, or as they are after a few seconds.
fn settled(server: &PlainUdpServer, done: impl Fn(&UdpStatsSnapshot) -> bool) -> UdpStatsSnapshot {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = server.shared.snapshot();
        if done(&s) || Instant::now() >= deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn datagrams_reach_both_backends_replies_find_their_client_and_a_flow_keeps_its_backend() {
    let fast = EchoBackend::start("fast", Duration::ZERO);
    let slow = EchoBackend::start("slow", Duration::from_millis(40));
    let (server, scheduler) = serve(&[fast.addr, slow.addr], Duration::from_millis(400));

    const CLIENTS: usize = 8;
    const ROUNDS: usize = 3;
    let clients: Vec<UdpSocket> = (0..CLIENTS)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
            // Connected: the kernel drops any reply that does not come from the listening
            // address, so a reply from anywhere else would show up as a timeout.
            s.connect(server.addr).unwrap_or_else(|e| panic!("{e}"));
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap_or_else(|e| panic!("{e}"));
            s
        })
        .collect();
    let mut served_by = vec![String::new(); CLIENTS];
    for round in 0..ROUNDS {
        for (i, c) in clients.iter().enumerate() {
            let payload = format!("client{i}-round{round}");
            let reply = ask(c, &payload);
            let (backend, echoed) = reply.split_once('|').unwrap_or_else(|| panic!("malformed reply {reply:?}"));
            assert_eq!(echoed, payload, "a reply reached the wrong client");
            if round == 0 {
                served_by[i] = backend.to_string();
            } else {
                assert_eq!(backend, served_by[i], "client {i}'s flow changed backend in round {round}");
            }
        }
    }
    for name in ["fast", "slow"] {
        assert!(served_by.iter().any(|b| b == name), "backend {name} got no flow: {served_by:?}");
    }

    // The counters are added just after the send the client may already have read from.
    let stats = settled(&server, |s| s.datagrams_to_clients >= (CLIENTS * ROUNDS) as u64);
    assert_eq!(stats.flows_created, CLIENTS as u64, "one flow per client address");
    assert_eq!(stats.datagrams_from_clients, (CLIENTS * ROUNDS) as u64);
    assert_eq!(stats.datagrams_to_clients, (CLIENTS * ROUNDS) as u64);
    // Each flow's first reply is its backend's latency sample, as the TCP path's first byte.
    let ewma = |i: usize| scheduler.backends().get(i).map(|b| b.stats.ewma_sample()).unwrap_or_else(|| panic!("backend {i}"));
    let ((fast_ns, fast_stamp), (slow_ns, slow_stamp)) = (ewma(0), ewma(1));
    assert!(fast_stamp != 0 && slow_stamp != 0, "every backend that replied was measured");
    assert!(slow_ns >= 40e6 && fast_ns < slow_ns, "first-reply latency: fast {fast_ns} ns, slow {slow_ns} ns");

    // Quiet flows expire as in the daemon, releasing their backend's active slot.
    let after = settled(&server, |s| s.flows_active == 0);
    assert_eq!((after.flows_active, after.flows_expired), (0, CLIENTS as u64));
    assert!(scheduler.backends().iter().all(|b| b.stats.active() == 0), "an expired flow still holds its backend");
    // The next datagram of an expired flow is a new flow, scheduled afresh.
    let reply = ask(&clients[0], "again");
    assert!(reply.ends_with("|again"), "{reply}");
    assert_eq!(server.shared.snapshot().flows_created, CLIENTS as u64 + 1);
    server.stop();
}

#[test]
fn a_flow_counts_as_active_only_while_its_answer_is_awaited() {
    let answering = EchoBackend::start("answering", Duration::ZERO);
    // Bound and never read: datagrams queue, no answer and no "port unreachable".
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("silent bind: {e}"));
    let silent_addr = silent.local_addr().unwrap_or_else(|e| panic!("{e}"));
    // Flows far outlive the test: only answers can take them out of the count.
    let (server, scheduler) = serve_with(SchedulerKind::Lc, &[silent_addr, answering.addr], Duration::from_secs(60));
    let active = |i: usize| scheduler.backends().get(i).map(|b| b.stats.active()).unwrap_or_else(|| panic!("backend {i}"));

    const FLOWS: usize = 20;
    let mut unanswered = 0;
    for i in 0..FLOWS {
        // A socket (source port) of its own per request: every request is a new flow, as a
        // resolver's queries are.
        let c = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        c.connect(server.addr).unwrap_or_else(|e| panic!("{e}"));
        c.set_read_timeout(Some(Duration::from_millis(300))).unwrap_or_else(|e| panic!("{e}"));
        c.send(format!("q{i}").as_bytes()).unwrap_or_else(|e| panic!("send: {e}"));
        let mut buf = [0u8; 512];
        match c.recv(&mut buf) {
            Ok(n) => assert!(String::from_utf8_lossy(&buf[..n]).starts_with("answering|")),
            Err(_) => unanswered += 1,
        }
    }
    // The silent backend is first in set order, so lc's tie-break gives it the first flow;
    // from then on its waiting flow outweighs the answering backend's answered ones. Were
    // answered flows still counted, lc would alternate and half the requests would go unanswered.
    assert_eq!(unanswered, 1, "lc sends new flows to the backend that answers");
    let settled_active = |want: (u64, u64)| {
        let deadline = Instant::now() + Duration::from_secs(3);
        while (active(0), active(1)) != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        (active(0), active(1))
    };
    assert_eq!(settled_active((1, 0)), (1, 0), "the waiting flow counts, the {} answered ones do not", FLOWS - 1);
    assert_eq!(server.shared.snapshot().flows_active, FLOWS as u64, "answered flows stay open all the same");

    // A new datagram on an answered flow counts it again until its answer comes back.
    let c = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    c.connect(server.addr).unwrap_or_else(|e| panic!("{e}"));
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap_or_else(|e| panic!("{e}"));
    assert!(ask(&c, "first").starts_with("answering|"));
    assert_eq!(settled_active((1, 0)), (1, 0));
    c.send(HOLD.as_bytes()).unwrap_or_else(|e| panic!("send: {e}"));
    assert_eq!(settled_active((1, 1)), (1, 1), "a flow awaiting its second answer counts again");
    let mut buf = [0u8; 512];
    c.recv(&mut buf).unwrap_or_else(|e| panic!("no answer to {HOLD}: {e}"));
    assert_eq!(settled_active((1, 0)), (1, 0), "and stops counting once answered");
    server.stop();
}

#[test]
fn stop_ends_the_workers_and_frees_the_port() {
    let backend = EchoBackend::start("only", Duration::ZERO);
    let (server, _scheduler) = serve(&[backend.addr], Duration::from_secs(30));
    let addr = server.addr;
    let c = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    c.connect(addr).unwrap_or_else(|e| panic!("{e}"));
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ask(&c, "x"), "only|x");
    server.stop();
    // Every worker's listener is closed: the address binds again without SO_REUSEPORT.
    UdpSocket::bind(addr).unwrap_or_else(|e| panic!("the port is still held after stop: {e}"));
}
