//! Golden tests: a manifests fixture → the table `tpvs list` prints, pinned in a `.txt` file.
//!
//! Each `tests/golden/NAME.yaml` starts with `# node: NAME`, the node the table is compiled
//! for. Run with `UPDATE_GOLDEN=1` to rewrite the expectations after an intended change, then
//! read the diff: it is the behaviour change.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use controlplane::{CompileOptions, ManifestSource, Publisher};

fn node_of(fixture: &Path) -> Option<String> {
    let text = std::fs::read_to_string(fixture).ok()?;
    text.lines().next()?.strip_prefix("# node: ").map(|s| s.trim().to_string())
}

fn render_fixture(fixture: &Path) -> String {
    let publisher = Arc::new(Publisher::new());
    let opts = CompileOptions { node_name: node_of(fixture), ..CompileOptions::default() };
    let mut source = ManifestSource::new(fixture.to_path_buf(), opts, Arc::clone(&publisher));
    let report = source.reload();
    let table = publisher.current();
    format!(
        "{}{}{}",
        tpvs::list::render(&table),
        tpvs::list::render_skipped(&report),
        tpvs::list::render_errors(&report)
    )
}

fn check(name: &str) {
    let fixture = PathBuf::from(format!("tests/golden/{name}.yaml"));
    let expected_path = PathBuf::from(format!("tests/golden/{name}.txt"));
    let actual = render_fixture(&fixture);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, &actual).unwrap_or_else(|e| panic!("write {expected_path:?}: {e}"));
        return;
    }
    let expected = std::fs::read_to_string(&expected_path)
        .unwrap_or_else(|e| panic!("read {expected_path:?}: {e} (run with UPDATE_GOLDEN=1 to create it)"));
    if actual != expected {
        panic!("{name}: table differs from {expected_path:?}\n--- expected\n{expected}\n--- actual\n{actual}");
    }
}

#[test]
fn golden_frontends() {
    check("frontends");
}

#[test]
fn golden_conditions() {
    check("conditions");
}

#[test]
fn golden_policies() {
    check("policies");
}

#[test]
fn golden_topology() {
    check("topology");
}

#[test]
fn golden_selection() {
    check("selection");
}

#[test]
fn golden_errors() {
    check("errors");
}

#[test]
fn golden_lab_example() {
    let fixture = PathBuf::from("../deploy/examples/lab.yaml");
    let expected_path = PathBuf::from("tests/golden/lab.txt");
    let actual = {
        let publisher = Arc::new(Publisher::new());
        let opts = CompileOptions { node_name: Some("node-a".into()), ..CompileOptions::default() };
        let mut source = ManifestSource::new(fixture, opts, Arc::clone(&publisher));
        let report = source.reload();
        assert!(report.errors.is_empty(), "the shipped example must be clean: {:?}", report.errors);
        format!("{}{}", tpvs::list::render(&publisher.current()), tpvs::list::render_skipped(&report))
    };
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, &actual).unwrap_or_else(|e| panic!("write: {e}"));
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| panic!("read: {e}"));
    assert_eq!(actual, expected);
}
