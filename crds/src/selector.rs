//! Label selector matching (metav1.LabelSelector semantics), shared by the webhook and operator.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Does `selector` select an object with `labels`? An empty selector selects everything.
/// Unknown operators select nothing (the policy is also reported invalid by `validate_spec`).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &selector.match_labels {
        if !ml.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    if let Some(exprs) = &selector.match_expressions {
        for e in exprs {
            let have = labels.get(&e.key);
            let values = e.values.as_deref().unwrap_or_default();
            let ok = match e.operator.as_str() {
                "In" => have.is_some_and(|v| values.contains(v)),
                "NotIn" => have.is_none_or(|v| !values.contains(v)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn selector_table() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let none = labels(&[]);
        let cases: Vec<(LabelSelector, &BTreeMap<String, String>, bool)> = vec![
            (LabelSelector::default(), &web, true),
            (LabelSelector::default(), &none, true),
            (
                LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    ..Default::default()
                },
                &web,
                true,
            ),
            (
                LabelSelector {
                    match_labels: Some(labels(&[("app", "api")])),
                    ..Default::default()
                },
                &web,
                false,
            ),
            (
                LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    ..Default::default()
                },
                &none,
                false,
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![req("app", "In", &["web", "api"])]),
                    ..Default::default()
                },
                &web,
                true,
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![req("app", "NotIn", &["web"])]),
                    ..Default::default()
                },
                &web,
                false,
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![req("app", "NotIn", &["web"])]),
                    ..Default::default()
                },
                &none,
                true,
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![req("tier", "Exists", &[])]),
                    ..Default::default()
                },
                &web,
                true,
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![req("tier", "DoesNotExist", &[])]),
                    ..Default::default()
                },
                &web,
                false,
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![req("tier", "Bogus", &[])]),
                    ..Default::default()
                },
                &web,
                false,
            ),
            (
                LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    match_expressions: Some(vec![req("tier", "In", &["back"])]),
                },
                &web,
                false,
            ),
        ];
        for (i, (sel, l, want)) in cases.into_iter().enumerate() {
            assert_eq!(matches(&sel, l), want, "case {i}: {sel:?} on {l:?}");
        }
    }
}
