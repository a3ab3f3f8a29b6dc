//! Scale benchmark of the API source: 10 000 Services / 100 000 endpoints through kube-rs's
//! client and watcher, against the in-test API double running in a child process (so the
//! memory figure is the proxy's own, not the double's).
//!
//! Reports: initial sync time, RSS after sync and its peak, then event-to-publish and
//! network-programming latency (p50/p99) for isolated EndpointSlice changes, and the time a
//! burst of changes takes to be live. Targets: sync ≤ 5 s, RSS ≤ 200 MB, p99 ≤ 10 ms.
//!
//! `cargo bench --bench kube_scale` runs the full scale; without `--bench` (as `cargo test
//! --benches` runs it) a small cluster is used, as a smoke test.

#[path = "../tests/support/apiserver.rs"]
mod apiserver;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use apiserver::ApiServer;
use controlplane::kube_source::TRIGGER_TIME_ANNOTATION;
use controlplane::{CompileOptions, KubeSource, KubeSourceConfig, Publisher};
use k8s_openapi::api::core::v1::{Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const ROLE_ENV: &str = "TPVS_KUBE_SCALE_ROLE";
const ENDPOINTS_PER_SLICE: u32 = 10;
const NODES: u32 = 100;

fn service(i: u32) -> Service {
    Service {
        metadata: ObjectMeta { name: Some(format!("svc-{i}")), namespace: Some("scale".into()), ..Default::default() },
        spec: Some(ServiceSpec {
            cluster_ip: Some(std::net::Ipv4Addr::from(0x0a60_0000u32 + i + 1).to_string()),
            ports: Some(vec![ServicePort { name: Some("http".into()), port: 80, ..Default::default() }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn slice(i: u32, generation: u32) -> EndpointSlice {
    let trigger = jiff::Timestamp::now().to_string();
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("svc-{i}-abcde")),
            namespace: Some("scale".into()),
            labels: Some(BTreeMap::from([("kubernetes.io/service-name".into(), format!("svc-{i}"))])),
            annotations: Some(BTreeMap::from([(TRIGGER_TIME_ANNOTATION.into(), trigger)])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort { name: Some("http".into()), port: Some(8080), ..Default::default() }]),
        endpoints: (0..ENDPOINTS_PER_SLICE)
            .map(|e| {
                let n = i * 16 + e + generation * 7;
                Endpoint {
                    addresses: vec![std::net::Ipv4Addr::from(0x0b00_0000u32 + n).to_string()],
                    conditions: Some(EndpointConditions { ready: Some(true), ..Default::default() }),
                    node_name: Some(format!("node-{}", n % NODES)),
                    zone: Some(format!("zone-{}", n % 3)),
                    ..Default::default()
                }
            })
            .collect(),
    }
}

/// The child: serves the cluster, applies one slice change per `update I GEN` line on stdin.
fn serve(services: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    runtime.block_on(async {
        let server = ApiServer::start().await;
        for i in 0..services {
            server.apply(service(i));
            server.apply(slice(i, 0));
        }
        server.apply(Node {
            metadata: ObjectMeta {
                name: Some("node-0".into()),
                labels: Some(BTreeMap::from([("topology.kubernetes.io/zone".into(), "zone-0".into())])),
                ..Default::default()
            },
            ..Default::default()
        });
        // The seeding history is not needed: watches start from the list's resourceVersion.
        server.compact();
        println!("PORT {}", server.addr().port());
        // Commands come on stdin, read on a plain thread (stdin is blocking).
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(line) = rx.recv().await {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["update", i, generation] => {
                    let (Ok(i), Ok(g)) = (i.parse(), generation.parse()) else { continue };
                    server.apply(slice(i, g));
                }
                ["quit"] => break,
                _ => {}
            }
        }
    });
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.2} ms", d.as_secs_f64() * 1000.0))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let services: u32 = if full { 10_000 } else { 100 };
    if let Ok(role) = std::env::var(ROLE_ENV) {
        if role == "server" {
            serve(services);
        }
        return;
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let mut child = Command::new(exe)
        .args(if full { vec!["--bench"] } else { vec![] })
        .env(ROLE_ENV, "server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn the API double: {e}"));
    let mut stdout = BufReader::new(child.stdout.take().unwrap_or_else(|| panic!("child stdout")));
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap_or_else(|e| panic!("read port: {e}"));
    let port: u16 = line.trim().strip_prefix("PORT ").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("bad line {line:?}"));
    let mut stdin = child.stdin.take().unwrap_or_else(|| panic!("child stdin"));

    // The same runtime shape as `KubeSource::spawn`.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let rss_before = rss_kib("VmRSS:");
    let config = KubeSourceConfig::default();
    let period = config.min_sync_period;
    let publisher = Arc::new(Publisher::new());
    let (stats, sync_time) = runtime.block_on(async {
        let uri = format!("http://127.0.0.1:{port}").parse().unwrap_or_else(|e| panic!("uri: {e}"));
        let client = kube::Client::try_from(kube::Config::new(uri)).unwrap_or_else(|e| panic!("client: {e}"));
        let opts = CompileOptions { node_name: Some("node-0".into()), ..Default::default() };
        let source = KubeSource::new(client, opts, Arc::clone(&publisher), config);
        let stats = source.stats();
        let started = Instant::now();
        tokio::spawn(source.run());
        while publisher.generation() == 0 {
            assert!(started.elapsed() < Duration::from_secs(120), "initial sync did not finish");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (stats, started.elapsed())
    });
    let table = publisher.current();
    let endpoints: usize = table.frontends().map(|f| f.backends().iter().count()).sum();
    let rss_synced = rss_kib("VmRSS:");
    println!("kube_scale: {services} Services, {} endpoints, {} frontends", services * ENDPOINTS_PER_SLICE, table.len());
    println!("  initial sync:        {:.0} ms (target ≤ 5000 ms; backends in table: {endpoints})", sync_time.as_secs_f64() * 1000.0);
    println!("  RSS:                 {} MiB after sync (before the source: {} MiB; peak {} MiB; target ≤ 200 MiB)",
        rss_synced / 1024, rss_before / 1024, rss_kib("VmHWM:") / 1024);
    drop(table);

    // Isolated changes: each sent after the min sync period has passed, as one slice change
    // in a quiet cluster; measured from receipt (and from the trigger stamp) to the publish.
    let samples = if full { 300 } else { 30 };
    let mut end_to_end = Vec::with_capacity(samples);
    std::thread::sleep(period + Duration::from_millis(5));
    for n in 0..samples {
        let generation = publisher.generation();
        let i = (n as u32 * 7919) % services;
        let sent = Instant::now();
        writeln!(stdin, "update {i} {}", n + 1).unwrap_or_else(|e| panic!("child stdin: {e}"));
        while publisher.generation() == generation {
            assert!(sent.elapsed() < Duration::from_secs(10), "update {n} never published");
            std::thread::sleep(Duration::from_micros(100));
        }
        end_to_end.push(sent.elapsed());
        std::thread::sleep(period + Duration::from_millis(5));
    }
    end_to_end.sort_unstable();
    let pct = |v: &[Duration], q: f64| v.get(((v.len().saturating_sub(1)) as f64 * q).round() as usize).copied();
    let e2p = &stats.event_to_publish;
    let np = &stats.network_programming;
    println!("  slice change, isolated ({samples}):");
    println!("    event receipt → publish:  p50 {}  p99 {}  (target p99 ≤ 10 ms)", ms(e2p.quantile(0.5)), ms(e2p.quantile(0.99)));
    println!("    trigger time → publish:   p50 {}  p99 {}  (network_programming_duration)", ms(np.quantile(0.5)), ms(np.quantile(0.99)));
    println!("    API write → publish:      p50 {}  p99 {}  (through the double's watch stream)", ms(pct(&end_to_end, 0.5)), ms(pct(&end_to_end, 0.99)));

    // A burst: changes as fast as the double takes them, coalesced by the min sync period.
    let burst = if full { 2000 } else { 100 };
    let publishes_before = stats.publishes_total.load(Ordering::Relaxed);
    let want = stats.event_to_publish.count() + burst as u64;
    let sent = Instant::now();
    for n in 0..burst {
        writeln!(stdin, "update {} {}", (n as u32 * 31) % services, samples + n + 1).unwrap_or_else(|e| panic!("child stdin: {e}"));
    }
    while stats.event_to_publish.count() < want {
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "burst never fully published: {} of {want} changes live, {} events, {} watch errors, {} object errors",
            stats.event_to_publish.count(),
            stats.events_total.load(Ordering::Relaxed),
            stats.watch_errors_total.load(Ordering::Relaxed),
            stats.object_errors_total.load(Ordering::Relaxed),
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "  burst of {burst} slice changes: all live in {:.0} ms over {} publishes (min sync period {} ms)",
        sent.elapsed().as_secs_f64() * 1000.0,
        stats.publishes_total.load(Ordering::Relaxed) - publishes_before,
        period.as_millis()
    );
    println!("  RSS at the end:      {} MiB (peak {} MiB)", rss_kib("VmRSS:") / 1024, rss_kib("VmHWM:") / 1024);
    let _ = writeln!(stdin, "quit");
    let _ = child.wait();
}
