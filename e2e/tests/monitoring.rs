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

/// The Grafana dashboard as shipped (the file, and the ConfigMap the kustomization makes of it).
fn dashboard() -> Value {
    let file = repo_root().join("config/monitoring/dashboards/kubetune.json");
    let d: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let cm: Vec<Value> = monitoring()
        .into_iter()
        .filter(|o| o["kind"] == "ConfigMap")
        .collect();
    assert_eq!(cm.len(), 1, "one dashboard ConfigMap");
    assert_eq!(cm[0]["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value =
        serde_json::from_str(cm[0]["data"]["kubetune.json"].as_str().unwrap()).unwrap();
    assert_eq!(shipped, d, "the ConfigMap carries the file");
    d
}

/// `(panel title, expression)` of every query of every panel.
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_string()))
        })
        .collect()
}

/// PromQL words that are not metric names.
const PROMQL_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
];

/// The metric names an expression selects: identifiers outside string literals, label
/// matchers (`{...}`), ranges (`[...]`) and grouping lists (`by (...)` etc.) that are not
/// function or aggregation names (followed by `(` or by a `by`/`without` clause) and not
/// keywords.
fn metric_names(expr: &str) -> Vec<String> {
    // Blank out strings, matchers and ranges.
    let mut plain = String::new();
    let (mut quote, mut depth) = (None::<char>, 0usize);
    for c in expr.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{' | '[') => depth += 1,
            (None, '}' | ']') => depth -= 1,
            (None, c) if depth == 0 => plain.push(c),
            _ => {}
        }
        if quote.is_some() || depth > 0 {
            plain.push(' ');
        }
    }
    let words: Vec<(usize, String)> = {
        let mut v = Vec::new();
        let b = plain.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let c = b[i] as char;
            if c.is_ascii_alphabetic() || c == '_' || c == ':' {
                let start = i;
                while i < b.len()
                    && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                v.push((i, plain[start..i].to_string()));
            } else if c.is_ascii_digit() || c == '.' {
                // numbers and durations (0.99, 5m, 1e3)
                while i < b.len() && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            } else {
                i += 1;
            }
        }
        v
    };
    let mut out = Vec::new();
    let mut skip_list = false;
    for (end, w) in &words {
        let next = plain[*end..].trim_start();
        if [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ]
        .contains(&w.as_str())
        {
            skip_list = next.starts_with('(');
            continue;
        }
        if skip_list {
            // Inside a grouping list: words until the closing parenthesis.
            if plain[*end..].trim_start().starts_with(')') {
                skip_list = false;
            }
            continue;
        }
        // A function call, or an aggregation with its grouping first: `sum by (le) (...)`.
        let grouping_follows = ["by", "without"].iter().any(|g| {
            next.strip_prefix(g)
                .is_some_and(|r| r.trim_start().starts_with('('))
        });
        let is_call = next.starts_with('(') || grouping_follows;
        if is_call || PROMQL_KEYWORDS.contains(&w.as_str()) {
            continue;
        }
        out.push(w.clone());
    }
    out
}

#[test]
fn metric_name_extraction_understands_promql() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y{z}", pod!=""}[5m])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        metric_names(r#"sum without (pod) (b_total) / on (namespace) group_left (policy) c == 1"#),
        ["b_total", "c"]
    );
    assert_eq!(
        metric_names("topk(10, sum(increase(d[1h])) > 0) or vector(0)"),
        ["d"]
    );
    assert_eq!(metric_names("count(e) by (phase)"), ["e"]);
}

/// Histogram families a component registers, from the `# TYPE` lines of its real exposition.
fn histograms(exposition: &str) -> Vec<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
        .map(str::to_string)
        .collect()
}

/// Every metric a dashboard panel queries is one a component exports: as named in the
/// components' METRIC_NAMES (counters with `_total`), or `_bucket`/`_sum`/`_count` of a family
/// the webhook or operator registers as a histogram (the agent exports none). Each panel
/// expression is also valid PromQL (promtool checks them as recording rules).
#[test]
fn dashboard_queries_use_only_exported_metrics() {
    let d = dashboard();
    let exported: BTreeSet<String> = kubetune_agent::metrics::METRIC_NAMES
        .iter()
        .chain(kubetune_operator::metrics::METRIC_NAMES)
        .chain(kubetune_webhook::metrics::METRIC_NAMES)
        .map(|s| s.to_string())
        .collect();
    let hist: BTreeSet<String> =
        histograms(&kubetune_webhook::metrics::Metrics::default().encode())
            .into_iter()
            .chain(histograms(
                &kubetune_operator::metrics::Metrics::default().encode(),
            ))
            .collect();
    assert!(
        hist.contains("kubetune_webhook_request_duration_seconds"),
        "{hist:?}"
    );
    assert!(
        hist.is_subset(&exported),
        "{hist:?} not all in METRIC_NAMES"
    );
    // A histogram is queried through its series, never by its family name.
    let known = |name: &str| {
        let series_of_histogram = ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|base| hist.contains(base)));
        series_of_histogram || (exported.contains(name) && !hist.contains(name))
    };
    let queries = dashboard_queries(&d);
    assert!(queries.len() >= 15, "{} queries", queries.len());
    let mut used = BTreeSet::new();
    for (panel, expr) in &queries {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "panel {panel:?} queries no metric: {expr}"
        );
        for n in names {
            assert!(
                known(&n),
                "panel {panel:?} queries {n}, which no component exports: {expr}"
            );
            used.insert(n);
        }
    }
    // What the dashboard is for.
    for needed in [
        "kubetune_listen_overflows_total",
        "kubetune_listen_diagnosis",
        "kubetune_operator_policy_phase",
        "kubetune_webhook_request_duration_seconds_bucket",
        "kubetune_webhook_requests_total",
        "kubetune_agent_info",
        "kubetune_agent_scan_cpu_seconds_total",
        "kubetune_agent_scan_duration_seconds",
    ] {
        assert!(used.contains(needed), "no panel queries {needed}");
    }
    // Every expression parses (as a recording rule).
    let dir = std::env::temp_dir().join(format!("kubetune-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, (_, e))| serde_json::json!({"record": format!("kubetune:dashboard:{i}"), "expr": e}))
        .collect();
    std::fs::write(
        dir.join("dashboard.yaml"),
        serde_yaml::to_string(
            &serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]}),
        )
        .unwrap(),
    )
    .unwrap();
    let (ok, out) = promtool(&["check", "rules", "dashboard.yaml"], &dir);
    assert!(ok, "promtool check rules (dashboard queries):\n{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The dashboard imports: unique panel ids, every panel on the 24-column grid and on the
/// `$datasource` variable, every query with a refId, the variables it uses defined.
#[test]
fn dashboard_is_importable() {
    let d = dashboard();
    assert_eq!(d["uid"], "kubetune");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let vars: BTreeSet<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "namespace"].into());
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id {}",
            p["id"]
        );
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{}",
            p["title"]
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(p["description"].is_string());
        let mut refs = BTreeSet::new();
        for t in p["targets"].as_array().unwrap() {
            assert!(refs.insert(t["refId"].as_str().unwrap()));
            let e = t["expr"].as_str().unwrap();
            let mut rest = e;
            while let Some(i) = rest.find('$') {
                let v: String = rest[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(vars.contains(v.as_str()), "{}: undefined ${v}", p["title"]);
                rest = &rest[i + 1..];
            }
        }
    }
}
