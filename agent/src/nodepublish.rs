//! Publishes the node discovery of [`crate::nodeinfo`] where scheduling and the webhook can use
//! it, for the agent's own node only: the Node's labels `sysctl.kubetune.dev/<sysctl>: allowed`
//! (server-side apply of just those labels with the agent's field manager, so a label the
//! kubelet no longer accepts is removed) and the cluster-scoped `NodeTuning` named after the node
//! (ownerReference = the Node). Discovery runs again when the kubelet restarted or one of its
//! configuration files changed (checked every [`CHECK_INTERVAL`]), and is re-applied at least
//! every [`RESYNC_INTERVAL`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use kubetune_crds::node::{self, NodeTuning, NodeTuningSpec, NODE_FIELD_MANAGER};
use kubetune_crds::sysctl::KubeVersion;
use tracing::{info, warn};

use crate::nodeinfo::{self, Fingerprint, NodeFacts};

/// How often the kubelet's pid and configuration files are checked for changes.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Publication is repeated at least this often even when nothing changed.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(600);

/// The `NodeTuning` spec for what was discovered (pure). An unknown allowlist accepts nothing.
pub fn spec_for(
    node_name: &str,
    kubelet_version: Option<&str>,
    facts: &NodeFacts,
    observed_at: &str,
) -> NodeTuningSpec {
    let (kubelet, mut accepted) = match &facts.allowlist {
        Ok(a) => (
            node::KubeletAllowlist {
                allowed_unsafe_sysctls: a.entries.clone(),
                source: a.source.clone(),
                error: None,
            },
            node::accepted_table_sysctls(&a.entries)
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>(),
        ),
        Err(e) => (
            node::KubeletAllowlist {
                error: Some(e.to_string()),
                ..Default::default()
            },
            Vec::new(),
        ),
    };
    accepted.sort();
    NodeTuningSpec {
        node_name: node_name.into(),
        kubelet_version: kubelet_version.map(String::from),
        kernel_version: facts.kernel_version.clone(),
        accepted_summary: node::accepted_summary(&accepted, facts.allowlist.is_ok()),
        accepted_unsafe_sysctls: accepted,
        kubelet,
        netns_default_somaxconn: facts.netns_default_somaxconn.as_ref().ok().copied(),
        netns_default_somaxconn_error: facts.netns_default_somaxconn.as_ref().err().cloned(),
        tuning_cni: facts.tuning_cni.clone(),
        observed_at: observed_at.into(),
    }
}

/// The server-side-apply body for the node's kubetune labels (all of them: what is not listed
/// is removed from what this field manager owns).
pub fn labels_apply_body(node_name: &str, spec: &NodeTuningSpec) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node_name,
            "labels": node::node_labels(&spec.accepted_unsafe_sysctls),
        },
    })
}

/// The server-side-apply body of the node's `NodeTuning`, owned by the Node.
pub fn node_tuning_body(node: &Node, spec: &NodeTuningSpec) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "NodeTuning",
        "metadata": {
            "name": node.metadata.name,
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Node",
                "name": node.metadata.name,
                "uid": node.metadata.uid,
                "controller": false,
                "blockOwnerDeletion": false,
            }],
        },
        "spec": spec,
    })
}

/// Applies the labels and the `NodeTuning` of `node`.
pub async fn publish(
    client: &Client,
    node: &Node,
    spec: &NodeTuningSpec,
) -> Result<(), kube::Error> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let pp = PatchParams::apply(NODE_FIELD_MANAGER).force();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(name, &pp, &Patch::Apply(&labels_apply_body(name, spec)))
        .await?;
    let nts: Api<NodeTuning> = Api::all(client.clone());
    nts.patch(name, &pp, &Patch::Apply(&node_tuning_body(node, spec)))
        .await?;
    Ok(())
}

fn kubelet_version(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .node_info
        .as_ref()
        .map(|i| i.kubelet_version.clone())
        .filter(|v| !v.is_empty())
}

/// What was last published, to publish only on change.
#[derive(Debug, Default)]
pub struct Publisher {
    /// `/proc` (the host's, with hostPID).
    pub proc_root: PathBuf,
    last: Option<(Fingerprint, Option<String>, NodeTuningSpec, Instant)>,
}

impl Publisher {
    /// A publisher reading `proc_root`.
    pub fn new(proc_root: PathBuf) -> Self {
        Self {
            proc_root,
            last: None,
        }
    }

