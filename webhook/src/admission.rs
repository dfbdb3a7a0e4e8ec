//! AdmissionReview v1 handling, pure over a [`Snapshot`] of the caches.
//!
//! Contract: `/mutate` always allows (kubetune must never block a pod); anything it cannot
//! understand gets a well-formed allowed response with a warning. Only a body that is not JSON
//! at all is a 400. `/validate` denies invalid TuningPolicies with the validation messages.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use kubetune_crds::decision::SKIP_ANNOTATION;
use kubetune_crds::facts::ClusterFacts;
use kubetune_crds::policy::{validate_spec, TuningPolicy};
use serde_json::Value;

use crate::patch::build_patch;
use crate::plan::{plan, NamespaceFacts, PSA_ENFORCE};

/// Annotation the kubelet sets on mirror (static) pods.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Everything the handlers read: a consistent view of the reflector caches.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every TuningPolicy in the cluster.
    pub policies: Vec<TuningPolicy>,
    /// Namespace labels by name.
    pub namespaces: BTreeMap<String, NamespaceFacts>,
    /// Cluster facts (ConfigMap `kubetune-cluster-facts`).
    pub facts: ClusterFacts,
    /// Answers already computed against this snapshot (starts empty; see [`PlanMemo`]).
    pub memo: PlanMemo,
}

/// Most pod objects one snapshot remembers; the memo is emptied when it is full.
pub const MEMO_CAPACITY: usize = 1024;
/// Most bytes (object JSON + encoded patch) one snapshot's memo holds; emptied when exceeded.
pub const MEMO_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Pod objects larger than this (JSON bytes) are never memoised.
pub const MEMO_MAX_OBJECT_BYTES: usize = 16 * 1024;

/// The plan + patch of each pod object seen with one [`Snapshot`].
///
/// Plan and patch are pure functions of the pod object, its namespace and the snapshot, so the
/// same object in the same namespace gets the same answer. Replicas of one ReplicaSet reach the
/// webhook as the same JSON (the apiserver generates their names and uids after admission), so
/// a scale-up, a rollout or a node drain plans once per pod template instead of once per pod.
/// The key is the object's exact JSON: nothing that could change the answer can differ between
/// a hit and the request it was computed for. A new snapshot (any policy, namespace or
/// cluster-facts change) comes with an empty memo, so nothing outlives what it was computed
/// from. Bounded: [`MEMO_CAPACITY`] objects, [`MEMO_MAX_BYTES`] in all, objects of at most
/// [`MEMO_MAX_OBJECT_BYTES`].
#[derive(Default)]
pub struct PlanMemo {
    hasher: foldhash::quality::RandomState,
    inner: std::sync::Mutex<MemoInner>,
}

#[derive(Default)]
struct MemoInner {
    /// Hash of (namespace, object JSON) -> entries with that hash.
    map: std::collections::HashMap<u64, Vec<MemoEntry>>,
    entries: usize,
    bytes: usize,
}

struct MemoEntry {
    namespace: Box<str>,
    object: Box<str>,
    planned: std::sync::Arc<Planned>,
}

impl Clone for PlanMemo {
    /// A copied snapshot starts with an empty memo.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for PlanMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.lock();
        f.debug_struct("PlanMemo")
            .field("entries", &m.entries)
            .field("bytes", &m.bytes)
            .finish()
    }
}

impl PlanMemo {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn hash(&self, namespace: &str, object: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((namespace, object))
    }
    /// Number of remembered pod objects.
    pub fn len(&self) -> usize {
        self.lock().entries
    }
    /// Bytes held (object JSON + encoded patches).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn get(&self, namespace: &str, object: &str) -> Option<std::sync::Arc<Planned>> {
        let h = self.hash(namespace, object);
        self.lock()
            .map
            .get(&h)?
            .iter()
            .find(|e| &*e.namespace == namespace && &*e.object == object)
            .map(|e| e.planned.clone())
    }
    fn insert(&self, namespace: &str, object: &str, planned: std::sync::Arc<Planned>) {
        if object.len() > MEMO_MAX_OBJECT_BYTES {
            return;
        }
        let size =
            namespace.len() + object.len() + planned.patch_b64.as_ref().map_or(0, String::len);
        let h = self.hash(namespace, object);
        let mut m = self.lock();
        if m.entries >= MEMO_CAPACITY || m.bytes + size > MEMO_MAX_BYTES {
            *m = MemoInner::default();
        }
        let bucket = m.map.entry(h).or_default();
        if bucket
            .iter()
            .any(|e| &*e.namespace == namespace && &*e.object == object)
        {
            return;
        }
        bucket.push(MemoEntry {
            namespace: namespace.into(),
            object: object.into(),
            planned,
        });
        m.entries += 1;
        m.bytes += size;
    }
}

