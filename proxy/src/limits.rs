//! The process's file-descriptor limit, and the budget it is split into.
//!
//! Every open connection, flow, pipe and admin client costs descriptors from one process-wide
//! pool (`RLIMIT_NOFILE`). When one user may take them all, the others fail at random: an
//! `accept` that gets `EMFILE` leaves its client hanging in the queue, and the health server
//! that cannot accept makes the kubelet restart the pod. So the limit is split at start, once,
//! and each user is capped by its share:
//!
//! - a **reserve** for everything that must keep working at every cap: the admin and health
//!   servers (their connection caps are defined here), health-check node ports, the `nft` and
//!   `ip` child processes' pipes, the API client, the runtimes and the listeners;
//! - **TCP connections**: two sockets each;
//! - **pipes** for zero-copy relaying: two descriptors each, in use or pooled; without a free
//!   pipe a connection copies instead (slower, never refused);
//! - **UDP flows**: one socket each, plus the reply socket bound to its frontend address, which
//!   flows to the same frontend share (one per frontend and worker) — so at worst two each.
//!
//! The budget is decided once per process, like the limit it splits, so it is kept in a
//! process-wide cell that the metrics read.

use std::sync::OnceLock;

use tracing::{info, warn};

/// Connections the metrics server (`/metrics`, `/api/table`) keeps open at once.
pub const METRICS_CONNECTIONS: usize = 16;
/// Connections the health server (`/healthz`, `/livez`) keeps open at once.
pub const HEALTH_CONNECTIONS: usize = 32;
/// Connections all health-check node ports together keep open at once.
pub const NODE_PORT_CONNECTIONS: usize = 32;
/// Health-check node port listeners budgeted for (more still open while descriptors last).
const NODE_PORT_LISTENERS: u64 = 8;
/// Standard streams, the log, the API client's connections, manifest reads, `/proc` reads and
/// the pipes of the `nft`/`ip` children (three each, a few at a time).
const BASE: u64 = 32;
/// Per worker (TCP and UDP): the runtime's epoll and eventfd, two listeners each, the spare
/// descriptor kept for draining the accept queue, and the one accepted over the cap.
const PER_WORKER: u64 = 10;
/// Per admin thread: its runtime's epoll and eventfd, and its listener.
const PER_ADMIN_SERVER: u64 = 3;

/// Raises the soft `RLIMIT_NOFILE` to the hard one and returns the limit now in force.
pub fn raise_fd_limit() -> Result<u64, std::io::Error> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: a valid rlimit for setrlimit to read.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(lim.rlim_cur)
}

/// What the budget is planned from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetInput {
    /// `RLIMIT_NOFILE` in force.
    pub limit: u64,
    /// Data-path worker threads (each has TCP and UDP listeners).
    pub workers: usize,
    /// Whether TCP relaying may borrow pipes (splice mode).
    pub splice: bool,
    /// Whether the UDP data path is on.
    pub udp: bool,
    /// `--max-connections`, when given.
    pub max_connections: Option<usize>,
    /// `--udp-max-flows`, when given.
    pub udp_max_flows: Option<usize>,
    /// `--udp-source-share`: percent of the UDP flows one client address may hold.
    pub udp_source_share: u8,
}

/// The split of the descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    pub limit: u64,
    /// Held back for admin, health, children, runtimes and listeners.
    pub reserve: u64,
    pub tcp_connections: usize,
    /// Pipes (two descriptors each) in use or pooled, over all workers.
    pub pipes: usize,
    pub udp_flows: usize,
    /// UDP flows one client address may hold at once.
    pub udp_flows_per_source: usize,
    /// A cap asked for on the command line that the budget lowered: (flag, asked).
    pub clamped: [Option<(&'static str, usize)>; 2],
}

/// Too few descriptors to serve anything besides the reserve.
#[derive(Debug, thiserror::Error)]
#[error(
    "the open-file limit ({limit}) leaves nothing for connections after the {reserve} descriptors \
     reserved for the admin and health servers, the workers and their listeners; raise it \
     (ulimit -n, LimitNOFILE=, or the container runtime's nofile limit)"
)]
pub struct TooFew {
    pub limit: u64,
    pub reserve: u64,
}

