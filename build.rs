//! With the `cuda` feature, compiles the channels-last path's kernels
//! (`src/models/channels_last/kernels.cu`) to PTX in `$OUT_DIR`, where
//! `cuda_kernels.rs` includes them. PTX rather than a cubin, so that newer
//! GPUs JIT-compile it (candle's own kernels ship the same way).
//!
//! Without the feature it does nothing: the CPU build needs no nvcc.
//!
//! Environment: `NVCC` (the compiler, else `nvcc` on `PATH`) and
//! `CUDA_COMPUTE_CAP` (the virtual architecture, e.g. `90` or `8.0`;
//! default 90).

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "src/models/channels_last/kernels.cu";
const PTX: &str = "channels_last_kernels.ptx";

fn main() {
    // Without this line Cargo reruns the script on any change in the
    // package; with it, only when the script (or what is named below)
    // changes.
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");

    let nvcc = env::var_os("NVCC").unwrap_or_else(|| "nvcc".into());
    let arch = compute_arch(env::var("CUDA_COMPUTE_CAP").ok().as_deref());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join(PTX);

    let result = Command::new(&nvcc)
        .arg("--ptx")
        .arg(format!("-arch=compute_{arch}"))
        .args(["-O3", "-std=c++17", "-o"])
        .arg(&out)
        .arg(SOURCE)
        .output();
    let output = match result {
        Ok(o) => o,
        Err(e) => panic!(
            "could not run nvcc ({}) for {SOURCE}: {e}; set NVCC or put nvcc on PATH",
            nvcc.to_string_lossy()
        ),
    };
    if !output.status.success() {
        panic!(
            "nvcc ({}) failed on {SOURCE} ({}):\n{}{}",
            nvcc.to_string_lossy(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `CUDA_COMPUTE_CAP` as nvcc's `compute_XX` suffix: `90`, `9.0`, `sm_90`,
/// `compute_90a` all give `90` (or `90a`); unset or empty gives 90.
fn compute_arch(cap: Option<&str>) -> String {
    let cap = cap.map(str::trim).unwrap_or("");
    let cap = cap
        .trim_start_matches("compute_")
        .trim_start_matches("sm_")
        .replace('.', "");
    if cap.is_empty() {
        return "90".into();
    }
    let digits = cap.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        panic!("CUDA_COMPUTE_CAP={cap:?} is not a compute capability such as 90 or 8.0");
    }
    cap
}
