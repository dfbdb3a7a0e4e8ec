//! Decode only the parts of a Pod the planner and the patch read.
//!
//! A full `k8s_openapi` Pod decode (containers, probes, quantities, ...) is most of the cost of
//! an admission request; the webhook needs metadata (name, namespace, labels, annotations) and
//! `spec.{hostNetwork, hostIPC, nodeName, nodeSelector, affinity, tolerations,
//! securityContext.sysctls}` — and whether `spec`, `securityContext` and `sysctls` are present,
//! which the patch depends on. Everything else is skipped without being materialised.
//!
//! [`PodSubset`] is exactly what plan + patch read of the pod. [`PodSubset::plan_input`] narrows
//! it further to what they read once the policies that select the pod are known (kubetune's own
//! annotations; not the labels or the name), and [`PodSubset::write_key`] writes that input's
//! canonical JSON, which with the selecting policies is the key of the plan-input memo.
//! [`PodSubset::into_pod`] gives an ordinary `Pod` with just those fields, so the planner and the
//! patch builder keep their typed API.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Pod, PodSecurityContext, PodSpec, Sysctl, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kubetune_crds::decision::{
    DECISION_ANNOTATION, MULTUS_NETWORKS_ANNOTATION, SUMMARY_ANNOTATION,
};
use serde::{Deserialize, Serialize};

/// The pod annotations the planner and the patch read (the skip and mirror annotations are read
/// before, to exclude a pod).
pub const PLAN_ANNOTATIONS: [&str; 3] = [
    DECISION_ANNOTATION,
    SUMMARY_ANNOTATION,
    MULTUS_NETWORKS_ANNOTATION,
];

/// The fields of `spec` decoded besides `securityContext` (of which only `sysctls`): what the
/// review skeleton keeps of `spec` ([`crate::skeleton`]).
pub const SPEC_FIELDS_READ: [&str; 6] = [
    "hostNetwork",
    "hostIPC",
    "nodeName",
    "nodeSelector",
    "affinity",
    "tolerations",
];

/// The planner-relevant subset of a Pod.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct PodSubset {
    #[serde(default, deserialize_with = "object")]
    metadata: Option<MetaSubset>,
    #[serde(default, deserialize_with = "object")]
    spec: Option<SpecSubset>,
}

