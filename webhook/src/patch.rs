//! JSONPatch from a [`Plan`]: merge into `spec.securityContext.sysctls` (the pod's own entries
//! are kept, in order), write the decision annotations, and select the tuning-CNI network with
//! `cni-args`. Idempotent: running the webhook again on the patched pod yields an empty patch.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::Pod;
use kubetune_crds::decision::{
    DECISION_ANNOTATION, MULTUS_NETWORKS_ANNOTATION, SUMMARY_ANNOTATION,
};
use kubetune_crds::sysctl;
use serde_json::{json, Value};

use crate::plan::{own_sysctls, Plan};

fn ptr(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

fn replace(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation { path, value })
}

/// The pod's final `securityContext.sysctls`: its own entries in their order, then kubetune's.
pub fn final_sysctls(pod: &Pod, plan: &Plan) -> Vec<(String, String)> {
    let own = own_sysctls(pod);
    let mut out: Vec<(String, String)> = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|sc| sc.sysctls.as_ref())
        .map(|l| {
            l.iter()
                .filter(|s| {
                    own.get(&sysctl::normalize_name(&s.name))
                        .is_some_and(|v| v == &s.value)
                })
                .map(|s| (s.name.clone(), s.value.clone()))
                .collect()
        })
        .unwrap_or_default();
    out.extend(
        plan.security_context
            .iter()
            .map(|(n, v)| (n.clone(), v.clone())),
    );
    out
}

/// Parse a Multus network-selection annotation: a JSON list, or the short form
/// `ns/name@iface, name2` (converted to JSON objects).
pub fn parse_networks(raw: &str) -> Vec<Value> {
    let t = raw.trim();
    if t.is_empty() {
        return Vec::new();
    }
    if let Ok(Value::Array(list)) = serde_json::from_str::<Value>(t) {
        return list;
    }
    t.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (rest, iface) = match item.split_once('@') {
                Some((r, i)) => (r, Some(i)),
                None => (item, None),
            };
            let mut o = match rest.split_once('/') {
                Some((ns, name)) => json!({"name": name, "namespace": ns}),
                None => json!({"name": rest}),
            };
            if let Some(i) = iface {
                o["interface"] = json!(i);
            }
            o
        })
        .collect()
}

/// The Multus selection with kubetune's tuning network (and its `cni-args.sysctl`) merged in.
pub fn merged_networks(
    existing: Option<&str>,
    network: &str,
    namespace: &str,
    sysctls: &BTreeMap<String, String>,
) -> Value {
    let mut list: Vec<Value> = existing.map(parse_networks).unwrap_or_default();
    list.retain(|e| e["name"] != network);
    list.push(json!({"name": network, "namespace": namespace, "cni-args": {"sysctl": sysctls}}));
    Value::Array(list)
}

/// Build the patch for `pod` from `plan`. `tuning_network` is the NetworkAttachmentDefinition
/// name used for tuning-CNI delivery (from the cluster facts).
pub fn build_patch(pod: &Pod, plan: &Plan, tuning_network: Option<&str>) -> Patch {
    let mut ops = Vec::new();
    if plan.is_empty() {
        return Patch(ops);
    }
    // 1. securityContext.sysctls
    let current: Vec<(String, String)> = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|sc| sc.sysctls.as_ref())
        .map(|l| {
            l.iter()
                .map(|s| (s.name.clone(), s.value.clone()))
                .collect()
        })
        .unwrap_or_default();
    let wanted = final_sysctls(pod, plan);
    if wanted != current {
        let list: Vec<Value> = wanted
            .iter()
            .map(|(n, v)| json!({"name": n, "value": v}))
            .collect();
        let sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
        match sc {
            None => ops.push(add(
                ptr(&["spec", "securityContext"]),
                json!({"sysctls": list}),
            )),
            Some(sc) if sc.sysctls.is_none() => ops.push(add(
                ptr(&["spec", "securityContext", "sysctls"]),
                Value::Array(list),
            )),
            Some(_) => ops.push(replace(
                ptr(&["spec", "securityContext", "sysctls"]),
                Value::Array(list),
            )),
        }
    }
    // 2. annotations
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let mut wanted_ann: BTreeMap<String, String> = BTreeMap::new();
    wanted_ann.insert(DECISION_ANNOTATION.into(), plan.decision.to_annotation());
    wanted_ann.insert(SUMMARY_ANNOTATION.into(), plan.decision.summary());
    if let (Some(net), false) = (tuning_network, plan.tuning_cni.is_empty()) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let existing = annotations
            .get(MULTUS_NETWORKS_ANNOTATION)
            .map(String::as_str);
        let merged = merged_networks(existing, net, ns, &plan.tuning_cni);
        let same = existing
            .and_then(|e| serde_json::from_str::<Value>(e).ok())
            .is_some_and(|v| v == merged);
        if !same {
            wanted_ann.insert(MULTUS_NETWORKS_ANNOTATION.into(), merged.to_string());
        }
    }
    if pod.metadata.annotations.is_none() {
        ops.push(add(ptr(&["metadata", "annotations"]), json!(wanted_ann)));
    } else {
        for (k, v) in wanted_ann {
            match annotations.get(&k) {
                Some(cur) if cur == &v => {}
                Some(_) => ops.push(replace(ptr(&["metadata", "annotations", &k]), json!(v))),
                None => ops.push(add(ptr(&["metadata", "annotations", &k]), json!(v))),
            }
        }
    }
    Patch(ops)
}
