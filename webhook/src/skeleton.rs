//! The skeleton of an AdmissionReview body: its bytes with the contents of the string values
//! `/mutate` never reads emptied, and `request.uid`'s taken out to answer with. Two reviews with
//! the same skeleton get the same answer but for the uid, so the skeleton is a memo key that
//! lets the first pods of successive rollouts (new `pod-template-hash`, `restartedAt`, image,
//! owner) be answered without decoding them.
//!
//! Why a hit is exact. The lexer finds string literals the way JSON does (a `"` outside a string
//! opens one; inside, `\` escapes the next byte and `"` closes it) and tracks the object/array
//! structure from the bytes outside strings, so where a string sits — and whether it is masked
//! — depends only on bytes the skeleton keeps. A string is masked only when it is a value (never
//! an object key) at a path [`Class`] says is not read, and only when its contents are *plain*
//! (valid UTF-8, no `\`, no control byte: JSON reads them verbatim); otherwise there is no
//! skeleton at all. So if a review's skeleton equals that of a review which was decoded and
//! answered, the review is that one with some unread string values replaced by other plain
//! strings: it decodes to the same pod but for those values, and gets the same plan and patch.
//!
//! What is read (the rest of the pod is what [`crate::podview::PodSubset`] decodes): in
//! `request`, everything but `object` is kept as it is; in `object.metadata`, `namespace`, the
//! label values under the keys in [`Reads::labels`] and the annotation values under
//! [`Reads::annotations`] (`name` and `generateName` only reach the debug log); in
//! `object.spec`, [`SPEC_FIELDS_READ`] and `securityContext.sysctls`; nothing of `status`.
//!
//! Of a label that pod selectors read, only which of the values they name it has matters to
//! them ([`LabelRead::Named`]): another plain value is masked as [`OTHER_VALUE`], which no kept
//! string can be (a string with a control byte has no skeleton), so a new Deployment's pods
//! (another `app`, which a selector names with other values) share a skeleton too.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use kubetune_crds::json::special_at;

use crate::podview::SPEC_FIELDS_READ;

/// Deepest nesting the lexer follows; deeper bodies have no skeleton.
const MAX_DEPTH: usize = 64;

/// A masked label value that pod selectors compare with values it is not: `"` 0x01 `"`.
pub const OTHER_VALUE: &[u8] = b"\"\x01\"";

/// The label and annotation keys whose values `/mutate` reads.
#[derive(Debug, Default, Clone)]
pub struct Reads {
    /// Label keys: those the snapshot's pod selectors name, and the opt-out label.
    pub labels: HashMap<Box<[u8]>, LabelRead>,
    /// Annotation keys.
    pub annotations: Vec<&'static str>,
}

/// What is read of a label's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRead {
    /// All of it.
    Whole,
    /// Only which of these values (raw JSON string contents) it is, if any.
    Named(HashSet<Box<[u8]>>),
}

/// A review's skeleton and its uid.
#[derive(Debug, PartialEq, Eq)]
pub struct Skeleton<'b> {
    /// The body without the masked strings' contents.
    pub key: Vec<u8>,
    /// `request.uid`, as JSON reads it.
    pub uid: &'b str,
}

/// Where a value sits, as far as reading it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class<'r> {
    Root,
    Request,
    Uid,
    Object,
    Meta,
    Labels,
    Annotations,
    Spec,
    SecurityContext,
    /// A label's value, of which only which of these values it is counts.
    LabelValue(&'r HashSet<Box<[u8]>>),
    /// Read, or under something read: kept as it is.
    Kept,
    /// Never read, nor anything under it.
    Unread,
}

