//! `bench`: throughput of preprocessing, the feed, the model and the scan's
//! whole path on a folder of images, as JSON for `scripts/bench.py` and
//! `scripts/gpu_bench.py`.

use anyhow::{Context as _, Result};

use super::context::open_model;
use crate::cli::BenchArgs;

pub fn run(args: BenchArgs) -> Result<()> {
    let BenchArgs {
        images,
        model,
        batch_size,
        batches,
        rounds,
        threads,
        measure,
    } = args;
    // `--model synthetic --arch A`: generated weights, for devices
    // with no weights at hand (scripts/gpu-check.sh).
    let mut model = model;
    // Removed when the command ends, whatever happens.
    let _weights_dir;
    if model.model == "synthetic" {
        let arch = model
            .arch
            .as_deref()
            .and_then(crate::models::Architecture::find)
            .with_context(|| {
                format!(
                    "--model synthetic needs --arch (one of: {})",
                    crate::models::Architecture::known()
                )
            })?;
        let dir = tempfile::Builder::new()
            .prefix("imagenet-hard-bench-")
            .tempdir()
            .context("creating a temporary folder for the synthetic weights")?;
        let path = crate::models::synthetic::write_for_bench(arch, dir.path())?;
        model.model = path.display().to_string();
        _weights_dir = dir;
    }
    let (resolved, classifier) = open_model(&model)?;
    let files = crate::bench::read_images(&images)?;
    eprintln!(
        "bench: {} images x {} transforms; model {} ({})",
        files.len(),
        crate::zoom::ZoomGrid::paper().len(),
        resolved.name,
        resolved.architecture.name()
    );
    let opts = crate::bench::BenchOptions {
        measure,
        threads: threads
            .map(usize::from)
            .unwrap_or_else(crate::feed::default_threads),
        batch_size,
        batches,
        rounds,
    };
    let report = crate::bench::run(&classifier, &resolved.name, &files, &opts)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
