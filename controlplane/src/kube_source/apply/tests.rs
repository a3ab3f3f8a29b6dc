//! The applier as a state machine: events in, dirty Services / publishability / table out.
//! No API double and no timing: events are fed directly, the table is built by hand.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use super::*;
use crate::compile::CompileOptions;
use crate::kube_source::watch::{TRIGGER_TIME_ANNOTATION, node_object, service_object, slice_object};
use crate::table::{FrontendKey, Protocol, RoutingTable};

const NODE: &str = "node-a";

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap_or_else(|e| panic!("test object: {e}"))
}

fn service(name: &str, ip: &str) -> Service {
    from_json(json!({
        "metadata": {"name": name, "namespace": "t"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]},
    }))
}

/// A slice of `svc` with one ready endpoint per `(ip, zone hint)`.
fn slice(name: &str, svc: &str, eps: &[(&str, Option<&str>)]) -> EndpointSlice {
    let endpoints: Vec<_> = eps
        .iter()
        .map(|(ip, hint)| {
            let mut ep = json!({"addresses": [ip], "conditions": {"ready": true}});
            if let Some(z) = hint {
                ep["hints"] = json!({"forZones": [{"name": z}]});
            }
            ep
        })
        .collect();
    from_json(json!({
        "metadata": {"name": name, "namespace": "t", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints,
    }))
}

fn node(zone: &str) -> Node {
    from_json(json!({"metadata": {"name": NODE, "labels": {"topology.kubernetes.io/zone": zone}}}))
}

fn applier(watch_node: bool) -> Applier {
    let opts = CompileOptions { node_name: Some(NODE.into()), ..CompileOptions::default() };
    Applier::new(ClusterIndex::new(opts), watch_node, Arc::new(KubeSourceStats::default()))
}

fn feed(a: &mut Applier, update: Update) {
    a.apply(Received { update, at: Instant::now() });
}

/// A complete list of `what`: start, every object, done.
fn list(a: &mut Applier, what: Watched, objects: Vec<Object>) {
    feed(a, Update::ListStarted(what));
    for o in objects {
        feed(a, Update::Listed(o));
    }
    feed(a, Update::ListDone(what));
}

/// What the run loop does when `wants_publish`: build, then record the publish.
fn publish(a: &mut Applier) -> RoutingTable {
    let (table, conflicts) = a.index.build();
    assert!(conflicts.is_empty(), "{conflicts:?}");
    a.published();
    table
}

/// The backends of the ClusterIP frontend `ip:80`, or `None` without that frontend.
fn backends(table: &RoutingTable, ip: &str) -> Option<Vec<String>> {
    let key = FrontendKey::new(ip.parse().ok()?, 80, Protocol::Tcp);
    table.get(&key).map(|f| f.backends().iter().map(|b| b.addr.to_string()).collect())
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("t", name)
}

/// Services and slices listed, plus this node in zone `za` when the node is watched.
fn synced(watch_node: bool) -> Applier {
    let mut a = applier(watch_node);
    list(&mut a, Watched::Services, vec![service_object(service("web", "10.96.0.1"))]);
    list(&mut a, Watched::EndpointSlices, vec![slice_object(slice("web-1", "web", &[("10.1.0.1", None)]))]);
    if watch_node {
        list(&mut a, Watched::Node, vec![node_object(node("za"))]);
    }
    a
}

#[test]
fn nothing_is_publishable_until_every_first_list_completes() {
    let mut a = applier(true);
    feed(&mut a, Update::ListStarted(Watched::Services));
    feed(&mut a, Update::Listed(service_object(service("web", "10.96.0.1"))));
    assert!(a.index.has_changes(), "listed objects reach the index at once");
    assert!(!a.wants_publish(), "services still listing");
    feed(&mut a, Update::ListDone(Watched::Services));
    assert!(!a.wants_publish(), "slices and node not listed yet");
    list(&mut a, Watched::EndpointSlices, vec![slice_object(slice("web-1", "web", &[("10.1.0.1", None)]))]);
    // A watch event for a resource already listed does not make the cluster complete either.
    feed(&mut a, Update::Applied(service_object(service("api", "10.96.0.2"))));
    assert!(!a.synced() && !a.wants_publish(), "the node is not listed yet");
    list(&mut a, Watched::Node, vec![node_object(node("za"))]);
    assert!(a.synced() && a.wants_publish());
    let table = publish(&mut a);
    assert_eq!(backends(&table, "10.96.0.1"), Some(vec!["10.1.0.1:8080".into()]));
    assert!(backends(&table, "10.96.0.2").is_some());
    assert!(!a.wants_publish(), "nothing changed since");
}

#[test]
fn without_a_node_name_the_node_is_not_awaited_and_an_empty_cluster_still_publishes() {
    let mut a = applier(false);
    list(&mut a, Watched::Services, Vec::new());
    assert!(!a.wants_publish());
    list(&mut a, Watched::EndpointSlices, Vec::new());
    assert!(!a.index.has_changes());
    assert!(a.wants_publish(), "the first table is published even when empty: it is a known state");
    assert!(publish(&mut a).is_empty());
    assert!(!a.wants_publish());
}

#[test]
fn a_slice_delete_removes_its_endpoints() {
    let mut a = synced(false);
    publish(&mut a);
    feed(&mut a, Update::Deleted(Gone::Slice(key("web-1"))));
    assert!(a.wants_publish());
    let table = publish(&mut a);
    assert_eq!(backends(&table, "10.96.0.1"), Some(Vec::new()), "the Service stays, without endpoints");
    assert_eq!(a.pending.received.len(), 1, "one change after the first publish, one latency sample");
}

#[test]
fn deleting_what_is_not_there_changes_nothing() {
    let mut a = synced(false);
    publish(&mut a);
    feed(&mut a, Update::Deleted(Gone::Slice(key("never"))));
    feed(&mut a, Update::Deleted(Gone::Service(key("never"))));
    feed(&mut a, Update::Deleted(Gone::Unnamed));
    assert!(!a.wants_publish());
    assert!(a.pending.received.is_empty());
}

#[test]
fn a_service_delete_removes_its_frontends() {
    let mut a = synced(false);
    publish(&mut a);
    feed(&mut a, Update::Deleted(Gone::Service(key("web"))));
    assert!(a.wants_publish());
    assert!(publish(&mut a).is_empty());
}

#[test]
fn a_node_zone_change_re_evaluates_zone_hints() {
    let mut a = applier(true);
    list(&mut a, Watched::Services, vec![service_object(service("web", "10.96.0.1"))]);
    let eps = [("10.1.0.1", Some("za")), ("10.1.0.2", Some("zb"))];
    list(&mut a, Watched::EndpointSlices, vec![slice_object(slice("web-1", "web", &eps))]);
    list(&mut a, Watched::Node, vec![node_object(node("za"))]);
    assert_eq!(backends(&publish(&mut a), "10.96.0.1"), Some(vec!["10.1.0.1:8080".into()]));

    feed(&mut a, Update::Applied(node_object(node("zb"))));
    assert!(a.wants_publish(), "a new zone is a change to every Service");
    assert_eq!(backends(&publish(&mut a), "10.96.0.1"), Some(vec!["10.1.0.2:8080".into()]));

    feed(&mut a, Update::Applied(node_object(node("zb"))));
    assert!(!a.wants_publish(), "the same zone again is no change");

    // Without a zone no hint names this node: every endpoint is used.
    feed(&mut a, Update::Deleted(Gone::Node));
    assert!(a.wants_publish());
    let all = Some(vec!["10.1.0.1:8080".into(), "10.1.0.2:8080".into()]);
    assert_eq!(backends(&publish(&mut a), "10.96.0.1"), all);
}

#[test]
fn a_relist_replaces_rather_than_merges() {
    let mut a = applier(false);
    let web = || service_object(service("web", "10.96.0.1"));
    let api = || service_object(service("api", "10.96.0.2"));
    list(&mut a, Watched::Services, vec![web(), api()]);
    list(&mut a, Watched::EndpointSlices, Vec::new());
    publish(&mut a);

    // After a 410 Gone the new list lacks `api`: it stays until that list completes.
    feed(&mut a, Update::ListStarted(Watched::Services));
    feed(&mut a, Update::Listed(web()));
    assert!(a.index.service(&key("api")).is_some(), "no half-listed cluster");
    assert!(!a.wants_publish(), "an identical object re-listed is no change");
    feed(&mut a, Update::ListDone(Watched::Services));
    assert!(a.index.service(&key("api")).is_none());
    assert!(a.wants_publish());
    let table = publish(&mut a);
    assert!(backends(&table, "10.96.0.1").is_some());
    assert!(backends(&table, "10.96.0.2").is_none());
    assert_eq!(a.stats.relists_total.load(Ordering::Relaxed), 1);
}

#[test]
fn a_relist_without_the_node_forgets_its_zone() {
    let mut a = synced(true);
    publish(&mut a);
    assert!(a.index.node().zone.is_some());
    list(&mut a, Watched::Node, Vec::new());
    assert_eq!(a.index.node().zone, None);
    assert!(a.wants_publish());
}

#[test]
fn a_list_restarted_midway_starts_its_seen_set_over() {
    let mut a = applier(false);
    feed(&mut a, Update::ListStarted(Watched::EndpointSlices));
    feed(&mut a, Update::Listed(slice_object(slice("web-1", "web", &[("10.1.0.1", None)]))));
    feed(&mut a, Update::Listed(slice_object(slice("web-2", "web", &[("10.1.0.2", None)]))));
    // The continue token expired: the list starts again and this time lacks web-2.
    feed(&mut a, Update::ListStarted(Watched::EndpointSlices));
    feed(&mut a, Update::Listed(slice_object(slice("web-1", "web", &[("10.1.0.1", None)]))));
    feed(&mut a, Update::ListDone(Watched::EndpointSlices));
    let slices: Vec<String> = a.index.slices().map(|s| s.key.to_string()).collect();
    assert_eq!(slices, vec!["t/web-1".to_string()]);
}

#[test]
fn an_invalid_object_keeps_its_last_good_version() {
    let mut a = synced(false);
    publish(&mut a);
    feed(&mut a, Update::Applied(service_object(service("web", "not-an-ip"))));
    assert_eq!(a.stats.object_errors_total.load(Ordering::Relaxed), 1);
    assert!(!a.wants_publish());
    let kept = a.index.service(&key("web")).map(|s| s.cluster_ips.clone());
    assert_eq!(kept, Some(vec!["10.96.0.1".parse().unwrap_or_else(|e| panic!("{e}"))]));
}

#[test]
fn a_service_handed_to_another_proxy_is_removed() {
    let mut a = synced(false);
    publish(&mut a);
    let other: Service = from_json(json!({
        "metadata": {"name": "web", "namespace": "t", "labels": {"service.kubernetes.io/service-proxy-name": "other"}},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80}]},
    }));
    feed(&mut a, Update::Applied(service_object(other)));
    assert!(a.index.service(&key("web")).is_none());
    assert!(a.wants_publish());
    // The table says why it has no frontend for it (for `tpvs explain`), until a relist
    // without it, or its return to tpvs, forgets that.
    let table = publish(&mut a);
    let why: Vec<(String, &str)> = table.not_proxied().iter().map(|n| (n.service.to_string(), n.why.code())).collect();
    assert_eq!(why, vec![("t/web".to_string(), "other_proxy")]);
    assert_eq!(table.not_proxied()[0].addresses, vec!["10.96.0.1".parse::<std::net::IpAddr>().unwrap_or_else(|e| panic!("{e}"))]);
    list(&mut a, Watched::Services, Vec::new());
    assert!(publish(&mut a).not_proxied().is_empty(), "a relist without it forgets it");
    feed(&mut a, Update::Applied(service_object(service("web", "10.96.0.1"))));
    let table = publish(&mut a);
    assert!(table.not_proxied().is_empty() && backends(&table, "10.96.0.1").is_some());
}

