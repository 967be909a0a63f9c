//! `plan`: fetch the inputs, count the rows, cut the scan into work units;
//! prints the units (stdout) and the cost (stderr): forward passes per
//! model and, with `--rates`, GPU-hours. `--dry-run` prints the plan and
//! its cost from the manifest alone.

use anyhow::Result;

use super::context::{load_context, prepare_plan, print_dry_run};
use super::status::{progress_line, unit_cells, unit_models};
use crate::cli::PlanArgs;
use crate::plan::Plan;

pub fn run(args: PlanArgs) -> Result<()> {
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
    Ok(())
}
