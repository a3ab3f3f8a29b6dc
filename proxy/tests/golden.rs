//! Golden tests: a manifests fixture → the table `tpvs list` prints, pinned in a `.txt` file.
//!
//! Each `tests/golden/NAME.yaml` starts with `# node: NAME`, the node the table is compiled
//! for; a `# external-ip-cidrs: CIDR,...` line after it sets that flag, and a `# flags: ...`
//! line any other `tpvs list` flags (parsed by the real command line). Run with
//! `UPDATE_GOLDEN=1` to rewrite the expectations after an intended change, then
//! read the diff: it is the behaviour change.

mod golden_file;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use controlplane::{CompileOptions, IpNet, ManifestSource, Publisher};

fn node_of(fixture: &Path) -> Option<String> {
    let text = std::fs::read_to_string(fixture).ok()?;
    text.lines().next()?.strip_prefix("# node: ").map(|s| s.trim().to_string())
}

/// The `# external-ip-cidrs:` header line's CIDRs, if any.
fn cidrs_of(fixture: &Path) -> Vec<IpNet> {
    let text = std::fs::read_to_string(fixture).unwrap_or_default();
    let Some(list) = text.lines().take_while(|l| l.starts_with('#')).find_map(|l| l.strip_prefix("# external-ip-cidrs: ")) else {
        return Vec::new();
    };
    list.split(',').map(|c| c.trim().parse().unwrap_or_else(|e| panic!("{fixture:?}: {c}: {e}"))).collect()
}

/// The compile options of the `# flags:` header line, as `tpvs list` would take them.
fn flags_of(fixture: &Path) -> Option<CompileOptions> {
    use clap::Parser as _;
    let text = std::fs::read_to_string(fixture).unwrap_or_default();
    let flags = text.lines().take_while(|l| l.starts_with('#')).find_map(|l| l.strip_prefix("# flags: "))?;
    let path = fixture.to_string_lossy().to_string();
    let argv = ["tpvs", "list", "--manifests", path.as_str()].into_iter().chain(flags.split_whitespace());
    match tpvs::cli::Cli::try_parse_from(argv).map(|c| c.command) {
        Ok(tpvs::cli::Command::List(a)) => Some(a.table.compile_options()),
        Ok(_) => panic!("{fixture:?}: not a list command"),
        Err(e) => panic!("{fixture:?}: flags: {e}"),
    }
}

fn render_fixture(fixture: &Path) -> String {
    let publisher = Arc::new(Publisher::new());
    let opts = CompileOptions {
        node_name: node_of(fixture),
        external_ip_cidrs: cidrs_of(fixture),
        ..flags_of(fixture).unwrap_or_default()
    };
    let mut source = ManifestSource::new(fixture.to_path_buf(), opts, Arc::clone(&publisher));
    let report = source.reload();
    let table = publisher.current();
    format!(
        "{}{}{}{}",
        tpvs::list::render(&table),
        tpvs::list::render_skipped(&report),
        tpvs::list::render_errors(&report),
        tpvs::list::render_refused(&table)
    )
}

fn check(name: &str) {
    let fixture = PathBuf::from(format!("tests/golden/{name}.yaml"));
    let expected_path = PathBuf::from(format!("tests/golden/{name}.txt"));
    let actual = render_fixture(&fixture);
    golden_file::compare(name, "table", &expected_path, &actual);
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
fn golden_hijack() {
    check("hijack");
}

#[test]
fn golden_external_ip_cidrs() {
    check("external_ip_cidrs");
}

#[test]
fn golden_names() {
    check("names");
}

/// The text listing escapes names; the JSON carries them exactly, for scripts.
#[test]
fn json_keeps_names_exact() {
    let publisher = Arc::new(Publisher::new());
    let opts = CompileOptions { node_name: Some("node-a".into()), ..CompileOptions::default() };
    let mut source = ManifestSource::new(PathBuf::from("tests/golden/names.yaml"), opts, Arc::clone(&publisher));
    source.reload();
    let view = tpvs::view::json_view(&publisher.current(), None);
    let json = serde_json::to_string(&view).unwrap_or_else(|e| panic!("{e}"));
    let back: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
    let f = &back["frontends"][0];
    assert_eq!(f["service"], "t/web\nTCP  6.6.6.6:80              rr        ClusterIP    forged/line:http\u{1b}[2J");
    assert_eq!(f["backends"][0]["node"], "node-b\r\tx");
    assert_eq!(f["backends"][0]["zone"], "zone\u{202e}a\\b");
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

#[test]
fn golden_conformance() {
    check("conformance");
}

#[test]
fn golden_source_ranges() {
    check("source_ranges");
}

/// The JSON view carries each LoadBalancer frontend's ranges and leaves the field out where
/// every client is accepted.
#[test]
fn json_view_carries_source_ranges() {
    let publisher = Arc::new(Publisher::new());
    let opts = CompileOptions { node_name: Some("node-a".into()), ..CompileOptions::default() };
    let mut source = ManifestSource::new(PathBuf::from("tests/golden/source_ranges.yaml"), opts, Arc::clone(&publisher));
    let _ = source.reload();
    let view = tpvs::view::json_view(&publisher.current(), None);
    let ranges = |address: &str| -> Vec<String> {
        view.frontends
            .iter()
            .find(|f| f.address == address)
            .unwrap_or_else(|| panic!("no frontend {address}"))
            .source_ranges
            .clone()
    };
    assert_eq!(ranges("198.51.100.7:80"), vec!["10.0.0.0/24".to_string(), "203.0.113.0/24".to_string()]);
    assert_eq!(ranges("[2001:db8::7]:80"), vec!["fd00::/64".to_string()]);
    assert!(ranges("10.96.7.1:80").is_empty());
    assert!(ranges("192.0.2.7:80").is_empty());
    assert!(ranges("198.51.100.8:80").is_empty(), "a v6-only list leaves the v4 address open");
    let json = serde_json::to_string(&view).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json.matches("\"source_ranges\"").count(), 2, "{json}");
}

#[test]
fn golden_node_local() {
    check("node_local");
}