impl FdBudget {
    /// Splits `input.limit` (pure). Of the descriptors the reserve leaves, UDP flows get a
    /// quarter when the UDP path is on, pipes a quarter in splice mode, TCP connections the
    /// rest; the caps are those descriptors divided by what one flow, pipe or connection
    /// costs at worst (two each). An
    /// explicit cap lower than its share is kept (the share's remainder stays unused), a
    /// higher one is lowered to it and reported in `clamped`.
    pub fn plan(input: BudgetInput) -> Result<FdBudget, TooFew> {
        let workers = input.workers.max(1) as u64;
        let reserve = BASE
            + PER_WORKER * workers
            + 3 * PER_ADMIN_SERVER
            + (METRICS_CONNECTIONS + HEALTH_CONNECTIONS + NODE_PORT_CONNECTIONS) as u64
            + NODE_PORT_LISTENERS;
        let free = input.limit.saturating_sub(reserve);
        // At least one connection's worth, or the daemon could only refuse.
        if free < 4 {
            return Err(TooFew { limit: input.limit, reserve });
        }
        let udp_fds = if input.udp { free / 4 } else { 0 };
        let pipe_fds = if input.splice { free / 4 } else { 0 };
        let tcp_fds = free - udp_fds - pipe_fds;
        let as_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let mut clamped = [None, None];
        let mut cap = |share: usize, asked: Option<usize>, flag: &'static str, slot: usize| match asked {
            Some(a) if a > share => {
                clamped[slot] = Some((flag, a));
                share
            }
            Some(a) => a,
            None => share,
        };
        let tcp_connections = cap(as_usize(tcp_fds / 2), input.max_connections, "--max-connections", 0);
        let udp_flows = if input.udp { cap(as_usize(udp_fds / 2), input.udp_max_flows, "--udp-max-flows", 1) } else { 0 };
        let share = usize::from(input.udp_source_share.clamp(1, 100));
        let udp_flows_per_source = (udp_flows.saturating_mul(share) / 100).max(1).min(udp_flows.max(1));
        Ok(FdBudget {
            limit: input.limit,
            reserve,
            tcp_connections,
            pipes: as_usize(pipe_fds / 2),
            udp_flows,
            udp_flows_per_source,
            clamped,
        })
    }

    /// The parts by use, as the log and the `tpvs_fd_budget` gauge name them (descriptors).
    pub fn parts(&self) -> [(&'static str, u64); 4] {
        [
            ("reserve", self.reserve),
            ("tcp_connections", self.tcp_connections as u64),
            ("pipes", self.pipes as u64),
            ("udp_flows", self.udp_flows as u64),
        ]
    }

    /// Makes this the process's budget (the first call wins: there is one limit per process).
    pub fn install(self) -> &'static FdBudget {
        BUDGET.get_or_init(|| self)
    }
}

static BUDGET: OnceLock<FdBudget> = OnceLock::new();

/// Plans the process's budget, says the split in the log (and any cap it lowered), and makes
/// it the one the metrics report.
pub fn plan_and_install(input: BudgetInput) -> Result<&'static FdBudget, TooFew> {
    let b = FdBudget::plan(input)?;
    for (flag, asked) in b.clamped.iter().flatten() {
        let allowed = if *flag == "--max-connections" { b.tcp_connections } else { b.udp_flows };
        warn!(flag, asked, allowed, limit = b.limit, "{flag} exceeds the open-file budget; clamped");
    }
    info!(
        limit = b.limit,
        reserve = b.reserve,
        tcp_connections = b.tcp_connections,
        pipes = b.pipes,
        udp_flows = b.udp_flows,
        udp_flows_per_source = b.udp_flows_per_source,
        "file-descriptor budget"
    );
    Ok(b.install())
}

