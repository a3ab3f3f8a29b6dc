//! The built-in scenarios: backend profiles, load and time line, and which schedulers to
//! compare.
//!
//! Durations are the full ones; [`Scenario::scaled`] shrinks every time line (warm-up,
//! measurement, stall and refusal windows, the stall latency, the request timeout) by one
//! factor for CI, keeping the base latency distributions — the thing under comparison — intact.

use std::time::Duration;

use schedulers::SchedulerKind;
use serde::{Deserialize, Serialize};

use crate::client::{Mode, UdpFlows};
use crate::profile::{BackendProfile, Dist, Slowdown, Stall, Window};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub title: String,
    pub about: String,
    pub backends: Vec<BackendProfile>,
    /// Requests per second, on the open-loop time line.
    pub rate: f64,
    #[serde(with = "crate::units::secs")]
    pub warmup: Duration,
    #[serde(with = "crate::units::secs")]
    pub measure: Duration,
    pub mode: Mode,
    /// Pool size in persistent mode.
    pub connections: usize,
    #[serde(with = "crate::units::secs")]
    pub timeout: Duration,
    /// Straight to backend 0, no proxy and no scheduler: measures the generator itself.
    pub direct: bool,
    #[serde(with = "crate::units::kinds")]
    pub schedulers: Vec<SchedulerKind>,
    /// UDP mode: a flow per request (the proxy schedules every request) or one for the run.
    #[serde(default)]
    pub udp_flows: UdpFlows,
}

const S: fn(u64) -> Duration = Duration::from_secs;

fn base() -> Dist {
    Dist::LogNormal { median_ms: 5.0, sigma: 0.5 }
}

fn uniform(n: usize, d: Dist) -> Vec<BackendProfile> {
    (0..n).map(|_| BackendProfile::new(d.clone())).collect()
}

/// Where the odd backend sits among 11: mid-set, so neither lc's "first in set order"
/// tie-break nor rr's starting point favours or punishes it.
const ODD: usize = 5;

impl Scenario {
    fn new(name: &str, title: &str, about: &str, backends: Vec<BackendProfile>) -> Self {
        Scenario {
            name: name.to_string(),
            title: title.to_string(),
            about: about.to_string(),
            backends,
            rate: 1000.0,
            warmup: S(2),
            measure: S(10),
            mode: Mode::PerRequest,
            connections: 64,
            timeout: S(10),
            direct: false,
            schedulers: SchedulerKind::ALL.to_vec(),
            udp_flows: UdpFlows::PerRequest,
        }
    }

    /// Every time line multiplied by `f` (see the module doc).
    pub fn scaled(mut self, f: f64) -> Self {
        let f = if f.is_finite() && f > 0.0 { f } else { 1.0 };
        self.warmup = self.warmup.mul_f64(f);
        self.measure = self.measure.mul_f64(f);
        // A timeout must still outlast the (scaled) stall, plus room for the base latency.
        self.timeout = self.timeout.mul_f64(f).max(Duration::from_millis(500));
        self.backends = self.backends.into_iter().map(|b| b.scaled(f)).collect();
        self
    }

    /// Requests the time line holds in its measurement phase.
    pub fn measured_requests(&self) -> u64 {
        (self.measure.as_secs_f64() * self.rate) as u64
    }
}

