//! Which policies select a pod. The webhook plans with the policies that select the pod, the
//! operator counts the pods a policy selects and routes pod changes to the policies that select
//! them; all of them ask this module.
//!
//! Label selectors have `metav1.LabelSelector` semantics, evaluated by
//! [`kube::core::Selector`] (whose `TryFrom<LabelSelector>` also rejects unknown operators: a
//! selector with one selects nothing). [`selector_problems`] is the stricter check behind the
//! `InvalidSelector` reason.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

use crate::policy::TuningPolicy;

/// `selector` as a [`Selector`]; `None` when it cannot select anything (unknown operator).
///
/// `In`/`NotIn` without `values` are read as an empty value set (`In` selects nothing, `NotIn`
/// everything), as kubetune always has; [`selector_problems`] reports them.
pub fn compile(selector: &LabelSelector) -> Option<Selector> {
    let mut s = selector.clone();
    for e in s.match_expressions.iter_mut().flatten() {
        if matches!(e.operator.as_str(), "In" | "NotIn") && e.values.is_none() {
            e.values = Some(Vec::new());
        }
    }
    Selector::try_from(s).ok()
}

/// Does `selector` select an object with `labels`? An empty selector selects everything, one
/// with an unknown operator nothing.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    compile(selector).is_some_and(|s| s.matches(labels))
}

/// The label keys `selector` reads: whether it selects an object never depends on the object's
/// labels under other keys.
pub fn selector_keys(selector: &LabelSelector) -> impl Iterator<Item = &str> {
    let labels = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, _)| k.as_str());
    let exprs = selector.match_expressions.iter().flatten();
    labels.chain(exprs.map(|e| e.key.as_str()))
}

/// The label values `selector` compares a label with, with their keys: `matchLabels`' and
/// `In`'s and `NotIn`'s values. Whether it selects an object depends on the object's label under
/// a key only through whether it has one and which of these values it equals — so all values it
/// does not name are alike to it ([`selector_keys`] gives every key it reads).
pub fn selector_values(selector: &LabelSelector) -> impl Iterator<Item = (&str, &str)> {
    let labels = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()));
    let exprs = selector.match_expressions.iter().flatten();
    labels.chain(exprs.flat_map(|e| {
        let values = e.values.iter().flatten();
        values.map(|v| (e.key.as_str(), v.as_str()))
    }))
}

