//! The `/mutate` and `/validate` handlers, pure over a [`Snapshot`] of the caches; both speak
//! AdmissionReview v1 through [`crate::review`].
//!
//! Contract: `/mutate` always allows (kubetune must never block a pod); anything it cannot
//! understand gets a well-formed allowed response with a warning. Only a body that is not JSON
//! at all is a 400. `/validate` denies invalid TuningPolicies with the validation messages.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kubetune_crds::decision::SKIP_ANNOTATION;
use kubetune_crds::facts::ClusterFacts;
use kubetune_crds::matching::{selector_keys, selector_values, NamespacePolicies};
use kubetune_crds::policy::{validate_spec, TuningPolicy};
use serde_json::value::RawValue;

use crate::memo::{PlanMemo, Planned, ReviewMemo, SkeletonMemo};
use crate::patch::build_patch;
use crate::plan::{plan_matched, NamespaceFacts, PreparedPolicy, PSA_ENFORCE};
use crate::podview::{decode_subset, PodSubset, PLAN_ANNOTATIONS};
use crate::review::{self, Answer, NotJson, Request, ReviewOutcome};
use crate::skeleton::{LabelRead, Reads};

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
    /// Answers already computed against this snapshot, by review body but its uid (starts
    /// empty, or with what [`Snapshot::carry_over`] keeps; see [`ReviewMemo`]): replicas of one
    /// pod template.
    pub memo: ReviewMemo,
    /// The same, by review skeleton ([`SkeletonMemo`]): reviews that differ only in string
    /// values `/mutate` does not read, e.g. the first pods of successive rollouts.
    pub skeletons: SkeletonMemo,
    /// The same, by the policies that select the pod and its plan input
    /// ([`PodSubset::plan_input`]): pods that differ only in what kubetune does not read, e.g.
    /// the first pods of successive rollouts of one Deployment, or the pods of two Deployments
    /// the same policies select.
    pub inputs: PlanMemo,
    /// The policies of each namespace, their selectors compiled and each prepared for planning
    /// (filled as namespaces are seen; a copied snapshot starts empty).
    pub namespace_policies: NamespaceIndex,
}

impl Snapshot {
    /// Same policies, namespaces and facts (the memo aside): a rebuild that changes nothing the
    /// planner reads keeps the current snapshot and its memo.
    pub fn same_inputs(&self, other: &Snapshot) -> bool {
        self.facts == other.facts
            && self.namespaces == other.namespaces
            && versions(&self.policies) == versions(&other.policies)
    }

