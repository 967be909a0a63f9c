//! `build`: the main job in one process: fetch, plan, scan every unit (waiting
//! for units other workers hold), then select, export and report.

use anyhow::Result;

use super::context::{load_context, prepare_plan, print_dry_run};
use crate::cli::RunArgs;
use crate::printer::Printer;

pub fn run(args: RunArgs, p: Printer) -> Result<()> {
    let ctx = load_context(&args.manifest, p)?;
    if args.dry_run {
        return print_dry_run(&ctx, args.limit);
    }
    let plan = prepare_plan(&ctx, args.limit)?;
    let all: Vec<usize> = (0..plan.units.len()).collect();
    super::shared::scan_units(&plan, &args, &all, true, p)?;
    super::shared::merge(&plan, p)?;
    p.note(format_args!(
        "Run directory: {} (plan.json, scan/, select/, dataset/, report/)",
        plan.run_dir.display()
    ));
    Ok(())
}
