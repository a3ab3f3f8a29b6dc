//! The `deploy/` manifests, parsed with k8s-openapi's types: what a cluster would be given must
//! keep the invariants the proxy relies on (host network, least capabilities, probes on the
//! health port, RBAC verbs exactly as needed, the node name passed through).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Probe, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;

const HEALTH_PORT: i32 = 10256;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy")
}

fn read(name: &str) -> String {
    let path = deploy_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse<T: DeserializeOwned>(name: &str) -> T {
    serde_yaml::from_str(&read(name)).unwrap_or_else(|e| panic!("{name}: not a valid {}: {e}", std::any::type_name::<T>()))
}

fn kustomize_resources() -> Vec<String> {
    let k: serde_yaml::Value = serde_yaml::from_str(&read("kustomization.yaml")).unwrap_or_else(|e| panic!("kustomization: {e}"));
    let Some(serde_yaml::Value::Sequence(items)) = k.get("resources") else { panic!("kustomization has no resources list") };
    items.iter().map(|i| i.as_str().unwrap_or_else(|| panic!("resource {i:?} is not a path")).to_string()).collect()
}

fn tpvs_container(ds: &DaemonSet) -> &Container {
    let spec = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).unwrap_or_else(|| panic!("DaemonSet has no pod spec"));
    spec.containers.iter().find(|c| c.name == "tpvs").unwrap_or_else(|| panic!("no container named tpvs"))
}

fn http_probe(probe: Option<&Probe>, what: &str) -> (String, i32) {
    let get = probe.and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{what}: no httpGet probe"));
    let port = match &get.port {
        IntOrString::Int(p) => *p,
        IntOrString::String(s) => panic!("{what}: port {s:?} by name; the health port is pinned by number"),
    };
    (get.path.clone().unwrap_or_default(), port)
}

#[test]
fn kustomization_lists_every_manifest_and_each_parses() {
    let listed: BTreeSet<String> = kustomize_resources().into_iter().collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(deploy_dir())
        .unwrap_or_else(|e| panic!("deploy/: {e}"))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, on_disk, "kustomization.yaml resources and deploy/*.yaml differ");
    for name in &listed {
        let v: serde_yaml::Value = parse(name);
        match v.get("kind").and_then(serde_yaml::Value::as_str) {
            Some("ServiceAccount") => drop(parse::<ServiceAccount>(name)),
            Some("ClusterRole") => drop(parse::<ClusterRole>(name)),
            Some("ClusterRoleBinding") => drop(parse::<ClusterRoleBinding>(name)),
            Some("DaemonSet") => drop(parse::<DaemonSet>(name)),
            other => panic!("{name}: unexpected kind {other:?}"),
        }
    }
}

#[test]
fn cluster_role_grants_exactly_what_tpvs_uses() {
    let role: ClusterRole = parse("clusterrole.yaml");
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none(), "unexpected rule shape: {rule:?}");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert_ne!(verb, "*", "wildcard verb");
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let mut want = BTreeSet::new();
    for (group, resource) in [("", "services"), ("", "nodes"), ("discovery.k8s.io", "endpointslices")] {
        for verb in ["get", "list", "watch"] {
            want.insert((group.to_string(), resource.to_string(), verb.to_string()));
        }
    }
    for group in ["", "events.k8s.io"] {
        for verb in ["create", "patch"] {
            want.insert((group.to_string(), "events".to_string(), verb.to_string()));
        }
    }
    assert_eq!(granted, want);
}

#[test]
fn binding_ties_the_role_to_the_service_account() {
    let sa: ServiceAccount = parse("serviceaccount.yaml");
    let role: ClusterRole = parse("clusterrole.yaml");
    let binding: ClusterRoleBinding = parse("clusterrolebinding.yaml");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, sa.metadata.namespace);
    let ds: DaemonSet = parse("daemonset.yaml");
    let pod = ds.spec.and_then(|s| s.template.spec).unwrap_or_else(|| panic!("no pod spec"));
    assert_eq!(pod.service_account_name, sa.metadata.name);
}

#[test]
fn daemonset_runs_on_every_node_in_the_host_network() {
    let ds: DaemonSet = parse("daemonset.yaml");
    let pod = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).unwrap_or_else(|| panic!("no pod spec"));
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
    let tolerates_all = pod
        .tolerations
        .iter()
        .flatten()
        .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none());
    assert!(tolerates_all, "a toleration with operator Exists and no key/effect is needed to run on every node");
}

