//! `scan`: run units of the plan, all of them (making the plan first) or a
//! worker's share of an existing plan (`--unit`, `--shard-index`, or the
//! scheduler's index).

use anyhow::{bail, Context as _, Result};

use super::context::{load_context, prepare_plan, print_dry_run, read_plan};
use crate::claim::ClaimTimes;
use crate::cli::{RunArgs, ScanArgs};
use crate::models::Runtime;
use crate::plan::Plan;
use crate::scan::ScanOptions;
use std::time::Duration;

pub fn run(args: ScanArgs) -> Result<()> {
    let ctx = load_context(&args.run.manifest)?;
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
        return scan_units(&plan, &args.run, &all, false);
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
    scan_units(&plan, &args.run, &ids, false)
}

/// Scan units `ids` of the plan. `build` waits for units other workers
/// hold (it merges next); a `scan` worker leaves them to their holders.
/// The scan settings `args` name, checked once: threads, claim times,
/// progress interval.
fn options(args: &RunArgs, wait_for_others: bool) -> Result<ScanOptions> {
    let seconds = |s: f64, flag: &str, zero_ok: bool| -> Result<Duration> {
        if !s.is_finite() || s < 0.0 || (s == 0.0 && !zero_ok) {
            bail!(
                "{flag} must be a {} number of seconds, got {s}",
                if zero_ok { "non-negative" } else { "positive" }
            );
        }
        Ok(Duration::from_secs_f64(s))
    };
    Ok(ScanOptions {
        threads: args
            .threads
            .map(usize::from)
            .unwrap_or_else(crate::feed::default_threads),
        claims: ClaimTimes::new(seconds(args.claim_timeout, "--claim-timeout", false)?),
        wait_for_others,
        progress_every: seconds(args.progress_every, "--progress-every", true)?,
    })
}

pub fn scan_units(plan: &Plan, args: &RunArgs, ids: &[usize], wait: bool) -> Result<()> {
    let opts = options(args, wait)?;
    let threads = opts.threads;
    let rt = Runtime::new(args.device)?
        .with_precision(plan.scan_dtype)
        .with_context(|| format!("scan.dtype = \"{}\" in the manifest", plan.scan_dtype))?
        .with_kernels(args.kernels)?;
    eprintln!(
        "Scanning on {} ({}, {threads} preprocessing threads): {} of {} unit(s), {} model(s) x {} transforms per image",
        rt.describe(),
        rt.precision(),
        ids.len(),
        plan.units.len(),
        plan.models.len(),
        plan.grid.len()
    );
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
