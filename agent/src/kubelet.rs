//! What a kubelet's own configuration says about `allowedUnsafeSysctls` (pure; table-tested).
//!
//! The kubelet's rule: the flag `--allowed-unsafe-sysctls` (comma list; repeated flags add up)
//! wins over the configuration; the `--config` file (a `kubelet.config.k8s.io/v1beta1`
//! `KubeletConfiguration`, YAML or JSON) is overridden by the `--config-dir` drop-ins (files
//! ending in `.conf`, applied in lexical order; a list in a drop-in replaces the list). Embedding
//! launchers (k3s, rke2) pass kubelet flags as `--kubelet-arg=name=value`.
//!
//! Anything malformed is an error, never a guessed "allowed": the caller treats an error as
//! "accepts no unsafe sysctl" and publishes the reason. The I/O (finding the process, reading
//! the files through `/proc/<pid>/root`) is in [`crate::nodeinfo`].

use kubetune_crds::sysctl::KubeVersion;

/// Errors reading a kubelet's configuration. Each says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeletError {
    /// A flag that needs a value was last on the command line.
    #[error("kubelet flag --{0} has no value")]
    MissingValue(String),
    /// An `allowedUnsafeSysctls` entry the kubelet would reject.
    #[error("{source_name}: {entry:?} is not a sysctl name or a pattern ending in '*'")]
    BadEntry {
        /// Flag or file.
        source_name: String,
        /// The entry.
        entry: String,
    },
    /// Not YAML/JSON, or not a mapping.
    #[error("{path}: not a KubeletConfiguration document: {detail}")]
    NotConfig {
        /// File.
        path: String,
        /// Parser message.
        detail: String,
    },
    /// Wrong `apiVersion`/`kind`.
    #[error("{path}: apiVersion/kind is {found:?}, want kubelet.config.k8s.io/v1beta1 KubeletConfiguration")]
    WrongKind {
        /// File.
        path: String,
        /// What it says.
        found: String,
    },
    /// `allowedUnsafeSysctls` is not a list of strings.
    #[error("{path}: allowedUnsafeSysctls must be a list of strings")]
    BadField {
        /// File.
        path: String,
    },
    /// I/O (from the caller).
    #[error("{path}: {detail}")]
    Read {
        /// File or directory.
        path: String,
        /// What failed.
        detail: String,
    },
    /// No kubelet process, or more than one.
    #[error("{0}")]
    Process(String),
}

/// How the kubelet was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// The `kubelet` binary itself.
    Kubelet,
    /// k3s / rke2 running the kubelet in-process (`server` or `agent`), flags via `--kubelet-arg`.
    Embedded,
}

/// Is this command line a kubelet's (argv[0] named `kubelet`, or `k3s`/`rke2` `server`/`agent`)?
pub fn launcher(argv: &[String]) -> Option<Launcher> {
    let base = argv.first()?.rsplit('/').next()?;
    match base {
        "kubelet" => Some(Launcher::Kubelet),
        "k3s" | "rke2" if matches!(argv.get(1).map(String::as_str), Some("server" | "agent")) => {
            Some(Launcher::Embedded)
        }
        _ => None,
    }
}

/// The kubelet flags that decide the allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeletFlags {
    /// `--allowed-unsafe-sysctls` (all occurrences, in order); `None` = not given.
    pub allowed_unsafe_sysctls: Option<Vec<String>>,
    /// `--config` (last occurrence).
    pub config: Option<String>,
    /// `--config-dir` (last occurrence).
    pub config_dir: Option<String>,
}

/// `name`, `value` pairs of the kubelet's long flags as the kubelet's flag parser reads them
/// (`--name=value` or `--name value`; `_` and `-` are the same; parsing stops at `--`).
fn kubelet_flag_pairs(
    args: &[String],
    known: &[&str],
) -> Result<Vec<(String, String)>, KubeletError> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        let Some(flag) = a.strip_prefix("--") else {
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.replace('_', "-"), Some(v.to_string())),
            None => (flag.replace('_', "-"), None),
        };
        if !known.contains(&name.as_str()) {
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or(KubeletError::MissingValue(name.clone()))?,
        };
        out.push((name, value));
    }
    Ok(out)
}

