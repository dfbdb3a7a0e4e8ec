//! `config/monitoring` (Prometheus Operator PodMonitors and alert rules): the monitors select
//! the deployed pods on ports they declare, the rules are valid PromQL that only use metrics the
//! components really export, and every alert fires (and only fires) as `e2e/promtool/` expects
//! — run by `promtool test rules` (Debian's prometheus package, installed by scripts/setup).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use kubetune_e2e::manifests::{render, repo_root};
use serde_json::Value;

fn monitoring() -> Vec<Value> {
    render(&repo_root().join("config/monitoring")).expect("kubectl kustomize config/monitoring")
}

fn rule_groups(objs: &[Value]) -> Value {
    let rules: Vec<&Value> = objs
        .iter()
        .filter(|o| o["kind"] == "PrometheusRule")
        .collect();
    assert_eq!(rules.len(), 1, "one PrometheusRule");
    assert_eq!(rules[0]["apiVersion"], "monitoring.coreos.com/v1");
    rules[0]["spec"]["groups"].clone()
}

fn alerts(groups: &Value) -> Vec<&Value> {
    groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter(|r| r["alert"].is_string())
        .collect()
}

fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool not found: run `bash scripts/setup` (Debian package prometheus)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn pod_monitors_select_the_deployed_pods_on_declared_ports() {
    let deployed = render(&repo_root().join("config/default")).unwrap();
    let monitors: Vec<Value> = monitoring()
        .into_iter()
        .filter(|o| o["kind"] == "PodMonitor")
        .collect();
    let mut covered = BTreeSet::new();
    for m in &monitors {
        assert_eq!(m["metadata"]["namespace"], "kubetune-system");
        let want = m["spec"]["selector"]["matchLabels"].as_object().unwrap();
        let workloads: Vec<&Value> = deployed
            .iter()
            .filter(|o| o["kind"] == "Deployment" || o["kind"] == "DaemonSet")
            .filter(|o| {
                let labels = &o["spec"]["template"]["metadata"]["labels"];
                want.iter().all(|(k, v)| labels[k] == *v)
            })
            .collect();
        assert_eq!(
            workloads.len(),
            1,
            "{} selects {} workloads",
            m["metadata"]["name"],
            workloads.len()
        );
        let w = workloads[0];
        for ep in m["spec"]["podMetricsEndpoints"].as_array().unwrap() {
            let port = ep["port"].as_str().unwrap();
            let containers = w["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap();
            let c = containers
                .iter()
                .find(|c| {
                    c["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|p| p["name"] == port)
                })
                .unwrap_or_else(|| panic!("no container port named {port}"));
            assert_eq!(ep["path"], "/metrics");
            if c["name"] == "webhook" {
                // HTTPS with the CA of the Secret the operator maintains.
                assert_eq!(ep["scheme"], "https");
                let tls = &ep["tlsConfig"];
                assert_eq!(
                    tls["ca"]["secret"]["name"],
                    kubetune_operator::certs::SECRET_NAME
                );
                assert_eq!(tls["ca"]["secret"]["key"], "ca.crt");
                assert_eq!(tls["serverName"], kubetune_e2e::webhook_local::SERVER_NAME);
            }
            if c["name"] == "agent" {
                // The agent's namespace/pod/container labels name the observed pod.
                assert_eq!(ep["honorLabels"], true);
            }
            covered.insert(c["name"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        covered,
        ["agent", "operator", "webhook"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

#[test]
fn alert_rules_use_only_exported_metrics() {
    let groups = rule_groups(&monitoring());
    let exported: BTreeSet<&str> = kubetune_agent::metrics::METRIC_NAMES
        .iter()
        .chain(kubetune_operator::metrics::METRIC_NAMES)
        .chain(kubetune_webhook::metrics::METRIC_NAMES)
        .copied()
        .collect();
    let mut used = BTreeSet::new();
    for r in alerts(&groups) {
        let expr = r["expr"].as_str().unwrap();
        let mut rest = expr;
        while let Some(i) = rest.find("kubetune_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            // Label values such as kubetune_fix are not in expressions; anything else must be a
            // metric the components export.
            assert!(
                exported.contains(name.as_str()),
                "alert {} uses {name}, which no component exports (exported: {exported:?})",
                r["alert"]
            );
            used.insert(name);
        }
        assert!(
            r["labels"]["severity"].is_string(),
            "{} has no severity",
            r["alert"]
        );
        assert!(r["annotations"]["summary"].is_string());
        assert!(r["annotations"]["description"].is_string());
    }
    for needed in [
        "kubetune_listen_overflows_total",
        "kubetune_listen_diagnosis",
        "kubetune_operator_policy_phase",
    ] {
        assert!(used.contains(needed), "no alert uses {needed}");
    }
}

#[test]
fn alerts_pass_promtool_unit_tests() {
    let groups = rule_groups(&monitoring());
    let dir = std::env::temp_dir().join(format!("kubetune-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("rules.yaml"),
        serde_yaml::to_string(&serde_json::json!({ "groups": groups })).unwrap(),
    )
    .unwrap();
    let tests_src = repo_root().join("e2e/promtool/alerts_test.yaml");
    std::fs::copy(&tests_src, dir.join("alerts_test.yaml")).unwrap();

    let (ok, out) = promtool(&["check", "rules", "rules.yaml"], &dir);
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts_test.yaml"], &dir);
    assert!(ok, "promtool test rules:\n{out}");

    // Every alert is tested firing at least once.
    let tests: Value = serde_yaml::from_str(&std::fs::read_to_string(&tests_src).unwrap()).unwrap();
    let fired: BTreeSet<&str> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .filter(|a| a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()))
        .map(|a| a["alertname"].as_str().unwrap())
        .collect();
    for a in alerts(&groups) {
        let name = a["alert"].as_str().unwrap();
        assert!(fired.contains(name), "no promtool test fires {name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
