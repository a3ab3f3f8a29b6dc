//! HTTP/1.1 keep-alive requests, for open-loop load against ordinary web servers (the peer
//! benchmark's nginx backends) rather than `serve`'s frames.
//!
//! Only what one request in flight per connection needs: a fixed `GET` written as one buffer,
//! and an incremental response reader that finds the head's end (CRLFCRLF), then counts
//! `Content-Length` body bytes without keeping them. Chunked bodies and bodies delimited by
//! the connection's close are refused with a clear error: neither fits a keep-alive latency
//! measurement against a static page, and guessing would hide a misconfigured target.

use std::fmt;

/// Longest response head accepted: a server sending more is not the static page this is for.
const MAX_HEAD: usize = 16 * 1024;

/// The request written for every job on an HTTP connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    bytes: Vec<u8>,
}

impl HttpRequest {
    /// A keep-alive `GET path` with `Host: host`; path and host must be printable ASCII
    /// without spaces (they go on the wire as they are).
    pub fn get(path: &str, host: &str) -> Result<HttpRequest, String> {
        let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        if !printable(path) || !path.starts_with('/') {
            return Err(format!("HTTP path {path:?}: must start with / and be printable ASCII without spaces"));
        }
        if !printable(host) {
            return Err(format!("HTTP host {host:?}: must be printable ASCII without spaces"));
        }
        let text = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tpvs-loadtest\r\nConnection: keep-alive\r\n\r\n");
        Ok(HttpRequest { bytes: text.into_bytes() })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A whole response: its status and whether the connection may carry the next request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub keep_alive: bool,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a response could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// The status line is not `HTTP/1.x NNN ...`.
    StatusLine(String),
    /// A header line without a colon, or with an unusable value.
    Header(String),
    /// The head grew past [`MAX_HEAD`] without ending.
    HeadTooLong,
    /// `Transfer-Encoding` is set (chunked): not supported.
    Chunked,
    /// Neither `Content-Length` nor chunked on a response that has a body: it would end only
    /// when the server closes the connection.
    NoLength(u16),
    /// Bytes after the end of the response, though only one request was in flight.
    Trailing(usize),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::StatusLine(l) => write!(f, "not an HTTP/1.x status line: {l:?}"),
            HttpError::Header(l) => write!(f, "bad HTTP header line: {l:?}"),
            HttpError::HeadTooLong => write!(f, "HTTP response head longer than {MAX_HEAD} bytes"),
            HttpError::Chunked => {
                write!(f, "chunked HTTP response: not supported (serve a file, so the server sends Content-Length)")
            }
            HttpError::NoLength(s) => {
                write!(f, "HTTP {s} response with neither Content-Length nor chunked encoding: its end cannot be found")
            }
            HttpError::Trailing(n) => write!(f, "{n} bytes after the HTTP response, with no other request in flight"),
        }
    }
}

impl std::error::Error for HttpError {}

/// Reads one response from successive pieces of the byte stream.
#[derive(Debug, Default)]
pub struct ResponseReader {
    head: Vec<u8>,
    /// Set once the head is parsed: the response and the body bytes still to come.
    body: Option<(Response, u64)>,
}

impl ResponseReader {
    /// Consumes `input` (the next bytes read from the connection). `Ok(None)`: more bytes are
    /// needed; `Ok(Some(response))`: the response ended exactly at the end of `input`.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<Response>, HttpError> {
        let mut rest = input;
        if self.body.is_none() {
            let searched = self.head.len().saturating_sub(3);
            self.head.extend_from_slice(rest);
            let Some(at) = find_head_end(&self.head, searched) else {
                if self.head.len() > MAX_HEAD {
                    return Err(HttpError::HeadTooLong);
                }
                return Ok(None);
            };
            let end = at + 4;
            let previously = self.head.len() - rest.len();
            // What of `input` lies past the head: the start of the body. The head cannot end
            // before `input` began (it would have been found by the previous call).
            rest = rest.get(end.saturating_sub(previously)..).unwrap_or_default();
            let parsed = parse_head(&self.head[..end])?;
            self.head.clear();
            self.body = Some(parsed);
        }
        let Some((response, remaining)) = self.body.as_mut() else { return Ok(None) };
        let take = (*remaining).min(rest.len() as u64);
        *remaining -= take;
        let extra = rest.len() - take as usize;
        if *remaining > 0 {
            return Ok(None);
        }
        let done = *response;
        self.body = None;
        if extra > 0 {
            return Err(HttpError::Trailing(extra));
        }
        Ok(Some(done))
    }
}

/// Index of the CRLFCRLF ending the head, searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + from)
}

/// Status and body length from a whole head (status line, headers, blank line).
fn parse_head(head: &[u8]) -> Result<(Response, u64), HttpError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let (version, status) = parse_status_line(status_line)?;
    let mut length: Option<u64> = None;
    let mut close = version == "HTTP/1.0";
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else { return Err(HttpError::Header(line.to_string())) };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value.parse::<u64>().map_err(|_| HttpError::Header(line.to_string()))?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::Header(line.to_string()));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity") {
            return Err(HttpError::Chunked);
        } else if name.eq_ignore_ascii_case("connection") {
            let tokens = || value.split(',').map(str::trim);
            if tokens().any(|t| t.eq_ignore_ascii_case("close")) {
                close = true;
            } else if tokens().any(|t| t.eq_ignore_ascii_case("keep-alive")) {
                close = false;
            }
        }
    }
    // 1xx, 204 and 304 never have a body (RFC 9112 §6.3).
    let bodiless = status < 200 || status == 204 || status == 304;
    let body = match (bodiless, length) {
        (true, _) => 0,
        (false, Some(n)) => n,
        (false, None) => return Err(HttpError::NoLength(status)),
    };
    Ok((Response { status, keep_alive: !close }, body))
}

