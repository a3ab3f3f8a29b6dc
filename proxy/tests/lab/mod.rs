//! A network-namespace lab for end-to-end tests of `tpvs run`.
//!
//! Topology (every test gets its own copy; names carry the pid and a counter, so tests run in
//! parallel and the same addresses are reused safely inside each copy):
//!
//! ```text
//!  client 10.0.0.2 / fd00::2 ── node 10.0.0.1 / fd00::1 (runs `tpvs run`, nodeName node1)
//!                                 ├── beK 10.1.K.2 / fd01:K::2   (K = 0..backends, local endpoints)
//!                                 └── node2 10.2.0.2 / fd02::2   (nodeName node2, remote endpoint)
//! ```
//!
//! Backends and node2 route everything via the node, so replies to a spoofed client address
//! come back through it. The node has no default route: nothing the tests send can leave the
//! lab. Everything is removed in `Drop`, on panic too.

#![allow(dead_code)]

pub mod dns;
pub mod load;

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Service port every test Service uses, and the port backends listen on.
pub const SVC_PORT: u16 = 80;
pub const BACKEND_PORT: u16 = 8080;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A lab with `backends` backend namespaces and servers on the `serving` ones, or None when
/// the end-to-end tests are switched off.
pub fn lab(backends: usize, serving: &[usize]) -> Option<Lab> {
    if !e2e_enabled() {
        return None;
    }
    let mut lab = Lab::new(backends);
    for &k in serving {
        lab.serve(k);
    }
    Some(lab)
}

/// Whether the e2e tests can run here. Without root or the tools they fail with a clear
/// message, unless `TPVS_SKIP_E2E=1` says to skip (then the test returns early and passes).
pub fn e2e_enabled() -> bool {
    let skip = std::env::var("TPVS_SKIP_E2E").is_ok_and(|v| v == "1");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let nft = Command::new("nft").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    let ip = Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if root && nft && ip {
        return true;
    }
    let why = format!("root: {root}, nft (nftables): {nft}, ip (iproute2): {ip}");
    if skip {
        eprintln!("skipping end-to-end test ({why}); TPVS_SKIP_E2E=1");
        return false;
    }
    panic!("end-to-end tests need root and the nftables and iproute2 packages ({why}); set TPVS_SKIP_E2E=1 to skip them");
}

/// The `tpvs` binary the lab runs: this build's, or `TPVS_BIN` (a benchmark runs a release
/// build under debug-built tests).
pub fn tpvs_bin() -> String {
    std::env::var("TPVS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tpvs").to_string())
}

/// Runs a command; panics with its stderr when it fails (lab setup must not half-succeed).
pub fn sh(args: &[&str]) -> String {
    match try_sh(args) {
        Ok(out) => out,
        Err(e) => panic!("{e}"),
    }
}

