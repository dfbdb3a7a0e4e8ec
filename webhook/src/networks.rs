//! Multus network selection (`k8s.v1.cni.cncf.io/networks`): reading the pod's annotation (the
//! planner refuses tuning-CNI delivery when it cannot) and merging kubetune's tuning network into
//! it (the patch).

use std::collections::BTreeMap;

use serde_json::{json, Value};

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