#[test]
fn watch_failures_and_unnamed_objects_are_counted_and_change_nothing() {
    let mut a = synced(false);
    publish(&mut a);
    feed(&mut a, Update::Failed(Watched::Services, "connection refused".into()));
    feed(&mut a, Update::Applied(Object::Unnamed(Watched::EndpointSlices)));
    assert_eq!(a.stats.watch_errors_total.load(Ordering::Relaxed), 1);
    assert_eq!(a.stats.object_errors_total.load(Ordering::Relaxed), 1);
    assert!(!a.wants_publish());
    assert!(a.synced(), "a failure after the first list does not undo it");
}

#[test]
fn latency_samples_start_with_the_first_publish_and_skip_triggers_from_before_the_start() {
    let mut a = applier(false);
    list(&mut a, Watched::Services, vec![service_object(service("web", "10.96.0.1"))]);
    list(&mut a, Watched::EndpointSlices, Vec::new());
    assert!(a.pending.received.is_empty(), "the initial list is not a change anyone waits for");
    publish(&mut a);

    let stamped = |name: &str, at: SystemTime| {
        let mut s = slice(name, "web", &[("10.1.0.1", None)]);
        let stamp = jiff::Timestamp::try_from(at).unwrap_or_else(|e| panic!("{e}")).to_string();
        s.metadata.annotations = Some([(TRIGGER_TIME_ANNOTATION.to_string(), stamp)].into());
        slice_object(s)
    };
    feed(&mut a, Update::Applied(stamped("old", SystemTime::now() - Duration::from_secs(3600))));
    feed(&mut a, Update::Applied(stamped("new", SystemTime::now() + Duration::from_secs(1))));
    assert_eq!(a.pending.received.len(), 2);
    assert_eq!(a.pending.triggers.len(), 1, "a change made before the proxy started is not its latency");
}
