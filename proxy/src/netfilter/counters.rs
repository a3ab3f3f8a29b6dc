//! Packets the kernel refused or dropped for tpvs's frontends.
//!
//! Connections to a Service without endpoints are refused, and those to a Local Service without
//! local endpoints dropped, by the rule set itself: tpvs never sees them. The `refuse` and
//! `no_local` chains count their packets; this reads those counters back. Counted in packets,
//! not connections (a dropped SYN is retransmitted and counted again).
//!
//! The table is replaced whole on every change, which zeroes its counters, so
//! [`super::Interception`] adds what the old table had counted to a carried total first.

use std::process::{Command, Stdio};

use super::CommandError;

/// Packets through the `refuse` and `no_local` chains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCounts {
    /// Refused: the Service has no endpoint at all (reset / ICMP port-unreachable).
    pub refused: u64,
    /// Dropped: Local traffic policy and no endpoint on this node.
    pub dropped: u64,
}

impl VerdictCounts {
    pub fn plus(self, other: VerdictCounts) -> VerdictCounts {
        VerdictCounts { refused: self.refused.saturating_add(other.refused), dropped: self.dropped.saturating_add(other.dropped) }
    }
}

/// Reads the counters of table `inet <table>` (`nft -j`); a missing table counts zero.
pub fn read(table: &str) -> Result<VerdictCounts, CommandError> {
    let out = Command::new("nft")
        .args(["-j", "list", "table", "inet", table])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CommandError::Spawn { program: "nft", package: "nftables", source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.contains("No such file or directory") {
            return Ok(VerdictCounts::default());
        }
        return Err(CommandError::Failed { command: format!("nft -j list table inet {table}"), stderr });
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Sums the `counter` statements of the `refuse` and `no_local` chains in `nft -j` output.
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
    fn sums_the_counters_of_the_two_chains_only() {
        let json = r#"{"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "tpvs", "handle": 1}},
            {"rule": {"family": "inet", "table": "tpvs", "chain": "refuse", "handle": 9,
                      "expr": [{"counter": {"packets": 3, "bytes": 180}}]}},
            {"rule": {"family": "inet", "table": "tpvs", "chain": "refuse", "handle": 10,
                      "expr": [{"match": {}}, {"reject": {"type": "tcp reset"}}]}},
            {"rule": {"family": "inet", "table": "tpvs", "chain": "no_local", "handle": 12,
                      "expr": [{"counter": {"packets": 7, "bytes": 420}}, {"drop": null}]}},
            {"rule": {"family": "inet", "table": "tpvs", "chain": "prerouting", "handle": 4,
                      "expr": [{"counter": {"packets": 100, "bytes": 1}}]}}
        ]}"#;
        assert_eq!(parse(json), VerdictCounts { refused: 3, dropped: 7 });
    }

    #[test]
    fn garbage_counts_zero() {
        assert_eq!(parse("not json"), VerdictCounts::default());
        assert_eq!(parse(r#"{"nftables": 5}"#), VerdictCounts::default());
    }
}
