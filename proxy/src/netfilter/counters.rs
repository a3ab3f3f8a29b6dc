//! Packets the kernel refused or dropped for tpvs's frontends.
//!
//! Connections to a Service without endpoints are refused, and those to a Local Service without
//! local endpoints dropped, by the rule set itself: tpvs never sees them. The `refuse` and
//! `no_local` chains count their packets, and `out_of_range` those a Service's
//! `loadBalancerSourceRanges` turned away; this reads those counters back. Counted in packets,
//! not connections (a dropped SYN is retransmitted and counted again).
//!
//! The table is replaced whole on every change, which zeroes its counters, so
//! [`super::Interception`] adds what the old table had counted to a carried total first.

use std::hash::{Hash as _, Hasher as _};
use std::process::{Command, Stdio};

use super::CommandError;

/// Packets through the `refuse`, `no_local` and `out_of_range` chains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCounts {
    /// Refused: the Service has no endpoint at all (reset / ICMP port-unreachable).
    pub refused: u64,
    /// Dropped: Local traffic policy and no endpoint on this node.
    pub dropped: u64,
    /// Dropped: the source is outside the load-balancer IP's `loadBalancerSourceRanges`.
    pub out_of_range: u64,
}

impl VerdictCounts {
    pub fn plus(self, other: VerdictCounts) -> VerdictCounts {
        VerdictCounts {
            refused: self.refused.saturating_add(other.refused),
            dropped: self.dropped.saturating_add(other.dropped),
            out_of_range: self.out_of_range.saturating_add(other.out_of_range),
        }
    }
}

/// One read of the table: its counters, and a fingerprint of everything else in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listing {
    pub counts: VerdictCounts,
    /// Hash of the listing with the counters' values zeroed: any rule, chain, map element or
    /// handle that changes changes it, packets passing do not.
    pub fingerprint: u64,
}

/// Reads the counters of table `inet <table>` (`nft -j`); a missing table counts zero.
pub fn read(table: &str) -> Result<VerdictCounts, CommandError> {
    Ok(list(table)?.map(|l| l.counts).unwrap_or_default())
}

/// Lists table `inet <table>` (`nft -j`); None when it does not exist.
pub fn list(table: &str) -> Result<Option<Listing>, CommandError> {
    Ok(nft_json(&["list", "table", "inet", table])?.map(|json| parse_listing(&json)))
}

/// Counters and fingerprint of `nft -j` output.
pub fn parse_listing(json: &str) -> Listing {
    let counts = parse(json);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(mut doc) => {
            zero_counters(&mut doc);
            doc.to_string().hash(&mut hasher);
        }
        // Not JSON: the text itself is the best fingerprint there is.
        Err(_) => json.hash(&mut hasher),
    }
    Listing { counts, fingerprint: hasher.finish() }
}

/// Zeroes every counter value, drops `metainfo` (nft's version, not the table's content) and
/// sorts map and set elements (a hash set's listing order is not part of its content).
fn zero_counters(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("metainfo");
            for (k, child) in map.iter_mut() {
                if k == "elem" {
                    match child.as_array_mut() {
                        Some(items) => {
                            items.iter_mut().for_each(zero_counters);
                            items.sort_by_cached_key(|e| e.to_string());
                        }
                        // One element of a map with per-element counters:
                        // `{"val": ..., "counter": {...}}`.
                        None => zero_counters(child),
                    }
                } else if k == "counter" {
                    if let Some(c) = child.as_object_mut() {
                        for field in ["packets", "bytes"] {
                            if let Some(x) = c.get_mut(field) {
                                *x = serde_json::Value::from(0);
                            }
                        }
                    }
                } else {
                    zero_counters(child);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(zero_counters),
        _ => {}
    }
}

/// What one verdict-map element has counted since the table was last replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ElementCount {
    pub packets: u64,
    pub bytes: u64,
}

/// Reads the counter of the element keyed `key` (as nft prints it: `10.96.0.10 . tcp . 80`)
/// in map `map` of table `inet <table>`; `None` when the table, map or element is missing.
pub fn element(table: &str, map: &str, key: &str) -> Result<Option<ElementCount>, CommandError> {
    Ok(nft_json(&["list", "map", "inet", table, map])?.and_then(|json| parse_element(&json, key)))
}

/// `nft -j <args>`'s output; `None` when what it lists does not exist.
fn nft_json(args: &[&str]) -> Result<Option<String>, CommandError> {
    let out = Command::new("nft")
        .arg("-j")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CommandError::Spawn { program: "nft", package: "nftables", source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(CommandError::Failed { command: format!("nft -j {}", args.join(" ")), stderr });
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The counter of element `key` in `nft -j list map` output.
pub fn parse_element(json: &str, key: &str) -> Option<ElementCount> {
    let doc = serde_json::from_str::<serde_json::Value>(json).ok()?;
    let items = doc.get("nftables")?.as_array()?;
    let elems = items.iter().find_map(|i| i.get("map"))?.get("elem")?.as_array()?;
    elems.iter().find_map(|pair| {
        // `[{"elem": {"val": {"concat": [...]}, "counter": {...}}}, {verdict}]`
        let elem = pair.as_array()?.first()?.get("elem")?;
        let parts = elem.get("val")?.get("concat")?.as_array()?;
        let text: Vec<String> = parts.iter().map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_string)).collect();
        if text.join(" . ") != key {
            return None;
        }
        let c = elem.get("counter")?;
        Some(ElementCount { packets: c.get("packets")?.as_u64()?, bytes: c.get("bytes")?.as_u64()? })
    })
}

