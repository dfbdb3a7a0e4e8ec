//! JSONPatch from a [`Plan`]: merge into `spec.securityContext.sysctls` (the pod's own entries
//! are kept, in order, and never removed), add kubetune's node-affinity requirements to every
//! term of the pod's required node affinity, write the decision annotations, and select the
//! tuning-CNI network with `cni-args`. Idempotent: running the webhook again on the patched pod
//! yields an empty patch.
//!
//! The operations are typed ([`PodPatch`], [`Op`], [`OpValue`]) and written straight to RFC
//! 6902 JSON with literal keys ([`PodPatch::to_json`]): a new pod shape is patched once per plan,
//! and building `serde_json::Value` trees and JSON pointers only to serialise them, escaping
//! every key on the way, cost about as much as the plan itself.

use k8s_openapi::api::core::v1::Pod;
use kubetune_crds::decision::{
    DECISION_ANNOTATION, MULTUS_NETWORKS_ANNOTATION, SUMMARY_ANNOTATION,
};
use kubetune_crds::json;
use kubetune_crds::pod::sysctls as current_sysctls;
use kubetune_crds::sysctl;
use serde_json::{json, Value};

use k8s_openapi::api::core::v1::NodeSelectorRequirement;
use kubetune_crds::placement;

use crate::networks::{merged_networks, parse_networks};
use crate::plan::Plan;

/// kubetune's JSONPatch for one pod ([`PodPatch::to_json`]: an RFC 6902 array).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodPatch(pub Vec<Op>);

impl PodPatch {
    /// The patch as JSON: `[{"op": "add"|"replace", "path": <pointer>, "value": ...}, ...]`.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(512);
        out.push('[');
        for (i, op) in self.0.iter().enumerate() {
            out.push_str(if i == 0 { "{\"op\":\"" } else { ",{\"op\":\"" });
            out.push_str(match op.op {
                OpKind::Add => "add",
                OpKind::Replace => "replace",
            });
            out.push_str("\",\"path\":");
            json::push_string(&mut out, &op.path);
            out.push_str(",\"value\":");
            op.value.write_json(&mut out);
            out.push('}');
        }
        out.push(']');
        out
    }

    /// The same operations as a [`json_patch::Patch`] (to apply them to a document).
    pub fn to_json_patch(&self) -> json_patch::Patch {
        serde_json::from_str(&self.to_json()).expect("kubetune writes RFC 6902 operations")
    }
}

/// One operation: `op` the `value` at `path`.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    /// `add` or `replace`.
    pub op: OpKind,
    /// JSON pointer (RFC 6901, `~` and `/` escaped).
    pub path: String,
    /// The value at `path`.
    pub value: OpValue,
}

/// The operations kubetune writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// RFC 6902 `add`.
    Add,
    /// RFC 6902 `replace`.
    Replace,
}

/// A value kubetune writes.
#[derive(Clone, Debug, PartialEq)]
pub enum OpValue {
    /// `securityContext.sysctls` entries (`[{"name", "value"}]`), nested under the keys given
    /// (outermost first) where the pod lacks the objects that hold the list.
    Sysctls(&'static [&'static str], Vec<(String, String)>),
    /// A string, as its JSON string literal (one annotation).
    Str(String),
    /// A whole `metadata.annotations` object: keys and their values' JSON string literals.
    Annotations(Vec<(&'static str, String)>),
    /// Anything else (node affinity: rarely written, built as JSON).
    Json(Value),
}

impl OpValue {
    fn write_json(&self, out: &mut String) {
        match self {
            OpValue::Sysctls(keys, list) => {
                for k in *keys {
                    out.push('{');
                    json::push_string(out, k);
                    out.push(':');
                }
                out.push('[');
                for (i, (name, value)) in list.iter().enumerate() {
                    out.push_str(if i == 0 { "{\"name\":" } else { ",{\"name\":" });
                    json::push_string(out, name);
                    out.push_str(",\"value\":");
                    json::push_string(out, value);
                    out.push('}');
                }
                out.push(']');
                keys.iter().for_each(|_| out.push('}'));
            }
            OpValue::Str(literal) => out.push_str(literal),
            OpValue::Annotations(kv) => {
                out.push('{');
                for (i, (k, v)) in kv.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    json::push_string(out, k);
                    out.push(':');
                    out.push_str(v);
                }
                out.push('}');
            }
            OpValue::Json(v) => out.push_str(&v.to_string()),
        }
    }
}

