//! An in-test Kubernetes API double: a small HTTP/1.1 server on 127.0.0.1 speaking the list
//! and watch wire protocol for Services, EndpointSlices (discovery.k8s.io/v1) and Nodes, so
//! that kube-rs's real client and watcher run against it unchanged.
//!
//! What it implements, as the API server does:
//! - `GET` lists with `limit` and `continue` (pages in namespace/name order; the token carries
//!   the list's resourceVersion, and an expired one answers HTTP 410 Gone), `fieldSelector`
//!   `metadata.name=` / `metadata.namespace=`, a list `resourceVersion` in the list metadata;
//! - `watch=true` from a `resourceVersion`: the events after it, then live ones, as
//!   newline-delimited JSON in a chunked response (`ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK`
//!   when `allowWatchBookmarks=true`); a resourceVersion older than the compaction point gets
//!   an `ERROR` event with a 410 `Status`; `timeoutSeconds` ends the stream cleanly.
//!
//! And what tests need to break it: [`ApiServer::expire_watches`] (compaction + 410 to open
//! watches), [`ApiServer::drop_watches`] (streams cut mid-body), [`ApiServer::set_down`]
//! (every connection closed at once, as with an unreachable API server),
//! [`ApiServer::hold_lists`] (a resource's lists wait), [`ApiServer::set_page_delay`].
//!
//! Not implemented: writes through HTTP (tests mutate the store directly), authentication,
//! label selectors, protobuf, streaming lists (`sendInitialEvents`), HTTP/2.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};

/// The resources served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Services,
    EndpointSlices,
    Nodes,
}

impl Kind {
    fn slot(self) -> usize {
        match self {
            Kind::Services => 0,
            Kind::EndpointSlices => 1,
            Kind::Nodes => 2,
        }
    }

    fn from_path(path: &str) -> Option<Kind> {
        match path {
            "/api/v1/services" => Some(Kind::Services),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Kind::EndpointSlices),
            "/api/v1/nodes" => Some(Kind::Nodes),
            _ => None,
        }
    }

    fn list_head(self) -> (&'static str, &'static str) {
        match self {
            Kind::Services => ("v1", "ServiceList"),
            Kind::EndpointSlices => ("discovery.k8s.io/v1", "EndpointSliceList"),
            Kind::Nodes => ("v1", "NodeList"),
        }
    }

    fn object_head(self) -> (&'static str, &'static str) {
        match self {
            Kind::Services => ("v1", "Service"),
            Kind::EndpointSlices => ("discovery.k8s.io/v1", "EndpointSlice"),
            Kind::Nodes => ("v1", "Node"),
        }
    }
}

/// Objects the double stores (the k8s-openapi types the tests build).
pub trait Stored: Serialize {
    const KIND: Kind;
    fn meta_mut(&mut self) -> &mut ObjectMeta;
}

impl Stored for Service {
    const KIND: Kind = Kind::Services;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Stored for EndpointSlice {
    const KIND: Kind = Kind::EndpointSlices;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Stored for Node {
    const KIND: Kind = Kind::Nodes;
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// One stored object, serialized once (with its resourceVersion) when written.
#[derive(Clone, Debug)]
struct Entry {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    json: Arc<str>,
}

#[derive(Debug)]
struct LoggedEvent {
    rv: u64,
    kind: Kind,
    kind_type: &'static str,
    entry: Entry,
    /// The state before a MODIFIED: a watch with a selector sees an object that starts or
    /// stops matching as ADDED or DELETED, as the API server sends it.
    previous: Option<Entry>,
}

#[derive(Clone, Debug)]
enum Signal {
    Event(Arc<LoggedEvent>),
    Bookmark(u64),
    /// Compaction happened: open watches get 410 Gone.
    Expire,
    /// Cut every stream without a clean end.
    Drop,
}

struct State {
    rv: u64,
    /// Watches from before this resourceVersion, and continue tokens issued before it, are
    /// answered with 410 Gone.
    compacted: u64,
    objects: [BTreeMap<(String, String), Entry>; 3],
    log: Vec<Arc<LoggedEvent>>,
    requests: Vec<String>,
    page_delay: Duration,
}

struct Shared {
    state: Mutex<State>,
    signals: broadcast::Sender<Signal>,
    down: AtomicBool,
    /// Per resource: lists wait while true.
    holds: watch::Sender<[bool; 3]>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running double. Dropping it stops the accept loop (open connections end with it).
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = self.shared.signals.send(Signal::Drop);
    }
}

impl ApiServer {
    /// Binds 127.0.0.1 on a free port and serves on the current tokio runtime.
    pub async fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind the API double: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
        let (signals, _) = broadcast::channel(1 << 16);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1,
                compacted: 0,
                objects: Default::default(),
                log: Vec::new(),
                requests: Vec::new(),
                page_delay: Duration::ZERO,
            }),
            signals,
            down: AtomicBool::new(false),
            holds: watch::channel([false; 3]).0,
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        ApiServer { addr, shared, accept }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server (plain HTTP on loopback, no credentials).
    pub fn client(&self) -> kube::Client {
        let uri = self.url().parse().unwrap_or_else(|e| panic!("server url: {e}"));
        kube::Client::try_from(kube::Config::new(uri)).unwrap_or_else(|e| panic!("kube client: {e}"))
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.state().rv
    }

