//! The incremental index: what a change recompiles, and what it must leave alone.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{service, slice};
use controlplane::model::{ServiceInfo, SliceInfo};
use controlplane::{AddressProblem, ClusterIndex, CompileOptions, FrontendKey, FrontendKind, ObjectKey, Protocol, Refusal, WhenEmpty};

fn svc_info(ns: &str, name: &str, ip: &str) -> ServiceInfo {
    match ServiceInfo::from_service(&service(ns, name, ip, 80)) {
        Ok(Ok(info)) => info,
        other => panic!("fixture service did not convert: {other:?}"),
    }
}

/// A Service at `ip` that also names `external` as its externalIPs.
fn svc_with_external(ns: &str, name: &str, ip: &str, external: &[&str]) -> ServiceInfo {
    let mut svc = service(ns, name, ip, 80);
    if let Some(spec) = svc.spec.as_mut() {
        spec.external_ips = Some(external.iter().map(|s| s.to_string()).collect());
    }
    match ServiceInfo::from_service(&svc) {
        Ok(Ok(info)) => info,
        other => panic!("fixture service did not convert: {other:?}"),
    }
}

fn slice_info(ns: &str, name: &str, svc: &str, ips: &[&str]) -> SliceInfo {
    match SliceInfo::from_slice(&slice(ns, name, svc, 8080, ips)) {
        Ok(Some(info)) => info,
        other => panic!("fixture slice did not convert: {other:?}"),
    }
}

fn key(ip: &str) -> FrontendKey {
    FrontendKey::new(ip.parse().unwrap_or_else(|e| panic!("{e}")), 80, Protocol::Tcp)
}

