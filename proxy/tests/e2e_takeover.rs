//! Takeover by a successor, against the real `tpvs run` in the namespace lab: a second
//! instance started with the same flags receives the running one's listeners over the
//! hand-over socket and adopts its rules; the first exits 0 by itself, and no new connection
//! or datagram is refused across the takeover, repeated A→B→C→D. A takeover with different
//! flags, a malformed or truncated message, or a successor that vanishes before it is ready
//! leaves the first serving. Root and nftables/iproute2 required (or `TPVS_SKIP_E2E=1`).

mod lab;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lab::{Lab, Privileges, Svc, in_netns, lab, manifests};
use tpvs::handover::{self, Message};

const VIP: &str = "10.96.0.10:80";
const UDP_VIP: &str = "10.96.0.53:53";
const UDP_BACKEND: &str = "10.1.0.2:5300";

fn services() -> String {
    let mut dns = Svc::new("dns", "10.96.0.53").endpoint("10.1.0.2", "node1");
    dns.protocol = "UDP";
    dns.port = 53;
    dns.target_port = 5300;
    manifests(&[Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1"), dns])
}

/// Load that runs until `stop`: new TCP connections (each must say hello and close cleanly),
/// a UDP request loop, and a watcher of the nft table's presence.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    tcp_ok: AtomicUsize,
    tcp_failed: AtomicUsize,
    udp_sent: AtomicUsize,
    udp_answered: AtomicUsize,
    nft_absent: AtomicUsize,
    nft_checks: AtomicUsize,
    first_failure: std::sync::Mutex<Option<String>>,
}

impl Load {
    fn fail(&self, what: String) {
        self.tcp_failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(what);
    }

    /// One short connection: connect, the backend's hello, half-close, clean end.
    fn one_connection(&self, vip: SocketAddr) {
        let r = (|| -> std::io::Result<()> {
            let s = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut reader = BufReader::new(s.try_clone()?);
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if !line.starts_with("be0 ") {
                return Err(std::io::Error::other(format!("no hello: {line:?}")));
            }
            s.shutdown(std::net::Shutdown::Write)?;
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest)?;
            Ok(())
        })();
        match r {
            Ok(()) => {
                self.tcp_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.fail(format!("{e} ({:?})", e.kind())),
        }
    }
}

fn start_load(lab: &Lab, load: &Arc<Load>) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    let vip: SocketAddr = VIP.parse().unwrap_or_else(|e| panic!("{e}"));
    // Two connecting threads, paced to well over 200 new connections per second in all.
    for _ in 0..2 {
        let (l, ns) = (Arc::clone(load), lab.client.clone());
        threads.push(std::thread::spawn(move || {
            in_netns(&ns, || {
                while !l.stop.load(Ordering::Relaxed) {
                    l.one_connection(vip);
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
        }));
    }
    let (l, ns) = (Arc::clone(load), lab.client.clone());
    threads.push(std::thread::spawn(move || {
        in_netns(&ns, || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap_or_else(|e| panic!("{e}"));
            sock.connect(UDP_VIP).unwrap_or_else(|e| panic!("{e}"));
            sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap_or_else(|e| panic!("{e}"));
            let mut buf = [0u8; 512];
            let mut n = 0u64;
            while !l.stop.load(Ordering::Relaxed) {
                n += 1;
                let msg = format!("q{n}");
                if sock.send(msg.as_bytes()).is_err() {
                    l.udp_sent.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                l.udp_sent.fetch_add(1, Ordering::Relaxed);
                // Replies to earlier (late) requests are skipped; this one's answer counts.
                let deadline = Instant::now() + Duration::from_millis(300);
                while Instant::now() < deadline {
                    match sock.recv(&mut buf) {
                        Ok(k) if String::from_utf8_lossy(&buf[..k]).ends_with(&format!(" {msg}")) => {
                            l.udp_answered.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Ok(_) => continue,
                        Err(_) => break,
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    }));
    let (l, node) = (Arc::clone(load), lab.node.clone());
    threads.push(std::thread::spawn(move || {
        while !l.stop.load(Ordering::Relaxed) {
            let present = Command::new("ip").args(["netns", "exec", &node, "nft", "list", "table", "inet", "tpvs"]).output().is_ok_and(|o| o.status.success());
            l.nft_checks.fetch_add(1, Ordering::Relaxed);
            if !present {
                l.nft_absent.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }));
    threads
}

/// A UDP backend answering `"be0 <payload>"`, until the returned flag is set.
fn udp_echo(lab: &Lab) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let sock = in_netns(&lab.backends[0], || UdpSocket::bind(UDP_BACKEND)).unwrap_or_else(|e| panic!("{e}"));
    sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap_or_else(|e| panic!("{e}"));
    let st = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !st.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(format!("be0 {}", String::from_utf8_lossy(&buf[..n])).as_bytes(), peer);
            }
        }
    });
    stop
}

/// Waits (bounded) for a predecessor to exit by itself; its exit status, or None.
fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// How many of `pid`'s descriptors refer to one of the sockets `inodes` names.
fn descriptors_of(pid: u32, inodes: &[String]) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return 0 };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| inodes.iter().any(|i| target.to_string_lossy() == format!("socket:[{i}]")))
        .count()
}

/// The running instance's listening sockets as the kernel sees them (inode numbers of the
/// transparent listeners it holds), to prove a successor holds the very same sockets.
fn listener_inodes(node: &str, pid: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", node, "ss", "-Hltunpe"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut inodes: Vec<String> = out
        .lines()
        .filter(|l| (l.contains(":15001 ") || l.contains(":15002 ")) && l.contains(&format!("pid={pid},")))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("ino:").map(str::to_string)))
        .collect();
    inodes.sort();
    inodes.dedup();
    inodes
}

#[test]
fn a_successor_takes_over_under_load_losing_nothing_again_and_again() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    let echo_stop = udp_echo(&lab);
    lab.write_manifests(&services());
    lab.start_tpvs(&[]);
    lab.wait_serving(VIP);
    let first_pid = lab.tpvs_pid().unwrap_or_default();
    let first_listeners = listener_inodes(&lab.node, first_pid);
    assert_eq!(first_listeners.len(), 8, "two workers, TCP and UDP, v4 and v6: {first_listeners:?}");

    let load = Arc::new(Load::default());
    let threads = start_load(&lab, &load);
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let ok_before = load.tcp_ok.load(Ordering::Relaxed);

    let mut fds = Vec::new();
    let mut takeover_ms = Vec::new();
    for round in 1..=3 {
        let t0 = Instant::now();
        let mut old = lab.start_successor(&[]).unwrap_or_else(|| panic!("no running instance"));
        let status = wait_exit(&mut old, Duration::from_secs(5));
        takeover_ms.push(t0.elapsed().as_millis());
        let old_log = lab.tpvs_log_of(round - 1);
        assert!(
            status.is_some_and(|s| s.success()),
            "round {round}: the predecessor did not exit 0 within 5 s ({status:?}):\n{old_log}\n--- successor ---\n{}",
            lab.tpvs_log()
        );
        assert!(old_log.contains("handed over to a successor; exiting with the rules left in place"), "{old_log}");
        let new_pid = lab.tpvs_pid().unwrap_or_default();
        assert_eq!(listener_inodes(&lab.node, new_pid), first_listeners, "round {round}: the successor must hold the very same listening sockets");
        // Let the successor serve under load for a while before the next takeover.
        std::thread::sleep(Duration::from_millis(1500));
        fds.push(fd_count(new_pid));
        // Each worker's descriptor plus the copy kept for the next hand-over: never more.
        let held = descriptors_of(new_pid, &first_listeners);
        assert_eq!(held, 2 * first_listeners.len(), "round {round}: descriptors of the handed-over listeners");
    }
    let elapsed = started.elapsed();
    load.stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    echo_stop.store(true, Ordering::Relaxed);

    let ok = load.tcp_ok.load(Ordering::Relaxed) - ok_before;
    let failed = load.tcp_failed.load(Ordering::Relaxed);
    let (sent, answered) = (load.udp_sent.load(Ordering::Relaxed), load.udp_answered.load(Ordering::Relaxed));
    let rate = ok as f64 / elapsed.as_secs_f64();
    eprintln!(
        "takeovers: {takeover_ms:?} ms; tcp ok {ok} ({rate:.0}/s), failed {failed}; udp {answered}/{sent}; nft checks {}; fds after each takeover {fds:?}",
        load.nft_checks.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed,
        0,
        "new connections failed across the takeovers: first {:?}\n{}",
        load.first_failure.lock().ok().and_then(|f| f.clone()),
        lab.tpvs_log()
    );
    assert!(rate >= 200.0, "the client opened only {rate:.0} connections/s");
    assert!(sent > 100 && answered as f64 >= 0.999 * sent as f64, "UDP answered {answered} of {sent}");
    assert_eq!(load.nft_absent.load(Ordering::Relaxed), 0, "the nft table was absent during a takeover");
    assert!(load.nft_checks.load(Ordering::Relaxed) > 50);
    // Nothing else accumulates across takeovers either (the slack is connections in flight).
    let (b, d) = (fds[0], fds[2]);
    assert!(d <= b + 16, "descriptors grew across takeovers: {fds:?}");

    // The last successor owns the table: it answers probes and `tpvs list`, and a stop
    // removes the rules as for any instance.
    let list = lab.node_sh(&[env!("CARGO_BIN_EXE_tpvs"), "list"]).unwrap_or_else(|e| panic!("tpvs list: {e}"));
    assert!(list.contains("10.96.0.10"), "{list}");
    lab.hello(VIP).unwrap_or_else(|e| panic!("after the takeovers: {e}"));
    assert!(lab.stop_tpvs(libc::SIGTERM), "the final instance stops cleanly");
    assert!(lab.node_sh(&["nft", "list", "table", "inet", "tpvs"]).is_err(), "a stopped owner removes the table");
}

