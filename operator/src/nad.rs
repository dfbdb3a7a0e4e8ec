//! The tuning-CNI NetworkAttachmentDefinition the operator owns in each namespace that has a
//! policy delivering sysctls through tuning CNI. Rendering ([`render_nad`]) and the choice of
//! owners ([`nad_owners`]) are pure; [`NadState`] does the I/O for the reconciler (cached CRD
//! discovery, server-side apply, deletion of a NAD no policy needs any more).
//!
//! # The emitted CNI configuration, and why
//!
//! ```json
//! {"cniVersion":"1.0.0","name":"<networkName>","plugins":[
//!   {"type":"bridge","bridge":"kubetune0"},
//!   {"type":"tuning","sysctl":{}}]}
//! ```
//!
//! * The `tuning` plugin only modifies an existing interface: it needs a `prevResult`, so it must
//!   be chained after an interface-creating plugin. Multus attaches this network as an extra
//!   interface (`net1`), so the conflist starts with one.
//! * `bridge` without `ipam` is the interface plugin that needs nothing from the node or the
//!   cluster: it creates (once per node) an isolated Linux bridge `kubetune0` with no uplink and
//!   no address and plugs a veth into the pod with no IP and no routes. No traffic can use it;
//!   it exists so that `tuning` runs in the pod's network namespace. (`macvlan`/`ipvlan` need a
//!   node-specific master interface; `dummy` requires IPAM.)
//! * `tuning` gets no static `sysctl` values: the webhook selects this network per pod with
//!   Multus `cni-args: {"sysctl": {...}}`, which Multus passes to the plugins as
//!   `args.cni.sysctl`, so each pod gets the values of the policies that select it. Most
//!   `net.*` sysctls (e.g. `net.core.somaxconn`) are per network namespace, so tuning through this
//!   extra attachment tunes the whole pod netns, including the default interface's sockets.
//! * No `capabilities` are needed: tuning's only capability (`mac`) is not used.
//! * The nodes' `/etc/cni/tuning/allowlist.conf` (if present) must allow the sysctls (regexes,
//!   one per line), e.g. `^net\.core\.somaxconn$`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::core::ObjectMeta;
use kube::{Client, Resource, ResourceExt};
use kubetune_crds::facts::ClusterFacts;
use kubetune_crds::policy::OPERATOR_FIELD_MANAGER;
use kubetune_crds::TuningPolicy;
use serde_json::json;
use tracing::{info, warn};

use crate::status::{delivery, Environment};

/// Multus API group.
pub const NAD_GROUP: &str = "k8s.cni.cncf.io";
/// Multus API version.
pub const NAD_VERSION: &str = "v1";
/// Kind.
pub const NAD_KIND: &str = "NetworkAttachmentDefinition";
/// Plural.
pub const NAD_PLURAL: &str = "network-attachment-definitions";
/// Name of the isolated node bridge the interface plugin creates.
pub const TUNING_BRIDGE: &str = "kubetune0";
/// How long a NAD-CRD discovery result is trusted.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(60);
/// Label marking NADs managed by the operator.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "kubetune-operator";

/// The GroupVersionKind of a NetworkAttachmentDefinition.
pub fn nad_gvk() -> GroupVersionKind {
    GroupVersionKind::gvk(NAD_GROUP, NAD_VERSION, NAD_KIND)
}

/// The ApiResource of a NetworkAttachmentDefinition.
pub fn nad_api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&nad_gvk(), NAD_PLURAL)
}

/// The CNI conflist (as the JSON string Multus reads from `spec.config`).
pub fn cni_config(network_name: &str) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": network_name,
        "plugins": [
            {"type": "bridge", "bridge": TUNING_BRIDGE},
            {"type": "tuning", "sysctl": {}}
        ]
    })
    .to_string()
}

