//! Start-up and ownership under faults, against the real `tpvs run` in the namespace lab: a
//! busy admin port fails start-up cleanly (an error, no panic, nothing left installed); a
//! second instance on the same nft table with other flags stops without touching the first
//! one's rules, and one with the same flags takes over (see also `e2e_takeover`); rules
//! deleted or flushed under a running instance come back; `/api/table` stays on loopback
//! whatever the metrics address. Root and nftables/iproute2 required (or `TPVS_SKIP_E2E=1`).

mod admin_http;
mod lab;

use std::io::Read as _;
use std::net::TcpListener;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use admin_http::{get, wait_reply};
use lab::{Lab, Svc, in_netns, lab, manifests};

const VIP: &str = "10.96.0.10:80";
const METRICS: &str = "127.0.0.1:10249";
const HEALTHZ: &str = "10.0.0.1:10256";

fn web() -> String {
    manifests(&[Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1")])
}

/// Runs a `tpvs` command to completion in the node namespace (killed after 20 s): exit status
/// and everything it printed.
fn tpvs_once(lab: &Lab, args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.node, env!("CARGO_BIN_EXE_tpvs")])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn tpvs: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tpvs {args:?} did not exit within 20 s");
            }
        }
    };
    let mut out = String::new();
    for pipe in [child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read>), child.stderr.take().map(|p| Box::new(p) as _)]
        .into_iter()
        .flatten()
    {
        let mut p = pipe;
        let _ = p.read_to_string(&mut out);
    }
    (status, out)
}

/// `tpvs run` on the lab's manifests, as the lab starts it, to completion.
fn run_once(lab: &Lab, manifests: &str, extra: &[&str]) -> (ExitStatus, String) {
    let mut args = vec!["run", "--manifests", manifests, "--hostname-override", "node1", "--workers", "1"];
    args.extend_from_slice(extra);
    tpvs_once(lab, &args)
}

fn nft_table(lab: &Lab) -> Option<String> {
    lab.node_sh(&["nft", "list", "table", "inet", "tpvs"]).ok()
}

fn fwmark_rules(lab: &Lab) -> String {
    let v4 = lab.node_sh(&["ip", "-4", "rule", "show"]).unwrap_or_default();
    let v6 = lab.node_sh(&["ip", "-6", "rule", "show"]).unwrap_or_default();
    format!("{v4}{v6}").lines().filter(|l| l.contains("fwmark 0x7470")).collect::<Vec<_>>().join("\n")
}

/// The value of one series in a Prometheus exposition.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|v| v.trim().parse().ok()))
}

#[test]
fn a_busy_admin_port_fails_start_up_with_an_error_and_leaves_nothing_installed() {
    let Some(lab) = lab(1, &[0]) else { return };
    lab.write_manifests(&web());
    let manifests = lab.manifests.to_string_lossy().into_owned();
    for (taken, port) in [("127.0.0.1:10249", "10249"), ("0.0.0.0:10256", "10256")] {
        // Someone else (kube-proxy, say) holds the port in the node's namespace.
        let holder = in_netns(&lab.node, || TcpListener::bind(taken)).unwrap_or_else(|e| panic!("bind {taken}: {e}"));
        let (status, out) = run_once(&lab, &manifests, &[]);
        assert!(!status.success(), "start-up with {taken} taken must fail: {out}");
        assert_ne!(status.code(), Some(101), "a start-up failure is an error, not a panic: {out}");
        assert!(!out.contains("panicked"), "{out}");
        assert!(out.contains(port) && out.contains("in use"), "the error names the port: {out}");
        assert_eq!(nft_table(&lab), None, "the nft table was left behind with {taken} taken: {out}");
        assert_eq!(fwmark_rules(&lab), "", "a fwmark rule was left behind with {taken} taken: {out}");
        drop(holder);
    }
}

