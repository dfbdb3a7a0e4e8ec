//! The container image's runtime stage (`gcr.io/distroless/cc-debian12`: glibc, libgcc_s, CA
//! certificates, nothing else) can run the binaries the Dockerfile copies into it: each one
//! needs no shared library beyond those, and the agent carries its eBPF programs inside (the
//! image has no other files). No container engine needed: this reads the built ELF files.

use std::process::Command;

use kubetune_e2e::manifests::repo_root;

/// Shared libraries distroless/cc-debian12 provides (glibc and libgcc_s).
const DISTROLESS_CC: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
];

fn image_binaries(dockerfile: &str) -> Vec<(String, String)> {
    // `cargo build ... -p <package> ...` and `target/release/<binary>` in the build stage.
    let bins: Vec<String> = dockerfile
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("target/release/"))
        .map(str::to_string)
        .collect();
    bins.into_iter()
        .map(|b| {
            let package = b.clone(); // one binary per package, named after it
            assert!(
                dockerfile.contains(&format!("-p {package}")),
                "the Dockerfile copies {b} but does not build package {package}"
            );
            (package, b)
        })
        .collect()
}

#[test]
fn runtime_stage_can_run_every_binary() {
    let root = repo_root();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("FROM gcr.io/distroless/cc-debian12"),
        "this test knows the libraries of distroless/cc-debian12 only"
    );
    let bins = image_binaries(&dockerfile);
    assert_eq!(
        bins.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>(),
        ["kubetune-operator", "kubetune-webhook", "kubetune-agent"]
    );
    // Build them (a no-op when `cargo test --workspace` already did) and read their ELF headers.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let mut build = Command::new(env!("CARGO"));
    build.current_dir(&root).arg("build").arg("--quiet");
    for (package, bin) in &bins {
        build.args(["-p", package, "--bin", bin]);
    }
    let st = build.status().expect("cargo build");
    assert!(st.success(), "cargo build of the image's binaries failed");
    for (_, bin) in &bins {
        let path = target.join("debug").join(bin);
        let out = Command::new("readelf")
            .arg("-d")
            .arg(&path)
            .output()
            .expect("readelf (binutils)");
        assert!(out.status.success(), "readelf -d {}", path.display());
        let text = String::from_utf8_lossy(&out.stdout);
        let needed: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("(NEEDED)"))
            .filter_map(|l| l.split('[').nth(1)?.split(']').next())
            .collect();
        assert!(!needed.is_empty(), "{bin}: not a dynamically linked ELF?");
        for lib in &needed {
            assert!(
                DISTROLESS_CC.contains(lib),
                "{bin} needs {lib}, which distroless/cc-debian12 does not have (needed: {needed:?})"
            );
        }
        if bin == "kubetune-agent" {
            // The probes are compiled into the agent (include_bytes of the eBPF object): their
            // section names are in the binary, so the image needs no .o files next to it.
            let bytes = std::fs::read(&path).unwrap();
            for section in ["tracepoint/syscalls/sys_enter_listen", "tp_btf/kfree_skb"] {
                assert!(
                    bytes
                        .windows(section.len())
                        .any(|w| w == section.as_bytes()),
                    "the agent does not embed {section}"
                );
            }
        }
    }
}
