//! The API source against an in-test API double: kube-rs's real client and watcher, real
//! HTTP on 127.0.0.1, the list/watch wire protocol (paging, resourceVersion, bookmarks,
//! 410 Gone, dropped streams, an unreachable server).

mod common;
#[path = "support/apiserver.rs"]
mod apiserver;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiserver::{ApiServer, Kind};
use common::{service, slice};
use controlplane::kube_source::TRIGGER_TIME_ANNOTATION;
use controlplane::{CompileOptions, FrontendKey, KubeSource, KubeSourceConfig, KubeSourceStats, Protocol, Publisher, RoutingTable};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const NODE: &str = "node-a";

struct Running {
    publisher: Arc<Publisher>,
    synced: Arc<AtomicBool>,
    stats: Arc<KubeSourceStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn start(server: &ApiServer, config: KubeSourceConfig) -> Running {
    let publisher = Arc::new(Publisher::new());
    let opts = CompileOptions { node_name: Some(NODE.into()), ..Default::default() };
    let source = KubeSource::new(server.client(), opts, Arc::clone(&publisher), config);
    let synced = source.synced_flag();
    let stats = source.stats();
    assert!(!source.synced());
    let task = tokio::spawn(source.run());
    Running { publisher, synced, stats, task }
}

fn quick() -> KubeSourceConfig {
    KubeSourceConfig { min_sync_period: Duration::from_millis(20), ..Default::default() }
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn node(name: &str, zone: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("topology.kubernetes.io/zone".to_string(), zone.to_string())])),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn vip(i: usize) -> String {
    format!("10.96.0.{}", i + 1)
}

fn key(ip: &str) -> FrontendKey {
    FrontendKey::new(ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}")), 80, Protocol::Tcp)
}