/// The NetworkAttachmentDefinition for `namespace`, owned by `owners` (the policies of that
/// namespace whose delivery resolves to tuning CNI; sorted by name for a stable object).
pub fn render_nad(namespace: &str, network_name: &str, owners: &[&TuningPolicy]) -> DynamicObject {
    let mut owners: Vec<&TuningPolicy> = owners.to_vec();
    owners.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let owner_refs = owners
        .iter()
        .filter_map(|p| {
            let mut r = p.controller_owner_ref(&())?;
            // Several policies share the NAD: none is "the" controller.
            r.controller = Some(false);
            r.block_owner_deletion = Some(false);
            Some(r)
        })
        .collect::<Vec<_>>();
    let ar = nad_api_resource();
    let mut obj = DynamicObject::new(network_name, &ar).within(namespace);
    obj.metadata = ObjectMeta {
        name: Some(network_name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(BTreeMap::from([(
            MANAGED_BY_LABEL.to_string(),
            MANAGED_BY.to_string(),
        )])),
        annotations: Some(BTreeMap::from([(
            "kubetune.dev/purpose".to_string(),
            "tuning-CNI sysctl delivery; pods select it with Multus cni-args.sysctl (set by the kubetune webhook)"
                .to_string(),
        )])),
        owner_references: Some(owner_refs),
        ..Default::default()
    };
    obj.data = json!({"spec": {"config": cni_config(network_name)}});
    obj
}

/// The policies of `namespace` (not being deleted) whose delivery resolves to tuning CNI: the
/// owners of the namespace's NetworkAttachmentDefinition (none: it is not needed).
pub fn nad_owners<'a, P: std::borrow::Borrow<TuningPolicy> + 'a>(
    namespace: &str,
    policies: impl IntoIterator<Item = &'a P>,
    facts: &ClusterFacts,
    env: &Environment,
) -> Vec<&'a TuningPolicy> {
    policies
        .into_iter()
        .map(std::borrow::Borrow::borrow)
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| delivery(p, facts, env).uses_tuning_cni)
        .collect()
}

/// The reconciler's NetworkAttachmentDefinition I/O and what it remembers between reconciles.
#[derive(Default)]
pub struct NadState {
    /// Cached NAD CRD discovery: (when, served).
    crd: tokio::sync::Mutex<Option<(Instant, bool)>>,
    /// Last NAD applied per namespace (skip identical applies).
    applied: Mutex<HashMap<String, serde_json::Value>>,
}

impl NadState {
    /// Is the NetworkAttachmentDefinition CRD served? (cached for [`DISCOVERY_TTL`])
    pub async fn crd_served(&self, client: &Client) -> bool {
        let mut guard = self.crd.lock().await;
        if let Some((at, served)) = *guard {
            if at.elapsed() < DISCOVERY_TTL {
                return served;
            }
        }
        let served = match kube::discovery::pinned_kind(client, &nad_gvk()).await {
            Ok(_) => true,
            Err(e) => {
                warn!(error = %e, "NetworkAttachmentDefinition CRD (k8s.cni.cncf.io/v1) not served");
                false
            }
        };
        *guard = Some((Instant::now(), served));
        served
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, HashMap<String, serde_json::Value>> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep the namespace's NetworkAttachmentDefinition `network_name`: applied (SSA) with
    /// `owners` as owners when it changed; deleted (if it carries the managed-by label) when no
    /// owner remains and this operator applied it.
    pub async fn ensure(
        &self,
        client: &Client,
        namespace: &str,
        network_name: &str,
        owners: &[&TuningPolicy],
    ) -> Result<(), kube::Error> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &nad_api_resource());
        if owners.is_empty() {
            if self.applied().remove(namespace).is_some() {
                if let Some(existing) = api.get_opt(network_name).await? {
                    let ours = existing
                        .labels()
                        .get(MANAGED_BY_LABEL)
                        .is_some_and(|v| v == MANAGED_BY);
                    if ours {
                        api.delete(network_name, &Default::default()).await?;
                        info!(
                            namespace,
                            name = network_name,
                            "deleted tuning-CNI NetworkAttachmentDefinition"
                        );
                    }
                }
            }
            return Ok(());
        }
        let obj = render_nad(namespace, network_name, owners);
        let value = serde_json::to_value(&obj).unwrap_or_default();
        if self.applied().get(namespace) == Some(&value) {
            return Ok(());
        }
        api.patch(
            network_name,
            &PatchParams::apply(OPERATOR_FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await?;
        info!(
            namespace,
            name = network_name,
            owners = owners.len(),
            "applied tuning-CNI NetworkAttachmentDefinition"
        );
        self.applied().insert(namespace.to_string(), value);
        Ok(())
    }
}
