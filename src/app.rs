//! The commands: each wires stages together and reports to the user.
//! Data (tables, JSON) goes to stdout; progress and paths to stderr.

use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};

use crate::cli::{Command, EvalArgs, ManifestArg, ModelArgs};
use crate::demo::{prepare_demo, DEMO_MANIFEST};
use crate::fetch::{
    fetch, lock_path, read_lock, resolve_model, write_lock, Fetched, ResolvedModel,
};
use crate::hub::{Hub, HubConfig};
use crate::manifest::Manifest;
use crate::models::adapt::MemoStep;
use crate::models::{Classifier, Runtime};
use crate::plan::Plan;
use crate::zoom::{center_view, decode_rgb, normalise_chw, zoom_view, DecodeLimits, Transform};

/// A manifest with where it came from and how to reach its inputs.
struct Context {
    manifest: Manifest,
    /// Shown in messages: the manifest file, or `<built-in demo>`.
    label: PathBuf,
    lock_file: PathBuf,
    manifest_dir: PathBuf,
    hub: Hub,
}

fn load_context(arg: &ManifestArg) -> Result<Context> {
    match &arg.manifest {
        Some(path) => {
            let manifest = Manifest::load(path)?;
            Ok(Context {
                manifest,
                label: path.clone(),
                lock_file: lock_path(path),
                manifest_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
                hub: Hub::new(HubConfig::from_env()),
            })
        }
        None => {
            let label = PathBuf::from("<built-in demo manifest>");
            let manifest = Manifest::parse(DEMO_MANIFEST, &label)?;
            let run_dir = manifest.run_dir();
            eprintln!("No manifest given: running the built-in SYNTHETIC demo (generated images, random-weight ResNet-18).");
            let cfg = prepare_demo(&run_dir).context("generating the demo's Hub cache")?;
            eprintln!(
                "Demo inputs generated in the local Hub cache {}",
                cfg.cache_dir.display()
            );
            manifest.validate(&label)?;
            Ok(Context {
                lock_file: run_dir.join("demo.lock"),
                manifest,
                label,
                manifest_dir: PathBuf::from("."),
                hub: Hub::new(cfg),
            })
        }
    }
}

fn do_fetch(ctx: &Context) -> Result<Fetched> {
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
        eprintln!("Wrote lock {}", ctx.lock_file.display());
    } else {
        tracing::info!("inputs match the lock {}", ctx.lock_file.display());
    }
    Ok(fetched)
}

