//! What kubetune reads from a Pod object: the sysctls it carries and its admission record.
//! The webhook (planner, patch) and the operator (status, routing) read pods only through here.

use k8s_openapi::api::core::v1::Pod;

use crate::decision::{
    PodDecision, DECISION_ANNOTATION, MULTUS_NETWORKS_ANNOTATION, SKIP_ANNOTATION,
};

/// `status.reason` of a pod the kubelet rejected because of a sysctl its allowlist lacks.
pub const SYSCTL_FORBIDDEN_REASON: &str = "SysctlForbidden";

/// The pod's `spec.securityContext.sysctls` as written (name, value), in order.
pub fn sysctls(pod: &Pod) -> Vec<(String, String)> {
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|sc| sc.sysctls.as_ref())
        .map(|l| {
            l.iter()
                .map(|s| (s.name.clone(), s.value.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The sysctls the pod's Multus network selection passes to the tuning CNI plugin
/// (`cni-args.sysctl` of its JSON entries; the short form carries none), in entry order.
pub fn tuning_cni_sysctls(pod: &Pod) -> Vec<(String, String)> {
    let raw = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MULTUS_NETWORKS_ANNOTATION));
    let Some(Ok(serde_json::Value::Array(list))) =
        raw.map(|r| serde_json::from_str::<serde_json::Value>(r.trim()))
    else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| e.get("cni-args")?.get("sysctl")?.as_object())
        .flat_map(|m| m.iter())
        .filter_map(|(n, v)| Some((n.clone(), v.as_str()?.to_string())))
        .collect()
}

/// A pod the kubelet rejected with `SysctlForbidden`: (node, sysctl). `status.phase` `Failed`,
/// `status.reason` `SysctlForbidden`, the sysctl read from the kubelet's message
/// `Pod forbidden sysctl: "<name>" not allowlisted` (empty when the message has another shape).
pub fn sysctl_forbidden(pod: &Pod) -> Option<(String, String)> {
    let st = pod.status.as_ref()?;
    if st.phase.as_deref() != Some("Failed")
        || st.reason.as_deref() != Some(SYSCTL_FORBIDDEN_REASON)
    {
        return None;
    }
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let sysctl = st
        .message
        .as_deref()
        .and_then(|m| m.split('"').nth(1))
        .map(crate::sysctl::normalize_name)
        .unwrap_or_default();
    Some((node, sysctl))
}

/// The pod's parsed admission record (`kubetune.dev/decision`), if any; a malformed one counts
/// as none.
pub fn decision(pod: &Pod) -> Option<PodDecision> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(DECISION_ANNOTATION)
        .and_then(|s| PodDecision::parse(s).ok())
}

/// The opt-out rule: a pod whose `kubetune.dev/skip` annotation or label is `"true"` is never
/// touched by the webhook nor counted by the operator. Takes the two values so that the webhook's
/// borrowed pod view and a full `Pod` share it.
pub fn opted_out(skip_annotation: Option<&str>, skip_label: Option<&str>) -> bool {
    skip_annotation == Some("true") || skip_label == Some("true")
}

