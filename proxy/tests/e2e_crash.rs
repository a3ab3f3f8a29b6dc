//! A crash or SIGKILL, against the real `tpvs run` in the namespace lab, under the DaemonSet's
//! capability set: what survives is the nftables table and the policy routes. The next
//! instance starts over them (adopting, not failing or duplicating), and in the window with no
//! listener an intercepted SYN or datagram is dropped — never reset, never routed on — so a
//! client connecting in a loop sees its SYN retransmitted and every connect succeed. Root and
//! nftables/iproute2 required (or `TPVS_SKIP_E2E=1`).

mod lab;

use std::io::{BufRead as _, BufReader};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lab::{Lab, Privileges, Svc, in_netns, lab, manifests};

const VIP: &str = "10.96.0.10:80";
const UDP_VIP: &str = "10.96.0.53:53";

fn services() -> String {
    let mut dns = Svc::new("dns", "10.96.0.53").endpoint("10.1.0.2", "node1");
    dns.protocol = "UDP";
    dns.port = 53;
    manifests(&[Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1"), dns])
}

fn start() -> Option<Lab> {
    let mut lab = lab(1, &[0])?;
    // As on a Kubernetes node, the node forwards and has a default route (here to node2, a
    // namespace of the lab, which counts what reaches it for a Service address): a packet to a
    // ClusterIP that the rules let through would be routed on to the network.
    for knob in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
        lab.node_sh(&["sysctl", "-qw", knob]).unwrap_or_else(|e| panic!("{e}"));
    }
    lab.node_sh(&["ip", "route", "add", "default", "via", "10.2.0.2"]).unwrap_or_else(|e| panic!("{e}"));
    lab.privileges = Privileges::DaemonSet;
    lab.write_manifests(&services());
    lab.start_tpvs(&[]);
    lab.wait_serving(VIP);
    // Counted from here: the lab's first probes went out before any rule existed.
    let node2 = lab.node2.clone();
    for rule in [
        "add table inet routed_on",
        "add chain inet routed_on seen { type filter hook prerouting priority 0; }",
        "add rule inet routed_on seen ip daddr 10.96.0.0/16 counter",
    ] {
        let mut args = vec!["ip", "netns", "exec", &node2, "nft"];
        args.extend(rule.split(' '));
        lab::sh(&args);
    }
    Some(lab)
}

/// Packets for a Service address that left the node (seen by node2, its default gateway).
fn routed_on(lab: &Lab) -> u64 {
    let out = lab::sh(&["ip", "netns", "exec", &lab.node2, "nft", "list", "chain", "inet", "routed_on", "seen"]);
    out.split_whitespace().skip_while(|w| *w != "packets").nth(1).and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
}

/// One connect through the proxy as a client retrying by itself would make it: the kernel's
/// SYN retransmissions only (a long connect timeout), then the backend's hello.
fn connect_once(client: &str) -> Result<(), String> {
    let stream = lab::connect_in(client, VIP, Duration::from_secs(20)).map_err(|e| format!("connect: {e} ({:?})", e.kind()))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(|e| format!("hello: {e}"))?;
    lab::parse_hello(&line).map(drop).map_err(|e| e.to_string())
}

/// Clients connecting in a loop: when each connect started, how long it took, and how it ended.
#[derive(Default)]
struct Attempts(Mutex<Vec<Attempt>>);

/// When a connect started, how long it took, how it ended.
type Attempt = (Instant, Duration, Result<(), String>);

fn connect_in_a_loop(ns: &str, clients: usize, stop: &Arc<AtomicBool>, attempts: &Arc<Attempts>) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (client, stop, attempts) = (ns.to_string(), Arc::clone(stop), Arc::clone(attempts));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let r = connect_once(&client);
                    attempts.0.lock().unwrap_or_else(|p| p.into_inner()).push((t0, t0.elapsed(), r));
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect()
}

/// When the tpvs listener on the proxy port is back (polled with `ss`), within `within`.
fn wait_listener(lab: &Lab, within: Duration) -> Option<Instant> {
    lab.wait_for(within, || {
        let out = lab.node_sh(&["ss", "-Hltn", "sport", "= :15001"]).unwrap_or_default();
        (!out.trim().is_empty()).then(Instant::now)
    })
}

