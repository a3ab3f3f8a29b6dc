//! `--worker-steering cpu` against the real `tpvs run` in the namespace lab: a connection whose
//! SYN the kernel handles on CPU `k` is accepted by worker `k`, as the per-worker metrics show
//! (`tpvs_worker_connections_accepted_total`), before and after a takeover (the successor
//! serves the same listeners, the program stays with their group, an established connection
//! crosses); every worker reports its CPU time, and its open count falls back to zero.
//! Root and nftables/iproute2 required (or `TPVS_SKIP_E2E=1`).

mod admin_http;
mod lab;

use std::time::Duration;

use lab::load::wait_exit;
use lab::{Lab, Svc, connect_in, lab, manifests, parse_hello};

const VIP: &str = "10.96.0.10:80";
/// The lab starts tpvs with `--workers 2`.
const WORKERS: usize = 2;

/// The CPUs this process may use.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is the empty set; sched_getaffinity writes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(rc, 0, "sched_getaffinity: {}", std::io::Error::last_os_error());
    // SAFETY: CPU_ISSET reads within the set.
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

fn pin_to(cpu: usize) {
    // SAFETY: as above; CPU_SET writes within the set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: a valid cpu_set_t; 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(rc, 0, "pin to CPU {cpu}: {}", std::io::Error::last_os_error());
}

/// `family{worker="i"}` for every worker, from the daemon's /metrics.
fn per_worker(lab: &Lab, family: &str) -> Vec<f64> {
    let body = admin_http::get(&lab.node, "127.0.0.1:10249", "/metrics").unwrap_or_else(|e| panic!("scrape: {e}")).body;
    (0..WORKERS)
        .map(|i| {
            let prefix = format!("{family}{{worker=\"{i}\"}} ");
            body.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {prefix} sample in\n{body}"))
        })
        .collect()
}

/// `n` whole connections (hello, half-close, end) made from a thread pinned to `cpu`: the
/// client's SYN goes through the veth and the node's stack on that CPU.
fn connections_from_cpu(lab: &Lab, cpu: usize, n: usize) {
    let client = lab.client.clone();
    std::thread::scope(|s| {
        s.spawn(|| {
            pin_to(cpu);
            for i in 0..n {
                let stream = connect_in(&client, VIP, Duration::from_secs(2)).unwrap_or_else(|e| panic!("connection {i} from CPU {cpu}: {e}"));
                let mut reader = std::io::BufReader::new(stream);
                let mut line = String::new();
                std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or_else(|e| panic!("{e}"));
                parse_hello(&line).unwrap_or_else(|e| panic!("{e}"));
            }
        });
    });
}

/// From each CPU in turn, 20 connections: each batch lands on that CPU's worker only.
fn check_steering(lab: &Lab, when: &str) {
    for cpu in 0..WORKERS {
        let before = per_worker(lab, "tpvs_worker_connections_accepted_total");
        connections_from_cpu(lab, cpu, 20);
        let after = per_worker(lab, "tpvs_worker_connections_accepted_total");
        let delta: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let mut expected = vec![0.0; WORKERS];
        expected[cpu] = 20.0;
        assert_eq!(delta, expected, "{when}: 20 connections whose SYN was handled on CPU {cpu}, per worker\n{}", lab.tpvs_log());
    }
}

#[test]
fn connections_go_to_the_worker_on_the_cpu_that_took_the_syn() {
    let cpus = allowed_cpus();
    let Some(mut lab) = lab(1, &[0]) else { return };
    lab.write_manifests(&manifests(&[Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1")]));
    lab.start_tpvs(&["--worker-steering", "cpu"]);
    lab.wait_serving(VIP);
    if cpus != (0..WORKERS).collect::<Vec<_>>() {
        // Not one worker per CPU here: the daemon must say it falls back, and still serve.
        assert!(lab.tpvs_log().contains("steering by hash instead"), "CPUs {cpus:?}: {}", lab.tpvs_log());
        eprintln!("CPUs {cpus:?}, not 0..{WORKERS}: only the fallback is checked");
        return;
    }
    assert!(lab.tpvs_log().contains("steering=Cpu"), "{}", lab.tpvs_log());
    check_steering(&lab, "first instance");

    // Each worker's CPU time is reported; nothing is left open once the clients are done.
    let busy = per_worker(&lab, "tpvs_worker_busy_seconds_total");
    assert!(busy.iter().all(|b| *b >= 0.0), "{busy:?}");
    let drained = lab.wait_for(Duration::from_secs(5), || per_worker(&lab, "tpvs_worker_connections_open").iter().all(|o| *o == 0.0).then_some(()));
    assert!(drained.is_some(), "open per worker stays {:?}", per_worker(&lab, "tpvs_worker_connections_open"));

    // A takeover passes the same listeners: the successor steers the same way, and an
    // established connection keeps echoing.
    let mut conn = lab.open(VIP).unwrap_or_else(|e| panic!("{e}"));
    let mut old = lab.start_successor(&[]).unwrap_or_else(|| panic!("no running instance"));
    let status = wait_exit(&mut old, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "the predecessor did not hand over and exit: {status:?}\n{}", lab.tpvs_log_of(0));
    assert_eq!(conn.echo("still here").unwrap_or_else(|e| panic!("{e}\n{}", lab.tpvs_log())), "still here");
    check_steering(&lab, "successor");
    drop(conn);
}
