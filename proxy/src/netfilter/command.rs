//! Running `nft` and `ip`. They are the stable interfaces to netfilter and policy routing;
//! shelling out keeps tpvs free of netlink bindings, and every call here is on the control path
//! (startup, table change, shutdown), never per connection.

use std::io::Write as _;
use std::process::{Command, Stdio};

use tracing::debug;

use super::RoutingConfig;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run `{program}` ({source}); install the {package} package and run tpvs as root (CAP_NET_ADMIN)")]
    Spawn {
        program: &'static str,
        package: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
}

fn package_of(program: &'static str) -> &'static str {
    match program {
        "nft" => "nftables",
        _ => "iproute2",
    }
}

/// Runs `program args…` with `stdin` fed in; Ok when it exits 0.
fn run(program: &'static str, args: &[&str], stdin: Option<&str>) -> Result<(), CommandError> {
    let spawn_err = |source| CommandError::Spawn { program, package: package_of(program), source };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error (the program exited early) shows up as its exit status below.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        debug!(program, ?args, "ok");
        return Ok(());
    }
    Err(CommandError::Failed {
        command: format!("{program} {}", args.join(" ")),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Applies a rule file as one nft transaction.
pub fn nft_apply(text: &str) -> Result<(), CommandError> {
    run("nft", &["-f", "-"], Some(text)).map_err(|e| match e {
        // Put the rule text in the error: an nft error message points at a line of it.
        CommandError::Failed { command, stderr } => CommandError::Failed { command, stderr: format!("{stderr}\n--- rules ---\n{text}") },
        other => other,
    })
}

const FAMILIES: [(&str, &str); 2] = [("-4", "0.0.0.0/0"), ("-6", "::/0")];

/// `ip rule add fwmark M lookup T` and `ip route replace local <any> dev lo table T`, for
/// both families. IPv6 failures are tolerated when the namespace has no IPv6 at all.
pub fn install_routing(cfg: RoutingConfig) -> Result<(), CommandError> {
    remove_rules(cfg);
    let mark = format!("0x{:x}", cfg.mark);
    let table = cfg.table.to_string();
    for (fam, any) in FAMILIES {
        let res = run("ip", &[fam, "rule", "add", "fwmark", &mark, "lookup", &table], None)
            .and_then(|()| run("ip", &[fam, "route", "replace", "local", any, "dev", "lo", "table", &table], None));
        match res {
            Ok(()) => {}
            Err(e) if fam == "-6" && !ipv6_available() => {
                debug!(error = %e, "no IPv6 in this namespace; IPv6 interception skipped");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn ipv6_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// Whether the rule and the `local` route are in place for every family that has them
/// (IPv6 only where the namespace has IPv6). One `ip -j` listing each.
pub fn routing_present(cfg: RoutingConfig) -> Result<bool, CommandError> {
    let mark = format!("0x{:x}", cfg.mark);
    let table = route_table_name(cfg.table);
    for (fam, _) in FAMILIES {
        if fam == "-6" && !ipv6_available() {
            continue;
        }
        let rules = output("ip", &["-j", fam, "rule", "show"])?;
        let rule = json_array(&rules).iter().any(|r| {
            r.get("fwmark").and_then(|m| m.as_str()) == Some(mark.as_str())
                && r.get("table").and_then(|t| t.as_str()) == Some(table.as_str())
                && r.get("fwmask").is_none()
        });
        // A missing table is an error for `ip`: it means the route is gone.
        let routes = output("ip", &["-j", fam, "route", "show", "table", &cfg.table.to_string()]).unwrap_or_default();
        let route = json_array(&routes).iter().any(|r| {
            r.get("type").and_then(|t| t.as_str()) == Some("local")
                && r.get("dst").and_then(|d| d.as_str()) == Some("default")
                && r.get("dev").and_then(|d| d.as_str()) == Some("lo")
        });
        if !rule || !route {
            debug!(family = fam, rule, route, "policy routing incomplete");
            return Ok(false);
        }
    }
    Ok(true)
}

/// How `ip` names a routing table id in its listings.
fn route_table_name(id: u32) -> String {
    match id {
        253 => "default".into(),
        254 => "main".into(),
        255 => "local".into(),
        n => n.to_string(),
    }
}

fn json_array(text: &str) -> Vec<serde_json::Value> {
    serde_json::from_str::<Vec<serde_json::Value>>(text).unwrap_or_default()
}

/// Runs `program args…` and returns its stdout; Ok when it exits 0.
fn output(program: &'static str, args: &[&str]) -> Result<String, CommandError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CommandError::Spawn { program, package: package_of(program), source })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(CommandError::Failed {
        command: format!("{program} {}", args.join(" ")),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Deletes every copy of our rule (a crashed run may have left one, a crash loop several).
fn remove_rules(cfg: RoutingConfig) {
    let mark = format!("0x{:x}", cfg.mark);
    let table = cfg.table.to_string();
    for (fam, _) in FAMILIES {
        // Bounded: each successful delete removes one copy; stop at the first "not found".
        for _ in 0..64 {
            if run("ip", &[fam, "rule", "del", "fwmark", &mark, "lookup", &table], None).is_err() {
                break;
            }
        }
    }
}

/// Removes the rule and empties the routing table, both families.
pub fn remove_routing(cfg: RoutingConfig) -> Result<(), CommandError> {
    remove_rules(cfg);
    let table = cfg.table.to_string();
    let mut first_err = None;
    for (fam, _) in FAMILIES {
        if let Err(e) = run("ip", &[fam, "route", "flush", "table", &table], None) {
            // Flushing a table that does not exist is an error for `ip` but not for us.
            let missing = matches!(&e, CommandError::Failed { stderr, .. } if stderr.contains("FIB table does not exist") || stderr.is_empty());
            let no_v6 = fam == "-6" && !ipv6_available();
            if !missing && !no_v6 && first_err.is_none() {
                first_err = Some(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}
