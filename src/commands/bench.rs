//! `bench`: throughput of preprocessing, the feed, the model and the scan's
//! whole path on a folder of images, as JSON for `scripts/bench.py` and
//! `scripts/gpu_bench.py`.

use anyhow::{Context as _, Result};

use super::context::open_model;
use crate::cli::BenchArgs;
use crate::models::{Classifier, DeviceChoice, Kernels, Runtime};
use crate::printer::Printer;

pub fn run(args: BenchArgs, p: Printer) -> Result<()> {
    let BenchArgs {
        images,
        model,
        batch_size,
        batches,
        rounds,
        threads,
        measure,
        parity,
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
    p.note(format_args!(
        "bench: {} images x {} transforms; model {} ({})",
        files.len(),
        crate::zoom::ZoomGrid::paper().len(),
        resolved.name,
        resolved.architecture.name()
    ));
    let opts = crate::bench::BenchOptions {
        measure,
        threads: threads
            .map(usize::from)
            .unwrap_or_else(crate::feed::default_threads),
        batch_size,
        batches,
        rounds,
    };
    let mut report = crate::bench::run(&classifier, &resolved.name, &files, &opts)?;
    if parity {
        // The same weights with candle's kernels: on the CPU in f32, and on
        // this device when the model runs on the cuDNN path.
        let load = |rt: Runtime| {
            Classifier::load(
                resolved.architecture,
                &resolved.weights,
                &resolved.extras,
                &rt.with_kernels(Kernels::Candle)?,
            )
        };
        let cpu = load(Runtime::new(DeviceChoice::Cpu)?)?;
        let candle = if classifier.channels_last() {
            Some(load(
                Runtime::new(model.device)?.with_precision(model.dtype)?,
            )?)
        } else {
            None
        };
        report.parity = Some(crate::bench::parity(
            &classifier,
            &cpu,
            candle.as_ref(),
            batch_size.min(16),
        )?);
    }
    p.json(&report)?;
    Ok(())
}
