//! `tpvs explain`'s two ways of asking, like `tpvs list`'s: compile the manifests
//! (`--manifests`, no root, no daemon), or ask the running daemon's `/api/explain` (its
//! metrics address, loopback only), which adds the live evidence. Both print through
//! [`crate::explain::answer`].

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use controlplane::{ManifestSource, Publisher};
use hyper::StatusCode;

use crate::addrs::NodePortAddrs;
use crate::admin::{healthcheck, http};
use crate::cli::ExplainArgs;
use crate::dispatch::Dispatcher;
use crate::dispatch::node_addrs::NodeAddrs;
use crate::dispatch::outlier::OutlierPolicy;
use crate::dispatch::telemetry::MetricsRegistry;
use crate::explain::query::Query;
use crate::explain::report::{self, Report, Sources};
use crate::explain::{answer, query_string};
use crate::list::render_errors;

const TIMEOUT: Duration = Duration::from_secs(5);

/// `tpvs explain --manifests PATH`.
pub fn run_offline(manifests: &Path, args: &ExplainArgs) -> ExitCode {
    answer(args, |q| offline(manifests, args, q))
}

/// `tpvs explain` without `--manifests`: the running daemon answers.
pub fn run_live(args: &ExplainArgs) -> ExitCode {
    answer(args, |q| ask(args.server, q))
}

/// The table `manifests` compile to, with `args`' settings, asked through a dispatcher of its
/// own (no live state: no affinity entries, no counters; the proxy counted as healthy; the
/// node's addresses as the compiler knows them).
fn offline(manifests: &Path, args: &ExplainArgs, q: &Query) -> anyhow::Result<Report> {
    let publisher = Arc::new(Publisher::new());
    let mut source = ManifestSource::new(manifests.to_path_buf(), args.table.compile_options(), Arc::clone(&publisher));
    let loaded = source.reload();
    // Problems in the manifests are reported as `tpvs list` reports them; the answer is still
    // given from what did load, which is what the daemon would serve.
    eprint!("{}", render_errors(&loaded));
    anyhow::ensure!(loaded.files > 0, "{}: no manifest files", manifests.display());
    let table = publisher.current();
    // The node's own addresses are the ones the compiler knows (`--bind-address`, the Node
    // object), not those of the machine asking.
    let dispatcher =
        Dispatcher::new(publisher.handle(), NodePortAddrs::AllLocal, Arc::new(MetricsRegistry::default()), OutlierPolicy::default())
            .with_node_addrs(NodeAddrs::given(table.node_ips().iter().copied()));
    let health_check = |port: u16| healthcheck::status_of(&table, port, true);
    Ok(report::explain(q, &Sources { table: &table, dispatcher: &dispatcher, health_check: &health_check, live: None }))
}

fn ask(server: SocketAddr, q: &Query) -> anyhow::Result<Report> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("runtime")?;
    runtime.block_on(async {
        let path = format!("/api/explain?{}", query_string(q));
        let (status, body) = http::get(server, &path, TIMEOUT)
            .await
            .with_context(|| format!("asking tpvs at {server} (is `tpvs run` up? --server sets the address; --manifests explains offline)"))?;
        anyhow::ensure!(status == StatusCode::OK, "{server}/api/explain answered {status}: {}", String::from_utf8_lossy(&body).trim());
        serde_json::from_slice(&body).with_context(|| format!("{server}/api/explain: unexpected answer"))
    })
}
