//! What several commands share: the manifest and its inputs (or the
//! built-in demo), the plan in the run directory, and the model named on
//! the command line.

use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};

use crate::cli::{ManifestArg, ModelArgs};
use crate::demo::{prepare_demo, DEMO_MANIFEST};
use crate::fetch::{
    fetch, lock_path, read_lock, resolve_model, write_lock, Fetched, ResolvedModel,
};
use crate::hub::{Hub, HubConfig};
use crate::manifest::Manifest;
use crate::models::{Classifier, Runtime};
use crate::plan::Plan;
use crate::printer::Printer;
use crate::zoom::{decode_rgb, DecodeLimits, RgbImage, Transform};

/// A manifest with where it came from and how to reach its inputs.
pub(crate) struct Context {
    pub manifest: Manifest,
    /// Shown in messages: the manifest file, or `<built-in demo>`.
    pub label: PathBuf,
    pub lock_file: PathBuf,
    pub manifest_dir: PathBuf,
    pub hub: Hub,
    /// Where the command's words go.
    pub p: Printer,
}

pub(crate) fn load_context(arg: &ManifestArg, p: Printer) -> Result<Context> {
    match &arg.manifest {
        Some(path) => {
            let manifest = Manifest::load(path)?;
            Ok(Context {
                manifest,
                label: path.clone(),
                lock_file: lock_path(path),
                manifest_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
                hub: Hub::new(HubConfig::from_env()),
                p,
            })
        }
        None => {
            let label = PathBuf::from("<built-in demo manifest>");
            let manifest = Manifest::parse(DEMO_MANIFEST, &label)?;
            let run_dir = manifest.run_dir();
            p.note("No manifest given: running the built-in SYNTHETIC demo (generated scenes, a small CNN trained on generated objects).");
            let cfg = prepare_demo(&run_dir, p).context("generating the demo's Hub cache")?;
            p.note(format_args!(
                "Demo inputs generated in the local Hub cache {}",
                cfg.cache_dir.display()
            ));
            manifest.validate(&label)?;
            Ok(Context {
                lock_file: crate::run_dir::RunDir::of(&run_dir).demo_lock(),
                manifest,
                label,
                manifest_dir: PathBuf::from("."),
                hub: Hub::new(cfg),
                p,
            })
        }
    }
}
pub(crate) fn fetch_inputs(ctx: &Context) -> Result<Fetched> {
    let existing = read_lock(&ctx.lock_file)?;
    let fetched = fetch(
        &ctx.manifest,
        &ctx.manifest_dir,
        &ctx.hub,
        existing.as_ref(),
        &ctx.lock_file,
    )?;
    if existing.as_ref() != Some(&fetched.lock) {
        write_lock(&ctx.lock_file, &fetched.lock)?;
        ctx.p
            .note(format_args!("Wrote lock {}", ctx.lock_file.display()));
    } else {
        tracing::info!("inputs match the lock {}", ctx.lock_file.display());
    }
    Ok(fetched)
}
/// Fetch (or verify) inputs and write the plan, keeping the units of the
/// same run already in the run directory; refuse to mix runs.
pub(crate) fn prepare_plan(ctx: &Context, limit: Option<u64>) -> Result<Plan> {
    let fetched = fetch_inputs(ctx)?;
    let mut fresh = Plan::new(&ctx.manifest, &fetched, limit);
    let old = Plan::read(&fresh.run_dir).ok();
    if fresh.scan_mode == crate::manifest::ScanMode::Curate {
        match old.as_ref().and_then(|o| o.curate.as_ref()) {
            Some(kept) => ctx.p.note(format_args!(
                "Curate order: the run's own, learned from {}",
                kept.learned_from
            )),
            None => fresh.curate = Some(curate_order(ctx, &fresh)?),
        }
    }
    let plan = fresh
        .settle(old.as_ref())
        .with_context(|| format!("the manifest {}", ctx.label.display()))?;
    plan.write()
        .with_context(|| format!("writing {}", Plan::path(&plan.run_dir).display()))?;
    tracing::info!(
        "plan: {} sources, {} models, {} transforms per image, {} units, run dir {}",
        plan.sources.len(),
        plan.models.len(),
        plan.grid.len(),
        plan.units.len(),
        plan.run_dir.display()
    );
    Ok(plan)
}

