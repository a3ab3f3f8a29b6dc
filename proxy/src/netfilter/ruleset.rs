//! The nftables rule set for a routing table, as text: a pure function, unit-tested here, so
//! what the kernel gets is reviewable without a kernel.
//!
//! Shape (one `inet` table owned by tpvs, replaced whole in one transaction per change):
//!
//! - `prerouting` (filter hook at mangle priority, before routing):
//!   1. exact frontends (`daddr . l4proto . dport`) through a verdict map: TPROXY to the
//!      listener, refuse (`reject with tcp reset` / ICMP port-unreachable), or drop (each of
//!      the last two through a chain that counts its packets for the metrics). Frontends
//!      with `loadBalancerSourceRanges` go first through a chain of their own that drops
//!      sources outside their allow set, then take their verdict (kube-proxy's firewall
//!      check, which also comes before the Service's verdict, refusals included);
//!      A `Local` frontend without local endpoints but with endpoints elsewhere goes through
//!      `local_origin_*` instead of the drop: connections from this node (`fib saddr type
//!      local`) or its pods (`pod_sources*`) go on to TPROXY, where the proxy serves them from
//!      the cluster-wide set (kube-proxy's short-circuit); the rest are dropped;
//!   2. NodePorts (`l4proto . dport`) on the node-port addresses, same verdicts;
//!   3. `socket transparent 1 → mark`: the reply path of upstream sockets bound to a client's
//!      address (Local policy), so replies addressed to that foreign IP are routed to the
//!      local socket by the policy-routing rule instead of being forwarded.
//!
//!   A Service packet the `tproxy` statement cannot hand to a listener (none listens: a
//!   restart after a crash, a SIGTERM drain) is dropped in `no_listener`, never routed on:
//!   the client retransmits its SYN and connects once a listener is back.
//! - `output` (route hook): packets the node itself sends to a Service VIP get the mark, are
//!   re-routed to `lo` by the same policy-routing rule and meet `prerouting` like any other
//!   client's packets.
//!
//! Order matters for speed: the frontend maps come *before* the `socket transparent` rule. A
//! client-facing socket that the proxy closed first sits in TIME_WAIT and is itself
//! transparent; if a reused client port's SYN met the `socket` rule first it would be accepted
//! straight into that TIME_WAIT socket (the VIP has no listener of its own), answered with a
//! stale ACK and retransmitted a second later. The TPROXY statement instead recognises a SYN
//! hitting TIME_WAIT, retires it and hands the SYN to the listener.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use controlplane::{FrontendKey, IpNet, Protocol, RoutingTable};

use crate::addrs::NodePortAddrs;

/// Knobs the rule text depends on (all from the command line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RulesetConfig {
    /// Name of the `inet` table tpvs owns.
    pub table: String,
    /// Firewall mark that selects the policy-routing table with the `local` default route.
    pub mark: u32,
    /// Port of the transparent TCP listener.
    pub tcp_port: u16,
    /// Port of the transparent UDP listener, when the UDP data path runs; without it UDP
    /// frontends with endpoints are left alone (only their refusals are installed).
    pub udp_port: Option<u16>,
    pub nodeport_addrs: NodePortAddrs,
}

/// What happens to a new packet for one frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Hand it to the transparent listener.
    Tproxy,
    /// Refuse at once: TCP reset, ICMP port-unreachable otherwise.
    Refuse,
    /// Silently drop (Local policy, no local endpoint: an external LB's health check steers
    /// away).
    Drop,
    /// Local policy, no local endpoint, endpoints elsewhere: TPROXY for connections from this
    /// node or its pods (served from the cluster-wide set), drop for everyone else.
    LocalOriginOnly,
}

/// The frontends' verdicts, in stable order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// VIPs: ClusterIPs, LoadBalancer ingress IPs, externalIPs.
    pub exact: BTreeMap<FrontendKey, Verdict>,
    /// NodePorts by family (`true` = IPv6), protocol and port.
    pub node_ports: BTreeMap<(bool, Protocol, u16), Verdict>,
    /// The allowed client ranges of the exact frontends that have any (LoadBalancer IPs with
    /// `loadBalancerSourceRanges`).
    pub source_ranges: BTreeMap<FrontendKey, Arc<[IpNet]>>,
    /// The pods' source ranges the [`Verdict::LocalOriginOnly`] frontends let through.
    pub pod_sources: BTreeSet<IpNet>,
}