    /// Creates or replaces an object (ADDED or MODIFIED) and returns its resourceVersion.
    pub fn apply<T: Stored>(&self, mut obj: T) -> u64 {
        let mut st = self.shared.state();
        st.rv += 1;
        let rv = st.rv;
        let meta = obj.meta_mut();
        meta.resource_version = Some(rv.to_string());
        let namespace = if T::KIND == Kind::Nodes { String::new() } else { meta.namespace.clone().unwrap_or_else(|| "default".into()) };
        let name = meta.name.clone().unwrap_or_default();
        let labels = meta.labels.clone().unwrap_or_default();
        let json: Arc<str> = serde_json::to_string(&obj).unwrap_or_else(|e| panic!("serialize: {e}")).into();
        let entry = Entry { namespace: namespace.clone(), name: name.clone(), labels, json };
        let previous = st.objects[T::KIND.slot()].insert((namespace, name), entry.clone());
        let kind_type = if previous.is_some() { "MODIFIED" } else { "ADDED" };
        self.log(&mut st, LoggedEvent { rv, kind: T::KIND, kind_type, entry, previous });
        rv
    }

    /// Deletes an object (DELETED, carrying its last state); false when absent.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        let mut st = self.shared.state();
        let ns = if kind == Kind::Nodes { String::new() } else { namespace.to_string() };
        let Some(entry) = st.objects[kind.slot()].remove(&(ns, name.to_string())) else { return false };
        st.rv += 1;
        let rv = st.rv;
        self.log(&mut st, LoggedEvent { rv, kind, kind_type: "DELETED", entry, previous: None });
        true
    }

    fn log(&self, st: &mut State, ev: LoggedEvent) {
        let ev = Arc::new(ev);
        st.log.push(Arc::clone(&ev));
        // Sent under the lock, so a watch that subscribes under the same lock sees every
        // event exactly once: either in its backlog or live.
        let _ = self.shared.signals.send(Signal::Event(ev));
    }

    /// Sends a BOOKMARK at the current resourceVersion to every watch that asked for them.
    pub fn bookmark(&self) -> u64 {
        let st = self.shared.state();
        let _ = self.shared.signals.send(Signal::Bookmark(st.rv));
        st.rv
    }

    /// Forgets the event history up to now (what etcd compaction does): watches from an older
    /// resourceVersion and older continue tokens get 410 Gone.
    pub fn compact(&self) {
        let mut st = self.shared.state();
        st.compacted = st.rv;
        st.log.clear();
    }

    /// Compacts and sends 410 Gone to every open watch: the clients must relist.
    pub fn expire_watches(&self) {
        self.compact();
        let _ = self.shared.signals.send(Signal::Expire);
    }

    /// Cuts every open watch stream mid-body (a load balancer or API server restart).
    pub fn drop_watches(&self) {
        let _ = self.shared.signals.send(Signal::Drop);
    }

    /// While down, every connection is closed as soon as it is accepted and every open stream
    /// is cut: the API server is unreachable.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            let _ = self.shared.signals.send(Signal::Drop);
        }
    }

    /// Makes list requests of `kind` wait until released.
    pub fn hold_lists(&self, kind: Kind, hold: bool) {
        self.shared.holds.send_modify(|h| h[kind.slot()] = hold);
    }

    /// Sleeps this long before answering each list page.
    pub fn set_page_delay(&self, delay: Duration) {
        self.shared.state().page_delay = delay;
    }

    /// Every request target received, in order.
    pub fn requests(&self) -> Vec<String> {
        self.shared.state().requests.clone()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else { continue };
        if shared.down.load(Ordering::SeqCst) {
            drop(sock);
            continue;
        }
        let _ = sock.set_nodelay(true);
        tokio::spawn(serve_conn(sock, Arc::clone(&shared)));
    }
}

