//! The `/mutate` and `/validate` handlers, pure over a [`Snapshot`] of the caches; both speak
//! AdmissionReview v1 through [`crate::review`].
//!
//! Contract: `/mutate` always allows (kubetune must never block a pod); anything it cannot
//! understand gets a well-formed allowed response with a warning. Only a body that is not JSON
//! at all is a 400. `/validate` denies invalid TuningPolicies with the validation messages.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kubetune_crds::decision::SKIP_ANNOTATION;
use kubetune_crds::facts::ClusterFacts;
use kubetune_crds::matching::selector_keys;
use kubetune_crds::policy::{validate_spec, TuningPolicy};

use crate::memo::{PlanMemo, Planned};
use crate::patch::build_patch;
use crate::plan::{plan, NamespaceFacts, PSA_ENFORCE};
use crate::podview::PodSubset;
use crate::review::{self, Answer, NotJson, Request, ReviewOutcome};

/// Annotation the kubelet sets on mirror (static) pods.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Everything the handlers read: a consistent view of the reflector caches.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every TuningPolicy in the cluster.
    pub policies: Vec<TuningPolicy>,
    /// Namespace labels by name.
    pub namespaces: BTreeMap<String, NamespaceFacts>,
    /// Cluster facts: node truth (Nodes and their NodeTunings) with the optional
    /// `kubetune-cluster-facts` ConfigMap override.
    pub facts: ClusterFacts,
    /// Answers already computed against this snapshot, by pod object (starts empty; see
    /// [`PlanMemo`]): replicas of one pod template.
    pub memo: PlanMemo,
    /// The same, by plan input ([`PodSubset::plan_input`]): pods that differ only in what
    /// kubetune does not read, e.g. the first pods of successive rollouts of one Deployment.
    pub inputs: PlanMemo,
}

impl Snapshot {
    /// Same policies, namespaces and facts (the memo aside): a rebuild that changes nothing the
    /// planner reads keeps the current snapshot and its memo.
    pub fn same_inputs(&self, other: &Snapshot) -> bool {
        self.facts == other.facts
            && self.namespaces == other.namespaces
            && versions(&self.policies) == versions(&other.policies)
    }
}

/// Each policy's identity and `resourceVersion` (any change of a policy changes it).
fn versions(p: &[TuningPolicy]) -> Vec<(Option<&str>, Option<&str>, Option<&str>)> {
    p.iter()
        .map(|p| {
            let m = &p.metadata;
            (
                m.namespace.as_deref(),
                m.name.as_deref(),
                m.resource_version.as_deref(),
            )
        })
        .collect()
}

/// Static configuration of the handlers.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespaces whose pods are never touched.
    pub excluded_namespaces: BTreeSet<String>,
}

impl Config {
    /// kube-system, kube-node-lease, the operator's own namespace, plus `extra`.
    pub fn new(own_namespace: &str, extra: &[String]) -> Self {
        let mut excluded: BTreeSet<String> = ["kube-system", "kube-node-lease"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        excluded.insert(own_namespace.to_string());
        excluded.extend(extra.iter().filter(|s| !s.is_empty()).cloned());
        Self {
            excluded_namespaces: excluded,
        }
    }
}

/// `/mutate`: plan and patch a pod. Always allows; see the module docs.
pub fn mutate(body: &[u8], snap: &Snapshot, cfg: &Config) -> Result<Answer, NotJson> {
    Ok(match review::decode(body)? {
        Ok(req) => mutate_request(&req, snap, cfg),
        Err(malformed) => malformed,
    })
}

fn mutate_request(req: &Request<'_>, snap: &Snapshot, cfg: &Config) -> Answer {
    let uid = &*req.uid;
    if req.kind.kind != "Pod" || !req.kind.group.is_empty() {
        let why = format!("/mutate handles Pods, not {}", req.kind.kind);
        return Answer::malformed(uid, why);
    }
    if req.operation != "CREATE" {
        return Answer::allowed(uid, ReviewOutcome::Skipped);
    }
    let Some(raw) = req.object else {
        return Answer::malformed(uid, "review has no object".into());
    };
    let raw = raw.get();
    // The memo answers only a known object in a known, not excluded namespace: such an object
    // was planned before, past every check below, which depend on nothing but the object, the
    // namespace and the snapshot.
    let memo_ns = req
        .namespace
        .as_deref()
        .filter(|ns| !cfg.excluded_namespaces.contains(*ns) && snap.namespaces.contains_key(*ns));
    if let Some(ns) = memo_ns {
        if let Some(hit) = snap.memo.get(ns, raw) {
            return hit.answer(uid, None, true);
        }
    }
    let mut subset = match crate::podview::decode_subset(raw) {
        Ok(p) => p,
        Err(e) => return Answer::malformed(uid, format!("object is not a valid Pod: {e}")),
    };
    let namespace = req
        .namespace
        .as_deref()
        .or_else(|| subset.namespace())
        .unwrap_or_default()
        .to_string();
    subset.set_namespace(namespace.clone());
    if excluded(&subset, &namespace, cfg) {
        return Answer::allowed(uid, ReviewOutcome::Skipped);
    }
    // A namespace the cache has not seen yet (created a moment ago): assume PodSecurity
    // `restricted` so nothing the apiserver could reject is injected, and say so. Such answers
    // are not memoised (the warning belongs to this moment, not to the snapshot).
    let (ns, warning) = namespace_facts(snap, &namespace);
    let name = subset.display_name().to_string();
    let input = subset.plan_input(&selector_keys(&snap.policies, &namespace));
    let (planned, hit) = plan_input_answer(input, &ns, snap, memo_ns);
    tracing::debug!(
        uid,
        namespace,
        pod = name,
        outcome = planned.outcome.as_str(),
        plan_input_memo_hit = hit,
        dry_run = req.dry_run.unwrap_or(false),
        "planned pod"
    );
    let answer = planned.answer(uid, warning.as_deref(), hit);
    if let Some(ns) = memo_ns {
        snap.memo.insert(ns, raw, planned);
    }
    answer
}

/// The plan and patch of a pod's plan input: from the snapshot's plan-input memo when it planned
/// the same input before (the first pod of a rollout that changed nothing kubetune reads), else
/// planned now and remembered. `memo_ns`: the namespace when the answer may be remembered.
fn plan_input_answer(
    input: PodSubset,
    ns: &NamespaceFacts,
    snap: &Snapshot,
    memo_ns: Option<&str>,
) -> (Arc<Planned>, bool) {
    let key = memo_ns.map(|m| (m, input.key()));
    if let Some((m, k)) = &key {
        if let Some(hit) = snap.inputs.get(m, k) {
            return (hit, true);
        }
    }
    let planned = Arc::new(plan_and_patch(&input.into_pod(), ns, snap));
    if let Some((m, k)) = key {
        snap.inputs.insert(m, &k, planned.clone());
    }
    (planned, false)
}

/// Pods kubetune never touches: in an excluded namespace, mirror pods, opted out.
fn excluded(pod: &PodSubset, namespace: &str, cfg: &Config) -> bool {
    cfg.excluded_namespaces.contains(namespace)
        || pod.annotation(MIRROR_ANNOTATION).is_some()
        || kubetune_crds::pod::opted_out(
            pod.annotation(SKIP_ANNOTATION),
            pod.label(SKIP_ANNOTATION),
        )
}

/// The namespace's facts, or — for a namespace the cache has not seen yet — PodSecurity
/// `restricted` and a warning saying so.
fn namespace_facts<'s>(
    snap: &'s Snapshot,
    namespace: &str,
) -> (Cow<'s, NamespaceFacts>, Option<String>) {
    if let Some(ns) = snap.namespaces.get(namespace) {
        return (Cow::Borrowed(ns), None);
    }
    let warning = format!(
        "namespace {namespace} is not in kubetune's cache yet; assumed PodSecurity \
         enforce=restricted (only safe sysctls)"
    );
    let facts = NamespaceFacts {
        name: namespace.to_string(),
        labels: BTreeMap::from([(PSA_ENFORCE.to_string(), "restricted".to_string())]),
    };
    (Cow::Owned(facts), Some(warning))
}