#[test]
fn a_second_instance_with_other_flags_is_refused_and_one_with_the_same_flags_takes_over() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    lab.write_manifests(&web());
    lab.start_tpvs(&[]);
    lab.wait_serving(VIP);
    wait_reply(&lab, &lab.client.clone(), HEALTHZ, "/healthz", "first instance healthy", |r| r.status == 200);

    // Another configuration (no Services at all): before the ownership check it replaced the
    // first instance's table with an empty one and left it there.
    let other = lab.dir.join("other.yaml");
    std::fs::write(&other, "").unwrap_or_else(|e| panic!("write: {e}"));
    let (status, out) = run_once(&lab, &other.to_string_lossy(), &["--proxy-port", "15101", "--udp-proxy-port", "15102"]);
    assert!(!status.success(), "{out}");
    assert_ne!(status.code(), Some(101), "{out}");
    assert!(!out.contains("panicked"), "{out}");
    assert!(
        out.contains("cannot take over from the running tpvs (pid ")
            && out.contains("its flags differ (--proxy-port: running 15001, this one 15101; --udp-proxy-port: running 15002, this one 15102; --workers: running 2, this one 1)"),
        "the error says who runs and which flags differ: {out}"
    );

    // The first instance is untouched: its table, its routing, its answers.
    let table = nft_table(&lab).unwrap_or_default();
    assert!(table.contains("10.96.0.10"), "the running instance's table was replaced: {table}");
    assert_ne!(fwmark_rules(&lab), "");
    for _ in 0..4 {
        let h = lab.hello(VIP).unwrap_or_else(|e| panic!("the first instance stopped forwarding: {e}\n{}", lab.tpvs_log()));
        assert_eq!(h.backend, "be0");
    }
    let health = get(&lab.client.clone(), HEALTHZ, "/healthz").unwrap_or_else(|e| panic!("healthz: {e}"));
    assert_eq!(health.status, 200, "{health:?}");

    // `tpvs cleanup` refuses while the instance runs, and says why.
    let (status, out) = tpvs_once(&lab, &["cleanup"]);
    assert!(!status.success(), "cleanup must refuse while an instance owns the table: {out}");
    assert!(out.contains("a running tpvs (pid ") && out.contains("--force"), "{out}");
    assert!(nft_table(&lab).is_some_and(|t| t.contains("10.96.0.10")), "cleanup touched the running instance's table");
    lab.hello(VIP).unwrap_or_else(|e| panic!("after a refused cleanup: {e}"));

    // The same flags: the second instance takes over, the first exits 0 by itself, leaving
    // the rules in place for its successor, which forwards.
    let first = lab.tpvs_pid();
    let mut old = lab.start_successor(&[]).unwrap_or_else(|| panic!("no running instance"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match old.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = old.kill();
                let _ = old.wait();
                break None;
            }
        }
    };
    assert!(status.is_some_and(|s| s.success()), "the first instance must hand over and exit 0: {status:?}\n{}", lab.tpvs_log_of(0));
    assert_ne!(lab.tpvs_pid(), first);
    assert!(nft_table(&lab).is_some_and(|t| t.contains("10.96.0.10")), "the rules stay for the successor");
    assert_ne!(fwmark_rules(&lab), "");
    lab.hello(VIP).unwrap_or_else(|e| panic!("the successor does not forward: {e}\n{}", lab.tpvs_log()));

    // Stopped, the owner removes its rules and frees the name: cleanup then succeeds.
    assert!(lab.stop_tpvs(libc::SIGTERM), "clean shutdown");
    assert_eq!(nft_table(&lab), None);
    let (status, out) = tpvs_once(&lab, &["cleanup"]);
    assert!(status.success(), "{out}");
}

