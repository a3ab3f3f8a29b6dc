//! A minimal HTTP/1 server for the admin endpoints: every route is a plain function from the
//! request line to a complete response, so handlers stay testable without sockets.
//!
//! Bounded on purpose: the health ports are reachable from outside the node (load balancers
//! probe them), so each server caps its open connections and closes idle ones ([`ConnLimit`]):
//! a client that sends nothing, trickles its request head or keeps an idle connection open is
//! dropped after [`IDLE_TIMEOUT`], and at the cap a new connection evicts the longest-idle one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

use super::conns::{ConnGuard, ConnLimit};

/// How long a connection may go without a request in progress: a probe sends its request at
/// once, so 5 s is generous for a client and short for one holding a slot on purpose.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// A response body: whole (`respond`) or produced while it is sent (`respond_streaming`).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Chunks a producer on the blocking pool has written, in flight to the client: at most this
/// many wait, so a large answer holds a few chunks at a time, not the whole of it.
const STREAM_CHUNKS_IN_FLIGHT: usize = 4;

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
    with_body(status, content_type, Full::new(body.into()).boxed_unsync())
}

/// A response whose body `produce` writes chunk by chunk on the blocking pool while it is sent
/// (chunked transfer): the answer's size no longer decides the memory it takes. Must be called
/// from within the server's runtime (handlers are).
pub fn respond_streaming(status: StatusCode, content_type: &'static str, produce: impl FnOnce(&mut dyn FnMut(Bytes)) + Send + 'static) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(STREAM_CHUNKS_IN_FLIGHT);
    let spawned = tokio::runtime::Handle::try_current().map(|rt| {
        rt.spawn_blocking(move || {
            // A client gone mid-answer makes the sends fail; the rest is produced and dropped.
            produce(&mut |chunk| {
                let _ = tx.blocking_send(chunk);
            });
        })
    });
    if spawned.is_err() {
        return respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", "no runtime to stream from\n");
    }
    with_body(status, content_type, ChunkBody(rx).boxed_unsync())
}

fn with_body(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The receiving end of a streamed body: each chunk becomes a data frame; the producer's end
/// closing ends the body.
struct ChunkBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

pub fn not_found() -> Response<Body> {
    respond(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "404 page not found\n")
}

/// Serves `listener` until `stop` changes or its sender is dropped, within `limit` (which
/// several listeners may share). Connections already open are left to finish on their own.
pub async fn serve(listener: TcpListener, handler: Handler, exec: Exec, limit: Arc<ConnLimit>, mut stop: watch::Receiver<bool>) {
    loop {
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
        let Some(guard) = limit.admit(Instant::now()) else {
            // Every connection is mid-request: refusing is quicker for the client than a wait.
            debug!(%peer, "admin server busy; connection refused");
            crate::sockopt::reset_on_close(&stream);
            continue;
        };
        let handler = Arc::clone(&handler);
        let local = stream.local_addr().ok();
        tokio::spawn(serve_connection(stream, peer, local, handler, exec, Arc::new(guard)));
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    handler: Handler,
    exec: Exec,
    guard: Arc<ConnGuard>,
) {
    let in_service = Arc::clone(&guard);
    let service = service_fn(move |req: Request<Incoming>| {
        let handler = Arc::clone(&handler);
        let guard = Arc::clone(&in_service);
        async move {
            guard.begin();
            let req = Req { method: req.method().clone(), uri: req.uri().clone(), local };
            let resp = match exec {
                Exec::Inline => handler(&req),
                Exec::Blocking => match tokio::task::spawn_blocking(move || handler(&req)).await {
                    Ok(r) => r,
                    Err(_) => respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", "handler failed\n"),
                },
            };
            guard.end(Instant::now());
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    // Dropping the connection future closes the socket.
    tokio::select! {
        r = conn => if let Err(e) = r {
            debug!(%peer, error = %e, "admin connection ended with an error");
        },
        () = guard.closing() => debug!(%peer, "admin connection idle or evicted; closed"),
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
