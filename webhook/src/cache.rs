//! kube-runtime reflectors for TuningPolicies, Namespaces and the cluster-facts ConfigMap,
//! folded into one [`Snapshot`] that is rebuilt on change — no API call per admission request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use kubetune_crds::facts::{ClusterFacts, FactsError, FACTS_CONFIGMAP};
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

fn spawn_reflector<K>(api: Api<K>, cfg: watcher::Config, changed: Arc<Notify>) -> Store<K>
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
    let stream = reflector::reflector(writer, watcher(api, cfg)).default_backoff();
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

/// Build a snapshot from the stores (pure apart from reading them).
pub fn build_snapshot(
    policies: &Store<TuningPolicy>,
    namespaces: &Store<Namespace>,
    facts: &Store<ConfigMap>,
) -> Snapshot {
    let facts = match ClusterFacts::from_configmap(facts.state().first().map(|cm| cm.as_ref())) {
        Ok(f) => f,
        Err(FactsError::Missing) => ClusterFacts::default(),
        Err(e) => {
            tracing::error!(error = %e, "invalid cluster facts; using defaults (no unsafe sysctls, no tuning CNI)");
            ClusterFacts::default()
        }
    };
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
    }
}

/// Start the reflectors and the snapshot builder.
pub fn start(client: Client, own_namespace: &str) -> Arc<ReflectorSource> {
    let changed = Arc::new(Notify::new());
    let policies = spawn_reflector(
        Api::<TuningPolicy>::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
    );
    let namespaces = spawn_reflector(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        changed.clone(),
    );
    let facts = spawn_reflector(
        Api::<ConfigMap>::namespaced(client, own_namespace),
        watcher::Config::default().fields(&format!("metadata.name={FACTS_CONFIGMAP}")),
        changed.clone(),
    );
    let source = Arc::new(ReflectorSource {
        current: RwLock::new(Arc::new(Snapshot::default())),
        ready: AtomicBool::new(false),
    });
    let s = source.clone();
    tokio::spawn(async move {
        let (a, b, c) = (policies.clone(), namespaces.clone(), facts.clone());
        let _ = tokio::join!(
            a.wait_until_ready(),
            b.wait_until_ready(),
            c.wait_until_ready()
        );
        loop {
            let snap = build_snapshot(&policies, &namespaces, &facts);
            tracing::debug!(
                policies = snap.policies.len(),
                namespaces = snap.namespaces.len(),
                "snapshot rebuilt"
            );
            *s.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
            s.ready.store(true, Ordering::Release);
            changed.notified().await;
        }
    });
    source
}
