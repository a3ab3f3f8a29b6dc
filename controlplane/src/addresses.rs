//! Which frontend addresses a Service may claim.
//!
//! Every frontend address comes from input (`spec.clusterIPs`, `spec.externalIPs`,
//! `status.loadBalancer.ingress[].ip`), and the data plane intercepts whatever the table names.
//! So an address is refused here, before it reaches the table, when it would take traffic that
//! is not the Service's: an address of the node itself (unspecified, loopback, link-local), one
//! that is no unicast destination (multicast, broadcast), an externalIP or load-balancer IP
//! outside the operator's allow list, or another Service's ClusterIP (the man-in-the-middle of
//! CVE-2020-8554, which kube-proxy leaves to admission control), and an externalIP or
//! load-balancer IP of an IP family the Service has no ClusterIP of (kube-proxy ignores those). Only the offending address is
//! refused: the Service's other frontends are served. NodePorts are keyed on node addresses the
//! data plane chooses, never on input, so they are not vetted here.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use crate::error::{AddressProblem, AddressRefused};
use crate::model::{ObjectKey, ServiceInfo};

/// What no frontend address may be, whatever field it comes from.
pub fn class_problem(ip: IpAddr) -> Option<AddressProblem> {
    // `::ffff:127.0.0.1` is 127.0.0.1 to the kernel: judge the address it stands for.
    match ip.to_canonical() {
        IpAddr::V4(a) if a.is_unspecified() => Some(AddressProblem::Unspecified),
        IpAddr::V4(a) if a.is_loopback() => Some(AddressProblem::Loopback),
        IpAddr::V4(a) if a.is_link_local() => Some(AddressProblem::LinkLocal),
        IpAddr::V4(a) if a.is_multicast() => Some(AddressProblem::Multicast),
        IpAddr::V4(a) if a.is_broadcast() => Some(AddressProblem::Broadcast),
        IpAddr::V6(a) if a.is_unspecified() => Some(AddressProblem::Unspecified),
        IpAddr::V6(a) if a.is_loopback() => Some(AddressProblem::Loopback),
        IpAddr::V6(a) if a.is_unicast_link_local() => Some(AddressProblem::LinkLocal),
        IpAddr::V6(a) if a.is_multicast() => Some(AddressProblem::Multicast),
        _ => None,
    }
}

/// Who holds which address across all Services: the ClusterIP owners, and the Services naming
/// each address as an externalIP or load-balancer IP. Kept by the index as Services come and go,
/// so that a new ClusterIP can take its address back from a Service that claimed it first.
#[derive(Debug, Default)]
pub(crate) struct AddressBook {
    cluster_ips: FxHashMap<IpAddr, BTreeSet<ObjectKey>>,
    claims: FxHashMap<IpAddr, BTreeSet<ObjectKey>>,
}

impl AddressBook {
    /// Records that a Service's addresses went from `old` to `new` (either may be absent) and
    /// returns the other Services whose right to an address this may have changed: those
    /// claiming a ClusterIP that appeared or went away.
    pub(crate) fn update(&mut self, old: Option<&ServiceInfo>, new: Option<&ServiceInfo>) -> Vec<ObjectKey> {
        let Some(key) = new.or(old).map(|s| &s.key) else { return Vec::new() };
        let cluster = |s: Option<&ServiceInfo>| -> BTreeSet<IpAddr> {
            s.into_iter().flat_map(|s| s.cluster_ips.iter().copied()).collect()
        };
        let claimed = |s: Option<&ServiceInfo>| -> BTreeSet<IpAddr> {
            s.into_iter().flat_map(|s| s.external_ips.iter().chain(&s.load_balancer_ips).copied()).collect()
        };
        let (old_cluster, new_cluster) = (cluster(old), cluster(new));
        move_key(&mut self.cluster_ips, key, &old_cluster, &new_cluster);
        move_key(&mut self.claims, key, &claimed(old), &claimed(new));
        let mut touched = BTreeSet::new();
        for ip in old_cluster.symmetric_difference(&new_cluster) {
            touched.extend(self.claims.get(ip).into_iter().flatten().filter(|k| *k != key).cloned());
        }
        touched.into_iter().collect()
    }

    /// The Service other than `me` whose ClusterIP `ip` is (the first by name if several).
    pub(crate) fn cluster_ip_owner(&self, ip: IpAddr, me: &ObjectKey) -> Option<&ObjectKey> {
        self.cluster_ips.get(&ip)?.iter().find(|k| *k != me)
    }
}