pub fn try_sh(args: &[&str]) -> Result<String, String> {
    let (prog, rest) = args.split_first().ok_or_else(|| "empty command".to_string())?;
    let out = Command::new(prog).args(rest).output().map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`. Sockets created there stay
/// in that namespace whichever thread uses them later.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        let handle = s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: a valid namespace fd; CLONE_NEWNET only changes this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", io::Error::last_os_error());
            f()
        });
        match handle.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// A TCP server in a namespace: on each connection it writes `"<name> <peer addr>\n"`, then
/// echoes until the client half-closes, then closes.
pub struct Server {
    pub name: String,
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    listener: Arc<TcpListener>,
}

impl Server {
    pub fn start(ns: &str, name: &str, addr: SocketAddr) -> Server {
        let listener = in_netns(ns, || TcpListener::bind(addr)).unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"));
        let listener = Arc::new(listener);
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, acc, st, nm) = (Arc::clone(&listener), Arc::clone(&accepted), Arc::clone(&stop), name.to_string());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                acc.fetch_add(1, Ordering::Relaxed);
                let nm = nm.clone();
                std::thread::spawn(move || {
                    let peer = match conn.peer_addr() {
                        Ok(p) => p.to_string(),
                        Err(_) => return,
                    };
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                    if conn.write_all(format!("{nm} {peer}\n").as_bytes()).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 16384];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        Server { name: name.to_string(), addr, accepted, stop, listener }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocked accept() (Linux returns EINVAL on a shut-down listener).
        // SAFETY: a valid listening fd, owned by `listener`.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// A TCP socket from namespace `ns`, connected to `dst` (5 s read and write timeouts).
pub fn connect_in(ns: &str, dst: &str, timeout: Duration) -> io::Result<TcpStream> {
    let dst: SocketAddr = dst.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, dst.to_string()))?;
    let domain = if dst.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let sock = in_netns(ns, || socket2::Socket::new(domain, socket2::Type::STREAM, None))?;
    sock.connect_timeout(&dst.into(), timeout)?;
    let stream: TcpStream = sock.into();
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

/// Waits (bounded) for `child` (a tpvs the lab no longer tracks) to exit by itself; its exit
/// status, or None when it had to be killed.
pub fn wait_child(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// What a backend said on connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub backend: String,
    pub peer: SocketAddr,
}

pub fn parse_hello(line: &str) -> io::Result<Hello> {
    let mut parts = line.split_whitespace();
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad hello {line:?}"));
    let backend = parts.next().ok_or_else(bad)?.to_string();
    let peer = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    Ok(Hello { backend, peer })
}

/// An open connection through the proxy.
pub struct Conn {
    pub hello: Hello,
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Writes `msg` and reads the echo back.
    pub fn echo(&mut self, msg: &str) -> io::Result<String> {
        self.reader.get_mut().write_all(msg.as_bytes())?;
        let mut buf = vec![0u8; msg.len()];
        self.reader.read_exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Sends `data` from another thread, then half-closes, while this one reads everything
    /// the backend sends back until it closes.
    pub fn send_and_finish(mut self, data: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut writer = self.reader.get_ref().try_clone()?;
        let sender = std::thread::spawn(move || -> io::Result<()> {
            writer.write_all(&data)?;
            writer.shutdown(Shutdown::Write)
        });
        let mut rest = Vec::new();
        let read = self.reader.read_to_end(&mut rest);
        match sender.join() {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::other("sender panicked")),
        }
        read.map(|_| rest)
    }

    /// Half-closes, then reads what the backend still sends until it closes.
    pub fn finish(mut self) -> io::Result<Vec<u8>> {
        self.reader.get_ref().shutdown(Shutdown::Write)?;
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest)?;
        Ok(rest)
    }
}

pub struct Lab {
    pub id: String,
    pub client: String,
    pub node: String,
    pub node2: String,
    pub backends: Vec<String>,
    pub dir: PathBuf,
    pub manifests: PathBuf,
    servers: Vec<Server>,
    tpvs: Option<Child>,
    namespaces: Vec<String>,
    /// Who `tpvs run` runs as (root with every capability unless a test says otherwise).
    pub privileges: Privileges,
    /// A command `tpvs run` is started under inside the node namespace (e.g. `prlimit
    /// --nofile=256:256`); empty for none.
    pub wrapper: Vec<String>,
    /// The source arguments `tpvs run` was last started with (a successor repeats them).
    last_source: Vec<String>,
    /// How many successors were started (each logs to its own file).
    generation: usize,
    /// The generation whose log `tpvs_log` reads (the tracked instance's).
    current: usize,
}

/// Who `tpvs run` runs as in the lab.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Privileges {
    #[default]
    Root,
    /// uid 0 holding only the capabilities `deploy/daemonset.yaml` adds, with no_new_privs:
    /// exactly how the DaemonSet's container runs it.
    DaemonSet,
    /// A non-root uid (nobody) holding the DaemonSet's capabilities as ambient ones.
    DaemonSetNonRoot,
}