fn nft_table(lab: &Lab) -> String {
    lab.node_sh(&["nft", "list", "table", "inet", "tpvs"]).unwrap_or_default()
}

/// Packets the rules dropped for want of a listener (the `no_listener` chain's counter).
fn no_listener_drops(lab: &Lab) -> u64 {
    let chain = lab.node_sh(&["nft", "list", "chain", "inet", "tpvs", "no_listener"]).unwrap_or_default();
    chain.split_whitespace().skip_while(|w| *w != "packets").nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn fwmark_rules(lab: &Lab) -> usize {
    ["-4", "-6"].iter().map(|f| lab.node_sh(&["ip", f, "rule", "show"]).unwrap_or_default().lines().filter(|l| l.contains("fwmark 0x7470")).count()).sum()
}

#[test]
fn after_a_sigkill_the_next_instance_adopts_the_rules_and_no_connect_is_refused_or_routed_on() {
    let Some(mut lab) = start() else { return };
    let (stop, attempts) = (Arc::new(AtomicBool::new(false)), Arc::new(Attempts::default()));
    // Three clients in the client's namespace, one on the node itself (its packets to a VIP
    // take the detour through `lo` and meet the same rules).
    let mut clients = connect_in_a_loop(&lab.client.clone(), 3, &stop, &attempts);
    clients.extend(connect_in_a_loop(&lab.node.clone(), 1, &stop, &attempts));
    std::thread::sleep(Duration::from_millis(500));

    let killed = Instant::now();
    assert!(!lab.stop_tpvs(libc::SIGKILL), "killed, not exited");
    // The signal lands a moment after `killed`: a connect started in between may still be
    // accepted by the dying process and reset with it. From `gone` on, it is reaped.
    let gone = Instant::now();
    assert!(nft_table(&lab).contains("10.96.0.10"), "a killed instance leaves its rules");

    // Datagrams to a UDP Service meet no listener either: dropped, so the client's connected
    // socket gets no ICMP error (routed on, the lab's node would answer "unreachable").
    let udp_errors = in_netns(&lab.client, || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap_or_else(|e| panic!("{e}"));
        sock.connect(UDP_VIP).unwrap_or_else(|e| panic!("{e}"));
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap_or_else(|e| panic!("{e}"));
        let mut errors = Vec::new();
        for _ in 0..5 {
            if let Err(e) = sock.send(b"q") {
                errors.push(e.to_string());
            }
            match sock.recv(&mut [0u8; 64]) {
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => errors.push(e.to_string()),
                Ok(_) => errors.push("an answer with no tpvs running".into()),
            }
        }
        errors
    });
    assert!(udp_errors.is_empty(), "datagrams with no listener must be dropped silently: {udp_errors:?}");

    // The restart comes 1.5 s after the kill (a container restart is of that order).
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(killed.elapsed()));
    let dropped = no_listener_drops(&lab);
    assert!(dropped > 0, "the SYNs of the gap were not dropped by the rules:\n{}", nft_table(&lab));
    let restarted = Instant::now();
    lab.start_tpvs(&[]);
    let listening = wait_listener(&lab, Duration::from_secs(10)).unwrap_or_else(|| panic!("no listener after the restart:\n{}", lab.tpvs_log()));

    // Every connect that was waiting on a retransmission gets through.
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let attempts = std::mem::take(&mut *attempts.0.lock().unwrap_or_else(|p| p.into_inner()));
    // A connection in flight at the kill was the killed process's: the kernel closed its
    // sockets (a reset, or an end of stream before the hello). Every one started once the
    // process was gone must succeed.
    let cut = attempts.iter().filter(|a| a.0 < gone && a.0 + a.1 > killed && a.2.is_err()).count();
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| a.0 >= gone && a.2.is_err()).collect();
    let first_after = attempts.iter().filter(|a| a.2.is_ok() && a.0 + a.1 > killed).map(|a| a.0 + a.1).min();
    let spanning: Vec<Duration> = attempts.iter().filter(|a| a.0 >= killed && a.0 < listening).map(|a| a.1).collect();
    let worst = attempts.iter().map(|a| a.1).max().unwrap_or_default();
    eprintln!(
        "SIGKILL → restart {:?}, SIGKILL → listener {:?} (restart → listener {:?}), SIGKILL → first connection served {:?}; \
         {} connects, {} of them spanned the gap, taking {spanning:?}; {cut} in flight at the kill were cut; longest connect {worst:?}; \
         {dropped} packets dropped for want of a listener",
        restarted - killed,
        listening - killed,
        listening - restarted,
        first_after.map(|t| t - killed),
        attempts.len(),
        spanning.len(),
    );
    assert_eq!(routed_on(&lab), 0, "packets for a Service address left the node while no tpvs listened");
    assert!(failed.is_empty(), "connects were refused, reset or unreachable across the restart: {failed:?}\n{}", lab.tpvs_log());
    assert!(spanning.len() >= 4, "too few connects started in the gap for the test to prove anything: {spanning:?}");
    assert!(attempts.len() > 20, "too few connects: {}", attempts.len());
    assert!(worst < Duration::from_secs(8), "a connect waited {worst:?}: longer than the SYN retransmissions after the gap");

    // Adopted, not duplicated: the same table, each element once, one routing rule per family.
    let log = lab.tpvs_log();
    assert!(log.contains("adopting the nft table and policy routes a previous instance left"), "{log}");
    assert!(!log.contains("another tpvs owns"), "{log}");
    let tables = lab.node_sh(&["nft", "list", "tables"]).unwrap_or_default();
    assert_eq!(tables.lines().filter(|l| l.trim() == "table inet tpvs").count(), 1, "{tables}");
    let table = nft_table(&lab);
    // Map elements carry their counters: `10.96.0.10 . tcp . 80 counter packets N bytes M : goto …`.
    assert_eq!(table.matches("10.96.0.10 . tcp . 80 counter").count(), 1, "{table}");
    assert_eq!(table.matches("chain prerouting").count(), 1, "{table}");
    assert_eq!(fwmark_rules(&lab), 2, "one policy-routing rule per family");
}

