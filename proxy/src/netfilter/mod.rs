//! Interception owned by tpvs: one nftables table and one policy-routing rule per family.
//!
//! - [`ruleset`]: the rule text for a routing table (pure).
//! - [`command`]: running `nft` and `ip`, with errors that say which command failed and why.
//! - [`counters`]: the packets the rules refused or dropped (read back for the metrics), and
//!   the per-element counters of the verdict maps (read back by `tpvs explain`).
//! - [`Interception`]: installs, re-syncs (one atomic `nft -f -` per table change that alters
//!   the rules), re-asserts the rules when they change under it (periodic check) and removes
//!   everything; safe to call from the publisher's thread, the checker's and the shutdown
//!   path at once.

pub mod command;
pub mod counters;
pub mod ruleset;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use controlplane::{FrontendKey, RoutingTable};
use tracing::{debug, info, warn};

pub use command::CommandError;
pub use counters::{ElementCount, Listing, VerdictCounts};
pub use ruleset::{Plan, RulesetConfig, Verdict};

/// Policy-routing knobs: packets carrying `mark` are looked up in `table`, which routes
/// everything to `lo` as local (that is what lets a socket accept packets for a foreign VIP or
/// a spoofed client address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutingConfig {
    pub mark: u32,
    pub table: u32,
}

/// How old the rules' counters may be when a scrape reads them: scrapes cost no `nft` run
/// however often they come (the periodic rules check refreshes them sooner).
pub const COUNTERS_MAX_AGE: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct State {
    /// The rule text last applied, so a table change that does not alter any verdict (a new
    /// endpoint behind an existing VIP) costs no nft transaction.
    applied: Option<String>,
    /// Fingerprint of the table as listed right after it was applied: what the periodic
    /// check compares against.
    fingerprint: Option<u64>,
    /// The table's own counters as last read, and when.
    counts: Option<(Instant, VerdictCounts)>,
    /// Policy routing is installed (and so is checked).
    routing: bool,
    /// Set by `remove`: a publish racing with shutdown must not re-install what was removed.
    closed: bool,
}

/// The interception a killed instance left behind ([`Interception::leftover`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leftover {
    /// The policy-routing rule and route are both in place for every family.
    pub routing: bool,
}

/// Counters for the sync (exported as kube-proxy's sync metrics by the admin endpoint).
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncStats {
    pub syncs: u64,
    pub failures: u64,
    pub last_duration: Option<Duration>,
}

/// Times the rules were found changed under the running instance and applied again.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reasserted {
    /// The nft table was deleted, flushed or altered.
    pub nft_table: u64,
    /// The policy-routing rule or route was missing.
    pub policy_routing: u64,
}

/// Installs and keeps in step the interception for one network namespace.
#[derive(Debug)]
pub struct Interception {
    rules: RulesetConfig,
    routing: RoutingConfig,
    state: Mutex<State>,
    stats: Mutex<SyncStats>,
    reasserted: Mutex<Reasserted>,
    /// Refusals and drops counted by tables already replaced (a new table starts at zero).
    carried: Mutex<VerdictCounts>,
}

impl Interception {
    pub fn new(rules: RulesetConfig, routing: RoutingConfig) -> Arc<Self> {
        Arc::new(Interception {
            rules,
            routing,
            state: Mutex::new(State::default()),
            stats: Mutex::new(SyncStats::default()),
            reasserted: Mutex::default(),
            carried: Mutex::default(),
        })
    }

