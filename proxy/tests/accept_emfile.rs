//! A process out of file descriptors resets new connections instead of leaving them in the
//! accept queue. The budget keeps the data path under its caps; this is the last line for
//! when something outside the budget took the descriptors. Loopback only, no root: the
//! forwarding engine in plain listen mode, in this process, whose descriptors the test fills.
//! One test in its own file: it lowers the process's open-file limit.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use controlplane::{Frontend, FrontendKey, FrontendKind, Protocol, ServicePortName, TrafficPolicy, WhenEmpty};
use schedulers::{Backend, BackendSet, BackendStats, SchedulerKind, SchedulerOptions};
use socket2::{Domain, SockAddr, Socket, Type};
use tpvs::addrs::NodePortAddrs;
use tpvs::forward::{ForwardConfig, RelayMode, serve_plain};

fn nofile() -> libc::rlimit {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit for getrlimit to fill.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim
}

fn set_soft_nofile(soft: u64) {
    let lim = libc::rlimit { rlim_cur: soft, rlim_max: nofile().rlim_max };
    // SAFETY: a valid rlimit for setrlimit to read.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0, "{}", std::io::Error::last_os_error());
}

/// Whether `s` was reset or closed by the proxy within `within` (false: still open, no byte).
fn ended_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap_or_else(|e| panic!("{e}"));
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

#[test]
fn out_of_descriptors_the_queued_client_is_reset_not_left_hanging() {
    // A backend that completes handshakes (the kernel does) and never reads.
    let backend = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let backend_addr = backend.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let set = BackendSet::new(vec![Backend::new(backend_addr, Arc::new(BackendStats::default()))]);
    let scheduler = schedulers::build(SchedulerKind::Rr, Arc::new(set), &SchedulerOptions::default());
    let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let frontend = Frontend {
        key: FrontendKey::new(listen.ip(), 0, Protocol::Tcp),
        kind: FrontendKind::ClusterIp,
        service: ServicePortName { namespace: "test".into(), name: "emfile".into(), port: "".into() },
        policy: TrafficPolicy::Cluster,
        affinity: None,
        when_empty: WhenEmpty::Reject,
        health_check_node_port: None,
        local_endpoints: 1,
        service_local_endpoints: 1,
        source_ranges: Arc::from([]),
        scheduler,
        explanation: Default::default(),
        local_origin: None,
    };
    let config = ForwardConfig {
        port: 0,
        workers: 1,
        backlog: 128,
        // Far above what the descriptors allow: this test is about running out anyway.
        max_connections: 1_000_000,
        max_pipes: 16,
        connect_timeout: Duration::from_secs(1),
        connect_attempts: 1,
        idle_timeout: None,
        nodeport_addrs: NodePortAddrs::default(),
        mode: RelayMode::Splice,
        outliers: Default::default(),
    };
    let server = serve_plain(listen, Arc::new(frontend), config).unwrap_or_else(|e| panic!("{e}"));
    let proxy: SockAddr = server.addr.into();

    // Client sockets made while descriptors are plentiful: connecting one needs no new one.
    let clients: Vec<Socket> = (0..8).map(|_| Socket::new(Domain::IPV4, Type::STREAM, None).unwrap_or_else(|e| panic!("{e}"))).collect();
    let saved = nofile();
    let open = tpvs::limits::open_fds().unwrap_or_else(|| panic!("/proc/self/fd unreadable"));
    set_soft_nofile(open as u64 + 32);
    // Take every descriptor left: the proxy has none for its next accept.
    let mut filler = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        filler.push(f);
    }
    let mut outcomes = Vec::new();
    // Kept open until the end: closing one would hand its descriptor back to the proxy.
    let mut kept = Vec::new();
    for c in clients {
        let started = Instant::now();
        let connected = c.connect_timeout(&proxy, Duration::from_secs(1));
        let mut s: TcpStream = c.into();
        let ended = connected.is_err() || ended_within(&mut s, Duration::from_secs(1));
        outcomes.push((ended, started.elapsed()));
        kept.push(s);
    }
    drop(filler);
    drop(kept);
    set_soft_nofile(saved.rlim_cur);

    let stuck: Vec<_> = outcomes.iter().enumerate().filter(|(_, (ended, _))| !ended).collect();
    assert!(stuck.is_empty(), "clients left hanging in the accept queue while out of descriptors: {stuck:?}");
    let over = server.shared.stats.over_limit.load(Ordering::Relaxed);
    assert!(over >= 8, "each was accepted and reset at once (over_limit {over})");

    // With descriptors back, connections are served again. A worker may still be finishing its
    // last out-of-descriptors round (waiting for one more connection to reset), so allow a few
    // tries within two seconds: what matters is that serving resumes.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut served = false;
    let mut tries = 0;
    while !served && Instant::now() < deadline {
        tries += 1;
        let mut s = TcpStream::connect(server.addr).unwrap_or_else(|e| panic!("{e}"));
        served = !ended_within(&mut s, Duration::from_millis(300));
    }
    assert!(served, "served again once descriptors are back ({tries} tries)");
    drop(backend);
}
