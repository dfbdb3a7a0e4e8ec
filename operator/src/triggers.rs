//! Which changes reconcile which objects (the controllers' mapper functions), the watches behind
//! the cluster facts (Nodes, NodeTunings, the optional override ConfigMap), and what the operator
//! keeps of a pod.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{future, Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Resource, ResourceExt};
use kubetune_crds::facts::{ClusterFacts, FACTS_CONFIGMAP};
use kubetune_crds::matching;
use kubetune_crds::node::NodeTuning;
use kubetune_crds::placement::slim_node;
use kubetune_crds::policy::TuningPolicy;
use kubetune_crds::report::ListenerReport;
use tracing::{info, warn};

use crate::coverage;

/// Names of the policies (same namespace, not being deleted) whose selector matches `pod`.
pub fn selecting_policies(policies: &[Arc<TuningPolicy>], pod: &Pod) -> Vec<String> {
    matching::selecting_names(pod, policies)
}

/// Policies to reconcile when `pod` changed: those of its namespace that select it, plus those
/// named in its admission record (covers label changes that made a policy stop selecting it).
pub fn policies_for_pod(policies: &[Arc<TuningPolicy>], pod: &Pod) -> Vec<ObjectRef<TuningPolicy>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut names = selecting_policies(policies, pod);
    if let Some(d) = kubetune_crds::pod::decision(pod) {
        names.extend(d.policies.into_iter().map(|p| p.name));
    }
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| ObjectRef::new(&n).within(&ns))
        .collect()
}

/// Every object of `store` in namespace `ns`.
pub fn refs_in<K>(store: &Store<K>, ns: Option<&str>) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == ns)
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

/// Policies to reconcile when report `r` changed: those of its pod ([`policies_for_pod`]).
pub fn policies_for_report(
    policies: &Store<TuningPolicy>,
    pods: &Store<Pod>,
    r: &ListenerReport,
) -> Vec<ObjectRef<TuningPolicy>> {
    let pod = pods.get(&ObjectRef::new(&r.name_any()).within(&r.namespace().unwrap_or_default()));
    pod.map(|p| policies_for_pod(&policies.state(), &p))
        .unwrap_or_default()
}

/// Policies to reconcile when the coverage of `nodes` changed: those of the pods on them
/// ([`policies_for_pod`]), each once.
pub fn policies_on_nodes(
    policies: &[Arc<TuningPolicy>],
    pods: &[Arc<Pod>],
    nodes: &[String],
) -> Vec<ObjectRef<TuningPolicy>> {
    let mut out: Vec<ObjectRef<TuningPolicy>> = pods
        .iter()
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some_and(|n| nodes.contains(n))
        })
        .flat_map(|p| policies_for_pod(policies, p))
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out.dedup();
    out
}

/// How often the heartbeat Leases are looked at for coverage changes.
pub const HEARTBEAT_CHECK: Duration = Duration::from_secs(5);

/// Every [`HEARTBEAT_CHECK`], the policies whose pods' nodes changed coverage since the last
/// look ([`coverage::changed_nodes`]: a heartbeat went stale or came back, an agent restarted).
/// A stale heartbeat is the absence of a change, so no watch event says so: this timer does.
/// Renewals alone reconcile nothing.
pub fn heartbeat_changes(
    leases: Store<Lease>,
    pods: Store<Pod>,
    policies: Store<TuningPolicy>,
) -> impl Stream<Item = ObjectRef<TuningPolicy>> + Send + 'static {
    let looks = futures::stream::unfold(BTreeMap::new(), move |before| {
        let (leases, pods, policies) = (leases.clone(), pods.clone(), policies.clone());
        async move {
            tokio::time::sleep(HEARTBEAT_CHECK).await;
            let now = Timestamp::now();
            let all = coverage::heartbeats(leases.state().iter().map(AsRef::as_ref), |_| true);
            let after = coverage::node_watch(&all, now);
            let nodes = coverage::changed_nodes(&before, &after);
            let refs = if nodes.is_empty() {
                Vec::new()
            } else {
                info!(nodes = ?nodes, "agent heartbeat coverage changed");
                policies_on_nodes(&policies.state(), &pods.state(), &nodes)
            };
            Some((futures::stream::iter(refs), after))
        }
    });
    looks.flatten()
}

