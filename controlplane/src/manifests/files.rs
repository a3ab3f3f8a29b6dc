//! Which manifest files a path holds, what they look like on disk (a stamp per file), and
//! their text.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
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

/// What a file looked like on disk: enough to notice an edit without reading it. The inode
/// and change time tell apart a same-sized rewrite within one mtime tick and an atomic rename.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stamp {
    pub len: u64,
    pub mtime: SystemTime,
    ctime: (i64, i64),
    ino: u64,
}

impl Stamp {
    /// `None` when the file cannot be stat'ed (it was removed meanwhile).
    pub(super) fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            len: m.len(),
            mtime: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            ctime: (m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
        })
    }
}

/// The manifest files under `path` with their stamps, in path order. A file removed between
/// the listing and its `stat` is left out, as if listed a moment later.
pub(super) fn scan(path: &Path) -> Result<BTreeMap<PathBuf, Stamp>, ManifestError> {
    Ok(list(path)?.into_iter().filter_map(|f| Stamp::of(&f).map(|s| (f, s))).collect())
}

/// One file's text, refused unread when larger than `max_bytes` (also when it grew past it
/// after its size was checked).
pub(super) fn read(path: &Path, max_bytes: u64) -> Result<String, ManifestError> {
    let read_err = |e: std::io::Error| ManifestError::Read { path: path.to_path_buf(), reason: e.to_string() };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let too_large = |size| ManifestError::TooLarge { path: path.to_path_buf(), size, limit: max_bytes };
    if size > max_bytes {
        return Err(too_large(size));
    }
    let mut text = String::new();
    file.take(max_bytes.saturating_add(1)).read_to_string(&mut text).map_err(read_err)?;
    if text.len() as u64 > max_bytes {
        return Err(too_large(text.len() as u64));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_changes_with_a_rewrite_and_a_file_over_the_limit_is_not_read() {
        let dir = std::env::temp_dir().join(format!("tpvs-cp-stamp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {dir:?}: {e}"));
        let f = dir.join("a.yaml");
        std::fs::write(&f, "abc").unwrap_or_else(|e| panic!("{e}"));
        let first = Stamp::of(&f);
        assert_eq!(first, Stamp::of(&f), "unchanged, same stamp");
        // Same size, replaced by rename: a new inode even within one mtime tick.
        let tmp = dir.join(".a.tmp");
        std::fs::write(&tmp, "xyz").unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, &f).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(first, Stamp::of(&f));
        assert_eq!(read(&f, 3), Ok("xyz".to_string()));
        assert_eq!(read(&f, 2), Err(ManifestError::TooLarge { path: f.clone(), size: 3, limit: 2 }));
        assert_eq!(Stamp::of(&dir.join("gone.yaml")), None);
        let _ = std::fs::remove_dir_all(&dir);
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
