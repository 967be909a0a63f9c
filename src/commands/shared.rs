//! What several commands do alike: scan a plan's units, the stages after
//! the scan (select, export, report) with what each prints, and the unit
//! tables of `plan` and `status`. Commands import this and `context`, never
//! one another (`tests/it/architecture.rs`).

use anyhow::{bail, Context as _, Result};
use std::time::Duration;

use crate::claim::ClaimTimes;
use crate::cli::RunArgs;
use crate::models::Runtime;
use crate::plan::Plan;
use crate::printer::Printer;
use crate::scan::ScanOptions;

/// The scan settings `args` name, checked once: threads, claim times,
/// progress interval.
fn options(args: &RunArgs, wait_for_others: bool, printer: Printer) -> Result<ScanOptions> {
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
        printer,
        progress_every: seconds(args.progress_every, "--progress-every", true)?,
    })
}

/// Scan units `ids` of the plan. `build` waits for units other workers
/// hold (it merges next); a `scan` worker leaves them to their holders.
pub(crate) fn scan_units(
    plan: &Plan,
    args: &RunArgs,
    ids: &[usize],
    wait: bool,
    p: Printer,
) -> Result<()> {
    let opts = options(args, wait, p)?;
    let threads = opts.threads;
    let rt = Runtime::new(args.device)?
        .with_precision(plan.scan_dtype)
        .with_context(|| format!("scan.dtype = \"{}\" in the manifest", plan.scan_dtype))?
        .with_kernels(args.kernels)?;
    p.note(format_args!(
        "Scanning on {} ({}, {threads} preprocessing threads): {} of {} unit(s), {} model(s) x {} transforms per image",
        rt.describe(),
        rt.precision(),
        ids.len(),
        plan.units.len(),
        plan.models.len(),
        plan.grid.len()
    ));
    let summary = crate::scan::scan(plan, &rt, ids, &opts)?;
    for (s, fresh) in summary.units {
        let unit = s
            .units
            .first()
            .map(|u| format!("u{u:05}"))
            .unwrap_or_default();
        if !fresh {
            p.note(format_args!(
                "  {unit} {}: already done, records kept",
                s.origin
            ));
            continue;
        }
        let skipped: u64 = s.skipped.values().sum();
        p.note(format_args!(
            "  {unit} {}: {} images scanned, {} skipped {:?}, {} crops in {:.1}s",
            s.origin, s.images_scanned, skipped, s.skipped, s.forward_passes, s.seconds
        ));
    }
    if !summary.busy.is_empty() {
        p.note(format_args!(
            "{} unit(s) left to the workers holding them; `imagenet-hard status` shows them",
            summary.busy.len()
        ));
    }
    Ok(())
}

/// Select, export and report; refuses while units are missing.
pub fn merge(plan: &Plan, p: Printer) -> Result<()> {
    let selection = select(plan, &plan.selection, None, p)?;
    export(plan, &selection, p)?;
    report(plan, &selection, p)?;
    Ok(())
}

/// Select the hard set under `rule`, write select/ and print the bounds.
pub fn select(
    plan: &Plan,
    rule: &crate::manifest::SelectionRule,
    relabel: Option<&crate::select::Relabel>,
    p: Printer,
) -> Result<crate::select::Selection> {
    let selection = crate::select::select(plan, rule, relabel)?;
    selection.write(&plan.run_dir)?;
    p.result(selection.bounds_table());
    Ok(selection)
}

/// Write the report and say where.
pub fn report(plan: &Plan, selection: &crate::select::Selection, p: Printer) -> Result<()> {
    let written = crate::report::report(plan, selection)?;
    p.note(format_args!(
        "Report: {} ({} files)",
        written.dir.join("report.md").display(),
        written.files.len()
    ));
    Ok(())
}

/// Export the shards and the card and say where.
pub fn export(plan: &Plan, selection: &crate::select::Selection, p: Printer) -> Result<()> {
    let stats = crate::scan::read_stats(plan)?;
    let summary = crate::export::export(plan, selection, &stats)?;
    p.note(format_args!(
        "Exported {} hard image(s) in {} shard(s) to {}",
        summary.rows,
        summary.shards.len(),
        summary.dir.join("data").display()
    ));
    p.note(format_args!(
        "Dataset card: {}",
        summary.dir.join("README.md").display()
    ));
    Ok(())
}

/// Units done and the time left, as measured on the finished units.
pub(crate) fn progress_line(p: &crate::cost::RunProjection) -> String {
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
pub(crate) fn unit_cells(u: &crate::units::Unit) -> String {
    format!("{}\t{}\t{}..{}", u.name(), u.origin, u.first, u.end)
}
/// A unit's model names, comma-separated.
pub(crate) fn unit_models(plan: &Plan, u: &crate::units::Unit) -> String {
    u.models
        .iter()
        .map(|&m| plan.models[m].name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}
