//! Keep-last-good, and the one set of objects all files add up to.
//!
//! Pure: files in, objects out. A problem in a file never costs the live table: a file that
//! had any error keeps, beside what it yielded this time, everything it held before, so an
//! object that fails keeps its last good version and a file that fails to parse keeps all of
//! its objects.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::parse::FileObjects;
use crate::index::ClusterIndex;
use crate::explain::NotProxied;
use crate::model::{NodeInfo, ObjectKey, ServiceInfo, SliceInfo};

/// What a file that had errors holds: what it yielded now, plus whatever it held before and
/// did not yield this time. A broken edit must not delete what it could not be read to contain;
/// the price is that an object removed in the same edit stays until the file is fixed.
pub(super) fn keep_last_good(mut now: FileObjects, previous: Option<&FileObjects>) -> FileObjects {
    let Some(prev) = previous else { return now };
    for (k, v) in &prev.services {
        now.services.entry(k.clone()).or_insert_with(|| v.clone());
    }
    for (k, v) in &prev.slices {
        now.slices.entry(k.clone()).or_insert_with(|| v.clone());
    }
    for (k, v) in &prev.skipped {
        now.skipped.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if now.node.is_none() {
        now.node = prev.node.clone();
    }
    now
}

/// The objects of all files together.
#[derive(Debug, Default)]
pub(super) struct Union<'a> {
    pub services: BTreeMap<&'a ObjectKey, &'a ServiceInfo>,
    pub slices: BTreeMap<&'a ObjectKey, &'a SliceInfo>,
    /// explain: Services not proxied.
    pub skipped: BTreeMap<&'a ObjectKey, &'a NotProxied>,
    /// This node's Node object, from the last file (in path order) holding it.
    pub node: Option<&'a NodeInfo>,
}

/// Adds up the files' objects; the first file in path order wins a duplicate name.
pub(super) fn union(by_file: &BTreeMap<PathBuf, FileObjects>) -> Union<'_> {
    let mut out = Union::default();
    for objects in by_file.values() {
        for (k, v) in &objects.services {
            out.services.entry(k).or_insert(v);
        }
        for (k, v) in &objects.slices {
            out.slices.entry(k).or_insert(v);
        }
        for (k, v) in &objects.skipped {
            out.skipped.entry(k).or_insert(v);
        }
        if let Some(n) = &objects.node {
            out.node = Some(n);
        }
    }
    out
}

/// Makes the index hold exactly `union`; the index itself notices which Services that changed.
pub(super) fn sync_index(index: &mut ClusterIndex, union: Union<'_>) {
    let gone_services: Vec<ObjectKey> =
        index.services().map(|s| s.key.clone()).filter(|k| !union.services.contains_key(k)).collect();
    let gone_slices: Vec<ObjectKey> =
        index.slices().map(|s| s.key.clone()).filter(|k| !union.slices.contains_key(k)).collect();
    for k in &gone_services {
        index.remove_service(k);
    }
    for k in &gone_slices {
        index.remove_slice(k);
    }
    for s in union.services.values() {
        index.upsert_service((*s).clone());
    }
    for s in union.slices.into_values() {
        index.upsert_slice(s.clone());
    }
    let gone_skipped: Vec<ObjectKey> =
        index.skipped().map(|s| s.service.clone()).filter(|k| !union.skipped.contains_key(k)).collect();
    for k in &gone_skipped {
        index.remove_skipped(k);
    }
    for s in union.skipped.into_values() {
        // A name both proxied (in one file) and skipped (in another): the proxied one wins.
        if !union.services.contains_key(&s.service) {
            index.upsert_skipped(s.clone());
        }
    }
    index.set_node(union.node);
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use super::*;
    use crate::compile::CompileOptions;

    fn service(name: &str, ip: [u8; 4]) -> ServiceInfo {
        ServiceInfo::for_test(name, vec![IpAddr::from(ip)])
    }

    fn slice(name: &str, of: &str) -> SliceInfo {
        SliceInfo { key: ObjectKey::new("t", name), service: ObjectKey::new("t", of), ports: Vec::new(), endpoints: Vec::new() }
    }

    fn file(services: &[ServiceInfo], slices: &[SliceInfo], zone: Option<&str>) -> FileObjects {
        FileObjects {
            services: services.iter().map(|s| (s.key.clone(), s.clone())).collect(),
            slices: slices.iter().map(|s| (s.key.clone(), s.clone())).collect(),
            node: zone.map(|z| NodeInfo { name: Some(Arc::from("n")), zone: Some(Arc::from(z)), ..NodeInfo::default() }),
            skipped: BTreeMap::new(),
        }
    }

    #[test]
    fn a_failed_file_keeps_what_it_did_not_yield_and_takes_what_it_did() {
        let before = file(&[service("a", [10, 0, 0, 1]), service("b", [10, 0, 0, 2])], &[slice("a-1", "a")], Some("z1"));
        // The edit changed `a` and then failed before `b` and the slice could be read.
        let now = file(&[service("a", [10, 0, 0, 9])], &[], None);
        let kept = keep_last_good(now, Some(&before));
        let want = file(&[service("a", [10, 0, 0, 9]), service("b", [10, 0, 0, 2])], &[slice("a-1", "a")], Some("z1"));
        assert_eq!(kept, want);
    }

    #[test]
    fn a_new_file_that_fails_keeps_only_what_it_yielded() {
        let now = file(&[service("a", [10, 0, 0, 1])], &[], None);
        assert_eq!(keep_last_good(now.clone(), None), now);
    }

    #[test]
    fn the_first_file_wins_a_duplicate_and_the_last_node_sets_the_zone() {
        let by_file = BTreeMap::from([
            (PathBuf::from("a.yaml"), file(&[service("web", [10, 0, 0, 1])], &[], Some("z1"))),
            (PathBuf::from("b.yaml"), file(&[service("web", [10, 0, 0, 2]), service("db", [10, 0, 0, 3])], &[], Some("z2"))),
            (PathBuf::from("c.yaml"), file(&[], &[slice("web-1", "web")], None)),
        ]);
        let u = union(&by_file);
        let web = u.services.get(&ObjectKey::new("t", "web")).map(|s| s.cluster_ips.clone());
        assert_eq!(web, Some(vec![IpAddr::from([10, 0, 0, 1])]));
        assert_eq!((u.services.len(), u.slices.len()), (2, 1));
        assert_eq!(u.node.and_then(|n| n.zone.as_deref()), Some("z2"));
    }

    #[test]
    fn the_index_is_made_to_hold_exactly_the_union() {
        let mut index = ClusterIndex::new(CompileOptions::default());
        index.upsert_service(service("gone", [10, 0, 0, 7]));
        index.upsert_slice(slice("gone-1", "gone"));
        index.build();
        let by_file = BTreeMap::from([(
            PathBuf::from("a.yaml"),
            file(&[service("web", [10, 0, 0, 1])], &[slice("web-1", "web")], Some("z1")),
        )]);
        sync_index(&mut index, union(&by_file));
        let services: Vec<_> = index.services().map(|s| s.key.to_string()).collect();
        let slices: Vec<_> = index.slices().map(|s| s.key.to_string()).collect();
        assert_eq!((services, slices), (vec!["t/web".to_string()], vec!["t/web-1".to_string()]));
        assert_eq!(index.node().zone.as_deref(), Some("z1"));
        assert!(index.has_changes());
    }
}
