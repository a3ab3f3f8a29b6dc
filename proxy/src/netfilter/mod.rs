//! Interception owned by tpvs: one nftables table and one policy-routing rule per family.
//!
//! - [`ruleset`]: the rule text for a routing table (pure).
//! - [`command`]: running `nft` and `ip`, with errors that say which command failed and why.
//! - [`counters`]: the packets the rules refused or dropped (read back for the metrics).
//! - [`Interception`]: installs, re-syncs (one atomic `nft -f -` per table change that alters
//!   the rules) and removes everything; safe to call from the publisher's thread and from the
//!   shutdown path at once.

pub mod command;
pub mod counters;
pub mod ruleset;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use controlplane::RoutingTable;
use tracing::{debug, info, warn};

pub use command::CommandError;
pub use counters::VerdictCounts;
pub use ruleset::{Plan, RulesetConfig, Verdict};

/// Policy-routing knobs: packets carrying `mark` are looked up in `table`, which routes
/// everything to `lo` as local (that is what lets a socket accept packets for a foreign VIP or
/// a spoofed client address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutingConfig {
    pub mark: u32,
    pub table: u32,
}

#[derive(Debug, Default)]
struct State {
    /// The rule text last applied, so a table change that does not alter any verdict (a new
    /// endpoint behind an existing VIP) costs no nft transaction.
    applied: Option<String>,
    /// Set by `remove`: a publish racing with shutdown must not re-install what was removed.
    closed: bool,
}

/// Counters for the sync (exported as kube-proxy's sync metrics by the admin endpoint).
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncStats {
    pub syncs: u64,
    pub failures: u64,
    pub last_duration: Option<Duration>,
}

/// Installs and keeps in step the interception for one network namespace.
#[derive(Debug)]
pub struct Interception {
    rules: RulesetConfig,
    routing: RoutingConfig,
    state: Mutex<State>,
    stats: Mutex<SyncStats>,
    /// Refusals and drops counted by tables already replaced (a new table starts at zero).
    carried: Mutex<VerdictCounts>,
}

impl Interception {
    pub fn new(rules: RulesetConfig, routing: RoutingConfig) -> Arc<Self> {
        Arc::new(Interception { rules, routing, state: Mutex::new(State::default()), stats: Mutex::new(SyncStats::default()), carried: Mutex::default() })
    }

    pub fn stats(&self) -> SyncStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Policy routing for both families, then the rules for `table`. Any leftover from a
    /// previous run (killed without cleanup) is replaced, not duplicated.
    pub fn install(&self, table: &RoutingTable) -> Result<(), CommandError> {
        command::install_routing(self.routing)?;
        self.sync(table)
    }

    /// Brings the nft table in line with `table`. One `nft -f -` transaction, skipped when the
    /// rule text is unchanged.
    pub fn sync(&self, table: &RoutingTable) -> Result<(), CommandError> {
        let started = Instant::now();
        let plan = ruleset::plan(table, &self.rules);
        let text = ruleset::render(&plan, &self.rules);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.closed {
            return Ok(());
        }
        if state.applied.as_deref() == Some(text.as_str()) {
            debug!(generation = table.generation, "netfilter rules unchanged");
            return Ok(());
        }
        if state.applied.is_some() {
            // The transaction below zeroes the kernel's counters: keep what they hold. A
            // failed read loses only these counts, never the sync.
            if let Ok(now) = counters::read(&self.rules.table) {
                let mut carried = self.carried.lock().unwrap_or_else(|p| p.into_inner());
                *carried = carried.plus(now);
            }
        }
        let result = command::nft_apply(&text);
        let took = started.elapsed();
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.syncs += 1;
        stats.last_duration = Some(took);
        match result {
            Ok(()) => {
                state.applied = Some(text);
                info!(
                    generation = table.generation,
                    vips = plan.exact.len(),
                    node_ports = plan.node_ports.len(),
                    took_us = took.as_micros() as u64,
                    "netfilter rules synced"
                );
                Ok(())
            }
            Err(e) => {
                stats.failures += 1;
                Err(e)
            }
        }
    }

    /// Packets refused and dropped by the rules since start (one `nft -j list`; for scrapes).
    pub fn verdict_counts(&self) -> Result<VerdictCounts, CommandError> {
        // Under the state lock, so a sync cannot replace the table between the read and the
        // carried total.
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let carried = *self.carried.lock().unwrap_or_else(|p| p.into_inner());
        if state.closed || state.applied.is_none() {
            return Ok(carried);
        }
        Ok(carried.plus(counters::read(&self.rules.table)?))
    }

    /// Removes the table and the policy routing; later syncs are ignored.
    pub fn remove(&self) -> Result<(), CommandError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.closed = true;
        state.applied = None;
        remove_all(&self.rules.table, self.routing)
    }

    /// Publisher callback: sync, and log (not propagate) a failure, keeping the old rules in
    /// force — the same rule as for a malformed manifest.
    pub fn on_publish(self: &Arc<Self>) -> impl Fn(&Arc<RoutingTable>) + Send + Sync + 'static {
        let me = Arc::clone(self);
        move |table| {
            if let Err(e) = me.sync(table) {
                warn!(generation = table.generation, error = %e, "netfilter sync failed; previous rules stay in force");
            }
        }
    }
}

/// Removes everything tpvs may have installed in this namespace (`tpvs cleanup`). Tries every
/// step even when one fails, and reports the first failure.
pub fn remove_all(nft_table: &str, routing: RoutingConfig) -> Result<(), CommandError> {
    let nft = command::nft_apply(&ruleset::render_delete(nft_table));
    let ip = command::remove_routing(routing);
    nft.and(ip)
}
