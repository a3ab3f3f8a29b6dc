//! The offline source: Kubernetes manifests from a file or a directory, hot-reloaded.
//!
//! Accepts what `kubectl get svc,endpointslices -A -o yaml` prints (a `kind: List`), plain
//! multi-document YAML, JSON, and `Node` objects (this node's zone label is used for topology
//! hints). A problem is reported with its file, document index and reason, counted, and never
//! costs the live table: an object that fails keeps its last good version, and a file that
//! fails to parse keeps everything it held before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::compile::CompileOptions;
use crate::error::ManifestError;
use crate::index::ClusterIndex;
use crate::kube_source::DurationHistogram;
use crate::model::{NodeInfo, ObjectKey, ServiceInfo, Skipped, SliceInfo};
use crate::publish::{PublishLog, Publisher, build_and_publish};

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

/// Objects that came from one file.
#[derive(Debug, Default, Clone)]
struct FileObjects {
    services: BTreeMap<ObjectKey, ServiceInfo>,
    slices: BTreeMap<ObjectKey, SliceInfo>,
    node: Option<NodeInfo>,
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
    fingerprint: Option<Vec<(PathBuf, u64, SystemTime)>>,
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
        let files = match list_files(&self.path) {
            Ok(f) => f,
            Err(e) => {
                report.errors.push(e);
                self.finish_errors(&report);
                return report;
            }
        };
        let now_fingerprint = fingerprint(&files);
        let trigger = self.fingerprint.as_ref().and_then(|old| newest_change(old, &now_fingerprint));
        self.fingerprint = Some(now_fingerprint);
        report.files = files.len();
        let node_name = self.index.options().node_name.clone();
        let mut next: BTreeMap<PathBuf, FileObjects> = BTreeMap::new();
        for file in &files {
            let previous = self.by_file.get(file);
            let objects = load_file(file, node_name.as_deref(), previous, &mut report);
            next.insert(file.clone(), objects);
        }
        self.by_file = next;
        self.apply_to_index(&mut report);
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

    /// Makes the index hold exactly the union of all files' objects (first file wins on a
    /// duplicate name, in path order).
    fn apply_to_index(&mut self, report: &mut ReloadReport) {
        let mut services: BTreeMap<&ObjectKey, &ServiceInfo> = BTreeMap::new();
        let mut slices: BTreeMap<&ObjectKey, &SliceInfo> = BTreeMap::new();
        let mut zone = None;
        for objects in self.by_file.values() {
            for (k, v) in &objects.services {
                services.entry(k).or_insert(v);
            }
            for (k, v) in &objects.slices {
                slices.entry(k).or_insert(v);
            }
            if let Some(n) = &objects.node {
                zone = n.zone.clone();
            }
        }
        report.services = services.len();
        report.slices = slices.len();
        let gone_services: Vec<ObjectKey> =
            self.index.services().map(|s| s.key.clone()).filter(|k| !services.contains_key(k)).collect();
        let gone_slices: Vec<ObjectKey> =
            self.index.slices().map(|s| s.key.clone()).filter(|k| !slices.contains_key(k)).collect();
        for k in &gone_services {
            self.index.remove_service(k);
        }
        for k in &gone_slices {
            self.index.remove_slice(k);
        }
        for s in services.into_values() {
            self.index.upsert_service(s.clone());
        }
        for s in slices.into_values() {
            self.index.upsert_slice(s.clone());
        }
        self.index.set_node_zone(zone);
    }

    /// Whether the files changed since the last reload (by name, size and mtime).
    pub fn changed_on_disk(&self) -> bool {
        match list_files(&self.path) {
            Ok(files) => self.fingerprint.as_ref() != Some(&fingerprint(&files)),
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

fn list_files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
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
    out.sort();
    Ok(out)
}

fn fingerprint(files: &[PathBuf]) -> Vec<(PathBuf, u64, SystemTime)> {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok();
            let len = m.as_ref().map_or(0, |m| m.len());
            let mtime = m.and_then(|m| m.modified().ok()).unwrap_or(SystemTime::UNIX_EPOCH);
            (f.clone(), len, mtime)
        })
        .collect()
}

/// The newest modification time among files that are new or changed between two
/// fingerprints (a removed file has no time of its own: none).
fn newest_change(old: &[(PathBuf, u64, SystemTime)], new: &[(PathBuf, u64, SystemTime)]) -> Option<SystemTime> {
    new.iter().filter(|entry| !old.contains(entry)).map(|(_, _, mtime)| *mtime).max()
}

