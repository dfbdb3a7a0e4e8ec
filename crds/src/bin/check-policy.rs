//! Offline check of TuningPolicy YAML files: parses each document, expands presets and prints
//! what the policy would set, whether each sysctl is safe in a Kubernetes version, and every
//! validation error. Exit status 1 when any policy is invalid.
//!
//! Usage: check-policy [--kube-version 1.30] FILE...

use kubetune_crds::policy::{desired_sysctls, validate_spec, TuningPolicy};
use kubetune_crds::sysctl::{self, KubeVersion};
use serde::Deserialize;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut version = KubeVersion::LATEST;
    if let Some(i) = args.iter().position(|a| a == "--kube-version") {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        version = match KubeVersion::parse(&v) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        };
        args.drain(i..=i + 1);
    }
    if args.is_empty() {
        eprintln!("usage: check-policy [--kube-version X.Y] FILE...");
        std::process::exit(2);
    }
    let mut failed = false;
    for file in &args {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{file}: {e}");
                failed = true;
                continue;
            }
        };
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = match serde_yaml::Value::deserialize(doc) {
                Ok(serde_yaml::Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    println!("{file}: not YAML: {e}");
                    failed = true;
                    continue;
                }
            };
            if value.get("kind").and_then(|k| k.as_str()) != Some("TuningPolicy") {
                continue;
            }
            let policy: TuningPolicy = match serde_yaml::from_value(value) {
                Ok(p) => p,
                Err(e) => {
                    println!("{file}: not a valid TuningPolicy: {e}");
                    failed = true;
                    continue;
                }
            };
            let name = policy.metadata.name.clone().unwrap_or_default();
            let errs = validate_spec(&policy.spec);
            println!(
                "{file}: TuningPolicy {name}: {}",
                if errs.is_empty() { "valid" } else { "INVALID" }
            );
            for (n, v) in desired_sysctls(&policy.spec) {
                let kind = match sysctl::classify(&n) {
                    Ok(_) if sysctl::is_safe(&n, version) => format!("safe in Kubernetes {version}"),
                    Ok(_) => format!("unsafe in Kubernetes {version}: kubelet allowedUnsafeSysctls or tuning CNI needed"),
                    Err(e) => e.reason().to_string(),
                };
                println!("  {n}={v}  ({kind})");
            }
            for e in &errs {
                println!("  error: {e}");
            }
            failed |= !errs.is_empty();
        }
    }
    std::process::exit(i32::from(failed));
}
