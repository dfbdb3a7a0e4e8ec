//! The committed `config/crd/*.yaml` must be exactly what `crdgen` renders, and every schema
//! must be structural (what a real apiserver accepts).

use kubetune_crds::schema::{crds, render, structural_violations};
use serde_json::json;

#[test]
fn committed_crds_match_crdgen_byte_for_byte() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/crd");
    for (file, crd) in crds() {
        let want = render(&crd);
        let have = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| {
            panic!("config/crd/{file} missing ({e}); run `cargo run -p kubetune-crds --bin crdgen`")
        });
        assert!(
            have == want,
            "config/crd/{file} drifted from the types; run `cargo run -p kubetune-crds --bin crdgen` and commit"
        );
    }
}

#[test]
fn every_generated_schema_is_structural() {
    for (file, crd) in crds() {
        for v in &crd.spec.versions {
            let schema = serde_json::to_value(
                v.schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap(),
            )
            .unwrap();
            let bad = structural_violations(&schema);
            assert!(bad.is_empty(), "{file} {}: {bad:#?}", v.name);
            // A kind with a status must serve it as a subresource (so writers of the spec and
            // of the status cannot overwrite each other).
            assert_eq!(
                v.subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                schema["properties"].get("status").is_some(),
                "{file}: status subresource"
            );
        }
    }
}

#[test]
fn structural_checker_catches_what_an_apiserver_rejects() {
    let cases = [
        (
            json!({"type": "object", "properties": {"a": {"description": "no type"}}}),
            "missing type",
        ),
        (
            json!({"type": "object", "properties": {"a": {"$ref": "#/definitions/x", "type": "string"}}}),
            "forbidden keyword $ref",
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}}),
            "mutually exclusive",
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": "string", "anyOf": [{"type": "string"}]}}}),
            "inside allOf/anyOf/oneOf/not",
        ),
        (json!({"type": "array"}), "array without items"),
        (
            json!({"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}},
                "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"]}),
            "must be a required property",
        ),
        (json!({"type": ["string", "null"]}), "single string"),
    ];
    for (schema, want) in cases {
        let got = structural_violations(&schema);
        assert!(
            got.iter().any(|v| v.what.contains(want)),
            "{schema}: expected {want:?}, got {got:?}"
        );
    }
    // and accepts the escape hatches
    assert!(structural_violations(&json!({"x-kubernetes-int-or-string": true})).is_empty());
    assert!(structural_violations(
        &json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
    )
    .is_empty());
}

fn tp_schema() -> serde_json::Value {
    let (_, crd) = crds()
        .into_iter()
        .find(|(f, _)| f.starts_with("tuningpolicies"))
        .unwrap();
    serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema,
    )
    .unwrap()
}

#[test]
fn tuningpolicy_schema_has_cel_rules_enums_and_list_maps() {
    let s = tp_schema();
    let spec = &s["properties"]["spec"];
    let rules: Vec<&str> = spec["x-kubernetes-validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert!(
        rules.contains(&"has(self.sysctls) != has(self.preset)"),
        "{rules:?}"
    );
    assert_eq!(
        spec["properties"]["sysctls"]["x-kubernetes-list-map-keys"],
        json!(["name"])
    );
    assert!(
        spec["properties"]["sysctls"]["x-kubernetes-validations"][0]["rule"]
            .as_str()
            .unwrap()
            .contains("startsWith('net.')")
    );
    assert_eq!(
        spec["properties"]["preset"]["enum"],
        json!([
            "HighConnectionServer",
            "IpvsIdleKeepalive",
            "WideEphemeralPorts"
        ])
    );
    assert_eq!(
        spec["properties"]["delivery"]["enum"],
        json!(["Auto", "PodSecurityContext", "TuningCNI"])
    );
    assert_eq!(
        spec["properties"]["mode"]["enum"],
        json!(["Enforce", "DryRun"])
    );
    let conds = &s["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conds["x-kubernetes-list-type"], "map");
    assert_eq!(conds["x-kubernetes-list-map-keys"], json!(["type"]));
    let cond_props = conds["items"]["properties"].as_object().unwrap();
    for f in [
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    ] {
        assert!(cond_props.contains_key(f), "condition lacks {f}");
    }
}

#[test]
fn printer_columns_point_at_fields_that_exist() {
    for (file, crd) in crds() {
        let v = &crd.spec.versions[0];
        let schema = serde_json::to_value(&v.schema.as_ref().unwrap().open_api_v3_schema).unwrap();
        for col in v.additional_printer_columns.as_ref().unwrap() {
            if col.json_path.starts_with(".metadata") {
                continue;
            }
            let mut node = &schema;
            for seg in col.json_path.trim_start_matches('.').split('.') {
                node = &node["properties"][seg];
            }
            assert!(
                node.is_object(),
                "{file}: column {} -> {} not in schema",
                col.name,
                col.json_path
            );
            let want = match col.type_.as_str() {
                "integer" => "integer",
                _ => "string",
            };
            assert_eq!(node["type"], want, "{file}: column {} type", col.name);
        }
    }
    let names: Vec<String> = crds()[0].1.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.to_uppercase())
        .collect();
    assert_eq!(
        names,
        [
            "SYSCTLS",
            "MATCHED",
            "APPLIED",
            "VERIFIED",
            "OVERFLOWING",
            "STATUS",
            "AGE"
        ]
    );
}

#[test]
fn every_field_is_documented_for_kubectl_explain() {
    fn walk(node: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (k, child) in props {
                let p = format!("{path}.{k}");
                if child.get("description").is_none()
                    && !matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                {
                    missing.push(p.clone());
                }
                walk(child, &p, missing);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, &format!("{path}[]"), missing);
        }
    }
    for (file, crd) in crds() {
        let schema = serde_json::to_value(
            &crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema,
        )
        .unwrap();
        let mut missing = Vec::new();
        walk(&schema["properties"]["spec"], "spec", &mut missing);
        walk(&schema["properties"]["status"], "status", &mut missing);
        assert!(
            missing.is_empty(),
            "{file}: undocumented fields {missing:?}"
        );
    }
}

#[test]
fn nodetuning_is_cluster_scoped_with_the_node_columns() {
    let (_, crd) = crds()
        .into_iter()
        .find(|(f, _)| f.starts_with("nodetunings"))
        .unwrap();
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.plural, "nodetunings");
    let names: Vec<String> = crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .filter(|c| c.priority.unwrap_or(0) == 0)
        .map(|c| c.name.to_uppercase())
        .collect();
    assert_eq!(
        names,
        [
            "KUBELET",
            "UNSAFE-ALLOWED",
            "NETNS-SOMAXCONN",
            "TUNING-CNI",
            "AGE"
        ]
    );
}
