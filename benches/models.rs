//! CPU (or CUDA) throughput of every architecture: crops/s of a forward pass
//! on batches of 224x224 crops, with generated weights.
//!
//!   cargo bench --bench models [-- NAME ...]       (BATCH, ROUNDS env vars)
//!
//! Prints one line per architecture; no assertion (a benchmark, not a test).
//! On a CUDA device it also prints how far the GPU logits are from the CPU's
//! for the same weights and input (max |gpu - cpu| / max |cpu|).

// As the binary (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use imagenet_hard::models::synthetic::{input, write_weights, Head};
use imagenet_hard::models::{Architecture, Classifier, DeviceChoice, Extras, Runtime};
use std::time::Instant;

fn main() {
    imagenet_hard::util::keep_freed_memory();
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let batch: usize = std::env::var("BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let rt = Runtime::new(DeviceChoice::Auto).expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    println!("device {} batch {batch} rounds {rounds}", rt.describe());
    let cpu = Runtime::new(DeviceChoice::Cpu).expect("cpu runtime");
    let on_gpu = rt.describe() != "cpu";
    println!(
        "architecture\tcrops/s\tms/batch{}",
        if on_gpu { "\tgpu-vs-cpu" } else { "" }
    );
    for arch in Architecture::all() {
        if !arch.spec().extra_files.is_empty()
            || (!filter.is_empty() && !filter.iter().any(|f| f == arch.name()))
        {
            continue;
        }
        let weights = dir.path().join(format!("{}.safetensors", arch.name()));
        write_weights(arch, 1, Head::Random, &weights).expect("weights");
        let model = Classifier::load(arch, &weights, &Extras::default(), &rt).expect("load");
        let x = input(2, batch * 3 * 224 * 224);
        model.logits(&x, batch, 224).expect("warm-up");
        let start = Instant::now();
        for _ in 0..rounds {
            model.logits(&x, batch, 224).expect("forward");
        }
        let secs = start.elapsed().as_secs_f64() / rounds as f64;
        let mut line = format!(
            "{}\t{:.1}\t{:.0}",
            arch.name(),
            batch as f64 / secs,
            secs * 1000.0
        );
        if on_gpu {
            let ours = model
                .logits(&x[..2 * 3 * 224 * 224], 2, 224)
                .expect("gpu forward");
            let reference = Classifier::load(arch, &weights, &Extras::default(), &cpu)
                .and_then(|m| m.logits(&x[..2 * 3 * 224 * 224], 2, 224))
                .expect("cpu forward");
            let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = ours
                .iter()
                .zip(&reference)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            line.push_str(&format!("\t{:.1e}", diff / scale));
        }
        println!("{line}");
        std::fs::remove_file(&weights).ok();
    }
}