/// An optional JSON object: `null`/absent is `None`; anything but an object is an error (serde's
/// derive would also read a struct from an array, which the apiserver never sends and the patch
/// could not apply to). Decodes in place, without an intermediate value.
fn object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object or null")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
struct MetaSubset {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    generate_name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
struct SpecSubset {
    #[serde(default)]
    host_network: Option<bool>,
    #[serde(default, rename = "hostIPC")]
    host_ipc: Option<bool>,
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    node_selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    affinity: Option<Affinity>,
    #[serde(default)]
    tolerations: Option<Vec<Toleration>>,
    #[serde(default, deserialize_with = "object")]
    security_context: Option<SecurityContextSubset>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
struct SecurityContextSubset {
    #[serde(default)]
    sysctls: Option<Vec<SysctlSubset>>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
struct SysctlSubset {
    name: String,
    value: String,
}

impl PodSubset {
    /// `metadata.namespace`.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata.as_ref()?.namespace.as_deref()
    }
    /// Set `metadata.namespace` (the request's namespace wins over the object's).
    pub fn set_namespace(&mut self, ns: String) {
        self.metadata.get_or_insert_with(Default::default).namespace = Some(ns);
    }
    /// One annotation.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }
    /// One label.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.metadata
            .as_ref()?
            .labels
            .as_ref()?
            .get(key)
            .map(String::as_str)
    }
    /// `metadata.name`, else `metadata.generateName` (for logs).
    pub fn display_name(&self) -> &str {
        let m = self.metadata.as_ref();
        m.and_then(|m| m.name.as_deref().or(m.generate_name.as_deref()))
            .unwrap_or_default()
    }
    /// The pod's labels (empty when it has none).
    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        let m = self.metadata.as_ref();
        m.and_then(|m| m.labels.as_ref()).unwrap_or(&EMPTY)
    }
    /// What the planner and the patch read of this pod once the policies that select it are
    /// known ([`crate::plan::plan_matched`]): no labels (read only to find those policies), no
    /// name or generateName, [`PLAN_ANNOTATIONS`] only (an annotation map that is present stays
    /// present, which the patch's paths depend on). Two pods with the same plan input and the
    /// same selecting policies get the same plan and patch against the same snapshot, e.g. the
    /// first pods of two rollouts of one Deployment whose template changed only in fields
    /// kubetune does not read (images, env, `pod-template-hash`, `restartedAt`), or the pods of
    /// two Deployments that the same policies select.
    pub fn plan_input(mut self) -> PodSubset {
        if let Some(m) = self.metadata.as_mut() {
            m.name = None;
            m.generate_name = None;
            m.labels = None;
            if let Some(a) = m.annotations.as_mut() {
                a.retain(|k, _| PLAN_ANNOTATIONS.contains(&k.as_str()));
            }
        }
        self
    }
    /// Append the canonical JSON of the subset (maps in key order) to `out`: equal keys, equal
    /// subsets.
    pub fn write_key(&self, out: &mut Vec<u8>) {
        sonic_rs::to_writer(out, self).expect("a pod subset serialises");
    }
    /// An ordinary `Pod` carrying just these fields.
    pub fn into_pod(self) -> Pod {
        let m = self.metadata.unwrap_or_default();
        Pod {
            metadata: ObjectMeta {
                name: m.name,
                generate_name: m.generate_name,
                namespace: m.namespace,
                labels: m.labels,
                annotations: m.annotations,
                ..Default::default()
            },
            spec: self.spec.map(|s| PodSpec {
                host_network: s.host_network,
                host_ipc: s.host_ipc,
                node_name: s.node_name,
                node_selector: s.node_selector,
                affinity: s.affinity,
                tolerations: s.tolerations,
                security_context: s.security_context.map(|sc| PodSecurityContext {
                    sysctls: sc.sysctls.map(|l| {
                        l.into_iter()
                            .map(|x| Sysctl {
                                name: x.name,
                                value: x.value,
                            })
                            .collect()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        }
    }
}

/// Decode the planner-relevant subset of a Pod from its JSON. Fails when one of those fields has
/// the wrong type (or the document is not an object); other fields are not looked at.
pub fn decode_subset(json: &str) -> Result<PodSubset, serde_json::Error> {
    serde_json::from_str(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names serde gives a struct's fields, from a value with every field set.
    fn fields(v: impl Serialize) -> Vec<String> {
        let v = serde_json::to_value(v).unwrap();
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    #[test]
    fn the_skeleton_keeps_what_is_decoded() {
        let spec = SpecSubset {
            host_network: Some(true),
            host_ipc: Some(true),
            node_name: Some("n".into()),
            node_selector: Some(BTreeMap::new()),
            affinity: Some(Affinity::default()),
            tolerations: Some(vec![]),
            security_context: Some(SecurityContextSubset {
                sysctls: Some(vec![]),
            }),
        };
        let mut expected: Vec<&str> = SPEC_FIELDS_READ.to_vec();
        expected.push("securityContext");
        expected.sort();
        assert_eq!(fields(&spec), expected);
        let sc = spec.security_context.unwrap();
        assert_eq!(fields(&sc), ["sysctls"]);
        let meta = MetaSubset {
            name: Some("n".into()),
            generate_name: Some("n".into()),
            namespace: Some("n".into()),
            labels: Some(BTreeMap::new()),
            annotations: Some(BTreeMap::new()),
        };
        // name and generateName reach only the debug log; the skeleton keeps namespace and the
        // label and annotation values it is told are read.
        let expected = ["annotations", "generateName", "labels", "name", "namespace"];
        assert_eq!(fields(&meta), expected);
        assert_eq!(fields(PodSubset::default()), ["metadata", "spec"]);
    }
}
