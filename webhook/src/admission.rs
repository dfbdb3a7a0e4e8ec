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

fn decode(
    body: &[u8],
) -> Result<Result<AdmissionRequest<DynamicObject>, (String, String)>, NotJson> {
    let v: Value = serde_json::from_slice(body)?;
    let uid = v
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
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
/// stays raw until we know it is a pod we care about).
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
fn wire_response(uid: &str, patch: Option<&json_patch::Patch>, warning: Option<&str>) -> Bytes {
    use base64::Engine;
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"#,
    );
    let _ = serde_json::to_writer(&mut out, uid);
    out.extend_from_slice(br#","allowed":true"#);
    if let Some(p) = patch {
        let raw = serde_json::to_vec(p).unwrap_or_default();
        out.extend_from_slice(br#","patchType":"JSONPatch","patch":""#);
        let start = out.len();
        out.resize(start + raw.len().div_ceil(3) * 4, 0);
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(&raw, &mut out[start..])
            .unwrap_or(0);
        out.truncate(start + n);
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
    }
}

/// `/mutate`: plan and patch a pod. Always allows; see the module docs.
pub fn mutate(body: &[u8], snap: &Snapshot, cfg: &Config) -> Result<MutateAnswer, NotJson> {
    let review: WireReview<'_> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            // Valid JSON of the wrong shape is answered in AdmissionReview form; non-JSON is a 400.
            let v: Value = serde_json::from_slice(body)?;
            let uid = v
                .pointer("/request/uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
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
    let mut pod: Pod = match crate::podview::decode_pod(raw.get()) {
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
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    pod.metadata.namespace = Some(namespace.clone());
    if cfg.excluded_namespaces.contains(&namespace) {
        return Ok(skip(ReviewOutcome::Skipped));
    }
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
    {
        return Ok(skip(ReviewOutcome::Skipped));
    }
    let opted_out = |m: &Option<BTreeMap<String, String>>| {
        m.as_ref()
            .and_then(|m| m.get(SKIP_ANNOTATION))
            .is_some_and(|v| v == "true")
    };
    if opted_out(&pod.metadata.annotations) || opted_out(&pod.metadata.labels) {
        return Ok(skip(ReviewOutcome::Skipped));
    }
    // A namespace the cache has not seen yet (created a moment ago): assume PodSecurity
    // `restricted` so nothing the apiserver could reject is injected, and say so.
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
    let p = plan(&pod, &ns, &snap.policies, &snap.facts);
    if p.is_empty() {
        return Ok(skip(ReviewOutcome::Skipped));
    }
    let patch = build_patch(&pod, &p);
    if patch.0.is_empty() {
        return Ok(skip(ReviewOutcome::Unchanged));
    }
    let mut delivered = Vec::new();
    if !p.security_context.is_empty() {
        delivered.push("securityContext");
    }
    if !p.tuning_cni.is_empty() {
        delivered.push("tuningCNI");
    }
    tracing::debug!(uid = %req.uid, namespace, pod = pod.metadata.name.as_deref().or(pod.metadata.generate_name.as_deref()).unwrap_or(""),
        summary = %p.decision.summary(), dry_run = req.dry_run.unwrap_or(false), "patched pod");
    Ok(MutateAnswer {
        body: wire_response(&req.uid, Some(&patch), warning.as_deref()),
        outcome: ReviewOutcome::Patched,
        delivered,
    })
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