/// Parses one file. On any error, objects the file held before and did not yield this time
/// are kept: a broken edit must not delete what it could not be read to contain.
fn load_file(
    path: &Path,
    node_name: Option<&str>,
    previous: Option<&FileObjects>,
    report: &mut ReloadReport,
) -> FileObjects {
    let errors_before = report.errors.len();
    let mut objects = FileObjects::default();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            // Documents are numbered from 1, as a person counts them in the file.
            for (document, de) in (1..).zip(serde_yaml::Deserializer::from_str(&text)) {
                match serde_yaml::Value::deserialize_from(de) {
                    Ok(value) => load_value(path, document, value, node_name, &mut objects, report),
                    Err(e) => {
                        report.errors.push(ManifestError::Yaml {
                            path: path.to_path_buf(),
                            document,
                            reason: e.to_string(),
                        });
                        // The parser cannot resync after a syntax error: stop reading this file.
                        break;
                    }
                }
            }
        }
        Err(e) => report.errors.push(ManifestError::Read { path: path.to_path_buf(), reason: e.to_string() }),
    }
    if report.errors.len() > errors_before {
        if let Some(prev) = previous {
            for (k, v) in &prev.services {
                objects.services.entry(k.clone()).or_insert_with(|| v.clone());
            }
            for (k, v) in &prev.slices {
                objects.slices.entry(k.clone()).or_insert_with(|| v.clone());
            }
            if objects.node.is_none() {
                objects.node = prev.node.clone();
            }
        }
    }
    objects
}

trait DeserializeValue: Sized {
    fn deserialize_from(de: serde_yaml::Deserializer<'_>) -> Result<Self, serde_yaml::Error>;
}

impl DeserializeValue for serde_yaml::Value {
    fn deserialize_from(de: serde_yaml::Deserializer<'_>) -> Result<Self, serde_yaml::Error> {
        serde::Deserialize::deserialize(de)
    }
}

fn str_field<'v>(value: &'v serde_yaml::Value, field: &str) -> Option<&'v str> {
    value.get(field).and_then(serde_yaml::Value::as_str)
}

fn object_name(value: &serde_yaml::Value) -> String {
    let meta = value.get("metadata");
    let ns = meta.and_then(|m| str_field(m, "namespace")).unwrap_or("default");
    match meta.and_then(|m| str_field(m, "name")) {
        Some(n) => format!("{ns}/{n}"),
        None => "(unnamed)".to_string(),
    }
}

fn load_value(
    path: &Path,
    document: usize,
    value: serde_yaml::Value,
    node_name: Option<&str>,
    objects: &mut FileObjects,
    report: &mut ReloadReport,
) {
    if value.is_null() {
        return; // an empty document, e.g. a trailing `---`
    }
    let kind = str_field(&value, "kind").unwrap_or("").to_string();
    let name = object_name(&value);
    let fail = |report: &mut ReloadReport, reason: String| {
        report.errors.push(ManifestError::Object {
            path: path.to_path_buf(),
            document,
            kind: if kind.is_empty() { "(no kind)".into() } else { kind.clone() },
            name: name.clone(),
            reason,
        });
    };
    match kind.as_str() {
        "List" | "ServiceList" | "EndpointSliceList" | "NodeList" => {
            let items = match value.get("items") {
                Some(serde_yaml::Value::Sequence(items)) => items.clone(),
                Some(serde_yaml::Value::Null) | None => Vec::new(),
                Some(_) => return fail(report, "items is not a list".into()),
            };
            for item in items {
                load_value(path, document, item, node_name, objects, report);
            }
        }
        "Service" => match typed::<Service>(value).and_then(|s| {
            ServiceInfo::from_service(&s).map_err(|e| e.to_string())
        }) {
            Ok(Ok(info)) => {
                objects.services.insert(info.key.clone(), info);
            }
            Ok(Err(skipped)) => {
                debug!(service = %name, reason = %skipped, "service not proxied");
                let (ns, n) = name.split_once('/').unwrap_or(("default", &name));
                report.skipped.push((ObjectKey::new(ns, n), skipped));
            }
            Err(reason) => fail(report, reason),
        },
        "EndpointSlice" => match typed::<EndpointSlice>(value).and_then(|s| {
            SliceInfo::from_slice(&s).map_err(|e| e.to_string())
        }) {
            Ok(Some(info)) => {
                objects.slices.insert(info.key.clone(), info);
            }
            Ok(None) => debug!(slice = %name, "slice ignored (FQDN or no service label)"),
            Err(reason) => fail(report, reason),
        },
        "Node" => match typed::<Node>(value) {
            Ok(node) => {
                let info = NodeInfo::from_node(&node);
                if info.name.is_some() && info.name.as_deref() == node_name {
                    objects.node = Some(info);
                }
            }
            Err(reason) => fail(report, reason),
        },
        "" => fail(report, "no kind".into()),
        other => debug!(kind = other, object = %name, "ignoring object of a kind tpvs does not use"),
    }
}

fn typed<T: DeserializeOwned>(value: serde_yaml::Value) -> Result<T, String> {
    serde_yaml::from_value(value).map_err(|e| e.to_string())
}
