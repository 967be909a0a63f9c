//! Scan stage: every image of every source through every model under every
//! zoom transform, one work unit at a time, each under a claim. Each
//! (image, model) becomes one [`ScanRecord`]; undecodable rows become
//! counted skips. Three modes share one unit driver ([`driver`]):
//! [`exhaustive`] (every transform, fed by the parallel feed), and two
//! strategies on the loop of [`hunt`]: [`first_hit`] (each model stops at
//! its first correct transform) and [`curate`] (every model stops at the
//! first hit of any, pairs tried in a learned order). A unit
//! writes its records under a temporary name, renames them when complete,
//! then writes its stats: a unit with stats is done and is never run again,
//! so a killed worker loses at most its current unit.

mod curate;
mod driver;
mod exhaustive;
mod first_hit;
mod hunt;

pub use first_hit::NOT_TRIED;

use crate::run_dir::RunDir;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::claim::{Busy, ClaimTimes};
use crate::manifest::ScanMode;
use crate::models::{Classifier, ModelError, Runtime};
use crate::plan::Plan;
use crate::records::{RecordsError, ScanRecord};
use crate::sources::{Skip, SourceError};
use crate::units::Unit;
use driver::UnitScan;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the preprocessing threads: {0}")]
    Threads(String),
    #[error("{0}")]
    Plan(String),
    #[error("the scan is incomplete: {missing} unit(s) not done, the first {first}; run `imagenet-hard scan` (or the job array) again, and `imagenet-hard status` to see them all")]
    Incomplete { missing: usize, first: String },
}

/// Per-unit counts, written last: a unit with stats is done. Summed over a
/// source's units they are the source's stats.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScanStats {
    pub origin: String,
    /// The units counted here (one for a unit's own stats).
    #[serde(default)]
    pub units: Vec<usize>,
    pub rows_read: u64,
    pub images_scanned: u64,
    pub skipped: BTreeMap<String, u64>,
    pub skips: Vec<Skip>,
    pub forward_passes: u64,
    pub seconds: f64,
    pub models: Vec<String>,
    pub transforms: usize,
}

fn unit_dir(run_dir: &Path) -> PathBuf {
    RunDir::of(run_dir).units()
}

/// A unit's scan records.
pub fn unit_records_path(run_dir: &Path, unit: &Unit) -> PathBuf {
    RunDir::of(run_dir).unit_records(&unit.name())
}

/// A unit's stats: present iff the unit is done.
pub(crate) fn unit_stats_path(run_dir: &Path, unit: &Unit) -> PathBuf {
    RunDir::of(run_dir).unit_stats(&unit.name())
}

/// The error of a unit's last failed attempt.
pub(crate) fn unit_error_path(run_dir: &Path, unit: &Unit) -> PathBuf {
    RunDir::of(run_dir).unit_error(&unit.name())
}

/// A unit's claim: held by the worker scanning it.
pub(crate) fn unit_claim_path(run_dir: &Path, unit: &Unit) -> PathBuf {
    RunDir::of(run_dir).unit_claim(&unit.name())
}

/// Where a unit stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum UnitState {
    Done,
    /// A worker holds its claim: `owner`, scanning for `elapsed`, last
    /// heartbeat `heartbeat_age` ago.
    Running {
        owner: String,
        elapsed: Option<Duration>,
        heartbeat_age: Duration,
    },
    /// Not started, or its worker died (`stale_claim`: the dead worker's
    /// claim, taken over by the next worker).
    Pending {
        stale_claim: Option<String>,
    },
    /// The last attempt stopped with this error.
    Failed {
        error: String,
    },
}

