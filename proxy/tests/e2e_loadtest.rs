//! `tpvs-loadtest external` through a real `tpvs run`: three of the `one-slow` scenario's
//! profiled backends (#4, #5 — the slow one — and #6), each in its own backend namespace, behind
//! two ClusterIP Services of the lab (`rr` and `ewma`), loaded from the client namespace with the
//! loadtest's own command line. Checks what the report says about the backends that answered:
//! exactly those three, by their own indices (not the scenario's eleven), shares over them, no
//! "pinned" flag for a scheduler that spreads over them — and that the daemon's ewma shows its
//! effect against rr.

mod lab;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser as _;
use lab::{BACKEND_PORT, Svc, in_netns, manifests};
use loadtest::backends::{self, Epoch, Farm, Spec};
use loadtest::summary::{Report, RunResult, pinned};

/// The scenario backends the three pods play: #5 is one-slow's 8× slower one.
const PLAYED: [usize; 3] = [4, 5, 6];
const SLOW: usize = 5;

fn backend_addr(k: usize) -> SocketAddr {
    format!("10.1.{k}.2:{BACKEND_PORT}").parse().unwrap_or_else(|e| panic!("{e}"))
}

/// Starts the profiled backend of pod `k` inside its namespace (its sockets stay there).
fn serve(lab: &lab::Lab, k: usize, index: usize) -> Farm {
    let scenario = loadtest::scenario::find("one-slow").unwrap_or_else(|| panic!("one-slow scenario missing"));
    let profile = scenario.backends[index].clone();
    let spec = Spec { index, bind: backend_addr(k), profile };
    let epoch = Epoch { measure_from: Instant::now() };
    in_netns(&lab.backends[k], || backends::start(&[spec], 7, epoch, false, 1)).unwrap_or_else(|e| panic!("backend {k}: {e}"))
}

/// Runs `tpvs-loadtest external` against `vip` from the client namespace; its JSON report.
fn external(lab: &lab::Lab, vip: &str, label: &str) -> RunResult {
    let json = lab.dir.join(format!("{label}.json"));
    let json_arg = json.to_string_lossy().into_owned();
    let args =
        ["tpvs-loadtest", "external", "--target", vip, "--rate", "300", "--warmup", "1", "--duration", "3", "--timeout", "5"];
    let mut argv: Vec<&str> = args.to_vec();
    argv.extend(["--label", label, "--json", &json_arg, "--quiet"]);
    let cli = loadtest::cli::Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{e}"));
    let code = in_netns(&lab.client, || loadtest::cli::main(cli)).unwrap_or_else(|e| panic!("external {label}: {e:#}"));
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("{}: {e}", json.display()));
    let mut report: Report = serde_json::from_str(&text).unwrap_or_else(|e| panic!("report: {e}"));
    assert_eq!(report.scenarios.len(), 1);
    let mut sr = report.scenarios.remove(0);
    assert_eq!(sr.runs.len(), 1);
    sr.runs.remove(0)
}

fn share(run: &RunResult, index: usize) -> f64 {
    run.backends.iter().find(|b| b.index == index).map_or(0.0, |b| b.share)
}

#[test]
fn external_mode_reports_the_backends_that_answered_through_tpvs_run() {
    let Some(mut lab) = lab::lab(3, &[]) else { return };
    let farms: Vec<Farm> = PLAYED.iter().enumerate().map(|(k, &index)| serve(&lab, k, index)).collect();
    let svc = |name: &str, vip: &str, scheduler: &str| {
        (0..PLAYED.len())
            .fold(Svc::new(name, vip), |s, k| s.endpoint(&format!("10.1.{k}.2"), "node1"))
            .annotate("tpvs/scheduler", scheduler)
    };
    lab.write_manifests(&manifests(&[svc("lt-rr", "10.96.0.10", "rr"), svc("lt-ewma", "10.96.0.11", "ewma")]));
    lab.start_tpvs(&[]);
    for vip in ["10.96.0.10:80", "10.96.0.11:80"] {
        let up = lab.wait_for(Duration::from_secs(10), || lab.connect_from(&lab.client, vip, Duration::from_millis(300)).ok());
        assert!(up.is_some(), "{vip} never answered; tpvs log:\n{}", lab.tpvs_log());
    }

    let rr = external(&lab, "10.96.0.10:80", "rr");
    let ewma = external(&lab, "10.96.0.11:80", "ewma");
    for r in [&rr, &ewma] {
        assert_eq!(r.sent, r.recorded + r.failed, "{}: every request accounted for", r.scheduler);
        assert!(r.success_rate >= 0.99, "{}: success {} ({:?})", r.scheduler, r.success_rate, r.failures);
        assert!(r.backends.iter().all(|b| b.requests > 0), "{}: only backends that answered are listed: {:?}", r.scheduler, r.backends);
        let listed: Vec<usize> = r.backends.iter().map(|b| b.index).collect();
        assert!(listed.iter().all(|i| PLAYED.contains(i)), "{}: listed {listed:?}, pods play {PLAYED:?}", r.scheduler);
        let total: f64 = r.backends.iter().map(|b| b.share).sum();
        assert!((total - 1.0).abs() < 1e-9, "{}: shares over the answering backends sum to {total}", r.scheduler);
        assert!(!pinned(r), "{}: spreads over the backends that answered, not pinned: {:?}", r.scheduler, r.backends);
        assert!(!r.per_second.is_empty(), "{}: per-second shares recorded", r.scheduler);
    }
    // rr: all three answered, a third each (the scenario's other eight are nowhere).
    assert_eq!(rr.backends.iter().map(|b| b.index).collect::<Vec<_>>(), PLAYED.to_vec());
    for i in PLAYED {
        assert!((share(&rr, i) - 1.0 / 3.0).abs() < 0.05, "rr share of #{i}: {}", share(&rr, i));
    }
    // The real daemon's ewma steers away from the slow pod, and the tail shows it.
    assert!(share(&ewma, SLOW) < share(&rr, SLOW) / 2.0, "ewma slow share {} vs rr {}", share(&ewma, SLOW), share(&rr, SLOW));
    assert!(ewma.latency.p99 < rr.latency.p99, "ewma p99 {} ms vs rr {} ms", ewma.latency.p99, rr.latency.p99);
    drop(farms);
}
