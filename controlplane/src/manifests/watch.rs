//! The polling thread that keeps the table following the files: every interval it compares
//! the files' names, sizes and mtimes with those of the last reload (one `stat` per file) and
//! reloads only when they differ.

use std::time::Duration;

use tracing::debug;

use super::ManifestSource;
use super::files::{self, Fingerprint};

impl ManifestSource {
    /// Whether the files changed since the last reload (by name, size and mtime).
    pub fn changed_on_disk(&self) -> bool {
        match files::list(&self.path) {
            Ok(files) => self.fingerprint.as_ref() != Some(&Fingerprint::of(&files)),
            // Report the failure through a reload, which logs and counts it.
            Err(_) => self.fingerprint.is_some(),
        }
    }

    /// Loads once, then polls for changes every `interval` on a background thread.
    pub fn spawn(mut self, interval: Duration) -> std::thread::JoinHandle<()> {
        if self.fingerprint.is_none() {
            self.reload();
        }
        std::thread::Builder::new()
            .name("tpvs-manifests".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    if self.changed_on_disk() {
                        debug!(path = %self.path.display(), "manifests changed; reloading");
                        self.reload();
                    }
                }
            })
            .unwrap_or_else(|e| {
                // Without the watcher thread the table would silently stop following the file:
                // that is not a state to run in.
                panic!("cannot start the manifests watcher thread: {e}")
            })
    }
}
