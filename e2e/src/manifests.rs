//! Render `config/default` with `kubectl kustomize` and check every object against its schema:
//! built-in kinds round-trip through their k8s-openapi type (a misspelt or misplaced field is
//! dropped by the typed decode and shows up as a difference), kubetune's own kinds through the
//! crate's types and validation.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Errors rendering or checking manifests.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// kubectl missing or failed.
    #[error("kubectl kustomize {dir}: {msg}")]
    Render {
        /// Directory.
        dir: String,
        /// What happened.
        msg: String,
    },
    /// Output is not YAML.
    #[error("rendered output is not YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `kubectl kustomize <dir>` split into objects.
pub fn render(dir: &Path) -> Result<Vec<Value>, ManifestError> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .map_err(|e| ManifestError::Render {
            dir: dir.display().to_string(),
            msg: format!("cannot run kubectl ({e}); scripts/setup installs it"),
        })?;
    if !out.status.success() {
        return Err(ManifestError::Render {
            dir: dir.display().to_string(),
            msg: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    parse_multi(&String::from_utf8_lossy(&out.stdout))
}

/// Parse a multi-document YAML stream into JSON values (skipping empty documents).
pub fn parse_multi(text: &str) -> Result<Vec<Value>, ManifestError> {
    use serde::Deserialize;
    let mut objs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(doc)?;
        if !v.is_null() {
            objs.push(v);
        }
    }
    Ok(objs)
}

/// Paths present in `a` but missing or different in `b`.
pub fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    Some(vb) => diff(va, vb, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k} (unknown field)")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                diff(va, vb, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a == b => {}
        _ => out.push(format!("{path}: {a} became {b}")),
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<Vec<String>, String> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    diff(obj, &back, "", &mut out);
    Ok(out)
}

/// Check one object against the schema of its kind. Returns the problems (empty = valid).
pub fn check_object(obj: &Value) -> Vec<String> {
    use k8s_openapi::api::{
        admissionregistration::v1 as adm, apps::v1 as apps, core::v1 as core, policy::v1 as pol,
        rbac::v1 as rbac,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let kind = obj["kind"].as_str().unwrap_or_default();
    let api = obj["apiVersion"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or("<unnamed>");
    let r = match (api, kind) {
        ("v1", "Namespace") => roundtrip::<core::Namespace>(obj),
        ("v1", "ServiceAccount") => roundtrip::<core::ServiceAccount>(obj),
        ("v1", "ConfigMap") => roundtrip::<core::ConfigMap>(obj),
        ("v1", "Service") => roundtrip::<core::Service>(obj),
        ("apps/v1", "Deployment") => roundtrip::<apps::Deployment>(obj),
        ("apps/v1", "DaemonSet") => roundtrip::<apps::DaemonSet>(obj),
        ("policy/v1", "PodDisruptionBudget") => roundtrip::<pol::PodDisruptionBudget>(obj),
        ("coordination.k8s.io/v1", "Lease") => {
            roundtrip::<k8s_openapi::api::coordination::v1::Lease>(obj)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => roundtrip::<rbac::ClusterRole>(obj),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            roundtrip::<rbac::ClusterRoleBinding>(obj)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => roundtrip::<rbac::Role>(obj),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => roundtrip::<rbac::RoleBinding>(obj),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            roundtrip::<adm::MutatingWebhookConfiguration>(obj)
        }
        ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration") => {
            roundtrip::<adm::ValidatingWebhookConfiguration>(obj)
        }
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
            roundtrip::<adm::ValidatingAdmissionPolicy>(obj)
        }
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
            roundtrip::<adm::ValidatingAdmissionPolicyBinding>(obj)
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            roundtrip::<CustomResourceDefinition>(obj)
        }
        ("kubetune.dev/v1alpha1", "TuningPolicy") => roundtrip::<kubetune_crds::TuningPolicy>(obj)
            .map(|mut d| {
                // Defaults the apiserver would fill in are not "unknown fields".
                d.retain(|p| !p.contains("became"));
                if let Ok(p) = serde_json::from_value::<kubetune_crds::TuningPolicy>(obj.clone()) {
                    d.extend(
                        kubetune_crds::policy::validate_spec(&p.spec)
                            .iter()
                            .map(ToString::to_string),
                    );
                }
                d
            }),
        _ => Err(format!("no schema known for {api} {kind}")),
    };
    match r {
        Ok(problems) => problems
            .into_iter()
            .map(|p| format!("{kind}/{name}: {p}"))
            .collect(),
        Err(e) => vec![format!("{kind}/{name}: does not decode: {e}")],
    }
}
