//! Scan stage: every image of every source through every model under every
//! zoom transform, one work unit at a time. Crops are batched across images;
//! each (image, model) becomes one [`ScanRecord`]; undecodable rows become
//! counted skips. A unit writes its records under a temporary name, renames
//! them when complete, then writes its stats: a unit with stats is done and
//! is never run again, so a killed worker loses at most its current unit.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::claim::{Busy, Claim, ClaimTimes};
use crate::feed::{self, Event, FeedOptions};
use crate::labels::masked_argmax;
use crate::manifest::ScanMode;
use crate::models::{Classifier, ModelError, Runtime};
use crate::plan::Plan;
use crate::records::{RecordWriter, RecordsError, ScanRecord};
use crate::sources::{Skip, SourceError};
use crate::units::Unit;
use crate::zoom::{decode_for_zoom, zoom_view, RgbImage};
use rayon::prelude::*;

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
    run_dir.join("scan").join("units")
}

/// A unit's scan records.
pub fn unit_records_path(run_dir: &Path, unit: &Unit) -> PathBuf {
    unit_dir(run_dir).join(format!("{}.parquet", unit.name()))
}

/// A unit's stats: present iff the unit is done.
pub fn unit_stats_path(run_dir: &Path, unit: &Unit) -> PathBuf {
    unit_dir(run_dir).join(format!("{}.stats.json", unit.name()))
}

/// The error of a unit's last failed attempt.
pub fn unit_error_path(run_dir: &Path, unit: &Unit) -> PathBuf {
    unit_dir(run_dir).join(format!("{}.error.txt", unit.name()))
}

/// A unit's claim: held by the worker scanning it.
pub fn unit_claim_path(run_dir: &Path, unit: &Unit) -> PathBuf {
    unit_dir(run_dir).join(format!("{}.claim", unit.name()))
}

/// Where a unit stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitState {
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

pub fn unit_state(run_dir: &Path, unit: &Unit) -> UnitState {
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
pub fn missing_units(plan: &Plan) -> Vec<&Unit> {
    plan.units
        .iter()
        .filter(|u| !unit_stats_path(&plan.run_dir, u).is_file())
        .collect()
}

/// An image whose crops are in flight.
struct Pending {
    row: u64,
    id: String,
    labels: Vec<i64>,
    image_bytes: u64,
    /// `pred[model][transform]`
    pred: Vec<Vec<u16>>,
    remaining: usize,
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
                eprintln!(
                    "  {}: held by {} (heartbeat {:.0}s ago); waiting for it",
                    unit.name(),
                    b.owner,
                    b.age.as_secs_f64()
                );
                waiting.push(unit)
            }
            Ok(UnitOutcome::Busy(b)) => {
                eprintln!(
                    "  {}: held by {} (heartbeat {:.0}s ago); left to it",
                    unit.name(),
                    b.owner,
                    b.age.as_secs_f64()
                );
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
    if let Ok(done) = crate::util::read_json::<ScanStats>(&stats_path) {
        return Ok(UnitOutcome::Done(done, false));
    }
    let claim_path = unit_claim_path(&plan.run_dir, unit);
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
    let run = UnitRun {
        claim: &claim,
        progress_every: opts.progress_every,
    };
    let result = match plan.scan_mode {
        ScanMode::Exhaustive => scan_unit(plan, unit, models, opts.threads, &run),
        ScanMode::FirstHit => scan_unit_first_hit(plan, unit, models, opts.threads, &run),
    };
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

/// What a unit's scan needs beside the plan: its claim (checked before
/// anything is committed) and how often to say how far it is.
struct UnitRun<'a> {
    claim: &'a Claim,
    progress_every: Duration,
}

impl UnitRun<'_> {
    /// Put the records in place unless the claim was lost meanwhile:
    /// `Ok(false)` then, and nothing written.
    fn commit(&self, writer: RecordWriter) -> Result<bool, ScanError> {
        if self.claim.lost() {
            writer.abandon();
            return Ok(false);
        }
        writer.finish()?;
        Ok(true)
    }
}

