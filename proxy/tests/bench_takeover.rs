//! The takeover benchmark, run by `benches/takeover.sh` (ignored in the test suite: it holds
//! 10 000 connections). In the namespace lab, `TPVS_BENCH_CONNECTIONS` (10 000) established
//! connections through tpvs each send an 8-byte ping to an echoing backend once a second;
//! then `TPVS_BENCH_ROUNDS` (3) takeovers in a row, each by a new `tpvs run` with the same
//! flags. For each it reports the takeover time (the successor's start to the predecessor's
//! exit) and the longest ping round trip any connection saw in a window around it (a ping
//! in flight during a connection's pause waits for its end, so with 10 000 connections the
//! longest round trip is the longest pause). Every connection must still answer at the end.
//! The hard `RLIMIT_NOFILE` must leave tpvs's budget room for them (it is checked).

mod lab;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lab::load::wait_exit;
use lab::{Svc, in_netns, lab, manifests};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

const VIP: &str = "10.96.0.10:80";
const BACKEND: &str = "10.1.0.2:8080";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// An echo backend on `BACKEND` in namespace `ns`, on one thread: a hello line, then echo.
fn backend(ns: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        in_netns(&ns, || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
            rt.block_on(async {
                let l = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
                l.set_reuseaddr(true).unwrap_or_else(|e| panic!("{e}"));
                l.bind(BACKEND.parse().unwrap_or_else(|e| panic!("{e}"))).unwrap_or_else(|e| panic!("{e}"));
                let l = l.listen(4096).unwrap_or_else(|e| panic!("{e}"));
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Ok((mut s, peer))) = tokio::time::timeout(Duration::from_millis(200), l.accept()).await else { continue };
                    tokio::spawn(async move {
                        if s.write_all(format!("be0 {peer}\n").as_bytes()).await.is_err() {
                            return;
                        }
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
        })
    })
}

#[derive(Default)]
struct Stats {
    connected: AtomicUsize,
    failed: AtomicUsize,
    /// Ping loops that ended (each once its last ping is answered after the stop).
    finished: AtomicUsize,
    pings: AtomicU64,
    max_rtt_us: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

/// `n` connections from the client namespace, each pinging once a second (staggered).
fn clients(ns: String, n: usize, stats: Arc<Stats>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        in_netns(&ns, || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async {
                let vip: SocketAddr = VIP.parse().unwrap_or_else(|e| panic!("{e}"));
                let stop = Rc::new(stop);
                for batch in 0..n.div_ceil(200) {
                    let mut opening = Vec::new();
                    for i in batch * 200..((batch + 1) * 200).min(n) {
                        let (stats, stop) = (Arc::clone(&stats), Rc::clone(&stop));
                        opening.push(tokio::task::spawn_local(async move {
                            let result = ping_loop(vip, i, n, &stats, &stop).await;
                            if let Err(e) = result {
                                stats.failed.fetch_add(1, Ordering::Relaxed);
                                let mut f = stats.first_error.lock().unwrap_or_else(|p| p.into_inner());
                                f.get_or_insert(format!("connection {i}: {e}"));
                            }
                            stats.finished.fetch_add(1, Ordering::Relaxed);
                        }));
                    }
                    // Pace the opening: wait for this batch to be established.
                    while stats.connected.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed) < ((batch + 1) * 200).min(n) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    drop(opening);
                }
                // Every ping loop ends after the stop, its last ping answered (or failed).
                while stats.finished.load(Ordering::Relaxed) < n {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        })
    })
}

