//! JSONPatch from a [`Plan`]: merge into `spec.securityContext.sysctls` (the pod's own entries
//! are kept, in order, and never removed), write the decision annotations, and select the
//! tuning-CNI network with `cni-args`. Idempotent: running the webhook again on the patched pod
//! yields an empty patch.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::Pod;
use kubetune_crds::decision::{
    DECISION_ANNOTATION, MULTUS_NETWORKS_ANNOTATION, SUMMARY_ANNOTATION,
};
use kubetune_crds::pod::sysctls as current_sysctls;
use kubetune_crds::sysctl;
use serde_json::{json, Map, Value};

use crate::networks::{merged_networks, parse_networks};
use crate::plan::Plan;

fn ptr(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

fn replace(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Replace(ReplaceOperation { path, value })
}

/// The pod's final `securityContext.sysctls`: its current entries, in order, with kubetune's
/// values set in place where kubetune injected the sysctl before (re-invocation) and appended
/// otherwise. Nothing is ever removed, and the pod's own values are never planned (the planner
/// records them as `PodValueKept`), so they are never changed.
pub fn final_sysctls(pod: &Pod, plan: &Plan) -> Vec<(String, String)> {
    let mut out = current_sysctls(pod);
    for (name, value) in &plan.security_context {
        match out
            .iter_mut()
            .find(|(n, _)| sysctl::normalize_name(n) == *name)
        {
            Some(slot) => slot.1.clone_from(value),
            None => out.push((name.clone(), value.clone())),
        }
    }
    out
}

/// Build the patch for `pod` from `plan`.
pub fn build_patch(pod: &Pod, plan: &Plan) -> Patch {
    let mut ops = Vec::new();
    if plan.is_empty() {
        return Patch(ops);
    }
    // 1. securityContext.sysctls
    let wanted = final_sysctls(pod, plan);
    if wanted != current_sysctls(pod) {
        let list = Value::Array(
            wanted
                .iter()
                .map(|(n, v)| json!({"name": n, "value": v}))
                .collect(),
        );
        match pod.spec.as_ref() {
            None => ops.push(add(
                ptr(&["spec"]),
                json!({"securityContext": {"sysctls": list}}),
            )),
            Some(spec) => match spec.security_context.as_ref() {
                None => ops.push(add(
                    ptr(&["spec", "securityContext"]),
                    json!({"sysctls": list}),
                )),
                Some(sc) if sc.sysctls.is_none() => {
                    ops.push(add(ptr(&["spec", "securityContext", "sysctls"]), list))
                }
                Some(_) => ops.push(replace(ptr(&["spec", "securityContext", "sysctls"]), list)),
            },
        }
    }
    // 2. annotations
    let annotations = pod.metadata.annotations.as_ref();
    let get = |k: &str| annotations.and_then(|a| a.get(k));
    let mut wanted_ann: Vec<(&str, String)> = vec![
        (DECISION_ANNOTATION, plan.decision.to_annotation()),
        (SUMMARY_ANNOTATION, plan.decision.summary()),
    ];
    if let (Some(net), false) = (plan.tuning_network.as_deref(), plan.tuning_cni.is_empty()) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let raw = get(MULTUS_NETWORKS_ANNOTATION);
        // The planner refuses tuning CNI when the annotation is unreadable, so this parses.
        let existing = raw.and_then(|r| parse_networks(r).ok()).unwrap_or_default();
        let merged = merged_networks(&existing, net, ns, &plan.tuning_cni);
        let unchanged = raw
            .and_then(|e| serde_json::from_str::<Value>(e).ok())
            .is_some_and(|v| v.as_array().is_some_and(|a| *a == merged));
        if !unchanged {
            wanted_ann.push((MULTUS_NETWORKS_ANNOTATION, Value::Array(merged).to_string()));
        }
    }
    match annotations {
        None => {
            let map: Map<String, Value> = wanted_ann
                .into_iter()
                .map(|(k, v)| (k.to_string(), Value::String(v)))
                .collect();
            ops.push(add(ptr(&["metadata", "annotations"]), Value::Object(map)));
        }
        Some(current) => {
            for (k, v) in wanted_ann {
                match current.get(k) {
                    Some(cur) if *cur == v => {}
                    Some(_) => ops.push(replace(ptr(&["metadata", "annotations", k]), json!(v))),
                    None => ops.push(add(ptr(&["metadata", "annotations", k]), json!(v))),
                }
            }
        }
    }
    Patch(ops)
}