pub(crate) fn unit_state(run_dir: &Path, unit: &Unit) -> UnitState {
    if unit_stats_path(run_dir, unit).is_file() {
        return UnitState::Done;
    }
    let claim = crate::claim::read(&unit_claim_path(run_dir, unit)).ok();
    if let Some(c) = &claim {
        if c.live() {
            return UnitState::Running {
                owner: c.owner.clone(),
                elapsed: c
                    .started
                    .and_then(|s| std::time::SystemTime::now().duration_since(s).ok()),
                heartbeat_age: c.age,
            };
        }
    }
    if let Ok(error) = std::fs::read_to_string(unit_error_path(run_dir, unit)) {
        return UnitState::Failed { error };
    }
    UnitState::Pending {
        stale_claim: claim.map(|c| c.owner),
    }
}

/// Units that are not done yet.
pub(crate) fn missing_units(plan: &Plan) -> Vec<&Unit> {
    plan.units
        .iter()
        .filter(|u| !unit_stats_path(&plan.run_dir, u).is_file())
        .collect()
}

/// How a worker runs its units.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    /// Threads of the feed.
    pub threads: usize,
    pub claims: ClaimTimes,
    /// Wait for units other workers hold until they finish (or die and are
    /// taken over), as `build` must; a job-array worker moves on instead.
    pub wait_for_others: bool,
    /// Where progress goes (`--quiet` silences it).
    pub printer: crate::printer::Printer,
    /// Progress lines on stderr this often when it is not a terminal.
    pub progress_every: Duration,
}

/// What a worker did with its units.
#[derive(Debug, Default)]
pub struct ScanSummary {
    /// Each unit's stats and whether this worker scanned it now.
    pub units: Vec<(ScanStats, bool)>,
    /// Units left to the live workers holding them: name and holder.
    pub busy: Vec<(String, Busy)>,
}

enum UnitOutcome {
    Done(ScanStats, bool),
    Busy(Busy),
}