impl<'r> Class<'r> {
    /// The class of the value under `key` in an object of this class (`key` as its raw bytes;
    /// one with escapes is not recognised, which keeps its value).
    #[inline]
    fn child(self, key: &[u8], escaped: bool, reads: &'r Reads) -> Class<'r> {
        match self {
            Class::Uid | Class::Kept | Class::LabelValue(_) => return Class::Kept,
            Class::Unread => return Class::Unread,
            _ if escaped => return Class::Kept,
            _ => {}
        }
        match (self, key) {
            (Class::Root, b"request") => Class::Request,
            (Class::Request, b"uid") => Class::Uid,
            (Class::Request, b"object") => Class::Object,
            (Class::Object, b"metadata") => Class::Meta,
            (Class::Object, b"spec") => Class::Spec,
            (Class::Object, b"status") => Class::Unread,
            (Class::Meta, b"labels") => Class::Labels,
            (Class::Meta, b"annotations") => Class::Annotations,
            (Class::Meta, b"namespace") => Class::Kept,
            (Class::Meta, _) => Class::Unread,
            (Class::Labels, k) => match reads.labels.get(k) {
                None => Class::Unread,
                Some(LabelRead::Whole) => Class::Kept,
                Some(LabelRead::Named(values)) => Class::LabelValue(values),
            },
            (Class::Annotations, k) if !reads.annotations.iter().any(|a| a.as_bytes() == k) => {
                Class::Unread
            }
            (Class::Spec, b"securityContext") => Class::SecurityContext,
            (Class::Spec, k) if !SPEC_FIELDS_READ.iter().any(|f| f.as_bytes() == k) => {
                Class::Unread
            }
            (Class::SecurityContext, b"sysctls") => Class::Kept,
            (Class::SecurityContext, _) => Class::Unread,
            _ => Class::Kept,
        }
    }
    /// The class of an array's elements, or of what is under a scalar's place.
    fn elements(self) -> Class<'r> {
        if self == Class::Unread {
            Class::Unread
        } else {
            Class::Kept
        }
    }
}

/// An open object or array.
#[derive(Clone, Copy)]
struct Frame<'r> {
    /// The class of its elements (arrays) or of the object itself.
    class: Class<'r>,
    object: bool,
    /// In an object: the next string is a key.
    key_next: bool,
    /// In an object: the class of the value after the last key.
    value: Class<'r>,
}

