//! The manifests source: reloads, bad edits, directories and hot reload.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use controlplane::{CompileOptions, FrontendKey, ManifestError, ManifestLimits, ManifestSource, Protocol, Publisher};

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tpvs-cp-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {dir:?}: {e}"));
    dir
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
}

fn doc(name: &str, ip: &str, backends: &[&str]) -> String {
    let eps: String = backends.iter().map(|b| format!("  - addresses: [{b}]\n")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: t\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{eps}---\n"
    )
}

fn backends(p: &Publisher, ip: &str) -> Option<Vec<String>> {
    let key = FrontendKey::new(ip.parse().ok()?, 80, Protocol::Tcp);
    p.current().get(&key).map(|f| f.backends().iter().map(|b| b.addr.to_string()).collect())
}

fn source(path: &Path) -> (ManifestSource, Arc<Publisher>) {
    let publisher = Arc::new(Publisher::new());
    (ManifestSource::new(path.to_path_buf(), CompileOptions::default(), Arc::clone(&publisher)), publisher)
}

#[test]
fn malformed_edit_keeps_the_last_good_table() {
    let dir = tempdir("malformed");
    let file = dir.join("svc.yaml");
    write(&file, &doc("web", "10.96.0.1", &["10.1.0.1", "10.1.0.2"]));
    let (mut src, publisher) = source(&file);
    let report = src.reload();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.published, Some(1));

    write(&file, "apiVersion: v1\nkind: Service\nmetadata: {name: web\n  this is: [not yaml\n");
    let report = src.reload();
    assert!(matches!(report.errors.as_slice(), [ManifestError::Yaml { document: 1, .. }]), "{:?}", report.errors);
    assert_eq!(report.published, None, "a broken file must not publish");
    assert_eq!(publisher.generation(), 1);
    assert_eq!(backends(&publisher, "10.96.0.1"), Some(vec!["10.1.0.1:8080".into(), "10.1.0.2:8080".into()]));
    assert_eq!(src.stats().errors_total.load(Ordering::Relaxed), 1);
    assert_eq!(src.stats().last_reload_ok.load(Ordering::Relaxed), 0);

    // A later good edit applies normally.
    write(&file, &doc("web", "10.96.0.1", &["10.1.0.3"]));
    let report = src.reload();
    assert!(report.errors.is_empty());
    assert_eq!(backends(&publisher, "10.96.0.1"), Some(vec!["10.1.0.3:8080".into()]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_bad_object_keeps_its_previous_version_while_others_change() {
    let dir = tempdir("badobj");
    let file = dir.join("svc.yaml");
    write(&file, &format!("{}{}", doc("a", "10.96.0.1", &["10.1.0.1"]), doc("b", "10.96.0.2", &["10.1.0.2"])));
    let (mut src, publisher) = source(&file);
    src.reload();
    // b's Service becomes invalid; a's slice changes.
    let bad_b = doc("b", "10.96.0.999", &["10.1.0.2"]);
    write(&file, &format!("{}{}", doc("a", "10.96.0.1", &["10.1.0.9"]), bad_b));
    let report = src.reload();
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    let msg = report.errors[0].to_string();
    assert!(msg.contains("svc.yaml") && msg.contains("document 3") && msg.contains("t/b"), "{msg}");
    assert_eq!(backends(&publisher, "10.96.0.1"), Some(vec!["10.1.0.9:8080".into()]));
    assert_eq!(backends(&publisher, "10.96.0.2"), Some(vec!["10.1.0.2:8080".into()]), "b keeps its last good version");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn directory_of_files_and_kubectl_list_and_json() {
    let dir = tempdir("dir");
    write(&dir.join("a.yaml"), &doc("a", "10.96.0.1", &["10.1.0.1"]));
    write(
        &dir.join("b.json"),
        r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"b","namespace":"t"},
             "spec":{"clusterIP":"10.96.0.2","ports":[{"name":"http","port":80}]}},
            {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
             "metadata":{"name":"b-1","namespace":"t","labels":{"kubernetes.io/service-name":"b"}},
             "addressType":"IPv4","ports":[{"name":"http","port":8080}],
             "endpoints":[{"addresses":["10.1.0.2"]}]}]}"#,
    );
    write(&dir.join("notes.txt"), "not a manifest");
    let (mut src, publisher) = source(&dir);
    let report = src.reload();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.files, 2);
    assert_eq!(backends(&publisher, "10.96.0.1"), Some(vec!["10.1.0.1:8080".into()]));
    assert_eq!(backends(&publisher, "10.96.0.2"), Some(vec!["10.1.0.2:8080".into()]));

    std::fs::remove_file(dir.join("b.json")).unwrap_or_else(|e| panic!("{e}"));
    src.reload();
    assert_eq!(backends(&publisher, "10.96.0.2"), None, "objects of a deleted file go away");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_path_is_an_error_not_a_crash() {
    let (mut src, publisher) = source(Path::new("/nonexistent/tpvs/manifests.yaml"));
    let report = src.reload();
    assert!(matches!(report.errors.as_slice(), [ManifestError::Read { .. }]));
    assert_eq!(publisher.generation(), 0, "nothing known, nothing published");
}