async fn ping_loop(vip: SocketAddr, i: usize, n: usize, stats: &Stats, stop: &AtomicBool) -> std::io::Result<()> {
    let s = tokio::net::TcpStream::connect(vip).await?;
    let mut s = tokio::io::BufReader::new(s);
    let mut hello = String::new();
    s.read_line(&mut hello).await?;
    stats.connected.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_micros((i * 1_000_000 / n.max(1)) as u64)).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut buf = [0u8; 8];
    loop {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let t0 = Instant::now();
        s.get_mut().write_all(&(i as u64).to_le_bytes()).await?;
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf)).await.map_err(|_| std::io::Error::other("no echo within 10 s"))??;
        if u64::from_le_bytes(buf) != i as u64 {
            return Err(std::io::Error::other("a wrong echo"));
        }
        stats.pings.fetch_add(1, Ordering::Relaxed);
        stats.max_rtt_us.fetch_max(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

#[test]
#[ignore = "a benchmark: benches/takeover.sh runs it"]
fn takeover_with_established_connections() {
    let n = env_or("TPVS_BENCH_CONNECTIONS", 10_000);
    let rounds = env_or("TPVS_BENCH_ROUNDS", 3);
    // The soft limit up to the hard one, for this process (both ends of every connection)
    // and for tpvs, which inherits it.
    let limit = tpvs::limits::raise_fd_limit().unwrap_or_else(|e| panic!("{e}"));
    assert!(2 * n as u64 + 256 <= limit, "{n} connections need {} descriptors here; the hard RLIMIT_NOFILE is {limit} (ulimit -Hn)", 2 * n + 256);
    let Some(mut lab) = lab(1, &[]) else { return };
    let stop_backend = Arc::new(AtomicBool::new(false));
    let be = backend(lab.backends[0].clone(), Arc::clone(&stop_backend));
    lab.write_manifests(&manifests(&[Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1")]));
    // Extra `tpvs run` flags (e.g. `--forward-mode copy --udp-proxy-port 0`, which give the
    // whole descriptor budget to TCP connections), passed to every successor too.
    let extra = std::env::var("TPVS_BENCH_TPVS_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    lab.start_tpvs(&extra);
    lab.wait_serving(VIP);
    let budget = lab.tpvs_log().lines().find(|l| l.contains("file-descriptor budget")).map(str::to_string).unwrap_or_default();
    let cap: usize = budget.split_whitespace().find_map(|w| w.strip_prefix("tcp_connections=")).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(n <= cap, "tpvs's budget holds {cap} connections under the hard RLIMIT_NOFILE {limit}, not {n} ({budget}); raise the hard limit or lower TPVS_BENCH_CONNECTIONS");
    let stats = Arc::new(Stats::default());
    let opened = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let cl = clients(lab.client.clone(), n, Arc::clone(&stats), Arc::clone(&stop));
    let all = lab.wait_for(Duration::from_secs(120), || (stats.connected.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed) >= n).then_some(()));
    assert!(all.is_some() && stats.failed.load(Ordering::Relaxed) == 0, "opening {n} connections: {:?}", stats.first_error.lock().ok().and_then(|e| e.clone()));
    eprintln!("opened {n} connections in {:?}", opened.elapsed());
    // A quiet window first: the round trip with no takeover.
    std::thread::sleep(Duration::from_secs(2));
    stats.max_rtt_us.store(0, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    let quiet_us = stats.max_rtt_us.load(Ordering::Relaxed);
    let mut results = Vec::new();
    for round in 1..=rounds {
        stats.max_rtt_us.store(0, Ordering::Relaxed);
        let t0 = Instant::now();
        let mut old = lab.start_successor(&[]).unwrap_or_else(|| panic!("no running instance"));
        let status = wait_exit(&mut old, Duration::from_secs(60));
        let took = t0.elapsed();
        assert!(status.is_some_and(|s| s.success()), "round {round}: {status:?}\n{}", lab.tpvs_log_of(round - 1));
        let passed = format!("connections_passed={n}");
        assert!(lab.tpvs_log_of(round - 1).contains(&passed), "round {round}: not all {n} passed:\n{}", lab.tpvs_log_of(round - 1));
        // Every connection pings within a second: the window sees every paused one.
        std::thread::sleep(Duration::from_millis(2500));
        let pause_us = stats.max_rtt_us.load(Ordering::Relaxed);
        eprintln!("RESULT round={round} connections={n} takeover_ms={} longest_pause_ms={:.1}", took.as_millis(), pause_us as f64 / 1000.0);
        results.push((took, pause_us));
    }
    // The clients first, each finishing its last ping; then the backend.
    stop.store(true, Ordering::Relaxed);
    let _ = cl.join();
    stop_backend.store(true, Ordering::Relaxed);
    let _ = be.join();
    let failed = stats.failed.load(Ordering::Relaxed);
    eprintln!("RESULT quiet_longest_round_trip_ms={:.1} pings={} failed={failed}", quiet_us as f64 / 1000.0, stats.pings.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "connections failed: {:?}", stats.first_error.lock().ok().and_then(|e| e.clone()));
}
