//! Traffic that runs across a takeover: new TCP connections at a steady rate, a UDP request
//! loop, a long-lived connection echoing a line every 100 ms, and a watcher of the nft table;
//! each counts what it saw so a test can require that nothing was lost.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{Conn, Lab, in_netns};

/// Load that runs until `stop`: new TCP connections (each must say hello and close cleanly),
/// a UDP request loop, and a watcher of the nft table's presence. `hold` pauses the new
/// connections (a test sampling the daemon's descriptors without connections in flight).
#[derive(Default)]
pub struct Load {
    pub stop: AtomicBool,
    pub hold: AtomicBool,
    pub tcp_ok: AtomicUsize,
    pub tcp_failed: AtomicUsize,
    pub udp_sent: AtomicUsize,
    pub udp_answered: AtomicUsize,
    pub nft_absent: AtomicUsize,
    pub nft_checks: AtomicUsize,
    pub first_failure: std::sync::Mutex<Option<String>>,
    /// The backends (their names) that answered the UDP loop's requests.
    pub udp_backends: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Load {
    fn fail(&self, what: String) {
        self.tcp_failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(what);
    }

    pub fn first_failure(&self) -> Option<String> {
        self.first_failure.lock().ok().and_then(|f| f.clone())
    }

    /// One short connection: connect, the backend's hello, half-close, clean end.
    fn one_connection(&self, vip: SocketAddr) {
        let r = (|| -> std::io::Result<()> {
            let s = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut reader = BufReader::new(s.try_clone()?);
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if !line.starts_with("be0 ") {
                return Err(std::io::Error::other(format!("no hello: {line:?}")));
            }
            s.shutdown(std::net::Shutdown::Write)?;
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest)?;
            Ok(())
        })();
        match r {
            Ok(()) => {
                self.tcp_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.fail(format!("{e} ({:?})", e.kind())),
        }
    }

    /// Stops the load and waits for its threads.
    pub fn finish(&self, threads: Vec<std::thread::JoinHandle<()>>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Starts the load against `vip` (TCP, backend be0) and `udp_vip` from the lab's client.
pub fn start_load(lab: &Lab, load: &Arc<Load>, vip: &str, udp_vip: &str) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    let vip: SocketAddr = vip.parse().unwrap_or_else(|e| panic!("{e}"));
    // Two connecting threads, paced to well over 200 new connections per second in all.
    for _ in 0..2 {
        let (l, ns) = (Arc::clone(load), lab.client.clone());
        threads.push(std::thread::spawn(move || {
            in_netns(&ns, || {
                while !l.stop.load(Ordering::Relaxed) {
                    if l.hold.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    l.one_connection(vip);
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
        }));
    }
    let (l, ns, udp_vip) = (Arc::clone(load), lab.client.clone(), udp_vip.to_string());
    threads.push(std::thread::spawn(move || {
        in_netns(&ns, || {
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap_or_else(|e| panic!("{e}"));
            sock.connect(&udp_vip).unwrap_or_else(|e| panic!("{e}"));
            sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap_or_else(|e| panic!("{e}"));
            let mut buf = [0u8; 512];
            let mut n = 0u64;
            while !l.stop.load(Ordering::Relaxed) {
                n += 1;
                let msg = format!("q{n}");
                if sock.send(msg.as_bytes()).is_err() {
                    l.udp_sent.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                l.udp_sent.fetch_add(1, Ordering::Relaxed);
                // Replies to earlier (late) requests are skipped; this one's answer counts.
                let deadline = Instant::now() + Duration::from_millis(300);
                while Instant::now() < deadline {
                    match sock.recv(&mut buf) {
                        Ok(k) if String::from_utf8_lossy(&buf[..k]).ends_with(&format!(" {msg}")) => {
                            l.udp_answered.fetch_add(1, Ordering::Relaxed);
                            let name = String::from_utf8_lossy(&buf[..k]).split(' ').next().unwrap_or_default().to_string();
                            l.udp_backends.lock().unwrap_or_else(|p| p.into_inner()).insert(name);
                            break;
                        }
                        Ok(_) => continue,
                        Err(_) => break,
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    }));
    let (l, node) = (Arc::clone(load), lab.node.clone());
    threads.push(std::thread::spawn(move || {
        while !l.stop.load(Ordering::Relaxed) {
            let present = Command::new("ip").args(["netns", "exec", &node, "nft", "list", "table", "inet", "tpvs"]).output().is_ok_and(|o| o.status.success());
            l.nft_checks.fetch_add(1, Ordering::Relaxed);
            if !present {
                l.nft_absent.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }));
    threads
}

/// A UDP backend in `ns` on `addr` answering `"<name> <payload>"`, until the returned flag is
/// set.
pub fn udp_echo(ns: &str, addr: &str, name: &str) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let sock = in_netns(ns, || UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("{e}"));
    sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap_or_else(|e| panic!("{e}"));
    let (st, name) = (Arc::clone(&stop), name.to_string());
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !st.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(format!("{name} {}", String::from_utf8_lossy(&buf[..n])).as_bytes(), peer);
            }
        }
    });
    stop
}

/// A connection that echoes a numbered line every 100 ms until stopped, counting echoes that
/// came back wrong or not at all, and the longest wait for one.
pub struct Ticker {
    pub stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicUsize>,
    pub lost: Arc<AtomicUsize>,
    pub max_gap_ms: Arc<AtomicU64>,
    pub error: Arc<std::sync::Mutex<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    pub fn start(mut conn: Conn) -> Ticker {
        let (stop, ok, lost, gap) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU64::new(0)));
        let error = Arc::new(std::sync::Mutex::new(None));
        let (s, o, l, g, e) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&lost), Arc::clone(&gap), Arc::clone(&error));
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                let line = format!("tick {n}\n");
                let t0 = Instant::now();
                match conn.echo(&line) {
                    Ok(back) if back == line => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        l.fetch_add(1, Ordering::Relaxed);
                        let mut e = e.lock().unwrap_or_else(|p| p.into_inner());
                        e.get_or_insert(format!("tick {n}: {other:?}"));
                        // A broken connection stays broken: stop rather than count forever.
                        if other.is_err() {
                            return;
                        }
                    }
                }
                g.fetch_max(u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Ticker { stop, ok, lost, max_gap_ms: gap, error, thread: Some(thread) }
    }

    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::Relaxed)
    }

    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    /// Stops ticking and waits for the thread.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Waits (bounded) for a predecessor to exit by itself (the lab's [`super::wait_child`]).
#[allow(unused_imports)]
pub use super::wait_child as wait_exit;