    /// Take over what `old` remembered that still holds in this snapshot: when the policies (in
    /// the same order) and the cluster facts are the same — only namespaces changed, say one was
    /// created — the prepared policies of every namespace, and the answers for pods of the
    /// namespaces whose facts are the same in both. A namespace coming and going elsewhere in
    /// the cluster then does not send every pod shape through planning again.
    pub fn carry_over(&mut self, old: &Snapshot) {
        if self.facts != old.facts || versions(&self.policies) != versions(&old.policies) {
            return;
        }
        let same = |p: &Planned| {
            let ns = p.namespace.as_str();
            self.namespaces
                .get(ns)
                .is_some_and(|n| old.namespaces.get(ns) == Some(n))
        };
        self.memo = old.memo.carried(same);
        self.skeletons = old.skeletons.carried(same);
        self.inputs = old.inputs.carried(same);
        let exists = |ns: &str| self.namespaces.contains_key(ns);
        self.namespace_policies = old.namespace_policies.carried(exists);
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

/// What planning reads of a namespace's policies, the same for every pod there: the policies
/// that can select its pods ([`NamespacePolicies`]), each one [`PreparedPolicy`].
#[derive(Debug)]
pub struct NamespacePlanning {
    /// The namespace's policies, their selectors compiled.
    pub policies: NamespacePolicies,
    prepared: HashMap<usize, PreparedPolicy>,
}

impl NamespacePlanning {
    /// The policies of `all` that can select pods of `namespace`, prepared.
    pub fn new(all: &[TuningPolicy], namespace: &str) -> Self {
        let policies = NamespacePolicies::new(all, namespace);
        let prepared = policies
            .indices()
            .map(|i| (i, PreparedPolicy::of(&all[i])))
            .collect();
        Self { policies, prepared }
    }

    /// The policies at `matched` (indices into `all`, as [`NamespacePolicies::matching`] gives
    /// them), each with what was prepared for it.
    pub fn prepared<'a>(
        &'a self,
        all: &'a [TuningPolicy],
        matched: &[usize],
    ) -> Vec<(&'a TuningPolicy, &'a PreparedPolicy)> {
        matched
            .iter()
            .filter_map(|&i| Some((all.get(i)?, self.prepared.get(&i)?)))
            .collect()
    }
}

/// The [`NamespacePlanning`] of a snapshot's policies, built once per namespace.
#[derive(Default, Debug)]
pub struct NamespaceIndex(Mutex<HashMap<String, Arc<NamespacePlanning>>>);

impl Clone for NamespaceIndex {
    /// A copied snapshot (whose policies may then change) starts empty.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl NamespaceIndex {
    /// The same index, for a snapshot with the same policies, without the namespaces `keep`
    /// refuses (those gone from the cache: repeated carrying must not collect every namespace
    /// ever seen).
    fn carried(&self, keep: impl Fn(&str) -> bool) -> Self {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let kept = m.iter().filter(|(ns, _)| keep(ns));
        Self(Mutex::new(
            kept.map(|(k, v)| (k.clone(), v.clone())).collect(),
        ))
    }
    /// Number of namespaces indexed.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
    /// True when no namespace is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// What planning reads of the policies of `policies` that can select pods of `namespace`.
    pub fn of(&self, policies: &[TuningPolicy], namespace: &str) -> Arc<NamespacePlanning> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = m.get(namespace) {
            return k.clone();
        }
        let index = Arc::new(NamespacePlanning::new(policies, namespace));
        m.insert(namespace.to_string(), index.clone());
        index
    }
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
///
/// A review equal to one answered before but for its uid (a replica) is answered from the
/// [`ReviewMemo`] without being decoded, and so is one that differs from an answered one only
/// in string values `/mutate` does not read (the [`SkeletonMemo`]: the first pod of a rollout).
/// Else the review is decoded in one pass with the pod's
/// [`PodSubset`]; only when that fails is it decoded again with the object raw, to say exactly
/// what is wrong.
pub fn mutate(body: &[u8], snap: &Snapshot, cfg: &Config) -> Result<Answer, NotJson> {
    let miss = match snap.memo.get(body) {
        // Remembered only for a namespace the configuration did not exclude; checked again
        // because one snapshot may serve handlers with different configurations (tests).
        Ok((hit, uid)) if !cfg.excluded_namespaces.contains(&hit.namespace) => {
            return Ok(hit.answer(uid, None, true));
        }
        Ok(_) => Default::default(),
        Err(miss) => miss,
    };
    let skeleton_miss = match snap.skeletons.get(body, || reads(&snap.policies)) {
        Ok((hit, uid)) if !cfg.excluded_namespaces.contains(&hit.namespace) => {
            return Ok(hit.answer(uid, None, true));
        }
        Ok(_) => None,
        Err(miss) => Some(miss),
    };
    if let Ok(Ok(req)) = review::decode::<PodSubset>(body) {
        let uid = req.uid.clone();
        let (answer, memoisable) = mutate_request(req.map_object(Ok), snap, cfg);
        if let Some(planned) = memoisable {
            if let Some(m) = skeleton_miss {
                snap.skeletons.insert(m, &uid, planned.clone());
            }
            snap.memo.insert(body, &uid, planned, miss);
        }
        return Ok(answer);
    }
    Ok(match review::decode::<&RawValue>(body)? {
        Ok(req) => mutate_request(req.map_object(|o| decode_subset(o.get())), snap, cfg).0,
        Err(malformed) => malformed,
    })
}

/// The answer to a decoded review, and the plan when the answer may be remembered for the
/// review (a planned pod in a cached, not excluded namespace).
fn mutate_request(
    req: Request<'_, Result<PodSubset, serde_json::Error>>,
    snap: &Snapshot,
    cfg: &Config,
) -> (Answer, Option<Arc<Planned>>) {
    let uid = &*req.uid;
    if req.kind.kind != "Pod" || !req.kind.group.is_empty() {
        let why = format!("/mutate handles Pods, not {}", req.kind.kind);
        return (Answer::malformed(uid, why), None);
    }
    if req.operation != "CREATE" {
        return (Answer::allowed(uid, ReviewOutcome::Skipped), None);
    }
    let mut subset = match req.object {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            let why = format!("object is not a valid Pod: {e}");
            return (Answer::malformed(uid, why), None);
        }
        None => return (Answer::malformed(uid, "review has no object".into()), None),
    };
    let namespace = req
        .namespace
        .as_deref()
        .or_else(|| subset.namespace())
        .unwrap_or_default()
        .to_string();
    subset.set_namespace(namespace.clone());
    if excluded(&subset, &namespace, cfg) {
        return (Answer::allowed(uid, ReviewOutcome::Skipped), None);
    }
    // A namespace the cache has not seen yet (created a moment ago): assume PodSecurity
    // `restricted` so nothing the apiserver could reject is injected, and say so. Such answers
    // are not memoised (the warning belongs to this moment, not to the snapshot).
    let (ns, warning) = namespace_facts(snap, &namespace);
    let memo_ns = warning.is_none().then_some(namespace.as_str());
    // The pod's name only for the debug log (the plan input drops it).
    let name = tracing::enabled!(tracing::Level::DEBUG).then(|| subset.display_name().to_owned());
    let planning = snap.namespace_policies.of(&snap.policies, &namespace);
    let matched = planning.policies.matching(subset.labels());
    let input = subset.plan_input();
    let (planned, hit) = plan_input_answer(input, &planning, &matched, &ns, snap, memo_ns);
    tracing::debug!(
        uid,
        namespace,
        pod = name.as_deref().unwrap_or_default(),
        outcome = planned.outcome.as_str(),
        plan_input_memo_hit = hit,
        dry_run = req.dry_run.unwrap_or(false),
        "planned pod"
    );
    let answer = planned.answer(uid, warning.as_deref(), hit);
    (answer, memo_ns.map(|_| planned))
}