/// The part of a `/mutate` answer that depends only on the pod subset and the snapshot.
#[derive(Debug)]
pub struct Planned {
    /// The JSONPatch, serialised and base64-encoded, when the pod is patched.
    patch_b64: Option<String>,
    outcome: ReviewOutcome,
    delivered: Vec<&'static str>,
}

impl Planned {
    fn answer(&self, uid: &str, warning: Option<&str>, memo_hit: bool) -> MutateAnswer {
        MutateAnswer {
            body: wire_response(uid, self.patch_b64.as_deref(), warning),
            outcome: self.outcome,
            delivered: self.delivered.clone(),
            memo_hit,
        }
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

/// What happened to a request (metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReviewOutcome {
    /// Patched the pod.
    Patched,
    /// Matching policies, nothing to change (already applied / nothing deliverable).
    Unchanged,
    /// No policy matched, or the pod/namespace is excluded.
    Skipped,
    /// The review was malformed or not for us; allowed with a warning.
    Malformed,
    /// A TuningPolicy was accepted by `/validate`.
    Valid,
    /// A TuningPolicy was denied by `/validate`.
    Denied,
}

impl ReviewOutcome {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewOutcome::Patched => "patched",
            ReviewOutcome::Unchanged => "unchanged",
            ReviewOutcome::Skipped => "skipped",
            ReviewOutcome::Malformed => "malformed",
            ReviewOutcome::Valid => "valid",
            ReviewOutcome::Denied => "denied",
        }
    }
}

/// The handler's answer.
#[derive(Debug)]
pub struct Reviewed {
    /// The AdmissionReview to send back.
    pub review: AdmissionReview<DynamicObject>,
    /// What happened.
    pub outcome: ReviewOutcome,
    /// Delivery kinds patched (for metrics): `securityContext`, `tuningCNI`.
    pub delivered: Vec<&'static str>,
}

/// The AdmissionReview as the apiserver expects it on the wire: `response.patch` as a base64
/// string (Kubernetes' `[]byte` encoding; kube-core serialises the bytes as a number array).
pub fn to_wire(review: &AdmissionReview<DynamicObject>) -> Value {
    use base64::Engine;
    let mut v = serde_json::to_value(review).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(resp) = v.get_mut("response") {
        if let Some(Value::Array(bytes)) = resp.get("patch") {
            let raw: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().map(|b| b as u8))
                .collect();
            resp["patch"] = Value::String(base64::engine::general_purpose::STANDARD.encode(raw));
        }
    }
    v
}

/// The body is not JSON: answer 400.
#[derive(Debug, thiserror::Error)]
#[error("request body is not JSON: {0}")]
pub struct NotJson(#[from] serde_json::Error);

fn allowed_with_warning(uid: &str, warning: String) -> Reviewed {
    let mut r = AdmissionResponse::invalid(&warning);
    r.uid = uid.to_string();
    r.allowed = true;
    r.result = Default::default();
    r.warnings = Some(vec![format!("kubetune: {warning}")]);
    tracing::warn!(uid, %warning, "malformed admission review; allowed");
    Reviewed {
        review: r.into_review(),
        outcome: ReviewOutcome::Malformed,
        delivered: vec![],
    }
}

/// `request.uid` of a review that may be malformed ("" when absent), to answer it in kind.
fn request_uid(review: &Value) -> String {
    review
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn decode(
    body: &[u8],
) -> Result<Result<AdmissionRequest<DynamicObject>, (String, String)>, NotJson> {
    let v: Value = serde_json::from_slice(body)?;
    let uid = request_uid(&v);
    if v.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1") {
        return Ok(Err((
            uid,
            "expected an admission.k8s.io/v1 AdmissionReview".into(),
        )));
    }
    let review: AdmissionReview<DynamicObject> = match serde_json::from_value(v) {
        Ok(r) => r,
        Err(e) => return Ok(Err((uid, format!("malformed AdmissionReview: {e}")))),
    };
    let req: Result<AdmissionRequest<DynamicObject>, _> = review.try_into();
    match req {
        Ok(req) => Ok(Ok(req)),
        Err(e) => Ok(Err((uid, format!("malformed AdmissionReview: {e}")))),
    }
}

/// The parts of an AdmissionReview v1 request `/mutate` reads, decoded in one pass (the object
/// stays raw: it is the memo key, and only decoded when the memo does not know it).
#[derive(serde::Deserialize)]
struct WireReview<'a> {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    #[serde(borrow)]
    request: Option<WireRequest<'a>>,
}

