//! Decode only the parts of a Pod the planner and the patch read.
//!
//! A full `k8s_openapi` Pod decode (containers, probes, quantities, ...) is most of the cost of
//! an admission request; the webhook needs metadata (name, namespace, labels, annotations) and
//! `spec.{hostNetwork, hostIPC, nodeSelector, securityContext.sysctls}` — and whether `spec`,
//! `securityContext` and `sysctls` are present, which the patch depends on. Everything else is
//! skipped without being materialised. The result is an ordinary `Pod` with just those fields,
//! so the planner and the patch builder keep their typed API.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSecurityContext, PodSpec, Sysctl};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

#[derive(Deserialize)]
struct PodSubset {
    #[serde(default)]
    metadata: Option<MetaSubset>,
    #[serde(default)]
    spec: Option<SpecSubset>,
}

#[derive(Deserialize)]
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecSubset {
    #[serde(default)]
    host_network: Option<bool>,
    #[serde(default, rename = "hostIPC")]
    host_ipc: Option<bool>,
    #[serde(default)]
    node_selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    security_context: Option<SecurityContextSubset>,
}

#[derive(Deserialize)]
struct SecurityContextSubset {
    #[serde(default)]
    sysctls: Option<Vec<Sysctl>>,
}

/// Decode the planner-relevant subset of a Pod from its JSON. Fails when one of those fields has
/// the wrong type (or the document is not an object); other fields are not looked at.
pub fn decode_pod(json: &str) -> Result<Pod, serde_json::Error> {
    let p: PodSubset = serde_json::from_str(json)?;
    let m = p.metadata;
    Ok(Pod {
        metadata: m
            .map(|m| ObjectMeta {
                name: m.name,
                generate_name: m.generate_name,
                namespace: m.namespace,
                labels: m.labels,
                annotations: m.annotations,
                ..Default::default()
            })
            .unwrap_or_default(),
        spec: p.spec.map(|s| PodSpec {
            host_network: s.host_network,
            host_ipc: s.host_ipc,
            node_selector: s.node_selector,
            security_context: s.security_context.map(|sc| PodSecurityContext {
                sysctls: sc.sysctls,
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    })
}
