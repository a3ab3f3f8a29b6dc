//! The offline source: Kubernetes manifests from a file or a directory, hot-reloaded.
//!
//! Accepts what `kubectl get svc,endpointslices -A -o yaml` prints (a `kind: List`), plain
//! multi-document YAML, JSON, and `Node` objects (this node's zone label is used for topology
//! hints). A problem is reported with its file, document index and reason, counted, and never
//! costs the live table: an object that fails keeps its last good version, and a file that
//! fails to parse keeps everything it held before.
//!
//! # Layout
//!
//! - `files`: which files the path holds, a stamp of each (size, times, inode), their text.
//! - `limits`: size, depth and document limits, checked before the YAML parser runs.
//! - `parse`: one file's text → its objects, with file and document numbers on every error.
//! - `merge`: keep-last-good per file, and the union of all files that the index is made to hold.
//! - `watch`: the polling thread ([`ManifestSource::spawn`]).
//!
//! # When a file is applied
//!
//! Each file is read again only when its stamp changed, so an edit costs the parse of that
//! file alone. The watcher applies a changed file once it has looked the same for the settle
//! time ([`DEFAULT_SETTLE`]): a file caught while being written in pieces, even one that
//! happens to parse (cut between two objects), is not applied. The first load does not wait:
//! it applies what is there at once, and a file still being written then is read again when
//! it settles. Writers should still write a new file and rename it over the old one, which
//! is atomic; ConfigMap volumes do this.

mod files;
mod limits;
mod merge;
mod parse;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use crate::compile::CompileOptions;
use crate::error::ManifestError;
use crate::index::ClusterIndex;
use crate::kube_source::DurationHistogram;
use crate::model::{ObjectKey, Skipped};
use crate::publish::{PublishLog, Publisher, build_and_publish};
use files::Stamp;
pub use limits::ManifestLimits;
use parse::FileObjects;

/// How long a file must stay unchanged before the watcher applies it. Long enough that a
/// writer pausing between chunks of one file is not caught halfway, short enough that an edit
/// is live within a few seconds. Writers that replace the file by renaming a complete one over
/// it never expose a partial file at all.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);

/// Counters of the manifests source (exported as metrics by the daemon).
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Reloads: the first load, and each time the watcher applied a change or met a new
    /// listing failure (not every poll).
    pub reloads_total: AtomicU64,
    /// Problems reported: each bad file each time it is read, a path that cannot be listed
    /// once per distinct failure.
    pub errors_total: AtomicU64,
    /// 1 when the path can be listed and every file was read without error the last time it
    /// was read.
    pub last_reload_ok: AtomicU64,
    /// Files read and parsed. Only new or changed files are read.
    pub files_parsed_total: AtomicU64,
    /// The offline analogue of kube-proxy's `network_programming_duration_seconds`: from the
    /// modification time of the changed file to the table (and the listeners' rules) being
    /// live, the settle time included. Not observed for the first load, whose files may be days
    /// old.
    pub network_programming: DurationHistogram,
}

/// What one reload did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Manifest files the path holds.
    pub files: usize,
    /// Files read and parsed by this reload (the new and changed ones).
    pub parsed: usize,
    pub services: usize,
    pub slices: usize,
    /// Of the files read by this reload.
    pub skipped: Vec<(ObjectKey, Skipped)>,
    /// Of the files read by this reload, and the path's own when it cannot be listed.
    pub errors: Vec<ManifestError>,
    /// The generation published, when something changed.
    pub published: Option<u64>,
}

/// A file seen changed and not yet applied: how it looked, and since when it looks so.
#[derive(Clone, Copy, Debug)]
struct Pending {
    stamp: Option<Stamp>,
    since: Instant,
}

/// The file as last read: its stamp then, and whether that read had errors.
#[derive(Clone, Copy, Debug)]
struct Applied {
    stamp: Stamp,
    had_errors: bool,
}

