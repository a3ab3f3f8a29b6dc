//! One manifest file's text → the objects tpvs uses, each problem named by its file and
//! document number.
//!
//! Pure: the caller reads the file. Accepts what `kubectl get svc,endpointslices -A -o yaml`
//! prints (a `kind: List`), plain multi-document YAML, and JSON (a YAML subset).

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tracing::debug;

use super::limits::{self, Broken, ManifestLimits};
use crate::error::ManifestError;
use crate::explain::NotProxied;
use crate::model::{NodeInfo, ObjectKey, ServiceInfo, Skipped, SliceInfo, not_proxied};

/// The objects one file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct FileObjects {
    pub services: BTreeMap<ObjectKey, ServiceInfo>,
    pub slices: BTreeMap<ObjectKey, SliceInfo>,
    /// This node's Node object, when the file holds it.
    pub node: Option<NodeInfo>,
    /// explain: the Services not proxied, with what they name.
    pub skipped: BTreeMap<ObjectKey, NotProxied>,
}

/// What parsing one file found.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub objects: FileObjects,
    /// Services that kube-proxy would not proxy either (not errors).
    pub skipped: Vec<(ObjectKey, Skipped)>,
    pub errors: Vec<ManifestError>,
    /// Documents handed to the YAML parser (none when the text broke a limit).
    pub documents: usize,
}

/// Parses the text of the file at `path`. A Node is kept only when it is this node
/// (`node_name`): its zone is all the compiler reads from it. A text that breaks `limits` is
/// refused whole, before the YAML parser sees any of it.
pub(super) fn parse(path: &Path, text: &str, node_name: Option<&str>, limits: &ManifestLimits) -> Parsed {
    let mut parsed = Parsed::default();
    if let Err(broken) = limits::check(text, limits) {
        let path = path.to_path_buf();
        parsed.errors.push(match broken {
            Broken::Depth { document, line } => ManifestError::TooDeep { path, document, line, limit: limits.max_depth },
            Broken::Documents => ManifestError::TooManyDocuments { path, limit: limits.max_documents },
        });
        return parsed;
    }
    // Documents are numbered from 1, as a person counts them in the file.
    for (document, de) in (1..).zip(serde_yaml::Deserializer::from_str(text)) {
        parsed.documents += 1;
        match serde_yaml::Value::deserialize(de) {
            Ok(value) => {
                Document { path, document, node_name }.load(value, &mut parsed);
            }
            Err(e) => {
                parsed.errors.push(ManifestError::Yaml {
                    path: path.to_path_buf(),
                    document,
                    reason: e.to_string(),
                });
                // The parser cannot resync after a syntax error: stop reading this file.
                break;
            }
        }
    }
    parsed
}

/// Where a value comes from, for its error messages.
struct Document<'a> {
    path: &'a Path,
    document: usize,
    node_name: Option<&'a str>,
}

