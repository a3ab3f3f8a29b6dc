//! A blocking HTTP/1.0 GET for the admin tests, from inside a lab namespace: small enough to
//! read, and independent of the server under test.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::lab::in_netns;

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// GET `path` from `addr`, connecting from network namespace `ns`.
pub fn get(ns: &str, addr: &str, path: &str) -> io::Result<Reply> {
    let addr: SocketAddr = addr.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, addr.to_string()))?;
    let mut stream = in_netns(ns, || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&String::from_utf8_lossy(&raw))
}

fn parse(raw: &str) -> io::Result<Reply> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad HTTP reply: {raw:?}"));
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(bad)?;
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Reply { status, headers, body: body.to_string() })
}

/// Percent-encodes a query-string value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Polls `path` on `addr` from `ns` until `want` accepts a reply.
pub fn wait_reply(lab: &crate::lab::Lab, ns: &str, addr: &str, path: &str, what: &str, want: impl Fn(&Reply) -> bool) -> Reply {
    let mut last = None;
    let got = lab.wait_for(Duration::from_secs(15), || match get(ns, addr, path) {
        Ok(r) if want(&r) => Some(r),
        other => {
            last = Some(format!("{other:?}"));
            None
        }
    });
    got.unwrap_or_else(|| panic!("{what}: {addr}{path} never answered as expected; last: {last:?}\nlog:\n{}", lab.tpvs_log()))
}
