//! The API client: in-cluster configuration by default, a kubeconfig file when given
//! (kube-proxy's `--kubeconfig`).

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use tracing::info;

/// Why the API source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("no in-cluster configuration ({in_cluster}) and no usable kubeconfig ({kubeconfig}); pass --kubeconfig")]
    NoConfig { in_cluster: String, kubeconfig: String },
    #[error("cannot build the API client: {0}")]
    Client(String),
    #[error("cannot start the API source thread: {0}")]
    Thread(String),
}

/// Builds the client: from `kubeconfig` when given; otherwise in-cluster (the service account
/// of the DaemonSet), falling back to the usual kubeconfig lookup (`KUBECONFIG`,
/// `~/.kube/config`) so that a developer can run the daemon outside a cluster.
pub async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, KubeSourceError> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |e: &dyn std::fmt::Display| KubeSourceError::Kubeconfig {
                path: path.display().to_string(),
                reason: e.to_string(),
            };
            let file = Kubeconfig::read_from(path).map_err(|e| err(&e))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await.map_err(|e| err(&e))?
        }
        None => match kube::Config::incluster() {
            Ok(c) => c,
            Err(in_cluster) => {
                let c = kube::Config::from_kubeconfig(&KubeConfigOptions::default()).await.map_err(|kubeconfig| {
                    KubeSourceError::NoConfig { in_cluster: in_cluster.to_string(), kubeconfig: kubeconfig.to_string() }
                })?;
                info!(reason = %in_cluster, "not in a cluster; using the local kubeconfig");
                c
            }
        },
    };
    info!(server = %config.cluster_url, "Kubernetes API");
    kube::Client::try_from(config).map_err(|e| KubeSourceError::Client(e.to_string()))
}