/// Progress lines for logs (a scheduler's, a pipe): unit, images done of
/// all, crops per second, time left; at most one per `every`. On a
/// terminal the progress bar says it instead.
struct Progress {
    label: String,
    total: u64,
    every: Duration,
    start: Instant,
    last: Instant,
    enabled: bool,
}

impl Progress {
    fn new(label: String, total: u64, every: Duration) -> Progress {
        use std::io::IsTerminal;
        let now = Instant::now();
        Progress {
            label,
            total,
            every,
            start: now,
            last: now,
            enabled: !std::io::stderr().is_terminal(),
        }
    }

    fn tick(&mut self, rows: u64, crops: u64) {
        if !self.enabled || self.last.elapsed() < self.every {
            return;
        }
        self.last = Instant::now();
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let left = if rows > 0 {
            crate::cost::duration(secs * (self.total.saturating_sub(rows)) as f64 / rows as f64)
        } else {
            "?".into()
        };
        eprintln!(
            "  {}: {rows}/{} images, {:.0} crops/s, {} elapsed, about {left} left",
            self.label,
            self.total,
            crops as f64 / secs,
            crate::cost::duration(secs)
        );
    }
}

/// A unit's models (as planned, and loaded) and its empty stats.
fn unit_models<'a>(
    plan: &'a Plan,
    unit: &Unit,
    loaded: &'a [Option<Classifier>],
) -> (
    Vec<&'a crate::plan::PlannedModel>,
    Vec<&'a Classifier>,
    ScanStats,
) {
    let planned: Vec<&crate::plan::PlannedModel> =
        unit.models.iter().map(|&i| &plan.models[i]).collect();
    let models = unit
        .models
        .iter()
        .filter_map(|&i| loaded.get(i).and_then(Option::as_ref))
        .collect();
    let stats = ScanStats {
        origin: plan.sources[unit.source].origin.clone(),
        units: vec![unit.id],
        models: planned.iter().map(|m| m.name.clone()).collect(),
        transforms: plan.grid.len(),
        ..Default::default()
    };
    (planned, models, stats)
}

/// Count a row read; a skipped or undecodable row is recorded in `stats`
/// and gives `None`.
fn take_row(
    outcome: Result<crate::sources::RowOutcome, SourceError>,
    plan: &Plan,
    stats: &mut ScanStats,
    bar: &indicatif::ProgressBar,
) -> Result<Option<(crate::sources::SourceRecord, RgbImage)>, ScanError> {
    stats.rows_read += 1;
    bar.set_position(stats.rows_read);
    let rec = match outcome? {
        Ok(rec) => rec,
        Err(skip) => {
            record_skip(stats, skip);
            return Ok(None);
        }
    };
    match decode_for_zoom(&rec.image, plan.decode, &plan.grid) {
        Ok(img) => Ok(Some((rec, img))),
        Err(e) => {
            record_skip(
                stats,
                Skip {
                    row: rec.row,
                    reason: e.reason().into(),
                    detail: e.to_string(),
                },
            );
            Ok(None)
        }
    }
}

/// A batch queued on the device: each model's pending logits, and per crop
/// its image's slot and transform index.
type InFlight = (Vec<crate::models::Started>, Vec<(u64, usize)>);