const KNOWN: &[&str] = &["allowed-unsafe-sysctls", "config", "config-dir"];

/// The allowlist-relevant flags of a kubelet command line (`argv[0]` included).
pub fn parse_flags(argv: &[String]) -> Result<KubeletFlags, KubeletError> {
    let args = argv.get(1..).unwrap_or_default();
    let pairs = match launcher(argv) {
        Some(Launcher::Embedded) => kubelet_flag_pairs(args, &["kubelet-arg"])?
            .into_iter()
            .map(|(_, v)| format!("--{}", v.trim_start_matches('-')))
            .collect::<Vec<_>>(),
        _ => args.to_vec(),
    };
    let mut flags = KubeletFlags::default();
    for (name, value) in kubelet_flag_pairs(&pairs, KNOWN)? {
        match name.as_str() {
            "allowed-unsafe-sysctls" => {
                let list = split_entries("flag --allowed-unsafe-sysctls", &value)?;
                flags
                    .allowed_unsafe_sysctls
                    .get_or_insert_with(Vec::new)
                    .extend(list);
            }
            "config" => flags.config = Some(value),
            _ => flags.config_dir = Some(value),
        }
    }
    Ok(flags)
}

/// A flag's comma list (empty string = empty list), every entry checked.
fn split_entries(source_name: &str, value: &str) -> Result<Vec<String>, KubeletError> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|e| check_entry(source_name, e))
        .collect()
}

/// A sysctl name (dots or slashes) or a prefix ending in `*`, as the kubelet validates them.
fn check_entry(source_name: &str, entry: &str) -> Result<String, KubeletError> {
    let body = entry.strip_suffix('*').unwrap_or(entry);
    let ok = !body.is_empty()
        && body.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '/' | '_' | '-')
        })
        && body.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(entry.to_string())
    } else {
        Err(KubeletError::BadEntry {
            source_name: source_name.into(),
            entry: entry.into(),
        })
    }
}