    pub fn stats(&self) -> SyncStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn reasserted(&self) -> Reasserted {
        *self.reasserted.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Policy routing for both families, then the rules for `table`. Any leftover from a
    /// previous run (killed without cleanup) is replaced, not duplicated.
    pub fn install(&self, table: &RoutingTable) -> Result<(), CommandError> {
        self.install_routing()?;
        self.sync(table)
    }

    /// Policy routing for both families (replacing any leftover copy).
    pub fn install_routing(&self) -> Result<(), CommandError> {
        command::install_routing(self.routing)?;
        self.state().routing = true;
        Ok(())
    }

    /// Adopts the policy routing a predecessor installed, as it is (re-adding it would open a
    /// window without it); the periodic check re-installs it if it is missing.
    pub fn adopt_routing(&self) {
        self.state().routing = true;
    }

    /// What a previous instance that was killed (or crashed) left in place: its nft table,
    /// and whether its policy routing is complete. `None`: no table, a fresh node.
    pub fn leftover(&self) -> Result<Option<Leftover>, CommandError> {
        if counters::list(&self.rules.table)?.is_none() {
            return Ok(None);
        }
        Ok(Some(Leftover { routing: command::routing_present(self.routing)? }))
    }

    /// A successor owns the rules now: from here on this instance neither syncs, checks nor
    /// removes them (they stay in force for the successor).
    pub fn relinquish(&self) {
        let mut state = self.state();
        state.closed = true;
        state.routing = false;
    }

    /// Brings the nft table in line with `table`. One `nft -f -` transaction, skipped when the
    /// rule text is unchanged.
    pub fn sync(&self, table: &RoutingTable) -> Result<(), CommandError> {
        let started = Instant::now();
        let plan = ruleset::plan(table, &self.rules);
        let text = ruleset::render(&plan, &self.rules);
        let mut state = self.state();
        if state.closed {
            return Ok(());
        }
        if state.applied.as_deref() == Some(text.as_str()) {
            debug!(generation = table.generation, "netfilter rules unchanged");
            return Ok(());
        }
        if state.applied.is_some() {
            self.harvest(&mut state);
        }
        let result = self.apply(&mut state, text);
        let took = started.elapsed();
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.syncs += 1;
        stats.last_duration = Some(took);
        match result {
            Ok(()) => {
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

    /// The transaction replaces the table and so zeroes its counters: adds what they hold to
    /// the carried total first. A failed read loses only these counts, never the sync; a
    /// vanished table keeps the counts last read.
    fn harvest(&self, state: &mut State) {
        let now = match counters::list(&self.rules.table) {
            Ok(Some(l)) => l.counts,
            Ok(None) => state.counts.map(|(_, c)| c).unwrap_or_default(),
            Err(e) => {
                debug!(error = %e, "reading the rules' counters before replacing them");
                return;
            }
        };
        let mut carried = self.carried.lock().unwrap_or_else(|p| p.into_inner());
        *carried = carried.plus(now);
        state.counts = None;
    }

    /// Applies `text` and records what the kernel now holds, for the periodic check.
    fn apply(&self, state: &mut State, text: String) -> Result<(), CommandError> {
        command::nft_apply(&text)?;
        state.applied = Some(text);
        match counters::list(&self.rules.table) {
            Ok(Some(l)) => {
                state.fingerprint = Some(l.fingerprint);
                state.counts = Some((Instant::now(), l.counts));
            }
            // The next check adopts what it finds.
            _ => state.fingerprint = None,
        }
        Ok(())
    }

    /// Packets refused and dropped by the rules since start. Reads the kernel (one
    /// `nft -j list`) only when the last read is older than [`COUNTERS_MAX_AGE`].
    pub fn verdict_counts(&self) -> Result<VerdictCounts, CommandError> {
        // Under the state lock, so a sync cannot replace the table between the read and the
        // carried total.
        let mut state = self.state();
        let carried = *self.carried.lock().unwrap_or_else(|p| p.into_inner());
        if state.closed || state.applied.is_none() {
            return Ok(carried);
        }
        let fresh = state.counts.filter(|(at, _)| at.elapsed() < COUNTERS_MAX_AGE);
        let counts = match fresh {
            Some((_, c)) => c,
            None => match counters::list(&self.rules.table)? {
                Some(l) => {
                    state.counts = Some((Instant::now(), l.counts));
                    l.counts
                }
                // Deleted under us: the periodic check puts it back; until then, the last read.
                None => state.counts.map(|(_, c)| c).unwrap_or_default(),
            },
        };
        Ok(carried.plus(counts))
    }

    /// The rule element `key` is installed as in the current rules, and the packets it has
    /// counted since they were last replaced (`tpvs explain`'s live evidence). `None` when
    /// no rule serves the frontend.
    pub fn element(&self, table: &RoutingTable, key: &FrontendKey) -> Option<(ruleset::RuleElement, Option<ElementCount>)> {
        let element = ruleset::element(&ruleset::plan(table, &self.rules), key)?;
        let count = match counters::element(&self.rules.table, element.map, &element.key) {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "reading a rule element's counter");
                None
            }
        };
        Some((element, count))
    }

    /// The node-port addresses the rules match (`--nodeport-addresses`).
    pub fn nodeport_addrs(&self) -> &crate::addrs::NodePortAddrs {
        &self.rules.nodeport_addrs
    }

    /// The periodic check: re-applies the rules if the nft table was deleted, flushed or
    /// altered since this instance applied it, and the policy routing if its rule or route is
    /// gone. Refreshes the counters' cache on the way (the same listing).
    ///
    /// The signal is a fingerprint of `nft -j list table` with counter values zeroed: the
    /// table's handle alone misses a flush, rule handles miss edited map elements, and nft's
    /// ruleset generation is not readable without netlink and moves with every other table
    /// in the namespace. The listing is needed for the counters anyway, so drift detection
    /// costs no extra `nft` run.
    pub fn check(&self) -> Result<Reasserted, CommandError> {
        let mut done = Reasserted::default();
        let mut state = self.state();
        if state.closed {
            return Ok(done);
        }
        if let Some(text) = state.applied.clone() {
            let listing = counters::list(&self.rules.table)?;
            let changed = match (listing, state.fingerprint) {
                (None, _) => Some("deleted"),
                (Some(l), Some(f)) if l.fingerprint != f => Some("altered"),
                (Some(l), known) => {
                    if known.is_none() {
                        state.fingerprint = Some(l.fingerprint);
                    }
                    state.counts = Some((Instant::now(), l.counts));
                    None
                }
            };
            if let Some(how) = changed {
                warn!(table = %self.rules.table, how, "the nft table changed under tpvs; applying its rules again");
                self.harvest(&mut state);
                self.apply(&mut state, text)?;
                done.nft_table += 1;
            }
        }
        if state.routing && !command::routing_present(self.routing)? {
            warn!(mark = self.routing.mark, table = self.routing.table, "the policy-routing rule or route is gone; installing it again");
            command::install_routing(self.routing)?;
            done.policy_routing += 1;
        }
        drop(state);
        if done != Reasserted::default() {
            let mut r = self.reasserted.lock().unwrap_or_else(|p| p.into_inner());
            r.nft_table += done.nft_table;
            r.policy_routing += done.policy_routing;
        }
        Ok(done)
    }

    /// Removes the table and the policy routing; later syncs are ignored.
    pub fn remove(&self) -> Result<(), CommandError> {
        let mut state = self.state();
        state.closed = true;
        state.applied = None;
        state.routing = false;
        remove_all(&self.rules.table, self.routing)
    }

    /// Removes the nft table only; later syncs are ignored (start-up undo).
    pub fn remove_table(&self) -> Result<(), CommandError> {
        let mut state = self.state();
        state.closed = true;
        state.applied = None;
        command::nft_apply(&ruleset::render_delete(&self.rules.table))
    }

    /// Removes the policy routing only (start-up undo).
    pub fn remove_routing(&self) -> Result<(), CommandError> {
        let mut state = self.state();
        state.routing = false;
        command::remove_routing(self.routing)
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

    /// Runs [`Interception::check`] every `interval` on its own thread until the interception
    /// is removed. A failed check is logged and retried at the next interval.
    pub fn spawn_checker(self: &Arc<Self>, interval: Duration) -> std::io::Result<()> {
        let me = Arc::clone(self);
        std::thread::Builder::new().name("tpvs-rules-check".into()).spawn(move || {
            loop {
                std::thread::sleep(interval);
                if me.state().closed {
                    return;
                }
                if let Err(e) = me.check() {
                    warn!(error = %e, "checking the interception rules failed; retrying");
                }
            }
        })?;
        Ok(())
    }
}

/// Removes everything tpvs may have installed in this namespace (`tpvs cleanup`). Tries every
/// step even when one fails, and reports the first failure.
pub fn remove_all(nft_table: &str, routing: RoutingConfig) -> Result<(), CommandError> {
    let nft = command::nft_apply(&ruleset::render_delete(nft_table));
    let ip = command::remove_routing(routing);
    nft.and(ip)
}