/// The process's budget, once `tpvs run` has planned it.
pub fn installed() -> Option<&'static FdBudget> {
    BUDGET.get()
}

/// Descriptors open in this process now (`None` when `/proc` cannot be read).
pub fn open_fds() -> Option<usize> {
    // The directory handle itself is one of the entries.
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count().saturating_sub(1))
}

/// Hands memory the allocator holds but no longer uses back to the kernel.
///
/// glibc keeps freed memory in its heaps (one per thread that allocated), so a burst — a
/// scrape of a large table on a blocking-pool thread, a reload of a large manifest — would
/// otherwise stay in the RSS for good; a DaemonSet's memory limit counts it all the same.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; no pointer is passed.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(limit: u64) -> BudgetInput {
        BudgetInput { limit, workers: 2, splice: true, udp: true, max_connections: None, udp_max_flows: None, udp_source_share: 25 }
    }

    #[test]
    fn the_parts_never_exceed_the_limit() {
        for limit in [256, 512, 1024, 20_000, 1 << 20] {
            for (splice, udp) in [(true, true), (false, true), (true, false), (false, false)] {
                let b = FdBudget::plan(BudgetInput { splice, udp, ..input(limit) }).unwrap_or_else(|e| panic!("{e}"));
                let used = b.reserve + 2 * b.tcp_connections as u64 + 2 * b.pipes as u64 + 2 * b.udp_flows as u64;
                assert!(used <= limit, "{limit} {splice} {udp}: {b:?} uses {used}");
                assert!(b.tcp_connections > 0, "{b:?}");
                assert_eq!(b.udp_flows > 0, udp);
                assert_eq!(b.pipes > 0, splice);
            }
        }
    }

    #[test]
    fn a_common_limit_splits_as_documented() {
        let b = FdBudget::plan(input(20_000)).unwrap_or_else(|e| panic!("{e}"));
        let free = 20_000 - b.reserve;
        assert_eq!(b.udp_flows as u64, free / 4 / 2);
        assert_eq!(b.pipes as u64, free / 4 / 2);
        assert_eq!(b.tcp_connections as u64, (free - 2 * (free / 4)) / 2);
        assert_eq!(b.udp_flows_per_source, b.udp_flows / 4);
        assert_eq!(b.clamped, [None, None]);
    }

    #[test]
    fn explicit_caps_are_clamped_to_the_budget_or_kept_below_it() {
        let b = FdBudget::plan(BudgetInput { max_connections: Some(1_000_000), udp_max_flows: Some(131_072), ..input(1024) })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.clamped, [Some(("--max-connections", 1_000_000)), Some(("--udp-max-flows", 131_072))]);
        assert!(b.tcp_connections < 1024 && b.udp_flows < 1024);
        let b = FdBudget::plan(BudgetInput { max_connections: Some(10), udp_max_flows: Some(7), ..input(1024) })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((b.tcp_connections, b.udp_flows, b.clamped), (10, 7, [None, None]));
        assert_eq!(b.udp_flows_per_source, 1, "a share of a tiny table is still one flow");
    }

    #[test]
    fn a_limit_below_the_reserve_is_an_error_that_says_what_to_raise() {
        let e = FdBudget::plan(input(64)).err().unwrap_or_else(|| panic!("64 descriptors cannot be enough"));
        assert!(e.to_string().contains("raise it"), "{e}");
    }

    #[test]
    fn the_source_share_is_a_percentage_of_the_flows() {
        let b = FdBudget::plan(BudgetInput { udp_source_share: 100, ..input(20_000) }).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.udp_flows_per_source, b.udp_flows);
        let b = FdBudget::plan(BudgetInput { udp_source_share: 0, ..input(20_000) }).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.udp_flows_per_source, b.udp_flows / 100, "0 is read as the smallest share, 1 %");
    }
}