/// [`opted_out`] for a full `Pod`.
pub fn pod_opted_out(pod: &Pod) -> bool {
    fn skip(m: Option<&std::collections::BTreeMap<String, String>>) -> Option<&str> {
        m?.get(SKIP_ANNOTATION).map(String::as_str)
    }
    opted_out(
        skip(pod.metadata.annotations.as_ref()),
        skip(pod.metadata.labels.as_ref()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{DecisionEntry, Outcome};
    use crate::policy::DeliveryDecision;
    use k8s_openapi::api::core::v1::{PodSecurityContext, PodSpec, Sysctl};
    use std::collections::BTreeMap;

    fn with_sysctls(l: Option<&[(&str, &str)]>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                security_context: Some(PodSecurityContext {
                    sysctls: l.map(|l| {
                        l.iter()
                            .map(|(n, v)| Sysctl {
                                name: n.to_string(),
                                value: v.to_string(),
                            })
                            .collect()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn sysctls_table() {
        let s = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let cases: Vec<(Pod, Vec<(String, String)>)> = vec![
            (Pod::default(), vec![]),
            (
                Pod {
                    spec: Some(PodSpec::default()),
                    ..Default::default()
                },
                vec![],
            ),
            (with_sysctls(None), vec![]),
            (with_sysctls(Some(&[])), vec![]),
            (
                // As written: order and spelling kept.
                with_sysctls(Some(&[
                    ("net/core/somaxconn", "1024"),
                    ("kernel.shmmni", "8"),
                ])),
                s(&[("net/core/somaxconn", "1024"), ("kernel.shmmni", "8")]),
            ),
        ];
        for (pod, want) in cases {
            assert_eq!(sysctls(&pod), want);
        }
    }

    #[test]
    fn tuning_cni_sysctls_table() {
        let annotated = |v: &str| {
            let mut p = Pod::default();
            p.metadata.annotations = Some(BTreeMap::from([(
                MULTUS_NETWORKS_ANNOTATION.to_string(),
                v.to_string(),
            )]));
            p
        };
        let s = |n: &str, v: &str| (n.to_string(), v.to_string());
        let cases = [
            (Pod::default(), vec![]),
            (annotated("macvlan, storage/san@net1"), vec![]),
            (annotated("not json ["), vec![]),
            (annotated(r#"[{"name":"other"}]"#), vec![]),
            (
                annotated(
                    r#"[{"name":"a"},{"name":"kubetune-tuning","namespace":"shop","cni-args":{"sysctl":{"net.core.somaxconn":"8192"}}}]"#,
                ),
                vec![s("net.core.somaxconn", "8192")],
            ),
        ];
        for (pod, want) in cases {
            assert_eq!(tuning_cni_sysctls(&pod), want);
        }
    }

    #[test]
    fn sysctl_forbidden_table() {
        use k8s_openapi::api::core::v1::PodStatus;
        let failed =
            |phase: &str, reason: Option<&str>, msg: Option<&str>, node: Option<&str>| Pod {
                spec: Some(PodSpec {
                    node_name: node.map(Into::into),
                    ..Default::default()
                }),
                status: Some(PodStatus {
                    phase: Some(phase.into()),
                    reason: reason.map(Into::into),
                    message: msg.map(Into::into),
                    ..Default::default()
                }),
                ..Default::default()
            };
        let msg = r#"Pod forbidden sysctl: "net.core.somaxconn" not allowlisted"#;
        let both = |n: &str, s: &str| Some((n.to_string(), s.to_string()));
        let cases = [
            (Pod::default(), None),
            (
                failed("Running", Some("SysctlForbidden"), Some(msg), Some("n1")),
                None,
            ),
            (
                failed("Failed", Some("Evicted"), Some(msg), Some("n1")),
                None,
            ),
            (
                failed("Failed", Some("SysctlForbidden"), Some(msg), Some("n1")),
                both("n1", "net.core.somaxconn"),
            ),
            (
                failed(
                    "Failed",
                    Some("SysctlForbidden"),
                    Some(r#"Pod forbidden sysctl: "net/ipv4/tcp_fin_timeout" not allowlisted"#),
                    None,
                ),
                both("", "net.ipv4.tcp_fin_timeout"),
            ),
            (
                failed(
                    "Failed",
                    Some("SysctlForbidden"),
                    Some("something else"),
                    Some("n2"),
                ),
                both("n2", ""),
            ),
        ];
        for (pod, want) in cases {
            assert_eq!(sysctl_forbidden(&pod), want);
        }
    }

    #[test]
    fn decision_table() {
        let record = PodDecision {
            version: 1,
            policies: vec![],
            node_affinity: vec![],
            entries: vec![DecisionEntry {
                policy: "p".into(),
                generation: 1,
                sysctl: "net.core.somaxconn".into(),
                value: "8192".into(),
                outcome: Outcome::Injected,
                delivery: Some(DeliveryDecision::PodSecurityContext),
                reason: crate::reason::SAFE_SYSCTL.into(),
                message: String::new(),
            }],
        };
        let annotated = |v: &str| {
            let mut p = Pod::default();
            p.metadata.annotations = Some(BTreeMap::from([(
                DECISION_ANNOTATION.to_string(),
                v.to_string(),
            )]));
            p
        };
        assert_eq!(decision(&Pod::default()), None);
        assert_eq!(decision(&annotated("not json")), None);
        assert_eq!(decision(&annotated("{}")), None);
        assert_eq!(
            decision(&annotated(&record.to_annotation())),
            Some(record.clone())
        );
    }

    #[test]
    fn opt_out_by_annotation_or_label() {
        let pod = |ann: Option<&str>, label: Option<&str>| {
            let mut p = Pod::default();
            let m = |v: Option<&str>| {
                v.map(|v| BTreeMap::from([(SKIP_ANNOTATION.to_string(), v.to_string())]))
            };
            p.metadata.annotations = m(ann);
            p.metadata.labels = m(label);
            p
        };
        let cases = [
            (None, None, false),
            (Some("true"), None, true),
            (None, Some("true"), true),
            (Some("false"), Some("true"), true),
            (Some("false"), None, false),
            (Some("True"), None, false),
            (Some("yes"), Some(""), false),
        ];
        for (ann, label, want) in cases {
            assert_eq!(pod_opted_out(&pod(ann, label)), want, "{ann:?} {label:?}");
            assert_eq!(opted_out(ann, label), want, "{ann:?} {label:?}");
        }
    }
}