#[test]
fn container_has_exactly_the_needed_capabilities_and_health_probes() {
    let ds: DaemonSet = parse("daemonset.yaml");
    let c = tpvs_container(&ds);
    let sc = c.security_context.as_ref().unwrap_or_else(|| panic!("no securityContext"));
    assert_ne!(sc.privileged, Some(true), "must not be privileged");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap_or_else(|| panic!("no capabilities"));
    // The set `tpvs run` checks at start (proxy/src/capabilities.rs), no more.
    assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string(), "NET_BIND_SERVICE".to_string()][..]), "exactly NET_ADMIN and NET_BIND_SERVICE");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));

    assert_eq!(http_probe(c.liveness_probe.as_ref(), "liveness"), ("/livez".to_string(), HEALTH_PORT));
    // Ready when this pod's instance owns the node (and /healthz says 200): an HTTP probe on
    // the host's shared health port would be answered by the old pod during a rollout.
    let ready = c.readiness_probe.as_ref().and_then(|p| p.exec.as_ref()).and_then(|e| e.command.clone());
    assert_eq!(ready, Some(vec!["/usr/local/bin/tpvs".to_string(), "ready".to_string()]), "readiness must be `tpvs ready`");
    // In the host network a declared port is a hostPort, which keeps a rollout's new pod off
    // the node while the old one runs.
    assert!(c.ports.as_ref().is_none_or(Vec::is_empty), "no container ports: {:?}", c.ports);

    let res = c.resources.as_ref().unwrap_or_else(|| panic!("no resources"));
    for key in ["cpu", "memory"] {
        assert!(res.requests.as_ref().is_some_and(|r| r.contains_key(key)), "no {key} request");
    }
    assert!(res.limits.as_ref().is_some_and(|l| l.contains_key("memory")), "no memory limit");
}

#[test]
fn node_name_reaches_hostname_override() {
    let ds: DaemonSet = parse("daemonset.yaml");
    let c = tpvs_container(&ds);
    let args = c.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    assert!(args.iter().any(|a| a == "--hostname-override=$(NODE_NAME)"), "args: {args:?}");
    let env = c.env.iter().flatten().find(|e| e.name == "NODE_NAME").unwrap_or_else(|| panic!("no NODE_NAME env"));
    let field = env.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
    assert_eq!(field, Some("spec.nodeName"), "NODE_NAME must come from the downward API");
}

#[test]
fn a_rollout_starts_the_new_pod_beside_the_old_one_which_cannot_take_the_node_back() {
    // maxSurge 1, maxUnavailable 0: the new pod takes over from the old one on the same node
    // (no node is left without a proxy), and the old pod's restarted container is refused by
    // its instance identity, the pod's UID (the same across container restarts).
    let ds: DaemonSet = parse("daemonset.yaml");
    let strategy = ds.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).unwrap_or_else(|| panic!("no updateStrategy"));
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().unwrap_or_else(|| panic!("no rollingUpdate"));
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)), "maxSurge");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)), "maxUnavailable");
    let c = tpvs_container(&ds);
    let env = c.env.iter().flatten().find(|e| e.name == "TPVS_INSTANCE_ID").unwrap_or_else(|| panic!("no TPVS_INSTANCE_ID env"));
    let field = env.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
    assert_eq!(field, Some("metadata.uid"), "the instance identity must be the pod's UID");
    let pod = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).unwrap_or_else(|| panic!("no pod spec"));
    assert!(matches!(pod.restart_policy.as_deref(), None | Some("Always")), "a DaemonSet's pods restart their containers");
}

#[test]
fn no_pre_stop_hook_removes_the_rules_of_the_running_instance() {
    // preStop runs while the container still runs: `tpvs cleanup` there would be refused (the
    // instance owns its rules) or, forced, undone by its rules check. SIGTERM removes them.
    let ds: DaemonSet = parse("daemonset.yaml");
    let c = tpvs_container(&ds);
    let cmd = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).and_then(|h| h.exec.as_ref()).and_then(|e| e.command.clone());
    assert!(!cmd.iter().flatten().any(|a| a == "cleanup"), "{cmd:?}");
}

#[test]
fn container_image_is_multi_stage_with_nft_at_runtime() {
    let text = read("Containerfile");
    let stages: Vec<&str> = text.split("\nFROM ").skip(1).collect();
    assert!(stages.len() >= 2, "expected a build and a runtime stage");
    let runtime = stages.last().unwrap_or_else(|| panic!("no runtime stage"));
    assert!(runtime.contains("nftables"), "the runtime stage must install nftables (nft)");
    assert!(runtime.contains("COPY --from="), "the runtime stage takes the binary from the build stage");
}

#[test]
fn container_build_copies_every_workspace_member() {
    // Cargo refuses to build a workspace whose members are missing from the build context.
    let root = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("Cargo.toml"))
        .unwrap_or_else(|e| panic!("workspace Cargo.toml: {e}"));
    let members = root
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .and_then(|l| l.split_once('['))
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list.split(',').map(|m| m.trim().trim_matches('"').to_string()).filter(|m| !m.is_empty()).collect::<Vec<_>>())
        .unwrap_or_else(|| panic!("no one-line members list in the workspace Cargo.toml"));
    let containerfile = read("Containerfile");
    for m in &members {
        assert!(containerfile.contains(&format!("COPY {m} {m}")), "deploy/Containerfile does not copy workspace member {m}");
    }
}
