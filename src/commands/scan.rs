//! `scan`: run units of the plan, all of them (making the plan first) or a
//! worker's share of an existing plan (`--unit`, `--shard-index`, or the
//! scheduler's index).

use anyhow::{bail, Result};

use super::context::{load_context, prepare_plan, print_dry_run, read_plan};
use super::shared::scan_units;
use crate::cli::ScanArgs;
use crate::plan::Plan;
use crate::printer::Printer;

pub fn run(args: ScanArgs, p: Printer) -> Result<()> {
    let ctx = load_context(&args.run.manifest, p)?;
    if args.run.dry_run {
        return print_dry_run(&ctx, args.run.limit);
    }
    let assignment =
        crate::units::Assignment::resolve(args.unit, args.shard_index, args.num_shards, |k| {
            std::env::var(k).ok()
        })?;
    if assignment == crate::units::Assignment::All {
        let plan = prepare_plan(&ctx, args.run.limit)?;
        let all: Vec<usize> = (0..plan.units.len()).collect();
        return scan_units(&plan, &args.run, &all, false, p);
    }
    // A worker of a fanned-out scan: the plan is made once, up front.
    let plan = read_plan(&ctx)?;
    if plan.units.is_empty() {
        bail!(
            "{} has no units: run `imagenet-hard plan` first",
            Plan::path(&plan.run_dir).display()
        );
    }
    let ids = assignment.pick(plan.units.len())?;
    scan_units(&plan, &args.run, &ids, false, p)
}
