//! The AdmissionReview v1 codec of both endpoints: [`decode`] reads the parts of a request
//! `/mutate` and `/validate` look at in one pass (the object decoded as the caller's type in the
//! same pass, or kept raw JSON), and an [`Answer`] is the response, serialised straight to the
//! bytes the apiserver expects.
//!
//! Decoding is lenient about what neither endpoint reads (`resource`, `userInfo`, `oldObject`,
//! ...): a review is malformed when it is valid JSON without `request.uid`, `request.kind` or
//! `request.operation` of the right type, or not `admission.k8s.io/v1`. A malformed review is
//! answered allowed, with a warning; only a body that is not JSON at all is an error ([`NotJson`],
//! a 400).

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// The only AdmissionReview version served.
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// The body is not JSON: answer 400.
#[derive(Debug, thiserror::Error)]
#[error("request body is not JSON: {0}")]
pub struct NotJson(#[from] serde_json::Error);

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

#[derive(Deserialize)]
struct WireReview<'a, O> {
    #[serde(rename = "apiVersion", borrow)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    request: Option<Request<'a, O>>,
}

/// The parts of `request` the handlers read, borrowed from the body where JSON allows; `O` is
/// what `request.object` is decoded as (raw JSON unless the caller asks for more).
#[derive(Deserialize, Debug)]
pub struct Request<'a, O = &'a RawValue> {
    /// `request.uid`, echoed in the answer.
    #[serde(borrow)]
    pub uid: Cow<'a, str>,
    /// `request.kind`.
    #[serde(borrow)]
    pub kind: Kind<'a>,
    /// `request.namespace`.
    #[serde(borrow, default)]
    pub namespace: Option<Cow<'a, str>>,
    /// `request.operation`: `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    #[serde(borrow)]
    pub operation: Cow<'a, str>,
    /// `request.object`, decoded as `O` in the same pass.
    #[serde(default = "none")]
    pub object: Option<O>,
    /// `request.dryRun`.
    #[serde(rename = "dryRun", default)]
    pub dry_run: Option<bool>,
}

fn none<O>() -> Option<O> {
    None
}

impl<'a, O> Request<'a, O> {
    /// The same request with its object turned into `P`.
    pub fn map_object<P>(self, f: impl FnOnce(O) -> P) -> Request<'a, P> {
        Request {
            uid: self.uid,
            kind: self.kind,
            namespace: self.namespace,
            operation: self.operation,
            object: self.object.map(f),
            dry_run: self.dry_run,
        }
    }
}

/// `request.kind` (group and kind; the version is not read).
#[derive(Deserialize, Debug)]
pub struct Kind<'a> {
    /// API group, `""` for the core group.
    #[serde(borrow, default)]
    pub group: Cow<'a, str>,
    /// Kind, e.g. `Pod`.
    #[serde(borrow, default)]
    pub kind: Cow<'a, str>,
}

/// `request.uid` of a review that may be malformed ("" when absent), to answer it in kind.
fn request_uid(review: &Value) -> String {
    review
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Decode an AdmissionReview v1 request with its object as `O`: `Ok(Ok(request))`, or
/// `Ok(Err(answer))` with the answer to a malformed review (allowed, with a warning; an object
/// that is not an `O` makes the review malformed), or [`NotJson`].
pub fn decode<'a, O: Deserialize<'a>>(
    body: &'a [u8],
) -> Result<Result<Request<'a, O>, Answer>, NotJson> {
    // UTF-8 checked once for the whole body (a word at a time), not string by string.
    let parsed = match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    };
    let review: WireReview<'a, O> = match parsed {
        Ok(r) => r,
        Err(e) => {
            // Valid JSON of the wrong shape is answered in AdmissionReview form; non-JSON is a 400.
            let v: Value = serde_json::from_slice(body)?;
            let why = format!("malformed AdmissionReview: {e}");
            return Ok(Err(Answer::malformed(&request_uid(&v), why)));
        }
    };
    let Some(req) = review.request else {
        let why = "AdmissionReview has no request".to_string();
        return Ok(Err(Answer::malformed("", why)));
    };
    if review.api_version.as_deref() != Some(API_VERSION) {
        let why = format!("expected an {API_VERSION} AdmissionReview");
        return Ok(Err(Answer::malformed(&req.uid, why)));
    }
    Ok(Ok(req))
}

/// The answer to one review, ready for the wire.
#[derive(Debug)]
pub struct Answer {
    /// The AdmissionReview (v1) to send back as JSON bytes, `response.patch` base64-encoded.
    pub body: Bytes,
    /// What happened.
    pub outcome: ReviewOutcome,
    /// Delivery kinds patched (for metrics): `securityContext`, `tuningCNI`.
    pub delivered: Vec<&'static str>,
    /// The plan and patch came from the snapshot's memo (an equal pod was planned before).
    pub memo_hit: bool,
}

