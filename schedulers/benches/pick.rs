//! Cost of one `pick` for every scheduler at 3, 30, 300 and 1 000 backends, of building a
//! 65 537-slot maglev table for 100 backends, and what the least-connection family's index
//! costs elsewhere: a retry that must scan (the tried list holds the index's leader; this is
//! also what every lc/wlc/sed/nq pick cost before the index), and one connection opened and
//! closed on a backend watched by 0, 1 or 4 of those schedulers.
//!
//! Targets: pick ≤ 50 ns (maglev, dh, sh ≤ 20 ns), flat in the set size; maglev build ≤ 2 ms. The contexts come
//! from a precomputed array indexed per iteration, so the key hashes vary and cannot be
//! constant-folded; `black_box` hides the context and the result from the optimiser.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use schedulers::maglev::{DEFAULT_TABLE_SIZE, Maglev};
use schedulers::{Backend, BackendSet, BackendStats, ClientAddr, OrigDstAddr, PickContext, SchedulerKind, SchedulerOptions, Tried, build};

const CONTEXTS: usize = 1024;
const SIZES: [usize; 4] = [3, 30, 300, 1000];
const LEAST: [SchedulerKind; 4] = [SchedulerKind::Lc, SchedulerKind::Wlc, SchedulerKind::Sed, SchedulerKind::Nq];

fn backend_set(n: usize) -> Arc<BackendSet> {
    Arc::new(BackendSet::new(
        (0..n)
            .map(|i| {
                let addr = SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250 + 1) as u8], 8080));
                // Mixed weights and a little load so weighted paths do real work.
                let stats = Arc::new(BackendStats::default());
                stats.set_active((i % 7) as u64);
                Backend::new(addr, stats).with_weight(1 + (i % 3) as u32)
            })
            .collect(),
    ))
}

fn contexts() -> Vec<PickContext> {
    let dst = SocketAddr::from(([10, 96, 0, 10], 80));
    (0..CONTEXTS)
        .map(|i| {
            let client = SocketAddr::from(([192, 168, (i >> 8) as u8, i as u8], 20_000 + i as u16));
            PickContext::new(ClientAddr(client), OrigDstAddr(dst))
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let ctxs = contexts();
    let tried = Tried::new();
    let opts = SchedulerOptions::default();
    let mut group = c.benchmark_group("pick");
    group.measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(300)).sample_size(20);
    for n in SIZES {
        let set = backend_set(n);
        for kind in SchedulerKind::ALL {
            let sched = build(kind, Arc::clone(&set), &opts);
            group.bench_with_input(BenchmarkId::new(kind.as_str(), n), &n, |b, _| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) & (CONTEXTS - 1);
                    black_box(sched.pick(black_box(&ctxs[i]), &tried))
                });
            });
        }
    }
    group.finish();
}

/// A retry after the first choice failed: the scan over the untried candidates.
fn least_retry_scan(c: &mut Criterion) {
    let ctxs = contexts();
    let opts = SchedulerOptions::default();
    let mut group = c.benchmark_group("least_retry_scan");
    group.measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(300)).sample_size(20);
    for n in SIZES {
        let set = backend_set(n);
        for kind in LEAST {
            let sched = build(kind, Arc::clone(&set), &opts);
            let mut tried = Tried::new();
            if let Some(first) = sched.pick(&ctxs[0], &Tried::new()) {
                tried.push(first);
            }
            group.bench_with_input(BenchmarkId::new(kind.as_str(), n), &n, |b, _| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) & (CONTEXTS - 1);
                    black_box(sched.pick(black_box(&ctxs[i]), black_box(&tried)))
                });
            });
        }
    }
    group.finish();
}

/// `BackendStats::open` and the guard's drop — the data plane's per-connection cost — on the
/// middle backend of an n-backend set watched by `watchers` lc-family schedulers.
fn open_close(c: &mut Criterion) {
    let opts = SchedulerOptions::default();
    let mut group = c.benchmark_group("open_close");
    group.measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(300)).sample_size(20);
    for n in [300, 1000] {
        for watchers in [0, 1, 4] {
            let set = backend_set(n);
            let _scheds: Vec<_> = LEAST.iter().take(watchers).map(|&k| build(k, Arc::clone(&set), &opts)).collect();
            let stats = Arc::clone(&set.as_slice()[n / 2].stats);
            group.bench_with_input(BenchmarkId::new(format!("watchers{watchers}"), n), &n, |b, _| {
                b.iter(|| drop(black_box(stats.open())));
            });
        }
    }
    group.finish();
}

fn maglev_build(c: &mut Criterion) {
    let set = backend_set(100);
    let mut group = c.benchmark_group("maglev_build");
    group.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(300)).sample_size(10);
    group.bench_function(BenchmarkId::new("backends", 100), |b| {
        b.iter(|| black_box(Maglev::new(black_box(Arc::clone(&set)), DEFAULT_TABLE_SIZE)));
    });
    group.finish();
}

criterion_group!(benches, pick, least_retry_scan, open_close, maglev_build);
criterion_main!(benches);
