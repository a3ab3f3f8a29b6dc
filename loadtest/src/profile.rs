//! Backend latency profiles: how long a backend takes to answer one request, as a function of
//! the request and of time.
//!
//! A profile is pure data plus a seed; [`BackendProfile::service_time`] is a pure function of
//! (profile, seed, backend, request id, time since the measurement began), which is what makes
//! runs reproducible and lets the same profile drive a loopback backend or one deployed in a
//! cluster (`tpvs-loadtest serve`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rng::{Rng, derive};

/// A service-time distribution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Dist {
    /// Always the same.
    Constant { ms: f64 },
    /// Log-normal around a median: the usual shape of real service times (long right tail).
    LogNormal { median_ms: f64, sigma: f64 },
    /// Mostly fast, sometimes slow (a cache miss, a GC pause).
    Bimodal { fast_ms: f64, slow_ms: f64, slow_fraction: f64 },
}

impl Dist {
    pub fn sample(&self, rng: &mut Rng) -> Duration {
        let ms = match *self {
            Dist::Constant { ms } => ms,
            Dist::LogNormal { median_ms, sigma } => median_ms * (sigma * rng.normal()).exp(),
            Dist::Bimodal { fast_ms, slow_ms, slow_fraction } => {
                if rng.unit() < slow_fraction {
                    slow_ms
                } else {
                    fast_ms
                }
            }
        };
        // Clamped: a profile typo must not overflow a Duration or sleep for a year.
        Duration::from_secs_f64((ms / 1e3).clamp(0.0, 3600.0))
    }

    /// A short human description ("lognormal 5ms σ0.5").
    pub fn describe(&self) -> String {
        match *self {
            Dist::Constant { ms } => format!("constant {ms}ms"),
            Dist::LogNormal { median_ms, sigma } => format!("lognormal {median_ms}ms σ{sigma}"),
            Dist::Bimodal { fast_ms, slow_ms, slow_fraction } => {
                format!("bimodal {fast_ms}ms/{slow_ms}ms ({:.0}% slow)", slow_fraction * 100.0)
            }
        }
    }
}

/// A span of time measured from the start of the measurement phase (warm-up excluded).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    #[serde(with = "crate::units::secs")]
    pub start: Duration,
    #[serde(with = "crate::units::secs")]
    pub len: Duration,
}

impl Window {
    pub fn contains(&self, t: Duration) -> bool {
        t >= self.start && t < self.start + self.len
    }

    pub fn end(&self) -> Duration {
        self.start + self.len
    }

    pub fn scaled(self, f: f64) -> Window {
        Window { start: self.start.mul_f64(f), len: self.len.mul_f64(f) }
    }
}

/// One backend's behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendProfile {
    pub latency: Dist,
    /// Requests arriving inside the window take this long instead (the "stalled" backend).
    pub stall: Option<Stall>,
    /// Requests arriving inside the window follow another distribution (a backend that is
    /// slow for a while, then recovers). Absent in reports from before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow: Option<Slowdown>,
    /// New connections are refused inside the window (the backend is restarting / flapping);
    /// UDP requests are dropped.
    pub refuse: Option<Window>,
    /// Requests served at once; the rest queue (heterogeneous capacity). `None`: unlimited.
    pub concurrency: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stall {
    pub window: Window,
    #[serde(with = "crate::units::secs")]
    pub latency: Duration,
}

/// A window in which a backend's service time follows `latency` instead of its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slowdown {
    pub window: Window,
    pub latency: Dist,
}

impl BackendProfile {
    pub fn new(latency: Dist) -> Self {
        BackendProfile { latency, stall: None, slow: None, refuse: None, concurrency: None }
    }

    /// The service time of request `id` arriving `t` after the measurement began (`None`
    /// during warm-up). Keyed by request id, not arrival order, so it is reproducible.
    pub fn service_time(&self, seed: u64, backend: usize, id: u64, t: Option<Duration>) -> Duration {
        if let (Some(stall), Some(t)) = (self.stall, t)
            && stall.window.contains(t)
        {
            return stall.latency;
        }
        let mut rng = Rng::new(derive(derive(seed, backend as u64), id));
        match (&self.slow, t) {
            (Some(slow), Some(t)) if slow.window.contains(t) => slow.latency.sample(&mut rng),
            _ => self.latency.sample(&mut rng),
        }
    }

    pub fn refusing(&self, t: Option<Duration>) -> bool {
        matches!((self.refuse, t), (Some(w), Some(t)) if w.contains(t))
    }