/// Decides each frontend's verdict.
pub fn plan(table: &RoutingTable, cfg: &RulesetConfig) -> Plan {
    let mut out = Plan::default();
    let interceptable = |p: Protocol| match p {
        Protocol::Tcp => true,
        Protocol::Udp => cfg.udp_port.is_some(),
        // No TPROXY for SCTP in the kernel: such frontends are not served (yet).
        Protocol::Sctp => false,
    };
    for fe in table.frontends() {
        let verdict = if fe.backends().none_pickable() {
            let short_circuit = fe.local_origin.as_ref().filter(|lo| !lo.scheduler.backends().none_pickable());
            match (fe.when_empty, short_circuit) {
                (controlplane::WhenEmpty::Reject, _) => Verdict::Refuse,
                (controlplane::WhenEmpty::Drop, Some(lo)) if interceptable(fe.key.proto) => {
                    out.pod_sources.extend(lo.pod_sources.iter().copied());
                    Verdict::LocalOriginOnly
                }
                (controlplane::WhenEmpty::Drop, _) => Verdict::Drop,
            }
        } else {
            if !interceptable(fe.key.proto) {
                continue;
            }
            Verdict::Tproxy
        };
        if fe.key.is_node_port() {
            out.node_ports.insert((fe.key.addr.is_ipv6(), fe.key.proto, fe.key.port), verdict);
        } else {
            out.exact.insert(fe.key, verdict);
            if !fe.source_ranges.is_empty() {
                out.source_ranges.insert(fe.key, Arc::clone(&fe.source_ranges));
            }
        }
    }
    out
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn verdict_text(v: Verdict, p: Protocol) -> &'static str {
    match (v, p) {
        (Verdict::Tproxy, Protocol::Udp) => "goto tproxy_udp",
        (Verdict::Tproxy, _) => "goto tproxy_tcp",
        (Verdict::Refuse, _) => "goto refuse",
        (Verdict::Drop, _) => "goto no_local",
        (Verdict::LocalOriginOnly, Protocol::Udp) => "goto local_origin_udp",
        (Verdict::LocalOriginOnly, _) => "goto local_origin_tcp",
    }
}

fn elements(out: &mut String, items: &[String]) {
    // nft rejects `elements = { }`: an empty set or map is declared without the line.
    if !items.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", items.join(",\n\t\t\t"));
    }
}