impl Answer {
    /// Allowed, nothing else to say.
    pub fn allowed(uid: &str, outcome: ReviewOutcome) -> Self {
        Self::new(encode(uid, Ok(None), None), outcome)
    }
    /// Allowed with a JSONPatch (already serialised and base64-encoded) and/or a warning.
    pub fn patched(
        uid: &str,
        patch_b64: Option<&str>,
        warning: Option<&str>,
        outcome: ReviewOutcome,
    ) -> Self {
        Self::new(encode(uid, Ok(patch_b64), warning), outcome)
    }
    /// Denied, with the message the user sees.
    pub fn denied(uid: &str, message: &str) -> Self {
        Self::new(encode(uid, Err(message), None), ReviewOutcome::Denied)
    }
    /// A review kubetune cannot read or that is not for it: allowed, with a warning saying why.
    pub fn malformed(uid: &str, why: String) -> Self {
        tracing::warn!(uid, warning = %why, "malformed admission review; allowed");
        Self::new(encode(uid, Ok(None), Some(&why)), ReviewOutcome::Malformed)
    }
    fn new(body: Bytes, outcome: ReviewOutcome) -> Self {
        Self {
            body,
            outcome,
            delivered: Vec::new(),
            memo_hit: false,
        }
    }
    /// The answer as a JSON tree (tests, debugging).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    /// The JSONPatch in the answer, decoded from base64 (`None` when the object is left alone).
    pub fn patch(&self) -> Option<json_patch::Patch> {
        let v = self.json();
        let b64 = v.pointer("/response/patch")?.as_str()?;
        let raw = base64_simd::STANDARD.decode_to_vec(b64).ok()?;
        serde_json::from_slice(&raw).ok()
    }
}

/// Serialise an AdmissionReview v1 response straight to bytes (no intermediate JSON tree).
/// `verdict`: `Ok(patch)` allows (with the base64 JSONPatch, if any), `Err(message)` denies with
/// `response.status.message`.
fn encode(uid: &str, verdict: Result<Option<&str>, &str>, warning: Option<&str>) -> Bytes {
    let extra = match verdict {
        Ok(p) => p.map_or(0, str::len),
        Err(m) => m.len(),
    };
    let mut out = Vec::with_capacity(160 + uid.len() + extra + warning.map_or(0, str::len));
    out.extend_from_slice(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"#,
    );
    let _ = serde_json::to_writer(&mut out, uid);
    match verdict {
        Ok(patch) => {
            out.extend_from_slice(br#","allowed":true"#);
            if let Some(p) = patch {
                out.extend_from_slice(br#","patchType":"JSONPatch","patch":""#);
                out.extend_from_slice(p.as_bytes());
                out.push(b'"');
            }
        }
        Err(message) => {
            out.extend_from_slice(br#","allowed":false,"status":{"message":"#);
            let _ = serde_json::to_writer(&mut out, message);
            out.push(b'}');
        }
    }
    if let Some(w) = warning {
        out.extend_from_slice(br#","warnings":["#);
        let _ = serde_json::to_writer(&mut out, &format!("kubetune: {w}"));
        out.push(b']');
    }
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_are_admission_reviews() {
        let a = Answer::patched(
            "u\"1",
            Some("W10="),
            Some("a \"b\""),
            ReviewOutcome::Patched,
        );
        assert_eq!(
            a.json(),
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
                "uid": "u\"1", "allowed": true, "patchType": "JSONPatch", "patch": "W10=",
                "warnings": ["kubetune: a \"b\""]}})
        );
        assert_eq!(a.patch(), Some(json_patch::Patch(vec![])));
        let d = Answer::denied("u", "no \"x\"");
        assert_eq!(
            d.json()["response"],
            json!({"uid": "u", "allowed": false, "status": {"message": "no \"x\""}})
        );
        assert_eq!(d.outcome, ReviewOutcome::Denied);
        assert_eq!(
            Answer::allowed("u", ReviewOutcome::Valid).json()["response"],
            json!({"uid": "u", "allowed": true})
        );
    }

    #[test]
    fn decode_borrows_and_reports_malformed_reviews() {
        let body = br#"{"apiVersion":"admission.k8s.io/v1","request":{"uid":"a","kind":{"group":"","version":"v1","kind":"Pod"},"namespace":"shop","operation":"CREATE","object":{"x":1}}}"#;
        let r = decode::<&RawValue>(body).unwrap().unwrap();
        assert!(matches!(r.uid, Cow::Borrowed("a")));
        assert_eq!((&*r.kind.kind, &*r.operation), ("Pod", "CREATE"));
        assert_eq!(r.object.map(RawValue::get), Some(r#"{"x":1}"#));
        for (body, uid, why) in [
            (
                &br#"{"request":{"uid":"b"}}"#[..],
                "b",
                "malformed AdmissionReview",
            ),
            (br#"{"kind":"AdmissionReview"}"#, "", "has no request"),
            (
                br#"{"apiVersion":"v1","request":{"uid":"c","kind":{},"operation":"CREATE"}}"#,
                "c",
                "expected an admission.k8s.io/v1",
            ),
        ] {
            let a = decode::<&RawValue>(body).unwrap().unwrap_err();
            let v = a.json();
            assert_eq!(
                (a.outcome, &v["response"]["uid"], &v["response"]["allowed"]),
                (ReviewOutcome::Malformed, &json!(uid), &json!(true))
            );
            assert!(
                v["response"]["warnings"][0].as_str().unwrap().contains(why),
                "{v}"
            );
        }
        assert!(decode::<&RawValue>(b"{").is_err());
    }
}
