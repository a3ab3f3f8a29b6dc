//! Takeover by a successor, against the real `tpvs run` in the namespace lab: a second
//! instance started with the same flags receives the running one's listeners over the
//! hand-over socket and adopts its rules; the first exits 0 by itself, and no new connection
//! or datagram is refused across the takeover, repeated A→B→C→D. Connections open at the
//! takeover move to the successor (more in `e2e_takeover_conns.rs`). A takeover with
//! different flags, a malformed or truncated message, or a successor that vanishes before it
//! is ready leaves the first serving. Root and nftables/iproute2 required (or `TPVS_SKIP_E2E=1`).

mod lab;

use std::io::Write as _;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lab::load::{Load, start_load, udp_echo, wait_exit};
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
    let echo_stop = udp_echo(&lab.backends[0], UDP_BACKEND, "be0");
    lab.write_manifests(&services());
    lab.start_tpvs(&[]);
    lab.wait_serving(VIP);
    let first_pid = lab.tpvs_pid().unwrap_or_default();
    let first_listeners = listener_inodes(&lab.node, first_pid);
    assert_eq!(first_listeners.len(), 8, "two workers, TCP and UDP, v4 and v6: {first_listeners:?}");

    let load = Arc::new(Load::default());
    let threads = start_load(&lab, &load, VIP, UDP_VIP);
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
        fds.push(lab.footprint().0);
        // Each worker's descriptor plus the copy kept for the next hand-over: never more.
        let held = descriptors_of(new_pid, &first_listeners);
        assert_eq!(held, 2 * first_listeners.len(), "round {round}: descriptors of the handed-over listeners");
    }
    let elapsed = started.elapsed();
    load.finish(threads);
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
        load.first_failure(),
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
fn open_connections_move_to_the_successor_and_outlive_the_grace() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    lab.write_manifests(&services());
    lab.start_tpvs(&["--shutdown-grace", "2s"]);
    lab.wait_serving(VIP);
    // Open before the takeover: they pass to the successor with the listeners, so the
    // predecessor has nothing left to drain and exits at once, not at the grace.
    let mut long = lab.open(VIP).unwrap_or_else(|e| panic!("{e}"));
    let mut short = lab.open(VIP).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(long.echo("before").unwrap_or_else(|e| panic!("{e}")), "before");
    let t0 = Instant::now();
    let mut old = lab.start_successor(&[]).unwrap_or_else(|| panic!("no running instance"));
    let status = wait_exit(&mut old, Duration::from_secs(6));
    let waited = t0.elapsed();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", lab.tpvs_log_of(0));
    let log = lab.tpvs_log_of(0);
    assert!(log.contains("connections_passed=2") && log.contains("connections_cut=0"), "both connections were handed over: {log}");
    assert!(waited < Duration::from_millis(1800), "the predecessor waited {waited:?}: it had nothing to drain");
    // The successor says so once it owns the name (right after the predecessor let go).
    let adopted = lab.wait_for(Duration::from_secs(5), || lab.tpvs_log().contains("connections_adopted=2").then_some(()));
    assert!(adopted.is_some(), "{}", lab.tpvs_log());
    // Both relayed by the successor now, past the predecessor's grace.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(long.echo("still there").unwrap_or_else(|e| panic!("{e}\n{}", lab.tpvs_log())), "still there");
    assert_eq!(short.echo("bye").unwrap_or_else(|e| panic!("{e}")), "bye");
    assert!(short.finish().is_ok_and(|rest| rest.is_empty()), "a moved connection half-closes cleanly");
    lab.hello(VIP).unwrap_or_else(|e| panic!("{e}"));
}
