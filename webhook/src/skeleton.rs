//! The skeleton of an AdmissionReview body: its bytes without what `/mutate` never reads —
//! unread string values emptied, fields the pod's decode skips left out — and `request.uid`'s
//! taken out to answer with. Two reviews with the same skeleton get the same answer but for the
//! uid, so the skeleton is a memo key that lets the first pods of successive rollouts (new
//! `pod-template-hash`, `restartedAt`, image, owner), and of new Deployments whose templates
//! differ only in such things, be answered without decoding them.
//!
//! Why a hit is exact. The lexer finds string literals the way JSON does (a `"` outside a string
//! opens one; inside, `\` escapes the next byte and `"` closes it) and tracks the object/array
//! structure from the bytes outside strings, so where a string sits — and whether it is masked
//! — depends only on bytes the skeleton keeps. A string is masked only when it is a value (never
//! an object key) at a path [`Class`] says is not read, and only when its contents are *plain*
//! (valid UTF-8, no `\`, no control byte: JSON reads them verbatim); otherwise there is no
//! skeleton at all. So if a review's skeleton equals that of a review which was decoded and
//! answered, the review is that one with some unread string values replaced by other plain
//! strings (and skipped fields changed, as below): it decodes to the same pod but for those
//! values, and gets the same plan and patch.
//!
//! A field the pod's decode skips whatever it holds ([`crate::podview::PodSubset`] has no such
//! field: `status`, `spec.containers`, `metadata.ownerReferences`, ...) is left out whole, with a
//! comma beside it, once its value is checked to be one serde_json skips without error (checked
//! more strictly: strings valid UTF-8, only JSON's escapes, numbers as JSON writes them, the
//! nesting closed and within [`MAX_DEPTH`]) and the member to sit where JSON allows one; else
//! there is no skeleton. So is a label or annotation that is not read, when its value is a plain
//! string. So templates that differ in containers, probes, volumes, other spec fields or other
//! labels share a skeleton.
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
    /// A field the pod's decode skips whatever it holds: left out, once checked to be JSON.
    Ignored,
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
            Class::Ignored => return Class::Ignored,
            _ if escaped => return Class::Kept,
            _ => {}
        }
        match (self, key) {
            (Class::Root, b"request") => Class::Request,
            (Class::Request, b"uid") => Class::Uid,
            (Class::Request, b"object") => Class::Object,
            (Class::Object, b"metadata") => Class::Meta,
            (Class::Object, b"spec") => Class::Spec,
            (Class::Object, b"status") => Class::Ignored,
            (Class::Meta, b"labels") => Class::Labels,
            (Class::Meta, b"annotations") => Class::Annotations,
            (Class::Meta, b"namespace") => Class::Kept,
            (Class::Meta, b"name" | b"generateName") => Class::Unread,
            (Class::Meta, _) => Class::Ignored,
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
                Class::Ignored
            }
            (Class::SecurityContext, b"sysctls") => Class::Kept,
            (Class::SecurityContext, _) => Class::Ignored,
            _ => Class::Kept,
        }
    }
    /// The class of an array's elements, or of what is under a scalar's place.
    fn elements(self) -> Class<'r> {
        match self {
            Class::Unread | Class::Ignored => self,
            _ => Class::Kept,
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
    // Every string masked or left out must be valid UTF-8: checked once for the whole body.
    if !utf8(body) {
        return None;
    }
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
                    let dropped = match (f.class, f.value) {
                        (_, Class::Ignored) => Some(Dropped::AnyValue(MAX_DEPTH - depth)),
                        (Class::Labels | Class::Annotations, Class::Unread) => {
                            Some(Dropped::PlainString)
                        }
                        _ => None,
                    };
                    if let Some(what) = dropped {
                        key.extend_from_slice(&body[copied..i]);
                        let (resume, key_next) = drop_member(body, end + 1, what, &mut key)?;
                        f.key_next = key_next;
                        (copied, i) = (resume, resume);
                        continue;
                    }
                    Class::Kept
                } else {
                    f.value
                };
                if let Class::LabelValue(named) = class {
                    let contents = &body[i + 1..end];
                    if !escaped && !named.contains(contents) {
                        key.extend_from_slice(&body[copied..i]);
                        key.extend_from_slice(OTHER_VALUE);
                        copied = end + 1;
                    }
                } else if matches!(class, Class::Unread | Class::Uid) {
                    if escaped || (class == Class::Uid && uid.is_some()) {
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

/// What a member left out of the skeleton may hold.
#[derive(Clone, Copy)]
enum Dropped {
    /// Any JSON value serde_json skips, nested at most this deep.
    AnyValue(usize),
    /// A plain string (a label or annotation the pod's decode reads into a string).
    PlainString,
}

/// Leave out of `key` (which holds the skeleton up to the member's key) the object member whose
/// key closed just before `from`, and one comma beside it: the one before it, else — when it is
/// the object's first member in `key` — the one after it, which another member must follow.
/// Its value must be `what`, and the member where JSON allows one. The offset to go on from,
/// and whether a key comes next there.
fn drop_member(
    body: &[u8],
    from: usize,
    what: Dropped,
    key: &mut Vec<u8>,
) -> Option<(usize, bool)> {
    let at = value_start(body, from)?;
    let after = match what {
        Dropped::AnyValue(room) => value_end(body, at, room)?,
        Dropped::PlainString => {
            let (end, escaped) = string_end(body, at + 1).filter(|_| body[at] == b'"')?;
            (!escaped).then_some(end + 1)?
        }
    };
    let last = key.iter().rposition(|b| !b" \t\n\r".contains(b))?;
    let first = match key[last] {
        b',' => {
            key.truncate(last);
            false
        }
        b'{' => true,
        _ => return None,
    };
    let next = whitespace_end(body, after);
    match *body.get(next)? {
        b'}' => Some((next, false)),
        b',' => {
            let member = whitespace_end(body, next + 1);
            if body.get(member) != Some(&b'"') {
                return None;
            }
            // The comma after it goes with it when it was first; else the one before did.
            Some(if first { (member, true) } else { (next, false) })
        }
        _ => None,
    }
}

/// The offset of the value after the key whose closing `"` is at `from - 1`: past whitespace, one
/// `:` and whitespace.
fn value_start(body: &[u8], from: usize) -> Option<usize> {
    let colon = whitespace_end(body, from);
    (body.get(colon) == Some(&b':')).then(|| whitespace_end(body, colon + 1))
}

/// The offset of the first byte at or after `i` that is not JSON whitespace.
fn whitespace_end(body: &[u8], mut i: usize) -> usize {
    while matches!(body.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The offset just past the JSON value at `i`, when it is one that serde_json skips without
/// error — checked more strictly than it does (strings valid UTF-8, nesting at most `room`
/// deep), so that any value accepted here decodes as the one it replaces: ignored.
fn value_end(body: &[u8], mut i: usize, room: usize) -> Option<usize> {
    // Open containers, innermost lowest: 1 for an object, 0 for an array.
    let (mut open, mut depth) = (0u64, 0);
    loop {
        // A value starts at `i`.
        match *body.get(i)? {
            c @ (b'{' | b'[') => {
                if depth == room.min(63) {
                    return None;
                }
                (open, depth) = (open << 1 | u64::from(c == b'{'), depth + 1);
                i = whitespace_end(body, i + 1);
                let close = if c == b'{' { b'}' } else { b']' };
                if body.get(i) != Some(&close) {
                    if c == b'{' {
                        i = member_value(body, i)?;
                    }
                    continue;
                }
                (open, depth, i) = (open >> 1, depth - 1, i + 1);
            }
            b'"' => i = string_end(body, i + 1)?.0 + 1,
            b't' => i = literal_end(body, i, b"true")?,
            b'f' => i = literal_end(body, i, b"false")?,
            b'n' => i = literal_end(body, i, b"null")?,
            b'-' | b'0'..=b'9' => i = number_end(body, i)?,
            _ => return None,
        }
        // A value ended before `i`: close what it ends, or go on to the next one.
        loop {
            if depth == 0 {
                return Some(i);
            }
            i = whitespace_end(body, i);
            let object = open & 1 == 1;
            match (*body.get(i)?, object) {
                (b',', true) => i = member_value(body, whitespace_end(body, i + 1))?,
                (b',', false) => i = whitespace_end(body, i + 1),
                (b'}', true) | (b']', false) => {
                    (open, depth, i) = (open >> 1, depth - 1, i + 1);
                    continue;
                }
                _ => return None,
            }
            break;
        }
    }
}

/// In an object at `i` (a key): the offset of the member's value.
fn member_value(body: &[u8], i: usize) -> Option<usize> {
    if body.get(i) != Some(&b'"') {
        return None;
    }
    value_start(body, string_end(body, i + 1)?.0 + 1)
}

/// The offset past `literal` at `i`, when it is there.
fn literal_end(body: &[u8], i: usize, literal: &[u8]) -> Option<usize> {
    let end = i + literal.len();
    (body.get(i..end)? == literal).then_some(end)
}

/// The offset past the JSON number at `i` (`-`, then `0` or digits not starting with `0`, then
/// an optional fraction and exponent, each with at least one digit).
fn number_end(body: &[u8], mut i: usize) -> Option<usize> {
    let digits = |i: usize| {
        let n = body[i.min(body.len())..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        (n > 0).then_some(i + n)
    };
    if body.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match body.get(i)? {
        b'0' => i + 1,
        _ => digits(i)?,
    };
    if body.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(body.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(body.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    Some(i)
}

/// The offset of the `"` closing the string whose contents start at `from`, and whether the
/// string has escapes; `None` when serde_json would not read it (in a body of valid UTF-8): it
/// does not close, has a control byte, or an escape JSON does not have.
fn string_end(body: &[u8], mut from: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        let at = from + special_at(body.get(from..)?)?;
        match body[at] {
            b'"' => return Some((at, escaped)),
            b'\\' => {
                escaped = true;
                from = at + 2;
                match *body.get(at + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        let hex = body.get(at + 2..at + 6)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        from = at + 6;
                    }
                    _ => return None,
                }
            }
            _ => return None,
        }
    }
}

/// Valid UTF-8 (JSON reads a string without escapes or control bytes verbatim when it is).
fn utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
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
        // Fields the pod's decode skips, and labels and annotations not read, are left out.
        let expected = review("", POD)
            .replace(r#""generateName":"web-7d9-""#, r#""generateName":"""#)
            .replace(r#","pod-template-hash":"7d9""#, "")
            .replace(r#","restartedAt":"t1""#, "")
            .replace(
                r#","ownerReferences":[{"name":"web-7d9","uid":"u-1","controller":true}]"#,
                "",
            )
            .replace(r#""runAsUser":1000,"#, "")
            .replace(r#","seLinuxOptions":{"type":"x"}"#, "")
            .replace(
                r#","containers":[{"name":"nginx","image":"nginx:1.27","args":["-g","daemon off;"]}]"#,
                "",
            )
            .replace(r#","status":{"phase":"Pending"}"#, "");
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
            POD.replace(r#""namespace":"shop""#, r#""namespace":"shoq""#),
            // A field read that becomes one not read, and the other way round.
            POD.replace(r#""nodeSelector""#, r#""nodeSelecto""#),
            POD.replace(r#""containers""#, r#""nodeName""#),
            POD.replace(r#""restartedAt""#, r#""kubetune.dev/decision""#),
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
    fn whatever_a_field_the_decode_skips_holds_the_skeleton_is_the_same() {
        let first = key(&review("u-1", POD)).unwrap().0;
        let alike = [
            POD.replace("1000", "-1.5e+3"),
            POD.replace(
                r#""controller":true"#,
                r#""controller":false,"blockOwnerDeletion":null"#,
            ),
            POD.replace(r#""image""#, r#""imag""#),
            POD.replace(
                r#"{"name":"nginx","#,
                r#"{"name":"sidecar","ports":[{"containerPort":8080}],"env":[]},{"name":"nginx","#,
            ),
            POD.replace(
                r#""args":["-g","daemon off;"]"#,
                r#""args" : [ "a\"b\\/\u00e9\n" ] "#,
            ),
            POD.replace(r#"{"phase":"Pending"}"#, r#""Pending""#),
            POD.replace(r#"{"phase":"Pending"}"#, "[[], {}, 0, true]"),
            // Fields and labels not read, there or not.
            POD.replace(r#","status":{"phase":"Pending"}"#, ""),
            POD.replace(r#""runAsUser":1000,"#, ""),
            POD.replace(
                r#""runAsUser":1000,"#,
                r#""fsGroup": 2, "runAsUser":1000 , "#,
            ),
            POD.replace(
                r#"{"nodeSelector""#,
                r#"{"dnsPolicy":"ClusterFirst","nodeSelector""#,
            ),
            POD.replace(
                r#""tier":"frontend","#,
                r#""version":"v2","tier":"frontend","team":"a","#,
            ),
            POD.replace(r#","restartedAt":"t1""#, ""),
        ];
        for obj in &alike {
            assert_eq!(
                key(&review("u-1", obj)).map(|k| k.0),
                Some(first.clone()),
                "{obj}"
            );
        }
    }

    #[test]
    fn a_selector_label_keeps_the_values_selectors_name_and_masks_the_others_alike() {
        let with_tier = |v: &str| key(&review("u-1", &POD.replace("frontend", v))).unwrap().0;
        let other = with_tier("batch");
        let masked = review("", POD)
            .replace(r#""tier":"frontend""#, "\"tier\":\"\u{1}\"")
            .replace(r#""generateName":"web-7d9-""#, r#""generateName":"""#);
        assert!(other.starts_with(&masked[..masked.find(r#","pod-template-hash""#).unwrap()]));
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
            review("u-1", &POD.replace("t1", r"t\u00741")),
            review("u-1", &POD.replace("nginx:1.27", "nginx\t1.27")),
            review("u-1", POD).replacen(r#""uid":"u-1","#, r#""uid":"u-1","uid":"u-2","#, 1),
            review("u-1", POD).replace(r#""uid":"u-1","#, ""),
            review("u-1", POD)[..200].to_string(),
            review("u-1", POD) + "}",
            review("u-1", &POD.replace("nginx:1.27", "nginx")[..300]),
            "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1),
        ];
        // A field left out must hold JSON serde_json skips, and sit where JSON allows a member.
        let broken = [
            ("nginx:1.27", r"nginx\q1.27"),
            ("nginx:1.27", r"nginx\u00g01.27"),
            ("1000", "01000"),
            ("1000", "1."),
            ("1000", "-"),
            ("1000", "1e"),
            (r#""controller":true"#, r#""controller":tru"#),
            (r#""controller":true"#, r#""controller" true"#),
            (r#""controller":true"#, r#""controller":true,"#),
            (r#"["-g","daemon off;"]"#, r#"["-g" "daemon off;"]"#),
            (r#"["-g","daemon off;"]"#, r#"["-g",]"#),
            (r#"["-g","daemon off;"]"#, r#"["-g"}"#),
            (r#"{"phase":"Pending"}"#, "{1:2}"),
            (r#"{"phase":"Pending"}"#, "x"),
            (r#"{"phase":"Pending"}"#, r#"{"phase":"Pending",}"#),
            (r#"{"type":"x"}"#, r#"{"type":"x"},"#),
            (r#""runAsUser":1000,"#, r#""runAsUser":1000,,"#),
            (r#""runAsUser":1000,"#, r#""runAsUser":1000 "#),
        ];
        let broken = broken.map(|(from, to)| review("u-1", &POD.replace(from, to)));
        for b in none.iter().chain(&broken) {
            assert_eq!(key(b), None, "{b}");
        }
        // Escapes are fine where the string is kept.
        assert!(key(&review("u-1", &POD.replace("frontend", r"front\u0065nd"))).is_some());
        // Invalid UTF-8 in a masked string: no skeleton.
        let mut bytes = review("u-1", POD).into_bytes();
        let at = bytes.windows(4).position(|w| w == b"1.27").unwrap();
        bytes[at] = 0xff;
        assert_eq!(skeleton(&bytes, &reads()), None);
        // And in the key of a member left out.
        let mut bytes = review("u-1", POD).into_bytes();
        let at = bytes.windows(10).position(|w| w == b"containers").unwrap();
        bytes[at + 2] = 0x80;
        assert_eq!(skeleton(&bytes, &reads()), None);
    }
}
