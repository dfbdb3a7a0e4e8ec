//! Builds the kernel programs (`probe-ebpf`, bin `kubetune-probe`) for the BPF target with the
//! nightly toolchain through `aya-build`, and puts the object at `$OUT_DIR/kubetune-probe`.
//!
//! When that is impossible (no nightly/rust-src/bpf-linker, or `AYA_BUILD_SKIP=1`) the build
//! does not fail: it writes an empty object and records why in `KUBETUNE_PROBE_BUILD_ERROR`;
//! the agent then reports the eBPF tier as unavailable and runs in sock_diag fallback mode.
use std::{env, fs, path::PathBuf};

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../probe-ebpf");
    let root_str = root.to_string_lossy().into_owned();
    println!("cargo:rerun-if-changed={}", root.join("common").display());
    let pkg = aya_build::Package {
        name: "kubetune-probe-ebpf",
        root_dir: &root_str,
        ..Default::default()
    };
    let obj = out_dir.join("kubetune-probe");
    let _ = fs::remove_file(&obj);
    let error = match aya_build::build_ebpf([pkg], aya_build::Toolchain::default()) {
        Ok(()) if obj.exists() => String::new(),
        Ok(()) => "eBPF build skipped (AYA_BUILD_SKIP)".to_string(),
        Err(e) => format!("eBPF build failed: {e:#}"),
    };
    if !error.is_empty() {
        println!("cargo:warning=kubetune-agent: {error}; the agent will run in fallback mode");
        fs::write(&obj, b"").expect("write empty probe object");
    }
    println!(
        "cargo:rustc-env=KUBETUNE_PROBE_BUILD_ERROR={}",
        error.replace('\n', " ")
    );
}
