//! What both fuzz targets share: the review envelope, the cluster they run against, and the
//! `/mutate` invariants.

use kubetune_crds::policy::TuningPolicy;
use kubetune_test_support::admission::{facts_with, ingress_nodes, review_of};
use kubetune_webhook::admission::{mutate, Config, Snapshot};
use serde_json::{json, Value};

/// An AdmissionReview v1 CREATE of `object` (a `Pod` or a `TuningPolicy`) in namespace `shop`.
pub fn review(kind: &str, object: &Value, uid: &str) -> Vec<u8> {
    review_of(kind, &json!("shop"), object, uid)
        .to_string()
        .into_bytes()
}

/// `policies` in a cluster with namespace `shop` (no PodSecurity labels), Kubernetes 1.31, an
/// `ingress` node pool allowing somaxconn and tcp_max_syn_backlog, and tuning CNI enabled.
pub fn snapshot(policies: Vec<TuningPolicy>) -> Snapshot {
    kubetune_test_support::webhook::snapshot(policies, facts_with(vec![ingress_nodes()], true))
}

/// Admit the pod `object`: the answer is allowed and carries the request's uid; its patch
/// applies to the object as sent; admitting the patched object again patches nothing
/// (reinvocationPolicy IfNeeded).
pub fn admit_twice(object: &Value, snap: &Snapshot, cfg: &Config) {
    let body = review("Pod", object, "f1");
    let a = mutate(&body, snap, cfg).expect("a JSON body is answered");
    same_as_fresh(&body, Some(a.body.clone()), snap, cfg);
    let v = a.json();
    assert_eq!(v["response"]["allowed"], json!(true), "{v}");
    assert_eq!(v["response"]["uid"], json!("f1"), "{v}");
    let Some(patch) = a.patch() else { return };
    let mut doc = object.clone();
    json_patch::patch(&mut doc, &patch)
        .unwrap_or_else(|e| panic!("patch does not apply: {e}\n{object}\n{v}"));
    let again = mutate(&review("Pod", &doc, "f2"), snap, cfg).expect("answered");
    assert!(
        again.patch().is_none(),
        "re-invocation patched again:\n{doc}\n{}",
        again.json()
    );
}

/// `answer` (the body of `/mutate`'s answer to `body` against `snap`, whose memos may have
/// answered it) is what a fresh snapshot — empty memos — answers.
pub fn same_as_fresh(body: &[u8], answer: Option<impl AsRef<[u8]>>, snap: &Snapshot, cfg: &Config) {
    let fresh = mutate(body, &snap.clone(), cfg).ok().map(|a| a.body);
    assert_eq!(
        answer.as_ref().map(AsRef::as_ref),
        fresh.as_deref().map(AsRef::as_ref),
        "a memo answered otherwise than a fresh snapshot"
    );
}