/// The skeleton of `body`, when it has exactly one plain `request.uid`, every string to be
/// masked is plain, and its strings and nesting close (see the module docs).
pub fn skeleton<'b>(body: &'b [u8], reads: &Reads) -> Option<Skeleton<'b>> {
    let top = Frame {
        class: Class::Root,
        object: false,
        key_next: false,
        value: Class::Kept,
    };
    // stack[0] stands for the top level: its one value is the review object.
    let mut stack = [top; MAX_DEPTH + 1];
    let mut depth = 0;
    let mut key = Vec::with_capacity(body.len());
    let (mut copied, mut uid, mut i) = (0, None::<Range<usize>>, 0);
    while i < body.len() {
        match body[i] {
            b'"' => {
                let (end, escaped) = string_end(body, i + 1)?;
                let f = &mut stack[depth];
                let class = if !f.object {
                    f.class.elements()
                } else if f.key_next {
                    f.value = f.class.child(&body[i + 1..end], escaped, reads);
                    f.key_next = false;
                    Class::Kept
                } else {
                    f.value
                };
                if let Class::LabelValue(named) = class {
                    let contents = &body[i + 1..end];
                    if !escaped && !named.contains(contents) && utf8(contents) {
                        key.extend_from_slice(&body[copied..i]);
                        key.extend_from_slice(OTHER_VALUE);
                        copied = end + 1;
                    }
                } else if matches!(class, Class::Unread | Class::Uid) {
                    let contents = &body[i + 1..end];
                    if escaped || !utf8(contents) || (class == Class::Uid && uid.is_some()) {
                        return None;
                    }
                    if class == Class::Uid {
                        uid = Some(i + 1..end);
                    }
                    key.extend_from_slice(&body[copied..i + 1]);
                    copied = end;
                }
                i = end;
            }
            open @ (b'{' | b'[') => {
                let f = &stack[depth];
                let class = match (f.object, depth) {
                    (_, 0) => Class::Root,
                    (true, _) => f.value,
                    (false, _) => f.class.elements(),
                };
                let object = open == b'{';
                let class = match (object, class) {
                    (true, Class::Uid) => Class::Kept,
                    (true, c) => c,
                    (false, c) => c.elements(),
                };
                depth += 1;
                if depth > MAX_DEPTH {
                    return None;
                }
                stack[depth] = Frame {
                    class,
                    object,
                    key_next: true,
                    value: Class::Kept,
                };
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
            }
            b',' => {
                let f = &mut stack[depth];
                f.key_next = f.object;
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 {
        return None;
    }
    key.extend_from_slice(&body[copied..]);
    let uid = std::str::from_utf8(&body[uid?]).ok()?;
    Some(Skeleton { key, uid })
}

/// The offset of the `"` closing the string whose contents start at `from`, and whether the
/// string has escapes; `None` when it does not close or has a control byte (not JSON).
fn string_end(body: &[u8], mut from: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        let at = from + special_at(body.get(from..)?)?;
        match body[at] {
            b'"' => return Some((at, escaped)),
            b'\\' => {
                escaped = true;
                from = at + 2;
            }
            _ => return None,
        }
    }
}

/// Valid UTF-8 (JSON reads a string without escapes or control bytes verbatim when it is).
fn utf8(contents: &[u8]) -> bool {
    contents.is_ascii() || std::str::from_utf8(contents).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads() -> Reads {
        Reads {
            labels: [
                (b"tier".as_slice().into(), named(&["frontend", ""])),
                (b"opt-out".as_slice().into(), LabelRead::Whole),
            ]
            .into_iter()
            .collect(),
            annotations: vec!["kubetune.dev/decision"],
        }
    }

    fn named(values: &[&str]) -> LabelRead {
        LabelRead::Named(values.iter().map(|v| v.as_bytes().into()).collect())
    }

    fn review(uid: &str, object: &str) -> String {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","request":{{"uid":"{uid}","namespace":"shop","operation":"CREATE","object":{object}}}}}"#
        )
    }

    fn key(body: &str) -> Option<(String, String)> {
        let s = skeleton(body.as_bytes(), &reads())?;
        Some((String::from_utf8(s.key).unwrap(), s.uid.to_string()))
    }

    const POD: &str = r#"{"kind":"Pod","metadata":{"generateName":"web-7d9-","namespace":"shop","labels":{"tier":"frontend","pod-template-hash":"7d9"},"annotations":{"kubetune.dev/decision":"d","restartedAt":"t1"},"ownerReferences":[{"name":"web-7d9","uid":"u-1","controller":true}]},"spec":{"nodeSelector":{"pool":"a"},"tolerations":[{"key":"k","operator":"Exists"}],"securityContext":{"runAsUser":1000,"sysctls":[{"name":"net.core.somaxconn","value":"1024"}],"seLinuxOptions":{"type":"x"}},"containers":[{"name":"nginx","image":"nginx:1.27","args":["-g","daemon off;"]}]},"status":{"phase":"Pending"}}"#;

    #[test]
    fn unread_values_and_the_uid_are_emptied_the_rest_kept() {
        let (k, uid) = key(&review("u-42", POD)).unwrap();
        assert_eq!(uid, "u-42");
        let expected = review("", POD)
            .replace(r#""generateName":"web-7d9-""#, r#""generateName":"""#)
            .replace(r#""pod-template-hash":"7d9""#, r#""pod-template-hash":"""#)
            .replace(r#""restartedAt":"t1""#, r#""restartedAt":"""#)
            .replace(
                r#"{"name":"web-7d9","uid":"u-1","controller":true}"#,
                r#"{"name":"","uid":"","controller":true}"#,
            )
            .replace(r#"{"type":"x"}"#, r#"{"type":""}"#)
            .replace(
                r#"{"name":"nginx","image":"nginx:1.27","args":["-g","daemon off;"]}"#,
                r#"{"name":"","image":"","args":["",""]}"#,
            )
            .replace(r#""phase":"Pending""#, r#""phase":"""#);
        assert_eq!(k, expected);
    }

    #[test]
    fn a_rollout_that_changes_only_unread_values_has_the_same_skeleton() {
        let first = key(&review("u-1", POD)).unwrap().0;
        let next = POD
            .replace("7d9", "5f4c2")
            .replace("t1", "2026-12-04T10:00:00Z")
            .replace("u-1", "u-2")
            .replace("nginx:1.27", "nginx:1.28")
            .replace(r#""type":"x""#, r#""type":"ü""#);
        let (k, uid) = key(&review("u-2", &next)).unwrap();
        assert_eq!((k, uid.as_str()), (first, "u-2"));
    }

    #[test]
    fn anything_read_that_differs_changes_the_skeleton() {
        let first = key(&review("u-1", POD)).unwrap().0;
        let changed = [
            POD.replace("frontend", "backend"),
            POD.replace(r#""d","#, r#""e","#),
            POD.replace(r#""pool":"a""#, r#""pool":"b""#),
            POD.replace(r#""key":"k""#, r#""key":"j""#),
            POD.replace("\"1024\"", "\"2048\""),
            POD.replace("1000", "1001"),
            POD.replace(r#""controller":true"#, r#""controller":false"#),
            POD.replace(r#""namespace":"shop""#, r#""namespace":"shoq""#),
            // A key is always kept, also under what is not read.
            POD.replace(r#""image""#, r#""imag""#),
            // An unread label becomes one a selector names, and the other way round.
            POD.replace(r#""pod-template-hash""#, r#""tier""#),
            POD.replace(r#"{"kind":"Pod","#, r#"{ "kind":"Pod","#),
        ];
        for obj in &changed {
            let k = key(&review("u-1", obj)).map(|k| k.0);
            assert!(k.is_some_and(|k| k != first), "{obj}");
        }
        // A label key with escapes is not recognised: its value is kept.
        let escaped = POD.replace("pod-template-hash", r"pod-template-has\u0068");
        let next = escaped.replace(r#":"7d9""#, r#":"5f4""#);
        assert_ne!(key(&review("u-1", &escaped)), key(&review("u-1", &next)));
        let other_request = review("u-1", POD).replace("CREATE", "UPDATE");
        assert_ne!(key(&other_request).unwrap().0, first);
    }

    #[test]
    fn a_selector_label_keeps_the_values_selectors_name_and_masks_the_others_alike() {
        let with_tier = |v: &str| key(&review("u-1", &POD.replace("frontend", v))).unwrap().0;
        let other = with_tier("batch");
        let masked = review("", POD)
            .replace(r#""tier":"frontend""#, "\"tier\":\"\u{1}\"")
            .replace(r#""generateName":"web-7d9-""#, r#""generateName":"""#);
        assert!(other.starts_with(&masked[..masked.find("pod-template-hash").unwrap()]));
        // Values no selector names are alike; each named value (also "") is its own.
        assert_eq!(other, with_tier("svc-4f2"));
        assert_eq!(other, with_tier("ü"));
        let distinct = [other, with_tier("frontend"), with_tier("")];
        assert!(distinct[0] != distinct[1] && distinct[1] != distinct[2]);
        assert_ne!(distinct[0], distinct[2]);
        // With escapes the value is kept as it is.
        assert_ne!(with_tier(r"b\u0061tch"), with_tier(r"b\u0062tch"));
        // A label read whole keeps every value.
        let opt = |v: &str| {
            let obj = POD.replace(r#""tier":"frontend""#, &format!(r#""opt-out":"{v}""#));
            key(&review("u-1", &obj)).unwrap().0
        };
        assert_ne!(opt("true"), opt("false"));
    }

    #[test]
    fn no_skeleton_when_a_masked_string_is_not_read_verbatim_or_the_body_does_not_close() {
        let none = [
            review(r"u\u0031", POD),
            review("u\u{1}", POD),
            review("u-1", &POD.replace("nginx:1.27", r"nginx\u003a1.27")),
            review("u-1", &POD.replace("nginx:1.27", "nginx\t1.27")),
            review("u-1", POD).replacen(r#""uid":"u-1","#, r#""uid":"u-1","uid":"u-2","#, 1),
            review("u-1", POD).replace(r#""uid":"u-1","#, ""),
            review("u-1", POD)[..200].to_string(),
            review("u-1", POD) + "}",
            review("u-1", &POD.replace("nginx:1.27", "nginx")[..300]),
            "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1),
        ];
        for b in &none {
            assert_eq!(key(b), None, "{b}");
        }
        // Escapes are fine where the string is kept.
        assert!(key(&review("u-1", &POD.replace("frontend", r"front\u0065nd"))).is_some());
        // Invalid UTF-8 in a masked string: no skeleton.
        let mut bytes = review("u-1", POD).into_bytes();
        let at = bytes.windows(4).position(|w| w == b"1.27").unwrap();
        bytes[at] = 0xff;
        assert_eq!(skeleton(&bytes, &reads()), None);
    }
}
