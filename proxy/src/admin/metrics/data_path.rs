//! The data path's own counters, read at scrape time: the TCP listeners' accept/reject
//! counters (in total and per worker), the rules' refusals and drops (read from the kernel through `nft` at most once per
//! `COUNTERS_MAX_AGE`, whatever the scrape rate), the netfilter syncs and re-asserts, and the
//! UDP flow table.

use std::sync::Mutex;

use prometheus::proto::MetricFamily;
use tracing::debug;

use super::exposition::Fam;
use super::spec;
use crate::admin::Sources;
use crate::netfilter::VerdictCounts;

/// Appends the data path's families; `last_verdicts` keeps the kernel counters last read.
pub(super) fn collect(sources: &Sources, last_verdicts: &Mutex<VerdictCounts>, out: &mut Vec<MetricFamily>) {
    use std::sync::atomic::Ordering::Relaxed;
    if let Some(fwd) = &sources.forward {
        let st = &fwd.stats;
        out.push(Fam::single(&spec::accepted, st.accepted.load(Relaxed) as f64));
        out.push(Fam::single(&spec::open, fwd.open_connections() as f64));
        let mut f = Fam::new(&spec::rejected);
        for (reason, c) in [("no_frontend", &st.no_frontend), ("connect_failed", &st.connect_failed), ("over_limit", &st.over_limit)] {
            f.value(&[("reason", reason)], c.load(Relaxed) as f64);
        }
        out.push(f.mf);
        workers(fwd, out);
        out.push(Fam::single(&spec::idle, st.idle_closed.load(Relaxed) as f64));
        let (adopted, unknown) = (st.adopted.load(Relaxed), st.adopted_without_backend.load(Relaxed));
        let mut f = Fam::new(&spec::adopted);
        f.value(&[("backend_known", "true")], adopted.saturating_sub(unknown) as f64);
        f.value(&[("backend_known", "false")], unknown as f64);
        out.push(f.mf);
    }
    if let Some(ic) = &sources.interception {
        let counts = {
            let mut last = last_verdicts.lock().unwrap_or_else(|p| p.into_inner());
            match ic.verdict_counts() {
                Ok(c) => *last = c,
                Err(e) => debug!(error = %e, "reading the rules' counters"),
            }
            *last
        };
        for (spec, v) in
            [(&spec::refused, counts.refused), (&spec::dropped, counts.dropped), (&spec::out_of_range, counts.out_of_range)]
        {
            let mut f = Fam::new(spec);
            f.value(&[], v as f64);
            out.push(f.mf);
        }
        let s = ic.stats();
        for (spec, v) in [(&spec::syncs, s.syncs), (&spec::sync_failures, s.failures)] {
            let mut f = Fam::new(spec);
            f.value(&[], v as f64);
            out.push(f.mf);
        }
        let r = ic.reasserted();
        let mut f = Fam::new(&spec::reasserted);
        f.value(&[("what", "nft_table")], r.nft_table as f64);
        f.value(&[("what", "policy_routing")], r.policy_routing as f64);
        out.push(f.mf);
    }
    // Zeros when the UDP data path is off, so dashboards and alerts see zeros rather
    // than "no data".
    let u = sources.udp.as_ref().map(|u| u.snapshot()).unwrap_or_default();
    out.push(Fam::single(&spec::udp_active, u.flows_active as f64));
    out.push(Fam::single(&spec::udp_created, u.flows_created as f64));
    out.push(Fam::single(&spec::udp_adopted, u.flows_adopted as f64));
    let mut f = Fam::new(&spec::udp_evicted);
    f.value(&[("reason", "idle")], u.flows_expired as f64);
    f.value(&[("reason", "table_change")], u.flows_evicted as f64);
    out.push(f.mf);
    let mut f = Fam::new(&spec::udp_datagrams);
    for (dir, v) in [
        ("from_clients", u.datagrams_from_clients),
        ("to_backends", u.datagrams_to_backends),
        ("from_backends", u.datagrams_from_backends),
        ("to_clients", u.datagrams_to_clients),
    ] {
        f.value(&[("direction", dir)], v as f64);
    }
    out.push(f.mf);
    let mut f = Fam::new(&spec::udp_drops);
    for (reason, v) in [
        ("no_frontend", u.drop_no_frontend),
        ("no_backend", u.drop_no_backend),
        ("max_flows", u.drop_max_flows),
        ("source_share", u.drop_source_share),
        ("socket", u.drop_socket),
        ("backend_refused", u.drop_backend_refused),
        ("send_to_backend", u.drop_send_to_backend),
        ("send_to_client", u.drop_send_to_client),
        ("malformed", u.drop_malformed),
    ] {
        f.value(&[("reason", reason)], v as f64);
    }
    out.push(f.mf);
    out.push(Fam::single(&spec::udp_per_source, sources.udp.as_ref().map_or(0, |u| u.flows.per_key()) as f64));
    descriptors(out);
}

/// Each TCP worker's share: accepted, open, CPU time (an uneven spread shows here first).
fn workers(fwd: &crate::forward::Shared, out: &mut Vec<MetricFamily>) {
    let (mut accepted, mut open, mut busy) = (Fam::new(&spec::worker_accepted), Fam::new(&spec::worker_open), Fam::new(&spec::worker_busy));
    for (i, w) in fwd.workers.iter().enumerate() {
        let worker = i.to_string();
        let l = [("worker", worker.as_str())];
        accepted.value(&l, w.accepted() as f64);
        open.value(&l, w.open() as f64);
        // A thread whose accounting cannot be read has no sample rather than a false zero.
        if let Some(s) = w.busy_seconds() {
            busy.value(&l, s);
        }
    }
    out.extend([accepted.mf, open.mf, busy.mf]);
}

/// The descriptor budget (when `tpvs run` planned one) and the descriptors open now.
fn descriptors(out: &mut Vec<MetricFamily>) {
    if let Some(b) = crate::limits::installed() {
        out.push(Fam::single(&spec::fd_limit, b.limit as f64));
        let mut f = Fam::new(&spec::fd_budget);
        for (part, n) in b.parts() {
            f.value(&[("use", part)], n as f64);
        }
        out.push(f.mf);
    }
    if let Some(n) = crate::limits::open_fds() {
        out.push(Fam::single(&spec::fds_open, n as f64));
    }
}
