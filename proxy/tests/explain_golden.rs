//! Golden tests of `tpvs explain` over manifests: each `tests/explain/NAME.yaml` starts with
//! `# node: NODE`, may set `# external-ip-cidrs: CIDR,...`, `# cluster-cidr: CIDR,...` and
//! `# bind-address: IP`, and lists the questions to ask as
//! `# ask: DEST [FLAGS]` lines. The real binary answers each; its output, stderr and exit code
//! are pinned in `tests/explain/NAME.txt`. Run with `UPDATE_GOLDEN=1` to rewrite them after
//! an intended change, then read the diff: it is the behaviour change.

mod golden_file;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TPVS: &str = env!("CARGO_BIN_EXE_tpvs");

fn header<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines().take_while(|l| l.starts_with('#')).filter_map(|l| l.strip_prefix(key)).map(str::trim).collect()
}

fn explain(args: &[&str]) -> Output {
    Command::new(TPVS).arg("explain").args(args).output().unwrap_or_else(|e| panic!("running {TPVS}: {e}"))
}

/// The flags that compile `fixture` as its header says.
fn table_flags(fixture: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(fixture).unwrap_or_else(|e| panic!("{fixture:?}: {e}"));
    let mut flags = vec!["--manifests".to_string(), fixture.display().to_string()];
    if let Some(node) = header(&text, "# node: ").first() {
        flags.extend(["--hostname-override".to_string(), node.to_string()]);
    }
    for (key, flag) in [("# external-ip-cidrs: ", "--external-ip-cidrs"), ("# cluster-cidr: ", "--cluster-cidr"), ("# bind-address: ", "--bind-address")] {
        if let Some(value) = header(&text, key).first() {
            flags.extend([flag.to_string(), value.replace(' ', "")]);
        }
    }
    flags
}

fn answers(fixture: &Path) -> String {
    let text = std::fs::read_to_string(fixture).unwrap_or_else(|e| panic!("{fixture:?}: {e}"));
    let asks = header(&text, "# ask: ");
    assert!(!asks.is_empty(), "{fixture:?} asks nothing");
    let flags = table_flags(fixture);
    let mut out = String::new();
    for ask in asks {
        let mut args: Vec<&str> = ask.split_whitespace().collect();
        args.extend(flags.iter().map(String::as_str));
        let o = explain(&args);
        out.push_str(&format!("$ tpvs explain {ask}\n"));
        out.push_str(&String::from_utf8_lossy(&o.stdout));
        for l in String::from_utf8_lossy(&o.stderr).lines() {
            out.push_str(&format!("stderr: {l}\n"));
        }
        out.push_str(&format!("exit: {}\n\n", o.status.code().map_or("signal".to_string(), |c| c.to_string())));
    }
    out
}

fn check(name: &str) {
    let fixture = PathBuf::from(format!("tests/explain/{name}.yaml"));
    let expected_path = PathBuf::from(format!("tests/explain/{name}.txt"));
    let actual = answers(&fixture);
    golden_file::compare(name, "answers", &expected_path, &actual);
}

#[test]
fn golden_explain_endpoint_exclusions_ipv4() {
    check("endpoints");
}

#[test]
fn golden_explain_endpoint_exclusions_ipv6_and_deterministic_picks() {
    check("endpoints_v6");
}

#[test]
fn golden_explain_not_proxied() {
    check("not_proxied");
}

#[test]
fn golden_explain_local_traffic_short_circuit_ipv4() {
    check("local_traffic");
}

#[test]
fn golden_explain_local_traffic_short_circuit_ipv6() {
    check("local_traffic_v6");
}

#[test]
fn golden_explain_recipe_service_does_not_answer() {
    check("recipe_no_answer");
}

#[test]
fn golden_explain_recipe_nodeport_unreachable() {
    check("recipe_nodeport");
}

#[test]
fn golden_explain_recipe_load_balancer_pending() {
    check("recipe_lb_pending");
}

/// Bad input: one line on stderr naming what is wrong, nothing on stdout, exit code 2, and
/// nothing read (the manifests path does not even exist).
#[test]
fn bad_input_is_one_clear_line_and_exit_2() {
    for (args, want) in [
        (vec!["10.96.0.10"], "needs a port"),
        (vec!["not-an-ip:80"], "is not an IP address"),
        (vec!["10.96.0.10:65536"], "out of range 1-65535"),
        (vec!["70000"], "out of range 1-65535"),
        (vec!["fd00::10:80"], "needs brackets"),
        (vec!["[fd00::10]:80", "--from", "10.0.0.5"], "is IPv4 but DEST [fd00::10]:80 is IPv6"),
        (vec!["10.96.0.10:80", "--from", "fd00::5"], "is IPv6 but DEST 10.96.0.10:80 is IPv4"),
        (vec!["10.96.0.10:80", "--from", "10.0.0.5:99999"], "out of range 1-65535"),
    ] {
        let mut all = args.clone();
        all.extend(["--manifests", "/nonexistent/tpvs-explain-fixture", "--hostname-override", "n"]);
        let o = explain(&all);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(o.stdout.is_empty(), "{args:?}: printed {:?}", String::from_utf8_lossy(&o.stdout));
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("tpvs explain: ") && stderr.contains(want), "{args:?}: {stderr}");
    }
    // A protocol tpvs cannot intercept is a usage error too (clap's, also exit 2).
    let o = explain(&["10.96.0.10:80", "--protocol", "sctp"]);
    assert_eq!(o.status.code(), Some(2));
}

