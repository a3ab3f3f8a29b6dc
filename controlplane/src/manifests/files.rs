//! Which manifest files a path holds, what they looked like on disk, and their text.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::ManifestError;

/// The manifest files under `path`, in path order: `path` itself when it is a file; otherwise
/// every `.yaml`, `.yml` and `.json` file below it, skipping hidden entries (editors' swap
/// files, `..data` symlink farms of mounted ConfigMaps).
pub(super) fn list(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let read_err = |e: std::io::Error| ManifestError::Read { path: path.to_path_buf(), reason: e.to_string() };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let p = entry.path();
            let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
                out.push(p);
            }
        }
    }
    // The walk order depends on the file system; path order makes "first file wins" stable.
    out.sort();
    Ok(out)
}

/// One file's text.
pub(super) fn read(path: &Path) -> Result<String, ManifestError> {
    std::fs::read_to_string(path).map_err(|e| ManifestError::Read { path: path.to_path_buf(), reason: e.to_string() })
}

/// Name, size and modification time of each file: enough to notice an edit without reading
/// the files on every poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Fingerprint(Vec<(PathBuf, u64, SystemTime)>);

impl Fingerprint {
    /// A file that cannot be stat'ed counts as empty and from the epoch: the reload that
    /// follows reports why it cannot be read.
    pub(super) fn of(files: &[PathBuf]) -> Self {
        Fingerprint(
            files
                .iter()
                .map(|f| {
                    let m = std::fs::metadata(f).ok();
                    let len = m.as_ref().map_or(0, |m| m.len());
                    let mtime = m.and_then(|m| m.modified().ok()).unwrap_or(SystemTime::UNIX_EPOCH);
                    (f.clone(), len, mtime)
                })
                .collect(),
        )
    }

    /// The newest modification time among files that are new or changed in `new` (a removed
    /// file has no time of its own: none).
    pub(super) fn newest_change(&self, new: &Fingerprint) -> Option<SystemTime> {
        new.0.iter().filter(|entry| !self.0.contains(entry)).map(|(_, _, mtime)| *mtime).max()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn print(entries: &[(&str, u64, u64)]) -> Fingerprint {
        Fingerprint(entries.iter().map(|(p, len, t)| (PathBuf::from(p), *len, at(*t))).collect())
    }

    #[test]
    fn newest_change_is_the_latest_new_or_modified_file() {
        let old = print(&[("a.yaml", 10, 100), ("b.yaml", 20, 200)]);
        assert_eq!(old.newest_change(&old), None, "nothing changed");
        let edited = print(&[("a.yaml", 11, 300), ("b.yaml", 20, 200)]);
        assert_eq!(old.newest_change(&edited), Some(at(300)));
        let added = print(&[("a.yaml", 10, 100), ("b.yaml", 20, 200), ("c.yaml", 1, 150)]);
        assert_eq!(old.newest_change(&added), Some(at(150)), "an added file counts with its own time");
        let removed = print(&[("a.yaml", 10, 100)]);
        assert_eq!(old.newest_change(&removed), None, "a removal has no time of its own");
    }

    #[test]
    fn a_directory_lists_its_manifests_recursively_in_path_order() {
        let dir = std::env::temp_dir().join(format!("tpvs-cp-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sub = dir.join("sub");
        let hidden = dir.join(".hidden");
        for d in [&sub, &hidden] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {d:?}: {e}"));
        }
        for f in ["b.yaml", "a.json", "notes.txt", ".swap.yaml", "sub/c.yml", ".hidden/d.yaml"] {
            std::fs::write(dir.join(f), "").unwrap_or_else(|e| panic!("write {f}: {e}"));
        }
        let listed = list(&dir).unwrap_or_else(|e| panic!("list: {e}"));
        assert_eq!(listed, vec![dir.join("a.json"), dir.join("b.yaml"), sub.join("c.yml")]);
        let single = dir.join("b.yaml");
        assert_eq!(list(&single), Ok(vec![single.clone()]), "a file is its own list");
        assert!(matches!(list(&dir.join("missing")), Err(ManifestError::Read { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