/// The JSON pointer of `tokens` (RFC 6901: `~` as `~0`, `/` as `~1`).
fn ptr(tokens: &[&str]) -> String {
    let mut p = String::with_capacity(64);
    for t in tokens {
        p.push('/');
        let mut rest = *t;
        while let Some(i) = rest.bytes().position(|b| b == b'~' || b == b'/') {
            p.push_str(&rest[..i]);
            p.push_str(if rest.as_bytes()[i] == b'~' {
                "~0"
            } else {
                "~1"
            });
            rest = &rest[i + 1..];
        }
        p.push_str(rest);
    }
    p
}

fn add(path: String, value: OpValue) -> Op {
    Op {
        op: OpKind::Add,
        path,
        value,
    }
}

fn add_json(path: String, value: Value) -> Op {
    add(path, OpValue::Json(value))
}

fn replace(path: String, value: OpValue) -> Op {
    Op {
        op: OpKind::Replace,
        path,
        value,
    }
}

/// The pod's final `securityContext.sysctls`: its current entries, in order, with kubetune's
/// values set in place where kubetune injected the sysctl before (re-invocation) and appended
/// otherwise. Nothing is ever removed, and the pod's own values are never planned (the planner
/// records them as `PodValueKept`), so they are never changed.
pub fn final_sysctls(pod: &Pod, plan: &Plan) -> Vec<(String, String)> {
    let mut out = current_sysctls(pod);
    // The pod's names normalised once; the plan's are normalised and distinct, so only the
    // pod's entries are searched.
    let names: Vec<String> = out.iter().map(|(n, _)| sysctl::normalize_name(n)).collect();
    for (name, value) in &plan.security_context {
        match names.iter().position(|n| n == name) {
            Some(i) => out[i].1.clone_from(value),
            None => out.push((name.clone(), value.clone())),
        }
    }
    out
}

/// Build the patch for `pod` from `plan`.
pub fn build_patch(pod: &Pod, plan: &Plan) -> PodPatch {
    let mut ops = Vec::new();
    if plan.is_empty() {
        return PodPatch(ops);
    }
    // 1. securityContext.sysctls
    let wanted = final_sysctls(pod, plan);
    if wanted != current_sysctls(pod) {
        const SYSCTLS: [&str; 3] = ["spec", "securityContext", "sysctls"];
        let sc = pod.spec.as_ref().map(|s| s.security_context.as_ref());
        let (op, at): (fn(String, OpValue) -> Op, usize) = match sc {
            None => (add, 1),
            Some(None) => (add, 2),
            Some(Some(sc)) if sc.sysctls.is_none() => (add, 3),
            Some(Some(_)) => (replace, 3),
        };
        ops.push(op(
            ptr(&SYSCTLS[..at]),
            OpValue::Sysctls(&SYSCTLS[at..], wanted),
        ));
    }
    // 2. spec.affinity.nodeAffinity (required)
    ops.extend(affinity_ops(pod, plan));
    // 3. annotations
    ops.extend(annotation_ops(pod, plan));
    PodPatch(ops)
}