#[test]
fn rules_deleted_or_flushed_under_a_running_instance_come_back() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    lab.write_manifests(&web());
    // The default check interval (3 s): what a node runs.
    lab.start_tpvs(&[]);
    lab.wait_serving(VIP);
    let node = lab.node.clone();
    let reasserted = |what: &str| {
        let m = get(&node, METRICS, "/metrics").unwrap_or_else(|e| panic!("metrics: {e}"));
        series(&m.body, &format!("tpvs_rules_reasserted_total{{what=\"{what}\"}}"))
    };
    assert_eq!(reasserted("nft_table").unwrap_or(0.0), 0.0);
    assert_eq!(reasserted("policy_routing").unwrap_or(0.0), 0.0);

    // Someone (an operator, another tool) deletes the table and the policy-routing rule.
    lab.node_sh(&["nft", "delete", "table", "inet", "tpvs"]).unwrap_or_else(|e| panic!("{e}"));
    for fam in ["-4", "-6"] {
        lab.node_sh(&["ip", fam, "rule", "del", "fwmark", "0x7470", "lookup", "7470"]).unwrap_or_else(|e| panic!("{e}"));
    }
    let gone = Instant::now();
    // Check interval (3 s) + margin.
    let back = lab.wait_for(Duration::from_secs(6), || lab.hello(VIP).ok());
    assert!(back.is_some(), "forwarding did not resume after the table was deleted; log:\n{}", lab.tpvs_log());
    eprintln!("forwarding resumed {:?} after the table and rule were deleted", gone.elapsed());
    assert!(nft_table(&lab).is_some_and(|t| t.contains("10.96.0.10")));
    assert_ne!(fwmark_rules(&lab), "");
    assert!(reasserted("nft_table").is_some_and(|v| v >= 1.0), "the re-assert is counted");
    assert!(reasserted("policy_routing").is_some_and(|v| v >= 1.0), "the re-assert is counted");
    assert!(lab.tpvs_log().contains("the nft table changed under tpvs"), "and logged");

    // Flushed (chains and maps stay, rules go): an alteration, not a deletion. And the local
    // route the rule points at, flushed with its routing table.
    let before = reasserted("nft_table").unwrap_or(0.0);
    let routing_before = reasserted("policy_routing").unwrap_or(0.0);
    lab.node_sh(&["nft", "flush", "table", "inet", "tpvs"]).unwrap_or_else(|e| panic!("{e}"));
    lab.node_sh(&["ip", "-4", "route", "flush", "table", "7470"]).unwrap_or_else(|e| panic!("{e}"));
    let seen = lab.wait_for(Duration::from_secs(6), || reasserted("nft_table").filter(|v| *v > before));
    assert!(seen.is_some(), "a flushed table was not re-asserted; log:\n{}", lab.tpvs_log());
    let seen = lab.wait_for(Duration::from_secs(6), || reasserted("policy_routing").filter(|v| *v > routing_before));
    assert!(seen.is_some(), "a flushed route was not re-asserted; log:\n{}", lab.tpvs_log());
    let route = lab.node_sh(&["ip", "-4", "route", "show", "table", "7470"]).unwrap_or_default();
    assert!(route.contains("local default dev lo"), "{route}");
    lab.wait_for(Duration::from_secs(6), || lab.hello(VIP).ok())
        .unwrap_or_else(|| panic!("forwarding did not resume after a flush; log:\n{}", lab.tpvs_log()));

    // Left alone, the rules are not re-applied: the check is quiet when nothing changed.
    let settled = reasserted("nft_table");
    std::thread::sleep(Duration::from_millis(6500));
    assert_eq!(reasserted("nft_table"), settled, "rules re-applied though nothing changed; log:\n{}", lab.tpvs_log());
}

#[test]
fn the_table_api_is_not_served_on_a_metrics_address_off_loopback() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    lab.write_manifests(&web());
    lab.start_tpvs(&["--metrics-bind-address", "10.0.0.1:10249"]);
    lab.wait_serving(VIP);
    let client = lab.client.clone();
    let node = lab.node.clone();
    let m = wait_reply(&lab, &client, "10.0.0.1:10249", "/metrics", "metrics on the node address", |r| r.status == 200);
    assert!(m.body.contains("tpvs_table_frontends"), "{}", m.body);
    let t = get(&client, "10.0.0.1:10249", "/api/table").unwrap_or_else(|e| panic!("api/table: {e}"));
    assert_eq!(t.status, 404, "the whole table must not be served off loopback: {t:?}");
    let t = get(&node, "10.0.0.1:10249", "/api/table").unwrap_or_else(|e| panic!("api/table: {e}"));
    assert_eq!(t.status, 404, "not even from the node itself on that address: {t:?}");
    // On loopback it is, and `tpvs list` finds it at its default address.
    let t = get(&node, METRICS, "/api/table").unwrap_or_else(|e| panic!("api/table on loopback: {e}"));
    assert_eq!(t.status, 200, "{t:?}");
    assert_eq!(t.json()["frontends"][0]["address"], VIP);
    let (status, out) = tpvs_once(&lab, &["list"]);
    assert!(status.success() && out.contains("TCP  10.96.0.10:80"), "{out}");
}

