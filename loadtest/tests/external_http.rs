//! End to end: `external --protocol http` against a small HTTP/1.1 keep-alive server on
//! loopback — real sockets, the open-loop time line, the direct pacer writing the requests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use loadtest::client::http::HttpRequest;
use loadtest::client::{Mode, Protocol};
use loadtest::runner::{ExternalSpec, RunOptions, run_external};
use loadtest::summary::RunResult;

/// What the server answers to every request.
#[derive(Clone, Copy)]
enum Answer {
    /// 200 with a body, the head and the body in separate writes (the client must join them).
    Ok,
    /// 404 with a body: whole responses, counted as failures.
    NotFound,
    /// A chunked body: refused by the client as a protocol failure.
    Chunked,
}

/// Serves keep-alive HTTP on an ephemeral loopback port; counts the requests it answered.
fn server(answer: Answer) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
    let served = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&served);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let count = Arc::clone(&count);
            std::thread::spawn(move || serve_conn(conn, answer, &count));
        }
    });
    (addr, served)
}

fn serve_conn(mut conn: TcpStream, answer: Answer, served: &AtomicU64) {
    let _ = conn.set_nodelay(true);
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            pending.drain(..end + 4);
            assert!(head.starts_with("GET /probe HTTP/1.1\r\n"), "request head: {head:?}");
            assert!(head.contains("\r\nHost: svc.test\r\n"), "request head: {head:?}");
            let written = match answer {
                Answer::Ok => conn
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nbe1 ")
                    .and_then(|()| conn.write_all(b"10.0.0.1")),
                Answer::NotFound => conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"),
                Answer::Chunked => conn.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nbe1\r\n0\r\n\r\n"),
            };
            if written.is_err() {
                return;
            }
            served.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn run(addr: SocketAddr, rate: f64) -> RunResult {
    let request = HttpRequest::get("/probe", "svc.test").unwrap_or_else(|e| panic!("{e}"));
    let spec = ExternalSpec {
        target: addr,
        mode: Mode::Persistent,
        rate,
        warmup: Duration::from_millis(300),
        measure: Duration::from_secs(1),
        connections: 8,
        timeout: Duration::from_secs(2),
        label: "http-test".to_string(),
        protocol: Protocol::Http(Arc::new(request)),
    };
    let report = run_external(&spec, &RunOptions { quiet: true, ..RunOptions::default() }).unwrap_or_else(|e| panic!("{e:#}"));
    report.runs.into_iter().next().unwrap_or_else(|| panic!("no run in the report"))
}

#[test]
fn keep_alive_gets_are_timed_open_loop() {
    let (addr, served) = server(Answer::Ok);
    let r = run(addr, 2000.0);
    assert_eq!(r.mode, "http-keep-alive");
    assert!(r.sent.abs_diff(2000) <= 1, "sent {} of 2000 measured requests", r.sent);
    assert_eq!(r.failed, 0, "failures: {:?}", r.failures);
    assert_eq!(r.recorded, r.sent);
    // Warm-up requests were answered too: the server saw at least every measured one.
    assert!(served.load(Ordering::Relaxed) >= r.sent, "server answered {} of {}", served.load(Ordering::Relaxed), r.sent);
    assert!(r.latency.p50 > 0.0 && r.latency.is_monotone(), "latency {:?}", r.latency);
    assert!(r.latency.max < 2000.0, "latency {:?}", r.latency);
    assert!(r.generator.is_some(), "the generator's own error was not measured");
    // The replies name no backend: no shares, rather than a column of zeros.
    assert!(r.backends.is_empty(), "backends {:?}", r.backends);
}

#[test]
fn non_2xx_and_chunked_replies_are_failures_not_panics() {
    let (addr, _) = server(Answer::NotFound);
    let r = run(addr, 500.0);
    assert!(r.sent.abs_diff(500) <= 1, "sent {}", r.sent);
    assert_eq!(r.recorded, 0);
    assert_eq!(r.failures.get("http-status").copied(), Some(r.sent), "failures {:?}", r.failures);

    let (addr, _) = server(Answer::Chunked);
    let r = run(addr, 500.0);
    assert_eq!(r.recorded, 0);
    assert_eq!(r.failures.get("protocol").copied(), Some(r.sent), "failures {:?}", r.failures);
}
