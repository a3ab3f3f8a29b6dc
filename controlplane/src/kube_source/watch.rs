//! The three watchers (Services, EndpointSlices, this Node) and the conversion of what they
//! receive into the compact model, right at receipt: the full API object is dropped as soon as
//! its compact form exists, so memory follows what the proxy uses, not what the API returns.

use std::time::{Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::error::ObjectError;
use crate::explain::NotProxied;
use crate::model::{NodeInfo, ObjectKey, ServiceInfo, Skipped, SliceInfo, not_proxied};

/// The annotation the EndpointSlice controller stamps with the time of the change that
/// triggered the slice's update (what kube-proxy's network programming latency starts from).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The resources the source watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Watched {
    Services,
    EndpointSlices,
    Node,
}

impl Watched {
    pub const ALL: [Watched; 3] = [Watched::Services, Watched::EndpointSlices, Watched::Node];

    pub fn as_str(self) -> &'static str {
        match self {
            Watched::Services => "services",
            Watched::EndpointSlices => "endpointslices",
            Watched::Node => "node",
        }
    }

    pub(crate) fn slot(self) -> usize {
        match self {
            Watched::Services => 0,
            Watched::EndpointSlices => 1,
            Watched::Node => 2,
        }
    }
}

/// One object as received, already converted.
#[derive(Debug)]
pub(crate) enum Object {
    /// `not_proxied`: what a skipped Service names, for `tpvs explain`.
    Service { key: ObjectKey, converted: Result<Result<ServiceInfo, Skipped>, ObjectError>, not_proxied: Option<Box<NotProxied>> },
    Slice { key: ObjectKey, converted: Result<Option<SliceInfo>, ObjectError>, trigger: Option<SystemTime> },
    Node(NodeInfo),
    /// An object without a name: it cannot be keyed, so it can only be counted.
    Unnamed(Watched),
}

/// An object's identity, enough to delete it.
#[derive(Debug)]
pub(crate) enum Gone {
    Service(ObjectKey),
    Slice(ObjectKey),
    Node,
    Unnamed,
}

#[derive(Debug)]
pub(crate) enum Update {
    /// A (re)list began: what follows until `ListDone` is the complete set.
    ListStarted(Watched),
    Listed(Object),
    ListDone(Watched),
    Applied(Object),
    Deleted(Gone),
    /// The list or watch failed; the watcher retries after a backoff.
    Failed(Watched, String),
}

#[derive(Debug)]
pub(crate) struct Received {
    pub update: Update,
    /// When the event left the watcher: the start of the event-to-publish latency.
    pub at: Instant,
}

fn names(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<(&str, &str)> {
    let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
    Some((meta.namespace.as_deref().unwrap_or("default"), name))
}

pub(crate) fn service_object(svc: Service) -> Object {
    let Some((ns, name)) = names(&svc.metadata) else { return Object::Unnamed(Watched::Services) };
    let converted = ServiceInfo::from_service(&svc);
    let not_proxied = match &converted {
        Ok(Err(why)) => not_proxied(&svc, why.clone()).map(Box::new),
        _ => None,
    };
    Object::Service { key: ObjectKey::new(ns, name), converted, not_proxied }
}

pub(crate) fn slice_object(slice: EndpointSlice) -> Object {
    let Some((ns, name)) = names(&slice.metadata) else { return Object::Unnamed(Watched::EndpointSlices) };
    let key = ObjectKey::new(ns, name);
    let trigger = slice
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
        // A malformed stamp only costs the latency sample, never the slice.
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(SystemTime::from);
    Object::Slice { key, converted: SliceInfo::from_slice(&slice), trigger }
}

pub(crate) fn node_object(node: Node) -> Object {
    Object::Node(NodeInfo::from_node(&node))
}

fn service_gone(svc: Service) -> Gone {
    names(&svc.metadata).map_or(Gone::Unnamed, |(ns, n)| Gone::Service(ObjectKey::new(ns, n)))
}

fn slice_gone(slice: EndpointSlice) -> Gone {
    names(&slice.metadata).map_or(Gone::Unnamed, |(ns, n)| Gone::Slice(ObjectKey::new(ns, n)))
}

fn node_gone(_: Node) -> Gone {
    Gone::Node
}

/// Runs one watcher until the receiver goes away. Errors are reported and retried after
/// kube-runtime's default backoff (client-go's reflector parameters): a watch that fails keeps
/// failing slowly instead of hammering a struggling API server.
async fn pump<K>(
    api: Api<K>,
    config: watcher::Config,
    what: Watched,
    convert: fn(K) -> Object,
    gone: fn(K) -> Gone,
    tx: mpsc::Sender<Received>,
) where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        let at = Instant::now();
        let update = match event {
            Ok(Event::Init) => Update::ListStarted(what),
            Ok(Event::InitApply(o)) => Update::Listed(convert(o)),
            Ok(Event::InitDone) => Update::ListDone(what),
            Ok(Event::Apply(o)) => Update::Applied(convert(o)),
            Ok(Event::Delete(o)) => Update::Deleted(gone(o)),
            Err(e) => Update::Failed(what, e.to_string()),
        };
        if tx.send(Received { update, at }).await.is_err() {
            return; // the source stopped
        }
    }
}

/// Starts the watchers on the current runtime; each sends into `tx`. The Node is watched only
/// when the node's name is known (its zone is all the proxy reads from it).
pub(crate) fn spawn_all(
    client: &kube::Client,
    node_name: Option<&str>,
    source: &super::KubeSourceConfig,
    tx: &mpsc::Sender<Received>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    // Lists are served from the API server's most recent state (not its cache) so that a relist
    // after 410 Gone never goes back in time; pages bound the memory one list response costs.
    let config = watcher::Config::default().page_size(source.page_size);
    let services = config.clone().labels(&super::services_label_selector(source.service_selector.as_deref()));
    set.spawn(pump(
        Api::<Service>::all(client.clone()),
        services,
        Watched::Services,
        service_object,
        service_gone,
        tx.clone(),
    ));
    set.spawn(pump(
        Api::<EndpointSlice>::all(client.clone()),
        config.clone(),
        Watched::EndpointSlices,
        slice_object,
        slice_gone,
        tx.clone(),
    ));
    if let Some(node) = node_name {
        set.spawn(pump(
            Api::<Node>::all(client.clone()),
            config.fields(&format!("metadata.name={node}")),
            Watched::Node,
            node_object,
            node_gone,
            tx.clone(),
        ));
    }
    set
}
