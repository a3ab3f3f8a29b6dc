//! The clients a load-balancer frontend admits (`spec.loadBalancerSourceRanges`).

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::model::{NodeInfo, ServiceInfo};

/// The source ranges a load-balancer IP of `family`'s family admits; empty admits all.
///
/// The Service's ranges of that family only (a family with none of its own stays open, as in
/// kube-proxy). When one of them holds this node's IP of the family, the Service's
/// load-balancer IPs of the family are admitted as sources too, as kube-proxy does: where the
/// load balancer's VIP is also a local address of the node, a connection from the node to
/// the VIP never reaches the load balancer but loops back with the VIP as its source, and the
/// node was meant to be let in.
pub fn allowed_sources(svc: &ServiceInfo, family: IpAddr, node: &NodeInfo) -> Arc<[IpNet]> {
    let same_family = |ip: IpAddr| ip.is_ipv4() == family.is_ipv4();
    let mut ranges: Vec<IpNet> = svc.load_balancer_source_ranges.iter().filter(|r| same_family(r.addr())).copied().collect();
    let node_in_range = node.ip_of_family(family).is_some_and(|ip| ranges.iter().any(|r| r.contains(&ip)));
    if node_in_range {
        ranges.extend(svc.load_balancer_ips.iter().filter(|ip| same_family(**ip)).map(|ip| IpNet::from(*ip)));
    }
    ranges.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap_or_else(|e| panic!("bad test range {s}: {e}"))).collect()
    }

    fn svc(ranges: &[&str], lbs: &[&str]) -> ServiceInfo {
        let mut s = ServiceInfo::for_test("lb", vec![ip("10.96.0.1"), ip("fd00:96::1")]);
        s.load_balancer_source_ranges = nets(ranges);
        s.load_balancer_ips = lbs.iter().map(|s| ip(s)).collect();
        s
    }

    fn node(ips: &[&str]) -> NodeInfo {
        NodeInfo { ips: ips.iter().map(|s| ip(s)).collect(), ..NodeInfo::default() }
    }

    #[test]
    fn the_vips_are_admitted_only_when_the_node_is_in_range() {
        let s = svc(&["10.0.0.0/24", "fd00::/64"], &["192.0.2.10", "192.0.2.11", "2001:db8::10"]);
        let v4 = ip("192.0.2.10");
        assert_eq!(allowed_sources(&s, v4, &node(&["10.0.0.1"])).to_vec(), nets(&["10.0.0.0/24", "192.0.2.10/32", "192.0.2.11/32"]));
        assert_eq!(allowed_sources(&s, v4, &node(&["10.5.0.1"])).to_vec(), nets(&["10.0.0.0/24"]), "node outside the ranges");
        assert_eq!(allowed_sources(&s, v4, &node(&[])).to_vec(), nets(&["10.0.0.0/24"]), "node IP unknown");
        // Each family on its own: the node's v4 address in range opens no v6 VIP.
        assert_eq!(allowed_sources(&s, ip("2001:db8::10"), &node(&["10.0.0.1", "fd01::1"])).to_vec(), nets(&["fd00::/64"]));
        assert_eq!(allowed_sources(&s, ip("2001:db8::10"), &node(&["fd00::1"])).to_vec(), nets(&["fd00::/64", "2001:db8::10/128"]));
    }

    #[test]
    fn no_range_of_the_family_admits_all() {
        let s = svc(&["fd00::/64"], &["192.0.2.10"]);
        assert!(allowed_sources(&s, ip("192.0.2.10"), &node(&["10.0.0.1"])).is_empty());
    }
}
