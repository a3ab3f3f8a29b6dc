//! The manifests source: reloads, bad edits, directories and hot reload.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use controlplane::{CompileOptions, FrontendKey, ManifestError, ManifestSource, Protocol, Publisher};

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