/// One connection: requests in sequence (keep-alive) until a watch, which ends it.
async fn serve_conn(mut sock: TcpStream, shared: Arc<Shared>) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let head = match read_head(&mut sock, &mut buf).await {
            Some(h) => h,
            None => return,
        };
        if shared.down.load(Ordering::SeqCst) {
            return;
        }
        let Some(target) = head.lines().next().and_then(|l| {
            let mut parts = l.split(' ');
            match (parts.next(), parts.next()) {
                (Some("GET"), Some(t)) => Some(t.to_string()),
                _ => None,
            }
        }) else {
            let _ = respond(&mut sock, 405, &status_json(405, "MethodNotAllowed", "only GET is served")).await;
            return;
        };
        shared.state().requests.push(target.clone());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let params = parse_query(query);
        let Some(kind) = Kind::from_path(path) else {
            if respond(&mut sock, 404, &status_json(404, "NotFound", "no such resource")).await.is_err() {
                return;
            }
            continue;
        };
        let selector = match params
            .get("fieldSelector")
            .map(|s| parse_selector(s))
            .transpose()
            .and_then(|sel| {
                let mut sel = sel.unwrap_or_default();
                if let Some(l) = params.get("labelSelector") {
                    sel.labels = parse_labels(l)?;
                }
                Ok(sel)
            }) {
            Ok(s) => s,
            Err(msg) => {
                if respond(&mut sock, 400, &status_json(400, "BadRequest", &msg)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
            serve_watch(sock, &shared, kind, &params, &selector).await;
            return;
        }
        let (code, body) = list(&shared, kind, &params, &selector).await;
        if respond(&mut sock, code, &body).await.is_err() {
            return;
        }
    }
}

/// Reads one request head (no request bodies: only GETs are served).
async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn respond(sock: &mut TcpStream, code: u16, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await
}

fn status_json(code: u16, reason: &str, message: &str) -> String {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
    .to_string()
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Field selector `metadata.name=X` / `metadata.namespace=Y`, and label selector terms
/// `k=v`, `k!=v`, `k`, `!k`; comma-separated terms all apply.
#[derive(Default, Debug)]
struct Selector {
    name: Option<String>,
    namespace: Option<String>,
    labels: Vec<LabelTerm>,
}

#[derive(Debug)]
enum LabelTerm {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    fn matches(&self, e: &Entry) -> bool {
        self.name.as_ref().is_none_or(|n| *n == e.name)
            && self.namespace.as_ref().is_none_or(|n| *n == e.namespace)
            && self.labels.iter().all(|t| match t {
                LabelTerm::Equals(k, v) => e.labels.get(k) == Some(v),
                LabelTerm::NotEquals(k, v) => e.labels.get(k) != Some(v),
                LabelTerm::Exists(k) => e.labels.contains_key(k),
                LabelTerm::Absent(k) => !e.labels.contains_key(k),
            })
    }
}

fn parse_labels(s: &str) -> Result<Vec<LabelTerm>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            if let Some((k, v)) = t.split_once("!=") {
                Ok(LabelTerm::NotEquals(k.into(), v.into()))
            } else if let Some((k, v)) = t.split_once('=') {
                Ok(LabelTerm::Equals(k.into(), v.trim_start_matches('=').into()))
            } else if let Some(k) = t.strip_prefix('!') {
                Ok(LabelTerm::Absent(k.into()))
            } else if t.contains(' ') || t.contains('(') {
                Err(format!("unsupported label selector {t:?}"))
            } else {
                Ok(LabelTerm::Exists(t.into()))
            }
        })
        .collect()
}

fn parse_selector(s: &str) -> Result<Selector, String> {
    let mut sel = Selector::default();
    for term in s.split(',').filter(|t| !t.is_empty()) {
        let (field, value) = term.split_once('=').ok_or_else(|| format!("unsupported field selector {term:?}"))?;
        let value = value.trim_start_matches('=').to_string();
        match field {
            "metadata.name" => sel.name = Some(value),
            "metadata.namespace" => sel.namespace = Some(value),
            other => return Err(format!("field label not supported: {other}")),
        }
    }
    Ok(sel)
}

