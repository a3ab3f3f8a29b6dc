//! The Linux capabilities `tpvs run` needs, feature by feature, checked at start.
//!
//! A missing capability would otherwise surface late and quietly: without
//! `CAP_NET_BIND_SERVICE` the reply socket of a DNS Service cannot bind to VIP:53, so UDP
//! queries simply get no answer. Checking at start names the capability and the feature it
//! breaks, once, before anything is installed.
//!
//! | capability | what needs it |
//! |---|---|
//! | `NET_ADMIN` | the nftables table and policy routes; `IP_TRANSPARENT` sockets (the TPROXY listeners, upstream sockets sending from the client's address under `Local`, UDP reply sockets sending from a Service address); `SO_RCVBUFFORCE` on the UDP listeners |
//! | `NET_BIND_SERVICE` | UDP Services on ports below `net.ipv4.ip_unprivileged_port_start` (1024 by default; DNS on 53): their reply socket binds the Service's address and port; and `Local` UDP flows from a client whose source port is below it |
//!
//! Nothing else: no raw sockets (a Service without endpoints is refused by nftables' `reject`),
//! and the open-file limit is only raised up to its hard limit. `deploy/daemonset.yaml` grants
//! exactly these two, and the end-to-end suite runs its key tests under that set.

use std::fmt::Write as _;

/// One capability and what lacks without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    pub name: &'static str,
    /// Bit number in the capability sets (`linux/capability.h`).
    pub bit: u32,
    /// What does not work without it.
    pub features: &'static str,
    /// Whether tpvs cannot run at all without it (else it runs with those features broken).
    pub required: bool,
}

pub const NET_ADMIN: Need = Need {
    name: "NET_ADMIN",
    bit: 12,
    features: "nftables rules and policy routing (the interception itself) and transparent sockets (accepting for Service addresses, sending from the client's address under Local, replying from UDP Service addresses)",
    required: true,
};

pub const NET_BIND_SERVICE: Need = Need {
    name: "NET_BIND_SERVICE",
    bit: 10,
    features: "UDP Services on privileged ports (DNS on 53): their replies are sent from a socket bound to the Service's address and port, so without it clients get no answer",
    required: false,
};

pub const NEEDED: [Need; 2] = [NET_ADMIN, NET_BIND_SERVICE];

/// What the effective set lacks.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Assessment {
    pub missing_required: Vec<Need>,
    pub missing_optional: Vec<Need>,
}

/// Compares the effective set with [`NEEDED`]; `unprivileged_port_start` 0 means any port
/// binds without `NET_BIND_SERVICE`.
pub fn assess(effective: u64, unprivileged_port_start: u32) -> Assessment {
    let mut a = Assessment::default();
    for need in NEEDED {
        if effective & (1u64 << need.bit) != 0 {
            continue;
        }
        if need == NET_BIND_SERVICE && unprivileged_port_start == 0 {
            continue;
        }
        if need.required { a.missing_required.push(need) } else { a.missing_optional.push(need) }
    }
    a
}

impl Assessment {
    /// The start-up error when a required capability is missing.
    pub fn error(&self) -> Option<String> {
        if self.missing_required.is_empty() {
            return None;
        }
        let mut msg = String::from("missing capabilities:");
        for need in &self.missing_required {
            let _ = write!(msg, " CAP_{} (needed for {});", need.name, need.features);
        }
        msg.push_str(" run as root or grant them (the DaemonSet adds NET_ADMIN and NET_BIND_SERVICE)");
        Some(msg)
    }
}

/// The effective capability set of this process (`CapEff` in `/proc/self/status`).
pub fn effective() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_cap_eff(&status).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no CapEff line in /proc/self/status"))
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// `net.ipv4.ip_unprivileged_port_start` of this network namespace (1024 when unreadable).
pub fn unprivileged_port_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: u64 = 1 << 12;
    const BIND: u64 = 1 << 10;

    #[test]
    fn names_what_is_missing_and_what_it_breaks() {
        assert_eq!(assess(ADMIN | BIND, 1024), Assessment::default());
        let a = assess(ADMIN, 1024);
        assert!(a.missing_required.is_empty());
        assert_eq!(a.missing_optional, vec![NET_BIND_SERVICE]);
        assert_eq!(assess(ADMIN, 0), Assessment::default(), "every port is unprivileged: no need");
        let a = assess(BIND, 1024);
        let err = a.error().unwrap_or_default();
        assert!(err.contains("CAP_NET_ADMIN") && err.contains("nftables"), "{err}");
        assert_eq!(assess(u64::MAX, 1024).error(), None);
    }

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\ttpvs\nCapInh:\t0000000000000000\nCapEff:\t0000000000001400\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(ADMIN | BIND));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
        assert!(effective().is_ok(), "this process has a status file");
    }
}
