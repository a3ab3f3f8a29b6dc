//! `tpvs explain` against the running daemon: asks its `/api/explain` (metrics address,
//! loopback only) and prints the answer like the offline one.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use hyper::StatusCode;

use crate::admin::http;
use crate::cli::ExplainArgs;
use crate::explain::query::Query;
use crate::explain::report::Report;
use crate::explain::{answer, query_string};

const TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(args: &ExplainArgs) -> ExitCode {
    answer(args, |q| ask(args.server, q))
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