fn parse_status_line(line: &str) -> Result<(&str, u16), HttpError> {
    let bad = || HttpError::StatusLine(line.chars().take(80).collect());
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().filter(|v| *v == "HTTP/1.1" || *v == "HTTP/1.0").ok_or_else(bad)?;
    let code = parts.next().filter(|c| c.len() == 3).ok_or_else(bad)?;
    let status = code.parse::<u16>().ok().filter(|s| (100..600).contains(s)).ok_or_else(bad)?;
    Ok((version, status))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello";

    fn feed_in_pieces(reader: &mut ResponseReader, bytes: &[u8], piece: usize) -> Result<Vec<Response>, HttpError> {
        let mut done = Vec::new();
        for chunk in bytes.chunks(piece) {
            if let Some(r) = reader.feed(chunk)? {
                done.push(r);
            }
        }
        Ok(done)
    }

    #[test]
    fn whole_response_in_one_read() {
        let mut r = ResponseReader::default();
        assert_eq!(r.feed(OK), Ok(Some(Response { status: 200, keep_alive: true })));
    }

    /// Every split point, down to one byte per read (the CRLFCRLF itself split), gives the
    /// same single response, at the last byte and not before.
    #[test]
    fn split_reads_anywhere() {
        for piece in 1..OK.len() {
            let mut r = ResponseReader::default();
            let done = feed_in_pieces(&mut r, OK, piece).unwrap_or_else(|e| panic!("piece {piece}: {e}"));
            assert_eq!(done, vec![Response { status: 200, keep_alive: true }], "piece {piece}");
        }
    }

    /// The body is counted by Content-Length, and the reader is ready for the next response
    /// on the same keep-alive connection.
    #[test]
    fn content_length_and_keep_alive_reuse() {
        let mut r = ResponseReader::default();
        assert_eq!(r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab"), Ok(None));
        assert_eq!(r.feed(b"c"), Ok(Some(Response { status: 200, keep_alive: true })));
        assert_eq!(r.feed(b"HTTP/1.1 204 No Content\r\n\r\n"), Ok(Some(Response { status: 204, keep_alive: true })));
        let big = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n";
        assert_eq!(r.feed(big), Ok(None));
        assert_eq!(r.feed(&[b'x'; 99_999]), Ok(None));
        assert_eq!(r.feed(b"x"), Ok(Some(Response { status: 200, keep_alive: true })));
    }

    #[test]
    fn close_and_status_are_reported() {
        let mut r = ResponseReader::default();
        let closing = b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let got = r.feed(closing);
        assert_eq!(got, Ok(Some(Response { status: 503, keep_alive: false })));
        assert!(!got.ok().flatten().is_some_and(|x| x.is_success()));
        assert_eq!(r.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"), Ok(Some(Response { status: 200, keep_alive: false })));
    }

    /// A reply and the test its error must pass.
    type Case = (&'static [u8], fn(&HttpError) -> bool);

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let cases: [Case; 7] = [
            (b"TPLR\0\0\0\0\0\0\0\0\0\0\0\0\r\n\r\n", |e| matches!(e, HttpError::StatusLine(_))),
            (b"HTTP/1.1 2000 OK\r\n\r\n", |e| matches!(e, HttpError::StatusLine(_))),
            (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", |e| matches!(e, HttpError::Header(_))),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", |e| matches!(e, HttpError::Header(_))),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", |e| *e == HttpError::Chunked),
            (b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", |e| *e == HttpError::NoLength(200)),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab", |e| *e == HttpError::Trailing(1)),
        ];
        for (bytes, expected) in cases {
            let got = ResponseReader::default().feed(bytes);
            match got {
                Err(e) => assert!(expected(&e), "{:?}: unexpected error {e}", String::from_utf8_lossy(bytes)),
                Ok(r) => panic!("{:?} was accepted: {r:?}", String::from_utf8_lossy(bytes)),
            }
        }
        // A head that never ends is cut off, not buffered forever.
        let mut r = ResponseReader::default();
        let mut result = Ok(None);
        for _ in 0..100 {
            result = r.feed(&[b'a'; 1024]);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(HttpError::HeadTooLong));
    }

    #[test]
    fn request_is_one_keep_alive_get() {
        let req = HttpRequest::get("/index.html", "10.96.1.10").unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(req.bytes());
        assert!(text.starts_with("GET /index.html HTTP/1.1\r\nHost: 10.96.1.10\r\n"), "{text}");
        assert!(text.ends_with("Connection: keep-alive\r\n\r\n"), "{text}");
        assert!(HttpRequest::get("no-slash", "h").is_err());
        assert!(HttpRequest::get("/a b", "h").is_err());
        assert!(HttpRequest::get("/", "bad\r\nhost").is_err());
    }
}