/// The capabilities `deploy/daemonset.yaml` adds to the tpvs container, as named there.
pub fn daemonset_capabilities() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ds: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let containers = ds["spec"]["template"]["spec"]["containers"].as_sequence().cloned().unwrap_or_default();
    let tpvs = containers.iter().find(|c| c["name"].as_str() == Some("tpvs")).unwrap_or_else(|| panic!("no tpvs container in {}", path.display()));
    let add = tpvs["securityContext"]["capabilities"]["add"].as_sequence().cloned().unwrap_or_default();
    add.iter().filter_map(|c| c.as_str().map(str::to_string)).collect()
}

/// The `setpriv` prefix that runs a command with `privileges`.
fn setpriv(privileges: Privileges) -> Vec<String> {
    if privileges == Privileges::Root {
        return Vec::new();
    }
    let caps: String = daemonset_capabilities().iter().map(|c| format!(",+{}", c.to_lowercase())).collect();
    let mut args = vec![
        "setpriv".to_string(),
        format!("--inh-caps=-all{caps}"),
        format!("--bounding-set=-all{caps}"),
        "--no-new-privs".to_string(),
    ];
    if privileges == Privileges::DaemonSetNonRoot {
        args.extend(["--reuid=65534".to_string(), "--regid=65534".to_string(), "--clear-groups".to_string(), format!("--ambient-caps=-all{caps}")]);
    }
    args.push("--".to_string());
    args
}