/// An exhaustive unit: the feed decodes and zooms ahead on `threads`
/// threads while the models run; batch k+1 is queued on the device before
/// batch k's logits are read back.
fn scan_unit(
    plan: &Plan,
    unit: &Unit,
    loaded: &[Option<Classifier>],
    threads: usize,
    run: &UnitRun,
) -> Result<Option<ScanStats>, ScanError> {
    let start = Instant::now();
    let source = &plan.sources[unit.source];
    let grid = &plan.grid;
    let n_t = grid.len();
    let mask = source.class_subset.mask();
    let (planned, models, mut stats) = unit_models(plan, unit, loaded);
    let norms = models
        .iter()
        .zip(&planned)
        .map(|(m, pm)| m.normaliser(pm.mean, pm.std))
        .collect::<Result<Vec<_>, _>>()?;
    let mut writer = RecordWriter::create(&unit_records_path(&plan.run_dir, unit))?;
    let bar = crate::util::progress(unit.images(), &format!("{} {}", unit.name(), source.origin));
    let mut progress = Progress::new(
        format!("{} {}", unit.name(), source.origin),
        unit.images(),
        run.progress_every,
    );
    let crop = grid.crop_size as usize;
    let rows = source
        .reader()
        .rows_in(source.unit_rows(unit.first, unit.end));
    let opts = FeedOptions::new(threads, plan.batch_size);

    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut first_slot: u64 = 0; // slot of pending[0]
                                 // Read back a finished batch: top-1 per crop and model.
    let finish = |started: Vec<crate::models::Started>,
                  crops: &[(u64, usize)],
                  pending: &mut VecDeque<Pending>,
                  first_slot: u64|
     -> Result<(), ScanError> {
        for (mi, (m, s)) in models.iter().zip(started).enumerate() {
            let logits = m.finish(s)?;
            for (k, &(slot, t)) in crops.iter().enumerate() {
                let top = masked_argmax(&logits[k * 1000..(k + 1) * 1000], &mask).unwrap_or(0);
                pending[(slot - first_slot) as usize].pred[mi][t] = top as u16;
            }
        }
        for &(slot, _) in crops {
            pending[(slot - first_slot) as usize].remaining -= 1;
        }
        Ok(())
    };
    let emit = |pending: &mut VecDeque<Pending>,
                first_slot: &mut u64,
                writer: &mut RecordWriter|
     -> Result<(), ScanError> {
        while pending.front().is_some_and(|p| p.remaining == 0) {
            let Some(p) = pending.pop_front() else { break };
            *first_slot += 1;
            for (m, pred) in planned.iter().zip(p.pred) {
                let correct = pred
                    .iter()
                    .map(|c| p.labels.contains(&(*c as i64)))
                    .collect();
                writer.push(ScanRecord {
                    row: p.row,
                    id: p.id.clone(),
                    labels: p.labels.clone(),
                    image_bytes: p.image_bytes,
                    model: m.name.clone(),
                    pred,
                    correct,
                })?;
            }
        }
        Ok(())
    };

    let completed = feed::run(rows, grid, plan.decode, opts, |events| {
        let mut in_flight: Option<InFlight> = None;
        for event in events {
            if run.claim.taken_over() {
                return Ok(false);
            }
            progress.tick(stats.rows_read, stats.forward_passes);
            match event? {
                Event::Skip(skip) => {
                    stats.rows_read += 1;
                    bar.set_position(stats.rows_read);
                    record_skip(&mut stats, skip);
                }
                Event::Image(meta) => {
                    stats.rows_read += 1;
                    bar.set_position(stats.rows_read);
                    stats.images_scanned += 1;
                    debug_assert_eq!(meta.slot, first_slot + pending.len() as u64);
                    pending.push_back(Pending {
                        row: meta.row,
                        id: meta
                            .path
                            .unwrap_or_else(|| format!("{}/{}", source.origin, meta.row)),
                        labels: meta.labels,
                        image_bytes: meta.image_bytes,
                        pred: vec![vec![0; n_t]; models.len()],
                        remaining: n_t,
                    });
                }
                Event::Batch(batch) => {
                    let Some(first) = models.first() else {
                        continue;
                    };
                    let x = first.upload(&batch.pixels, batch.len(), crop)?;
                    let started = models
                        .iter()
                        .zip(&norms)
                        .map(|(m, norm)| m.start(&x, norm))
                        .collect::<Result<Vec<_>, _>>()?;
                    stats.forward_passes += (batch.len() * models.len()) as u64;
                    // The device works on this batch while the last one is read back.
                    if let Some((done, crops)) = in_flight.replace((started, batch.crops)) {
                        finish(done, &crops, &mut pending, first_slot)?;
                        emit(&mut pending, &mut first_slot, &mut writer)?;
                    }
                }
            }
        }
        if let Some((done, crops)) = in_flight.take() {
            finish(done, &crops, &mut pending, first_slot)?;
        }
        emit(&mut pending, &mut first_slot, &mut writer)?;
        if !pending.is_empty() {
            // Only a model-less unit leaves crops unscored; no model, no records.
            pending.clear();
        }
        Ok::<bool, ScanError>(true)
    });
    bar.finish_and_clear();
    match completed {
        Ok(true) => {}
        Ok(false) => {
            writer.abandon();
            return Ok(None);
        }
        Err(e) => {
            writer.abandon();
            return Err(e);
        }
    }
    if !run.commit(writer)? {
        return Ok(None);
    }
    stats.seconds = start.elapsed().as_secs_f64();
    Ok(Some(stats))
}

