//! JSONPatch from a [`Plan`]: merge into `spec.securityContext.sysctls` (the pod's own entries
//! are kept, in order, and never removed), write the decision annotations, and select the
//! tuning-CNI network with `cni-args`. Idempotent: running the webhook again on the patched pod
//! yields an empty patch.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::Pod;
use kubetune_crds::decision::{
    DECISION_ANNOTATION, MULTUS_NETWORKS_ANNOTATION, SUMMARY_ANNOTATION,
};
use kubetune_crds::sysctl;
use serde_json::{json, Map, Value};

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

fn current_sysctls(pod: &Pod) -> Vec<(String, String)> {
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|sc| sc.sysctls.as_ref())
        .map(|l| {
            l.iter()
                .map(|s| (s.name.clone(), s.value.clone()))
                .collect()
        })
        .unwrap_or_default()
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

/// A `k8s.v1.cni.cncf.io/networks` value kubetune cannot read (and so will not rewrite).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworksError {
    /// JSON, but not a list of objects with a string `name`.
    #[error("JSON network selection must be a list of objects with a \"name\": {0}")]
    BadJson(String),
    /// Neither JSON nor the `ns/name@iface, ...` short form.
    #[error("{0:?} is not a network selection (JSON list or \"ns/name@iface, ...\")")]
    BadShortForm(String),
}

fn dns_label_ish(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Parse a Multus network-selection annotation: a JSON list of objects with a `name`, or the
/// short form `ns/name@iface, name2` (converted to JSON objects).
pub fn parse_networks(raw: &str) -> Result<Vec<Value>, NetworksError> {
    let t = raw.trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    if t.starts_with('[') || t.starts_with('{') {
        return match serde_json::from_str::<Value>(t) {
            Ok(Value::Array(list)) => {
                if list
                    .iter()
                    .all(|e| e.get("name").is_some_and(Value::is_string))
                {
                    Ok(list)
                } else {
                    Err(NetworksError::BadJson("an entry has no string name".into()))
                }
            }
            Ok(_) => Err(NetworksError::BadJson("not a list".into())),
            Err(e) => Err(NetworksError::BadJson(e.to_string())),
        };
    }
    t.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let bad = || NetworksError::BadShortForm(item.to_string());
            let (rest, iface) = match item.split_once('@') {
                Some((r, i)) => (r, Some(i)),
                None => (item, None),
            };
            let mut o = match rest.split_once('/') {
                Some((ns, name)) if dns_label_ish(ns) && dns_label_ish(name) => {
                    json!({"name": name, "namespace": ns})
                }
                None if dns_label_ish(rest) => json!({"name": rest}),
                _ => return Err(bad()),
            };
            if let Some(i) = iface {
                if i.is_empty()
                    || i.len() > 15
                    || i.contains(|c: char| c.is_whitespace() || c == '/')
                {
                    return Err(bad());
                }
                o["interface"] = json!(i);
            }
            Ok(o)
        })
        .collect()
}

/// The Multus selection with kubetune's tuning network (and its `cni-args.sysctl`) merged in:
/// the pod's other entries are kept in order; an existing entry for the tuning network in the
/// pod's namespace is replaced (kept in place), else the entry is appended.
pub fn merged_networks(
    existing: &[Value],
    network: &str,
    namespace: &str,
    sysctls: &BTreeMap<String, String>,
) -> Vec<Value> {
    let ours = json!({"name": network, "namespace": namespace, "cni-args": {"sysctl": sysctls}});
    let is_ours = |e: &Value| {
        e.get("name").and_then(Value::as_str) == Some(network)
            && e.get("namespace")
                .and_then(Value::as_str)
                .is_none_or(|n| n == namespace)
    };
    let mut out = Vec::with_capacity(existing.len() + 1);
    let mut placed = false;
    for e in existing {
        if is_ours(e) {
            if !placed {
                out.push(ours.clone());
                placed = true;
            }
        } else {
            out.push(e.clone());
        }
    }
    if !placed {
        out.push(ours);
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
