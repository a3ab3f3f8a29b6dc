//! A small UDP echo server and a bounded closed-loop UDP load generator, for the UDP peer
//! benchmark (`benches/peer-udp.sh`).
//!
//! ```text
//! udpload echo ADDR [ADDR...] [--threads N]
//!     answers every datagram with itself, on each ADDR, until killed
//! udpload load TARGET [--sockets N] [--window W] [--seconds S] [--size BYTES]
//!     N sockets (one thread each), each keeping W datagrams in flight: sends W, then one more
//!     for every echo received; after S seconds prints
//!     "datagrams/s <rate> sent <n> received <n> lost <n> p50_us <us> p99_us <us>"
//! ```
//!
//! The load is bounded in time (at most 600 s) and in flight (N × W datagrams); a datagram not
//! echoed within 200 ms is counted lost and replaced, so loss cannot stall the loop.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const LOSS_TIMEOUT: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("echo") => echo(&args[1..]),
        Some("load") => load(&args[1..]),
        _ => Err("usage: udpload echo ADDR... [--threads N] | udpload load TARGET [--sockets N] [--window W] [--seconds S] [--size BYTES]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udpload: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--name value` pairs, in command-line order.
type Flags = Vec<(String, String)>;

/// Splits `--flag value` pairs from positional arguments.
fn parse(args: &[String]) -> Result<(Vec<String>, Flags), String> {
    let mut pos = Vec::new();
    let mut flags = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(name) = a.strip_prefix("--") {
            let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            flags.push((name.to_string(), v.clone()));
        } else {
            pos.push(a.clone());
        }
    }
    Ok((pos, flags))
}

fn flag<T: std::str::FromStr>(flags: &[(String, String)], name: &str, default: T) -> Result<T, String> {
    match flags.iter().rev().find(|(n, _)| n == name) {
        Some((_, v)) => v.parse().map_err(|_| format!("--{name}: bad value {v:?}")),
        None => Ok(default),
    }
}

fn echo(args: &[String]) -> Result<(), String> {
    let (addrs, flags) = parse(args)?;
    let threads: usize = flag(&flags, "threads", 1)?;
    if addrs.is_empty() {
        return Err("echo: at least one ADDR".into());
    }
    let mut handles = Vec::new();
    for a in &addrs {
        let addr: SocketAddr = a.parse().map_err(|e| format!("{a}: {e}"))?;
        let sock = Arc::new(UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?);
        for _ in 0..threads.clamp(1, 64) {
            let s = Arc::clone(&sock);
            handles.push(std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    if let Ok((n, peer)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(&buf[..n], peer);
                    }
                }
            }));
        }
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    sent: u64,
    received: u64,
    lost: u64,
    rtts_us: Vec<u32>,
}

fn load(args: &[String]) -> Result<(), String> {
    let (pos, flags) = parse(args)?;
    let target: SocketAddr = pos.first().ok_or("load: TARGET needed")?.parse().map_err(|e| format!("TARGET: {e}"))?;
    let sockets: usize = flag(&flags, "sockets", 4)?;
    let window: usize = flag(&flags, "window", 16)?;
    let seconds: u64 = flag(&flags, "seconds", 5)?;
    let size: usize = flag(&flags, "size", 64)?;
    let (sockets, window, size) = (sockets.clamp(1, 256), window.clamp(1, 1024), size.clamp(16, 1400));
    let duration = Duration::from_secs(seconds.clamp(1, 600));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..sockets {
        let stop = Arc::clone(&stop);
        workers.push(std::thread::spawn(move || run_socket(target, window, size, stop)));
    }
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut total = Tally::default();
    for w in workers {
        let t = w.join().map_err(|_| "a load thread panicked".to_string())??;
        total.sent += t.sent;
        total.received += t.received;
        total.lost += t.lost;
        total.rtts_us.extend(t.rtts_us);
    }
    total.rtts_us.sort_unstable();
    let pct = |p: f64| -> u32 {
        if total.rtts_us.is_empty() {
            return 0;
        }
        let i = ((total.rtts_us.len() as f64 - 1.0) * p).round() as usize;
        total.rtts_us[i.min(total.rtts_us.len() - 1)]
    };
    println!(
        "datagrams/s {:.0} sent {} received {} lost {} p50_us {} p99_us {}",
        total.received as f64 / elapsed,
        total.sent,
        total.received,
        total.lost,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

/// One socket's closed loop. Each datagram carries its sequence number; the send time of the
/// datagrams in flight is kept in a ring indexed by sequence.
fn run_socket(target: SocketAddr, window: usize, size: usize, stop: Arc<AtomicBool>) -> Result<Tally, String> {
    let any: SocketAddr = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(|e| format!("{e}"))?;
    let sock = UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))?;
    sock.connect(target).map_err(|e| format!("connect {target}: {e}"))?;
    sock.set_read_timeout(Some(LOSS_TIMEOUT)).map_err(|e| e.to_string())?;
    let ring = window * 4;
    let mut sent_at: Vec<Option<Instant>> = vec![None; ring];
    let mut buf = vec![0u8; size.max(8)];
    let mut rbuf = [0u8; 2048];
    let mut t = Tally::default();
    let mut seq: u64 = 0;
    let send = |sock: &UdpSocket, seq: &mut u64, sent_at: &mut [Option<Instant>], t: &mut Tally, buf: &mut [u8]| {
        buf[..8].copy_from_slice(&seq.to_le_bytes());
        if sock.send(buf).is_ok() {
            sent_at[(*seq as usize) % ring] = Some(Instant::now());
            t.sent += 1;
        }
        *seq += 1;
    };
    for _ in 0..window {
        send(&sock, &mut seq, &mut sent_at, &mut t, &mut buf);
    }
    // Keep a sample of round-trip times (every 16th) to bound memory on long runs.
    while !stop.load(Ordering::Relaxed) {
        match sock.recv(&mut rbuf) {
            Ok(n) if n >= 8 => {
                let mut s = [0u8; 8];
                s.copy_from_slice(&rbuf[..8]);
                let got = u64::from_le_bytes(s);
                if let Some(at) = sent_at[(got as usize) % ring].take() {
                    t.received += 1;
                    if t.received % 16 == 0 {
                        t.rtts_us.push(u32::try_from(at.elapsed().as_micros()).unwrap_or(u32::MAX));
                    }
                }
                send(&sock, &mut seq, &mut sent_at, &mut t, &mut buf);
            }
            Ok(_) => {}
            Err(_) => {
                // Nothing for LOSS_TIMEOUT: whatever is in flight is lost; refill the window.
                let in_flight = sent_at.iter().filter(|s| s.is_some()).count();
                t.lost += in_flight as u64;
                sent_at.iter_mut().for_each(|s| *s = None);
                for _ in 0..window {
                    send(&sock, &mut seq, &mut sent_at, &mut t, &mut buf);
                }
            }
        }
    }
    Ok(t)
}