/// What is wrong with `selector` (empty = valid): unknown operators, `In`/`NotIn` without
/// values, `Exists`/`DoesNotExist` with values.
pub fn selector_problems(selector: &LabelSelector) -> Vec<String> {
    let mut out = Vec::new();
    for e in selector.match_expressions.iter().flatten() {
        let has_values = e.values.as_ref().is_some_and(|v| !v.is_empty());
        match e.operator.as_str() {
            "In" | "NotIn" if !has_values => out.push(format!(
                "operator {} for key {:?} needs values",
                e.operator, e.key
            )),
            "Exists" | "DoesNotExist" if has_values => out.push(format!(
                "operator {} for key {:?} takes no values",
                e.operator, e.key
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            op => out.push(format!("unknown operator {op:?} for key {:?}", e.key)),
        }
    }
    out
}

/// The labels of a pod (empty when it has none).
pub fn pod_labels(pod: &Pod) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

/// Does `policy` select `pod`: [`in_scope`] of the pod's namespace, and its `podSelector`
/// matches the pod's labels?
pub fn selects(policy: &TuningPolicy, pod: &Pod) -> bool {
    in_scope(
        policy,
        pod.metadata.namespace.as_deref().unwrap_or_default(),
    ) && selector_matches(&policy.spec.pod_selector, pod_labels(pod))
}

/// Can `policy` select pods of `namespace`: the same namespace, and the policy is not being
/// deleted?
fn in_scope(policy: &TuningPolicy, namespace: &str) -> bool {
    policy.metadata.namespace.as_deref().unwrap_or_default() == namespace
        && policy.metadata.deletion_timestamp.is_none()
}

/// The policies that can select pods of one namespace, in [`precedence`] order, their selectors
/// compiled once: [`matching_policies`] for every pod of the namespace without looking at the
/// other namespaces' policies or compiling a selector again (the webhook keeps one per namespace
/// and snapshot of the policies).
#[derive(Debug, Default)]
pub struct NamespacePolicies {
    /// (index into the policies it was built from, the compiled selector: `None` selects
    /// nothing).
    entries: Vec<(usize, Option<Selector>)>,
}

impl NamespacePolicies {
    /// The policies of `policies` that can select pods of `namespace`.
    pub fn new(policies: &[TuningPolicy], namespace: &str) -> Self {
        let mut in_ns: Vec<(usize, &TuningPolicy)> = policies
            .iter()
            .enumerate()
            .filter(|(_, p)| in_scope(p, namespace))
            .collect();
        // Stable: filtering the sorted list later keeps what `matching_policies` sorts.
        in_ns.sort_by(|(_, a), (_, b)| precedence(a, b));
        let entries = in_ns
            .into_iter()
            .map(|(i, p)| (i, compile(&p.spec.pod_selector)))
            .collect();
        Self { entries }
    }

    /// The indices (into the policies this was built from) of the namespace's policies, in
    /// [`precedence`] order.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.entries.iter().map(|(i, _)| *i)
    }

    /// The indices (into the policies this was built from) of the policies that select a pod of
    /// the namespace with `labels`, in [`precedence`] order: what [`matching_policies`] gives.
    pub fn matching(&self, labels: &BTreeMap<String, String>) -> Vec<usize> {
        self.entries
            .iter()
            .filter(|(_, s)| s.as_ref().is_some_and(|s| s.matches(labels)))
            .map(|(i, _)| *i)
            .collect()
    }
}

/// Precedence between two policies setting the same sysctl: higher `priority` first, then
/// name (alphabetically first wins).
pub fn precedence(a: &TuningPolicy, b: &TuningPolicy) -> Ordering {
    b.spec
        .priority
        .cmp(&a.spec.priority)
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// The policies that [`selects`] `pod`, in [`precedence`] order.
pub fn matching_policies<'a, P>(
    pod: &Pod,
    policies: impl IntoIterator<Item = &'a P>,
) -> Vec<&'a TuningPolicy>
where
    P: Borrow<TuningPolicy> + 'a,
{
    let mut out: Vec<&TuningPolicy> = policies
        .into_iter()
        .map(Borrow::borrow)
        .filter(|p| selects(p, pod))
        .collect();
    out.sort_by(|a, b| precedence(a, b));
    out
}

/// Names of the policies that [`selects`] `pod`, sorted by name.
pub fn selecting_names<'a, P>(pod: &Pod, policies: impl IntoIterator<Item = &'a P>) -> Vec<String>
where
    P: Borrow<TuningPolicy> + 'a,
{
    let mut out: Vec<String> = matching_policies(pod, policies)
        .into_iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
    fn req(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        }
    }
    fn exprs(e: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(e),
            ..Default::default()
        }
    }
    fn ml(kv: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels(kv)),
            ..Default::default()
        }
    }

    #[test]
    fn selector_table() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let none = labels(&[]);
        let cases: Vec<(LabelSelector, &BTreeMap<String, String>, bool)> = vec![
            (LabelSelector::default(), &web, true),
            (LabelSelector::default(), &none, true),
            (ml(&[("app", "web")]), &web, true),
            (ml(&[("app", "api")]), &web, false),
            (ml(&[("app", "web")]), &none, false),
            (
                exprs(vec![req("app", "In", Some(&["web", "api"]))]),
                &web,
                true,
            ),
            (
                exprs(vec![req("app", "NotIn", Some(&["web"]))]),
                &web,
                false,
            ),
            (
                exprs(vec![req("app", "NotIn", Some(&["web"]))]),
                &none,
                true,
            ),
            (exprs(vec![req("tier", "Exists", None)]), &web, true),
            (exprs(vec![req("tier", "DoesNotExist", None)]), &web, false),
            (exprs(vec![req("tier", "DoesNotExist", None)]), &none, true),
            (exprs(vec![req("tier", "Bogus", None)]), &web, false),
            (exprs(vec![req("tier", "Bogus", None)]), &none, false),
            // Invalid but evaluable: values missing or superfluous.
            (exprs(vec![req("app", "In", None)]), &web, false),
            (exprs(vec![req("app", "In", Some(&[]))]), &web, false),
            (exprs(vec![req("app", "NotIn", None)]), &web, true),
            (exprs(vec![req("app", "Exists", Some(&["x"]))]), &web, true),
            (
                LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    match_expressions: Some(vec![req("tier", "In", Some(&["back"]))]),
                },
                &web,
                false,
            ),
        ];
        for (i, (sel, l, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                selector_matches(&sel, l),
                want,
                "case {i}: {sel:?} on {l:?}"
            );
            // Keys the selector does not read, and values it does not name, are alike to it.
            let named: Vec<(&str, &str)> = selector_values(&sel).collect();
            let keys: Vec<&str> = selector_keys(&sel).collect();
            let other: BTreeMap<String, String> = l
                .iter()
                .filter(|(k, _)| keys.contains(&k.as_str()))
                .map(|(k, v)| match named.contains(&(k.as_str(), v.as_str())) {
                    true => (k.clone(), v.clone()),
                    false => (k.clone(), format!("{v}-other")),
                })
                .collect();
            let got = selector_matches(&sel, &other);
            assert_eq!(got, want, "case {i}: {sel:?} on {other:?}");
        }
    }

    #[test]
    fn selector_problems_table() {
        let cases: Vec<(LabelSelector, &[&str])> = vec![
            (LabelSelector::default(), &[]),
            (ml(&[("app", "web")]), &[]),
            (exprs(vec![req("app", "In", Some(&["web"]))]), &[]),
            (exprs(vec![req("app", "Exists", None)]), &[]),
            (
                exprs(vec![req("app", "In", None)]),
                &["operator In for key \"app\" needs values"],
            ),
            (
                exprs(vec![req("app", "NotIn", Some(&[]))]),
                &["operator NotIn for key \"app\" needs values"],
            ),
            (
                exprs(vec![req("app", "DoesNotExist", Some(&["x"]))]),
                &["operator DoesNotExist for key \"app\" takes no values"],
            ),
            (
                exprs(vec![req("app", "Has", None), req("b", "In", None)]),
                &[
                    "unknown operator \"Has\" for key \"app\"",
                    "operator In for key \"b\" needs values",
                ],
            ),
        ];
        for (sel, want) in cases {
            assert_eq!(selector_problems(&sel), *want, "{sel:?}");
        }
    }

    fn policy(ns: &str, name: &str, priority: i32, sel: LabelSelector) -> TuningPolicy {
        let mut p = TuningPolicy::new(
            name,
            crate::TuningPolicySpec {
                pod_selector: sel,
                sysctls: None,
                preset: None,
                delivery: Default::default(),
                mode: Default::default(),
                restart_pods: Default::default(),
                priority,
                verification_window_seconds: None,
            },
        );
        p.metadata.namespace = Some(ns.into());
        p
    }
    fn pod(ns: &str, kv: &[(&str, &str)]) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some(ns.into());
        p.metadata.labels = Some(labels(kv));
        p
    }

    #[test]
    fn matching_policies_table() {
        let mut deleting = policy("shop", "deleting", 0, LabelSelector::default());
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        let policies = vec![
            policy("shop", "b", 0, LabelSelector::default()),
            policy("shop", "a", 0, ml(&[("app", "web")])),
            policy("shop", "c", 5, LabelSelector::default()),
            policy("shop", "api", 9, ml(&[("app", "api")])),
            policy("other", "elsewhere", 9, LabelSelector::default()),
            deleting,
        ];
        let cases: &[(Pod, &[&str])] = &[
            (pod("shop", &[("app", "web")]), &["c", "a", "b"]),
            (pod("shop", &[("app", "api")]), &["api", "c", "b"]),
            (pod("shop", &[]), &["c", "b"]),
            (pod("other", &[]), &["elsewhere"]),
            (pod("empty", &[]), &[]),
        ];
        for (p, want) in cases {
            let got: Vec<&str> = matching_policies(p, &policies)
                .iter()
                .map(|p| p.metadata.name.as_deref().unwrap())
                .collect();
            assert_eq!(got, *want, "{p:?}");
            let mut sorted: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            sorted.sort();
            let arcs: Vec<std::sync::Arc<TuningPolicy>> =
                policies.iter().cloned().map(std::sync::Arc::new).collect();
            assert_eq!(selecting_names(p, &arcs), sorted);
        }
    }

    #[test]
    fn namespace_policies_select_what_matching_policies_selects() {
        let mut deleting = policy("shop", "deleting", 0, LabelSelector::default());
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        let policies = vec![
            policy("shop", "web", 0, ml(&[("app", "web")])),
            policy(
                "shop",
                "fe",
                3,
                exprs(vec![
                    req("tier", "In", Some(&["fe"])),
                    req("canary", "DoesNotExist", None),
                ]),
            ),
            policy("shop", "all", 0, LabelSelector::default()),
            policy("shop", "also-all", 3, LabelSelector::default()),
            policy("shop", "bogus", 9, exprs(vec![req("app", "Has", None)])),
            policy("other", "elsewhere", 0, ml(&[("team", "x")])),
            deleting,
        ];
        let all = [
            ("app", "web"),
            ("app", "api"),
            ("tier", "fe"),
            ("canary", "1"),
            ("team", "x"),
        ];
        for ns in ["shop", "other", "empty"] {
            let index = NamespacePolicies::new(&policies, ns);
            // Every subset of labels (one value per key).
            for mask in 0u32..(1 << all.len()) {
                let kv: BTreeMap<&str, &str> = all
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, kv)| *kv)
                    .collect();
                let kv: Vec<(&str, &str)> = kv.into_iter().collect();
                let p = pod(ns, &kv);
                let want: Vec<*const TuningPolicy> = matching_policies(&p, &policies)
                    .into_iter()
                    .map(|p| p as *const _)
                    .collect();
                let got: Vec<*const TuningPolicy> = index
                    .matching(pod_labels(&p))
                    .into_iter()
                    .map(|i| &policies[i] as *const _)
                    .collect();
                assert_eq!(got, want, "{ns} {kv:?}");
            }
        }
    }
}
