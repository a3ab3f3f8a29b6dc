//! `pkg/proxy/servicechangetracker_test.go`: which Services and Service ports kube-proxy
//! proxies, at which addresses.
//!
//! - `TestServiceToServiceMap`: ported; kube-proxy's expected port map (cluster IP, port,
//!   protocol, load-balancer VIPs, external IPs, health-check node port) is checked through
//!   the frontends tpvs opens. Rows left out, each for its reason:
//!   "nothing" (no Service, nothing to observe); "load balancer service ipMode Proxy feature
//!   gate disable" (the `LoadBalancerIPMode` gate switched off by emulating 1.31; tpvs follows
//!   the gate's default, on, pinned by the "feature gate enabled" rows). The rows "service with
//!   ipv4/ipv6 configurations under ipv4/ipv6 mode", "both ipv4 and ipv6 configurations ..."
//!   and "extra space in LoadBalancerSourceRanges" are the hand-written cases of
//!   `conformance.rs` (written first, for the fixes). kube-proxy runs one proxier per
//!   IP family and tpvs serves both, so the rows "service with ipv6 clusterIP under ipv4 mode"
//!   and "ipv4 clusterIP under ipv6 mode" (the other family's proxier filters the Service)
//!   are checked as: the Service is served in its own family only.
//! - `TestServiceMapUpdateHeadless`, `TestUpdateServiceTypeExternalName`: ported (nothing
//!   proxied, no health check).
//! - `TestBuildServiceMapAddRemove`, `TestBuildServiceMapServiceUpdate`: ported as changes
//!   (before, then after); the count of updated Services they also assert is kube-proxy's
//!   bookkeeping and is left out.
//! - `TestServiceCacheLeaks`: left out, it checks kube-proxy's change-tracker cache empties;
//!   no routing decision depends on it.

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service, ServiceStatus};

use super::{port, service};
use crate::{Case, Expect, Objects, backends, no_frontend, not_proxied};

fn with_ingress(mut svc: Service, ingress: &[(&str, Option<&str>)]) -> Service {
    let ingress = ingress
        .iter()
        .map(|(ip, mode)| LoadBalancerIngress { ip: Some(ip.to_string()), ip_mode: mode.map(str::to_string), ..LoadBalancerIngress::default() })
        .collect();
    svc.status = Some(ServiceStatus { load_balancer: Some(LoadBalancerStatus { ingress: Some(ingress) }), ..ServiceStatus::default() });
    svc
}

/// A frontend that exists (it has no endpoints: none of these rows has slices).
fn open(fe: &str) -> Expect {
    backends(fe, &[])
}

fn case(mirrors: &str, before: Vec<Service>, services: Vec<Service>, expect: Vec<Expect>) -> Case {
    Case {
        mirrors: mirrors.to_string(),
        node: "test-hostname",
        zone: None,
        before: Objects { services: before, slices: Vec::new() },
        objects: Objects { services, slices: Vec::new() },
        expect,
    }
}

fn headless(name: &str, ports: Vec<k8s_openapi::api::core::v1::ServicePort>) -> Service {
    service("ns2", name, "ClusterIP", "None", ports, |_| {})
}

fn cluster_ip_service() -> Service {
    service("ns2", "cluster-ip", "ClusterIP", "172.16.55.4", vec![port("p1", 1234, "UDP", Some(4321)), port("p2", 1235, "UDP", Some(5321))], |_| {})
}

fn node_port_service() -> Service {
    service("ns2", "node-port", "NodePort", "172.16.55.10", vec![port("port1", 345, "UDP", Some(678)), port("port2", 344, "TCP", Some(677))], |_| {})
}

/// ns1/load-balancer (ports port3, port4 unless renamed), `spec.loadBalancerIP` 5.6.7.8 and
/// ingress 10.1.2.4 with `ip_mode`.
fn load_balancer(names: [&str; 2], ip_mode: Option<&str>) -> Service {
    let svc = service(
        "ns1",
        "load-balancer",
        "LoadBalancer",
        "172.16.55.11",
        vec![port(names[0], 8675, "UDP", Some(30061)), port(names[1], 8676, "UDP", Some(30062))],
        |spec| spec.load_balancer_ip = Some("5.6.7.8".into()),
    );
    with_ingress(svc, &[("10.1.2.4", ip_mode)])
}

fn only_local_load_balancer(names: [&str; 2]) -> Service {
    let svc = service(
        "ns1",
        "only-local-load-balancer",
        "LoadBalancer",
        "172.16.55.12",
        vec![port(names[0], 8677, "UDP", Some(30063)), port(names[1], 8678, "UDP", Some(30064))],
        |spec| {
            spec.load_balancer_ip = Some("5.6.7.8".into());
            spec.external_traffic_policy = Some("Local".into());
            spec.health_check_node_port = Some(345);
        },
    );
    with_ingress(svc, &[("10.1.2.3", None)])
}