/// The decision and summary annotations (and the Multus selection for tuning CNI), each added
/// or replaced unless the pod already carries exactly that value.
fn annotation_ops(pod: &Pod, plan: &Plan) -> Vec<Op> {
    let mut ops = Vec::new();
    let annotations = pod.metadata.annotations.as_ref();
    let get = |k: &str| annotations.and_then(|a| a.get(k));
    // (key, value, the value's JSON string literal); the record's JSON text is only written when
    // the pod carries a record to compare it with.
    let (decision, decision_literal) = match get(DECISION_ANNOTATION) {
        Some(_) => {
            let (json, literal) = plan.decision.to_annotation_and_literal();
            (Some(json), literal)
        }
        None => (None, plan.decision.to_annotation_literal()),
    };
    let summary = plan.decision.summary();
    let summary_literal = json::string_literal(&summary);
    let mut wanted_ann: Vec<(&str, Option<String>, String)> = vec![
        (DECISION_ANNOTATION, decision, decision_literal),
        (SUMMARY_ANNOTATION, Some(summary), summary_literal),
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
            let networks = Value::Array(merged).to_string();
            let literal = json::string_literal(&networks);
            wanted_ann.push((MULTUS_NETWORKS_ANNOTATION, Some(networks), literal));
        }
    }
    match annotations {
        None => ops.push(add(
            ptr(&["metadata", "annotations"]),
            OpValue::Annotations(wanted_ann.into_iter().map(|(k, _, l)| (k, l)).collect()),
        )),
        Some(current) => {
            for (k, v, literal) in wanted_ann {
                let path = || ptr(&["metadata", "annotations", k]);
                match current.get(k) {
                    Some(cur) if v.as_ref() == Some(cur) => {}
                    Some(_) => ops.push(replace(path(), OpValue::Str(literal))),
                    None => ops.push(add(path(), OpValue::Str(literal))),
                }
            }
        }
    }
    ops
}

const REQUIRED: &str = "requiredDuringSchedulingIgnoredDuringExecution";

/// Add the plan's node-affinity requirements: a new required term when the pod has none; else
/// each missing requirement into every existing term (terms are ORed, so a term without it
/// would let the pod onto a refusing node). An empty term matches no node and stays as it is.
/// Only appends; never rewrites what the pod has.
fn affinity_ops(pod: &Pod, plan: &Plan) -> Vec<Op> {
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
        (None, ..) => vec![add_json(
            ptr(&["spec"]),
            json!({"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [term()]}}}}),
        )],
        (_, None, ..) => vec![add_json(
            ptr(&base[..2]),
            json!({"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [term()]}}}),
        )],
        (_, _, None, _) => vec![add_json(
            ptr(&base[..3]),
            json!({REQUIRED: {"nodeSelectorTerms": [term()]}}),
        )],
        (_, _, _, None) => vec![add_json(ptr(&base), json!({"nodeSelectorTerms": [term()]}))],
        (.., Some(r)) if r.node_selector_terms.is_empty() => {
            vec![add_json(
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
) -> Vec<Op> {
    let missing: Vec<&NodeSelectorRequirement> = wanted
        .iter()
        .filter(|w| !current.unwrap_or_default().contains(w))
        .collect();
    let tokens: Vec<&str> = path.iter().map(String::as_str).collect();
    match current {
        _ if missing.is_empty() => Vec::new(),
        None => vec![add_json(ptr(&tokens), json!(missing))],
        Some(_) => missing
            .into_iter()
            .map(|m| add_json(ptr(&[&tokens[..], &["-"]].concat()), json!(m)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::ptr;

    #[test]
    fn pointers_escape_tilde_and_slash_as_rfc_6901_says() {
        assert_eq!(ptr(&[]), "");
        assert_eq!(ptr(&["spec", "securityContext"]), "/spec/securityContext");
        assert_eq!(
            ptr(&["metadata", "annotations", "kubetune.dev/decision"]),
            "/metadata/annotations/kubetune.dev~1decision"
        );
        assert_eq!(ptr(&["a~b/c", "~", "/", ""]), "/a~0b~1c/~0/~1/");
        assert_eq!(ptr(&["é/~ü"]), "/é~1~0ü");
    }
}
