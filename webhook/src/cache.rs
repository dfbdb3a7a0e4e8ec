//! kube-runtime reflectors for TuningPolicies, Namespaces, Nodes and NodeTunings (node truth) and
//! the optional cluster-facts ConfigMap, folded into one [`Snapshot`] that is rebuilt on change —
//! no API call per admission request. A rebuild that changes nothing the planner reads (a Node's
//! status heartbeat, say) keeps the current snapshot and its plan memo; one that changes only
//! namespaces takes over what still holds of it ([`Snapshot::carry_over`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use kubetune_crds::facts::{ClusterFacts, FACTS_CONFIGMAP};
use kubetune_crds::node::NodeTuning;
use kubetune_crds::placement::slim_node;
use kubetune_crds::policy::TuningPolicy;
use tokio::sync::Notify;

use crate::admission::Snapshot;
use crate::plan::NamespaceFacts;
use crate::server::SnapshotSource;

/// Snapshot source fed by reflectors.
pub struct ReflectorSource {
    current: RwLock<Arc<Snapshot>>,
    ready: AtomicBool,
}

impl SnapshotSource for ReflectorSource {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

fn spawn_reflector<K>(
    api: Api<K>,
    cfg: watcher::Config,
    changed: Arc<Notify>,
    slim: fn(&mut K),
) -> Store<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    // Every watcher event (including a re-list that removed objects, which yields no touched
    // object) triggers a snapshot rebuild.
    let stream = reflector::reflector(writer, watcher(api, cfg).modify(slim)).default_backoff();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "watch error");
            }
            changed.notify_one();
        }
    });
    reader
}

/// The reflector stores a snapshot is built from.
#[derive(Clone)]
pub struct Stores {
    policies: Store<TuningPolicy>,
    namespaces: Store<Namespace>,
    facts: Store<ConfigMap>,
    nodes: Store<Node>,
    tunings: Store<NodeTuning>,
}

/// The cluster facts of the stores; an invalid override refuses every unsafe sysctl (logged).
fn resolve_facts(s: &Stores) -> ClusterFacts {
    let (cm, nodes, tunings) = (s.facts.state(), s.nodes.state(), s.tunings.state());
    let nodes: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
    let tunings: Vec<&NodeTuning> = tunings.iter().map(|t| t.as_ref()).collect();
    ClusterFacts::resolve(cm.first().map(|c| c.as_ref()), &nodes, &tunings).unwrap_or_else(|e| {
        tracing::error!(error = %e, "invalid cluster facts override; refusing every unsafe sysctl until it is fixed");
        ClusterFacts::default()
    })
}

/// Build a snapshot from the stores (pure apart from reading them).
pub fn build_snapshot(stores: &Stores) -> Snapshot {
    let (policies, namespaces) = (&stores.policies, &stores.namespaces);
    let facts = resolve_facts(stores);
    Snapshot {
        policies: policies.state().iter().map(|p| (**p).clone()).collect(),
        namespaces: namespaces
            .state()
            .iter()
            .filter_map(|n| {
                let name = n.metadata.name.clone()?;
                let labels: BTreeMap<String, String> =
                    n.metadata.labels.clone().unwrap_or_default();
                Some((name.clone(), NamespaceFacts { name, labels }))
            })
            .collect(),
        facts,
        memo: Default::default(),
        skeletons: Default::default(),
        inputs: Default::default(),
        namespace_policies: Default::default(),
    }
}

fn keep<K>(_: &mut K) {}

fn slim_meta<K: kube::Resource>(k: &mut K) {
    k.meta_mut().managed_fields = None;
}

/// Start the reflectors and the snapshot builder.
pub fn start(client: Client, own_namespace: &str) -> Arc<ReflectorSource> {
    let changed = Arc::new(Notify::new());
    let all = watcher::Config::default;
    let stores = Stores {
        policies: spawn_reflector(
            Api::<TuningPolicy>::all(client.clone()),
            all(),
            changed.clone(),
            slim_meta,
        ),
        namespaces: spawn_reflector(
            Api::<Namespace>::all(client.clone()),
            all(),
            changed.clone(),
            slim_meta,
        ),
        facts: spawn_reflector(
            Api::<ConfigMap>::namespaced(client.clone(), own_namespace),
            all().fields(&format!("metadata.name={FACTS_CONFIGMAP}")),
            changed.clone(),
            keep,
        ),
        nodes: spawn_reflector(
            Api::<Node>::all(client.clone()),
            all(),
            changed.clone(),
            slim_node,
        ),
        tunings: spawn_reflector(
            Api::<NodeTuning>::all(client),
            all(),
            changed.clone(),
            slim_meta,
        ),
    };
    let source = Arc::new(ReflectorSource {
        current: RwLock::new(Arc::new(Snapshot::default())),
        ready: AtomicBool::new(false),
    });
    let s = source.clone();
    tokio::spawn(async move {
        let st = stores.clone();
        let _ = tokio::join!(
            st.policies.wait_until_ready(),
            st.namespaces.wait_until_ready(),
            st.facts.wait_until_ready(),
            st.nodes.wait_until_ready(),
            st.tunings.wait_until_ready()
        );
        loop {
            let mut snap = build_snapshot(&stores);
            let current = s.snapshot();
            if !current.same_inputs(&snap) || !s.ready() {
                snap.carry_over(&current);
                tracing::debug!(
                    policies = snap.policies.len(),
                    namespaces = snap.namespaces.len(),
                    nodes = snap.facts.nodes.len(),
                    "snapshot rebuilt"
                );
                *s.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
                s.ready.store(true, Ordering::Release);
            }
            changed.notified().await;
        }
    });
    source
}
