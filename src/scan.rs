//! Scan stage: every image of every source through every model under every
//! zoom transform, one work unit at a time. Crops are batched across images;
//! each (image, model) becomes one [`ScanRecord`]; undecodable rows become
//! counted skips. A unit writes its records under a temporary name, renames
//! them when complete, then writes its stats: a unit with stats is done and
//! is never run again, so a killed worker loses at most its current unit.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Instant;

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

/// Where a unit stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitState {
    Done,
    /// Not started, or started by a worker that is still running or was killed.
    Pending {
        partial: bool,
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
    if let Ok(error) = std::fs::read_to_string(unit_error_path(run_dir, unit)) {
        return UnitState::Failed { error };
    }
    let partial = crate::util::temp_sibling(&unit_records_path(run_dir, unit)).exists();
    UnitState::Pending { partial }
}

/// Units that are not done yet.
pub fn missing_units(plan: &Plan) -> Vec<&Unit> {
    plan.units
        .iter()
        .filter(|u| unit_state(&plan.run_dir, u) != UnitState::Done)
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

/// Run the given units of `plan` that are not done yet. A unit that fails
/// records its error and the others still run; the first error is returned
/// at the end. Returns each unit's stats and whether it ran now.
pub fn scan(
    plan: &Plan,
    rt: &Runtime,
    ids: &[usize],
    threads: usize,
) -> Result<Vec<(ScanStats, bool)>, ScanError> {
    let units: Vec<&Unit> = ids.iter().filter_map(|&i| plan.units.get(i)).collect();
    let mut all = Vec::new();
    let mut todo = Vec::new();
    for unit in units {
        let stats = unit_stats_path(&plan.run_dir, unit);
        match crate::util::read_json::<ScanStats>(&stats) {
            Ok(done) => all.push((done, false)),
            Err(_) => todo.push(unit),
        }
    }
    // Load each model once, only if a pending unit needs it.
    let mut models: Vec<Option<Classifier>> = plan.models.iter().map(|_| None).collect();
    for &mi in todo.iter().flat_map(|u| &u.models) {
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
    let mut first_error = None;
    for unit in todo {
        let error_file = unit_error_path(&plan.run_dir, unit);
        let result = match plan.scan_mode {
            ScanMode::Exhaustive => scan_unit(plan, unit, &models, threads),
            ScanMode::FirstHit => scan_unit_first_hit(plan, unit, &models, threads),
        };
        match result {
            Ok(s) => {
                let stats = unit_stats_path(&plan.run_dir, unit);
                crate::util::write_json(&stats, &s).map_err(|e| ScanError::Io {
                    path: stats.clone(),
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
                all.push((s, true));
            }
            Err(e) => {
                tracing::error!("{} ({}) failed: {e}", unit.name(), unit.origin);
                if let Some(dir) = error_file.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let _ = crate::util::write_atomic(&error_file, format!("{e}\n").as_bytes());
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(all),
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
) -> Result<ScanStats, ScanError> {
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

    feed::run(rows, grid, plan.decode, opts, |events| {
        let mut in_flight: Option<InFlight> = None;
        for event in events {
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
        Ok::<(), ScanError>(())
    })?;
    writer.finish()?;
    bar.finish_and_clear();
    stats.seconds = start.elapsed().as_secs_f64();
    Ok(stats)
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
) -> Result<ScanStats, ScanError> {
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
    loop {
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
    writer.finish()?;
    bar.finish_and_clear();
    stats.seconds = start.elapsed().as_secs_f64();
    Ok(stats)
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