    /// What sets this backend apart, for table and chart labels ("" for a plain one).
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.stall {
            parts.push(format!("stalled {}s@{}s", fmt_secs(s.window.len), fmt_secs(s.latency)));
        }
        if let Some(s) = &self.slow {
            parts.push(format!("{} for {}s@{}s", s.latency.describe(), fmt_secs(s.window.len), fmt_secs(s.window.start)));
        }
        if self.refuse.is_some() {
            parts.push("refusing".to_string());
        }
        if let Some(c) = self.concurrency {
            parts.push(format!("cap {c}"));
        }
        parts.join(", ")
    }

    /// Every duration in the time line (windows, stall latency) multiplied by `f`; the base
    /// latency distribution is kept, since it is what the schedulers are compared on.
    pub fn scaled(mut self, f: f64) -> Self {
        if let Some(s) = self.stall.as_mut() {
            s.window = s.window.scaled(f);
            s.latency = s.latency.mul_f64(f);
        }
        if let Some(s) = self.slow.as_mut() {
            s.window = s.window.scaled(f);
        }
        self.refuse = self.refuse.map(|w| w.scaled(f));
        self
    }
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if (s - s.round()).abs() < 1e-9 { format!("{}", s.round()) } else { format!("{s:.2}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stalled() -> BackendProfile {
        let mut p = BackendProfile::new(Dist::LogNormal { median_ms: 5.0, sigma: 0.5 });
        p.stall = Some(Stall {
            window: Window { start: Duration::from_secs(10), len: Duration::from_secs(30) },
            latency: Duration::from_secs(2),
        });
        p
    }

    #[test]
    fn service_time_is_reproducible_and_keyed_by_request() {
        let p = stalled();
        let t = Some(Duration::from_secs(1));
        assert_eq!(p.service_time(9, 3, 77, t), p.service_time(9, 3, 77, t));
        assert_ne!(p.service_time(9, 3, 77, t), p.service_time(9, 3, 78, t));
        assert_ne!(p.service_time(9, 3, 77, t), p.service_time(10, 3, 77, t));
    }

    #[test]
    fn stall_applies_inside_its_window_only() {
        let p = stalled();
        assert_eq!(p.service_time(1, 0, 1, Some(Duration::from_secs(20))), Duration::from_secs(2));
        assert!(p.service_time(1, 0, 1, Some(Duration::from_secs(41))) < Duration::from_secs(1));
        assert!(p.service_time(1, 0, 1, None) < Duration::from_secs(1), "warm-up is never stalled");
        let half = p.scaled(0.1);
        assert_eq!(half.stall.map(|s| s.latency), Some(Duration::from_millis(200)));
        assert_eq!(half.label(), "stalled 3s@0.20s");
    }

    #[test]
    fn slowdown_applies_inside_its_window_only() {
        let mut p = BackendProfile::new(Dist::Constant { ms: 5.0 });
        p.slow = Some(Slowdown {
            window: Window { start: Duration::ZERO, len: Duration::from_secs(10) },
            latency: Dist::Constant { ms: 40.0 },
        });
        assert_eq!(p.service_time(1, 0, 1, Some(Duration::from_secs(3))), Duration::from_millis(40));
        assert_eq!(p.service_time(1, 0, 1, Some(Duration::from_secs(10))), Duration::from_millis(5));
        assert_eq!(p.service_time(1, 0, 1, None), Duration::from_millis(5), "warm-up is never slow");
        assert_eq!(p.label(), "constant 40ms for 10s@0s");
        assert_eq!(p.scaled(0.5).slow.map(|s| s.window.len), Some(Duration::from_secs(5)));
    }

    #[test]
    fn lognormal_median_is_the_median() {
        let d = Dist::LogNormal { median_ms: 5.0, sigma: 0.8 };
        let mut rng = Rng::new(3);
        let mut xs: Vec<Duration> = (0..20_001).map(|_| d.sample(&mut rng)).collect();
        xs.sort();
        let median = xs[10_000].as_secs_f64() * 1e3;
        assert!((median - 5.0).abs() < 0.2, "median {median}ms");
    }

    #[test]
    fn bimodal_fraction() {
        let d = Dist::Bimodal { fast_ms: 1.0, slow_ms: 50.0, slow_fraction: 0.1 };
        let mut rng = Rng::new(5);
        let slow = (0..10_000).filter(|_| d.sample(&mut rng) > Duration::from_millis(10)).count();
        assert!((900..1100).contains(&slow), "{slow}");
    }
}