#[test]
fn hot_reload_follows_the_file() {
    let dir = tempdir("hot");
    let file = dir.join("svc.yaml");
    write(&file, &doc("web", "10.96.0.1", &["10.1.0.1"]));
    let (src, publisher) = source(&file);
    let published = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&published);
    publisher.on_publish(move |t| seen.lock().unwrap_or_else(|p| p.into_inner()).push(t.generation));
    let _watcher = src.spawn(Duration::from_millis(20));
    assert_eq!(publisher.generation(), 1);

    // Replace atomically, the way editors and ConfigMap mounts do.
    let tmp = dir.join(".svc.yaml.tmp");
    write(&tmp, &doc("web", "10.96.0.1", &["10.1.0.1", "10.1.0.2"]));
    std::fs::rename(&tmp, &file).unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while publisher.generation() < 2 {
        assert!(Instant::now() < deadline, "the change was never picked up");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(backends(&publisher, "10.96.0.1"), Some(vec!["10.1.0.1:8080".into(), "10.1.0.2:8080".into()]));
    assert_eq!(*published.lock().unwrap_or_else(|p| p.into_inner()), vec![1, 2], "listeners see every publish, the initial one included");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two Services, a and b, as one file; `cut` leaves b out, as a file cut between two items.
fn two_services(cut: bool) -> String {
    let a = doc("a", "10.96.0.1", &["10.1.0.1"]);
    if cut { a } else { format!("{a}{}", doc("b", "10.96.0.2", &["10.1.0.2"])) }
}

fn watched(file: &Path, settle: Duration) -> (ManifestSource, Arc<Publisher>) {
    let (src, publisher) = source(file);
    (src.with_settle(settle), publisher)
}

#[test]
fn a_file_written_in_pieces_is_applied_only_once_complete() {
    let dir = tempdir("pieces");
    let file = dir.join("svc.yaml");
    write(&file, &doc("web", "10.96.0.1", &["10.1.0.1"]));
    let settle = Duration::from_secs(2);
    let (mut src, publisher) = watched(&file, settle);
    src.reload();
    assert_eq!(publisher.generation(), 1);

    // Rewritten in place, 100 bytes at a time, a poll after each piece, less than the settle
    // time apart: most pieces end inside an object, some parse, none may be applied.
    let next = format!("{}{}", doc("web", "10.96.0.1", &["10.1.0.7"]), doc("db", "10.96.0.2", &["10.1.0.8"]));
    let t0 = Instant::now();
    let mut now = t0;
    let mut f = std::fs::File::create(&file).unwrap_or_else(|e| panic!("{e}"));
    for piece in next.as_bytes().chunks(100) {
        use std::io::Write;
        f.write_all(piece).unwrap_or_else(|e| panic!("{e}"));
        f.flush().unwrap_or_else(|e| panic!("{e}"));
        now += settle / 2;
        assert!(src.poll(now).is_none(), "applied a file caught half-written at {:?}", now - t0);
        assert_eq!(publisher.generation(), 1);
    }
    drop(f);
    // Unchanged since the last poll, but not yet for the settle time.
    assert!(src.poll(now + settle / 2).is_none());
    let report = src.poll(now + settle).unwrap_or_else(|| panic!("the settled file was not applied"));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.published, Some(2));
    assert_eq!(backends(&publisher, "10.96.0.1"), Some(vec!["10.1.0.7:8080".into()]));
    assert_eq!(backends(&publisher, "10.96.0.2"), Some(vec!["10.1.0.8:8080".into()]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_cut_between_items_and_completed_within_the_settle_time_is_never_applied_cut() {
    let dir = tempdir("cut");
    let file = dir.join("svc.yaml");
    write(&file, &two_services(false));
    let settle = Duration::from_millis(500);
    let (mut src, publisher) = watched(&file, settle);
    src.reload();
    let t0 = Instant::now();
    for round in 0..5u32 {
        let start = t0 + settle * 4 * round;
        // The cut form parses cleanly and names fewer objects: applying it would drop b.
        write(&file, &two_services(true));
        assert!(src.poll(start).is_none());
        assert!(src.poll(start + settle / 2).is_none());
        write(&file, &format!("{}# round {round}\n", two_services(false)));
        assert!(src.poll(start + settle - Duration::from_millis(1)).is_none(), "the completed file waits to settle");
        assert!(backends(&publisher, "10.96.0.2").is_some(), "round {round}: b was dropped");
        let report = src.poll(start + settle * 2).unwrap_or_else(|| panic!("round {round}: never applied"));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.services, 2);
    }
    assert_eq!(publisher.generation(), 1, "the table never changed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_edit_is_applied_after_the_settle_time_and_removals_settle_too() {
    let dir = tempdir("settle");
    write(&dir.join("a.yaml"), &doc("a", "10.96.0.1", &["10.1.0.1"]));
    write(&dir.join("b.yaml"), &doc("b", "10.96.0.2", &["10.1.0.2"]));
    let settle = Duration::from_secs(1);
    let (mut src, publisher) = watched(&dir, settle);
    src.reload();
    let t0 = Instant::now();
    assert!(src.poll(t0).is_none(), "nothing changed");
    std::fs::remove_file(dir.join("b.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(src.poll(t0).is_none());
    assert!(backends(&publisher, "10.96.0.2").is_some(), "a removal waits to settle as well");
    let report = src.poll(t0 + settle).unwrap_or_else(|| panic!("the removal was not applied"));
    assert_eq!((report.files, report.parsed, report.services), (1, 0, 1));
    assert_eq!(backends(&publisher, "10.96.0.2"), None);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unchanged_files_are_not_parsed_again() {
    let dir = tempdir("reparse");
    for (k, name) in ["a", "b", "c"].iter().enumerate() {
        write(&dir.join(format!("{name}.yaml")), &doc(name, &format!("10.96.0.{}", k + 1), &["10.1.0.1"]));
    }
    let (mut src, publisher) = watched(&dir, Duration::ZERO);
    fn src_parses(src: &ManifestSource) -> u64 {
        src.stats().files_parsed_total.load(Ordering::Relaxed)
    }
    assert_eq!(src.reload().parsed, 3);
    assert_eq!(src_parses(&src), 3);
    assert_eq!(src.reload().parsed, 0, "nothing changed, nothing read");
    let t = Instant::now();
    assert!(src.poll(t).is_none());
    write(&dir.join("b.yaml"), &doc("b", "10.96.0.9", &["10.1.0.9"]));
    let report = src.poll(t).unwrap_or_else(|| panic!("not applied"));
    assert_eq!(report.parsed, 1, "only the edited file is read");
    assert_eq!(src_parses(&src), 4);
    assert_eq!(backends(&publisher, "10.96.0.9"), Some(vec!["10.1.0.9:8080".into()]));
    assert_eq!(report.services, 3, "the others keep their objects");
    // A broken file, too, is read once per change, not on every poll.
    write(&dir.join("c.yaml"), "kind: [unclosed\n");
    let report = src.poll(t).unwrap_or_else(|| panic!("not applied"));
    assert_eq!((report.parsed, report.errors.len()), (1, 1));
    assert!(src.poll(t).is_none());
    assert_eq!(src_parses(&src), 5);
    assert_eq!(src.stats().errors_total.load(Ordering::Relaxed), 1);
    assert_eq!(src.stats().last_reload_ok.load(Ordering::Relaxed), 0, "c is still broken");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn files_over_the_limits_fail_fast_and_keep_their_last_good_objects() {
    let dir = tempdir("limits");
    let file = dir.join("svc.yaml");
    write(&file, &doc("web", "10.96.0.1", &["10.1.0.1"]));
    let limits = ManifestLimits { max_file_bytes: 4096, max_depth: 16, max_documents: 4 };
    let (src, publisher) = source(&file);
    let mut src = src.with_limits(limits);
    assert!(src.reload().errors.is_empty());

    type Expect = fn(&ManifestError) -> bool;
    let cases: [(String, Expect); 3] = [
        ("[".repeat(100_000), |e| matches!(e, ManifestError::TooLarge { size: 100_000, limit: 4096, .. })),
        ("[".repeat(1000), |e| matches!(e, ManifestError::TooDeep { document: 1, line: 1, limit: 16, .. })),
        ("---\n".repeat(5), |e| matches!(e, ManifestError::TooManyDocuments { limit: 4, .. })),
    ];
    for (text, is_expected) in cases {
        write(&file, &text);
        let report = src.reload();
        match report.errors.as_slice() {
            [e] => {
                assert!(is_expected(e), "{e:?}");
                assert!(e.to_string().starts_with(&format!("{}: ", file.display())), "names the file: {e}");
            }
            other => panic!("want one error, got {other:?}"),
        }
        assert_eq!(report.published, None);
        assert_eq!(backends(&publisher, "10.96.0.1"), Some(vec!["10.1.0.1:8080".into()]), "last good kept");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_path_is_reported_once_until_it_changes() {
    let dir = tempdir("missing");
    let parent = dir.join("etc");
    let path = parent.join("manifests");
    let (mut src, publisher) = watched(&path, Duration::ZERO);
    let errors = |src: &ManifestSource| src.stats().errors_total.load(Ordering::Relaxed);
    assert_eq!(src.reload().errors.len(), 1, "the caller of a reload always hears it");
    let t = Instant::now();
    for _ in 0..10 {
        assert!(src.poll(t).is_none(), "the same failure is not reported again");
    }
    assert_eq!(errors(&src), 1);

    // A different failure is news, once.
    write(&parent, "not a directory");
    let report = src.poll(t).unwrap_or_else(|| panic!("the changed failure was not reported"));
    assert!(matches!(report.errors.as_slice(), [ManifestError::Read { .. }]));
    assert!(src.poll(t).is_none());
    assert_eq!(errors(&src), 2);
    std::fs::remove_file(&parent).unwrap_or_else(|e| panic!("{e}"));

    // It appears: applied; a later disappearance is reported once again.
    std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{e}"));
    write(&path.join("svc.yaml"), &doc("web", "10.96.0.1", &["10.1.0.1"]));
    let report = src.poll(t).unwrap_or_else(|| panic!("not applied"));
    assert!(report.errors.is_empty());
    assert_eq!(backends(&publisher, "10.96.0.1"), Some(vec!["10.1.0.1:8080".into()]));
    assert_eq!(src.stats().last_reload_ok.load(Ordering::Relaxed), 1);
    std::fs::remove_dir_all(&path).unwrap_or_else(|e| panic!("{e}"));
    let report = src.poll(t).unwrap_or_else(|| panic!("the new failure was not reported"));
    assert!(matches!(report.errors.as_slice(), [ManifestError::Read { .. }]));
    for _ in 0..10 {
        assert!(src.poll(t).is_none());
    }
    assert_eq!(errors(&src), 3);
    assert_eq!(src.stats().last_reload_ok.load(Ordering::Relaxed), 0);
    assert_eq!(backends(&publisher, "10.96.0.1"), Some(vec!["10.1.0.1:8080".into()]), "the last good table stays");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_hostile_file_neither_stalls_nor_is_read_again_for_an_unrelated_edit() {
    let dir = tempdir("hostile");
    write(&dir.join("a.yaml"), &doc("a", "10.96.0.1", &["10.1.0.1"]));
    // 150 KB of `[`: once seconds of parser CPU, paid again on every reload.
    write(&dir.join("hostile.yaml"), &"[".repeat(150_000));
    let (mut src, publisher) = watched(&dir, Duration::ZERO);
    let report = src.reload();
    assert!(matches!(report.errors.as_slice(), [ManifestError::TooDeep { limit: 64, .. }]), "{:?}", report.errors);
    assert_eq!(backends(&publisher, "10.96.0.1"), Some(vec!["10.1.0.1:8080".into()]), "the good file is served");

    write(&dir.join("a.yaml"), &doc("a", "10.96.0.1", &["10.1.0.2"]));
    let report = src.poll(Instant::now()).unwrap_or_else(|| panic!("the edit was not applied"));
    assert_eq!((report.parsed, report.errors.len()), (1, 0), "only the edited file is read: {:?}", report.errors);
    assert_eq!(backends(&publisher, "10.96.0.1"), Some(vec!["10.1.0.2:8080".into()]));
    assert_eq!(src.stats().errors_total.load(Ordering::Relaxed), 1, "the hostile file was reported once");
    let _ = std::fs::remove_dir_all(&dir);
}