#[test]
fn on_a_wildcard_metrics_address_the_table_is_served_to_loopback_only() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    lab.write_manifests(&web());
    lab.start_tpvs(&["--metrics-bind-address", "0.0.0.0:10249"]);
    lab.wait_serving(VIP);
    let client = lab.client.clone();
    let node = lab.node.clone();
    wait_reply(&lab, &client, "10.0.0.1:10249", "/metrics", "metrics on the wildcard", |r| r.status == 200);
    let t = get(&client, "10.0.0.1:10249", "/api/table").unwrap_or_else(|e| panic!("api/table: {e}"));
    assert_eq!(t.status, 404, "{t:?}");
    let t = get(&node, METRICS, "/api/table").unwrap_or_else(|e| panic!("api/table on loopback: {e}"));
    assert_eq!(t.status, 200, "{t:?}");
}

#[test]
fn a_killed_instance_leaves_no_lock_and_its_successor_adopts_the_leftovers() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    lab.write_manifests(&web());
    lab.start_tpvs(&[]);
    lab.wait_serving(VIP);
    // SIGKILL: no clean shutdown, the rules stay behind, the kernel frees the lock's name.
    assert!(!lab.stop_tpvs(libc::SIGKILL));
    assert!(nft_table(&lab).is_some(), "a killed instance leaves its rules");
    lab.start_tpvs(&[]);
    lab.wait_serving(VIP);
    assert!(!lab.tpvs_log().contains("another tpvs owns"), "{}", lab.tpvs_log());
    assert_eq!(fwmark_rules(&lab).lines().count(), 2, "one rule per family, not duplicated: {}", fwmark_rules(&lab));
}

/// The pid of `tpvs run` in the lab's node namespace.
fn tpvs_pid(lab: &Lab) -> u32 {
    let pids = lab::sh(&["ip", "netns", "pids", &lab.node]);
    pids.split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "tpvs"))
        .unwrap_or_else(|| panic!("no tpvs process in {}", lab.node))
}

/// CPU seconds of the process's waited-for children (the `nft` and `ip` it ran).
fn children_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // cutime and cstime are fields 16 and 17; `rest` starts at field 3 (state, not numeric).
    let ticks = f.get(12).copied().unwrap_or(0) + f.get(13).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

#[test]
fn scrapes_do_not_run_nft() {
    let Some(mut lab) = lab(1, &[0]) else { return };
    lab.write_manifests(&web());
    lab.start_tpvs(&[]);
    lab.wait_serving(VIP);
    let node = lab.node.clone();
    let pid = tpvs_pid(&lab);
    wait_reply(&lab, &node, METRICS, "/metrics", "metrics up", |r| r.status == 200);
    let before = children_cpu(pid);
    let started = Instant::now();
    for _ in 0..100 {
        let m = get(&node, METRICS, "/metrics").unwrap_or_else(|e| panic!("metrics: {e}"));
        assert!(m.body.contains("tpvs_refused_packets_total"), "{}", m.body);
    }
    let spent = children_cpu(pid) - before;
    // One `nft -j list` costs milliseconds of CPU: run per scrape, 100 scrapes cost ~0.5 s;
    // the rules check runs one listing (and four `ip`, ~10 ms) per 3 s whatever the scrape rate.
    assert!(spent < 0.06, "100 scrapes in {:?} cost {spent:.3} s of child-process CPU", started.elapsed());
    eprintln!("100 scrapes in {:?}: {spent:.3} s of child-process CPU", started.elapsed());
}