/// Backends of the frontend `ip:80/TCP`, or `None` when the frontend does not exist.
fn backends(table: &RoutingTable, ip: &str) -> Option<Vec<SocketAddr>> {
    table.get(&key(ip)).map(|f| f.backends().iter().map(|b| b.addr.0).collect())
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Services svc-0..n with one slice each (one endpoint 10.1.0.i:8080), and this node.
fn seed(server: &ApiServer, n: usize) {
    for i in 0..n {
        server.apply(service("default", &format!("svc-{i}"), &vip(i), 80));
        server.apply(slice("default", &format!("svc-{i}-a"), &format!("svc-{i}"), 8080, &[&format!("10.1.0.{}", i + 1)]));
    }
    server.apply(node(NODE, "zone-a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_publishes_once_after_every_list_is_complete() {
    let server = ApiServer::start().await;
    seed(&server, 5);
    server.hold_lists(Kind::Nodes, true);
    let src = start(&server, KubeSourceConfig { page_size: 2, ..quick() });

    // Services and slices are listed in pages, then watched; the Node list is still held.
    wait_for("services and slices watches", Duration::from_secs(10), || {
        let reqs = server.requests();
        ["/api/v1/services?", "/apis/discovery.k8s.io/v1/endpointslices?"]
            .iter()
            .all(|p| reqs.iter().any(|r| r.starts_with(p) && r.contains("watch=true")))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(src.publisher.generation(), 0, "published before the Node list completed");
    assert!(!src.synced.load(Ordering::Acquire));
    let reqs = server.requests();
    assert!(reqs.iter().any(|r| r.starts_with("/api/v1/services?") && r.contains("continue=")), "no paged list: {reqs:?}");
    assert!(reqs.iter().any(|r| r.starts_with("/api/v1/services?") && r.contains("limit=2")), "{reqs:?}");

    server.hold_lists(Kind::Nodes, false);
    wait_for("first publish", Duration::from_secs(10), || src.publisher.generation() >= 1).await;
    assert!(src.synced.load(Ordering::Acquire));
    let table = src.publisher.current();
    assert_eq!(table.len(), 5);
    for i in 0..5 {
        assert_eq!(backends(&table, &vip(i)), Some(vec![sa(&format!("10.1.0.{}:8080", i + 1))]));
    }
    let reqs = server.requests();
    assert!(
        reqs.iter().any(|r| r.starts_with("/api/v1/nodes?") && r.contains("fieldSelector=metadata.name%3Dnode-a")),
        "the Node is watched by name: {reqs:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(src.publisher.generation(), 1, "exactly one publish for the initial sync");
    assert_eq!(src.stats.publishes_total.load(Ordering::Relaxed), 1);
    assert!(src.stats.initial_sync().is_some());
    assert_eq!(src.stats.event_to_publish.count(), 0, "the initial list is not a change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_slices_follow_add_modify_delete() {
    let server = ApiServer::start().await;
    seed(&server, 2);
    let src = start(&server, quick());
    wait_for("first publish", Duration::from_secs(10), || src.publisher.generation() >= 1).await;

    // Add a Service, then its slice.
    server.apply(service("web", "new", "10.96.1.1", 80));
    wait_for("new service", Duration::from_secs(5), || src.publisher.current().get(&key("10.96.1.1")).is_some()).await;
    assert_eq!(backends(&src.publisher.current(), "10.96.1.1"), Some(vec![]), "no endpoints yet");
    let mut s = slice("web", "new-a", "new", 8080, &["10.2.0.1"]);
    let trigger = jiff::Timestamp::now().to_string();
    s.metadata.annotations = Some(BTreeMap::from([(TRIGGER_TIME_ANNOTATION.to_string(), trigger)]));
    server.apply(s);
    wait_for("new slice", Duration::from_secs(5), || {
        backends(&src.publisher.current(), "10.96.1.1") == Some(vec![sa("10.2.0.1:8080")])
    })
    .await;
    assert!(src.stats.network_programming.count() >= 1, "trigger time not measured");
    assert!(src.stats.event_to_publish.count() >= 2);

    // Modify the slice.
    server.apply(slice("web", "new-a", "new", 8080, &["10.2.0.1", "10.2.0.2"]));
    wait_for("modified slice", Duration::from_secs(5), || {
        backends(&src.publisher.current(), "10.96.1.1") == Some(vec![sa("10.2.0.1:8080"), sa("10.2.0.2:8080")])
    })
    .await;

    // A malformed update is counted and the last good version stays.
    let generation = src.publisher.generation();
    server.apply(slice("web", "new-a", "new", 8080, &["not-an-ip"]));
    wait_for("object error counted", Duration::from_secs(5), || src.stats.object_errors_total.load(Ordering::Relaxed) == 1)
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(src.publisher.generation(), generation, "a rejected object must not publish");
    assert_eq!(backends(&src.publisher.current(), "10.96.1.1").map(|b| b.len()), Some(2));

    // Modify the Service: a new port replaces the old frontend.
    server.apply(service("web", "new", "10.96.1.1", 81));
    wait_for("service port change", Duration::from_secs(5), || {
        let t = src.publisher.current();
        t.get(&key("10.96.1.1")).is_none()
            && t.get(&FrontendKey::new(sa("10.96.1.1:81").ip(), 81, Protocol::Tcp)).is_some()
    })
    .await;

    // Delete the slice: the frontend stays, with no backends (reject).
    assert!(server.delete(Kind::EndpointSlices, "default", "svc-0-a"));
    wait_for("slice deleted", Duration::from_secs(5), || backends(&src.publisher.current(), &vip(0)) == Some(vec![])).await;

    // Delete a Service: its frontends go.
    assert!(server.delete(Kind::Services, "default", "svc-1"));
    wait_for("service deleted", Duration::from_secs(5), || src.publisher.current().get(&key(&vip(1))).is_none()).await;

    // A Service handed to another proxy leaves the table like a deleted one.
    let mut other = service("default", "svc-0", &vip(0), 80);
    other.metadata.labels =
        Some(BTreeMap::from([("service.kubernetes.io/service-proxy-name".to_string(), "other".to_string())]));
    server.apply(other);
    wait_for("service handed to another proxy", Duration::from_secs(5), || {
        src.publisher.current().get(&key(&vip(0))).is_none()
    })
    .await;
    assert_eq!(src.stats.relists_total.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relist_after_410_keeps_forwarding_and_converges() {
    let server = ApiServer::start().await;
    // svc-0 (stays), svc-1 (deleted while the watch is gone), svc-3 (stays, listed last).
    for i in [0usize, 1, 3] {
        server.apply(service("default", &format!("svc-{i}"), &vip(i), 80));
        server.apply(slice("default", &format!("svc-{i}-a"), &format!("svc-{i}"), 8080, &[&format!("10.1.0.{}", i + 1)]));
    }
    server.apply(node(NODE, "zone-a"));
    let src = start(&server, KubeSourceConfig { page_size: 1, ..quick() });
    wait_for("first publish", Duration::from_secs(10), || src.publisher.generation() >= 1).await;
    let seen: Arc<Mutex<Vec<Arc<RoutingTable>>>> = Arc::default();
    let tables = Arc::clone(&seen);
    src.publisher.on_publish(move |t| tables.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::clone(t)));

    // Slow pages, so the relist is visibly in progress for a while.
    server.set_page_delay(Duration::from_millis(250));
    server.expire_watches();
    // While the client is away: svc-1 deleted, svc-2 added, svc-0's slice changed.
    assert!(server.delete(Kind::Services, "default", "svc-1"));
    assert!(server.delete(Kind::EndpointSlices, "default", "svc-1-a"));
    server.apply(service("default", "svc-2", &vip(2), 80));
    server.apply(slice("default", "svc-2-a", "svc-2", 8080, &["10.1.0.3"]));
    server.apply(slice("default", "svc-0-a", "svc-0", 8080, &["10.1.9.1"]));
    server.compact();

    wait_for("convergence after the relist", Duration::from_secs(20), || {
        let t = src.publisher.current();
        t.get(&key(&vip(1))).is_none()
            && backends(&t, &vip(2)) == Some(vec![sa("10.1.0.3:8080")])
            && backends(&t, &vip(0)) == Some(vec![sa("10.1.9.1:8080")])
    })
    .await;
    assert!(src.stats.relists_total.load(Ordering::Relaxed) >= 2, "services and slices relisted");
    let tables = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(!tables.is_empty());
    for t in &tables {
        assert!(t.get(&key(&vip(0))).is_some(), "svc-0 missing from generation {}", t.generation);
        assert!(t.get(&key(&vip(3))).is_some(), "svc-3 missing from generation {}", t.generation);
    }
    // Upserts went live during the relist while svc-1 was still there: removal waited for the
    // end of the list.
    assert!(
        tables.iter().any(|t| t.get(&key(&vip(2))).is_some() && t.get(&key(&vip(1))).is_some()),
        "no table had the relist's additions before its removals"
    );
    // After the relist the watch resumes: a new change still arrives.
    server.set_page_delay(Duration::ZERO);
    server.apply(slice("default", "svc-3-a", "svc-3", 8080, &["10.1.9.4"]));
    wait_for("change after the relist", Duration::from_secs(10), || {
        backends(&src.publisher.current(), &vip(3)) == Some(vec![sa("10.1.9.4:8080")])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_continue_token_restarts_the_list_before_any_publish() {
    let server = ApiServer::start().await;
    seed(&server, 4);
    server.set_page_delay(Duration::from_millis(200));
    let src = start(&server, KubeSourceConfig { page_size: 1, ..quick() });
    wait_for("a continued services list", Duration::from_secs(10), || {
        server.requests().iter().any(|r| r.starts_with("/api/v1/services?") && r.contains("continue="))
    })
    .await;
    // History moves on and is compacted: the next page's token is too old (HTTP 410 Gone),
    // and the list starts over, this time with the new Service.
    server.apply(service("default", "svc-9", "10.96.0.99", 80));
    server.compact();
    server.set_page_delay(Duration::from_millis(20));
    wait_for("first publish", Duration::from_secs(20), || src.publisher.generation() >= 1).await;
    assert_eq!(src.publisher.current().len(), 5);
    assert!(src.stats.watch_errors_total.load(Ordering::Relaxed) >= 1);
    assert!(src.stats.relists_total.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_streams_resume_from_the_last_bookmark_without_relisting() {
    let server = ApiServer::start().await;
    seed(&server, 2);
    let src = start(&server, quick());
    wait_for("first publish", Duration::from_secs(10), || src.publisher.generation() >= 1).await;
    // Other resources move the resourceVersion on; a bookmark tells the services watch so.
    server.apply(node(NODE, "zone-b"));
    let rv = server.bookmark();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.drop_watches();
    server.apply(slice("default", "svc-1-a", "svc-1", 8080, &["10.1.7.7"]));
    wait_for("change after the dropped stream", Duration::from_secs(10), || {
        backends(&src.publisher.current(), &vip(1)) == Some(vec![sa("10.1.7.7:8080")])
    })
    .await;
    let reqs = server.requests();
    let want = format!("resourceVersion={rv}");
    assert!(
        reqs.iter().any(|r| r.starts_with("/api/v1/services?")
            && r.contains("watch=true")
            && r.split(['?', '&']).any(|p| p == want)),
        "the services watch did not resume from the bookmark {rv}: {reqs:?}"
    );
    assert!(reqs.iter().any(|r| r.contains("allowWatchBookmarks=true")));
    assert_eq!(src.stats.relists_total.load(Ordering::Relaxed), 0, "a dropped stream must not relist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_outage_leaves_the_table_and_recovery_resumes() {
    let server = ApiServer::start().await;
    seed(&server, 3);
    let src = start(&server, quick());
    wait_for("first publish", Duration::from_secs(10), || src.publisher.generation() >= 1).await;
    let before = src.publisher.current();

    server.set_down(true);
    // Changes made while the client cannot see them.
    server.apply(service("default", "late", "10.96.2.1", 80));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(Arc::ptr_eq(&before, &src.publisher.current()), "the table changed during the outage");
    assert!(src.stats.watch_errors_total.load(Ordering::Relaxed) >= 1, "the outage went unnoticed");
    assert!(src.synced.load(Ordering::Acquire), "an outage after sync keeps the proxy ready");

    server.set_down(false);
    wait_for("recovery", Duration::from_secs(20), || src.publisher.current().get(&key("10.96.2.1")).is_some()).await;
    let after = src.publisher.current();
    for i in 0..3 {
        assert!(after.get(&key(&vip(i))).is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_coalesced_into_one_publish() {
    let server = ApiServer::start().await;
    seed(&server, 20);
    let period = Duration::from_millis(800);
    let src = start(&server, KubeSourceConfig { min_sync_period: period, ..Default::default() });
    wait_for("first publish", Duration::from_secs(10), || src.publisher.generation() >= 1).await;
    let Some((first_at, _)) = src.publisher.last_publish() else { panic!("no publish recorded") };

    // Within the period after a publish: 20 changes, one publish at the period's end.
    for i in 0..20 {
        server.apply(slice("default", &format!("svc-{i}-a"), &format!("svc-{i}"), 8080, &[&format!("10.1.5.{}", i + 1)]));
    }
    wait_for("coalesced publish", Duration::from_secs(5), || src.publisher.generation() >= 2).await;
    let Some((second_at, _)) = src.publisher.last_publish() else { panic!("no publish recorded") };
    assert!(second_at.duration_since(first_at) >= period, "published sooner than the min sync period");
    tokio::time::sleep(period + Duration::from_millis(200)).await;
    assert_eq!(src.publisher.generation(), 2, "the burst took more than one publish");
    let table = src.publisher.current();
    for i in 0..20 {
        assert_eq!(backends(&table, &vip(i)), Some(vec![sa(&format!("10.1.5.{}:8080", i + 1))]));
    }
    assert_eq!(src.stats.event_to_publish.count(), 20);

    // After a quiet period, a single change is published at once, not a period later.
    let sent = Instant::now();
    server.apply(slice("default", "svc-0-a", "svc-0", 8080, &["10.1.6.1"]));
    wait_for("isolated change", Duration::from_secs(5), || src.publisher.generation() >= 3).await;
    assert!(sent.elapsed() < period / 2, "an isolated change waited {:?}", sent.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_kube_proxy_only_labelled_services_are_watched() {
    let label = |mut s: k8s_openapi::api::core::v1::Service, value: &str| {
        s.metadata.labels =
            Some(BTreeMap::from([("service.kubernetes.io/service-proxy-name".to_string(), value.to_string())]));
        s
    };
    let server = ApiServer::start().await;
    seed(&server, 2);
    server.apply(label(service("default", "svc-0", &vip(0), 80), "tpvs"));
    let src = start(&server, KubeSourceConfig { service_selector: Some(controlplane::BESIDE_KUBE_PROXY.into()), ..quick() });
    wait_for("first publish", Duration::from_secs(10), || src.publisher.generation() >= 1).await;
    let table = src.publisher.current();
    assert!(table.get(&key(&vip(0))).is_some(), "the labelled Service is proxied");
    assert!(table.get(&key(&vip(1))).is_none(), "kube-proxy keeps the unlabelled one");

    // Labelling a Service hands it over; removing the label hands it back.
    server.apply(label(service("default", "svc-1", &vip(1), 80), "tpvs"));
    wait_for("svc-1 handed to tpvs", Duration::from_secs(5), || src.publisher.current().get(&key(&vip(1))).is_some()).await;
    server.apply(service("default", "svc-0", &vip(0), 80));
    wait_for("svc-0 handed back", Duration::from_secs(5), || src.publisher.current().get(&key(&vip(0))).is_none()).await;
    assert!(server.requests().iter().any(|r| r.starts_with("/api/v1/services?") && r.contains("labelSelector=")));
}

/// kube-proxy's informer selects `!service.kubernetes.io/headless`: a Service carrying that
/// label is never proxied, even with a real ClusterIP, and the API server filters it (the
/// watch sends the selector, with or without `--beside-kube-proxy`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_label_is_excluded_by_the_services_watch() {
    let headless = |mut s: k8s_openapi::api::core::v1::Service| {
        s.metadata.labels = Some(BTreeMap::from([("service.kubernetes.io/headless".to_string(), String::new())]));
        s
    };
    for config in [quick(), KubeSourceConfig { service_selector: Some(controlplane::BESIDE_KUBE_PROXY.into()), ..quick() }] {
        let beside = config.service_selector.is_some();
        let tag = |mut s: k8s_openapi::api::core::v1::Service| {
            if beside {
                s.metadata.labels.get_or_insert_with(BTreeMap::new).insert(
                    "service.kubernetes.io/service-proxy-name".to_string(),
                    "tpvs".to_string(),
                );
            }
            s
        };
        let server = ApiServer::start().await;
        seed(&server, 2);
        server.apply(tag(service("default", "svc-0", &vip(0), 80)));
        server.apply(tag(headless(service("default", "svc-1", &vip(1), 80))));
        let src = start(&server, config);
        wait_for("first publish", Duration::from_secs(10), || src.publisher.generation() >= 1).await;
        let table = src.publisher.current();
        assert!(table.get(&key(&vip(0))).is_some(), "the plain Service is proxied (beside: {beside})");
        assert!(table.get(&key(&vip(1))).is_none(), "the headless-labelled Service is not (beside: {beside})");

        // Labelling a proxied Service headless takes it away; the watch sees it stop matching.
        server.apply(tag(headless(service("default", "svc-0", &vip(0), 80))));
        wait_for("svc-0 withdrawn", Duration::from_secs(5), || src.publisher.current().get(&key(&vip(0))).is_none())
            .await;
        let sent: Vec<String> = server.requests().into_iter().filter(|r| r.starts_with("/api/v1/services?")).collect();
        assert!(!sent.is_empty());
        for r in &sent {
            assert!(
                r.contains("labelSelector=") && r.contains("%21service.kubernetes.io%2Fheadless"),
                "services request without the headless exclusion: {r}"
            );
        }
    }
}