/// Connects to the running instance's hand-over socket from inside the node's namespace.
fn handover_socket(lab: &Lab) -> UnixStream {
    in_netns(&lab.node, || {
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(b"tpvs/tpvs").unwrap_or_else(|e| panic!("{e}"));
        let s = UnixStream::connect_addr(&addr).unwrap_or_else(|e| panic!("connect to the hand-over socket: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap_or_else(|e| panic!("{e}"));
        s
    })
}

#[test]
fn bad_hand_over_messages_and_a_vanished_successor_leave_the_first_serving() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    lab.write_manifests(&services());
    lab.start_tpvs(&[]);
    lab.wait_serving(VIP);

    let garbage: [(&str, Vec<u8>); 4] = [
        ("another protocol version", vec![9, 2, 0, 0, 0, b'{', b'}']),
        ("an oversized frame", vec![handover::PROTOCOL, 255, 255, 255, 255]),
        ("malformed JSON", [vec![handover::PROTOCOL, 5, 0, 0, 0], b"{\"ty".to_vec()].concat()),
        ("a truncated frame", vec![handover::PROTOCOL, 40, 0, 0, 0, b'{']),
    ];
    for (what, bytes) in garbage {
        let mut s = handover_socket(&lab);
        let hello = handover::read_message(&mut s).unwrap_or_else(|e| panic!("{what}: no hello: {e}"));
        assert!(matches!(hello, Message::Hello { .. }), "{hello:?}");
        s.write_all(&bytes).unwrap_or_else(|e| panic!("{e}"));
        let _ = s.shutdown(std::net::Shutdown::Write);
        // The instance answers with its refusal (or hangs up), and keeps serving.
        let answer = handover::read_message(&mut s);
        assert!(matches!(answer, Ok(Message::Refused { .. }) | Err(_)), "{what}: {answer:?}");
        lab.hello(VIP).unwrap_or_else(|e| panic!("after {what}: {e}\n{}", lab.tpvs_log()));
    }

    // A successor that receives the listeners and then dies before Ready: nothing released.
    {
        let mut s = handover_socket(&lab);
        let Ok(Message::Hello { flags, .. }) = handover::read_message(&mut s) else { panic!("no hello") };
        handover::write_message(&mut s, &Message::TakeOver { binary: "test".into(), flags, instance: String::new() }).unwrap_or_else(|e| panic!("{e}"));
        let Ok(Message::Listeners { tcp, udp, admin }) = handover::read_message(&mut s) else { panic!("no listeners") };
        let n: usize = tcp.iter().chain(&udp).map(|p| p.iter().filter(|x| **x).count()).sum();
        let fds = handover::recv_fds(&s, n + admin.len()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fds.len(), 8 + admin.len());
        drop(fds);
        drop(s);
    }
    let log_has = |needle: &str| lab.wait_for(Duration::from_secs(5), || lab.tpvs_log().contains(needle).then_some(())).is_some();
    assert!(log_has("the successor did not become ready"), "{}", lab.tpvs_log());
    for _ in 0..20 {
        lab.hello(VIP).unwrap_or_else(|e| panic!("after a vanished successor: {e}\n{}", lab.tpvs_log()));
    }
    assert!(lab.tpvs_log().contains("bad request on the hand-over socket"), "{}", lab.tpvs_log());

    // A successor running as another user is refused (SO_PEERCRED), and says so.
    lab.privileges = Privileges::DaemonSetNonRoot;
    let first = lab.start_successor(&[]).unwrap_or_else(|| panic!("no running instance"));
    let status = lab.back_to(first, 0, Duration::from_secs(10));
    let refused = lab.tpvs_log_of(1);
    assert!(status.is_some_and(|s| !s.success() && s.code() != Some(101)), "{status:?}: {refused}");
    assert!(refused.contains("refused the takeover: a takeover from uid 65534 is refused: only the same user or root may take over"), "{refused}");
    lab.privileges = Privileges::Root;
    for _ in 0..5 {
        lab.hello(VIP).unwrap_or_else(|e| panic!("after a refused successor: {e}\n{}", lab.tpvs_log()));
    }

    // Still the owner, with everything to hand: a real successor takes over afterwards.
    let mut old = lab.start_successor(&[]).unwrap_or_else(|| panic!("no running instance"));
    let status = wait_exit(&mut old, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", lab.tpvs_log_of(0));
    assert!(lab.tpvs_log_of(0).contains("handed over to a successor"), "{}", lab.tpvs_log_of(0));
    lab.hello(VIP).unwrap_or_else(|e| panic!("after the takeover: {e}\n{}", lab.tpvs_log()));
}

#[test]
fn the_predecessor_relays_its_open_connections_until_the_grace_runs_out() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    lab.write_manifests(&services());
    lab.start_tpvs(&["--shutdown-grace", "2s"]);
    lab.wait_serving(VIP);
    // Open before the takeover: the predecessor relays it (connections are not handed over
    // yet) until it ends or the grace runs out.
    let mut long = lab.open(VIP).unwrap_or_else(|e| panic!("{e}"));
    let mut short = lab.open(VIP).unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    let mut old = lab.start_successor(&[]).unwrap_or_else(|| panic!("no running instance"));
    let log_has = |needle: &str| lab.wait_for(Duration::from_secs(5), || lab.tpvs_log_of(0).contains(needle).then_some(())).is_some();
    assert!(log_has("handed the listeners and the rules over to a successor"), "{}", lab.tpvs_log_of(0));
    // Both still relayed by the predecessor; one ends on its own.
    assert_eq!(long.echo("still there").unwrap_or_else(|e| panic!("{e}")), "still there");
    assert_eq!(short.echo("bye").unwrap_or_else(|e| panic!("{e}")), "bye");
    drop(short.finish());
    // New connections go to the successor meanwhile.
    lab.hello(VIP).unwrap_or_else(|e| panic!("{e}"));
    let status = wait_exit(&mut old, Duration::from_secs(6));
    let waited = t0.elapsed();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", lab.tpvs_log_of(0));
    assert!(waited >= Duration::from_millis(1800) && waited < Duration::from_secs(5), "the predecessor exited after {waited:?}, not at the 2 s grace");
    let log = lab.tpvs_log_of(0);
    assert!(log.contains("connections_cut=1"), "one connection was still open at the end of the grace: {log}");
    assert!(long.echo("gone?").is_err(), "a connection older than the grace ends with its relay (not handed over yet)");
}
