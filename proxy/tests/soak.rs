//! A soak test: mixed TCP and UDP load, manifest churn and a backend that keeps failing, all
//! at once against the real `tpvs run` in the namespace lab, for `TPVS_SOAK_SECONDS` (20 s in
//! CI; run it by hand for longer: `TPVS_SOAK_SECONDS=600 cargo test -p tpvs --test soak --
//! --nocapture`). It reports the daemon's open fds, RSS and the errors seen at the start and
//! the end, and fails if anything grew or a client saw a failure it should not have.
//! Root, nftables/iproute2, dnsmasq and dig required (or `TPVS_SKIP_E2E=1`).

mod lab;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lab::dns::{dig_in, dnsmasq};
use lab::{Svc, lab, manifests, sh};

const WEB: &str = "10.96.0.10:80";
const DNS_VIP: &str = "10.96.0.53";

fn services(with_be2: bool, with_extra: bool) -> String {
    let mut web = Svc::new("web", "10.96.0.10").endpoint("10.1.0.2", "node1").endpoint("10.1.1.2", "node1");
    if with_be2 {
        web = web.endpoint("10.1.2.2", "node1");
    }
    let mut dns = Svc::new("dns", DNS_VIP).endpoint("10.1.2.2", "node1");
    dns.protocol = "UDP";
    dns.port = 53;
    dns.target_port = 53;
    let mut svcs = vec![web, dns];
    if with_extra {
        svcs.push(Svc::new("extra", "10.96.0.77").endpoint("10.1.0.2", "node1"));
    }
    manifests(&svcs)
}

fn seconds() -> u64 {
    std::env::var("TPVS_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20)
}

#[test]
fn load_churn_and_failures_leave_nothing_behind() {
    let Some(mut lab) = lab(3, &[0, 1, 2]) else { return };
    let _dns = dnsmasq(&lab, 2);
    lab.write_manifests(&services(true, false));
    // A short UDP idle timeout, so the flows of the last queries are gone before the final
    // reading and any fd still open at the end is a leak.
    lab.start_tpvs(&["--outlier-base-ejection-time", "1s", "--udp-timeout", "1s"]);
    lab.wait_serving(WEB);
    let client = lab.client.clone();
    assert!(lab.wait_for(Duration::from_secs(10), || dig_in(&client, DNS_VIP, "A").ok()).is_some(), "DNS never answered");
    // Warm up every path once before the first reading (pools, pipes, reply sockets).
    for _ in 0..20 {
        let _ = lab.hello(WEB);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (fds_start, rss_start) = lab.footprint();

    let stop = Arc::new(AtomicBool::new(false));
    let (tcp_ok, tcp_failed, udp_ok, udp_failed) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let until = Instant::now() + Duration::from_secs(seconds());
    std::thread::scope(|s| {
        for _ in 0..2 {
            let (lab, stop, ok, failed) = (&lab, &stop, &tcp_ok, &tcp_failed);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match lab.hello(WEB) {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("tcp: {e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            });
        }
        {
            let (client, stop, ok, failed) = (&client, &stop, &udp_ok, &udp_failed);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Each dig asks from a new source port: a new flow every time.
                    match dig_in(client, DNS_VIP, "A") {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        // Churn: be2 leaves and rejoins web, a Service comes and goes; be1 blackholes its SYNs
        // on and off, so connects to it time out, are retried and get it ejected.
        let mut tick = 0u32;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(300));
            tick += 1;
            lab.write_manifests(&services(tick.is_multiple_of(2), tick.is_multiple_of(3)));
            if tick.is_multiple_of(7) {
                sh(&["ip", "netns", "exec", &lab.backends[1], "nft", "add table inet soak; add chain inet soak input { type filter hook input priority 0; tcp dport 8080 tcp flags & (syn | ack) == syn drop; }"]);
            } else if tick % 7 == 3 {
                let _ = lab::try_sh(&["ip", "netns", "exec", &lab.backends[1], "nft", "delete table inet soak"]);
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let _ = lab::try_sh(&["ip", "netns", "exec", &lab.backends[1], "nft", "delete table inet soak"]);
    lab.write_manifests(&services(true, false));
    // Let the last connections close and the flows of the final queries expire.
    std::thread::sleep(Duration::from_secs(3));
    let (fds_end, rss_end) = lab.footprint();
    let (tok, tfail, uok, ufail) =
        (tcp_ok.load(Ordering::Relaxed), tcp_failed.load(Ordering::Relaxed), udp_ok.load(Ordering::Relaxed), udp_failed.load(Ordering::Relaxed));
    eprintln!(
        "soak {} s: tcp {tok} ok / {tfail} failed, udp {uok} ok / {ufail} failed; fds {fds_start} -> {fds_end}; RSS {} -> {} KiB",
        seconds(),
        rss_start,
        rss_end
    );
    assert!(tok > 100 && uok > 20, "the load ran: tcp {tok}, udp {uok}");
    assert_eq!(tfail, 0, "no TCP client failed (a blackholed backend is retried, a removed one drains)");
    assert!(ufail * 100 <= uok, "UDP answered at least 99 %: {uok} ok, {ufail} failed");
    // A few fds of slack: pooled pipes and per-frontend reply sockets come and go with load.
    assert!(fds_end <= fds_start + 8, "fds grew {fds_start} -> {fds_end}");
    assert!(rss_end <= rss_start + 16 * 1024, "RSS grew {rss_start} -> {rss_end} KiB");
}
