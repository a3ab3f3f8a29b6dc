//! End-to-end: manifest files caught while being written are never applied. Run as root (see
//! `lab`).

mod lab;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lab::{Svc, in_netns, lab, manifests, parse_hello};

const WEB: &str = "10.96.0.10:80";
const SETTLE: &str = "500ms";
/// Pause between two pieces of one rewrite: shorter than the settle time, and as long as the
/// daemon's poll interval, so that it sees most half-written states.
const PAUSE: Duration = Duration::from_millis(100);

/// Ten unrelated Services, then web with the backend `k`: a file cut anywhere lacks some or
/// all of web, and a cut between two lines often still parses.
fn version(k: usize) -> String {
    let mut svcs: Vec<Svc> =
        (0..10).map(|i| Svc::new(&format!("pad{i}"), &format!("10.96.1.{}", i + 1)).endpoint("10.1.0.2", "node1")).collect();
    svcs.push(Svc::new("web", "10.96.0.10").endpoint(&format!("10.1.{k}.2"), "node1"));
    manifests(&svcs)
}

/// One request through the proxy, from the client namespace's thread: connect, read the
/// backend's hello, half-close, read to the end.
fn request(dst: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&dst, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| format!("hello: {e}"))?;
    let hello = parse_hello(&line).map_err(|e| format!("hello {line:?}: {e}"))?;
    stream.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).map_err(|e| format!("close: {e}"))?;
    stream.flush().map_err(|e| e.to_string())?;
    Ok(hello.backend)
}

#[test]
fn rewriting_the_manifests_in_place_never_breaks_a_connection() {
    let Some(mut lab) = lab(2, &[0, 1]) else { return };
    lab.write_manifests(&version(0));
    lab.start_tpvs(&["--manifests-settle", SETTLE]);
    lab.wait_serving(WEB);

    // A client connecting all the time, from its own namespace.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (ns, stop) = (lab.client.clone(), Arc::clone(&stop));
        let dst: SocketAddr = WEB.parse().unwrap_or_else(|e| panic!("{e}"));
        std::thread::spawn(move || {
            in_netns(&ns, || {
                let (mut ok, mut failed) = (0usize, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match request(dst) {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                (ok, failed)
            })
        })
    };

    for round in 1..=20 {
        let k = round % 2;
        let text = version(k);
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        // Truncate, then write the new text in eight pieces ending at line boundaries.
        let mut file = std::fs::File::create(&lab.manifests).unwrap_or_else(|e| panic!("truncate: {e}"));
        for piece in lines.chunks(lines.len().div_ceil(8)) {
            std::thread::sleep(PAUSE);
            file.write_all(piece.concat().as_bytes()).unwrap_or_else(|e| panic!("write: {e}"));
        }
        drop(file);
        // The complete file is applied once it settles.
        let want = format!("be{k}");
        let moved = lab.wait_for(Duration::from_secs(5), || lab.hello(WEB).ok().filter(|h| h.backend == want));
        assert!(moved.is_some(), "round {round}: the completed file was never applied; log:\n{}", lab.tpvs_log());
    }

    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = client.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
    assert!(ok > 100, "the client made only {ok} requests");
    assert!(failed.is_empty(), "{} of {} requests failed during the rewrites, first: {:?}", failed.len(), ok + failed.len(), &failed[..failed.len().min(5)]);
}