fn move_key(
    map: &mut FxHashMap<IpAddr, BTreeSet<ObjectKey>>,
    key: &ObjectKey,
    old: &BTreeSet<IpAddr>,
    new: &BTreeSet<IpAddr>,
) {
    for ip in old.difference(new) {
        if let Some(set) = map.get_mut(ip) {
            set.remove(key);
            if set.is_empty() {
                map.remove(ip);
            }
        }
    }
    for ip in new.difference(old) {
        map.entry(*ip).or_default().insert(key.clone());
    }
}

/// The Service with every address it may not have taken out, and why each was refused.
/// Borrows when nothing is refused (the common case costs no copy).
pub(crate) fn vet<'s>(
    svc: &'s ServiceInfo,
    allowed_external: &[IpNet],
    book: &AddressBook,
) -> (Cow<'s, ServiceInfo>, Vec<AddressRefused>) {
    let mut refused = Vec::new();
    let refuse = |field: &'static str, addr: IpAddr, problem: AddressProblem| AddressRefused {
        service: svc.key.to_string(),
        field,
        addr,
        problem,
    };
    let cluster_ips: Vec<IpAddr> = svc
        .cluster_ips
        .iter()
        .copied()
        .filter(|ip| match class_problem(*ip) {
            Some(p) => {
                refused.push(refuse("spec.clusterIPs", *ip, p));
                false
            }
            None => true,
        })
        .collect();
    // A single-stack Service's endpoints are all of its one family (kube-proxy matches a
    // frontend's family to its endpoints'), so an address of the other family could only be
    // refused; kube-proxy ignores it. A Service with no ClusterIP at all keeps every family.
    let serves_family =
        |ip: IpAddr| svc.cluster_ips.is_empty() || svc.cluster_ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4());
    let outside = |field: &'static str, ips: &[IpAddr], refused: &mut Vec<AddressRefused>| -> Vec<IpAddr> {
        ips.iter()
            .copied()
            .filter(|ip| {
                let problem = class_problem(*ip)
                    .or_else(|| {
                        let allowed = allowed_external.is_empty() || allowed_external.iter().any(|n| n.contains(ip));
                        (!allowed).then_some(AddressProblem::NotAllowed)
                    })
                    .or_else(|| book.cluster_ip_owner(*ip, &svc.key).map(|o| AddressProblem::ClusterIpOf(o.to_string())))
                    .or_else(|| (!serves_family(*ip)).then_some(AddressProblem::OtherFamily));
                match problem {
                    Some(p) => {
                        refused.push(refuse(field, *ip, p));
                        false
                    }
                    // The Service's own ClusterIP is served as a ClusterIP (its internal
                    // policy), not once more as an external frontend on the same key.
                    None => !cluster_ips.contains(ip),
                }
            })
            .collect()
    };
    let external_ips = outside("spec.externalIPs", &svc.external_ips, &mut refused);
    let load_balancer_ips = outside("status.loadBalancer.ingress[].ip", &svc.load_balancer_ips, &mut refused);
    if cluster_ips == svc.cluster_ips && external_ips == svc.external_ips && load_balancer_ips == svc.load_balancer_ips {
        return (Cow::Borrowed(svc), refused);
    }
    let vetted = ServiceInfo { cluster_ips, external_ips, load_balancer_ips, ..svc.clone() };
    (Cow::Owned(vetted), refused)
}

#[cfg(test)]
mod tests {

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn svc(name: &str, cluster: &[&str], external: &[&str], lb: &[&str]) -> ServiceInfo {
        ServiceInfo {
            external_ips: external.iter().map(|s| ip(s)).collect(),
            load_balancer_ips: lb.iter().map(|s| ip(s)).collect(),
            ..ServiceInfo::for_test(name, cluster.iter().map(|s| ip(s)).collect())
        }
    }

    fn problems(refused: &[AddressRefused]) -> Vec<(&'static str, IpAddr, &'static str)> {
        refused.iter().map(|r| (r.field, r.addr, r.problem.label())).collect()
    }