/// Reads manifests into a [`ClusterIndex`] and publishes the compiled table.
pub struct ManifestSource {
    path: PathBuf,
    index: ClusterIndex,
    publisher: Arc<Publisher>,
    by_file: BTreeMap<PathBuf, FileObjects>,
    applied: BTreeMap<PathBuf, Applied>,
    pending: BTreeMap<PathBuf, Pending>,
    /// Why the path could not be listed, as last reported: reported again only when it changes.
    listing_error: Option<ManifestError>,
    settle: Duration,
    limits: ManifestLimits,
    stats: Arc<SourceStats>,
}

impl ManifestSource {
    pub fn new(path: PathBuf, opts: CompileOptions, publisher: Arc<Publisher>) -> Self {
        ManifestSource {
            path,
            index: ClusterIndex::new(opts),
            publisher,
            by_file: BTreeMap::new(),
            applied: BTreeMap::new(),
            pending: BTreeMap::new(),
            listing_error: None,
            settle: DEFAULT_SETTLE,
            limits: ManifestLimits::default(),
            stats: Arc::new(SourceStats::default()),
        }
    }

    /// How long the watcher waits for a changed file to stay unchanged before applying it.
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    pub fn with_limits(mut self, limits: ManifestLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn stats(&self) -> Arc<SourceStats> {
        Arc::clone(&self.stats)
    }

    pub fn publisher(&self) -> &Arc<Publisher> {
        &self.publisher
    }

    pub fn index(&self) -> &ClusterIndex {
        &self.index
    }

    /// Applies the files as they are now, without waiting for them to settle: the first load
    /// (serving at once beats waiting) and one-shot readers such as `tpvs list`. Only new and
    /// changed files are read. Publishes if the result differs from the live table; the first
    /// call always publishes (an empty table is still a complete, known state).
    /// Errors in the report were already logged and counted.
    pub fn reload(&mut self) -> ReloadReport {
        let mut report = ReloadReport::default();
        self.stats.reloads_total.fetch_add(1, Ordering::Relaxed);
        let Ok(files) = self.scan(&mut report) else { return report };
        let changed = self.changes(&files);
        self.pending.clear();
        self.apply(changed.into_iter().collect(), None, &mut report);
        report
    }

    /// One look at the files at time `now` (the watcher's poll): a file that changed is applied
    /// once it has looked the same for the settle time, so a file caught while being written is
    /// not. Returns what was applied, if anything, or the path's listing error when it is new.
    pub fn poll(&mut self, now: Instant) -> Option<ReloadReport> {
        let mut report = ReloadReport::default();
        let files = match self.scan(&mut report) {
            Ok(files) => files,
            Err(news) => {
                if news {
                    self.stats.reloads_total.fetch_add(1, Ordering::Relaxed);
                }
                return news.then_some(report);
            }
        };
        let changes = self.changes(&files);
        self.pending.retain(|path, _| changes.contains_key(path));
        let mut ready = Vec::new();
        for (path, stamp) in changes {
            let since = match self.pending.get(&path) {
                Some(p) if p.stamp == stamp => p.since,
                _ => {
                    self.pending.insert(path.clone(), Pending { stamp, since: now });
                    now
                }
            };
            if now.saturating_duration_since(since) >= self.settle {
                self.pending.remove(&path);
                ready.push((path, stamp));
            }
        }
        if ready.is_empty() {
            return None;
        }
        self.stats.reloads_total.fetch_add(1, Ordering::Relaxed);
        self.apply(ready, Some(now), &mut report);
        Some(report)
    }

    /// Lists the files; a listing failure keeps every file's objects and is logged and counted
    /// once until it changes (a missing directory must not log on every poll). The error is in
    /// the report either way; `Err(true)` when it is news.
    fn scan(&mut self, report: &mut ReloadReport) -> Result<BTreeMap<PathBuf, Stamp>, bool> {
        match files::scan(&self.path) {
            Ok(files) => {
                if self.listing_error.take().is_some() {
                    info!(path = %self.path.display(), "manifests path readable again");
                }
                report.files = files.len();
                Ok(files)
            }
            Err(e) => {
                let news = self.listing_error.as_ref() != Some(&e);
                if news {
                    warn!(error = %e, "cannot list manifests; keeping the last good objects (logged again when this changes)");
                    self.stats.errors_total.fetch_add(1, Ordering::Relaxed);
                    self.stats.last_reload_ok.store(0, Ordering::Relaxed);
                    self.listing_error = Some(e.clone());
                }
                report.errors.push(e);
                Err(news)
            }
        }
    }

    /// Files whose stamp differs from the one they were last read at (`None`: removed).
    fn changes(&self, files: &BTreeMap<PathBuf, Stamp>) -> BTreeMap<PathBuf, Option<Stamp>> {
        let changed = files
            .iter()
            .filter(|(path, stamp)| self.applied.get(*path).is_none_or(|a| a.stamp != **stamp))
            .map(|(path, stamp)| (path.clone(), Some(*stamp)));
        let removed = self.applied.keys().filter(|path| !files.contains_key(*path)).map(|path| (path.clone(), None));
        changed.chain(removed).collect()
    }

    /// Reads the given files (`None`: removed), each expected to still look like its stamp, and
    /// publishes the result. When they settled (the watcher, at time `settled_at`), a file found
    /// changed again since its stamp is not applied but waits to settle anew; otherwise
    /// (`reload`), it is applied and read again once the change is seen.
    fn apply(&mut self, files: Vec<(PathBuf, Option<Stamp>)>, settled_at: Option<Instant>, report: &mut ReloadReport) {
        let started = Instant::now();
        let first_load = self.publisher.generation() == 0;
        let node_name = self.index.options().node_name.clone();
        let mut trigger: Option<SystemTime> = None;
        for (path, stamp) in files {
            let Some(stamp) = stamp else {
                self.by_file.remove(&path);
                self.applied.remove(&path);
                continue;
            };
            let text = files::read(&path, self.limits.max_file_bytes);
            let after = Stamp::of(&path);
            if let Some(now) = settled_at
                && after != Some(stamp)
            {
                self.pending.insert(path, Pending { stamp: after, since: now });
                continue;
            }
            self.stats.files_parsed_total.fetch_add(1, Ordering::Relaxed);
            report.parsed += 1;
            let parsed = match text {
                Ok(text) => parse::parse(&path, &text, node_name.as_deref(), &self.limits),
                Err(e) => parse::Parsed { errors: vec![e], ..Default::default() },
            };
            let objects = if parsed.errors.is_empty() {
                parsed.objects
            } else {
                merge::keep_last_good(parsed.objects, self.by_file.get(&path))
            };
            self.applied.insert(path.clone(), Applied { stamp, had_errors: !parsed.errors.is_empty() });
            self.by_file.insert(path, objects);
            trigger = trigger.max(Some(stamp.mtime));
            report.skipped.extend(parsed.skipped);
            report.errors.extend(parsed.errors);
        }
        let union = merge::union(&self.by_file);
        report.services = union.services.len();
        report.slices = union.slices.len();
        merge::sync_index(&mut self.index, union);
        if self.index.has_changes() || first_load {
            let table = build_and_publish(&mut self.index, &self.publisher, started, PublishLog::Info);
            report.published = Some(table.generation);
            // `publish` ran the listeners, so the rules are in place by now.
            if let Some(Ok(took)) = trigger.filter(|_| !first_load).map(|t| SystemTime::now().duration_since(t)) {
                self.stats.network_programming.observe(took);
            }
        }
        for e in &report.errors {
            warn!(error = %e, "manifest error; keeping the last good objects");
        }
        self.stats.errors_total.fetch_add(report.errors.len() as u64, Ordering::Relaxed);
        let ok = self.listing_error.is_none() && self.applied.values().all(|a| !a.had_errors);
        self.stats.last_reload_ok.store(u64::from(ok), Ordering::Relaxed);
    }
}
