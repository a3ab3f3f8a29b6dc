//! DNS backends for the lab: dnsmasq in a backend namespace, and `dig` from any namespace.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Lab, try_sh};

/// The one name every lab dnsmasq answers.
pub const DNS_NAME: &str = "backend.tpvs.test";

/// dnsmasq in backend namespace `k`, answering `DNS_NAME` with the backend's own address (so an
/// answer names the backend that gave it); killed on drop.
pub struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn dnsmasq(lab: &Lab, k: usize) -> Dnsmasq {
    let conf = lab.dir.join(format!("dnsmasq-be{k}.conf"));
    let text = format!(
        "# be{k}: an authoritative answer for one name, nothing else (no upstream, no hosts file).\n\
         port=53\nlisten-address=10.1.{k}.2\nlisten-address=fd01:{k}::2\nbind-interfaces\n\
         no-resolv\nno-hosts\nno-poll\npid-file=\naddress=/{DNS_NAME}/10.1.{k}.2\n"
    );
    std::fs::write(&conf, text).unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
    let log = std::fs::File::create(lab.dir.join(format!("dnsmasq-be{k}.log"))).unwrap_or_else(|e| panic!("{e}"));
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.backends[k], "dnsmasq", "--keep-in-foreground", "--user=root"])
        .arg(format!("--conf-file={}", conf.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn dnsmasq: {e}"));
    let d = Dnsmasq(child);
    // Ready when it answers inside its own namespace.
    let ns = lab.backends[k].clone();
    let ready = lab.wait_for(Duration::from_secs(10), || {
        let out = dig_in(&ns, &format!("10.1.{k}.2"), "A").ok()?;
        (out == format!("10.1.{k}.2")).then_some(())
    });
    assert!(ready.is_some(), "dnsmasq in be{k} never answered");
    d
}

/// `dig +short` from namespace `ns` to `server`; the answer's first line.
pub fn dig_in(ns: &str, server: &str, qtype: &str) -> Result<String, String> {
    let out = try_sh(&["ip", "netns", "exec", ns, "dig", &format!("@{server}"), DNS_NAME, qtype, "+short", "+time=1", "+tries=2"])?;
    let first = out.lines().next().unwrap_or("").trim().to_string();
    if first.is_empty() || first.starts_with(';') { Err(format!("no answer: {out}")) } else { Ok(first) }
}
