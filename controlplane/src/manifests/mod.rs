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
//! - `files`: which files the path holds, their name+size+mtime fingerprint, their text.
//! - `parse`: one file's text → its objects, with file and document numbers on every error.
//! - `merge`: keep-last-good per file, and the union of all files that the index is made to hold.
//! - `watch`: the polling thread ([`ManifestSource::spawn`]).

mod files;
mod merge;
mod parse;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use tracing::warn;

use crate::compile::CompileOptions;
use crate::error::ManifestError;
use crate::index::ClusterIndex;
use crate::kube_source::DurationHistogram;
use crate::model::{ObjectKey, Skipped};
use crate::publish::{PublishLog, Publisher, build_and_publish};
use files::Fingerprint;
use parse::FileObjects;

/// Counters of the manifests source (exported as metrics by the daemon).
#[derive(Debug, Default)]
pub struct SourceStats {
    pub reloads_total: AtomicU64,
    pub errors_total: AtomicU64,
    /// 1 when the last reload had no error.
    pub last_reload_ok: AtomicU64,
    /// The offline analogue of kube-proxy's `network_programming_duration_seconds`: from the
    /// modification time of the changed file to the table (and the listeners' rules) being
    /// live. Not observed for the first load, whose files may be days old.
    pub network_programming: DurationHistogram,
}

/// What one reload did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    pub files: usize,
    pub services: usize,
    pub slices: usize,
    pub skipped: Vec<(ObjectKey, Skipped)>,
    pub errors: Vec<ManifestError>,
    /// The generation published, when something changed.
    pub published: Option<u64>,
}

/// Reads manifests into a [`ClusterIndex`] and publishes the compiled table.
pub struct ManifestSource {
    path: PathBuf,
    index: ClusterIndex,
    publisher: Arc<Publisher>,
    by_file: BTreeMap<PathBuf, FileObjects>,
    fingerprint: Option<Fingerprint>,
    stats: Arc<SourceStats>,
}

impl ManifestSource {
    pub fn new(path: PathBuf, opts: CompileOptions, publisher: Arc<Publisher>) -> Self {
        ManifestSource {
            path,
            index: ClusterIndex::new(opts),
            publisher,
            by_file: BTreeMap::new(),
            fingerprint: None,
            stats: Arc::new(SourceStats::default()),
        }
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

    /// Reads everything now and publishes if the result differs from the live table. The first
    /// call always publishes (an empty table is still a complete, known state).
    /// Errors in the report were already logged and counted.
    pub fn reload(&mut self) -> ReloadReport {
        let started = Instant::now();
        let mut report = ReloadReport::default();
        self.stats.reloads_total.fetch_add(1, Ordering::Relaxed);
        let files = match files::list(&self.path) {
            Ok(f) => f,
            Err(e) => {
                report.errors.push(e);
                self.finish_errors(&report);
                return report;
            }
        };
        let now_fingerprint = Fingerprint::of(&files);
        let trigger = self.fingerprint.as_ref().and_then(|old| old.newest_change(&now_fingerprint));
        self.fingerprint = Some(now_fingerprint);
        report.files = files.len();
        let node_name = self.index.options().node_name.clone();
        let mut next: BTreeMap<PathBuf, FileObjects> = BTreeMap::new();
        for file in &files {
            let parsed = match files::read(file) {
                Ok(text) => parse::parse(file, &text, node_name.as_deref()),
                Err(e) => parse::Parsed { errors: vec![e], ..Default::default() },
            };
            let objects = if parsed.errors.is_empty() {
                parsed.objects
            } else {
                merge::keep_last_good(parsed.objects, self.by_file.get(file))
            };
            report.skipped.extend(parsed.skipped);
            report.errors.extend(parsed.errors);
            next.insert(file.clone(), objects);
        }
        self.by_file = next;
        let union = merge::union(&self.by_file);
        report.services = union.services.len();
        report.slices = union.slices.len();
        merge::sync_index(&mut self.index, union);
        if self.index.has_changes() || self.publisher.generation() == 0 {
            let table = build_and_publish(&mut self.index, &self.publisher, started, PublishLog::Info);
            report.published = Some(table.generation);
            // `publish` ran the listeners, so the rules are in place by now.
            if let Some(Ok(took)) = trigger.map(|t| SystemTime::now().duration_since(t)) {
                self.stats.network_programming.observe(took);
            }
        }
        self.finish_errors(&report);
        report
    }

    fn finish_errors(&self, report: &ReloadReport) {
        for e in &report.errors {
            warn!(error = %e, "manifest error; keeping the last good objects");
        }
        self.stats.errors_total.fetch_add(report.errors.len() as u64, Ordering::Relaxed);
        self.stats.last_reload_ok.store(u64::from(report.errors.is_empty()), Ordering::Relaxed);
    }
}