/// Every built-in scenario at full length.
pub fn builtin() -> Vec<Scenario> {
    let mut out = Vec::new();

    // Linkerd, "Beyond Round Robin": 11 backends, one stalls at 2 s for 30 s.
    let mut stalled = uniform(11, base());
    stalled[ODD].stall = Some(Stall { window: Window { start: S(5), len: S(30) }, latency: S(2) });
    let mut s = Scenario::new(
        "one-stalled",
        "One backend stalled at 2 s for 30 s (Linkerd's \"Beyond Round Robin\")",
        "11 backends, lognormal service time (median 5 ms, σ 0.5); backend 5 answers every \
         request arriving during a 30 s window after 2 s. 1000 req/s, a new connection per request.",
        stalled,
    );
    s.warmup = S(5);
    s.measure = S(40);
    out.push(s);

    out.push(Scenario::new(
        "baseline",
        "Identical backends",
        "11 backends, lognormal (median 5 ms, σ 0.5). What each scheduler costs when there is nothing to avoid.",
        uniform(11, base()),
    ));

    out.push(Scenario::new(
        "bimodal",
        "Bimodal service times",
        "11 backends, 2 ms 95% of the time and 50 ms otherwise, independently per request.",
        uniform(11, Dist::Bimodal { fast_ms: 2.0, slow_ms: 50.0, slow_fraction: 0.05 }),
    ));

    let mut slow = uniform(11, base());
    slow[ODD] = BackendProfile::new(Dist::LogNormal { median_ms: 40.0, sigma: 0.5 });
    out.push(Scenario::new(
        "one-slow",
        "One backend 8× slower, all the time",
        "10 backends lognormal median 5 ms, backend 5 median 40 ms (σ 0.5 for all).",
        slow.clone(),
    ));

    // Bounded exploration's other half: a backend that stops being slow must win its share
    // back (issue: ≥ 50 % of its fair share within 5 s of recovering).
    let mut recovers = uniform(11, base());
    recovers[ODD].slow =
        Some(Slowdown { window: Window { start: S(0), len: S(10) }, latency: Dist::LogNormal { median_ms: 40.0, sigma: 0.5 } });
    let mut s = Scenario::new(
        "slow-then-recovers",
        "One backend 8× slower for the first half, normal after",
        "11 backends lognormal median 5 ms; backend 5 has median 40 ms for the first 10 s measured, then \
         5 ms like the others. The per-second shares show how fast each scheduler gives it its traffic back.",
        recovers,
    );
    s.measure = S(20);
    out.push(s);

    // Persistent-connection pools: at L4 the scheduler chooses per connection, so what it
    // knows when the pool connects is all it can use. One backend slow from the start, and
    // one that turns slow halfway through the pool's life.
    let mut s = Scenario::new(
        "pool-one-slow",
        "Connection pools, one backend 8× slower",
        "As one-slow, but the client keeps a pool of 64 persistent connections and sends every request \
         on an idle one: the scheduler decides once per connection, when the pool opens.",
        slow.clone(),
    );
    s.mode = Mode::Persistent;
    out.push(s);

    let mut turns = uniform(11, base());
    turns[ODD].slow =
        Some(Slowdown { window: Window { start: S(5), len: S(3600) }, latency: Dist::LogNormal { median_ms: 40.0, sigma: 0.5 } });
    let mut s = Scenario::new(
        "pool-turns-slow",
        "Connection pools, one backend turns 8× slower halfway",
        "64 persistent connections opened while all 11 backends are alike (lognormal median 5 ms); \
         backend 5 turns to median 40 ms 5 s into the measurement. The pool's connections to it stay \
         where the scheduler put them.",
        turns,
    );
    s.mode = Mode::Persistent;
    out.push(s);

    let mut flap = uniform(11, base());
    flap[ODD].refuse = Some(Window { start: S(3), len: S(4) });
    out.push(Scenario::new(
        "flapping",
        "One backend refusing connections for 4 s",
        "11 backends lognormal median 5 ms; backend 5 has no listener for 4 s (connections refused), \
         which the proxy's connect retry must absorb.",
        flap,
    ));

    let caps = [1, 1, 1, 2, 2, 2, 4, 4, 4, 8, 8];
    let hetero = caps
        .iter()
        .map(|&c| BackendProfile { concurrency: Some(c), ..BackendProfile::new(Dist::LogNormal { median_ms: 10.0, sigma: 0.3 }) })
        .collect();
    let mut s = Scenario::new(
        "heterogeneous",
        "Heterogeneous capacity",
        "11 backends of 1, 1, 1, 2, 2, 2, 4, 4, 4, 8, 8 concurrent requests (the rest queue), lognormal \
         median 10 ms: about 3 800 req/s in total, offered 1 500 req/s — more than the small ones' equal share.",
        hetero,
    );
    s.rate = 1500.0;
    out.push(s);

    // The other end of the range from the stalls: nothing is wrong and little is happening, as
    // for most Services of a cluster most of the time. What matters here is the spread: with
    // every backend idle between requests, counting and latency-aware schedulers decide on
    // ties and on estimates of microseconds.
    let mut s = Scenario::new(
        "light-pair",
        "Two identical fast backends at light load",
        "2 backends answering at once (a fast Service: a cache, a lookup), 50 req/s, a new \
         connection per request: each request finds both idle. The shares show whether a \
         scheduler still spreads the load when there is no load to go by.",
        uniform(2, Dist::Constant { ms: 0.0 }),
    );
    s.rate = 50.0;
    out.push(s);

    let mut udp = uniform(11, base());
    udp[ODD].stall = Some(Stall { window: Window { start: S(2), len: S(6) }, latency: S(2) });
    let mut s = Scenario::new(
        "udp-one-stalled",
        "UDP, one backend stalled at 2 s for 6 s",
        "As one-stalled, over UDP datagrams through the tpvs UDP engine, with a shorter stall. Each \
         request is its own flow (a source address and port of its own, as a resolver's fresh port \
         per DNS query), so the engine schedules every request; a flow counts as active while \
         it awaits its answer, and its first reply is the latency sample ewma sees.",
        udp,
    );
    s.mode = Mode::Udp;
    out.push(s);

    let mut s = Scenario::new(
        "generator-overhead",
        "Generator overhead: 20 000 req/s against a zero-latency backend",
        "One loopback backend answering at once, no proxy, 32 persistent connections: every \
         microsecond measured is the generator's and the loopback stack's own.",
        vec![BackendProfile::new(Dist::Constant { ms: 0.0 })],
    );
    s.rate = 20_000.0;
    s.mode = Mode::Persistent;
    s.connections = 32;
    s.direct = true;
    s.timeout = S(5);
    s.schedulers = Vec::new();
    out.push(s);

    out
}

/// A built-in scenario by name.
pub fn find(name: &str) -> Option<Scenario> {
    builtin().into_iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_stalled_one_matches_the_anchor() {
        let all = builtin();
        let mut names: Vec<_> = all.iter().map(|s| s.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        let s = find("one-stalled").unwrap_or_else(|| panic!("one-stalled missing"));
        assert_eq!(s.backends.len(), 11);
        let stall = s.backends[ODD].stall.unwrap_or_else(|| panic!("no stall"));
        assert_eq!((stall.latency, stall.window.len), (S(2), S(30)));
        assert!(stall.window.end() <= s.measure, "the stall ends inside the measurement");
        let short = s.scaled(0.1);
        assert_eq!(short.measure, S(4));
        assert!(short.timeout > short.backends[ODD].stall.map(|s| s.latency).unwrap_or_default());
    }
}
