//! The answer as data: what `tpvs explain --json` prints and the daemon's `/api/explain`
//! serves. Built from the table the data plane reads (its frontends, the compiler's records
//! of why, the refusals) and from the dispatcher's own affinity map and scheduler, so nothing
//! here re-decides what the compiler or the data path decided. The field names are an
//! interface: the schema is documented in `docs/explain.md`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use controlplane::explain::{EndpointVerdict, Exclusion, Topology};
use controlplane::{Frontend, FrontendKey, FrontendKind, LocalOrigin, Protocol, Refusal, RoutingTable, TrafficPolicy, WhenEmpty};
use schedulers::{BackendSet, ClientAddr, OrigDstAddr, PickKey};
use serde::{Deserialize, Serialize};

use super::query::{Destination, Query};
use crate::dispatch::{Dispatcher, LocalClient, Preview};
use crate::dispatch::telemetry::{ConnectFailure, MetricsRegistry};
use crate::netfilter::{ElementCount, Interception};

/// How a connection fares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A backend gets it.
    Forwarded,
    /// Refused at once (TCP reset / ICMP port unreachable).
    Refused,
    /// Dropped without an answer.
    Dropped,
    /// No frontend matches: tpvs does not touch the packet.
    NoFrontend,
    /// A frontend matches but no rule intercepts its protocol (UDP without the UDP data path).
    NotIntercepted,
}

impl Outcome {
    /// `tpvs explain`'s exit code: 0 only when the connection is forwarded.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Forwarded => 0,
            _ => 1,
        }
    }
}

/// The whole answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub destination: String,
    pub protocol: String,
    pub client: Option<String>,
    /// `"manifests"` (compiled offline) or `"daemon"` (the running instance's table).
    pub source: String,
    pub generation: u64,
    pub outcome: Outcome,
    /// The one-line answer, decisive reason first.
    pub diagnosis: String,
    pub frontend: Option<FrontendView>,
    /// With no frontend: what comes closest, and why it does not match.
    pub nearest: Vec<Nearby>,
    pub endpoints: Vec<EndpointView>,
    pub decision: Option<Decision>,
    /// What the client experiences, one line.
    pub experience: String,
    /// The address the backend sees as the source: `"client"` or `"node"`.
    pub source_seen_by_backend: Option<String>,
    pub health_check: Option<HealthCheckView>,
    /// kube-proxy's short-circuit of this node's own traffic, on the external frontends of an
    /// `externalTrafficPolicy: Local` Service (absent elsewhere).
    #[serde(default)]
    pub short_circuit: Option<ShortCircuitView>,
    /// Step 6: counters of the running daemon (absent offline).
    pub live: Option<Live>,
}

