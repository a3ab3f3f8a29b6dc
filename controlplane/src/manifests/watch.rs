//! The polling thread that keeps the table following the files: every interval it stats the
//! files (one `stat` each) and applies those that changed and then settled.

use std::time::{Duration, Instant};

use super::ManifestSource;

impl ManifestSource {
    /// Loads once, at once, then polls for changes every `interval` on a background thread.
    pub fn spawn(mut self, interval: Duration) -> std::thread::JoinHandle<()> {
        if self.publisher.generation() == 0 {
            self.reload();
        }
        std::thread::Builder::new()
            .name("tpvs-manifests".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    self.poll(Instant::now());
                }
            })
            .unwrap_or_else(|e| {
                // Without the watcher thread the table would silently stop following the file:
                // that is not a state to run in.
                panic!("cannot start the manifests watcher thread: {e}")
            })
    }
}
