//! `status`: each unit's state (done with its time and rate, running with
//! its worker and heartbeat, pending, failed with its error) and the run's
//! projected time left, as a table or (`--json`) one JSON document.

use anyhow::Result;
use serde::Serialize;

use super::context::{load_context, read_plan};
use super::shared::{progress_line, unit_cells, unit_models};
use crate::cli::StatusArgs;
use crate::plan::Plan;
use crate::printer::Printer;

pub fn run(args: StatusArgs, p: Printer) -> Result<()> {
    let ctx = load_context(&args.manifest, p)?;
    let plan = read_plan(&ctx)?;
    let status = status(&plan);
    if args.json {
        p.json(&status)?;
        return Ok(());
    }
    p.result_line("unit\torigin\trows\tmodels\tstate");
    for (u, row) in plan.units.iter().zip(&status.units) {
        p.result_line(format_args!(
            "{}\t{}\t{}",
            unit_cells(u),
            unit_models(&plan, u),
            row.detail
        ));
    }
    let count = |s: &str| status.units.iter().filter(|r| r.state == s).count();
    p.result_line(format_args!(
        "{} units: {} done, {} running, {} pending, {} failed",
        status.units.len(),
        count("done"),
        count("running"),
        count("pending"),
        count("failed")
    ));
    if status.progress.units_done > 0 {
        p.result_line(progress_line(&status.progress));
    }
    Ok(())
}

/// The run's state: what the table shows, as values.
#[derive(Debug, Serialize)]
struct Status {
    units: Vec<UnitRow>,
    progress: crate::cost::RunProjection,
}

#[derive(Debug, Serialize)]
struct UnitRow {
    unit: String,
    origin: String,
    first: u64,
    end: u64,
    models: Vec<String>,
    /// done, running, pending or failed.
    state: &'static str,
    /// The state in words: time and rate, worker and heartbeat, the error.
    detail: String,
}

fn status(plan: &Plan) -> Status {
    use crate::cost::duration;
    use crate::scan::{unit_state, UnitState};
    let units = plan
        .units
        .iter()
        .map(|u| {
            let (state, detail) = match unit_state(&plan.run_dir, u) {
                UnitState::Done => {
                    let stats = crate::util::read_json::<crate::scan::ScanStats>(
                        &crate::scan::unit_stats_path(&plan.run_dir, u),
                    );
                    let detail = match stats {
                        Ok(s) if s.seconds > 0.0 => format!(
                            "done in {} ({:.0} crops/s)",
                            duration(s.seconds),
                            s.forward_passes as f64 / s.seconds
                        ),
                        _ => "done".into(),
                    };
                    ("done", detail)
                }
                UnitState::Running {
                    owner,
                    elapsed,
                    heartbeat_age,
                } => {
                    let elapsed = elapsed.map(|e| duration(e.as_secs_f64()));
                    let detail = format!(
                        "running on {owner} for {} (heartbeat {} ago)",
                        elapsed.unwrap_or("?".into()),
                        duration(heartbeat_age.as_secs_f64())
                    );
                    ("running", detail)
                }
                UnitState::Pending { stale_claim } => {
                    let detail = match stale_claim {
                        Some(owner) => format!(
                            "pending (claimed by {owner}, which stopped: the next worker takes it over)"
                        ),
                        None => "pending".into(),
                    };
                    ("pending", detail)
                }
                UnitState::Failed { error } => ("failed", format!("failed: {}", error.trim())),
            };
            UnitRow {
                unit: u.name(),
                origin: u.origin.clone(),
                first: u.first,
                end: u.end,
                models: u.models.iter().map(|&m| plan.models[m].name.clone()).collect(),
                state,
                detail,
            }
        })
        .collect();
    Status {
        units,
        progress: crate::cost::project_run(&crate::scan::unit_progress(plan)),
    }
}