/// Sums the `counter` statements of the verdict chains in `nft -j` output.
/// Anything unexpected in the JSON counts as zero rather than failing a scrape.
pub fn parse(json: &str) -> VerdictCounts {
    let mut counts = VerdictCounts::default();
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(json) else { return counts };
    let items = doc.get("nftables").and_then(|v| v.as_array()).map(Vec::as_slice).unwrap_or_default();
    for item in items {
        let Some(rule) = item.get("rule") else { continue };
        let slot = match rule.get("chain").and_then(|c| c.as_str()) {
            Some("refuse") => &mut counts.refused,
            Some("no_local") => &mut counts.dropped,
            Some("out_of_range") => &mut counts.out_of_range,
            _ => continue,
        };
        let exprs = rule.get("expr").and_then(|e| e.as_array()).map(Vec::as_slice).unwrap_or_default();
        for e in exprs {
            if let Some(p) = e.get("counter").and_then(|c| c.get("packets")).and_then(|p| p.as_u64()) {
                *slot = slot.saturating_add(p);
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_counters_of_the_verdict_chains_only() {
        let json = r#"{"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "tpvs", "handle": 1}},
            {"rule": {"family": "inet", "table": "tpvs", "chain": "refuse", "handle": 9,
                      "expr": [{"counter": {"packets": 3, "bytes": 180}}]}},
            {"rule": {"family": "inet", "table": "tpvs", "chain": "refuse", "handle": 10,
                      "expr": [{"match": {}}, {"reject": {"type": "tcp reset"}}]}},
            {"rule": {"family": "inet", "table": "tpvs", "chain": "no_local", "handle": 12,
                      "expr": [{"counter": {"packets": 7, "bytes": 420}}, {"drop": null}]}},
            {"rule": {"family": "inet", "table": "tpvs", "chain": "out_of_range", "handle": 14,
                      "expr": [{"counter": {"packets": 5, "bytes": 300}}, {"drop": null}]}},
            {"rule": {"family": "inet", "table": "tpvs", "chain": "source0", "handle": 15,
                      "expr": [{"counter": {"packets": 50, "bytes": 1}}]}},
            {"rule": {"family": "inet", "table": "tpvs", "chain": "prerouting", "handle": 4,
                      "expr": [{"counter": {"packets": 100, "bytes": 1}}]}}
        ]}"#;
        assert_eq!(parse(json), VerdictCounts { refused: 3, dropped: 7, out_of_range: 5 });
    }

    #[test]
    fn the_fingerprint_ignores_counter_values_and_sees_any_other_change() {
        let doc = |packets: u64, elem: &str| {
            format!(
                r#"{{"nftables": [{{"metainfo": {{"version": "1.0.{packets}"}}}},
                {{"map": {{"family": "inet", "name": "frontends4", "table": "tpvs", "handle": 3, "elem": ["{elem}"]}}}},
                {{"rule": {{"family": "inet", "table": "tpvs", "chain": "refuse", "handle": 9,
                          "expr": [{{"counter": {{"packets": {packets}, "bytes": {packets}}}}}]}}}}]}}"#
            )
        };
        let a = parse_listing(&doc(1, "10.96.0.1"));
        let b = parse_listing(&doc(500, "10.96.0.1"));
        assert_eq!(a.counts.refused, 1);
        assert_eq!(b.counts.refused, 500);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, parse_listing(&doc(1, "10.96.0.2")).fingerprint);
        assert_ne!(a.fingerprint, parse_listing(r#"{"nftables": []}"#).fingerprint);
        let elems = |order: &str| parse_listing(&format!(r#"{{"nftables": [{{"map": {{"name": "m", "elem": {order}}}}}]}}"#)).fingerprint;
        assert_eq!(elems(r#"["a", "b"]"#), elems(r#"["b", "a"]"#), "element order is not content");
    }

    /// `nft -j list map` of a map with per-element counters, as nft 1.0.6 prints it.
    const MAP: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"map": {"family": "inet", "name": "frontends4",
        "table": "tpvs", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 3, "map": "verdict",
        "elem": [[{"elem": {"val": {"concat": ["10.96.0.10", "tcp", 80]}, "counter": {"packets": 7, "bytes": 420}}},
                  {"goto": {"target": "tproxy_tcp"}}],
                 [{"elem": {"val": {"concat": ["10.96.0.11", "tcp", 80]}, "counter": {"packets": 2, "bytes": 120}}},
                  {"goto": {"target": "refuse"}}]],
        "stmt": [{"counter": null}]}}]}"#;

    #[test]
    fn an_elements_counter_is_found_by_its_key() {
        assert_eq!(parse_element(MAP, "10.96.0.10 . tcp . 80"), Some(ElementCount { packets: 7, bytes: 420 }));
        assert_eq!(parse_element(MAP, "10.96.0.11 . tcp . 80"), Some(ElementCount { packets: 2, bytes: 120 }));
        assert_eq!(parse_element(MAP, "10.96.0.12 . tcp . 80"), None);
        assert_eq!(parse_element("garbage", "10.96.0.10 . tcp . 80"), None);
    }

    #[test]
    fn element_counters_do_not_change_the_fingerprint() {
        let more = MAP.replace(r#""packets": 7, "bytes": 420"#, r#""packets": 9000, "bytes": 540000"#);
        assert_ne!(more, MAP);
        assert_eq!(parse_listing(MAP).fingerprint, parse_listing(&more).fingerprint);
    }

    #[test]
    fn garbage_counts_zero() {
        assert_eq!(parse("not json"), VerdictCounts::default());
        assert_eq!(parse(r#"{"nftables": 5}"#), VerdictCounts::default());
    }
}