#[test]
fn a_restart_whose_first_table_is_late_keeps_the_left_rules_and_queues_connections() {
    let Some(mut lab) = start() else { return };
    assert!(!lab.stop_tpvs(libc::SIGKILL));
    // The restarted instance cannot read its Services yet (an API server still listing, say).
    let aside = lab.dir.join("aside.yaml");
    std::fs::rename(&lab.manifests, &aside).unwrap_or_else(|e| panic!("{e}"));
    lab.start_tpvs(&[]);
    wait_listener(&lab, Duration::from_secs(10)).unwrap_or_else(|| panic!("no listener:\n{}", lab.tpvs_log()));
    std::thread::sleep(Duration::from_millis(300));
    // Until it has a table it keeps the killed instance's rules (not an empty table, which
    // would let the ClusterIP's packets be routed on) and holds the connections it is sent.
    let left = nft_table(&lab);
    let element = left.split([',', '{', '}']).map(str::trim).find(|e| e.starts_with("10.96.0.10 . tcp . 80 counter"));
    assert!(element.is_some_and(|e| e.ends_with(": goto tproxy_tcp")), "the left rules were replaced:\n{left}");
    let waiting = {
        let client = lab.client.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            (connect_once(&client), t0.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!waiting.is_finished(), "the connection ended before the instance had a table: {:?}", waiting.join().ok());
    std::fs::rename(&aside, &lab.manifests).unwrap_or_else(|e| panic!("{e}"));
    let (result, took) = waiting.join().unwrap_or_else(|_| panic!("client panicked"));
    eprintln!("a connection sent before the first table was served after {took:?}");
    assert!(result.is_ok(), "{result:?}\n{}", lab.tpvs_log());
    assert_eq!(routed_on(&lab), 0, "packets for a Service address left the node before the first table");
}
