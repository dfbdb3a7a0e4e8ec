//! PodSecurity admission as kubetune reads it from a namespace's labels: the enforced level and
//! policy version. The webhook plans with it, the operator computes the namespace-level
//! delivery with it; both call [`enforced`].

use std::collections::BTreeMap;

use crate::sysctl::{KubeVersion, PodSecurityLevel};

/// PodSecurity admission enforce label.
pub const PSA_ENFORCE: &str = "pod-security.kubernetes.io/enforce";
/// PodSecurity enforce version label.
pub const PSA_ENFORCE_VERSION: &str = "pod-security.kubernetes.io/enforce-version";

/// The enforced PodSecurity level and version of a namespace with `labels`, if any.
///
/// An unparsable level counts as `restricted` (fail safe: never inject what the apiserver may
/// reject); an absent, `latest` or unparsable version counts as [`KubeVersion::LATEST`].
pub fn enforced(labels: &BTreeMap<String, String>) -> Option<(PodSecurityLevel, KubeVersion)> {
    let level = labels.get(PSA_ENFORCE)?;
    let level = PodSecurityLevel::parse(level).unwrap_or(PodSecurityLevel::Restricted);
    let version = labels
        .get(PSA_ENFORCE_VERSION)
        .filter(|v| v.as_str() != "latest")
        .and_then(|v| KubeVersion::parse(v).ok())
        .unwrap_or(KubeVersion::LATEST);
    Some((level, version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use PodSecurityLevel::*;

    type Case = (
        &'static [(&'static str, &'static str)],
        Option<(PodSecurityLevel, KubeVersion)>,
    );

    #[test]
    fn enforced_table() {
        let cases: &[Case] = &[
            (&[], None),
            (&[(PSA_ENFORCE_VERSION, "v1.29")], None),
            (&[("pod-security.kubernetes.io/warn", "restricted")], None),
            (
                &[(PSA_ENFORCE, "privileged")],
                Some((Privileged, KubeVersion::LATEST)),
            ),
            (
                &[(PSA_ENFORCE, "baseline")],
                Some((Baseline, KubeVersion::LATEST)),
            ),
            (
                &[(PSA_ENFORCE, " restricted ")],
                Some((Restricted, KubeVersion::LATEST)),
            ),
            (
                &[(PSA_ENFORCE, "bogus")],
                Some((Restricted, KubeVersion::LATEST)),
            ),
            (
                &[(PSA_ENFORCE, "baseline"), (PSA_ENFORCE_VERSION, "v1.29")],
                Some((Baseline, KubeVersion::new(1, 29))),
            ),
            (
                &[(PSA_ENFORCE, "baseline"), (PSA_ENFORCE_VERSION, "latest")],
                Some((Baseline, KubeVersion::LATEST)),
            ),
            (
                &[(PSA_ENFORCE, "baseline"), (PSA_ENFORCE_VERSION, "garbage")],
                Some((Baseline, KubeVersion::LATEST)),
            ),
        ];
        for (labels, want) in cases {
            let l: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(enforced(&l), *want, "{labels:?}");
        }
    }
}