    #[test]
    fn node_and_non_unicast_addresses_are_refused_in_every_family_and_mapped_form() {
        for (s, want) in [
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("127.0.0.53", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("169.254.169.254", "link_local"),
            ("fe80::1", "link_local"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
        ] {
            assert_eq!(class_problem(ip(s)).map(|p| p.label()), Some(want), "{s}");
        }
        for s in ["10.96.0.10", "192.0.2.1", "2001:db8::1", "fd00::10"] {
            assert_eq!(class_problem(ip(s)), None, "{s}");
        }
    }

    #[test]
    fn only_the_offending_addresses_are_taken_out() {
        let s = svc("web", &["10.96.0.1", "::1"], &["0.0.0.0", "192.0.2.7"], &["169.254.1.1", "198.51.100.1"]);
        let (vetted, refused) = vet(&s, &[], &AddressBook::default());
        assert_eq!(vetted.cluster_ips, vec![ip("10.96.0.1")]);
        assert_eq!(vetted.external_ips, vec![ip("192.0.2.7")]);
        assert_eq!(vetted.load_balancer_ips, vec![ip("198.51.100.1")]);
        assert_eq!(
            problems(&refused),
            vec![
                ("spec.clusterIPs", ip("::1"), "loopback"),
                ("spec.externalIPs", ip("0.0.0.0"), "unspecified"),
                ("status.loadBalancer.ingress[].ip", ip("169.254.1.1"), "link_local"),
            ]
        );
        assert!(refused[1].to_string().starts_with("t/web: spec.externalIPs 0.0.0.0 refused:"), "{}", refused[1]);
    }

    #[test]
    fn an_address_of_a_family_the_service_lacks_is_refused() {
        let single = svc("v4", &["10.96.0.1"], &["192.0.2.7", "2001:db8::7"], &["2001:db8::8", "198.51.100.1"]);
        let (vetted, refused) = vet(&single, &[], &AddressBook::default());
        assert_eq!(vetted.external_ips, vec![ip("192.0.2.7")]);
        assert_eq!(vetted.load_balancer_ips, vec![ip("198.51.100.1")]);
        assert_eq!(
            problems(&refused),
            vec![
                ("spec.externalIPs", ip("2001:db8::7"), "other_family"),
                ("status.loadBalancer.ingress[].ip", ip("2001:db8::8"), "other_family"),
            ]
        );
        // Dual-stack keeps both families.
        let dual = svc("dual", &["10.96.0.2", "fd00::2"], &["192.0.2.9", "2001:db8::9"], &[]);
        let (vetted, refused) = vet(&dual, &[], &AddressBook::default());
        assert_eq!(vetted.external_ips.len(), 2);
        assert!(refused.is_empty(), "{refused:?}");
    }

    #[test]
    fn a_clean_service_is_borrowed_not_copied() {
        let s = svc("web", &["10.96.0.1"], &["192.0.2.7"], &[]);
        let (vetted, refused) = vet(&s, &[], &AddressBook::default());
        assert!(matches!(vetted, Cow::Borrowed(_)) && refused.is_empty());
    }

    #[test]
    fn the_allow_list_covers_external_and_load_balancer_ips_but_not_cluster_ips() {
        let allowed: Vec<IpNet> = vec!["192.0.2.0/24".parse().unwrap_or_else(|e| panic!("{e}"))];
        let s = svc("web", &["10.96.0.1"], &["192.0.2.7", "203.0.113.9"], &["198.51.100.1"]);
        let (vetted, refused) = vet(&s, &allowed, &AddressBook::default());
        assert_eq!((vetted.cluster_ips.len(), vetted.external_ips.clone()), (1, vec![ip("192.0.2.7")]));
        assert!(vetted.load_balancer_ips.is_empty());
        assert_eq!(
            problems(&refused),
            vec![
                ("spec.externalIPs", ip("203.0.113.9"), "not_allowed"),
                ("status.loadBalancer.ingress[].ip", ip("198.51.100.1"), "not_allowed"),
            ]
        );
    }

    #[test]
    fn another_services_cluster_ip_is_refused_naming_both_and_the_own_one_is_folded() {
        let dns = svc("dns", &["10.96.0.10"], &[], &[]);
        let evil = svc("evil", &["10.96.0.99"], &["10.96.0.10", "10.96.0.99"], &["10.96.0.10"]);
        let mut book = AddressBook::default();
        assert!(book.update(None, Some(&evil)).is_empty());
        assert_eq!(book.update(None, Some(&dns)), vec![evil.key.clone()], "the claimer must be recompiled");
        let (vetted, refused) = vet(&evil, &[], &book);
        assert!(vetted.external_ips.is_empty() && vetted.load_balancer_ips.is_empty());
        assert_eq!(refused.len(), 2);
        let msg = refused[0].to_string();
        assert!(msg.contains("t/evil") && msg.contains("t/dns") && msg.contains("10.96.0.10"), "{msg}");
        // The ClusterIP leaving gives the address back, and says whom to recompile.
        assert_eq!(book.update(Some(&dns), None), vec![evil.key.clone()]);
        assert!(vet(&evil, &[], &book).1.is_empty());
    }
}