/// The report of `pod` (same name, same namespace).
pub fn report_of(pod: &Pod) -> Option<ObjectRef<ListenerReport>> {
    Some(ObjectRef::new(&pod.name_any()).within(&pod.namespace()?))
}

/// The watches behind the cluster facts (the override ConfigMap in `namespace`, Nodes slimmed to
/// what the facts read, NodeTunings): keeps `facts` current and yields once per actual change —
/// a Node's status update that changes nothing kubetune reads yields nothing.
pub fn facts_updates(
    client: kube::Client,
    namespace: &str,
    facts: Arc<RwLock<ClusterFacts>>,
) -> impl Stream<Item = ()> + Send {
    let (cms, cm_w) = reflector::store::<ConfigMap>();
    let (nodes, node_w) = reflector::store::<Node>();
    let (tunings, tuning_w) = reflector::store::<NodeTuning>();
    let cfg = watcher::Config::default();
    let by_name = cfg
        .clone()
        .fields(&format!("metadata.name={FACTS_CONFIGMAP}"));
    let touched = |r: Result<(), watcher::Error>| {
        if let Err(err) = r {
            warn!(error = %err, "cluster facts watch error");
        }
    };
    let cm_api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let node_api = Api::<Node>::all(client.clone());
    let tuning_api = Api::<NodeTuning>::all(client);
    let events = futures::stream::select_all([
        watcher(cm_api, by_name)
            .default_backoff()
            .reflect(cm_w)
            .map(|e| e.map(drop))
            .boxed(),
        watcher(node_api, cfg.clone())
            .default_backoff()
            .modify(slim_node)
            .reflect(node_w)
            .map(|e| e.map(drop))
            .boxed(),
        watcher(tuning_api, cfg)
            .default_backoff()
            .reflect(tuning_w)
            .map(|e| e.map(drop))
            .boxed(),
    ]);
    events.filter_map(move |e| {
        touched(e);
        let nodes: Vec<Arc<Node>> = nodes.state();
        let tunings: Vec<Arc<NodeTuning>> = tunings.state();
        let f = resolve_facts(
            cms.state().first().map(|c| c.as_ref()),
            &nodes.iter().map(|n| n.as_ref()).collect::<Vec<_>>(),
            &tunings.iter().map(|t| t.as_ref()).collect::<Vec<_>>(),
        );
        let mut current = facts.write().unwrap_or_else(|e| e.into_inner());
        let changed = *current != f;
        if changed {
            info!(tuning_cni = f.tuning_cni.is_some(), version = %f.kubernetes_version,
                  nodes = f.nodes.len(), "cluster facts updated");
            *current = f;
        }
        future::ready(changed.then_some(()))
    })
}

/// Keep only what the operator reads from a pod (metadata without managed fields; of the spec
/// the node and `securityContext.sysctls`, which prove "applied"; phase, start time, and the
/// reason and message that say `SysctlForbidden`): a 10,000-pod cluster costs a fraction of the
/// full objects in memory.
pub fn slim_pod(pod: &mut Pod) {
    use k8s_openapi::api::core::v1::{PodSecurityContext, PodSpec, PodStatus};
    pod.metadata.managed_fields = None;
    pod.spec = pod.spec.take().map(|s| PodSpec {
        node_name: s.node_name,
        security_context: s.security_context.and_then(|sc| sc.sysctls).map(|sysctls| {
            PodSecurityContext {
                sysctls: Some(sysctls),
                ..Default::default()
            }
        }),
        ..Default::default()
    });
    if let Some(s) = pod.status.as_mut() {
        *s = PodStatus {
            phase: s.phase.take(),
            start_time: s.start_time.take(),
            // Rollouts: SysctlForbidden rejections and crash-looping pods stop restarts; the guard
            // reads the reason and message.
            reason: s.reason.take(),
            message: s.message.take(),
            container_statuses: s.container_statuses.take().map(slim_container_statuses),
            ..Default::default()
        };
    }
}