/// In a first-hit scan, the prediction of a transform that was not tried.
pub const NOT_TRIED: u16 = u16::MAX;

/// An image of a first-hit scan, hunted by each model until it hits.
struct Hunt {
    row: u64,
    id: String,
    labels: Vec<i64>,
    image_bytes: u64,
    /// Dropped once every model is done.
    img: Option<RgbImage>,
    /// `pred[model][transform]`, `NOT_TRIED` where not tried.
    pred: Vec<Vec<u16>>,
    /// Per model: how far along the order it is.
    next: Vec<usize>,
    done: Vec<bool>,
}

impl Hunt {
    fn finished(&self) -> bool {
        self.done.iter().all(|&d| d)
    }
}

/// A unit in first-hit mode: per image and model, transforms are tried in
/// `first_hit_order` until one is correct (or all fail). What is recorded
/// does not depend on how crops were batched: predictions after an image's
/// first hit are dropped, not recorded.
fn scan_unit_first_hit(
    plan: &Plan,
    unit: &Unit,
    loaded: &[Option<Classifier>],
    threads: usize,
    run: &UnitRun,
) -> Result<Option<ScanStats>, ScanError> {
    let start = Instant::now();
    let source = &plan.sources[unit.source];
    let grid = &plan.grid;
    let n_t = grid.len();
    let mask = source.class_subset.mask();
    let (planned, models, mut stats) = unit_models(plan, unit, loaded);
    let order = crate::analysis::first_hit_order(grid);
    let transforms = grid.transforms();
    let mut writer = RecordWriter::create(&unit_records_path(&plan.run_dir, unit))?;
    let bar = crate::util::progress(unit.images(), &format!("{} {}", unit.name(), source.origin));
    let batch = plan.batch_size.max(1);
    let crop = grid.crop_size as usize;
    let norms = models
        .iter()
        .zip(&planned)
        .map(|(m, pm)| m.normaliser(pm.mean, pm.std))
        .collect::<Result<Vec<_>, _>>()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .map_err(|e| ScanError::Threads(e.to_string()))?;
    let mut pixels: Vec<u8> = Vec::new();
    let mut rows = source
        .reader()
        .rows_in(source.unit_rows(unit.first, unit.end));
    let mut live: VecDeque<Hunt> = VecDeque::new();
    let mut exhausted = false;
    let mut progress = Progress::new(
        format!("{} {}", unit.name(), source.origin),
        unit.images(),
        run.progress_every,
    );
    loop {
        if run.claim.taken_over() {
            return Ok(None);
        }
        progress.tick(stats.rows_read, stats.forward_passes);
        // Keep `batch` unfinished images in flight.
        while !exhausted && live.iter().filter(|h| !h.finished()).count() < batch {
            let Some(outcome) = rows.next() else {
                exhausted = true;
                break;
            };
            let Some((rec, img)) = take_row(outcome, plan, &mut stats, &bar)? else {
                continue;
            };
            stats.images_scanned += 1;
            live.push_back(Hunt {
                row: rec.row,
                id: rec
                    .path
                    .clone()
                    .unwrap_or_else(|| format!("{}/{}", source.origin, rec.row)),
                labels: rec.labels,
                image_bytes: rec.image.len() as u64,
                img: Some(img),
                pred: vec![vec![NOT_TRIED; n_t]; models.len()],
                next: vec![0; models.len()],
                done: vec![false; models.len()],
            });
        }
        if live.is_empty() {
            break;
        }
        for (mi, (model, norm)) in models.iter().zip(&norms).enumerate() {
            let active: Vec<usize> = (0..live.len()).filter(|&i| !live[i].done[mi]).collect();
            if active.is_empty() {
                continue;
            }
            // Each active image gets the next few transforms of its order.
            let per = batch.div_ceil(active.len());
            let mut jobs: Vec<(usize, usize)> = Vec::with_capacity(batch);
            let mut sources: Vec<&RgbImage> = Vec::with_capacity(batch);
            for &li in &active {
                // Unfinished images keep their pixels.
                let Some(img) = live[li].img.as_ref() else {
                    continue;
                };
                for k in 0..per {
                    let pos = live[li].next[mi] + k;
                    if pos < order.len() && jobs.len() < batch {
                        jobs.push((li, order[pos]));
                        sources.push(img);
                    }
                }
            }
            // The views are cut on the pool; their order is the jobs' order.
            let views: Vec<RgbImage> = pool.install(|| {
                jobs.par_iter()
                    .zip(&sources)
                    .map(|(&(_, t), img)| {
                        zoom_view(img, transforms[t], grid.anchors, grid.crop_size, grid.fill)
                    })
                    .collect()
            });
            drop(sources);
            pixels.clear();
            for v in &views {
                pixels.extend_from_slice(&v.data);
            }
            let x = model.upload(&pixels, jobs.len(), crop)?;
            let logits = model.finish(model.start(&x, norm)?)?;
            stats.forward_passes += jobs.len() as u64;
            for (k, &(li, t)) in jobs.iter().enumerate() {
                let h = &mut live[li];
                if h.done[mi] {
                    continue; // hit earlier in this batch: later tries are not recorded
                }
                let top = masked_argmax(&logits[k * 1000..(k + 1) * 1000], &mask).unwrap_or(0);
                h.pred[mi][t] = top as u16;
                h.next[mi] += 1;
                if h.labels.contains(&(top as i64)) || h.next[mi] >= order.len() {
                    h.done[mi] = true;
                }
            }
        }
        for h in live.iter_mut().filter(|h| h.finished()) {
            h.img = None;
        }
        // Records leave in row order.
        while live.front().is_some_and(Hunt::finished) {
            let Some(h) = live.pop_front() else { break };
            for (m, pred) in planned.iter().zip(h.pred) {
                let correct = pred
                    .iter()
                    .map(|&c| c != NOT_TRIED && h.labels.contains(&(c as i64)))
                    .collect();
                writer.push(ScanRecord {
                    row: h.row,
                    id: h.id.clone(),
                    labels: h.labels.clone(),
                    image_bytes: h.image_bytes,
                    model: m.name.clone(),
                    pred,
                    correct,
                })?;
            }
        }
    }
    bar.finish_and_clear();
    if !run.commit(writer)? {
        return Ok(None);
    }
    stats.seconds = start.elapsed().as_secs_f64();
    Ok(Some(stats))
}

fn record_skip(stats: &mut ScanStats, skip: Skip) {
    tracing::warn!(
        "{} row {}: skipped ({}): {}",
        stats.origin,
        skip.row,
        skip.reason,
        skip.detail
    );
    *stats.skipped.entry(skip.reason.clone()).or_default() += 1;
    stats.skips.push(skip);
}

/// Each unit's size in forward passes and, when done, what it took: the
/// input of [`crate::cost::project_run`].
pub fn unit_progress(plan: &Plan) -> Vec<crate::cost::UnitProgress> {
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