fn addrs(index_table: &controlplane::RoutingTable, ip: &str) -> Vec<SocketAddr> {
    let f = index_table.get(&key(ip)).unwrap_or_else(|| panic!("no frontend {ip}"));
    f.backends().iter().map(|b| b.addr.0).collect()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_slice_change_recompiles_only_its_service() {
    let mut index = ClusterIndex::new(CompileOptions::default());
    for i in 0..50 {
        index.upsert_service(svc_info("ns", &format!("s{i}"), &format!("10.96.0.{i}")));
        index.upsert_slice(slice_info("ns", &format!("s{i}-a"), &format!("s{i}"), &[&format!("10.1.0.{i}")]));
    }
    let (before, conflicts) = index.build();
    assert!(conflicts.is_empty());
    assert_eq!(before.len(), 50);
    assert!(!index.has_changes());

    index.upsert_slice(slice_info("ns", "s7-a", "s7", &["10.1.0.7", "10.1.1.7"]));
    assert!(index.has_changes());
    let (after, _) = index.build();
    assert_eq!(addrs(&after, "10.96.0.7"), vec![sa("10.1.0.7:8080"), sa("10.1.1.7:8080")]);
    for i in (0..50).filter(|i| *i != 7) {
        let k = key(&format!("10.96.0.{i}"));
        let (Some(a), Some(b)) = (before.get(&k), after.get(&k)) else { panic!("frontend {k} missing") };
        assert!(Arc::ptr_eq(a, b), "untouched service s{i} was recompiled");
    }
    // The old table is untouched: readers holding it keep a consistent view.
    assert_eq!(addrs(&before, "10.96.0.7"), vec![sa("10.1.0.7:8080")]);
}

#[test]
fn an_unchanged_upsert_is_not_a_change() {
    let mut index = ClusterIndex::new(CompileOptions::default());
    index.upsert_service(svc_info("ns", "a", "10.96.0.1"));
    index.upsert_slice(slice_info("ns", "a-1", "a", &["10.1.0.1"]));
    let _ = index.build();
    index.upsert_service(svc_info("ns", "a", "10.96.0.1"));
    index.upsert_slice(slice_info("ns", "a-1", "a", &["10.1.0.1"]));
    assert!(!index.has_changes());
}

#[test]
fn backend_counters_survive_rebuilds() {
    let mut index = ClusterIndex::new(CompileOptions::default());
    index.upsert_service(svc_info("ns", "a", "10.96.0.1"));
    index.upsert_slice(slice_info("ns", "a-1", "a", &["10.1.0.1"]));
    let (t1, _) = index.build();
    let guard = t1.get(&key("10.96.0.1")).and_then(|f| f.backends().get(0)).map(|b| b.stats.open());
    index.upsert_slice(slice_info("ns", "a-1", "a", &["10.1.0.1", "10.1.0.2"]));
    let (t2, _) = index.build();
    let f = t2.get(&key("10.96.0.1")).unwrap_or_else(|| panic!("frontend gone"));
    let kept = f.backends().iter().find(|b| b.addr.0 == sa("10.1.0.1:8080")).unwrap_or_else(|| panic!("backend gone"));
    assert_eq!(kept.stats.active(), 1, "lc must still see the open connection after a rebuild");
    drop(guard);
    assert_eq!(kept.stats.active(), 0);
}

#[test]
fn endpoints_gone_keeps_the_frontend_and_rejects() {
    let mut index = ClusterIndex::new(CompileOptions::default());
    index.upsert_service(svc_info("ns", "a", "10.96.0.1"));
    index.upsert_slice(slice_info("ns", "a-1", "a", &["10.1.0.1"]));
    let _ = index.build();
    index.remove_slice(&ObjectKey::new("ns", "a-1"));
    let (t, _) = index.build();
    let f = t.get(&key("10.96.0.1")).unwrap_or_else(|| panic!("the VIP must stay in the table"));
    assert!(f.backends().is_empty());
    assert_eq!(f.when_empty, WhenEmpty::Reject);

    index.remove_service(&ObjectKey::new("ns", "a"));
    let (t, _) = index.build();
    assert!(t.get(&key("10.96.0.1")).is_none());
}

#[test]
fn conflicting_services_first_name_wins_and_loser_takes_over_later() {
    let mut index = ClusterIndex::new(CompileOptions::default());
    index.upsert_service(svc_info("ns", "zeta", "10.96.0.1"));
    index.upsert_slice(slice_info("ns", "zeta-1", "zeta", &["10.1.0.26"]));
    let _ = index.build();
    index.upsert_service(svc_info("ns", "alpha", "10.96.0.1"));
    index.upsert_slice(slice_info("ns", "alpha-1", "alpha", &["10.1.0.1"]));
    let (t, conflicts) = index.build();
    assert!(
        matches!(conflicts.as_slice(), [Refusal::Conflict(c)] if c.winner == "ns/alpha" && c.loser == "ns/zeta"),
        "{conflicts:?}"
    );
    assert_eq!(t.refused(), conflicts.as_slice(), "the table carries the refusal in force");
    assert_eq!(addrs(&t, "10.96.0.1"), vec![sa("10.1.0.1:8080")]);

    index.remove_service(&ObjectKey::new("ns", "alpha"));
    let (t, _) = index.build();
    assert_eq!(addrs(&t, "10.96.0.1"), vec![sa("10.1.0.26:8080")], "zeta takes the VIP back");
}

#[test]
fn a_slice_relabelled_to_another_service_moves() {
    let mut index = ClusterIndex::new(CompileOptions::default());
    index.upsert_service(svc_info("ns", "a", "10.96.0.1"));
    index.upsert_service(svc_info("ns", "b", "10.96.0.2"));
    index.upsert_slice(slice_info("ns", "x", "a", &["10.1.0.1"]));
    let _ = index.build();
    index.upsert_slice(slice_info("ns", "x", "b", &["10.1.0.1"]));
    let (t, _) = index.build();
    assert!(addrs(&t, "10.96.0.1").is_empty());
    assert_eq!(addrs(&t, "10.96.0.2"), vec![sa("10.1.0.1:8080")]);
}

#[test]
fn a_cluster_ip_is_never_taken_by_another_services_external_ip_whatever_the_order() {
    // `aaa` sorts first, so by name alone it would win; it arrives first, too.
    let mut index = ClusterIndex::new(CompileOptions::default());
    index.upsert_service(svc_with_external("ns", "aaa", "10.96.0.50", &["10.96.0.10"]));
    index.upsert_slice(slice_info("ns", "aaa-1", "aaa", &["10.1.0.66"]));
    let (t, _) = index.build();
    assert_eq!(addrs(&t, "10.96.0.10"), vec![sa("10.1.0.66:8080")], "no ClusterIP there yet: an externalIP like any");

    index.upsert_service(svc_info("ns", "zzz-dns", "10.96.0.10"));
    index.upsert_slice(slice_info("ns", "zzz-dns-1", "zzz-dns", &["10.1.0.53"]));
    let (t, found) = index.build();
    let f = t.get(&key("10.96.0.10")).unwrap_or_else(|| panic!("the ClusterIP must be served"));
    assert_eq!((f.kind, &*f.service.name), (FrontendKind::ClusterIp, "zzz-dns"));
    assert_eq!(addrs(&t, "10.96.0.10"), vec![sa("10.1.0.53:8080")]);
    assert_eq!(addrs(&t, "10.96.0.50"), vec![sa("10.1.0.66:8080")], "the claimer keeps its own ClusterIP");
    let want = |r: &Refusal| {
        matches!(r, Refusal::Address(a) if a.service == "ns/aaa" && a.field == "spec.externalIPs"
            && a.problem == AddressProblem::ClusterIpOf("ns/zzz-dns".into()))
    };
    assert!(matches!(found.as_slice(), [r] if want(r)), "{found:?}");
    assert!(matches!(t.refused(), [r] if want(r)), "{:?}", t.refused());
    let msg = t.refused()[0].to_string();
    assert!(msg.contains("ns/aaa") && msg.contains("ns/zzz-dns") && msg.contains("10.96.0.10"), "{msg}");

    // An unrelated change keeps it that way, and the refusal stays on record.
    index.upsert_service(svc_info("ns", "other", "10.96.0.77"));
    let (t, _) = index.build();
    assert_eq!(addrs(&t, "10.96.0.10"), vec![sa("10.1.0.53:8080")]);
    assert_eq!(t.refused().len(), 1);

    // The ClusterIP gone, the address is free to claim again.
    index.remove_service(&ObjectKey::new("ns", "zzz-dns"));
    let (t, _) = index.build();
    assert_eq!(addrs(&t, "10.96.0.10"), vec![sa("10.1.0.66:8080")]);
    assert!(t.refused().is_empty(), "{:?}", t.refused());
}

#[test]
fn an_unspecified_external_ip_is_refused_and_the_rest_of_the_service_served() {
    let mut index = ClusterIndex::new(CompileOptions::default());
    index.upsert_service(svc_with_external("ns", "wild", "10.96.0.1", &["0.0.0.0", "192.0.2.1"]));
    index.upsert_slice(slice_info("ns", "wild-1", "wild", &["10.1.0.1"]));
    let (t, _) = index.build();
    let mut have: Vec<String> = t.frontends().map(|f| f.key.to_string()).collect();
    have.sort();
    assert_eq!(have, ["10.96.0.1:80", "192.0.2.1:80"]);
    assert!(
        matches!(t.refused(), [Refusal::Address(a)] if a.addr.is_unspecified() && a.problem == AddressProblem::Unspecified),
        "{:?}",
        t.refused()
    );
}

#[test]
fn external_ip_cidrs_restrict_external_ips_only() {
    let opts = CompileOptions { external_ip_cidrs: vec!["192.0.2.0/24".parse().unwrap_or_else(|e| panic!("{e}"))], ..CompileOptions::default() };
    let mut index = ClusterIndex::new(opts);
    index.upsert_service(svc_with_external("ns", "web", "10.96.0.1", &["192.0.2.1", "203.0.113.1"]));
    let (t, _) = index.build();
    let mut have: Vec<String> = t.frontends().map(|f| f.key.to_string()).collect();
    have.sort();
    assert_eq!(have, ["10.96.0.1:80", "192.0.2.1:80"]);
    assert!(matches!(t.refused(), [Refusal::Address(a)] if a.problem == AddressProblem::NotAllowed), "{:?}", t.refused());
}