/// The whole transaction for `nft -f -`: create-if-missing, delete, re-create. nft applies a
/// file as one kernel transaction, so packets see either the old table or the new one, never a
/// gap or a half-built map.
pub fn render(plan: &Plan, cfg: &RulesetConfig) -> String {
    let t = &cfg.table;
    let mark = format!("0x{:x}", cfg.mark);
    let mut s = String::with_capacity(2048 + 64 * (plan.exact.len() + plan.node_ports.len()));
    let _ = writeln!(s, "add table inet {t}");
    let _ = writeln!(s, "delete table inet {t}");
    let _ = writeln!(s, "table inet {t} {{");

    // Each frontend with source ranges gets a set and a chain numbered by its place in the
    // (sorted) plan, so the text is stable for a given table.
    let checked: BTreeMap<FrontendKey, usize> = plan.source_ranges.keys().enumerate().map(|(i, k)| (*k, i)).collect();
    for (v6, name, addr_type) in [(false, "frontends4", "ipv4_addr"), (true, "frontends6", "ipv6_addr")] {
        let items: Vec<String> = plan
            .exact
            .iter()
            .filter(|(k, _)| k.addr.is_ipv6() == v6)
            .map(|(k, v)| {
                let target = match checked.get(k) {
                    Some(i) => format!("goto source{i}"),
                    None => verdict_text(*v, k.proto).to_string(),
                };
                format!("{} : {}", exact_key(k), target)
            })
            .collect();
        // `counter`: each element counts its packets, which `tpvs explain` shows as proof
        // that traffic reached the rule (the kernel keeps the counters per CPU).
        let _ = writeln!(s, "\tmap {name} {{\n\t\ttype {addr_type} . inet_proto . inet_service : verdict\n\t\tcounter");
        elements(&mut s, &items);
        let _ = writeln!(s, "\t}}");
    }
    for (v6, name, addr_type) in [(false, "local4", "ipv4_addr"), (true, "local6", "ipv6_addr")] {
        let items: Vec<String> = plan
            .exact
            .keys()
            .filter(|k| k.addr.is_ipv6() == v6)
            .map(|k| format!("{} . {} . {}", k.addr, proto(k.proto), k.port))
            .collect();
        let _ = writeln!(s, "\tset {name} {{\n\t\ttype {addr_type} . inet_proto . inet_service");
        elements(&mut s, &items);
        let _ = writeln!(s, "\t}}");
    }
    for (v6, name) in [(false, "nodeports4"), (true, "nodeports6")] {
        let items: Vec<String> = plan
            .node_ports
            .iter()
            .filter(|((is6, _, _), _)| *is6 == v6)
            .map(|((_, p, port), v)| format!("{} : {}", node_port_key(*p, *port), verdict_text(*v, *p)))
            .collect();
        let _ = writeln!(s, "\tmap {name} {{\n\t\ttype inet_proto . inet_service : verdict\n\t\tcounter");
        elements(&mut s, &items);
        let _ = writeln!(s, "\t}}");
    }
    let np4: Vec<String> = cfg.nodeport_addrs.v4().map(ToString::to_string).collect();
    let np6: Vec<String> = cfg.nodeport_addrs.v6().map(ToString::to_string).collect();
    for (name, addr_type, items) in [("nodeport_addrs4", "ipv4_addr", &np4), ("nodeport_addrs6", "ipv6_addr", &np6)] {
        let _ = writeln!(s, "\tset {name} {{\n\t\ttype {addr_type}\n\t\tflags interval");
        elements(&mut s, items);
        let _ = writeln!(s, "\t}}");
    }

    let short_circuits = plan.exact.values().chain(plan.node_ports.values()).any(|v| *v == Verdict::LocalOriginOnly);
    if short_circuits {
        for (v4, name, addr_type) in [(true, "pod_sources4", "ipv4_addr"), (false, "pod_sources6", "ipv6_addr")] {
            let items: Vec<String> = plan.pod_sources.iter().filter(|n| n.addr().is_ipv4() == v4).map(ToString::to_string).collect();
            let _ = writeln!(s, "\tset {name} {{\n\t\ttype {addr_type}\n\t\tflags interval\n\t\tauto-merge");
            elements(&mut s, &items);
            let _ = writeln!(s, "\t}}");
        }
    }

    for (i, (k, ranges)) in plan.source_ranges.iter().enumerate() {
        let addr_type = if k.addr.is_ipv6() { "ipv6_addr" } else { "ipv4_addr" };
        let items: Vec<String> = ranges.iter().map(ToString::to_string).collect();
        let _ = writeln!(s, "\tset allow{i} {{\n\t\ttype {addr_type}\n\t\tflags interval\n\t\tauto-merge");
        elements(&mut s, &items);
        let _ = writeln!(s, "\t}}");
    }

    // Prerouting: frontends first (see the module comment for why), then the reply path.
    let _ = writeln!(s, "\tchain prerouting {{");
    let _ = writeln!(s, "\t\ttype filter hook prerouting priority mangle; policy accept;");
    let _ = writeln!(s, "\t\tip daddr . meta l4proto . th dport vmap @frontends4");
    let _ = writeln!(s, "\t\tip6 daddr . meta l4proto . th dport vmap @frontends6");
    match &cfg.nodeport_addrs {
        NodePortAddrs::AllLocal => {
            let _ = writeln!(s, "\t\tip daddr != 127.0.0.0/8 fib daddr type local meta l4proto . th dport vmap @nodeports4");
            let _ = writeln!(s, "\t\tip6 daddr != ::1 fib daddr type local meta l4proto . th dport vmap @nodeports6");
        }
        NodePortAddrs::Cidrs(_) => {
            if !np4.is_empty() {
                let _ = writeln!(s, "\t\tip daddr @nodeport_addrs4 fib daddr type local meta l4proto . th dport vmap @nodeports4");
            }
            if !np6.is_empty() {
                let _ = writeln!(s, "\t\tip6 daddr @nodeport_addrs6 fib daddr type local meta l4proto . th dport vmap @nodeports6");
            }
        }
    }
    let _ = writeln!(s, "\t\tmeta l4proto {{ tcp, udp }} socket transparent 1 meta mark set {mark} accept");
    let _ = writeln!(s, "\t}}");

    // Output: the node's own connections to a VIP take the detour through lo (TPROXY only
    // exists in prerouting).
    let _ = writeln!(s, "\tchain output {{");
    let _ = writeln!(s, "\t\ttype route hook output priority mangle; policy accept;");
    let _ = writeln!(s, "\t\tip daddr . meta l4proto . th dport @local4 meta mark set {mark}");
    let _ = writeln!(s, "\t\tip6 daddr . meta l4proto . th dport @local6 meta mark set {mark}");
    let _ = writeln!(s, "\t}}");

    // A `tproxy` statement that finds no socket (no listener: tpvs is restarting after a crash,
    // or draining after SIGTERM) does not match, and the packet would go on to be routed: out
    // of the node's default route for a ClusterIP, or answered with a reset for the node's own
    // connections. `no_listener` drops it instead, so the client retransmits its SYN (1 s,
    // 3 s, …) and connects once a listener is back. Only a Service's own traffic comes here.
    let _ = writeln!(s, "\tchain tproxy_tcp {{");
    let _ = writeln!(s, "\t\tmeta nfproto ipv4 meta l4proto tcp tproxy ip to 127.0.0.1:{} meta mark set {mark} accept", cfg.tcp_port);
    let _ = writeln!(s, "\t\tmeta nfproto ipv6 meta l4proto tcp tproxy ip6 to [::1]:{} meta mark set {mark} accept", cfg.tcp_port);
    let _ = writeln!(s, "\t\tgoto no_listener");
    let _ = writeln!(s, "\t}}");
    if let Some(udp) = cfg.udp_port {
        let _ = writeln!(s, "\tchain tproxy_udp {{");
        let _ = writeln!(s, "\t\tmeta nfproto ipv4 meta l4proto udp tproxy ip to 127.0.0.1:{udp} meta mark set {mark} accept");
        let _ = writeln!(s, "\t\tmeta nfproto ipv6 meta l4proto udp tproxy ip6 to [::1]:{udp} meta mark set {mark} accept");
        let _ = writeln!(s, "\t\tgoto no_listener");
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "\tchain no_listener {{");
    let _ = writeln!(s, "\t\tcounter drop");
    let _ = writeln!(s, "\t}}");
    // Refusals and drops happen here in the kernel, never reaching tpvs: each chain starts
    // with a counter the metrics exporter reads (see `counters`).
    let _ = writeln!(s, "\tchain refuse {{");
    let _ = writeln!(s, "\t\tcounter");
    let _ = writeln!(s, "\t\tmeta l4proto tcp reject with tcp reset");
    let _ = writeln!(s, "\t\treject with icmpx port-unreachable");
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "\tchain no_local {{");
    let _ = writeln!(s, "\t\tcounter drop");
    let _ = writeln!(s, "\t}}");
    if short_circuits {
        // The node's own connections arrive re-routed through lo with one of its addresses
        // as source; its pods' with theirs. Both go on to the proxy (which serves them from
        // the cluster-wide set); outsiders meet the Local policy's drop.
        let protos: &[(&str, Protocol)] = if cfg.udp_port.is_some() { &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)] } else { &[("tcp", Protocol::Tcp)] };
        for (name, p) in protos {
            let to_proxy = verdict_text(Verdict::Tproxy, *p);
            let _ = writeln!(s, "\tchain local_origin_{name} {{");
            let _ = writeln!(s, "\t\tfib saddr type local {to_proxy}");
            let _ = writeln!(s, "\t\tip saddr @pod_sources4 {to_proxy}");
            let _ = writeln!(s, "\t\tip6 saddr @pod_sources6 {to_proxy}");
            let _ = writeln!(s, "\t\tgoto no_local");
            let _ = writeln!(s, "\t}}");
        }
    }
    for (i, k) in plan.source_ranges.keys().enumerate() {
        let ip = if k.addr.is_ipv6() { "ip6" } else { "ip" };
        let verdict = plan.exact.get(k).map_or("drop", |v| verdict_text(*v, k.proto));
        let _ = writeln!(s, "\tchain source{i} {{");
        let _ = writeln!(s, "\t\t{ip} saddr != @allow{i} goto out_of_range");
        let _ = writeln!(s, "\t\t{verdict}");
        let _ = writeln!(s, "\t}}");
    }
    if !plan.source_ranges.is_empty() {
        // A client outside a Service's loadBalancerSourceRanges: dropped silently, as
        // kube-proxy does, so a scan learns nothing.
        let _ = writeln!(s, "\tchain out_of_range {{");
        let _ = writeln!(s, "\t\tcounter drop");
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "}}");
    s
}