/// What one KubeletConfiguration file sets: `Some(list)` when it has `allowedUnsafeSysctls`.
pub fn parse_config(path: &str, text: &str) -> Result<Option<Vec<String>>, KubeletError> {
    let not_config = |detail: String| KubeletError::NotConfig {
        path: path.into(),
        detail,
    };
    if text.trim().is_empty() {
        return Err(not_config("the file is empty".into()));
    }
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| not_config(e.to_string()))?;
    let map = doc
        .as_mapping()
        .ok_or_else(|| not_config("not a mapping".into()))?;
    let field = |k: &str| map.get(k).and_then(serde_yaml::Value::as_str).unwrap_or("");
    let (api, kind) = (field("apiVersion"), field("kind"));
    if api != "kubelet.config.k8s.io/v1beta1" || kind != "KubeletConfiguration" {
        return Err(KubeletError::WrongKind {
            path: path.into(),
            found: format!("{api} {kind}"),
        });
    }
    let bad = || KubeletError::BadField { path: path.into() };
    match map.get("allowedUnsafeSysctls") {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(serde_yaml::Value::Sequence(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .ok_or_else(bad)
                    .and_then(|s| check_entry(path, s))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

/// The drop-ins the kubelet reads from a `--config-dir` listing: `.conf` files, lexical order.
pub fn dropin_order(mut names: Vec<String>) -> Vec<String> {
    names.retain(|n| n.ends_with(".conf"));
    names.sort();
    names
}

/// Does the kubelet read its `--config-dir`? From 1.30 on (beta, then GA, on by default); 1.28
/// and 1.29 only with `KUBELET_CONFIG_DROPIN_DIR_ALPHA` in its environment. An unknown version
/// counts as recent (a kubelet older than 1.28 does not start with the flag at all).
pub fn dropins_apply(kubelet_version: Option<KubeVersion>, alpha_env: bool) -> bool {
    alpha_env || kubelet_version.is_none_or(|v| v >= KubeVersion::new(1, 30))
}

/// One configuration file as read (path as the kubelet names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    /// Path as the kubelet sees it.
    pub path: String,
    /// Contents.
    pub text: String,
}

/// The kubelet's effective allowlist and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    /// Entries (names or patterns).
    pub entries: Vec<String>,
    /// `flag --allowed-unsafe-sysctls`, a file path, or `kubelet default`.
    pub source: String,
}

/// The effective allowlist: flags over drop-ins (last setting one wins) over the main file over
/// the default (empty). Every file is parsed, so a malformed one is an error even when a flag
/// wins (the kubelet refuses to start with it).
pub fn resolve(
    flags: &KubeletFlags,
    main: Option<&ConfigFile>,
    dropins: &[ConfigFile],
) -> Result<Allowlist, KubeletError> {
    let mut best: Option<Allowlist> = None;
    for f in main.into_iter().chain(dropins) {
        if let Some(entries) = parse_config(&f.path, &f.text)? {
            best = Some(Allowlist {
                entries,
                source: f.path.clone(),
            });
        }
    }
    if let Some(entries) = &flags.allowed_unsafe_sysctls {
        best = Some(Allowlist {
            entries: entries.clone(),
            source: "flag --allowed-unsafe-sysctls".into(),
        });
    }
    Ok(best.unwrap_or(Allowlist {
        entries: Vec::new(),
        source: "kubelet default".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }
    fn file(path: &str, text: &str) -> ConfigFile {
        ConfigFile {
            path: path.into(),
            text: text.into(),
        }
    }
    const HDR: &str = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";

    #[test]
    fn command_lines() {
        let some = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        type Case = (
            &'static str,
            Option<Vec<String>>,
            Option<&'static str>,
            Option<&'static str>,
        );
        let cases: &[Case] = &[
            // kubeadm: flags from kubeadm-flags.env, config file.
            ("/usr/bin/kubelet --bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf --config=/var/lib/kubelet/config.yaml --container-runtime-endpoint=unix:///var/run/containerd/containerd.sock --pod-infra-container-image=registry.k8s.io/pause:3.10",
             None, Some("/var/lib/kubelet/config.yaml"), None),
            // space form, underscore spelling, repeated flag adds up
            ("kubelet --config /etc/k/c.yaml --allowed_unsafe_sysctls net.core.somaxconn --allowed-unsafe-sysctls=net.ipv4.*,kernel.msg*",
             some(&["net.core.somaxconn", "net.ipv4.*", "kernel.msg*"]), Some("/etc/k/c.yaml"), None),
            // EKS AL2023 (nodeadm): JSON config and a drop-in dir
            ("/usr/bin/kubelet --config=/etc/kubernetes/kubelet/config.json --config-dir=/etc/kubernetes/kubelet/config.json.d --kubeconfig=/var/lib/kubelet/kubeconfig --node-ip=10.0.1.5 --hostname-override=ip-10-0-1-5",
             None, Some("/etc/kubernetes/kubelet/config.json"), Some("/etc/kubernetes/kubelet/config.json.d")),
            // GKE: config under /home/kubernetes, unrelated flags with values in space form
            ("/home/kubernetes/bin/kubelet --v=2 --cloud-provider=external --experimental-mounter-path=/home/kubernetes/containerized_mounter/mounter --cert-dir=/var/lib/kubelet/pki/ --kubeconfig=/var/lib/kubelet/kubeconfig --max-pods=110 --node-labels=cloud.google.com/gke-nodepool=default-pool --volume-plugin-dir=/home/kubernetes/flexvolume --node-status-max-images=25 --container-runtime-endpoint=unix:///run/containerd/containerd.sock --runtime-cgroups=/system.slice/containerd.service --registry-qps=10 --registry-burst=20 --config /home/kubernetes/kubelet-config.yaml --pod-sysctls=net.core.somaxconn=1024",
             None, Some("/home/kubernetes/kubelet-config.yaml"), None),
            // k3s: kubelet flags through --kubelet-arg (both spellings)
            ("/usr/local/bin/k3s server --disable=traefik --kubelet-arg=allowed-unsafe-sysctls=net.core.somaxconn,net.ipv4.tcp_max_syn_backlog --kubelet-arg --config=/etc/rancher/k3s/kubelet.yaml",
             some(&["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"]), Some("/etc/rancher/k3s/kubelet.yaml"), None),
            // rke2 agent; a k3s server's own --config is not the kubelet's
            ("/usr/local/bin/rke2 agent --config /etc/rancher/rke2/config.yaml --kubelet-arg=--allowed-unsafe-sysctls=net.*",
             some(&["net.*"]), None, None),
            // empty value = empty list; flags after "--" are not flags
            ("kubelet --allowed-unsafe-sysctls= -- --config=/x", some(&[]), None, None),
        ];
        for (line, allowed, config, dir) in cases {
            let f = parse_flags(&argv(line)).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(&f.allowed_unsafe_sysctls, allowed, "{line}");
            assert_eq!(f.config.as_deref(), *config, "{line}");
            assert_eq!(f.config_dir.as_deref(), *dir, "{line}");
        }
    }

    #[test]
    fn malformed_command_lines_are_errors() {
        let cases = [
            ("kubelet --config", "--config has no value"),
            ("kubelet --allowed-unsafe-sysctls", "no value"),
            (
                "kubelet --allowed-unsafe-sysctls=net.core.somaxconn,,net.x",
                "\"\"",
            ),
            ("kubelet --allowed-unsafe-sysctls=net.*.foo", "net.*.foo"),
            (
                "kubelet --allowed-unsafe-sysctls=Net.Core.Somaxconn",
                "Net.Core",
            ),
            ("k3s agent --kubelet-arg=allowed-unsafe-sysctls=*", "\"*\""),
        ];
        for (line, want) in cases {
            let e = parse_flags(&argv(line)).expect_err(line).to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn which_processes_are_kubelets() {
        let cases = [
            ("/usr/bin/kubelet --config=x", Some(Launcher::Kubelet)),
            ("kubelet", Some(Launcher::Kubelet)),
            ("/usr/local/bin/k3s server", Some(Launcher::Embedded)),
            (
                "/usr/local/bin/k3s agent --token x",
                Some(Launcher::Embedded),
            ),
            ("/usr/local/bin/k3s kubectl get pods", None),
            ("/usr/bin/kubelet-wrapper --config=x", None),
            ("/usr/bin/containerd", None),
        ];
        for (line, want) in cases {
            assert_eq!(launcher(&argv(line)), want, "{line}");
        }
        assert_eq!(launcher(&[]), None);
    }

    #[test]
    fn configuration_files() {
        let ok: &[(&str, Option<&[&str]>)] = &[
            ("allowedUnsafeSysctls:\n- net.core.somaxconn\n- net.ipv4.tcp_max_syn_backlog\n",
             Some(&["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"])),
            ("allowedUnsafeSysctls: [\"net.*\"]\n", Some(&["net.*"])),
            ("allowedUnsafeSysctls: []\n", Some(&[])),
            ("allowedUnsafeSysctls: null\nmaxPods: 110\n", None),
            // a kubeadm config without the field
            ("authentication:\n  anonymous: {enabled: false}\ncgroupDriver: systemd\nclusterDNS: [10.96.0.10]\nstaticPodPath: /etc/kubernetes/manifests\n", None),
        ];
        for (body, want) in ok {
            let got = parse_config("/c.yaml", &format!("{HDR}{body}")).unwrap();
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "{body}");
        }
        // JSON (EKS) is YAML too.
        let json = r#"{"kind":"KubeletConfiguration","apiVersion":"kubelet.config.k8s.io/v1beta1","allowedUnsafeSysctls":["net.core.somaxconn"],"maxPods":58}"#;
        assert_eq!(
            parse_config("/c.json", json).unwrap(),
            Some(vec!["net.core.somaxconn".to_string()])
        );
    }

    #[test]
    fn malformed_configuration_files_are_errors() {
        let cases = [
            ("", "empty"),
            ("{ \"kind\": ", "not a KubeletConfiguration document"),
            ("- a\n- b\n", "not a mapping"),
            (
                "apiVersion: v1\nkind: ConfigMap\n",
                "want kubelet.config.k8s.io/v1beta1",
            ),
            (
                "kind: KubeletConfiguration\nallowedUnsafeSysctls: [net.core.somaxconn]\n",
                "apiVersion/kind",
            ),
        ];
        for (text, want) in cases {
            let e = parse_config("/c.yaml", text).expect_err(text).to_string();
            assert!(e.contains(want) && e.contains("/c.yaml"), "{text:?}: {e}");
        }
        let bad_fields = [
            "allowedUnsafeSysctls: net.core.somaxconn\n",
            "allowedUnsafeSysctls: [1, 2]\n",
            "allowedUnsafeSysctls: {net.core.somaxconn: true}\n",
            "allowedUnsafeSysctls: [\"net.core.somaxconn \"]\n",
            "allowedUnsafeSysctls: [net.core.somaxconn]\nallowedUnsafeSysctls: [net.*]\n",
        ];
        for body in bad_fields {
            assert!(
                parse_config("/c.yaml", &format!("{HDR}{body}")).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn precedence_is_the_kubelets() {
        let main = file(
            "/var/lib/kubelet/config.yaml",
            &format!("{HDR}allowedUnsafeSysctls: [net.core.somaxconn]\n"),
        );
        let d10 = file(
            "/d/10-a.conf",
            &format!("{HDR}allowedUnsafeSysctls: [net.ipv4.*]\n"),
        );
        let d20 = file("/d/20-b.conf", &format!("{HDR}maxPods: 20\n"));
        let d30 = file("/d/30-c.conf", &format!("{HDR}allowedUnsafeSysctls: []\n"));
        let flag = KubeletFlags {
            allowed_unsafe_sysctls: Some(vec!["kernel.shm*".into()]),
            ..Default::default()
        };
        let none = KubeletFlags::default();
        let r = |f: &KubeletFlags, m: Option<&ConfigFile>, d: &[ConfigFile]| {
            let a = resolve(f, m, d).unwrap();
            (a.entries.join(","), a.source)
        };
        assert_eq!(r(&none, None, &[]), ("".into(), "kubelet default".into()));
        assert_eq!(
            r(&none, Some(&main), &[]),
            ("net.core.somaxconn".into(), main.path.clone())
        );
        // A drop-in overrides the main file; one without the field leaves it alone.
        assert_eq!(
            r(&none, Some(&main), &[d10.clone(), d20.clone()]),
            ("net.ipv4.*".into(), d10.path.clone())
        );
        assert_eq!(
            r(&none, Some(&main), std::slice::from_ref(&d20)),
            ("net.core.somaxconn".into(), main.path.clone())
        );
        // A later drop-in's empty list replaces the earlier list.
        assert_eq!(
            r(&none, Some(&main), &[d10.clone(), d30.clone()]),
            ("".into(), d30.path.clone())
        );
        // Flags win over everything.
        assert_eq!(
            r(&flag, Some(&main), std::slice::from_ref(&d10)),
            ("kernel.shm*".into(), "flag --allowed-unsafe-sysctls".into())
        );
        // A malformed file is an error even when a flag would win.
        let broken = file("/d/40-x.conf", "allowedUnsafeSysctls: [net.*]\n");
        assert!(resolve(&flag, Some(&main), &[broken]).is_err());
    }

    #[test]
    fn dropins_count_where_the_kubelet_reads_them() {
        let v = |m| Some(KubeVersion::new(1, m));
        assert!(dropins_apply(v(30), false));
        assert!(dropins_apply(v(35), false));
        assert!(!dropins_apply(v(29), false));
        assert!(dropins_apply(v(29), true));
        assert!(dropins_apply(None, false));
    }

    #[test]
    fn dropins_are_conf_files_in_lexical_order() {
        let got = dropin_order(
            [
                "20-b.conf",
                "10-a.conf",
                "README",
                "99-z.conf.bak",
                "100-c.conf",
            ]
            .map(String::from)
            .to_vec(),
        );
        assert_eq!(got, ["10-a.conf", "100-c.conf", "20-b.conf"]);
    }
}