fn service_to_service_map() -> Vec<Case> {
    let lb_vip = |mirrors: &str, mode: Option<&str>, served: bool| {
        let mut expect = vec![open("UDP 172.16.55.11:8675"), open("UDP 172.16.55.11:8676"), no_frontend("UDP 5.6.7.8:8675")];
        if served {
            expect.extend([open("UDP 10.1.2.4:8675"), open("UDP 10.1.2.4:8676")]);
        } else {
            expect.extend([no_frontend("UDP 10.1.2.4:8675"), no_frontend("UDP 10.1.2.4:8676")]);
        }
        case(mirrors, vec![], vec![load_balancer(["port3", "port4"], mode)], expect)
    };
    let other_family = |name: &str, cluster_ip: &str, own: &str, other: &str| {
        let svc = service("test", name, "ClusterIP", cluster_ip, vec![port("testPort", 12345, "TCP", None)], |_| {});
        let svc = with_ingress(svc, &[("8.8.8.8", None), ("2001:db8:85a3::8a2e:370:7335", None)]);
        (svc, vec![open(&format!("TCP {own}:12345")), no_frontend(&format!("TCP {other}:12345"))])
    };
    let (v6_svc, v6_expect) = other_family("invalidIPv6InIPV4Mode", "2001:db8:85a3::8a2e:370:7334", "[2001:db8:85a3::8a2e:370:7335]", "8.8.8.8");
    let (v4_svc, v4_expect) = other_family("invalidIPv4InIPV6Mode", "10.0.0.1", "8.8.8.8", "[2001:db8:85a3::8a2e:370:7335]");
    let t = |row: &str| format!("TestServiceToServiceMap/{row}");
    vec![
        case(&t("headless service"), vec![], vec![headless("headless", vec![port("rpc", 1234, "UDP", None)])], vec![not_proxied("ns2/headless")]),
        case(&t("headless sctp service"), vec![], vec![headless("headless", vec![port("sip", 7777, "SCTP", None)])], vec![not_proxied("ns2/headless")]),
        case(&t("headless service without port"), vec![], vec![headless("headless-without-port", vec![])], vec![not_proxied("ns2/headless-without-port")]),
        // A ClusterIP Service's node ports are not opened.
        case(
            &t("cluster ip service"),
            vec![],
            vec![cluster_ip_service()],
            vec![open("UDP 172.16.55.4:1234"), open("UDP 172.16.55.4:1235"), no_frontend("UDP 0.0.0.0:4321"), no_frontend("UDP 0.0.0.0:5321")],
        ),
        case(
            &t("nodeport service"),
            vec![],
            vec![node_port_service()],
            vec![open("UDP 172.16.55.10:345"), open("TCP 172.16.55.10:344"), open("UDP 0.0.0.0:678"), open("TCP 0.0.0.0:677")],
        ),
        // The load-balancer VIPs come from status.loadBalancer.ingress; spec.loadBalancerIP is
        // only a request to the cloud provider.
        lb_vip(&t("load balancer service"), None, true),
        lb_vip(&t("load balancer service ipMode VIP feature gate disable"), Some("VIP"), true),
        lb_vip(&t("load balancer service ipMode VIP feature gate enabled"), Some("VIP"), true),
        lb_vip(&t("load balancer service ipMode Proxy feature gate enabled"), Some("Proxy"), false),
        case(
            &t("load balancer service with only local traffic policy"),
            vec![],
            vec![only_local_load_balancer(["portx", "porty"])],
            vec![
                open("UDP 10.1.2.3:8677"),
                open("UDP 10.1.2.3:8678"),
                open("UDP 172.16.55.12:8677"),
                // No endpoints anywhere: refused, not dropped.
                crate::when_empty("UDP 10.1.2.3:8677", "reject"),
                Expect::HealthCheck { port: 345, local_endpoints: 0 },
            ],
        ),
        case(
            &t("external name service"),
            vec![],
            vec![service("ns2", "external-name", "ExternalName", "172.16.55.4", vec![port("portz", 1235, "UDP", Some(5321))], |spec| {
                spec.external_name = Some("foo2.bar.com".into());
            })],
            vec![not_proxied("ns2/external-name"), no_frontend("UDP 172.16.55.4:1235")],
        ),
        case(&t("service with ipv6 clusterIP under ipv4 mode, service should be filtered"), vec![], vec![v6_svc], v6_expect),
        case(&t("service with ipv4 clusterIP under ipv6 mode, service should be filtered"), vec![], vec![v4_svc], v4_expect),
    ]
}

