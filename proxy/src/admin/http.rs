//! A minimal HTTP/1 server for the admin endpoints: every route is a plain function from the
//! request line to a complete response, so handlers stay testable without sockets.
//!
//! Bounded on purpose: the health ports are reachable from outside the node (load balancers
//! probe them), so each server caps its open connections and the time a client may take to
//! send its request head.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::debug;

/// Connections one admin server keeps open at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 256;

/// Time allowed for a request head (slow-loris protection on the public health ports).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub type Body = Full<Bytes>;

/// What a handler sees of a request: admin endpoints take no body.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub uri: Uri,
    /// The address the client connected to (routes may be served on loopback only).
    pub local: Option<SocketAddr>,
}

impl Req {
    pub fn path(&self) -> &str {
        self.uri.path()
    }
}

/// A route table: one function answering every request of a server.
pub type Handler = Arc<dyn Fn(&Req) -> Response<Body> + Send + Sync>;

/// How a handler is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exec {
    /// On the event loop: cheap handlers (health answers).
    Inline,
    /// On the blocking pool: handlers that may wait (a metrics scrape runs `nft`).
    Blocking,
}

/// A response with a body and content type.
pub fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn not_found() -> Response<Body> {
    respond(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "404 page not found\n")
}

/// Serves `listener` until `stop` changes or its sender is dropped. Connections already open
/// are left to finish on their own.
pub async fn serve(listener: TcpListener, handler: Handler, exec: Exec, mut stop: watch::Receiver<bool>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else { return };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of fds: back off instead of spinning.
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = Arc::clone(&handler);
        let local = stream.local_addr().ok();
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, local, handler, exec).await;
        });
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, local: Option<SocketAddr>, handler: Handler, exec: Exec) {
    let service = service_fn(move |req: Request<Incoming>| {
        let handler = Arc::clone(&handler);
        async move {
            let req = Req { method: req.method().clone(), uri: req.uri().clone(), local };
            let resp = match exec {
                Exec::Inline => handler(&req),
                Exec::Blocking => match tokio::task::spawn_blocking(move || handler(&req)).await {
                    Ok(r) => r,
                    Err(_) => respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", "handler failed\n"),
                },
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        debug!(%peer, error = %e, "admin connection ended with an error");
    }
}

/// GET `path` from an HTTP/1 server at `addr`: status and body. For `tpvs list` and tests.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<(StatusCode, Bytes)> {
    use anyhow::Context as _;
    use http_body_util::BodyExt as _;
    let fut = async {
        let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.context("HTTP handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .uri(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .context("building the request")?;
        let resp = sender.send_request(req).await.with_context(|| format!("GET {path} from {addr}"))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.context("reading the response")?.to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut).await.with_context(|| format!("no answer from {addr} within {timeout:?}"))?
}