/// Without a daemon to ask, the answer is an error (exit 2), not a verdict.
#[test]
fn no_daemon_is_an_error_not_a_verdict() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    drop(listener);
    let o = explain(&["10.96.0.10:80", "--server", &addr.to_string()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is `tpvs run` up?") && stderr.lines().count() == 1, "{stderr}");
}

/// `--json` carries the documented fields, and the exit code follows its outcome.
#[test]
fn json_schema_and_exit_code_agree() {
    let fixture = PathBuf::from("tests/explain/recipe_nodeport.yaml");
    let flags = table_flags(&fixture);
    for (dest, outcome, code) in [("30080", "forwarded", 0), ("30081", "dropped", 1), ("30082", "no_frontend", 1)] {
        let mut args = vec![dest, "--json", "--from", "203.0.113.9"];
        args.extend(flags.iter().map(String::as_str));
        let o = explain(&args);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{dest}: {e}"));
        assert_eq!(v["outcome"], outcome, "{v}");
        assert_eq!(o.status.code(), Some(code), "{dest}");
        for field in ["destination", "protocol", "client", "source", "generation", "diagnosis", "frontend", "nearest", "endpoints", "decision", "experience", "live"] {
            assert!(v.get(field).is_some(), "{dest}: {field} missing from {v}");
        }
        assert_eq!(v["source"], "manifests");
        assert!(v["live"].is_null(), "offline has no live evidence");
    }
    // The short-circuit of local traffic: a pod, the node (its --bind-address), an outsider.
    let flags = table_flags(&PathBuf::from("tests/explain/local_traffic.yaml"));
    for (from, outcome, code, applies, client_is) in [
        ("10.244.1.9", "forwarded", 0, true, Some("pod")),
        ("192.168.1.10", "forwarded", 0, true, Some("node")),
        ("203.0.113.7", "dropped", 1, false, None),
    ] {
        let mut args = vec!["192.0.2.90:80", "--json", "--from", from];
        args.extend(flags.iter().map(String::as_str));
        let o = explain(&args);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{from}: {e}"));
        assert_eq!((v["outcome"].as_str(), o.status.code()), (Some(outcome), Some(code)), "{from}: {v}");
        let sc = &v["short_circuit"];
        assert_eq!((sc["applies"].as_bool(), sc["client_is"].as_str()), (Some(applies), client_is), "{from}: {v}");
        assert_eq!((sc["pod_sources"][0].as_str(), sc["endpoints"].as_u64()), (Some("10.244.0.0/16"), Some(2)), "{from}: {v}");
        let used = v["endpoints"].as_array().map_or(0, |e| e.iter().filter(|e| e["used"] == true).count());
        assert_eq!(used, if applies { 2 } else { 0 }, "{from}: the set this client is served from: {v}");
    }
}

/// The compiler's record and the backend set it built agree, frontend by frontend (and for the
/// short-circuit's cluster-wide set), over every fixture of both golden suites: an endpoint is recorded as used (or as used but of weight 0)
/// exactly when the scheduler has it, so the explanation cannot drift from the table.
#[test]
fn every_recorded_verdict_matches_the_backend_set_the_scheduler_got() {
    use controlplane::explain::{EndpointVerdict, Exclusion};
    use controlplane::{CompileOptions, ManifestSource, Publisher};
    use std::collections::BTreeSet;
    use std::sync::Arc;

    let mut fixtures: Vec<PathBuf> = Vec::new();
    for dir in ["tests/golden", "tests/explain"] {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir}: {e}")).flatten() {
            if e.path().extension().is_some_and(|x| x == "yaml") {
                fixtures.push(e.path());
            }
        }
    }
    assert!(fixtures.len() >= 15, "{fixtures:?}");
    let mut checked = 0;
    for fixture in fixtures {
        let text = std::fs::read_to_string(&fixture).unwrap_or_default();
        let node = header(&text, "# node: ").first().map(|s| s.to_string());
        let publisher = Arc::new(Publisher::new());
        let opts = CompileOptions { node_name: node, ..CompileOptions::default() };
        ManifestSource::new(fixture.clone(), opts, Arc::clone(&publisher)).reload();
        let table = publisher.current();
        // Each frontend's own set, and the short-circuit's cluster-wide set with its record.
        let sets = table.frontends().flat_map(|fe| {
            std::iter::once((fe, &fe.scheduler, &fe.explanation))
                .chain(fe.local_origin.as_ref().map(|lo| (fe, &lo.scheduler, &lo.explanation)))
        });
        for (fe, scheduler, explanation) in sets {
            let in_set: BTreeSet<String> = scheduler.backends().iter().map(|b| b.addr.to_string()).collect();
            let recorded: BTreeSet<String> = explanation
                .endpoints
                .iter()
                .filter(|e| e.verdict.is_used() || e.verdict == EndpointVerdict::Excluded(Exclusion::WeightZero))
                .map(|e| e.address())
                .collect();
            assert_eq!(in_set, recorded, "{fixture:?} {} {}", fe.key, fe.service);
            let zero: BTreeSet<String> = scheduler.backends().iter().filter(|b| b.weight == 0).map(|b| b.addr.to_string()).collect();
            let recorded_zero: BTreeSet<String> = explanation
                .endpoints
                .iter()
                .filter(|e| e.verdict == EndpointVerdict::Excluded(Exclusion::WeightZero))
                .map(|e| e.address())
                .collect();
            assert_eq!(zero, recorded_zero, "{fixture:?} {} {}", fe.key, fe.service);
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} frontends checked");
}
