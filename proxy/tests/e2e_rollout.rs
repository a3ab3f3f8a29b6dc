//! A DaemonSet rollout on one node, against the real `tpvs run` in the namespace lab, under the
//! DaemonSet's capability set: the new pod's instance takes over from the old pod's, whose
//! container then exits 0 and is restarted by the kubelet (`restartPolicy: Always`) until the
//! DaemonSet controller deletes the pod. The restarted old instance must not take the node
//! back: it is refused and stands by, owning nothing, until stopped. Across the takeovers the
//! health server and the health-check node ports keep their sockets (handed over with the
//! data path's), so load-balancer probes never meet a refused or reset connection. Root and
//! nftables/iproute2 required (or `TPVS_SKIP_E2E=1`).

mod admin_http;
mod lab;

use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lab::{Lab, Privileges, Svc, lab, manifests, wait_child};

const VIP: &str = "10.96.0.10:80";

const HEALTHZ: &str = "10.0.0.1:10256";
const HCNP: u16 = 32100;

/// A ClusterIP Service, and a LoadBalancer one with `externalTrafficPolicy: Local` whose
/// health-check node port answers 200 (its endpoint is on this node).
fn services() -> String {
    let mut lb = Svc::new("lb", "10.96.0.40").endpoint("10.1.0.2", "node1");
    lb.kind = "LoadBalancer";
    lb.node_port = Some(30140);
    lb.external_policy = "Local";
    lb.lb_ingress = Some("10.99.0.40".into());
    // The lab's Service has no health-check node port field; it sits beside the policy.
    let lb = lb.yaml().replacen("  externalTrafficPolicy: Local\n", &format!("  externalTrafficPolicy: Local\n  healthCheckNodePort: {HCNP}\n"), 1);
    format!("{}---\n{lb}", manifests(&[Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1")]))
}

fn start(instance: &str) -> Option<Lab> {
    let mut lab = lab(1, &[0])?;
    lab.privileges = Privileges::DaemonSet;
    lab.write_manifests(&services());
    as_instance(&mut lab, instance);
    lab.start_tpvs(&[]);
    lab.wait_serving(VIP);
    Some(lab)
}

/// The next `tpvs run` gets `--instance-id` from the environment, as the DaemonSet passes
/// the pod's UID.
fn as_instance(lab: &mut Lab, instance: &str) {
    lab.wrapper = vec!["env".into(), format!("TPVS_INSTANCE_ID={instance}")];
}

/// Starts the instance of pod `instance` beside the tracked one; returns the one it replaces.
fn successor(lab: &mut Lab, instance: &str) -> Child {
    as_instance(lab, instance);
    lab.start_successor(&[]).unwrap_or_else(|| panic!("no running instance"))
}

/// Listening sockets (TCP and UDP) held by process `pid` in the node's namespace.
fn listening(lab: &Lab, pid: u32) -> Vec<String> {
    let out = lab.node_sh(&["ss", "-Hltunp"]).unwrap_or_default();
    out.lines().filter(|l| l.contains(&format!("pid={pid},"))).map(str::to_string).collect()
}

/// What `tpvs cleanup` says about the owner of the table (it refuses while one runs).
fn owner(lab: &Lab) -> String {
    match lab.node_sh(&[env!("CARGO_BIN_EXE_tpvs"), "cleanup"]) {
        Ok(out) => format!("nobody (cleanup ran: {out})"),
        Err(e) => e,
    }
}

/// `tpvs ready` as the pod of `instance` runs it (the DaemonSet's readiness check).
fn ready(lab: &Lab, instance: &str) -> Result<String, String> {
    lab.node_sh(&["env", &format!("TPVS_INSTANCE_ID={instance}"), env!("CARGO_BIN_EXE_tpvs"), "ready"])
}

#[test]
fn a_restarted_old_instance_is_refused_and_stands_by_while_the_new_one_serves() {
    let Some(mut lab) = start("pod-x") else { return };
    assert_eq!(ready(&lab, "pod-x"), Ok(String::new()), "the old pod is ready while it owns the node");
    // The new pod starts beside the old one: Y takes over, X exits 0.
    let mut x = successor(&mut lab, "pod-y");
    let status = wait_child(&mut x, Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "X must hand over and exit 0: {status:?}\n{}", lab.tpvs_log_of(0));
    let y_pid = lab.tpvs_pid().unwrap_or_default();

    // The kubelet restarts the old pod's container: X again, with the pod's UID.
    let mut y = successor(&mut lab, "pod-x");
    let x_again = lab.tpvs_pid().unwrap_or_default();
    let standing = lab.wait_for(Duration::from_secs(10), || lab.tpvs_log_of(2).contains("standing by, owning nothing").then_some(()));
    assert!(standing.is_some(), "the restarted X did not stand by:\n{}", lab.tpvs_log_of(2));
    let log = lab.tpvs_log_of(2);
    assert!(
        log.contains(r#"instance "pod-x" already handed over to this one (instance "pod-y") and is being replaced"#),
        "the refusal names both instances:\n{log}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(matches!(y.try_wait(), Ok(None)), "Y must keep running:\n{}", lab.tpvs_log_of(1));
    assert_eq!(listening(&lab, x_again), Vec::<String>::new(), "the standing-by X holds a listening socket");
    assert!(owner(&lab).contains(&format!("pid {y_pid}")), "Y must still own the table: {}", owner(&lab));
    assert!(lab.tpvs_log_of(1).contains("a takeover was refused or failed; still serving"), "{}", lab.tpvs_log_of(1));
    for _ in 0..5 {
        lab.hello(VIP).unwrap_or_else(|e| panic!("Y stopped serving beside the standing-by X: {e}\n{}", lab.tpvs_log_of(1)));
    }
    // The readiness check: Y's pod is ready, the old pod (X standing by) is not.
    assert_eq!(ready(&lab, "pod-y"), Ok(String::new()));
    let not_ready = ready(&lab, "pod-x").err().unwrap_or_default();
    assert!(not_ready.contains(&format!(r#"owned by instance "pod-y" (pid {y_pid}), not by this one ("pod-x")"#)), "{not_ready}");

    // A later rollout: a new pod Z still takes over from Y, while X keeps standing by.
    let mut x_again_child = successor(&mut lab, "pod-z");
    assert!(matches!(x_again_child.try_wait(), Ok(None)), "the refused X must stay up (an exit would only be restarted):\n{log}");
    let status = wait_child(&mut y, Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "Y must hand over to Z and exit 0: {status:?}\n{}", lab.tpvs_log_of(1));
    lab.hello(VIP).unwrap_or_else(|e| panic!("Z does not serve: {e}\n{}", lab.tpvs_log()));
    assert!(matches!(x_again_child.try_wait(), Ok(None)), "X must keep standing by");

    // Deleting the old pod stops X at once (it owns nothing to drain).
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(libc::pid_t::try_from(x_again).unwrap_or(0), libc::SIGTERM) };
    let status = wait_child(&mut x_again_child, Duration::from_secs(2));
    assert!(status.is_some_and(|s| s.success()), "a standing-by instance exits 0 on SIGTERM: {status:?}");
    lab.hello(VIP).unwrap_or_else(|e| panic!("after X stopped: {e}\n{}", lab.tpvs_log()));
}

/// Probes from the client: new connections to `addr`, one GET each, in a loop.
#[derive(Default)]
struct Probes {
    stop: AtomicBool,
    ok: AtomicUsize,
    failed: Mutex<Vec<String>>,
}

fn probe_in_a_loop(lab: &Lab, addr: &str, path: &'static str, probes: &Arc<Probes>) -> std::thread::JoinHandle<()> {
    let (client, addr, probes) = (lab.client.clone(), addr.to_string(), Arc::clone(probes));
    std::thread::spawn(move || {
        while !probes.stop.load(Ordering::Relaxed) {
            match admin_http::get(&client, &addr, path) {
                Ok(r) if r.status == 200 => {
                    probes.ok.fetch_add(1, Ordering::Relaxed);
                }
                other => probes.failed.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{addr}{path}: {other:?}")),
            }
        }
    })
}

#[test]
fn health_probes_meet_no_refused_or_reset_connection_across_takeovers() {
    let Some(mut lab) = start("pod-0") else { return };
    let client = lab.client.clone();
    let hcnp = format!("10.0.0.1:{HCNP}");
    admin_http::wait_reply(&lab, &client, &hcnp, "/", "the health-check node port", |r| r.status == 200);
    let probes = Arc::new(Probes::default());
    let mut threads = Vec::new();
    for _ in 0..3 {
        threads.push(probe_in_a_loop(&lab, HEALTHZ, "/healthz", &probes));
        threads.push(probe_in_a_loop(&lab, &hcnp, "/", &probes));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut took = Vec::new();
    for round in 1..=5 {
        let t0 = Instant::now();
        let mut old = successor(&mut lab, &format!("pod-{round}"));
        let status = wait_child(&mut old, Duration::from_secs(5));
        took.push(t0.elapsed());
        assert!(status.is_some_and(|s| s.success()), "round {round}: {status:?}\n{}", lab.tpvs_log_of(round - 1));
        let open = lab.wait_for(Duration::from_secs(2), || lab.tpvs_log().contains("health-check node port open").then_some(()));
        assert!(open.is_some(), "round {round}: the successor did not open the health-check node port:\n{}", lab.tpvs_log());
        std::thread::sleep(Duration::from_millis(400));
    }
    probes.stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let failed = std::mem::take(&mut *probes.failed.lock().unwrap_or_else(|p| p.into_inner()));
    let ok = probes.ok.load(Ordering::Relaxed);
    eprintln!("5 takeovers ({took:?}): {ok} probes answered 200, {} failed", failed.len());
    assert!(failed.is_empty(), "probes failed across the takeovers: {failed:?}");
    assert!(ok > 500, "too few probes to prove anything: {ok}");
    // The last owner holds one socket per admin address, not a second one bound beside.
    let pid = lab.tpvs_pid().unwrap_or_default();
    let out = lab.node_sh(&["ss", "-Hltnp"]).unwrap_or_default();
    for port in [":10256 ", &format!(":{HCNP} ")] {
        let lines = out.lines().filter(|l| l.contains(port)).count();
        assert_eq!(lines, 1, "one listening socket on {port}: {out}");
        assert!(out.lines().any(|l| l.contains(port) && l.contains(&format!("pid={pid},"))), "owned by the last instance: {out}");
    }
}

#[test]
fn the_old_pod_stays_ready_while_the_new_one_loads_its_table() {
    let Some(mut lab) = start("pod-a") else { return };
    // The new pod cannot read its Services yet (an API server still listing, say): it holds
    // the listeners it received but has not taken over.
    let aside = lab.dir.join("aside.yaml");
    std::fs::rename(&lab.manifests, &aside).unwrap_or_else(|e| panic!("{e}"));
    let mut a = successor(&mut lab, "pod-b");
    let waiting = lab.wait_for(Duration::from_secs(10), || lab.tpvs_log_of(0).contains("listeners sent to a successor").then_some(()));
    assert!(waiting.is_some(), "no takeover began:\n{}", lab.tpvs_log_of(0));
    std::thread::sleep(Duration::from_millis(1500));
    // Meanwhile the old pod is the node's proxy: ready, answering its probes, serving.
    for _ in 0..3 {
        assert_eq!(ready(&lab, "pod-a"), Ok(String::new()), "the old pod must stay ready while the new one loads");
        let not_yet = ready(&lab, "pod-b").err().unwrap_or_default();
        assert!(not_yet.contains(r#"owned by instance "pod-a""#), "{not_yet}");
        lab.hello(VIP).unwrap_or_else(|e| panic!("the old pod stopped serving: {e}"));
    }
    assert!(matches!(a.try_wait(), Ok(None)), "the old pod let go before the new one was ready");
    std::fs::rename(&aside, &lab.manifests).unwrap_or_else(|e| panic!("{e}"));
    let status = wait_child(&mut a, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", lab.tpvs_log_of(0));
    let ready_b = lab.wait_for(Duration::from_secs(5), || ready(&lab, "pod-b").ok());
    assert!(ready_b.is_some(), "the new pod is ready once it owns the node: {:?}", ready(&lab, "pod-b"));
    lab.hello(VIP).unwrap_or_else(|e| panic!("{e}"));
}