/// Connections from this node and its pods to an external address of a `Local` Service are
/// served from all its endpoints, under `Cluster` (the backend sees the node's address).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShortCircuitView {
    /// Whether this client is served that way (then `endpoints` and `decision` are of the
    /// cluster-wide set).
    pub applies: bool,
    /// Why it counts as this node's own traffic: `"pod"` (in `pod_sources`) or `"node"` (one
    /// of the node's addresses); absent when it does not (or no `--from` was given).
    pub client_is: Option<String>,
    /// The pods' source ranges of the frontend's family (`--detect-local-mode`); empty when
    /// only the node's own connections count.
    pub pod_sources: Vec<String>,
    /// Endpoints in the cluster-wide set.
    pub endpoints: usize,
    /// The fact, one line.
    pub why: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrontendView {
    pub address: String,
    pub kind: String,
    /// `"address"`: the exact address matched; `"node_port"`: a NodePort on a node address.
    pub matched_as: String,
    pub service: String,
    pub service_type: String,
    pub policy: String,
    /// Which Service field the policy comes from.
    pub policy_field: String,
    pub scheduler: String,
    pub affinity_timeout_seconds: Option<u64>,
    pub source_ranges: Vec<String>,
    /// EndpointSlices naming the Service.
    pub slices: usize,
    /// Topology hints in force: `"zone ZONE"`, `"node NODE"`, or absent.
    pub topology: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Nearby {
    /// `same_address`, `same_port`, `other_protocol`, `not_proxied:<why>`, `refused:<why>`,
    /// `conflict`, `load_balancer_pending`, `node_port_address`.
    pub kind: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointView {
    pub address: String,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub used: bool,
    /// `ready` or `terminating` when used; the exclusion's code otherwise (`not_ready`,
    /// `terminating`, `terminating_not_serving`, `other_node`, `zone_hint`, `node_hint`,
    /// `weight_zero`, `port_not_in_slice`, `other_family`).
    pub verdict: String,
    pub why: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    pub scheduler: String,
    /// The backend this client gets now, when that can be told.
    pub backend: Option<String>,
    /// `"affinity"` or `"scheduler"` when `backend` is set.
    pub by: Option<String>,
    pub text: String,
    pub sticky: Option<StickyView>,
    /// The set the scheduler picks from, with the counters that drive the pick.
    pub candidates: Vec<CandidateView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StickyView {
    pub backend: String,
    pub expires_in_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidateView {
    pub address: String,
    pub weight: u32,
    pub active: u64,
    pub connections: u64,
    /// Peak-EWMA latency estimate in milliseconds, when one was measured.
    pub ewma_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthCheckView {
    pub port: u16,
    /// What it answers now: 200 or 503.
    pub status: u16,
    pub local_endpoints: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Live {
    /// The verdict-map element the packet meets, and what it counted since the rules were
    /// last replaced (they are replaced whole on every table change that alters them).
    pub rule: Option<RuleView>,
    /// New connections through the frontend's backends (backend counters are per address,
    /// shared by every frontend reaching the backend).
    pub frontend_connections: u64,
    pub backends: Vec<LiveBackend>,
    /// `--nodeport-addresses` in force: `"every local address except loopback"` or CIDRs.
    pub node_port_addresses: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleView {
    pub map: String,
    pub element: String,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveBackend {
    pub address: String,
    pub active: u64,
    pub connections: u64,
    /// Failed connects by reason (`refused`, `timeout`, `unreachable`, `other`).
    pub failures: BTreeMap<String, u64>,
    /// Connections that reached this backend on a retry.
    pub retries: u64,
    pub ejected_for_seconds: Option<u64>,
}

/// The running daemon's extra sources (step 6).
pub struct LiveSources<'a> {
    pub interception: Option<&'a Interception>,
    pub metrics: &'a MetricsRegistry,
    /// Whether the UDP data path runs (without it UDP frontends are not intercepted).
    pub udp: bool,
    /// Whether an address is one of this node's own.
    pub is_local: &'a dyn Fn(IpAddr) -> bool,
}

/// Everything an answer is read from.
pub struct Sources<'a> {
    pub table: &'a RoutingTable,
    pub dispatcher: &'a Dispatcher,
    /// What a health-check node port answers (status, local endpoints), asked of the health
    /// server's own rule.
    pub health_check: &'a dyn Fn(u16) -> Option<(u16, usize)>,
    pub live: Option<LiveSources<'a>>,
}

fn kind_text(k: FrontendKind) -> &'static str {
    match k {
        FrontendKind::ClusterIp => "ClusterIP",
        FrontendKind::NodePort => "NodePort",
        FrontendKind::LoadBalancer => "load-balancer IP",
        FrontendKind::ExternalIp => "external IP",
    }
}

fn frontend_text(f: &Frontend) -> String {
    if f.key.is_node_port() {
        format!("NodePort {}/{} of {}", f.key.port, f.key.proto, f.service)
    } else {
        format!("{} {}/{} of {}", kind_text(f.kind), f.key, f.key.proto, f.service)
    }
}

/// Finds the frontend, whether it matched as a NodePort, and why a NodePort did not match
/// the address asked (it is no node-port address of this node) as a nearby fact.
fn lookup<'t>(q: &Query, src: &Sources<'t>) -> (Option<&'t std::sync::Arc<Frontend>>, bool, Vec<Nearby>) {
    let table = src.table;
    let mut notes = Vec::new();
    match q.destination {
        Destination::NodePort(port) => {
            let fam = if q.v6() { IpAddr::from([0u16; 8]) } else { IpAddr::from([0u8; 4]) };
            (table.get(&FrontendKey::node_port(fam, port, q.protocol)), true, notes)
        }
        Destination::Addr(a) => {
            if let Some(f) = table.get(&FrontendKey::new(a.ip(), a.port(), q.protocol)) {
                return (Some(f), false, notes);
            }
            let np = table.get(&FrontendKey::node_port(a.ip(), a.port(), q.protocol));
            let Some(np) = np else { return (None, false, notes) };
            // Offline the node's addresses are unknown: any address may be one. Live, the
            // rules' own conditions decide: an address of this node (`fib daddr type local`)
            // that the node-port filter admits.
            let why_not = match &src.live {
                None => None,
                Some(l) if !(l.is_local)(a.ip()) => Some("is not an address of this node"),
                Some(_) if !src.dispatcher.nodeport_addrs().matches(a.ip()) => Some("is not one of them"),
                Some(_) => None,
            };
            let Some(why_not) = why_not else { return (Some(np), true, notes) };
            notes.push(Nearby {
                kind: "node_port_address".into(),
                text: format!(
                    "{} answers on node-port addresses only ({}), and {} {why_not}",
                    frontend_text(np),
                    node_port_addresses(src.dispatcher),
                    a.ip()
                ),
            });
            (None, false, notes)
        }
    }
}

fn node_port_addresses(d: &Dispatcher) -> String {
    let cidrs: Vec<String> = d.nodeport_addrs().v4().chain(d.nodeport_addrs().v6()).map(ToString::to_string).collect();
    if cidrs.is_empty() { "every local address except loopback".into() } else { cidrs.join(", ") }
}

/// Answers `q` from `src`.
pub fn explain(q: &Query, src: &Sources<'_>) -> Report {
    let (fe, as_node_port, notes) = lookup(q, src);
    let mut report = Report {
        destination: q.destination.to_string(),
        protocol: q.protocol.as_str().to_string(),
        client: q.client.map(|c| if c.port() == 0 { c.ip().to_string() } else { c.to_string() }),
        source: if src.live.is_some() { "daemon" } else { "manifests" }.into(),
        generation: src.table.generation,
        outcome: Outcome::NoFrontend,
        diagnosis: String::new(),
        frontend: None,
        nearest: notes,
        endpoints: Vec::new(),
        decision: None,
        experience: String::new(),
        source_seen_by_backend: None,
        health_check: None,
        short_circuit: None,
        live: None,
    };
    match fe {
        None => no_frontend(q, src, &mut report),
        Some(fe) => with_frontend(q, src, fe, as_node_port, &mut report),
    }
    report
}

fn no_frontend(q: &Query, src: &Sources<'_>, r: &mut Report) {
    let (ip, port) = match q.destination {
        Destination::Addr(a) => (Some(a.ip()), a.port()),
        Destination::NodePort(p) => (None, p),
    };
    let table = src.table;
    let mut headless = Vec::new();
    // What the table left out on purpose, with this address (or NodePort).
    for np in table.not_proxied() {
        let names_ip = ip.is_some_and(|ip| np.addresses.contains(&ip));
        let names_port = np.ports.iter().any(|p| match ip {
            Some(_) => p.port == port,
            None => p.node_port == Some(port),
        });
        if names_ip || (ip.is_none() && names_port) {
            r.nearest.push(Nearby {
                kind: format!("not_proxied:{}", np.why.code()),
                text: format!("{} is not proxied: {}", np.service, np.why),
            });
        } else if np.addresses.is_empty() && names_port {
            // A headless Service has no address to ask about: its port is the only clue.
            headless.push(format!("{} has port {port} but is not proxied: {}", np.service, np.why));
        }
    }
    let wanted = format!("{} {}", q.protocol, q.destination);
    for refusal in table.refused() {
        match refusal {
            Refusal::Address(a) if Some(a.addr) == ip => r.nearest.push(Nearby {
                kind: format!("refused:{}", a.problem.label()),
                text: format!("{} names {} in {}, refused: {}", a.service, a.addr, a.field, a.problem),
            }),
            Refusal::Conflict(c) if c.frontend == wanted => r.nearest.push(Nearby {
                kind: "conflict".into(),
                text: format!("{} asks for it too, but {} holds it", c.loser, c.winner),
            }),
            _ => {}
        }
    }
    let mut same_addr = Vec::new();
    let mut same_port = Vec::new();
    let mut other_proto = Vec::new();
    let mut pending = Vec::new();
    for f in table.sorted() {
        let same_ip = match ip {
            Some(ip) => f.key.addr == ip,
            None => f.key.is_node_port(),
        };
        if same_ip && f.key.port == port && f.key.proto != q.protocol {
            let why = if f.key.proto == Protocol::Sctp { ": tpvs does not intercept SCTP" } else { "" };
            other_proto.push(format!("{} is {}, not {}{why}", frontend_text(f), f.key.proto, q.protocol));
        } else if same_ip && f.key.proto == q.protocol && f.key.port != port {
            same_addr.push(frontend_text(f));
        } else if !same_ip
            && f.key.port == port
            && f.key.proto == q.protocol
            && !f.key.is_node_port()
            && f.key.addr.is_ipv6() == q.v6()
        {
            same_port.push(frontend_text(f));
        }
        if f.explanation.load_balancer_pending && f.kind == FrontendKind::ClusterIp && f.key.port == port {
            let np = table
                .sorted()
                .into_iter()
                .find(|n| n.service == f.service && n.key.is_node_port() && n.key.addr.is_ipv6() == f.key.addr.is_ipv6());
            let meanwhile = match np {
                Some(n) => format!("ClusterIP {} and NodePort {}", f.key, n.key.port),
                None => format!("ClusterIP {}", f.key),
            };
            pending.push(format!(
                "{} is type LoadBalancer with no status.loadBalancer.ingress yet: there is no load-balancer frontend until the cloud controller assigns one; meanwhile it answers on {meanwhile}",
                f.service.to_string().split(':').next().unwrap_or_default()
            ));
        }
    }
    for t in other_proto {
        r.nearest.push(Nearby { kind: "other_protocol".into(), text: t });
    }
    for t in pending {
        r.nearest.push(Nearby { kind: "load_balancer_pending".into(), text: t });
    }
    const MAX: usize = 5;
    let other_ports = if ip.is_some() { "same_address" } else { "other_node_port" };
    for (kind, list) in [(other_ports, same_addr), ("same_port", same_port), ("same_port_not_proxied", headless)] {
        let more = list.len().saturating_sub(MAX);
        for t in list.into_iter().take(MAX) {
            r.nearest.push(Nearby { kind: kind.into(), text: t });
        }
        if more > 0 {
            r.nearest.push(Nearby { kind: kind.into(), text: format!("... and {more} more") });
        }
    }
    let what = match q.destination {
        Destination::Addr(a) => format!("{a}/{}", q.protocol),
        Destination::NodePort(p) => format!("NodePort {p}/{}", q.protocol),
    };
    r.outcome = Outcome::NoFrontend;
    r.experience = "tpvs does not intercept the packet: it goes wherever the node would route it without tpvs".into();
    // Near misses are clues, not reasons: only a reason decides the diagnosis.
    let clue = |k: &str| k.starts_with("same_") || k == "other_node_port";
    r.diagnosis = match r.nearest.first() {
        Some(n) if !clue(&n.kind) => format!("no frontend for {what}: {}", n.text),
        Some(n) if n.kind == "same_address" => format!("no Service answers on {what}; this address answers as {}", n.text),
        Some(n) if n.kind == "other_node_port" => format!("no Service has {what}; this node's NodePorts include {}", n.text),
        _ => format!("no Service of this node's table answers on {what}"),
    };
}

fn with_frontend(q: &Query, src: &Sources<'_>, fe: &Frontend, as_node_port: bool, r: &mut Report) {
    let rec = &fe.explanation;
    r.frontend = Some(FrontendView {
        address: fe.key.to_string(),
        kind: fe.kind.as_str().to_string(),
        matched_as: if as_node_port { "node_port" } else { "address" }.into(),
        service: fe.service.to_string(),
        service_type: rec.service_type.to_string(),
        policy: fe.policy.as_str().to_string(),
        policy_field: if fe.kind.is_external() { "externalTrafficPolicy" } else { "internalTrafficPolicy" }.into(),
        scheduler: fe.scheduler_kind().as_str().to_string(),
        affinity_timeout_seconds: fe.affinity.map(|a| a.timeout.as_secs()),
        source_ranges: fe.source_ranges.iter().map(ToString::to_string).collect(),
        slices: rec.slices,
        topology: match &rec.topology {
            Topology::Unused => None,
            Topology::Zone(z) => Some(format!("zone {z}")),
            Topology::Node(n) => Some(format!("node {n}")),
        },
    });
    let dst = match q.destination {
        Destination::Addr(a) => a,
        Destination::NodePort(p) => SocketAddr::new(fe.key.addr, p),
    };
    let client = q.client.map(ClientAddr);
    // The set this client is served from, chosen as the data path chooses it.
    let preview = src.dispatcher.preview(fe, client, OrigDstAddr(dst));
    let short_circuited = preview.local_client.and(fe.local_origin.as_ref());
    r.short_circuit = fe.local_origin.as_ref().map(|lo| short_circuit_view(lo, q, preview.local_client));
    let shown = short_circuited.map_or(rec, |lo| &lo.explanation);
    r.endpoints = shown
        .endpoints
        .iter()
        .map(|e| {
            let (verdict, why) = match &e.verdict {
                EndpointVerdict::Used => ("ready".to_string(), "used".to_string()),
                EndpointVerdict::UsedTerminating => (
                    "terminating".to_string(),
                    "used: terminating but still serving, and no endpoint is ready (the terminating fallback)".to_string(),
                ),
                EndpointVerdict::Excluded(x) => (x.code().to_string(), format!("excluded: {x}")),
            };
            EndpointView {
                address: e.address(),
                node: e.node.as_deref().map(str::to_string),
                zone: e.zone.as_deref().map(str::to_string),
                used: e.verdict.is_used() && !matches!(e.verdict, EndpointVerdict::Excluded(Exclusion::WeightZero)),
                verdict,
                why,
            }
        })
        .collect();

    let key = format!("{} {}", fe.key.proto, fe.key);
    for refusal in src.table.refused() {
        if let Refusal::Conflict(c) = refusal
            && c.frontend == key
        {
            r.nearest.push(Nearby {
                kind: "conflict".into(),
                text: format!("{} asks for this frontend too and is ignored for it: {} holds it", c.loser, c.winner),
            });
        }
    }
    if rec.load_balancer_pending {
        r.nearest.push(Nearby {
            kind: "load_balancer_pending".into(),
            text: format!(
                "{} is type LoadBalancer with no status.loadBalancer.ingress yet: no load-balancer frontend until the cloud controller assigns one",
                fe.service.to_string().split(':').next().unwrap_or_default()
            ),
        });
    }
    let set = &preview.backends;
    let health = fe
        .health_check_node_port
        .and_then(|port| (src.health_check)(port).map(|(status, local_endpoints)| HealthCheckView { port, status, local_endpoints }));
    r.health_check = health.clone();
    let out_of_range = match q.client {
        Some(c) if !fe.source_ranges.is_empty() => !fe.source_ranges.iter().any(|n| n.contains(&c.ip())),
        _ => false,
    };
    let intercepted = match fe.key.proto {
        Protocol::Tcp => true,
        Protocol::Udp => src.live.as_ref().is_none_or(|l| l.udp),
        Protocol::Sctp => false,
    };
    if set.none_pickable() {
        let (outcome, how) = match fe.when_empty {
            WhenEmpty::Reject => (Outcome::Refused, "refused at once (TCP reset / ICMP port unreachable)"),
            WhenEmpty::Drop => (Outcome::Dropped, "dropped without an answer"),
        };
        r.outcome = outcome;
        r.experience = match (&health, fe.when_empty) {
            (Some(h), WhenEmpty::Drop) => format!(
                "{how}; the health-check node port {} answers {} ({} local endpoints), so a load balancer steers away",
                h.port, h.status, h.local_endpoints
            ),
            _ => how.to_string(),
        };
        r.diagnosis = empty_diagnosis(fe, r, short_circuited.is_some());
    } else if out_of_range {
        r.outcome = Outcome::Dropped;
        r.experience = "dropped: the client is outside the Service's loadBalancerSourceRanges".into();
        r.diagnosis = format!(
            "{} drops {}: not in loadBalancerSourceRanges ({})",
            fe.service,
            q.client.map(|c| c.ip().to_string()).unwrap_or_default(),
            r.frontend.as_ref().map(|f| f.source_ranges.join(", ")).unwrap_or_default()
        );
    } else if !intercepted {
        r.outcome = Outcome::NotIntercepted;
        r.experience = format!("no rule intercepts {}: the daemon runs without the {} data path", fe.key.proto, fe.key.proto);
        r.diagnosis = format!("{} has endpoints but tpvs does not intercept {} here", fe.service, fe.key.proto);
    } else {
        r.outcome = Outcome::Forwarded;
        let (who, seen) = match (preview.policy, short_circuited.is_some()) {
            (TrafficPolicy::Local, _) => ("client", "the client's own address (policy Local)"),
            (TrafficPolicy::Cluster, false) => ("node", "the node's address (policy Cluster)"),
            (TrafficPolicy::Cluster, true) => ("node", "the node's address (short-circuited: served as policy Cluster)"),
        };
        r.source_seen_by_backend = Some(who.into());
        r.experience = format!("forwarded; the backend sees {seen}");
    }
    let decision = decide(fe, &preview, client);
    if r.outcome == Outcome::Forwarded {
        let used = r.endpoints.iter().filter(|e| e.used).count();
        r.diagnosis = match &decision.backend {
            Some(b) => format!("{} forwards to {b} ({})", fe.service, decision.by.as_deref().unwrap_or("scheduler")),
            None => format!("{} forwards to one of {used} endpoint(s) ({})", fe.service, fe.scheduler_kind()),
        };
        if let (Some(kind), Some(c)) = (preview.local_client, q.client) {
            let who = match kind {
                LocalClient::Pod => "a pod of this node",
                LocalClient::Node => "an address of this node",
            };
            r.diagnosis = format!("{}: {} is {who}, short-circuited to all endpoints as kube-proxy does", r.diagnosis, c.ip());
        }
    }
    r.decision = Some(decision);
    if let Some(live) = &src.live {
        r.live = Some(live_evidence(fe, set, src, live));
        // The NodePort recipe: did packets reach the rule at all?
        if as_node_port
            && let Some(rule) = r.live.as_ref().and_then(|l| l.rule.as_ref())
        {
            let addrs = r.live.as_ref().map(|l| l.node_port_addresses.clone()).unwrap_or_default();
            r.diagnosis = format!(
                "{}; NodePort {} answers on {addrs}; its rule counted {} packets{}",
                r.diagnosis,
                fe.key.port,
                rule.packets.map_or("?".to_string(), |p| p.to_string()),
                if rule.packets == Some(0) { " (nothing reached this node: look at firewalls between the client and the node)" } else { "" }
            );
        }
    } else if as_node_port {
        r.diagnosis = format!(
            "{}; NodePort {} answers on this node's node-port addresses (--nodeport-addresses); ask the running daemon to see whether packets reach its rule",
            r.diagnosis, fe.key.port
        );
    }
}

/// Why a frontend has no backend for this client: the first fact that decides it
/// (`short_circuited`: the client is served from the cluster-wide set, not the Local one).
fn empty_diagnosis(fe: &Frontend, r: &Report, short_circuited: bool) -> String {
    let rec = &fe.explanation;
    let svc = fe.service.to_string();
    let base = svc.split(':').next().unwrap_or_default().to_string();
    if rec.slices == 0 {
        return format!(
            "{} refuses: no EndpointSlice names {base} (a selector that matches no Pod leaves it empty)",
            svc
        );
    }
    if rec.endpoints.is_empty() {
        return format!("{svc} refuses: its EndpointSlices list no endpoints (a selector that matches no Pod leaves them empty)");
    }
    let by = |code: &str| r.endpoints.iter().filter(|e| e.verdict == code).map(|e| e.address.clone()).collect::<Vec<_>>();
    let (not_ready, other_node, term) = (by("not_ready"), by("other_node"), by("terminating_not_serving"));
    let weight0 = by("weight_zero");
    let portless = by("port_not_in_slice");
    let verb = match fe.when_empty {
        WhenEmpty::Reject => "refuses",
        WhenEmpty::Drop => "drops",
    };
    if fe.policy == TrafficPolicy::Local && !short_circuited && !other_node.is_empty() {
        return format!(
            "{svc} {verb}: traffic policy Local and no endpoint runs on this node ({} run elsewhere)",
            other_node.len()
        );
    }
    if !not_ready.is_empty() && not_ready.len() + term.len() == r.endpoints.len() - portless.len() - by("other_family").len() {
        return format!(
            "{svc} {verb}: all its endpoints are not ready: {} (the EndpointSlice does not say since when)",
            not_ready.join(", ")
        );
    }
    if !weight0.is_empty() {
        return format!("{svc} {verb}: every selected endpoint has weight 0 in tpvs/weights: {}", weight0.join(", "));
    }
    if !portless.is_empty() {
        return format!("{svc} {verb}: no EndpointSlice carries port {:?} (check the port's name)", fe.service.port.as_ref());
    }
    if !term.is_empty() {
        return format!("{svc} {verb}: its endpoints are terminating and no longer serving: {}", term.join(", "));
    }
    format!("{svc} {verb}: no endpoint is usable")
}

fn decide(fe: &Frontend, p: &Preview, client: Option<ClientAddr>) -> Decision {
    let set = &p.backends;
    let addr = |i: usize| set.get(i).map(|b| b.addr.to_string());
    let sticky = p.sticky.and_then(|(i, left)| {
        Some(StickyView { backend: addr(i)?, expires_in_seconds: left.as_secs() + u64::from(left.subsec_nanos() > 0) })
    });
    let candidates = set
        .iter()
        .filter(|b| b.is_pickable())
        .map(|b| {
            let (ewma, samples) = b.stats.ewma_sample();
            CandidateView {
                address: b.addr.to_string(),
                weight: b.weight,
                active: b.stats.active(),
                connections: b.stats.connections(),
                ewma_ms: (samples > 0).then(|| (ewma / 1e6 * 1000.0).round() / 1000.0),
            }
        })
        .collect();
    let kind = fe.scheduler_kind();
    let client_text = client.map(|c| if c.port() == 0 { c.ip().to_string() } else { c.0.to_string() });
    let (backend, by, text) = if let Some(s) = &sticky {
        (
            Some(s.backend.clone()),
            Some("affinity".to_string()),
            format!(
                "session affinity: {} sticks to {} for {} s more",
                client_text.clone().unwrap_or_default(),
                s.backend,
                s.expires_in_seconds
            ),
        )
    } else if let Some(i) = p.pick {
        let b = addr(i).unwrap_or_default();
        let how = match p.pick_key {
            PickKey::ClientIp => "hashes the client's address",
            PickKey::Destination => "hashes the destination address",
            PickKey::Flow => "hashes the client's address and port and the destination",
            PickKey::State => "",
        };
        let ejected = if p.pick_ejected { " (ejected as an outlier now: the connection goes to the next candidate)" } else { "" };
        let who = client_text.clone().map_or("every client".to_string(), |c| c);
        (Some(b.clone()), Some("scheduler".to_string()), format!("scheduler {kind} {how}: {who} gets {b}{ejected}"))
    } else if set.none_pickable() {
        (None, None, format!("scheduler {kind}: no backend to pick"))
    } else {
        let why = match (p.pick_key, client) {
            (PickKey::ClientIp, None) => "give --from CLIENT_IP to see which backend a client gets".to_string(),
            (PickKey::Flow, _) => "maglev hashes the client's port too: give --from CLIENT_IP:PORT".to_string(),
            _ => "the pick depends on live state (a cursor, counters or chance), shown per candidate".to_string(),
        };
        (None, None, format!("scheduler {kind} picks among {} backend(s): {why}", set.iter().filter(|b| b.is_pickable()).count()))
    };
    let mut text = text;
    if fe.affinity.is_some() && sticky.is_none() && client.is_some() {
        text = format!("{text}; session affinity: this client has no sticky entry now (its next connection creates one)");
    }
    Decision { scheduler: kind.as_str().to_string(), backend, by, text, sticky, candidates }
}

/// `set`: the backends this client is served from.
fn live_evidence(fe: &Frontend, set: &BackendSet, src: &Sources<'_>, live: &LiveSources<'_>) -> Live {
    let rule = live.interception.and_then(|i| i.element(src.table, &fe.key)).map(|(el, count): (_, Option<ElementCount>)| {
        RuleView {
            map: el.map.to_string(),
            element: el.text,
            packets: count.map(|c| c.packets),
            bytes: count.map(|c| c.bytes),
        }
    });
    let backends: Vec<LiveBackend> = set
        .iter()
        .map(|b| {
            let m = live.metrics.peek(b.addr);
            let failures = ConnectFailure::ALL
                .iter()
                .map(|w| (w.as_str().to_string(), m.as_ref().map_or(0, |m| m.failures(*w))))
                .collect();
            let now = schedulers::stats::now_nanos();
            LiveBackend {
                address: b.addr.to_string(),
                active: b.stats.active(),
                connections: b.stats.connections(),
                failures,
                retries: m.as_ref().map_or(0, |m| m.retries()),
                ejected_for_seconds: m.as_ref().and_then(|m| {
                    let left = m.outlier.ejected_for_ns(now);
                    (left > 0).then(|| Duration::from_nanos(left).as_secs().max(1))
                }),
            }
        })
        .collect();
    Live {
        rule,
        frontend_connections: backends.iter().map(|b| b.connections).fold(0, u64::saturating_add),
        backends,
        node_port_addresses: node_port_addresses(src.dispatcher),
    }
}

/// The short-circuit fact for `q`'s client (`local_client`: the data path's own answer).
fn short_circuit_view(lo: &LocalOrigin, q: &Query, local_client: Option<LocalClient>) -> ShortCircuitView {
    let pods: Vec<String> = lo.pod_sources.iter().map(ToString::to_string).collect();
    let endpoints = lo.scheduler.backends().iter().filter(|b| b.is_pickable()).count();
    let from = if pods.is_empty() { "this node".to_string() } else { format!("this node and its pods ({})", pods.join(", ")) };
    let client = q.client.map(|c| c.ip().to_string()).unwrap_or_default();
    let why = match local_client {
        Some(LocalClient::Pod) => format!(
            "{client} is a pod of this node (in {}), so it is short-circuited to all {endpoints} endpoint(s) as kube-proxy does: traffic policy Local applies to clients from outside only",
            pods.join(", ")
        ),
        Some(LocalClient::Node) => format!(
            "{client} is an address of this node, so it is short-circuited to all {endpoints} endpoint(s) as kube-proxy does: traffic policy Local applies to clients from outside only"
        ),
        None if q.client.is_some() => format!(
            "connections from {from} are served from all {endpoints} endpoint(s) instead (kube-proxy's short-circuit); {client} is neither"
        ),
        None => format!("connections from {from} are served from all {endpoints} endpoint(s) instead (kube-proxy's short-circuit)"),
    };
    ShortCircuitView {
        applies: local_client.is_some(),
        client_is: local_client.map(|c| match c {
            LocalClient::Pod => "pod".to_string(),
            LocalClient::Node => "node".to_string(),
        }),
        pod_sources: pods,
        endpoints,
        why,
    }
}