impl Document<'_> {
    fn load(&self, value: serde_yaml::Value, parsed: &mut Parsed) {
        if value.is_null() {
            return; // an empty document, e.g. a trailing `---`
        }
        let kind = str_field(&value, "kind").unwrap_or("").to_string();
        let name = object_name(&value);
        let fail = |parsed: &mut Parsed, reason: String| {
            parsed.errors.push(ManifestError::Object {
                path: self.path.to_path_buf(),
                document: self.document,
                kind: if kind.is_empty() { "(no kind)".into() } else { kind.clone() },
                name: name.clone(),
                reason,
            });
        };
        match kind.as_str() {
            "List" | "ServiceList" | "EndpointSliceList" | "NodeList" => {
                let items = match value.get("items") {
                    Some(serde_yaml::Value::Sequence(items)) => items.clone(),
                    Some(serde_yaml::Value::Null) | None => Vec::new(),
                    Some(_) => return fail(parsed, "items is not a list".into()),
                };
                for item in items {
                    self.load(item, parsed);
                }
            }
            "Service" => match typed::<Service>(value)
                .and_then(|s| ServiceInfo::from_service(&s).map(|c| (s, c)).map_err(|e| e.to_string()))
            {
                Ok((_, Ok(info))) => {
                    parsed.objects.services.insert(info.key.clone(), info);
                }
                Ok((svc, Err(skipped))) => {
                    debug!(service = %name, reason = %skipped, "service not proxied");
                    if let Some(np) = not_proxied(&svc, skipped.clone()) {
                        parsed.objects.skipped.insert(np.service.clone(), np);
                    }
                    let (ns, n) = name.split_once('/').unwrap_or(("default", &name));
                    parsed.skipped.push((ObjectKey::new(ns, n), skipped));
                }
                Err(reason) => fail(parsed, reason),
            },
            "EndpointSlice" => match typed::<EndpointSlice>(value)
                .and_then(|s| SliceInfo::from_slice(&s).map_err(|e| e.to_string()))
            {
                Ok(Some(info)) => {
                    parsed.objects.slices.insert(info.key.clone(), info);
                }
                Ok(None) => debug!(slice = %name, "slice ignored (FQDN or no service label)"),
                Err(reason) => fail(parsed, reason),
            },
            "Node" => match typed::<Node>(value) {
                Ok(node) => {
                    let info = NodeInfo::from_node(&node);
                    if info.name.is_some() && info.name.as_deref() == self.node_name {
                        parsed.objects.node = Some(info);
                    }
                }
                Err(reason) => fail(parsed, reason),
            },
            "" => fail(parsed, "no kind".into()),
            other => debug!(kind = other, object = %name, "ignoring object of a kind tpvs does not use"),
        }
    }
}

fn str_field<'v>(value: &'v serde_yaml::Value, field: &str) -> Option<&'v str> {
    value.get(field).and_then(serde_yaml::Value::as_str)
}

/// `namespace/name` for messages, read loosely: the object may be too broken to deserialize.
fn object_name(value: &serde_yaml::Value) -> String {
    let meta = value.get("metadata");
    let ns = meta.and_then(|m| str_field(m, "namespace")).unwrap_or("default");
    match meta.and_then(|m| str_field(m, "name")) {
        Some(n) => format!("{ns}/{n}"),
        None => "(unnamed)".to_string(),
    }
}

