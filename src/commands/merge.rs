//! `merge` and the stages after the scan, shared with `build`, `select`,
//! `report` and `export`: select the hard set, export the shards and the
//! card, write the report. Refuses while units are missing.

use anyhow::Result;

use super::context::{load_context, read_plan};
use crate::cli::ManifestArg;
use crate::plan::Plan;

pub fn run(arg: ManifestArg) -> Result<()> {
    let ctx = load_context(&arg)?;
    let plan = read_plan(&ctx)?;
    merge(&plan)
}

/// Select, export and report; refuses while units are missing.
pub fn merge(plan: &Plan) -> Result<()> {
    let selection = select(plan, &plan.selection, None)?;
    export(plan, &selection)?;
    report(plan, &selection)?;
    Ok(())
}
pub fn select(
    plan: &Plan,
    rule: &crate::manifest::SelectionRule,
    relabel: Option<&crate::select::Relabel>,
) -> Result<crate::select::Selection> {
    let selection = crate::select::select(plan, rule, relabel)?;
    selection.write(&plan.run_dir)?;
    print!("{}", selection.bounds_table());
    Ok(selection)
}
pub fn report(plan: &Plan, selection: &crate::select::Selection) -> Result<()> {
    let written = crate::report::report(plan, selection)?;
    eprintln!(
        "Report: {} ({} files)",
        written.dir.join("report.md").display(),
        written.files.len()
    );
    Ok(())
}
pub fn export(plan: &Plan, selection: &crate::select::Selection) -> Result<()> {
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