fn exact_key(k: &FrontendKey) -> String {
    format!("{} . {} . {}", k.addr, proto(k.proto), k.port)
}

fn node_port_key(p: Protocol, port: u16) -> String {
    format!("{} . {}", proto(p), port)
}

/// The verdict-map element a frontend's packets meet, as the rule set writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleElement {
    /// The map: `frontends4`, `frontends6`, `nodeports4` or `nodeports6`.
    pub map: &'static str,
    /// Its key as nft prints it (`10.96.0.10 . tcp . 80`, `tcp . 30080`).
    pub key: String,
    /// The element whole, key and verdict (`10.96.0.10 . tcp . 80 : goto tproxy_tcp`).
    pub text: String,
}

/// The element of `plan` that `key` is installed as; `None` when the frontend has no rule
/// (an SCTP frontend, or UDP without the UDP data path).
pub fn element(plan: &Plan, key: &FrontendKey) -> Option<RuleElement> {
    let v6 = key.addr.is_ipv6();
    if key.is_node_port() {
        let v = plan.node_ports.get(&(v6, key.proto, key.port))?;
        let k = node_port_key(key.proto, key.port);
        let text = format!("{k} : {}", verdict_text(*v, key.proto));
        return Some(RuleElement { map: if v6 { "nodeports6" } else { "nodeports4" }, key: k, text });
    }
    let v = plan.exact.get(key)?;
    let target = match plan.source_ranges.keys().position(|k| k == key) {
        Some(i) => format!("goto source{i}"),
        None => verdict_text(*v, key.proto).to_string(),
    };
    let k = exact_key(key);
    let text = format!("{k} : {target}");
    Some(RuleElement { map: if v6 { "frontends6" } else { "frontends4" }, key: k, text })
}

/// The transaction that removes the table (idempotent: creating an empty one first means the
/// delete never fails for a table that was already gone).
pub fn render_delete(table: &str) -> String {
    format!("add table inet {table}\ndelete table inet {table}\n")
}

