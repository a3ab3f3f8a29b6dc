//! Golden-file comparison shared by the golden tests: the expected text lives beside its
//! fixture; `UPDATE_GOLDEN=1` rewrites it from what the code produces now.

use std::path::Path;

/// Compares `actual` with the file at `expected_path`, or writes it there under `UPDATE_GOLDEN`.
/// `what` names the output in the failure message ("table", "answers").
pub fn compare(name: &str, what: &str, expected_path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(expected_path, actual).unwrap_or_else(|e| panic!("write {expected_path:?}: {e}"));
        return;
    }
    let expected = std::fs::read_to_string(expected_path)
        .unwrap_or_else(|e| panic!("read {expected_path:?}: {e} (run with UPDATE_GOLDEN=1 to create it)"));
    if actual != expected {
        panic!("{name}: {what} differs from {expected_path:?}\n--- expected\n{expected}\n--- actual\n{actual}");
    }
}