/// A container's waiting reason only (what [`crate::rollout::pod_is_failing`] reads).
fn slim_container_statuses(
    cs: Vec<k8s_openapi::api::core::v1::ContainerStatus>,
) -> Vec<k8s_openapi::api::core::v1::ContainerStatus> {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateWaiting, ContainerStatus};
    cs.into_iter()
        .filter_map(|c| {
            let reason = c.state?.waiting?.reason;
            Some(ContainerStatus {
                name: c.name,
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason,
                        message: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .collect()
}

/// The cluster facts (node truth with the optional override); an invalid override refuses
/// every unsafe sysctl until it is fixed (logged).
pub fn resolve_facts(
    cm: Option<&ConfigMap>,
    nodes: &[&Node],
    tunings: &[&NodeTuning],
) -> ClusterFacts {
    ClusterFacts::resolve(cm, nodes, tunings).unwrap_or_else(|e| {
        warn!(error = %e, "cluster facts override unusable; refusing every unsafe sysctl until it is fixed");
        ClusterFacts::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;

    fn store<K>(objs: Vec<K>) -> Store<K>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let (reader, mut writer) = reflector::store::<K>();
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in objs {
            writer.apply_watcher_event(&watcher::Event::InitApply(o));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        reader
    }
    fn policy(ns: &str, name: &str, app: &str) -> TuningPolicy {
        let mut p: TuningPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": kubetune_crds::API_VERSION, "kind": "TuningPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {"matchLabels": {"app": app}}, "preset": "WideEphemeralPorts"}
        }))
        .unwrap();
        p.metadata.generation = Some(1);
        p
    }
    fn pod(ns: &str, name: &str, app: &str, record: Option<&str>) -> Pod {
        let mut v = serde_json::json!({"metadata": {"name": name, "namespace": ns, "labels": {"app": app}}});
        if let Some(r) = record {
            v["metadata"]["annotations"] =
                serde_json::json!({ kubetune_crds::decision::DECISION_ANNOTATION: r });
        }
        serde_json::from_value(v).unwrap()
    }
    fn names<K: Resource<DynamicType = ()>>(refs: Vec<ObjectRef<K>>) -> Vec<String> {
        refs.into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
            .collect()
    }

    #[test]
    fn mappers_table() {
        let record = r#"{"version":1,"policies":[{"name":"old","generation":1}],"entries":[]}"#;
        let policies = store(vec![
            policy("shop", "web", "web"),
            policy("shop", "api", "api"),
            policy("other", "web", "web"),
        ]);
        let pods = store(vec![
            pod("shop", "web-1", "web", Some(record)),
            pod("shop", "api-1", "api", None),
        ]);
        let report = |ns: &str, name: &str| -> ListenerReport {
            serde_json::from_value(serde_json::json!({
                "apiVersion": kubetune_crds::API_VERSION, "kind": "ListenerReport",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"podUid": "", "nodeName": "n", "listenerCount": 0, "overflowsTotal": 0,
                         "overflowsRecent": 0, "diagnosis": "Healthy", "windowSeconds": 60,
                         "source": "sock-diag", "observedAt": ""}
            }))
            .unwrap()
        };
        // A pod maps to the policies selecting it and those its record names.
        let web1 = pods.get(&ObjectRef::new("web-1").within("shop")).unwrap();
        assert_eq!(
            names(policies_for_pod(&policies.state(), &web1)),
            ["shop/old", "shop/web"]
        );
        // A report maps to its pod's policies; without a pod, to nothing.
        assert_eq!(
            names(policies_for_report(
                &policies,
                &pods,
                &report("shop", "api-1")
            )),
            ["shop/api"]
        );
        assert!(policies_for_report(&policies, &pods, &report("shop", "gone")).is_empty());
        // A namespace maps to its policies.
        let mut in_shop = names(refs_in(&policies, Some("shop")));
        in_shop.sort();
        assert_eq!(in_shop, ["shop/api", "shop/web"]);
        assert_eq!(
            names(report_of(&web1).into_iter().collect()),
            ["shop/web-1"]
        );
        assert_eq!(selecting_policies(&policies.state(), &web1), ["web"]);
    }
}
