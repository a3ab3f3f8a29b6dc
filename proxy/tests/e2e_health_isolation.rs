//! The health port cannot be starved, against the real `tpvs run` in the namespace lab: idle
//! connections to :10256 (a port reachable from outside the node) do not make liveness probes
//! fail, and a client that sends nothing or trickles its request is dropped after the read
//! timeout. Root and nftables/iproute2 required (or `TPVS_SKIP_E2E=1`).

mod admin_http;
mod lab;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use admin_http::wait_reply;
use lab::{Lab, Svc, in_netns, lab, manifests};

const HEALTH: &str = "10.0.0.1:10256";

fn health_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 10256))
}

/// One liveness probe as the kubelet makes it: the whole exchange within `timeout`.
fn probe(ns: &str, timeout: Duration) -> Result<u16, String> {
    let started = Instant::now();
    let mut s = in_netns(ns, || TcpStream::connect_timeout(&health_addr(), timeout)).map_err(|e| format!("connect: {e}"))?;
    let left = timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    s.write_all(b"GET /livez HTTP/1.1\r\nHost: 10.0.0.1\r\nConnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read after {:?}: {e}", started.elapsed()))?;
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("bad reply {text:?}"))
}

/// Reads until end of stream or `within`; whether the server closed the connection.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        let _ = s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10))));
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
    false
}

/// A lab whose tpvs serves one Service and answers `/livez`; the lab and its client namespace.
fn serving_lab() -> Option<(Lab, String)> {
    let mut lab = lab(1, &[0])?;
    lab.write_manifests(&manifests(&[Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1")]));
    lab.start_tpvs(&[]);
    lab.wait_serving("10.96.0.10:80");
    let client = lab.client.clone();
    wait_reply(&lab, &client, HEALTH, "/livez", "livez", |r| r.status == 200);
    Some((lab, client))
}

#[test]
fn idle_connections_do_not_starve_liveness_probes() {
    let Some((_lab, client)) = serving_lab() else { return };

    // 256 connections that never send a byte.
    let idle: Vec<TcpStream> = (0..256)
        .map(|i| {
            in_netns(&client, || TcpStream::connect_timeout(&health_addr(), Duration::from_secs(2)))
                .unwrap_or_else(|e| panic!("idle {i}: {e}"))
        })
        .collect();

    // The kubelet's view: 12 probes, each with a 1 s timeout, all answered.
    let mut failed = Vec::new();
    for i in 0..12 {
        match probe(&client, Duration::from_secs(1)) {
            Ok(200) => {}
            other => failed.push(format!("probe {i}: {other:?}")),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(failed.is_empty(), "{} of 12 probes failed with 256 idle connections open: {failed:?}", failed.len());
    drop(idle);
}

#[test]
fn silent_and_trickling_clients_are_dropped_after_the_read_timeout() {
    let Some((_lab, client)) = serving_lab() else { return };

    let connect =
        || in_netns(&client, || TcpStream::connect_timeout(&health_addr(), Duration::from_secs(2))).unwrap_or_else(|e| panic!("{e}"));
    let mut silent = connect();
    let mut trickle = connect();
    let started = Instant::now();
    // A byte every 500 ms never completes a request head: only the deadline ends it.
    let request = b"GET /livez HTTP/1.1\r\nHost: 10.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut dropped_at = None;
    for b in request {
        if trickle.write_all(&[*b]).is_err() || closed_within(&mut trickle, Duration::from_millis(500)) {
            dropped_at = Some(started.elapsed());
            break;
        }
    }
    let dropped_at = dropped_at.unwrap_or_else(|| panic!("a trickling client was still connected after {:?}", started.elapsed()));
    assert!(dropped_at < Duration::from_secs(8), "trickler dropped after {dropped_at:?}");
    assert!(closed_within(&mut silent, Duration::from_secs(8).saturating_sub(started.elapsed())), "a silent client was kept open");
    assert!(started.elapsed() >= Duration::from_secs(3), "dropped too early ({:?}): a probe must get time to ask", started.elapsed());
    assert_eq!(admin_http::get(&client, HEALTH, "/livez").map(|r| r.status).ok(), Some(200));
}