/// Run the given units of `plan` that are not done yet, each under a claim
/// so no other worker scans it at the same time. A unit that fails
/// records its error and the others still run; the first error is returned
/// at the end.
pub fn scan(
    plan: &Plan,
    rt: &Runtime,
    ids: &[usize],
    opts: &ScanOptions,
) -> Result<ScanSummary, ScanError> {
    let units: Vec<&Unit> = ids.iter().filter_map(|&i| plan.units.get(i)).collect();
    // Models load once, when a unit that needs them is claimed.
    let mut models: Vec<Option<Classifier>> = plan.models.iter().map(|_| None).collect();
    let mut summary = ScanSummary::default();
    let mut first_error = None;
    let mut waiting: Vec<&Unit> = Vec::new();
    for unit in units {
        match run_unit(plan, rt, unit, &mut models, opts) {
            Ok(UnitOutcome::Done(s, fresh)) => summary.units.push((s, fresh)),
            Ok(UnitOutcome::Busy(b)) if opts.wait_for_others => {
                opts.printer.note(format_args!(
                    "  {}: held by {} (heartbeat {:.0}s ago); waiting for it",
                    unit.name(),
                    b.owner,
                    b.age.as_secs_f64()
                ));
                waiting.push(unit)
            }
            Ok(UnitOutcome::Busy(b)) => {
                opts.printer.note(format_args!(
                    "  {}: held by {} (heartbeat {:.0}s ago); left to it",
                    unit.name(),
                    b.owner,
                    b.age.as_secs_f64()
                ));
                summary.busy.push((unit.name(), b))
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    // Units held by others: done when their stats appear; taken over (and
    // scanned here) if their worker dies.
    while !waiting.is_empty() {
        std::thread::sleep(opts.claims.heartbeat.min(Duration::from_secs(1)));
        let mut still = Vec::new();
        for unit in waiting {
            match run_unit(plan, rt, unit, &mut models, opts) {
                Ok(UnitOutcome::Done(s, fresh)) => summary.units.push((s, fresh)),
                Ok(UnitOutcome::Busy(_)) => still.push(unit),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        waiting = still;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// One unit: done already, held by another worker, or claimed and scanned
/// here (its records renamed into place, then its stats written: a unit
/// with stats is done).
fn run_unit(
    plan: &Plan,
    rt: &Runtime,
    unit: &Unit,
    models: &mut [Option<Classifier>],
    opts: &ScanOptions,
) -> Result<UnitOutcome, ScanError> {
    let stats_path = unit_stats_path(&plan.run_dir, unit);
    let claim_path = unit_claim_path(&plan.run_dir, unit);
    if let Ok(done) = crate::util::read_json::<ScanStats>(&stats_path) {
        crate::claim::clear_if_stale(&claim_path, opts.claims);
        return Ok(UnitOutcome::Done(done, false));
    }
    let io = |source| ScanError::Io {
        path: claim_path.clone(),
        source,
    };
    let claim = match crate::claim::acquire(&claim_path, opts.claims).map_err(io)? {
        Ok(c) => c,
        Err(busy) => return Ok(UnitOutcome::Busy(busy)),
    };
    // Finished by another worker between our look and our claim.
    if let Ok(done) = crate::util::read_json::<ScanStats>(&stats_path) {
        return Ok(UnitOutcome::Done(done, false));
    }
    remove_temporaries(&plan.run_dir, unit);
    for &mi in &unit.models {
        if models[mi].is_none() {
            let m = &plan.models[mi];
            models[mi] = Some(Classifier::load(
                m.architecture,
                &m.weights,
                &m.extras(),
                rt,
            )?);
        }
    }
    let error_file = unit_error_path(&plan.run_dir, unit);
    let result = UnitScan::new(
        plan,
        unit,
        models,
        &claim,
        (opts.progress_every, opts.printer),
    )
    .and_then(|mut scan| {
        let completed = match plan.scan_mode {
            ScanMode::Exhaustive => exhaustive::scan(&mut scan, opts.threads),
            ScanMode::FirstHit => first_hit::scan(&mut scan, opts.threads),
            ScanMode::Curate => curate::scan(&mut scan, opts.threads),
        }?;
        scan.finish(completed)
    });
    match result {
        Ok(Some(s)) => {
            crate::util::write_json(&stats_path, &s).map_err(|e| ScanError::Io {
                path: stats_path.clone(),
                source: e,
            })?;
            let _ = std::fs::remove_file(&error_file);
            tracing::info!(
                "{} ({}, rows {}..{}): {} images scanned, {} skipped, {} forward passes in {:.1}s",
                unit.name(),
                s.origin,
                unit.first,
                unit.end,
                s.images_scanned,
                s.skips.len(),
                s.forward_passes,
                s.seconds
            );
            Ok(UnitOutcome::Done(s, true))
        }
        // Our claim was taken over: the new owner finishes the unit.
        Ok(None) => Ok(UnitOutcome::Busy(Busy {
            owner: crate::claim::read(&claim_path)
                .map(|c| c.owner)
                .unwrap_or_default(),
            age: Duration::ZERO,
        })),
        Err(e) => {
            tracing::error!("{} ({}) failed: {e}", unit.name(), unit.origin);
            if !claim.lost() {
                let _ = crate::util::write_atomic(&error_file, format!("{e}\n").as_bytes());
            }
            Err(e)
        }
    }
}

/// Temporary files a killed worker left for this unit (we hold its claim,
/// so no live writer owns them).
fn remove_temporaries(run_dir: &Path, unit: &Unit) {
    let prefix = format!(".{}.", unit.name());
    if let Ok(entries) = std::fs::read_dir(unit_dir(run_dir)) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Each unit's size in forward passes and, when done, what it took: the
/// input of [`crate::cost::project_run`].
pub(crate) fn unit_progress(plan: &Plan) -> Vec<crate::cost::UnitProgress> {
    plan.units
        .iter()
        .map(|u| crate::cost::UnitProgress {
            id: u.id,
            models: u
                .models
                .iter()
                .map(|&m| plan.models[m].name.clone())
                .collect(),
            passes: u.images() * plan.grid.len() as u64 * u.models.len() as u64,
            done: crate::util::read_json::<ScanStats>(&unit_stats_path(&plan.run_dir, u))
                .ok()
                .map(|s| (s.forward_passes, s.seconds)),
        })
        .collect()
}

/// Every source's stats, summed over its units; a missing unit means the
/// scan is incomplete.
pub fn read_stats(plan: &Plan) -> Result<Vec<ScanStats>, ScanError> {
    let missing = missing_units(plan);
    if let Some(u) = missing.first() {
        return Err(ScanError::Incomplete {
            missing: missing.len(),
            first: format!("{} ({}, rows {}..{})", u.name(), u.origin, u.first, u.end),
        });
    }
    let mut out: Vec<ScanStats> = plan
        .sources
        .iter()
        .map(|s| ScanStats {
            origin: s.origin.clone(),
            models: plan.model_names(),
            transforms: plan.grid.len(),
            ..Default::default()
        })
        .collect();
    for unit in &plan.units {
        let path = unit_stats_path(&plan.run_dir, unit);
        let u: ScanStats = crate::util::read_json(&path).map_err(|source| ScanError::Io {
            path: path.clone(),
            source,
        })?;
        let s = &mut out[unit.source];
        s.units.push(unit.id);
        // Rows are counted once per row run (the first model group's unit).
        if unit.models.first() == Some(&0) {
            s.rows_read += u.rows_read;
            s.images_scanned += u.images_scanned;
            for (k, v) in u.skipped {
                *s.skipped.entry(k).or_default() += v;
            }
            s.skips.extend(u.skips);
        }
        s.forward_passes += u.forward_passes;
        s.seconds += u.seconds;
    }
    for s in &mut out {
        s.skips.sort_by_key(|k| k.row);
    }
    Ok(out)
}

/// Every scan record of one source, from all its finished units.
pub fn read_source_records(plan: &Plan, origin: &str) -> Result<Vec<ScanRecord>, RecordsError> {
    let mut out = Vec::new();
    for unit in plan.units.iter().filter(|u| u.origin == origin) {
        let path = unit_records_path(&plan.run_dir, unit);
        if path.is_file() {
            out.extend(crate::records::read_records(&path)?);
        }
    }
    Ok(out)
}

/// The outcomes recorded by the run in `run_dir`, as samples for a curate
/// order over `models` (by name) and `grid`: per image, per model and
/// transform, solved or not where the pair was tried. Models or transforms
/// that run lacks are `None`.
pub(crate) fn sample_outcomes(
    run_dir: &Path,
    models: &[String],
    grid: &crate::zoom::ZoomGrid,
) -> Result<Vec<crate::pair_order::Outcome>, ScanError> {
    let mut theirs = Plan::read(run_dir).map_err(|source| ScanError::Io {
        path: Plan::path(run_dir),
        source,
    })?;
    theirs.run_dir = run_dir.to_path_buf();
    // Their transform index -> ours.
    let ours: Vec<Option<usize>> = theirs
        .grid
        .transforms()
        .iter()
        .map(|&t| grid.index_of(t))
        .collect();
    let mut out = Vec::new();
    for source in &theirs.sources {
        let mut by_row: BTreeMap<u64, crate::pair_order::Outcome> = BTreeMap::new();
        for rec in read_source_records(&theirs, &source.origin)? {
            let Some(m) = models.iter().position(|n| *n == rec.model) else {
                continue;
            };
            let image = by_row
                .entry(rec.row)
                .or_insert_with(|| vec![vec![None; grid.len()]; models.len()]);
            for (k, (&p, &c)) in rec.pred.iter().zip(&rec.correct).enumerate() {
                if let Some(Some(t)) = ours.get(k) {
                    image[m][*t] = (p != NOT_TRIED).then_some(c);
                }
            }
        }
        out.extend(by_row.into_values());
    }
    Ok(out)
}