async fn list(shared: &Shared, kind: Kind, params: &BTreeMap<String, String>, selector: &Selector) -> (u16, String) {
    let mut holds = shared.holds.subscribe();
    while holds.borrow_and_update()[kind.slot()] {
        if holds.changed().await.is_err() {
            break;
        }
    }
    let delay = shared.state().page_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let st = shared.state();
    let limit = params.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    // The continue token is "<list resourceVersion>/<namespace>/<name of the last item sent>".
    let (list_rv, after) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let mut parts = token.splitn(3, '/');
            let parsed = match (parts.next().and_then(|r| r.parse::<u64>().ok()), parts.next(), parts.next()) {
                (Some(rv), Some(ns), Some(name)) => Some((rv, (ns.to_string(), name.to_string()))),
                _ => None,
            };
            match parsed {
                Some((rv, _)) if rv < st.compacted => {
                    return (
                        410,
                        status_json(410, "Expired", "The provided continue parameter is too old to display a consistent list result."),
                    );
                }
                Some((rv, key)) => (rv, Some(key)),
                None => return (400, status_json(400, "BadRequest", "invalid continue token")),
            }
        }
        None => (st.rv, None),
    };
    let objects = &st.objects[kind.slot()];
    let range: Box<dyn Iterator<Item = &Entry>> = match &after {
        Some(key) => Box::new(objects.range::<(String, String), _>((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded)).map(|(_, e)| e)),
        None => Box::new(objects.values()),
    };
    let mut matching = range.filter(|e| selector.matches(e));
    let mut items = String::new();
    let mut last = None;
    let mut count = 0;
    for e in matching.by_ref() {
        if !items.is_empty() {
            items.push(',');
        }
        items.push_str(&e.json);
        last = Some(e);
        count += 1;
        if count == limit {
            break;
        }
    }
    let more = count == limit && matching.next().is_some();
    let cont = match (more, last) {
        (true, Some(e)) => format!("{list_rv}/{}/{}", e.namespace, e.name),
        _ => String::new(),
    };
    let (api_version, list_kind) = kind.list_head();
    let meta = serde_json::json!({ "resourceVersion": list_rv.to_string(), "continue": cont });
    (200, format!(r#"{{"apiVersion":"{api_version}","kind":"{list_kind}","metadata":{meta},"items":[{items}]}}"#))
}

/// How a watch with `selector` sees `ev`: an object entering the selection is ADDED, one
/// leaving it is DELETED, one outside it is not seen at all.
fn seen_as(ev: &LoggedEvent, selector: &Selector) -> Option<&'static str> {
    let now = selector.matches(&ev.entry);
    match (ev.kind_type, ev.previous.as_ref().map(|p| selector.matches(p))) {
        ("MODIFIED", Some(false)) if now => Some("ADDED"),
        ("MODIFIED", Some(true)) if !now => Some("DELETED"),
        (t, _) if now => Some(t),
        _ => None,
    }
}

fn event_line(kind_type: &str, object: &str) -> String {
    format!("{{\"type\":\"{kind_type}\",\"object\":{object}}}\n")
}

async fn write_chunk(sock: &mut TcpStream, data: &str) -> std::io::Result<()> {
    sock.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes()).await
}

async fn serve_watch(
    mut sock: TcpStream,
    shared: &Shared,
    kind: Kind,
    params: &BTreeMap<String, String>,
    selector: &Selector,
) {
    let from: u64 = params.get("resourceVersion").and_then(|r| r.parse().ok()).unwrap_or(0);
    let bookmarks = params.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    if sock.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let (mut signals, backlog, expired) = {
        let st = shared.state();
        let expired = from < st.compacted;
        let backlog: Vec<Arc<LoggedEvent>> = st.log.iter().filter(|e| e.rv > from && e.kind == kind).cloned().collect();
        (shared.signals.subscribe(), backlog, expired)
    };
    if expired {
        let msg = format!("too old resource version: {from}");
        let _ = write_chunk(&mut sock, &event_line("ERROR", &status_json(410, "Expired", &msg))).await;
        let _ = sock.write_all(b"0\r\n\r\n").await;
        return;
    }
    for ev in backlog {
        let Some(kind_type) = seen_as(&ev, selector) else { continue };
        if write_chunk(&mut sock, &event_line(kind_type, &ev.entry.json)).await.is_err() {
            return;
        }
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        let signal = tokio::select! {
            s = signals.recv() => s,
            () = &mut deadline => {
                // The server-side timeout: a clean end, the client re-watches from where it was.
                let _ = sock.write_all(b"0\r\n\r\n").await;
                return;
            }
        };
        let line = match signal {
            Ok(Signal::Event(ev)) => {
                if ev.kind != kind || ev.rv <= from {
                    continue;
                }
                let Some(kind_type) = seen_as(&ev, selector) else { continue };
                event_line(kind_type, &ev.entry.json)
            }
            Ok(Signal::Bookmark(rv)) => {
                if !bookmarks {
                    continue;
                }
                let (api_version, k) = kind.object_head();
                let obj = serde_json::json!({
                    "apiVersion": api_version, "kind": k, "metadata": { "resourceVersion": rv.to_string() }
                });
                event_line("BOOKMARK", &obj.to_string())
            }
            Ok(Signal::Expire) => {
                let msg = "too old resource version: watch history compacted";
                let _ = write_chunk(&mut sock, &event_line("ERROR", &status_json(410, "Expired", msg))).await;
                let _ = sock.write_all(b"0\r\n\r\n").await;
                return;
            }
            // A lagging watcher is closed, as the API server closes slow watchers.
            Ok(Signal::Drop) | Err(_) => return,
        };
        if write_chunk(&mut sock, &line).await.is_err() {
            return;
        }
    }
}
