//! JSONPatch from a [`Plan`]: merge into `spec.securityContext.sysctls` (the pod's own entries
//! are kept, in order, and never removed), add kubetune's node-affinity requirements to every
//! term of the pod's required node affinity, write the decision annotations, and select the
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

use k8s_openapi::api::core::v1::NodeSelectorRequirement;
use kubetune_crds::placement;

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
    // The entries' names normalised once (the plan's names are).
    let mut names: Vec<String> = out.iter().map(|(n, _)| sysctl::normalize_name(n)).collect();
    for (name, value) in &plan.security_context {
        match names.iter().position(|n| n == name) {
            Some(i) => out[i].1.clone_from(value),
            None => {
                out.push((name.clone(), value.clone()));
                names.push(name.clone());
            }
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
    // 2. spec.affinity.nodeAffinity (required)
    ops.extend(affinity_ops(pod, plan));
    // 3. annotations
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

const REQUIRED: &str = "requiredDuringSchedulingIgnoredDuringExecution";

/// Add the plan's node-affinity requirements: a new required term when the pod has none; else
/// each missing requirement into every existing term (terms are ORed, so a term without it
/// would let the pod onto a refusing node). An empty term matches no node and stays as it is.
/// Only appends; never rewrites what the pod has.
fn affinity_ops(pod: &Pod, plan: &Plan) -> Vec<PatchOperation> {
    let (exprs, fields) = placement::requirements(&plan.node_affinity);
    if exprs.is_empty() && fields.is_empty() {
        return Vec::new();
    }
    let term = || {
        let mut t = json!({});
        if !exprs.is_empty() {
            t["matchExpressions"] = json!(exprs);
        }
        if !fields.is_empty() {
            t["matchFields"] = json!(fields);
        }
        t
    };
    let spec = pod.spec.as_ref();
    let affinity = spec.and_then(|s| s.affinity.as_ref());
    let node = affinity.and_then(|a| a.node_affinity.as_ref());
    let required = node.and_then(|n| {
        n.required_during_scheduling_ignored_during_execution
            .as_ref()
    });
    let base = ["spec", "affinity", "nodeAffinity", REQUIRED];
    match (spec, affinity, node, required) {
        (None, ..) => vec![add(
            ptr(&["spec"]),
            json!({"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [term()]}}}}),
        )],
        (_, None, ..) => vec![add(
            ptr(&base[..2]),
            json!({"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [term()]}}}),
        )],
        (_, _, None, _) => vec![add(
            ptr(&base[..3]),
            json!({REQUIRED: {"nodeSelectorTerms": [term()]}}),
        )],
        (_, _, _, None) => vec![add(ptr(&base), json!({"nodeSelectorTerms": [term()]}))],
        (.., Some(r)) if r.node_selector_terms.is_empty() => {
            vec![add(
                ptr(&[&base[..], &["nodeSelectorTerms", "-"]].concat()),
                term(),
            )]
        }
        (.., Some(r)) => r
            .node_selector_terms
            .iter()
            .enumerate()
            .filter(|(_, t)| !placement::is_empty(t))
            .flat_map(|(i, t)| {
                let i = i.to_string();
                let at = |list: &str| {
                    let mut p: Vec<&str> = base.to_vec();
                    p.extend(["nodeSelectorTerms", i.as_str(), list]);
                    p.iter().map(|s| s.to_string()).collect::<Vec<_>>()
                };
                let mut ops = append_missing(
                    at("matchExpressions"),
                    t.match_expressions.as_deref(),
                    &exprs,
                );
                ops.extend(append_missing(
                    at("matchFields"),
                    t.match_fields.as_deref(),
                    &fields,
                ));
                ops
            })
            .collect(),
    }
}

/// Ops appending each of `wanted` not already in `current` to the list at `path` (creating it).
fn append_missing(
    path: Vec<String>,
    current: Option<&[NodeSelectorRequirement]>,
    wanted: &[NodeSelectorRequirement],
) -> Vec<PatchOperation> {
    let missing: Vec<&NodeSelectorRequirement> = wanted
        .iter()
        .filter(|w| !current.unwrap_or_default().contains(w))
        .collect();
    let tokens: Vec<&str> = path.iter().map(String::as_str).collect();
    match current {
        _ if missing.is_empty() => Vec::new(),
        None => vec![add(ptr(&tokens), json!(missing))],
        Some(_) => missing
            .into_iter()
            .map(|m| add(ptr(&[&tokens[..], &["-"]].concat()), json!(m)))
            .collect(),
    }
}
