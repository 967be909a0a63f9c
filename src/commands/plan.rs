//! `plan`: fetch the inputs, count the rows, cut the scan into work units;
//! prints the units (stdout) and the cost (stderr): forward passes per
//! model and, with `--rates`, GPU-hours. `--dry-run` prints the plan and
//! its cost from the manifest alone. Both compare the scan modes:
//! exhaustive exactly, first-hit and curate as expected from the outcomes
//! of a sample of earlier runs' images.

use anyhow::Result;

use super::context::{
    curate_from, load_context, load_samples, prepare_plan, print_dry_run, Context,
};
use super::shared::{progress_line, unit_cells, unit_models};
use crate::cli::PlanArgs;
use crate::plan::Plan;
use crate::printer::Printer;

pub fn run(args: PlanArgs, p: Printer) -> Result<()> {
    let rates = crate::cost::rates_from_bench(&args.rates)?;
    let run = args.run;
    let ctx = load_context(&run.manifest, p)?;
    if run.dry_run {
        print_dry_run(&ctx, run.limit)?;
        let costs = crate::plan::dry_run_cost(&ctx.manifest, run.limit, &rates);
        p.result_line("\ncost (rows from the manifest's `rows`)");
        p.result(format_args!(
            "{}",
            crate::cost::table(
                &costs,
                ctx.manifest.scan.mode != crate::manifest::ScanMode::Exhaustive
            )
        ));
        let images: Option<u64> = costs
            .first()
            .and_then(|c| c.passes)
            .map(|p| p / ctx.manifest.zoom.grid().len().max(1) as u64);
        p.result_line(format_args!(
            "\n{}",
            modes(&ctx, &args.sample, images, &rates)?
        ));
        return Ok(());
    }
    let plan = prepare_plan(&ctx, run.limit)?;
    p.result_line("unit\torigin\trows\timages\tmodels");
    for u in &plan.units {
        p.result_line(format_args!(
            "{}\t{}\t{}",
            unit_cells(u),
            u.images(),
            unit_models(&plan, u)
        ));
    }
    p.note(format_args!(
        "{} units written to {}; run them with `imagenet-hard scan --unit K` or a job array (scripts/slurm/)",
        plan.units.len(),
        Plan::path(&plan.run_dir).display()
    ));
    let bound = plan.scan_mode != crate::manifest::ScanMode::Exhaustive;
    let table = crate::cost::table(&plan.cost(&rates), bound);
    p.note(format_args!("\n{}", table.trim_end_matches('\n')));
    let images = plan.sources.iter().map(|s| s.selected_count()).sum();
    p.note(format_args!(
        "\n{}",
        modes(&ctx, &args.sample, Some(images), &rates)?
    ));
    let progress = crate::cost::project_run(&crate::scan::unit_progress(&plan));
    if progress.units_done > 0 {
        p.note(progress_line(&progress));
    }
    Ok(())
}

/// The scan modes side by side over `images` images of the manifest's
/// models and grid: exhaustive from the counts, first-hit and curate from
/// the sample runs' outcomes.
fn modes(
    ctx: &Context,
    sample: &[std::path::PathBuf],
    images: Option<u64>,
    rates: &std::collections::BTreeMap<String, crate::cost::Rate>,
) -> Result<String> {
    let grid = &ctx.manifest.zoom.grid();
    let models: Vec<(String, crate::models::Architecture)> = ctx
        .manifest
        .models
        .iter()
        .map(|m| (m.name.clone(), m.architecture))
        .collect();
    let dirs = if sample.is_empty() {
        curate_from(ctx)
    } else {
        sample.to_vec()
    };
    let names: Vec<String> = models.iter().map(|(n, _)| n.clone()).collect();
    let (samples, from) = load_samples(&dirs, &names, grid)?;
    let gmacs: Vec<f64> = models
        .iter()
        .map(|(_, a)| crate::plan::pass_gmacs(*a, grid.crop_size))
        .collect();
    let archs: Vec<String> = models.iter().map(|(_, a)| a.name().to_string()).collect();
    let fallback = crate::analysis::first_hit_order(grid);
    let p = crate::pair_order::project(&samples, &gmacs, &fallback);
    let sampled = if samples.is_empty() {
        "needs a sample: --sample RUN_DIR (an earlier run's directory) or [scan] curate_from"
            .to_string()
    } else {
        format!(
            "expected from {} sample images: {}",
            samples.len(),
            from.join(", ")
        )
    };
    let rows = [
        crate::cost::ModeRow {
            mode: "exhaustive",
            per_image: Some(p.exhaustive),
            basis: "every model, every transform".into(),
        },
        crate::cost::ModeRow {
            mode: "first-hit",
            per_image: p.first_hit,
            basis: sampled.clone(),
        },
        crate::cost::ModeRow {
            mode: "curate",
            per_image: p.curate,
            basis: if samples.is_empty() {
                sampled
            } else {
                format!("{sampled}; order learned on half the sample, costed on the other half")
            },
        },
    ];
    Ok(format!(
        "scan modes (FLOPs: 2 x each architecture's published multiply-adds at {} px)\n{}",
        grid.crop_size,
        crate::cost::mode_table(images, &rows, &archs, rates)
    ))
}