/// Sample outcomes from earlier runs (`dirs`, relative to the current
/// directory or absolute) over `models` and `grid`, with a line per run
/// saying where they came from.
pub(crate) fn load_samples(
    dirs: &[PathBuf],
    models: &[String],
    grid: &crate::zoom::ZoomGrid,
) -> Result<(Vec<crate::pair_order::Outcome>, Vec<String>)> {
    let mut samples = Vec::new();
    let mut from = Vec::new();
    for dir in dirs {
        let s = crate::scan::sample_outcomes(dir, models, grid)
            .with_context(|| format!("sample run {}", dir.display()))?;
        from.push(format!("{} ({} images)", dir.display(), s.len()));
        samples.extend(s);
    }
    Ok((samples, from))
}

/// `scan.curate_from`, relative to the manifest.
pub fn curate_from(ctx: &Context) -> Vec<PathBuf> {
    ctx.manifest
        .scan
        .curate_from
        .iter()
        .map(|d| ctx.manifest_dir.join(d))
        .collect()
}

/// A curate scan's order, learned from the records of `scan.curate_from`
/// and the models' costs.
fn curate_order(ctx: &Context, plan: &Plan) -> Result<crate::pair_order::CurateOrder> {
    let (samples, from) = load_samples(&curate_from(ctx), &plan.model_names(), &plan.grid)
        .context("scan.curate_from")?;
    let fallback = crate::analysis::first_hit_order(&plan.grid);
    let pairs = crate::pair_order::order(&samples, &plan.model_gmacs(), &fallback);
    let learned_from = if from.is_empty() {
        "no sample (scan.curate_from is empty): transforms in first-hit order, cheaper models first"
            .into()
    } else {
        from.join(", ")
    };
    ctx.p.note(format_args!(
        "Curate order: {} pairs, learned from {learned_from}",
        pairs.len()
    ));
    Ok(crate::pair_order::CurateOrder {
        pairs,
        learned_from,
        sample_images: samples.len(),
    })
}

/// `--dry-run`: the plan as text on stdout, from the manifest and its lock
/// (if any); no network, no downloads.
pub(crate) fn print_dry_run(ctx: &Context, limit: Option<u64>) -> Result<()> {
    let lock = read_lock(&ctx.lock_file)?;
    ctx.p.result(format_args!(
        "{}",
        crate::plan::dry_run_text(&ctx.manifest, &ctx.label, lock.as_ref(), limit)
    ));
    Ok(())
}
/// The plan a previous `plan`, `scan` or `build` wrote.
pub(crate) fn read_plan(ctx: &Context) -> Result<Plan> {
    let run_dir = ctx.manifest.run_dir();
    let plan = Plan::read(&run_dir).with_context(|| {
        format!(
            "no plan in {}: run `imagenet-hard plan` (or `scan`) first",
            run_dir.display()
        )
    })?;
    if plan.units.is_empty() {
        bail!(
            "{} has no work units (written by an older version?): run `imagenet-hard plan` again",
            Plan::path(&run_dir).display()
        );
    }
    Ok(plan)
}
/// The model `--model` names (fetched or from the cache) and the device to run it on.
pub(crate) fn resolve_model_args(args: &ModelArgs) -> Result<(ResolvedModel, Runtime)> {
    let hub = Hub::new(HubConfig::from_env());
    let resolved = resolve_model(&args.model, args.arch.as_deref(), &args.revision, &hub)?;
    Ok((
        resolved,
        Runtime::new(args.device)?
            .with_precision(args.dtype)?
            .with_kernels(args.kernels)?,
    ))
}
pub(crate) fn open_model(args: &ModelArgs) -> Result<(ResolvedModel, Classifier)> {
    let (resolved, rt) = resolve_model_args(args)?;
    let model = Classifier::load(
        resolved.architecture,
        &resolved.weights,
        &resolved.extras,
        &rt,
    )?;
    Ok((resolved, model))
}
pub(crate) fn read_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode_rgb(&bytes, DecodeLimits::default())
        .with_context(|| format!("{}: not a usable JPEG or PNG image", path.display()))
}
pub(crate) fn parse_transform(name: &str) -> Result<Transform> {
    let t: Transform = name.parse()?;
    if t.row > 2 || t.col > 2 || t.scale == 0 {
        bail!("transform `{name}`: row and column go from 0 to 2 and the scale must be above 0");
    }
    Ok(t)
}