/// Whether an address family has any frontend (for logs).
pub fn families(plan: &Plan) -> (bool, bool) {
    let v4 = plan.exact.keys().any(|k| matches!(k.addr, IpAddr::V4(_))) || plan.node_ports.keys().any(|(v6, _, _)| !v6);
    let v6 = plan.exact.keys().any(|k| matches!(k.addr, IpAddr::V6(_))) || plan.node_ports.keys().any(|(v6, _, _)| *v6);
    (v4, v6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addrs::Cidr;

    fn key(addr: &str, port: u16, proto: Protocol) -> FrontendKey {
        FrontendKey::new(addr.parse().unwrap_or_else(|e| panic!("bad test address {addr}: {e}")), port, proto)
    }

    fn cfg(np: NodePortAddrs) -> RulesetConfig {
        RulesetConfig { table: "tpvs".into(), mark: 0x7470, tcp_port: 15001, udp_port: None, nodeport_addrs: np }
    }

    fn sample() -> Plan {
        let mut p = Plan::default();
        p.exact.insert(key("10.96.0.10", 80, Protocol::Tcp), Verdict::Tproxy);
        p.exact.insert(key("10.96.0.11", 80, Protocol::Tcp), Verdict::Refuse);
        p.exact.insert(key("192.0.2.10", 443, Protocol::Tcp), Verdict::Drop);
        p.exact.insert(key("fd00:96::10", 80, Protocol::Tcp), Verdict::Tproxy);
        p.node_ports.insert((false, Protocol::Tcp, 30080), Verdict::Tproxy);
        p.node_ports.insert((false, Protocol::Udp, 30053), Verdict::Refuse);
        p
    }

    #[test]
    fn golden_all_local_nodeports() {
        let text = render(&sample(), &cfg(NodePortAddrs::AllLocal));
        let expected = "\
add table inet tpvs
delete table inet tpvs
table inet tpvs {
\tmap frontends4 {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\tcounter
\t\telements = { 10.96.0.10 . tcp . 80 : goto tproxy_tcp,
\t\t\t10.96.0.11 . tcp . 80 : goto refuse,
\t\t\t192.0.2.10 . tcp . 443 : goto no_local }
\t}
\tmap frontends6 {
\t\ttype ipv6_addr . inet_proto . inet_service : verdict
\t\tcounter
\t\telements = { fd00:96::10 . tcp . 80 : goto tproxy_tcp }
\t}
\tset local4 {
\t\ttype ipv4_addr . inet_proto . inet_service
\t\telements = { 10.96.0.10 . tcp . 80,
\t\t\t10.96.0.11 . tcp . 80,
\t\t\t192.0.2.10 . tcp . 443 }
\t}
\tset local6 {
\t\ttype ipv6_addr . inet_proto . inet_service
\t\telements = { fd00:96::10 . tcp . 80 }
\t}
\tmap nodeports4 {
\t\ttype inet_proto . inet_service : verdict
\t\tcounter
\t\telements = { tcp . 30080 : goto tproxy_tcp,
\t\t\tudp . 30053 : goto refuse }
\t}
\tmap nodeports6 {
\t\ttype inet_proto . inet_service : verdict
\t\tcounter
\t}
\tset nodeport_addrs4 {
\t\ttype ipv4_addr
\t\tflags interval
\t}
\tset nodeport_addrs6 {
\t\ttype ipv6_addr
\t\tflags interval
\t}
\tchain prerouting {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tip daddr . meta l4proto . th dport vmap @frontends4
\t\tip6 daddr . meta l4proto . th dport vmap @frontends6
\t\tip daddr != 127.0.0.0/8 fib daddr type local meta l4proto . th dport vmap @nodeports4
\t\tip6 daddr != ::1 fib daddr type local meta l4proto . th dport vmap @nodeports6
\t\tmeta l4proto { tcp, udp } socket transparent 1 meta mark set 0x7470 accept
\t}
\tchain output {
\t\ttype route hook output priority mangle; policy accept;
\t\tip daddr . meta l4proto . th dport @local4 meta mark set 0x7470
\t\tip6 daddr . meta l4proto . th dport @local6 meta mark set 0x7470
\t}
\tchain tproxy_tcp {
\t\tmeta nfproto ipv4 meta l4proto tcp tproxy ip to 127.0.0.1:15001 meta mark set 0x7470 accept
\t\tmeta nfproto ipv6 meta l4proto tcp tproxy ip6 to [::1]:15001 meta mark set 0x7470 accept
\t\tgoto no_listener
\t}
\tchain no_listener {
\t\tcounter drop
\t}
\tchain refuse {
\t\tcounter
\t\tmeta l4proto tcp reject with tcp reset
\t\treject with icmpx port-unreachable
\t}
\tchain no_local {
\t\tcounter drop
\t}
}
";
        assert_eq!(text, expected);
    }

    /// The block of `text` that starts with the line `start` and ends at its closing brace.
    fn section<'a>(text: &'a str, start: &str) -> &'a str {
        let from = text.find(start).unwrap_or_else(|| panic!("no {start:?} in:\n{text}"));
        let rest = &text[from..];
        let to = rest.find("\n\t}\n").map_or(rest.len(), |i| i + 4);
        &rest[..to]
    }

    #[test]
    fn golden_udp_frontends_go_to_the_udp_listener() {
        let mut p = Plan::default();
        p.exact.insert(key("10.96.0.10", 53, Protocol::Udp), Verdict::Tproxy);
        p.exact.insert(key("10.96.0.10", 53, Protocol::Tcp), Verdict::Tproxy);
        p.exact.insert(key("10.96.0.11", 53, Protocol::Udp), Verdict::Refuse);
        p.exact.insert(key("fd00:96::10", 53, Protocol::Udp), Verdict::Tproxy);
        p.node_ports.insert((false, Protocol::Udp, 30053), Verdict::Tproxy);
        let mut c = cfg(NodePortAddrs::AllLocal);
        c.udp_port = Some(15002);
        let text = render(&p, &c);
        assert_eq!(
            section(&text, "\tmap frontends4 {"),
            "\tmap frontends4 {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\tcounter
\t\telements = { 10.96.0.10 . tcp . 53 : goto tproxy_tcp,
\t\t\t10.96.0.10 . udp . 53 : goto tproxy_udp,
\t\t\t10.96.0.11 . udp . 53 : goto refuse }
\t}
"
        );
        assert_eq!(
            section(&text, "\tmap frontends6 {"),
            "\tmap frontends6 {
\t\ttype ipv6_addr . inet_proto . inet_service : verdict
\t\tcounter
\t\telements = { fd00:96::10 . udp . 53 : goto tproxy_udp }
\t}
"
        );
        assert_eq!(
            section(&text, "\tmap nodeports4 {"),
            "\tmap nodeports4 {
\t\ttype inet_proto . inet_service : verdict
\t\tcounter
\t\telements = { udp . 30053 : goto tproxy_udp }
\t}
"
        );
        assert_eq!(
            section(&text, "\tchain tproxy_udp {"),
            "\tchain tproxy_udp {
\t\tmeta nfproto ipv4 meta l4proto udp tproxy ip to 127.0.0.1:15002 meta mark set 0x7470 accept
\t\tmeta nfproto ipv6 meta l4proto udp tproxy ip6 to [::1]:15002 meta mark set 0x7470 accept
\t\tgoto no_listener
\t}
"
        );
        // The node's own datagrams to a UDP VIP take the same detour as its TCP connections.
        assert!(section(&text, "\tset local4 {").contains("10.96.0.10 . udp . 53"));
        // Replies to a spoofed client address (Local) come back through the same rule as TCP's.
        assert!(text.contains("meta l4proto { tcp, udp } socket transparent 1 meta mark set 0x7470 accept"));
    }

    #[test]
    fn frontend_maps_come_before_the_reply_path_rule() {
        let text = render(&sample(), &cfg(NodePortAddrs::AllLocal));
        let fe = text.find("vmap @frontends4").unwrap_or(usize::MAX);
        let np = text.find("vmap @nodeports4").unwrap_or(usize::MAX);
        let sock = text.find("socket transparent 1").unwrap_or(0);
        assert!(fe < sock && np < sock, "a SYN must reach TPROXY before the socket match");
    }

    #[test]
    fn nodeport_cidrs_restrict_and_only_present_families_get_rules() {
        let np = NodePortAddrs::Cidrs(vec!["10.0.0.0/24".parse::<Cidr>().unwrap_or_else(|e| panic!("{e}"))]);
        let text = render(&sample(), &cfg(np));
        assert!(text.contains("\t\telements = { 10.0.0.0/24 }\n"));
        assert!(text.contains("ip daddr @nodeport_addrs4 fib daddr type local meta l4proto . th dport vmap @nodeports4"));
        assert!(!text.contains("@nodeport_addrs6 fib"), "no v6 CIDR, no v6 NodePort rule");
        assert!(!text.contains("127.0.0.0/8"));
    }

    #[test]
    fn empty_plan_renders_valid_empty_maps_and_udp_chain_only_when_configured() {
        let text = render(&Plan::default(), &cfg(NodePortAddrs::AllLocal));
        assert!(!text.contains("elements"));
        assert!(!text.contains("tproxy_udp"));
        let mut c = cfg(NodePortAddrs::AllLocal);
        c.udp_port = Some(15002);
        let text = render(&Plan::default(), &c);
        assert!(text.contains("tproxy ip to 127.0.0.1:15002"));
    }

    fn frontend(key: FrontendKey, backends: usize, when_empty: controlplane::WhenEmpty) -> (FrontendKey, Arc<controlplane::Frontend>) {
        use schedulers::{Backend, BackendSet, BackendStats, SchedulerKind, SchedulerOptions};
        let set: Vec<Backend> = (0..backends)
            .map(|i| Backend::new(std::net::SocketAddr::from(([10, 1, 0, 2 + i as u8], 8080)), Arc::new(BackendStats::default())))
            .collect();
        let fe = controlplane::Frontend {
            key,
            kind: if key.is_node_port() { controlplane::FrontendKind::NodePort } else { controlplane::FrontendKind::ClusterIp },
            service: controlplane::ServicePortName { namespace: "default".into(), name: "web".into(), port: "".into() },
            policy: controlplane::TrafficPolicy::Cluster,
            affinity: None,
            when_empty,
            health_check_node_port: None,
            local_endpoints: backends,
            service_local_endpoints: backends,
            source_ranges: Arc::from([]),
            scheduler: schedulers::build(SchedulerKind::Rr, Arc::new(BackendSet::new(set)), &SchedulerOptions::default()),
            explanation: Default::default(),
            local_origin: None,
        };
        (key, Arc::new(fe))
    }

    #[test]
    fn plan_follows_the_table() {
        use controlplane::WhenEmpty;
        let table = RoutingTable::new(
            1,
            [
                frontend(key("10.96.0.10", 80, Protocol::Tcp), 2, WhenEmpty::Reject),
                frontend(key("10.96.0.11", 80, Protocol::Tcp), 0, WhenEmpty::Reject),
                frontend(key("10.99.0.1", 80, Protocol::Tcp), 0, WhenEmpty::Drop),
                frontend(key("10.96.0.53", 53, Protocol::Udp), 1, WhenEmpty::Reject),
                frontend(key("10.96.0.54", 53, Protocol::Udp), 0, WhenEmpty::Reject),
                frontend(key("0.0.0.0", 30080, Protocol::Tcp), 1, WhenEmpty::Reject),
                frontend(key("::", 30080, Protocol::Tcp), 0, WhenEmpty::Drop),
            ]
            .into_iter()
            .collect(),
        );
        let p = plan(&table, &cfg(NodePortAddrs::AllLocal));
        let exact: Vec<_> = p.exact.iter().map(|(k, v)| (k.to_string(), k.proto, *v)).collect();
        assert_eq!(
            exact,
            vec![
                ("10.96.0.10:80".to_string(), Protocol::Tcp, Verdict::Tproxy),
                ("10.96.0.11:80".to_string(), Protocol::Tcp, Verdict::Refuse),
                // UDP with endpoints is left alone until a UDP listener exists; its refusal is not.
                ("10.96.0.54:53".to_string(), Protocol::Udp, Verdict::Refuse),
                ("10.99.0.1:80".to_string(), Protocol::Tcp, Verdict::Drop),
            ]
        );
        let nps: Vec<_> = p.node_ports.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(nps, vec![((false, Protocol::Tcp, 30080), Verdict::Tproxy), ((true, Protocol::Tcp, 30080), Verdict::Drop)]);
        let mut with_udp = cfg(NodePortAddrs::AllLocal);
        with_udp.udp_port = Some(15002);
        let p = plan(&table, &with_udp);
        assert_eq!(p.exact.get(&key("10.96.0.53", 53, Protocol::Udp)), Some(&Verdict::Tproxy));
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("bad test range {s}: {e}"))
    }

    #[test]
    fn source_ranges_drop_outsiders_before_the_verdict() {
        let mut p = sample();
        let lb4 = key("192.0.2.10", 443, Protocol::Tcp);
        let lb6 = key("fd00:96::10", 80, Protocol::Tcp);
        p.source_ranges.insert(lb4, Arc::from([net("10.0.0.0/24"), net("203.0.113.7/32")]));
        p.source_ranges.insert(lb6, Arc::from([net("fd00::/64")]));
        let text = render(&p, &cfg(NodePortAddrs::AllLocal));
        // The map sends the checked frontends to their own chain; the others are unchanged.
        assert_eq!(
            section(&text, "\tmap frontends4 {"),
            "\tmap frontends4 {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\tcounter
\t\telements = { 10.96.0.10 . tcp . 80 : goto tproxy_tcp,
\t\t\t10.96.0.11 . tcp . 80 : goto refuse,
\t\t\t192.0.2.10 . tcp . 443 : goto source0 }
\t}
"
        );
        assert!(section(&text, "\tmap frontends6 {").contains("fd00:96::10 . tcp . 80 : goto source1 }"));
        assert_eq!(
            section(&text, "\tset allow0 {"),
            "\tset allow0 {
\t\ttype ipv4_addr
\t\tflags interval
\t\tauto-merge
\t\telements = { 10.0.0.0/24,
\t\t\t203.0.113.7/32 }
\t}
"
        );
        assert!(section(&text, "\tset allow1 {").contains("\t\ttype ipv6_addr\n"));
        assert!(section(&text, "\tset allow1 {").contains("elements = { fd00::/64 }"));
        // The check comes first and keeps the frontend's own verdict (a drop here: Local
        // policy without a local endpoint) for the clients it lets through.
        assert_eq!(
            section(&text, "\tchain source0 {"),
            "\tchain source0 {\n\t\tip saddr != @allow0 goto out_of_range\n\t\tgoto no_local\n\t}\n"
        );
        assert_eq!(
            section(&text, "\tchain source1 {"),
            "\tchain source1 {\n\t\tip6 saddr != @allow1 goto out_of_range\n\t\tgoto tproxy_tcp\n\t}\n"
        );
        assert_eq!(section(&text, "\tchain out_of_range {"), "\tchain out_of_range {\n\t\tcounter drop\n\t}\n");
        // Sets are declared before the chains that use them (nft reads the file in order).
        let set = text.find("\tset allow0 {").unwrap_or(usize::MAX);
        let chain = text.find("\tchain prerouting {").unwrap_or(0);
        assert!(set < chain);
    }

    #[test]
    fn without_source_ranges_no_check_is_rendered() {
        let text = render(&sample(), &cfg(NodePortAddrs::AllLocal));
        assert!(!text.contains("source0") && !text.contains("allow0") && !text.contains("out_of_range"));
    }

    #[test]
    fn plan_carries_source_ranges_of_exact_frontends_only() {
        use controlplane::WhenEmpty;
        let ranged = |k: FrontendKey| {
            let (k, fe) = frontend(k, 1, WhenEmpty::Reject);
            let mut fe = (*fe).clone();
            fe.source_ranges = Arc::from([net("10.0.0.0/24")]);
            (k, Arc::new(fe))
        };
        let table = RoutingTable::new(
            1,
            [
                ranged(key("192.0.2.10", 80, Protocol::Tcp)),
                frontend(key("10.96.0.10", 80, Protocol::Tcp), 1, WhenEmpty::Reject),
                // SCTP is not intercepted: no verdict, so no check either.
                ranged(key("192.0.2.11", 80, Protocol::Sctp)),
            ]
            .into_iter()
            .collect(),
        );
        let p = plan(&table, &cfg(NodePortAddrs::AllLocal));
        let keys: Vec<String> = p.source_ranges.keys().map(ToString::to_string).collect();
        assert_eq!(keys, vec!["192.0.2.10:80".to_string()]);
        assert_eq!(p.source_ranges.values().next().map(|r| r.to_vec()), Some(vec![net("10.0.0.0/24")]));
    }

    #[test]
    fn local_only_frontends_let_the_node_and_its_pods_through_and_drop_the_rest() {
        use controlplane::WhenEmpty;
        // A Local frontend without local endpoints whose Service has one elsewhere.
        let short_circuited = |k: FrontendKey, pods: &[&str]| {
            let (k, fe) = frontend(k, 0, WhenEmpty::Drop);
            let (_, cluster) = frontend(k, 1, WhenEmpty::Reject);
            let mut fe = (*fe).clone();
            fe.local_origin = Some(controlplane::LocalOrigin {
                pod_sources: pods.iter().map(|p| net(p)).collect(),
                scheduler: Arc::clone(&cluster.scheduler),
                explanation: Default::default(),
            });
            (k, Arc::new(fe))
        };
        let table = RoutingTable::new(
            1,
            [
                short_circuited(key("192.0.2.10", 80, Protocol::Tcp), &["10.1.0.0/16"]),
                short_circuited(key("0.0.0.0", 30080, Protocol::Tcp), &["10.1.0.0/16"]),
                short_circuited(key("fd00:99::10", 80, Protocol::Tcp), &["fd01::/48"]),
                // Without a UDP listener there is no one to hand UDP to: a plain drop.
                short_circuited(key("192.0.2.10", 53, Protocol::Udp), &["10.1.0.0/16"]),
                frontend(key("192.0.2.11", 80, Protocol::Tcp), 0, WhenEmpty::Drop),
            ]
            .into_iter()
            .collect(),
        );
        let c = cfg(NodePortAddrs::AllLocal);
        let p = plan(&table, &c);
        assert_eq!(p.exact.get(&key("192.0.2.10", 80, Protocol::Tcp)), Some(&Verdict::LocalOriginOnly));
        assert_eq!(p.exact.get(&key("192.0.2.10", 53, Protocol::Udp)), Some(&Verdict::Drop));
        assert_eq!(p.exact.get(&key("192.0.2.11", 80, Protocol::Tcp)), Some(&Verdict::Drop), "no short-circuit: still dropped");
        assert_eq!(p.node_ports.get(&(false, Protocol::Tcp, 30080)), Some(&Verdict::LocalOriginOnly));
        let pods: Vec<String> = p.pod_sources.iter().map(ToString::to_string).collect();
        assert_eq!(pods, ["10.1.0.0/16", "fd01::/48"]);
        let text = render(&p, &c);
        assert!(section(&text, "\tmap frontends4 {").contains("192.0.2.10 . tcp . 80 : goto local_origin_tcp"));
        assert!(section(&text, "\tmap nodeports4 {").contains("tcp . 30080 : goto local_origin_tcp"));
        assert!(section(&text, "\tset pod_sources4 {").contains("elements = { 10.1.0.0/16 }"));
        assert!(section(&text, "\tset pod_sources6 {").contains("elements = { fd01::/48 }"));
        assert_eq!(
            section(&text, "\tchain local_origin_tcp {"),
            "\tchain local_origin_tcp {
\t\tfib saddr type local goto tproxy_tcp
\t\tip saddr @pod_sources4 goto tproxy_tcp
\t\tip6 saddr @pod_sources6 goto tproxy_tcp
\t\tgoto no_local
\t}
"
        );
        assert!(!text.contains("local_origin_udp"), "no UDP listener, no UDP chain");
        let mut with_udp = cfg(NodePortAddrs::AllLocal);
        with_udp.udp_port = Some(15002);
        let p = plan(&table, &with_udp);
        assert_eq!(p.exact.get(&key("192.0.2.10", 53, Protocol::Udp)), Some(&Verdict::LocalOriginOnly));
        assert!(render(&p, &with_udp).contains("\tchain local_origin_udp {\n\t\tfib saddr type local goto tproxy_udp\n"));
        // Nothing short-circuited: none of it is rendered.
        let plain = render(&sample(), &c);
        assert!(!plain.contains("local_origin") && !plain.contains("pod_sources"));
    }

    #[test]
    fn delete_is_idempotent_text() {
        assert_eq!(render_delete("tpvs"), "add table inet tpvs\ndelete table inet tpvs\n");
    }

    #[test]
    fn families_reports_what_is_present() {
        assert_eq!(families(&sample()), (true, true));
        assert_eq!(families(&Plan::default()), (false, false));
    }
}