/// Fetch (or verify) inputs and write the plan; refuse to mix runs.
fn prepare_plan(ctx: &Context, limit: Option<u64>) -> Result<Plan> {
    let fetched = do_fetch(ctx)?;
    let mut plan = Plan::new(&ctx.manifest, &fetched, limit);
    let old = Plan::read(&plan.run_dir).ok();
    if let Some(old) = &old {
        if old.same_run_as(&plan) && !old.units.is_empty() {
            // Same inputs and settings: keep the counted rows and the units,
            // so finished units stay valid.
            plan.units = old.units.clone();
            for (s, o) in plan.sources.iter_mut().zip(&old.sources) {
                s.total_rows = o.total_rows;
            }
        }
    }
    if plan.units.is_empty() {
        plan = plan.with_units()?;
    }
    if let Some(old) = &old {
        if !old.same_run_as(&plan) {
            bail!(
                "{} holds a run of a different plan (inputs, grid, models or limits changed since); \
                 its scan records would not match. Set another build.output_dir in {} or delete {}",
                plan.run_dir.display(),
                ctx.label.display(),
                plan.run_dir.display()
            );
        }
    }
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

/// `--dry-run`: the plan as text on stdout, from the manifest and its lock
/// (if any); no network, no downloads.
fn print_dry_run(ctx: &Context, limit: Option<u64>) -> Result<()> {
    let lock = read_lock(&ctx.lock_file)?;
    print!(
        "{}",
        crate::plan::dry_run_text(&ctx.manifest, &ctx.label, lock.as_ref(), limit)
    );
    Ok(())
}

/// The plan a previous `plan`, `scan` or `build` wrote.
fn read_plan(ctx: &Context) -> Result<Plan> {
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

/// Scan units `ids` of the plan. `build` waits for units other workers
/// hold (it merges next); a `scan` worker leaves them to their holders.
fn run_scan(plan: &Plan, args: &crate::cli::RunArgs, ids: &[usize], wait: bool) -> Result<()> {
    let threads = args.threads();
    let rt = Runtime::new(args.device)?
        .with_precision(plan.scan_dtype)
        .with_context(|| format!("scan.dtype = \"{}\" in the manifest", plan.scan_dtype))?;
    eprintln!(
        "Scanning on {} ({}, {threads} preprocessing threads): {} of {} unit(s), {} model(s) x {} transforms per image",
        rt.describe(),
        rt.precision(),
        ids.len(),
        plan.units.len(),
        plan.models.len(),
        plan.grid.len()
    );
    let opts = crate::scan::ScanOptions {
        threads,
        claims: args.claim_times()?,
        wait_for_others: wait,
        progress_every: args.progress_every()?,
    };
    let summary = crate::scan::scan(plan, &rt, ids, &opts)?;
    for (s, fresh) in summary.units {
        let unit = s
            .units
            .first()
            .map(|u| format!("u{u:05}"))
            .unwrap_or_default();
        if !fresh {
            eprintln!("  {unit} {}: already done, records kept", s.origin);
            continue;
        }
        let skipped: u64 = s.skipped.values().sum();
        eprintln!(
            "  {unit} {}: {} images scanned, {} skipped {:?}, {} crops in {:.1}s",
            s.origin, s.images_scanned, skipped, s.skipped, s.forward_passes, s.seconds
        );
    }
    if !summary.busy.is_empty() {
        eprintln!(
            "{} unit(s) left to the workers holding them; `imagenet-hard status` shows them",
            summary.busy.len()
        );
    }
    Ok(())
}

/// Select, export and report; refuses while units are missing.
fn run_merge(plan: &Plan) -> Result<()> {
    let selection = run_select(plan, &plan.selection, None)?;
    run_export(plan, &selection)?;
    run_report(plan, &selection)?;
    Ok(())
}

/// Units done and the time left, as measured on the finished units.
fn progress_line(p: &crate::cost::RunProjection) -> String {
    use crate::cost::duration;
    format!(
        "{} of {} units done in {} of scanning; {}",
        p.units_done,
        p.units,
        duration(p.seconds_spent),
        match p.seconds_left {
            Some(s) if p.units_done < p.units => format!(
                "about {} left on one worker at the finished units' pace",
                duration(s)
            ),
            Some(_) => "nothing left".into(),
            None => "no estimate yet: some model group has no finished unit".into(),
        }
    )
}

/// A unit's id, origin and row run, tab-separated.
fn unit_cells(u: &crate::units::Unit) -> String {
    format!("{}\t{}\t{}..{}", u.name(), u.origin, u.first, u.end)
}

/// A unit's model names, comma-separated.
fn unit_models(plan: &Plan, u: &crate::units::Unit) -> String {
    u.models
        .iter()
        .map(|&m| plan.models[m].name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn print_status(plan: &Plan) {
    use crate::cost::duration;
    use crate::scan::{unit_state, UnitState};
    let (mut done, mut running, mut pending, mut failed) = (0, 0, 0, 0);
    println!("unit\torigin\trows\tmodels\tstate");
    for u in &plan.units {
        let state = match unit_state(&plan.run_dir, u) {
            UnitState::Done => {
                done += 1;
                match crate::util::read_json::<crate::scan::ScanStats>(
                    &crate::scan::unit_stats_path(&plan.run_dir, u),
                ) {
                    Ok(s) if s.seconds > 0.0 => format!(
                        "done in {} ({:.0} crops/s)",
                        duration(s.seconds),
                        s.forward_passes as f64 / s.seconds
                    ),
                    _ => "done".into(),
                }
            }
            UnitState::Running {
                owner,
                elapsed,
                heartbeat_age,
            } => {
                running += 1;
                format!(
                    "running on {owner} for {} (heartbeat {} ago)",
                    elapsed
                        .map(|e| duration(e.as_secs_f64()))
                        .unwrap_or("?".into()),
                    duration(heartbeat_age.as_secs_f64())
                )
            }
            UnitState::Pending { stale_claim } => {
                pending += 1;
                match stale_claim {
                    Some(owner) => format!(
                        "pending (claimed by {owner}, which stopped: the next worker takes it over)"
                    ),
                    None => "pending".into(),
                }
            }
            UnitState::Failed { error } => {
                failed += 1;
                format!("failed: {}", error.trim())
            }
        };
        println!("{}\t{}\t{state}", unit_cells(u), unit_models(plan, u));
    }
    println!(
        "{} units: {done} done, {running} running, {pending} pending, {failed} failed",
        plan.units.len()
    );
    let progress = crate::cost::project_run(&crate::scan::unit_progress(plan));
    if progress.units_done > 0 {
        println!("{}", progress_line(&progress));
    }
}

fn run_select(
    plan: &Plan,
    rule: &crate::manifest::SelectionRule,
    relabel: Option<&crate::select::Relabel>,
) -> Result<crate::select::Selection> {
    let selection = crate::select::select(plan, rule, relabel)?;
    selection.write(&plan.run_dir)?;
    print!("{}", selection.bounds_table());
    Ok(selection)
}

fn run_report(plan: &Plan, selection: &crate::select::Selection) -> Result<()> {
    let written = crate::report::report(plan, selection)?;
    eprintln!(
        "Report: {} ({} files)",
        written.dir.join("report.md").display(),
        written.files.len()
    );
    Ok(())
}

fn run_export(plan: &Plan, selection: &crate::select::Selection) -> Result<()> {
    let stats = crate::scan::read_stats(plan)?;
    let summary = crate::export::export(plan, selection, &stats)?;
    eprintln!(
        "Exported {} hard image(s) in {} shard(s) to {}",
        summary.rows,
        summary.shards.len(),
        summary.dir.join("data").display()
    );
    eprintln!("Dataset card: {}", summary.dir.join("README.md").display());
    Ok(())
}

/// The model `--model` names (fetched or from the cache) and the device to run it on.
fn resolve_model_args(args: &ModelArgs) -> Result<(ResolvedModel, Runtime)> {
    let hub = Hub::new(HubConfig::from_env());
    let resolved = resolve_model(&args.model, args.arch.as_deref(), &args.revision, &hub)?;
    Ok((
        resolved,
        Runtime::new(args.device)?.with_precision(args.dtype)?,
    ))
}

fn open_model(args: &ModelArgs) -> Result<(ResolvedModel, Classifier)> {
    let (resolved, rt) = resolve_model_args(args)?;
    let model = Classifier::load(
        resolved.architecture,
        &resolved.weights,
        &resolved.extras,
        &rt,
    )?;
    Ok((resolved, model))
}

fn read_image(path: &Path) -> Result<crate::zoom::RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    decode_rgb(&bytes, DecodeLimits::default())
        .with_context(|| format!("{}: not a usable JPEG or PNG image", path.display()))
}

fn parse_transform(name: &str) -> Result<Transform> {
    let t: Transform = name.parse()?;
    if t.row > 2 || t.col > 2 || t.scale == 0 {
        bail!("transform `{name}`: row and column go from 0 to 2 and the scale must be above 0");
    }
    Ok(t)
}

/// `eval`: score a model (or, with --merge, print a leaderboard).
fn run_eval(args: EvalArgs) -> Result<()> {
    use crate::eval::{dataset, results, EvalOptions};
    if !args.merge.is_empty() {
        print!("{}", results::merge(&args.merge)?);
        return Ok(());
    }
    if !args.compare.is_empty() {
        print!("{}", results::compare(&args.compare)?);
        return Ok(());
    }
    let (Some(data), Some(model)) = (args.dataset, args.model) else {
        bail!("eval needs DATASET and --model (or --merge / --compare FILE...)");
    };
    let hub = Hub::new(HubConfig::from_env());
    let shards = dataset::resolve(&data, &hub, &args.dataset_revision)?;
    if !shards.stale.is_empty() {
        let stale: Vec<String> = shards.stale.iter().map(|c| format!("-of-{c:05}")).collect();
        eprintln!(
            "{}: using the -of-{:05} shard family ({} rows, as the card's num_examples); {} left unread as stale",
            shards.dataset,
            shards.family,
            shards.rows.unwrap_or(0),
            stale.join(", ")
        );
    }
    if let Some(commit) = &shards.revision {
        eprintln!("Dataset {}@{commit}", shards.dataset);
    }
    let opts = EvalOptions {
        tta: args.tta,
        aggregate: args.aggregate.unwrap_or_default(),
        batch_size: args.batch_size.max(1),
        limit: args.limit,
        subset_by_origin: args.subset_by_origin,
    };
    if args.views == 0 {
        bail!("--views must be at least 1");
    }
    // MEMO adapts a ResNet per image; everything else runs the inference model.
    enum Loaded {
        Fixed(Classifier),
        Memo(crate::models::adapt::AdaptResNet),
    }
    let (resolved, loaded) = if args.tta.is_memo() {
        let (resolved, rt) = resolve_model_args(&model)?;
        let arch = resolved.architecture.name();
        if rt.precision() != crate::models::Precision::F32 {
            bail!(
                "--tta {} adapts the weights in f32 (in {} a step of 2.5e-4 would round away): drop --dtype {}",
                args.tta.name(),
                rt.precision(),
                rt.precision()
            );
        }
        if crate::models::adapt::layout(arch).is_none() {
            bail!(
                "--tta {}: MEMO adapts BatchNorm ResNets (resnet18, resnet50); {} is {arch}",
                args.tta.name(),
                resolved.name
            );
        }
        let net = crate::models::adapt::AdaptResNet::load(
            arch,
            &resolved.weights,
            rt.device(),
            candle_core::DType::F32,
        )?;
        (resolved, Loaded::Memo(net))
    } else {
        let (resolved, classifier) = open_model(&model)?;
        (resolved, Loaded::Fixed(classifier))
    };
    let predictor = match &loaded {
        Loaded::Fixed(c) => crate::eval::Predictor::Fixed(c),
        Loaded::Memo(net) => crate::eval::Predictor::Memo {
            net,
            config: crate::eval::MemoConfig {
                views: args.views,
                seed: args.seed,
                prior_strength: MemoStep::PAPER.prior_strength,
                lr: MemoStep::PAPER.lr,
            },
        },
    };
    let mut per_sample = args
        .per_sample
        .as_deref()
        .map(results::PerSampleWriter::create)
        .transpose()?;
    let report = crate::eval::evaluate(
        predictor,
        &resolved.name,
        &resolved.provenance,
        resolved.eval,
        &shards,
        &opts,
        per_sample.as_mut(),
    )?;
    print!("{}", report.table());
    if let (Some(w), Some(path)) = (per_sample, &args.per_sample) {
        w.finish()?;
        eprintln!("Wrote {}", path.display());
    }
    if let Some(path) = args.json {
        crate::util::write_json(&path, &report)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("Wrote {}", path.display());
    }
    if let Some(path) = args.csv {
        results::append_csv(&path, &report)?;
        eprintln!("Appended a row to {}", path.display());
    }
    Ok(())
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Build(args) => {
            let ctx = load_context(&args.manifest)?;
            if args.dry_run {
                return print_dry_run(&ctx, args.limit);
            }
            let plan = prepare_plan(&ctx, args.limit)?;
            let all: Vec<usize> = (0..plan.units.len()).collect();
            run_scan(&plan, &args, &all, true)?;
            run_merge(&plan)?;
            eprintln!(
                "Run directory: {} (plan.json, scan/, select/, dataset/, report/)",
                plan.run_dir.display()
            );
        }
        Command::Fetch(arg) => {
            let ctx = load_context(&arg)?;
            let fetched = do_fetch(&ctx)?;
            for repo in &fetched.lock.repos {
                for f in &repo.files {
                    println!(
                        "{}\t{}@{}\t{}\t{}",
                        f.sha256, repo.id, repo.commit, f.path, f.size
                    );
                }
            }
        }
        Command::Scan(args) => {
            let ctx = load_context(&args.run.manifest)?;
            if args.run.dry_run {
                return print_dry_run(&ctx, args.run.limit);
            }
            let assignment = crate::units::Assignment::resolve(
                args.unit,
                args.shard_index,
                args.num_shards,
                |k| std::env::var(k).ok(),
            )?;
            if assignment == crate::units::Assignment::All {
                let plan = prepare_plan(&ctx, args.run.limit)?;
                let all: Vec<usize> = (0..plan.units.len()).collect();
                run_scan(&plan, &args.run, &all, false)?;
            } else {
                // A worker of a fanned-out scan: the plan is made once, up front.
                let plan = read_plan(&ctx)?;
                if plan.units.is_empty() {
                    bail!(
                        "{} has no units: run `imagenet-hard plan` first",
                        Plan::path(&plan.run_dir).display()
                    );
                }
                let ids = assignment.pick(plan.units.len())?;
                run_scan(&plan, &args.run, &ids, false)?;
            }
        }
        Command::Plan(args) => {
            let rates = crate::cost::rates_from_bench(&args.rates)?;
            let run = args.run;
            let ctx = load_context(&run.manifest)?;
            if run.dry_run {
                print_dry_run(&ctx, run.limit)?;
                let costs = crate::plan::dry_run_cost(&ctx.manifest, run.limit, &rates);
                println!("\ncost (rows from the manifest's `rows`)");
                print!(
                    "{}",
                    crate::cost::table(
                        &costs,
                        ctx.manifest.scan.mode != crate::manifest::ScanMode::Exhaustive
                    )
                );
                return Ok(());
            }
            let plan = prepare_plan(&ctx, run.limit)?;
            println!("unit\torigin\trows\timages\tmodels");
            for u in &plan.units {
                println!(
                    "{}\t{}\t{}",
                    unit_cells(u),
                    u.images(),
                    unit_models(&plan, u)
                );
            }
            eprintln!(
                "{} units written to {}; run them with `imagenet-hard scan --unit K` or a job array (scripts/slurm/)",
                plan.units.len(),
                Plan::path(&plan.run_dir).display()
            );
            let bound = plan.scan_mode != crate::manifest::ScanMode::Exhaustive;
            eprint!("\n{}", crate::cost::table(&plan.cost(&rates), bound));
            let progress = crate::cost::project_run(&crate::scan::unit_progress(&plan));
            if progress.units_done > 0 {
                eprintln!("{}", progress_line(&progress));
            }
        }
        Command::Status(arg) => {
            let ctx = load_context(&arg)?;
            let plan = read_plan(&ctx)?;
            print_status(&plan);
        }
        Command::Merge(arg) => {
            let ctx = load_context(&arg)?;
            let plan = read_plan(&ctx)?;
            run_merge(&plan)?;
        }
        Command::Select(args) => {
            let ctx = load_context(&args.manifest)?;
            let plan = read_plan(&ctx)?;
            let relabel = match &args.labels {
                Some(file) => Some(crate::select::Relabel::read(file)?),
                None => None,
            };
            let rule = args.rule.as_ref().unwrap_or(&plan.selection);
            let selection = run_select(&plan, rule, relabel.as_ref())?;
            if let Some(r) = &selection.relabel {
                eprintln!(
                    "Labels from {}: {} images relabelled, {} dropped",
                    r.file, r.relabelled, r.dropped
                );
            }
            run_report(&plan, &selection)?;
            eprintln!("Run `imagenet-hard export` to write the new hard set.");
        }
        Command::Report(arg) => {
            let ctx = load_context(&arg)?;
            let plan = read_plan(&ctx)?;
            let selection = crate::select::Selection::read(&plan.run_dir)?;
            run_report(&plan, &selection)?;
        }
        Command::Export(arg) => {
            let ctx = load_context(&arg)?;
            let plan = read_plan(&ctx)?;
            let selection = crate::select::Selection::read(&plan.run_dir)?;
            run_export(&plan, &selection)?;
        }
        Command::Eval(args) => run_eval(args)?,
        Command::Predict {
            image,
            model,
            transform,
            top,
            json,
        } => {
            let (resolved, classifier) = open_model(&model)?;
            let img = read_image(&image)?;
            let (view, view_name) = match transform {
                Some(name) => {
                    let t = parse_transform(&name)?;
                    (zoom_view(&img, t, 3, 224, 0), t.to_string())
                }
                None => {
                    let e = resolved.eval;
                    (
                        center_view(&img, e.resize, e.crop, e.interpolation),
                        format!("resize {} / centre crop {}", e.resize, e.crop),
                    )
                }
            };
            let mut input = vec![0f32; 3 * view.width as usize * view.height as usize];
            normalise_chw(&view, resolved.eval.mean, resolved.eval.std, &mut input);
            let logits = classifier.logits(&input, 1, view.width as usize)?;
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let denom: f32 = logits.iter().map(|l| (l - max).exp()).sum();
            let classes = crate::labels::classes();
            let best: Vec<serde_json::Value> = crate::labels::top_k(&logits, top.max(1))
                .into_iter()
                .map(|i| {
                    serde_json::json!({
                        "index": i,
                        "wnid": classes[i].wnid,
                        "name": classes[i].name,
                        "probability": (logits[i] - max).exp() / denom,
                        "logit": logits[i],
                    })
                })
                .collect();
            if json {
                let out = serde_json::json!({
                    "image": image.display().to_string(),
                    "model": resolved.name,
                    "weights": resolved.provenance,
                    "view": view_name,
                    "top": best,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                eprintln!("{} on {} ({})", resolved.name, image.display(), view_name);
                println!("rank\tindex\tprob\tname");
                for (rank, b) in best.iter().enumerate() {
                    println!(
                        "{}\t{}\t{:.4}\t{}",
                        rank + 1,
                        b["index"],
                        b["probability"].as_f64().unwrap_or(0.0),
                        b["name"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Command::Bench {
            images,
            model,
            batch_size,
            batches,
            rounds,
            threads,
            measure,
        } => {
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
                let file = format!("synthetic-{}.safetensors", arch.name());
                let path = if arch.spec().extra_files.contains(&"tokenizer.json") {
                    // CLIP: ViT-L/14's image tower, a small text tower and
                    // tokenizer beside it to make the zero-shot head from.
                    crate::models::synthetic::write_clip_for_bench(
                        dir.path(),
                        &file,
                        1,
                        &crate::models::clip::vit_large_patch14().vision_config,
                    )?
                } else {
                    let path = dir.path().join(&file);
                    crate::models::synthetic::write_weights(
                        arch,
                        1,
                        crate::models::synthetic::Head::Random,
                        &path,
                    )?;
                    path
                };
                model.model = path.display().to_string();
                _weights_dir = dir;
            }
            let (resolved, classifier) = open_model(&model)?;
            let grid = crate::zoom::ZoomGrid::paper();
            let files = crate::bench::read_images(&images)?;
            eprintln!(
                "bench: {} images x {} transforms; model {} ({})",
                files.len(),
                grid.len(),
                resolved.name,
                resolved.architecture.name()
            );
            let threads = threads
                .map(usize::from)
                .unwrap_or_else(crate::feed::default_threads);
            use crate::bench::{self as b, Measure};
            let on = |m: Measure| measure.contains(&m);
            let pre = if on(Measure::Preprocessing) {
                Some(b::preprocessing(&files, &grid, rounds)?)
            } else {
                None
            };
            let (feed_one, feed) = if on(Measure::Feed) {
                (
                    Some(b::feed_only(&files, &grid, 1, batch_size, rounds)?),
                    Some(b::feed_only(&files, &grid, threads, batch_size, rounds)?),
                )
            } else {
                (None, None)
            };
            let crop = grid.crop_size as usize;
            let fwd = if on(Measure::Model) {
                Some(b::model_only(
                    &classifier,
                    batch_size,
                    crop,
                    batches,
                    rounds,
                )?)
            } else {
                None
            };
            let e2e = if on(Measure::EndToEnd) {
                Some(b::end_to_end(
                    &classifier,
                    &files,
                    &grid,
                    threads,
                    batch_size,
                    rounds,
                )?)
            } else {
                None
            };
            let scaling = match (&feed, &feed_one) {
                (Some(n), Some(one)) => Some(n.crops_per_s / one.crops_per_s.max(1e-12)),
                _ => None,
            };
            let out = serde_json::json!({
                "tool_version": env!("CARGO_PKG_VERSION"),
                "model": resolved.name,
                "architecture": resolved.architecture.name(),
                "batch_size": batch_size,
                "dtype": classifier.precision(),
                "device": classifier.device_name(),
                "threads": threads,
                "preprocessing": pre,
                "feed_1_thread": feed_one,
                "feed": feed,
                "feed_scaling": scaling,
                "model_only": fwd,
                "end_to_end": e2e,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Command::Models { json } => {
            let entries = crate::models::registry();
            if json {
                let rows: Vec<serde_json::Value> = entries
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "name": e.name,
                            "architecture": e.architecture.name(),
                            "source": e.source.to_string(),
                            "eval": e.eval,
                        })
                    })
                    .collect();
                let archs: Vec<serde_json::Value> = crate::models::Architecture::all()
                    .map(|a| serde_json::json!({"name": a.name(), "config_names": a.spec().config_names}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"models": rows, "architectures": archs})
                    )?
                );
            } else {
                println!("name\tarchitecture\tview\tsource");
                for e in &entries {
                    let v = e.eval;
                    println!(
                        "{}\t{}\t{}/{} {:?}\t{}",
                        e.name,
                        e.architecture.name(),
                        v.resize,
                        v.crop,
                        v.interpolation,
                        e.source
                    );
                }
                println!("\narchitecture\thub config names");
                for a in crate::models::Architecture::all() {
                    println!("{}\t{}", a.name(), a.spec().config_names.join(", "));
                }
            }
        }
        Command::Zoom {
            image,
            transform,
            output,
            crop_size,
        } => {
            let t = parse_transform(&transform)?;
            let img = read_image(&image)?;
            let view = zoom_view(&img, t, 3, crop_size.max(1), 0);
            let buffer = image::RgbImage::from_raw(view.width, view.height, view.data)
                .context("crop buffer has the wrong size")?;
            buffer
                .save_with_format(&output, image::ImageFormat::Png)
                .with_context(|| format!("writing {}", output.display()))?;
            eprintln!(
                "Wrote {} ({t} of {}, {}x{})",
                output.display(),
                image.display(),
                img.width,
                img.height
            );
        }
    }
    Ok(())
}