/// What `/mutate` reads of a pod's labels (under the keys `policies`' pod selectors name, which
/// of the values they name; the opt-out label whole) and annotations (the planner's and the
/// patch's, the exclusions').
fn reads(policies: &[TuningPolicy]) -> Reads {
    let mut labels: HashMap<Box<[u8]>, LabelRead> = HashMap::new();
    for selector in policies.iter().map(|p| &p.spec.pod_selector) {
        let values = selector_values(selector).map(|(k, v)| (k, Some(v)));
        for (key, value) in selector_keys(selector).map(|k| (k, None)).chain(values) {
            let read = labels
                .entry(key.as_bytes().into())
                .or_insert_with(|| LabelRead::Named(Default::default()));
            if let (LabelRead::Named(named), Some(v)) = (read, value) {
                named.insert(v.as_bytes().into());
            }
        }
    }
    let [_, opt_out] = EXCLUDING;
    labels.insert(opt_out.as_bytes().into(), LabelRead::Whole);
    let mut annotations = PLAN_ANNOTATIONS.to_vec();
    annotations.extend(EXCLUDING);
    Reads {
        labels,
        annotations,
    }
}

/// The plan and patch of a pod's plan input and the policies that select it (`matched`: their
/// positions in the snapshot, in precedence order): from the snapshot's plan-input memo when it
/// planned the same before (the first pod of a rollout that changed nothing kubetune reads, a
/// Deployment the same policies select), else planned now and remembered. `memo_ns`: the
/// namespace when the answer may be remembered.
fn plan_input_answer(
    input: PodSubset,
    planning: &NamespacePlanning,
    matched: &[usize],
    ns: &NamespaceFacts,
    snap: &Snapshot,
    memo_ns: Option<&str>,
) -> (Arc<Planned>, bool) {
    let key = memo_ns.map(|m| (m, plan_key(matched, &input)));
    if let Some((m, k)) = &key {
        if let Some(hit) = snap.inputs.get(m, k) {
            return (hit, true);
        }
    }
    let policies = planning.prepared(&snap.policies, matched);
    let planned = Arc::new(plan_and_patch(&input.into_pod(), &policies, ns, snap));
    if let Some((m, k)) = key {
        snap.inputs.insert(m, &k, planned.clone());
    }
    (planned, false)
}

/// The plan-input memo's key: how many policies select the pod and their positions in the
/// snapshot, then the plan input's canonical JSON.
fn plan_key(matched: &[usize], input: &PodSubset) -> Vec<u8> {
    let mut key = Vec::with_capacity(512);
    key.extend_from_slice(&matched.len().to_le_bytes());
    for i in matched {
        key.extend_from_slice(&i.to_le_bytes());
    }
    input.write_key(&mut key);
    key
}

/// What [`excluded`] reads of a pod, and so [`reads`] keeps: the mirror annotation, and the
/// opt-out annotation and label.
const EXCLUDING: [&str; 2] = [MIRROR_ANNOTATION, SKIP_ANNOTATION];

/// Pods kubetune never touches: in an excluded namespace, mirror pods, opted out.
fn excluded(pod: &PodSubset, namespace: &str, cfg: &Config) -> bool {
    let [mirror, opt_out] = EXCLUDING;
    cfg.excluded_namespaces.contains(namespace)
        || pod.annotation(mirror).is_some()
        || kubetune_crds::pod::opted_out(pod.annotation(opt_out), pod.label(opt_out))
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

/// Plan and patch one pod selected by `policies` (the uncached path of `/mutate`).
fn plan_and_patch(
    pod: &Pod,
    policies: &[(&TuningPolicy, &PreparedPolicy)],
    ns: &NamespaceFacts,
    snap: &Snapshot,
) -> Planned {
    let unpatched = |outcome| Planned {
        namespace: ns.name.clone(),
        patch_b64: None,
        outcome,
        delivered: vec![],
    };
    let p = plan_matched(pod, ns, policies, &snap.facts);
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
    let raw = patch.to_json();
    Planned {
        namespace: ns.name.clone(),
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