fn service_map_updates() -> Vec<Case> {
    let all = || vec![cluster_ip_service(), node_port_service(), load_balancer(["foobar", "baz"], None), only_local_load_balancer(["foobar2", "baz"])];
    let svc_v1 = || service("ns1", "svc1", "ClusterIP", "172.16.55.4", vec![port("p1", 1234, "UDP", Some(4321)), port("p2", 1235, "TCP", Some(5321))], |_| {});
    let svc_v2 = || {
        let svc = service("ns1", "svc1", "LoadBalancer", "172.16.55.4", vec![port("p1", 1234, "UDP", Some(4321)), port("p2", 1235, "TCP", Some(5321))], |spec| {
            spec.load_balancer_ip = Some("5.6.7.8".into());
            spec.external_traffic_policy = Some("Local".into());
            spec.health_check_node_port = Some(345);
        });
        with_ingress(svc, &[("10.1.2.3", None)])
    };
    let one_service = service("ns2", "cluster-ip", "ClusterIP", "172.16.55.4", vec![port("p2", 1235, "UDP", Some(5321))], |_| {});
    vec![
        case(
            "TestServiceMapUpdateHeadless",
            vec![],
            vec![headless("headless", vec![port("rpc", 1234, "UDP", None)]), headless("headless-without-port", vec![])],
            vec![not_proxied("ns2/headless"), not_proxied("ns2/headless-without-port"), Expect::NoHealthCheck],
        ),
        case(
            "TestUpdateServiceTypeExternalName",
            vec![],
            vec![service("ns2", "external-name", "ExternalName", "172.16.55.4", vec![port("blah", 1235, "UDP", Some(5321))], |spec| {
                spec.external_name = Some("foo2.bar.com".into());
            })],
            vec![not_proxied("ns2/external-name"), Expect::NoHealthCheck],
        ),
        // Eight Service ports; the only health check is the Local load balancer's.
        case(
            "TestBuildServiceMapAddRemove (added)",
            vec![],
            all(),
            vec![
                open("UDP 172.16.55.4:1234"),
                open("UDP 172.16.55.4:1235"),
                open("UDP 172.16.55.10:345"),
                open("TCP 172.16.55.10:344"),
                open("UDP 172.16.55.11:8675"),
                open("UDP 172.16.55.11:8676"),
                open("UDP 172.16.55.12:8677"),
                open("UDP 172.16.55.12:8678"),
                Expect::HealthCheck { port: 345, local_endpoints: 0 },
            ],
        ),
        // One port of one Service left; no health check.
        case(
            "TestBuildServiceMapAddRemove (removed)",
            all(),
            vec![one_service],
            vec![
                open("UDP 172.16.55.4:1235"),
                no_frontend("UDP 172.16.55.4:1234"),
                no_frontend("UDP 172.16.55.10:345"),
                no_frontend("UDP 172.16.55.11:8675"),
                no_frontend("UDP 10.1.2.4:8675"),
                no_frontend("UDP 172.16.55.12:8677"),
                Expect::NoHealthCheck,
            ],
        ),
        case("TestBuildServiceMapServiceUpdate (ClusterIP)", vec![], vec![svc_v1()], vec![open("UDP 172.16.55.4:1234"), open("TCP 172.16.55.4:1235"), Expect::NoHealthCheck]),
        case(
            "TestBuildServiceMapServiceUpdate (to LoadBalancer)",
            vec![svc_v1()],
            vec![svc_v2()],
            vec![open("UDP 172.16.55.4:1234"), open("TCP 10.1.2.3:1235"), Expect::HealthCheck { port: 345, local_endpoints: 0 }],
        ),
        case(
            "TestBuildServiceMapServiceUpdate (no change)",
            vec![svc_v2()],
            vec![svc_v2()],
            vec![open("UDP 172.16.55.4:1234"), open("TCP 10.1.2.3:1235"), Expect::HealthCheck { port: 345, local_endpoints: 0 }],
        ),
        case(
            "TestBuildServiceMapServiceUpdate (back to ClusterIP)",
            vec![svc_v2()],
            vec![svc_v1()],
            vec![open("UDP 172.16.55.4:1234"), no_frontend("TCP 10.1.2.3:1235"), no_frontend("TCP 0.0.0.0:5321"), Expect::NoHealthCheck],
        ),
    ]
}

pub fn cases() -> Vec<Case> {
    let mut out = service_to_service_map();
    out.extend(service_map_updates());
    out
}