    /// One round: reads the Node, discovers again when the kubelet, its files or its version
    /// changed (or the resync is due), and publishes when the result differs from the last
    /// publication (ignoring `observedAt`) or the resync is due. Returns whether it wrote.
    pub async fn sync_once(
        &mut self,
        client: &Client,
        node_name: &str,
    ) -> Result<bool, kube::Error> {
        let node = Api::<Node>::all(client.clone()).get(node_name).await?;
        let version = kubelet_version(&node);
        let due = |at: &Instant| at.elapsed() >= RESYNC_INTERVAL;
        if let Some((fp, v, _, at)) = &self.last {
            if *v == version && !due(at) && fp.current(&self.proc_root) == *fp {
                return Ok(false);
            }
        }
        let proc_root = self.proc_root.clone();
        let kv = version.as_deref().and_then(|v| KubeVersion::parse(v).ok());
        let (facts, fp) = tokio::task::spawn_blocking(move || nodeinfo::discover(&proc_root, kv))
            .await
            .map_err(|e| kube::Error::Service(Box::new(e)))?;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let spec = spec_for(node_name, version.as_deref(), &facts, &now);
        let unchanged = self.last.as_ref().is_some_and(|(_, _, s, at)| {
            !due(at)
                && NodeTuningSpec {
                    observed_at: now.clone(),
                    ..s.clone()
                } == spec
        });
        if unchanged {
            if let Some(l) = &mut self.last {
                (l.0, l.1) = (fp, version);
            }
            return Ok(false);
        }
        publish(client, &node, &spec).await?;
        info!(node = node_name, accepted = %spec.accepted_summary, source = %spec.kubelet.source,
              error = ?spec.kubelet.error, "published node truth");
        self.last = Some((fp, version, spec, Instant::now()));
        Ok(true)
    }
}

/// Publishes until the process stops.
pub async fn run(client: Client, node_name: String) {
    let mut p = Publisher::new(nodeinfo::proc_root());
    loop {
        if let Err(e) = p.sync_once(&client, &node_name).await {
            warn!(node = %node_name, error = %e, "publishing node truth");
        }
        tokio::time::sleep(CHECK_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::{Allowlist, KubeletError};
    use kubetune_crds::node::{TuningCniPlugin, TuningCniState};

    fn facts(allowlist: Result<Allowlist, KubeletError>) -> NodeFacts {
        NodeFacts {
            allowlist,
            kernel_version: "6.8.0".into(),
            netns_default_somaxconn: Ok(4096),
            tuning_cni: TuningCniPlugin {
                state: TuningCniState::NotInstalled,
                detail: "no executable tuning in /opt/cni/bin".into(),
            },
        }
    }

    #[test]
    fn spec_and_labels_from_discovery() {
        let f = facts(Ok(Allowlist {
            entries: vec![
                "net.ipv4.tcp_max_syn_backlog".into(),
                "net.core.somaxconn".into(),
                "x.y".into(),
            ],
            source: "/var/lib/kubelet/config.yaml".into(),
        }));
        let s = spec_for("n1", Some("v1.35.0"), &f, "t");
        assert_eq!(
            s.accepted_unsafe_sysctls,
            ["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"]
        );
        assert_eq!(
            s.accepted_summary,
            "net.core.somaxconn,net.ipv4.tcp_max_syn_backlog"
        );
        assert_eq!(s.kubelet.allowed_unsafe_sysctls.len(), 3, "as configured");
        let b = labels_apply_body("n1", &s);
        assert_eq!(
            b["metadata"]["labels"],
            serde_json::json!({
                "sysctl.kubetune.dev/net.core.somaxconn": "allowed",
                "sysctl.kubetune.dev/net.ipv4.tcp_max_syn_backlog": "allowed",
            })
        );
        // Unknown: no label at all (the apply removes earlier ones), and the reason.
        let u = spec_for(
            "n1",
            None,
            &facts(Err(KubeletError::Process("no kubelet".into()))),
            "t",
        );
        assert!(u.accepted_unsafe_sysctls.is_empty());
        assert_eq!(u.accepted_summary, "unknown");
        assert_eq!(u.kubelet.error.as_deref(), Some("no kubelet"));
        assert_eq!(
            labels_apply_body("n1", &u)["metadata"]["labels"],
            serde_json::json!({})
        );
    }
}