impl Lab {
    /// Builds the topology with `backends` local backend namespaces (no servers yet).
    pub fn new(backends: usize) -> Lab {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:x}{:x}", std::process::id(), n);
        let dir = std::env::temp_dir().join(format!("tpvs-e2e-{id}"));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("create {}: {e}", dir.display());
        }
        let mut lab = Lab {
            client: format!("tpvs-{id}-client"),
            node: format!("tpvs-{id}-node"),
            node2: format!("tpvs-{id}-node2"),
            backends: (0..backends).map(|k| format!("tpvs-{id}-be{k}")).collect(),
            manifests: dir.join("services.yaml"),
            dir,
            id,
            servers: Vec::new(),
            tpvs: None,
            namespaces: Vec::new(),
            privileges: Privileges::Root,
            wrapper: Vec::new(),
            last_source: Vec::new(),
            generation: 0,
            current: 0,
        };
        lab.build();
        lab
    }

    fn add_ns(&mut self, ns: &str) {
        sh(&["ip", "netns", "add", ns]);
        self.namespaces.push(ns.to_string());
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }

    /// A veth pair between two namespaces, with addresses; interface names stay ≤ 15 chars.
    fn link(&self, a_ns: &str, a_if: &str, b_ns: &str, b_if: &str) {
        sh(&["ip", "link", "add", a_if, "netns", a_ns, "type", "veth", "peer", "name", b_if, "netns", b_ns]);
        sh(&["ip", "-n", a_ns, "link", "set", a_if, "up"]);
        sh(&["ip", "-n", b_ns, "link", "set", b_if, "up"]);
    }

    fn addr(ns: &str, dev: &str, cidr: &str) {
        if cidr.contains(':') {
            sh(&["ip", "-n", ns, "-6", "addr", "add", cidr, "dev", dev, "nodad"]);
        } else {
            sh(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev]);
        }
    }

    fn build(&mut self) {
        let (client, node, node2) = (self.client.clone(), self.node.clone(), self.node2.clone());
        for ns in [client.clone(), node.clone(), node2.clone()].iter().chain(self.backends.clone().iter()) {
            self.add_ns(ns);
        }
        let ifn = |role: &str| format!("t{}{role}", self.id);
        // client <-> node
        self.link(&client, &ifn("c"), &node, &ifn("n"));
        Self::addr(&client, &ifn("c"), "10.0.0.2/24");
        Self::addr(&client, &ifn("c"), "fd00::2/64");
        Self::addr(&node, &ifn("n"), "10.0.0.1/24");
        Self::addr(&node, &ifn("n"), "fd00::1/64");
        sh(&["ip", "-n", &client, "route", "add", "default", "via", "10.0.0.1"]);
        sh(&["ip", "-n", &client, "-6", "route", "add", "default", "via", "fd00::1"]);
        // backends
        for (k, be) in self.backends.clone().iter().enumerate() {
            let (b_if, g_if) = (ifn(&format!("b{k}")), ifn(&format!("g{k}")));
            self.link(be, &b_if, &node, &g_if);
            Self::addr(be, &b_if, &format!("10.1.{k}.2/24"));
            Self::addr(be, &b_if, &format!("fd01:{k}::2/64"));
            Self::addr(&node, &g_if, &format!("10.1.{k}.1/24"));
            Self::addr(&node, &g_if, &format!("fd01:{k}::1/64"));
            sh(&["ip", "-n", be, "route", "add", "default", "via", &format!("10.1.{k}.1")]);
            sh(&["ip", "-n", be, "-6", "route", "add", "default", "via", &format!("fd01:{k}::1")]);
        }
        // node <-> node2
        self.link(&node, &ifn("s"), &node2, &ifn("r"));
        Self::addr(&node, &ifn("s"), "10.2.0.1/24");
        Self::addr(&node, &ifn("s"), "fd02::1/64");
        Self::addr(&node2, &ifn("r"), "10.2.0.2/24");
        Self::addr(&node2, &ifn("r"), "fd02::2/64");
        sh(&["ip", "-n", &node2, "route", "add", "default", "via", "10.2.0.1"]);
        sh(&["ip", "-n", &node2, "-6", "route", "add", "default", "via", "fd02::1"]);
    }

    /// Starts the echo server of local backend `k` on 10.1.k.2:8080 (and its IPv6 twin).
    pub fn serve(&mut self, k: usize) {
        let ns = self.backends[k].clone();
        let v4: SocketAddr = format!("10.1.{k}.2:{BACKEND_PORT}").parse().unwrap_or_else(|e| panic!("{e}"));
        let v6: SocketAddr = format!("[fd01:{k}::2]:{BACKEND_PORT}").parse().unwrap_or_else(|e| panic!("{e}"));
        self.servers.push(Server::start(&ns, &format!("be{k}"), v4));
        self.servers.push(Server::start(&ns, &format!("be{k}"), v6));
    }

    /// Starts the remote endpoint on node2 (10.2.0.2:8080 and [fd02::2]:8080).
    pub fn serve_node2(&mut self) {
        let ns = self.node2.clone();
        let v4: SocketAddr = format!("10.2.0.2:{BACKEND_PORT}").parse().unwrap_or_else(|e| panic!("{e}"));
        let v6: SocketAddr = format!("[fd02::2]:{BACKEND_PORT}").parse().unwrap_or_else(|e| panic!("{e}"));
        self.servers.push(Server::start(&ns, "node2", v4));
        self.servers.push(Server::start(&ns, "node2", v6));
    }

    /// Connections accepted by backend `name` so far (both families).
    pub fn accepted(&self, name: &str) -> usize {
        self.servers.iter().filter(|s| s.name == name).map(|s| s.accepted.load(Ordering::Relaxed)).sum()
    }

    /// Replaces the manifests atomically (write + rename), as a config-management tool would.
    pub fn write_manifests(&self, yaml: &str) {
        let tmp = self.dir.join(".services.tmp");
        std::fs::write(&tmp, yaml).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &self.manifests).unwrap_or_else(|e| panic!("rename: {e}"));
    }

    pub fn log_path(&self) -> PathBuf {
        match self.current {
            0 => self.dir.join("tpvs.log"),
            n => self.dir.join(format!("tpvs-{n}.log")),
        }
    }

    /// The log of the instance started `generation` successors ago from the first (0: the
    /// first one).
    pub fn tpvs_log_of(&self, generation: usize) -> String {
        let path = match generation {
            0 => self.dir.join("tpvs.log"),
            n => self.dir.join(format!("tpvs-{n}.log")),
        };
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Starts a second `tpvs run` with exactly the arguments of the running one (plus
    /// `extra`), logging to its own file; returns the running one's process, which the
    /// caller now waits for (the lab tracks the new one).
    pub fn start_successor(&mut self, extra: &[&str]) -> Option<Child> {
        let old = self.tpvs.take();
        self.generation += 1;
        self.current = self.generation;
        let mut source: Vec<String> = self.last_source.clone();
        source.extend(extra.iter().map(|s| s.to_string()));
        let source: Vec<&str> = source.iter().map(String::as_str).collect();
        self.start_tpvs_with(&source);
        old
    }

    /// Starts `tpvs run` in the node namespace, on the lab's manifests, as node1.
    pub fn start_tpvs(&mut self, extra: &[&str]) {
        let manifests = self.manifests.to_string_lossy().into_owned();
        let mut args =
            vec!["--manifests", &manifests, "--hostname-override", "node1", "--manifests-poll-interval", "100ms"];
        // The lab writes its manifests atomically (`write_manifests`): a short settle time
        // keeps tests quick; a test about the settle time sets its own.
        if !extra.contains(&"--manifests-settle") {
            args.extend(["--manifests-settle", "200ms"]);
        }
        args.extend_from_slice(extra);
        self.start_tpvs_with(&args);
    }

    /// Waits (bounded) for the tracked instance to exit by itself and tracks `previous`
    /// (started `generation` successors after the first) again: for a successor that is
    /// refused. Its exit status, or None when it had to be killed.
    pub fn back_to(&mut self, previous: Child, generation: usize, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.tpvs.replace(previous)?;
        self.current = generation;
        let deadline = Instant::now() + within;
        loop {
            match child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// Starts `tpvs run` in the node namespace with the lab's data-path settings; `source`
    /// chooses the table source and node name (e.g. `--kubeconfig F --hostname-override N`).
    pub fn start_tpvs_with(&mut self, source: &[&str]) {
        self.last_source = source.iter().map(|s| s.to_string()).collect();
        let log = File::create(self.log_path()).unwrap_or_else(|e| panic!("log file: {e}"));
        let log2 = log.try_clone().unwrap_or_else(|e| panic!("log file: {e}"));
        let prefix = setpriv(self.privileges);
        let mut args = vec!["netns", "exec", &self.node];
        args.extend(self.wrapper.iter().map(String::as_str));
        args.extend(prefix.iter().map(String::as_str));
        let bin = tpvs_bin();
        args.extend([bin.as_str(), "-v", "run", "--workers", "2", "--connect-timeout", "500ms"]);
        args.extend_from_slice(source);
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn tpvs: {e}"));
        self.tpvs = Some(child);
    }

    /// Sends `sig` to tpvs and waits (bounded) for it to exit; true when it exited 0.
    pub fn stop_tpvs(&mut self, sig: libc::c_int) -> bool {
        let Some(mut child) = self.tpvs.take() else {
            return false;
        };
        let Ok(pid) = libc::pid_t::try_from(child.id()) else {
            return false;
        };
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid, sig) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }

    /// Sends `sig` to tpvs without waiting; false when none runs.
    pub fn signal_tpvs(&self, sig: libc::c_int) -> bool {
        let Some(pid) = self.tpvs.as_ref().and_then(|c| libc::pid_t::try_from(c.id()).ok()) else {
            return false;
        };
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid, sig) == 0 }
    }

    /// Waits (bounded) for tpvs to exit by itself; its exit status, or None when it had to be
    /// killed (or none ran). The lab no longer tracks it either way.
    pub fn wait_tpvs_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.tpvs.take()?;
        let deadline = Instant::now() + within;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// The running daemon's pid (`ip netns exec` execs it in place, so the child is tpvs).
    pub fn tpvs_pid(&self) -> Option<u32> {
        self.tpvs.as_ref().map(Child::id)
    }

    /// Open descriptors and RSS (KiB) of the running daemon.
    pub fn footprint(&self) -> (usize, u64) {
        let pid = self.tpvs_pid().unwrap_or_else(|| panic!("tpvs is not running"));
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0);
        (fds, rss)
    }

    pub fn tpvs_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs a command inside the node namespace.
    pub fn node_sh(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["ip", "netns", "exec", &self.node];
        full.extend_from_slice(args);
        try_sh(&full)
    }

    /// A TCP socket from the client namespace, connected to `dst`.
    pub fn connect_from(&self, ns: &str, dst: &str, timeout: Duration) -> io::Result<TcpStream> {
        connect_in(ns, dst, timeout)
    }

    /// Opens a connection from the client and reads the backend's hello.
    pub fn open(&self, dst: &str) -> io::Result<Conn> {
        self.open_from(&self.client.clone(), dst)
    }

    pub fn open_from(&self, ns: &str, dst: &str) -> io::Result<Conn> {
        let stream = self.connect_from(ns, dst, Duration::from_secs(2))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        Ok(Conn { hello: parse_hello(&line)?, reader })
    }

    /// One whole request: connect, hello, half-close, read to the end.
    pub fn hello(&self, dst: &str) -> io::Result<Hello> {
        let conn = self.open(dst)?;
        let hello = conn.hello.clone();
        conn.finish()?;
        Ok(hello)
    }

    /// Polls `f` until it returns Some or `within` passes.
    pub fn wait_for<T>(&self, within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = f() {
                return Some(v);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `dst` answers through the proxy (tpvs started and rules installed).
    pub fn wait_serving(&self, dst: &str) -> Hello {
        match self.wait_for(Duration::from_secs(15), || self.hello(dst).ok()) {
            Some(h) => h,
            None => panic!("{dst} never answered through tpvs; log:\n{}", self.tpvs_log()),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- tpvs log ({}) ---\n{}", self.id, self.tpvs_log());
        }
        self.stop_tpvs(libc::SIGTERM);
        self.servers.clear();
        for ns in self.namespaces.iter().rev() {
            let _ = try_sh(&["ip", "netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One Service with one port (80 → 8080) and its EndpointSlice, as kubectl prints them.
#[derive(Clone, Debug)]
pub struct Svc {
    pub name: String,
    pub kind: &'static str,
    pub cluster_ip: String,
    pub node_port: Option<u16>,
    pub external_policy: &'static str,
    pub internal_policy: &'static str,
    pub external_ips: Vec<String>,
    pub lb_ingress: Option<String>,
    pub affinity_secs: Option<u32>,
    /// "TCP" or "UDP", and the Service port → target port (80 → 8080 unless changed).
    pub protocol: &'static str,
    pub port: u16,
    pub target_port: u16,
    /// (address, nodeName)
    pub endpoints: Vec<(String, String)>,
    /// Service annotations (e.g. `tpvs/scheduler`), in order.
    pub annotations: Vec<(String, String)>,
}

impl Svc {
    pub fn new(name: &str, cluster_ip: &str) -> Svc {
        Svc {
            name: name.to_string(),
            kind: "ClusterIP",
            cluster_ip: cluster_ip.to_string(),
            node_port: None,
            external_policy: "Cluster",
            internal_policy: "Cluster",
            external_ips: Vec::new(),
            lb_ingress: None,
            affinity_secs: None,
            protocol: "TCP",
            port: SVC_PORT,
            target_port: BACKEND_PORT,
            endpoints: Vec::new(),
            annotations: Vec::new(),
        }
    }

    pub fn annotate(mut self, key: &str, value: &str) -> Svc {
        self.annotations.push((key.to_string(), value.to_string()));
        self
    }

    pub fn endpoint(mut self, addr: &str, node: &str) -> Svc {
        self.endpoints.push((addr.to_string(), node.to_string()));
        self
    }

    pub fn yaml(&self) -> String {
        let v6 = self.cluster_ip.contains(':');
        let mut y = String::new();
        let _ = writeln!(y, "apiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: default", self.name);
        if !self.annotations.is_empty() {
            let _ = writeln!(y, "  annotations:");
            for (k, v) in &self.annotations {
                let _ = writeln!(y, "    {k}: {v:?}");
            }
        }
        let _ = writeln!(y, "spec:\n  type: {}\n  clusterIP: {}\n  clusterIPs:\n  - {}", self.kind, self.cluster_ip, self.cluster_ip);
        let _ = writeln!(y, "  ipFamilies:\n  - {}", if v6 { "IPv6" } else { "IPv4" });
        if self.kind != "ClusterIP" {
            let _ = writeln!(y, "  externalTrafficPolicy: {}", self.external_policy);
        }
        let _ = writeln!(y, "  internalTrafficPolicy: {}", self.internal_policy);
        if !self.external_ips.is_empty() {
            let _ = writeln!(y, "  externalIPs:");
            for ip in &self.external_ips {
                let _ = writeln!(y, "  - {ip}");
            }
        }
        match self.affinity_secs {
            Some(t) => {
                let _ = writeln!(y, "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {t}");
            }
            None => {
                let _ = writeln!(y, "  sessionAffinity: None");
            }
        }
        let _ = writeln!(y, "  ports:\n  - name: http\n    port: {}\n    protocol: {}\n    targetPort: {}", self.port, self.protocol, self.target_port);
        if let Some(np) = self.node_port {
            let _ = writeln!(y, "    nodePort: {np}");
        }
        if let Some(lb) = &self.lb_ingress {
            let _ = writeln!(y, "status:\n  loadBalancer:\n    ingress:\n    - ip: {lb}");
        }
        let _ = writeln!(y, "---");
        let _ = writeln!(
            y,
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {}-abc12\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {}",
            self.name, self.name
        );
        let _ = writeln!(y, "addressType: {}", if v6 { "IPv6" } else { "IPv4" });
        let _ = writeln!(y, "ports:\n- name: http\n  port: {}\n  protocol: {}", self.target_port, self.protocol);
        if self.endpoints.is_empty() {
            let _ = writeln!(y, "endpoints: []");
        } else {
            let _ = writeln!(y, "endpoints:");
            for (addr, node) in &self.endpoints {
                let _ = writeln!(
                    y,
                    "- addresses:\n  - {addr}\n  conditions:\n    ready: true\n    serving: true\n    terminating: false\n  nodeName: {node}"
                );
            }
        }
        y
    }
}

/// The manifests for several Services.
pub fn manifests(svcs: &[Svc]) -> String {
    svcs.iter().map(Svc::yaml).collect::<Vec<_>>().join("---\n")
}

pub fn read_file(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A LoadBalancer Service on `cluster_ip` with ingress `lb`, NodePort `node_port`, one local
/// endpoint (backend 0) and `ranges` as its `loadBalancerSourceRanges`.
pub fn fenced(name: &str, cluster_ip: &str, lb: &str, node_port: u16, ranges: &[&str]) -> String {
    let endpoint = if cluster_ip.contains(':') { "fd01:0::2" } else { "10.1.0.2" };
    let mut svc = Svc::new(name, cluster_ip).endpoint(endpoint, "node1");
    svc.kind = "LoadBalancer";
    svc.node_port = Some(node_port);
    svc.lb_ingress = Some(lb.to_string());
    let yaml = svc.yaml();
    let list: Vec<String> = ranges.iter().map(|r| format!("\"{r}\"")).collect();
    let spec = "spec:\n  type: LoadBalancer\n";
    assert!(yaml.contains(spec), "the lab's Service shape changed:\n{yaml}");
    yaml.replacen(spec, &format!("{spec}  loadBalancerSourceRanges: [{}]\n", list.join(", ")), 1)
}