#[derive(serde::Deserialize)]
struct WireRequest<'a> {
    uid: String,
    kind: WireGvk,
    namespace: Option<String>,
    operation: String,
    #[serde(borrow)]
    object: Option<&'a serde_json::value::RawValue>,
    #[serde(rename = "dryRun", default)]
    dry_run: Option<bool>,
}

#[derive(serde::Deserialize)]
struct WireGvk {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

/// Serialise the `/mutate` answer straight to bytes (no intermediate JSON tree): an
/// AdmissionReview v1 with `response.patch` base64-encoded (Kubernetes' `[]byte` encoding).
fn wire_response(uid: &str, patch_b64: Option<&str>, warning: Option<&str>) -> Bytes {
    let mut out = Vec::with_capacity(160 + patch_b64.map_or(0, str::len));
    out.extend_from_slice(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"#,
    );
    let _ = serde_json::to_writer(&mut out, uid);
    out.extend_from_slice(br#","allowed":true"#);
    if let Some(p) = patch_b64 {
        out.extend_from_slice(br#","patchType":"JSONPatch","patch":""#);
        out.extend_from_slice(p.as_bytes());
        out.push(b'"');
    }
    if let Some(w) = warning {
        out.extend_from_slice(br#","warnings":["#);
        let _ = serde_json::to_writer(&mut out, &format!("kubetune: {w}"));
        out.push(b']');
    }
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// The answer of `/mutate`, ready for the wire.
#[derive(Debug)]
pub struct MutateAnswer {
    /// The AdmissionReview (v1) to send back as JSON bytes, `response.patch` base64-encoded.
    pub body: Bytes,
    /// What happened.
    pub outcome: ReviewOutcome,
    /// Delivery kinds patched (for metrics): `securityContext`, `tuningCNI`.
    pub delivered: Vec<&'static str>,
    /// The plan and patch came from the snapshot's memo (an equal pod was planned before).
    pub memo_hit: bool,
}

impl MutateAnswer {
    /// The answer as a JSON tree (tests, debugging).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    /// The JSONPatch in the answer, decoded from base64 (`None` when the pod is left alone).
    pub fn patch(&self) -> Option<json_patch::Patch> {
        use base64::Engine;
        let v = self.json();
        let b64 = v.pointer("/response/patch")?.as_str()?;
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        serde_json::from_slice(&raw).ok()
    }
}

fn mutate_malformed(uid: &str, why: String) -> MutateAnswer {
    tracing::warn!(uid, warning = %why, "malformed admission review; allowed");
    MutateAnswer {
        body: wire_response(uid, None, Some(&why)),
        outcome: ReviewOutcome::Malformed,
        delivered: vec![],
        memo_hit: false,
    }
}

/// `/mutate`: plan and patch a pod. Always allows; see the module docs.
pub fn mutate(body: &[u8], snap: &Snapshot, cfg: &Config) -> Result<MutateAnswer, NotJson> {
    let review: WireReview<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            // Valid JSON of the wrong shape is answered in AdmissionReview form; non-JSON is a 400.
            let v: Value = serde_json::from_slice(body)?;
            let uid = request_uid(&v);
            return Ok(mutate_malformed(
                &uid,
                format!("malformed AdmissionReview: {e}"),
            ));
        }
    };
    let Some(req) = review.request else {
        return Ok(mutate_malformed(
            "",
            "AdmissionReview has no request".into(),
        ));
    };
    if review.api_version.as_deref() != Some("admission.k8s.io/v1") {
        return Ok(mutate_malformed(
            &req.uid,
            "expected an admission.k8s.io/v1 AdmissionReview".into(),
        ));
    }
    let skip = |outcome| MutateAnswer {
        body: wire_response(&req.uid, None, None),
        outcome,
        delivered: vec![],
        memo_hit: false,
    };
    if req.kind.kind != "Pod" || !req.kind.group.is_empty() {
        return Ok(mutate_malformed(
            &req.uid,
            format!("/mutate handles Pods, not {}", req.kind.kind),
        ));
    }
    if req.operation != "CREATE" {
        return Ok(skip(ReviewOutcome::Skipped));
    }
    let Some(raw) = req.object else {
        return Ok(mutate_malformed(&req.uid, "review has no object".into()));
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
            return Ok(hit.answer(&req.uid, None, true));
        }
    }
    let mut subset = match crate::podview::decode_subset(raw) {
        Ok(p) => p,
        Err(e) => {
            return Ok(mutate_malformed(
                &req.uid,
                format!("object is not a valid Pod: {e}"),
            ))
        }
    };
    let namespace = req
        .namespace
        .clone()
        .or_else(|| subset.namespace().map(str::to_string))
        .unwrap_or_default();
    subset.set_namespace(namespace.clone());
    if cfg.excluded_namespaces.contains(&namespace)
        || subset.annotation(MIRROR_ANNOTATION).is_some()
    {
        return Ok(skip(ReviewOutcome::Skipped));
    }
    if subset.annotation(SKIP_ANNOTATION) == Some("true")
        || subset.label(SKIP_ANNOTATION) == Some("true")
    {
        return Ok(skip(ReviewOutcome::Skipped));
    }
    // A namespace the cache has not seen yet (created a moment ago): assume PodSecurity
    // `restricted` so nothing the apiserver could reject is injected, and say so. Such answers
    // are not memoised (the warning belongs to this moment, not to the snapshot).
    let mut warning = None;
    let ns = match snap.namespaces.get(&namespace) {
        Some(ns) => std::borrow::Cow::Borrowed(ns),
        None => {
            warning = Some(format!(
                "namespace {namespace} is not in kubetune's cache yet; assumed PodSecurity \
                 enforce=restricted (only safe sysctls)"
            ));
            std::borrow::Cow::Owned(NamespaceFacts {
                name: namespace.clone(),
                labels: BTreeMap::from([(PSA_ENFORCE.to_string(), "restricted".to_string())]),
            })
        }
    };
    let pod = subset.to_pod();
    let planned = plan_and_patch(&pod, &ns, snap);
    tracing::debug!(uid = %req.uid, namespace, pod = pod.metadata.name.as_deref().or(pod.metadata.generate_name.as_deref()).unwrap_or(""),
        outcome = planned.outcome.as_str(), dry_run = req.dry_run.unwrap_or(false), "planned pod");
    let answer = planned.answer(&req.uid, warning.as_deref(), false);
    if let Some(ns) = memo_ns {
        snap.memo.insert(ns, raw, std::sync::Arc::new(planned));
    }
    Ok(answer)
}

/// Plan and patch one pod (the uncached path of `/mutate`).
fn plan_and_patch(pod: &Pod, ns: &NamespaceFacts, snap: &Snapshot) -> Planned {
    use base64::Engine;
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
    let raw = serde_json::to_vec(&patch).unwrap_or_default();
    Planned {
        patch_b64: Some(base64::engine::general_purpose::STANDARD.encode(raw)),
        outcome: ReviewOutcome::Patched,
        delivered,
    }
}

/// `/validate`: deny invalid TuningPolicies with every validation message.
pub fn validate(body: &[u8]) -> Result<Reviewed, NotJson> {
    let req = match decode(body)? {
        Ok(r) => r,
        Err((uid, why)) => return Ok(allowed_with_warning(&uid, why)),
    };
    if req.kind.kind != "TuningPolicy" || req.operation == Operation::Delete {
        return Ok(Reviewed {
            review: AdmissionResponse::from(&req).into_review(),
            outcome: ReviewOutcome::Valid,
            delivered: vec![],
        });
    }
    let Some(obj) = req.object.as_ref() else {
        return Ok(allowed_with_warning(
            &req.uid,
            "review has no object".into(),
        ));
    };
    let policy: TuningPolicy = match serde_json::to_value(obj).and_then(serde_json::from_value) {
        Ok(p) => p,
        Err(e) => {
            let r = AdmissionResponse::from(&req).deny(format!("not a valid TuningPolicy: {e}"));
            return Ok(Reviewed {
                review: r.into_review(),
                outcome: ReviewOutcome::Denied,
                delivered: vec![],
            });
        }
    };
    let errs = validate_spec(&policy.spec);
    if errs.is_empty() {
        return Ok(Reviewed {
            review: AdmissionResponse::from(&req).into_review(),
            outcome: ReviewOutcome::Valid,
            delivered: vec![],
        });
    }
    let msg = errs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Ok(Reviewed {
        review: AdmissionResponse::from(&req).deny(msg).into_review(),
        outcome: ReviewOutcome::Denied,
        delivered: vec![],
    })
}