fn typed<T: DeserializeOwned>(value: serde_yaml::Value) -> Result<T, String> {
    serde_yaml::from_value(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: t}\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{name: http, port: 80}]\n";
    const SLICE: &str = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: t\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n- addresses: [10.1.0.1]\n";

    fn parse_text(text: &str) -> Parsed {
        parse(Path::new("m.yaml"), text, Some("node-a"), &ManifestLimits::default())
    }

    #[test]
    fn deep_nesting_is_refused_before_the_yaml_parser_runs() {
        // 100 KB of `[` once cost seconds of CPU in the YAML scanner.
        let parsed = parse_text(&"[".repeat(100_000));
        assert!(
            matches!(parsed.errors.as_slice(), [ManifestError::TooDeep { document: 1, line: 1, limit: 64, .. }]),
            "{:?}",
            parsed.errors
        );
        assert_eq!(parsed.documents, 0, "the YAML parser never saw the text");
        let deep_block: String = (0..100).map(|d| format!("{}k{d}:\n", "  ".repeat(d))).collect();
        let parsed = parse_text(&deep_block);
        assert!(matches!(parsed.errors.as_slice(), [ManifestError::TooDeep { line: 65, .. }]), "{:?}", parsed.errors);
        assert_eq!(parsed.documents, 0);
    }

    #[test]
    fn too_many_documents_are_refused_with_the_limit_named() {
        let limits = ManifestLimits { max_documents: 2, ..ManifestLimits::default() };
        let parsed = parse(Path::new("m.yaml"), &format!("{SERVICE}---\n{SLICE}---\n{SERVICE}"), None, &limits);
        assert_eq!(parsed.errors, vec![ManifestError::TooManyDocuments { path: "m.yaml".into(), limit: 2 }]);
        assert_eq!(parsed.errors[0].to_string(), "m.yaml: more than 2 YAML documents; not parsed");
        assert_eq!((parsed.documents, parsed.objects.services.len()), (0, 0));
        let parsed = parse(Path::new("m.yaml"), &format!("{SERVICE}---\n{SLICE}"), None, &limits);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    }

    #[test]
    fn real_manifests_pass_the_limits() {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut checked = 0;
        for dir in ["../deploy/examples", "../proxy/tests/golden"] {
            let dir = Path::new(root).join(dir);
            let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}"));
            for path in entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "yaml")) {
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
                assert_eq!(limits::check(&text, &ManifestLimits::default()), Ok(()), "{path:?}");
                checked += 1;
            }
        }
        assert!(checked > 0, "no example manifests found");
    }

    #[test]
    fn documents_yield_services_and_slices() {
        let parsed = parse_text(&format!("{SERVICE}---\n{SLICE}---\n"));
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert!(parsed.objects.services.contains_key(&ObjectKey::new("t", "web")));
        let slice = parsed.objects.slices.get(&ObjectKey::new("t", "web-1"));
        assert_eq!(slice.map(|s| &s.service), Some(&ObjectKey::new("t", "web")));
    }

    #[test]
    fn a_kubectl_list_and_json_are_read_like_documents() {
        let list = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: a, namespace: t}, spec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}}\n";
        assert_eq!(parse_text(list).objects.services.len(), 1);
        let json = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"}, "spec": {"clusterIP": "10.96.0.3", "ports": [{"port": 80}]}}"#;
        let parsed = parse_text(json);
        assert!(parsed.objects.services.contains_key(&ObjectKey::new("default", "b")), "no namespace means default");
    }

    #[test]
    fn a_bad_object_is_named_by_document_and_the_others_still_load() {
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: t}\nspec: {clusterIP: not-an-ip}\n";
        let parsed = parse_text(&format!("{SERVICE}---\n{bad}---\n{SLICE}"));
        match parsed.errors.as_slice() {
            [ManifestError::Object { document, kind, name, .. }] => {
                assert_eq!((*document, kind.as_str(), name.as_str()), (2, "Service", "t/bad"));
            }
            other => panic!("want one object error, got {other:?}"),
        }
        assert_eq!(parsed.objects.services.len(), 1);
        assert_eq!(parsed.objects.slices.len(), 1);
    }

    #[test]
    fn a_syntax_error_stops_the_file_at_its_document() {
        let parsed = parse_text(&format!("{SERVICE}---\nkind: [unclosed\n---\n{SLICE}"));
        assert!(matches!(parsed.errors.as_slice(), [ManifestError::Yaml { document: 2, .. }]), "{:?}", parsed.errors);
        assert_eq!(parsed.objects.services.len(), 1, "what came before the error is kept");
        assert!(parsed.objects.slices.is_empty(), "nothing after the error is read");
    }

    #[test]
    fn objects_without_kind_are_errors_other_kinds_and_empty_documents_are_not() {
        let parsed = parse_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n---\nmetadata: {name: x}\n");
        assert!(
            matches!(parsed.errors.as_slice(), [ManifestError::Object { document: 3, reason, .. }] if reason == "no kind"),
            "{:?}",
            parsed.errors
        );
    }

    #[test]
    fn only_this_nodes_node_is_kept_and_skipped_services_are_reported() {
        let nodes = "apiVersion: v1\nkind: Node\nmetadata: {name: node-b, labels: {topology.kubernetes.io/zone: zb}}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: node-a, labels: {topology.kubernetes.io/zone: za}}\n";
        let parsed = parse_text(nodes);
        assert_eq!(parsed.objects.node.and_then(|n| n.zone).as_deref(), Some("za"));
        let headless = "apiVersion: v1\nkind: Service\nmetadata: {name: h, namespace: t}\nspec: {clusterIP: None}\n";
        let parsed = parse_text(headless);
        assert!(parsed.objects.services.is_empty());
        assert_eq!(parsed.skipped, vec![(ObjectKey::new("t", "h"), Skipped::Headless)]);
    }
}