/// Plan and patch one pod (the uncached path of `/mutate`).
fn plan_and_patch(pod: &Pod, ns: &NamespaceFacts, snap: &Snapshot) -> Planned {
    let unpatched = |outcome| Planned {
        patch_b64: None,
        outcome,
        delivered: vec![],
    };
    let p = plan(pod, ns, &snap.policies, &snap.facts);
    if p.is_empty() {
        return unpatched(ReviewOutcome::Skipped);
    }
    let patch = build_patch(pod, &p);
    if patch.0.is_empty() {
        return unpatched(ReviewOutcome::Unchanged);
    }
    let mut delivered = Vec::new();
    if !p.security_context.is_empty() {
        delivered.push("securityContext");
    }
    if !p.tuning_cni.is_empty() {
        delivered.push("tuningCNI");
    }
    let raw = sonic_rs::to_vec(&patch).unwrap_or_default();
    Planned {
        patch_b64: Some(base64_simd::STANDARD.encode_to_string(raw)),
        outcome: ReviewOutcome::Patched,
        delivered,
    }
}

/// `/validate`: deny invalid TuningPolicies with every validation message.
pub fn validate(body: &[u8]) -> Result<Answer, NotJson> {
    Ok(match review::decode(body)? {
        Ok(req) => validate_request(&req),
        Err(malformed) => malformed,
    })
}

fn validate_request(req: &Request<'_>) -> Answer {
    let uid = &*req.uid;
    let op = &*req.operation;
    if !matches!(op, "CREATE" | "UPDATE" | "DELETE" | "CONNECT") {
        let why = format!("malformed AdmissionReview: unknown operation {op:?}");
        return Answer::malformed(uid, why);
    }
    if req.kind.kind != "TuningPolicy" || op == "DELETE" {
        return Answer::allowed(uid, ReviewOutcome::Valid);
    }
    let Some(raw) = req.object else {
        return Answer::malformed(uid, "review has no object".into());
    };
    // An object that is not even a Kubernetes object is a malformed review (allowed); one that
    // is not a TuningPolicy is denied.
    let obj: DynamicObject = match serde_json::from_str(raw.get()) {
        Ok(o) => o,
        Err(e) => return Answer::malformed(uid, format!("malformed AdmissionReview: {e}")),
    };
    let policy: TuningPolicy = match serde_json::to_value(obj).and_then(serde_json::from_value) {
        Ok(p) => p,
        Err(e) => return Answer::denied(uid, &format!("not a valid TuningPolicy: {e}")),
    };
    let errs = validate_spec(&policy.spec);
    if errs.is_empty() {
        return Answer::allowed(uid, ReviewOutcome::Valid);
    }
    let msg = errs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Answer::denied(uid, &msg)
}
