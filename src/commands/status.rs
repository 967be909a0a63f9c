//! `status`: each unit's state (done with its time and rate, running with
//! its worker and heartbeat, pending, failed with its error) and the run's
//! projected time left.

use anyhow::Result;

use super::context::{load_context, read_plan};
use super::shared::{progress_line, unit_cells, unit_models};
use crate::cli::ManifestArg;
use crate::plan::Plan;
use crate::printer::Printer;

pub fn run(arg: ManifestArg, p: Printer) -> Result<()> {
    let ctx = load_context(&arg, p)?;
    let plan = read_plan(&ctx)?;
    print_status(&plan, p);
    Ok(())
}

fn print_status(plan: &Plan, p: Printer) {
    use crate::cost::duration;
    use crate::scan::{unit_state, UnitState};
    let (mut done, mut running, mut pending, mut failed) = (0, 0, 0, 0);
    p.result_line("unit\torigin\trows\tmodels\tstate");
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
        p.result_line(format_args!(
            "{}\t{}\t{state}",
            unit_cells(u),
            unit_models(plan, u)
        ));
    }
    p.result_line(format_args!(
        "{} units: {done} done, {running} running, {pending} pending, {failed} failed",
        plan.units.len()
    ));
    let progress = crate::cost::project_run(&crate::scan::unit_progress(plan));
    if progress.units_done > 0 {
        p.result_line(progress_line(&progress));
    }
}
