//! Scan stage: every image of every source through every model under every
//! zoom transform. Crops are batched across images; each (image, model)
//! becomes one [`ScanRecord`]; undecodable rows become counted skips.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::labels::masked_argmax;
use crate::models::{Classifier, ModelError, Runtime};
use crate::plan::{Plan, PlannedSource};
use crate::records::{RecordWriter, RecordsError, ScanRecord};
use crate::sources::{Skip, SourceError};
use crate::zoom::{decode_rgb, normalise_chw, zoom_views, RgbImage};

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
}

/// Per-source counts, written last: a source with stats is done.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScanStats {
    pub origin: String,
    pub rows_read: u64,
    pub images_scanned: u64,
    pub skipped: BTreeMap<String, u64>,
    pub skips: Vec<Skip>,
    pub forward_passes: u64,
    pub seconds: f64,
    pub models: Vec<String>,
    pub transforms: usize,
}

pub fn records_path(run_dir: &Path, origin: &str) -> PathBuf {
    run_dir
        .join("scan")
        .join(format!("{}.parquet", crate::util::file_stem(origin)))
}

pub fn stats_path(run_dir: &Path, origin: &str) -> PathBuf {
    run_dir
        .join("scan")
        .join(format!("{}.stats.json", crate::util::file_stem(origin)))
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

/// Scan every source of `plan` that has no stats yet. Returns each
/// source's stats and whether it was scanned now (false: done earlier).
pub fn scan(plan: &Plan, rt: &Runtime) -> Result<Vec<(ScanStats, bool)>, ScanError> {
    let models = plan
        .models
        .iter()
        .map(|m| Classifier::load(m.architecture, &m.weights, &m.extras(), rt))
        .collect::<Result<Vec<_>, _>>()?;
    let mut all = Vec::new();
    for source in &plan.sources {
        let stats = stats_path(&plan.run_dir, &source.origin);
        if let Ok(done) = crate::util::read_json::<ScanStats>(&stats) {
            tracing::info!(
                "{}: already scanned ({} images), skipping",
                source.origin,
                done.images_scanned
            );
            all.push((done, false));
            continue;
        }
        let s = scan_source(plan, source, &models)?;
        crate::util::write_json(&stats, &s).map_err(|e| ScanError::Io {
            path: stats.clone(),
            source: e,
        })?;
        tracing::info!(
            "{}: {} images scanned, {} skipped, {} forward passes in {:.1}s",
            s.origin,
            s.images_scanned,
            s.skips.len(),
            s.forward_passes,
            s.seconds
        );
        all.push((s, true));
    }
    Ok(all)
}

fn scan_source(
    plan: &Plan,
    source: &PlannedSource,
    models: &[Classifier],
) -> Result<ScanStats, ScanError> {
    let start = Instant::now();
    let grid = &plan.grid;
    let n_t = grid.len();
    let mask = source.class_subset.mask();
    let reader = source.reader();
    let mut stats = ScanStats {
        origin: source.origin.clone(),
        models: plan.model_names(),
        transforms: n_t,
        ..Default::default()
    };
    let mut writer = RecordWriter::create(&records_path(&plan.run_dir, &source.origin))?;
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut first_slot: u64 = 0; // slot number of pending[0]
    let mut queue: Vec<(u64, usize, RgbImage)> = Vec::new();
    let batch = plan.batch_size;
    let bar = crate::util::progress(reader.row_count_hint().unwrap_or(0), &source.origin);
    let crop = grid.crop_size as usize;

    let run_batch = |queue: &mut Vec<(u64, usize, RgbImage)>,
                     pending: &mut VecDeque<Pending>,
                     first_slot: u64,
                     stats: &mut ScanStats|
     -> Result<(), ScanError> {
        if queue.is_empty() {
            return Ok(());
        }
        let n = queue.len();
        let mut input = vec![0f32; n * 3 * crop * crop];
        for (mi, (m, pm)) in models.iter().zip(&plan.models).enumerate() {
            for (k, (_, _, img)) in queue.iter().enumerate() {
                let plane = 3 * crop * crop;
                normalise_chw(img, pm.mean, pm.std, &mut input[k * plane..(k + 1) * plane]);
            }
            let logits = m.logits(&input, n, crop)?;
            stats.forward_passes += n as u64;
            for (k, (slot, t, _)) in queue.iter().enumerate() {
                let top = masked_argmax(&logits[k * 1000..(k + 1) * 1000], &mask).unwrap_or(0);
                let p = &mut pending[(slot - first_slot) as usize];
                p.pred[mi][*t] = top as u16;
            }
        }
        for (slot, _, _) in queue.iter() {
            pending[(slot - first_slot) as usize].remaining -= 1;
        }
        queue.clear();
        Ok(())
    };

    let emit = |pending: &mut VecDeque<Pending>,
                first_slot: &mut u64,
                writer: &mut RecordWriter,
                all: bool|
     -> Result<(), ScanError> {
        while let Some(p) = pending.front() {
            if p.remaining > 0 && !all {
                break;
            }
            let p = pending.pop_front().expect("front exists");
            *first_slot += 1;
            for (m, pred) in plan.models.iter().zip(p.pred) {
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

    for outcome in reader.rows() {
        stats.rows_read += 1;
        bar.set_position(stats.rows_read);
        let rec = match outcome? {
            Ok(rec) => rec,
            Err(skip) => {
                record_skip(&mut stats, skip);
                continue;
            }
        };
        let img = match decode_rgb(&rec.image, plan.decode) {
            Ok(img) => img,
            Err(e) => {
                record_skip(
                    &mut stats,
                    Skip {
                        row: rec.row,
                        reason: e.reason().into(),
                        detail: e.to_string(),
                    },
                );
                continue;
            }
        };
        let slot = first_slot + pending.len() as u64;
        pending.push_back(Pending {
            row: rec.row,
            id: rec
                .path
                .clone()
                .unwrap_or_else(|| format!("{}/{}", source.origin, rec.row)),
            labels: rec.labels,
            image_bytes: rec.image.len() as u64,
            pred: vec![vec![0; n_t]; models.len()],
            remaining: n_t,
        });
        stats.images_scanned += 1;
        for (t, view) in zoom_views(&img, grid).into_iter().enumerate() {
            queue.push((slot, t, view));
            if queue.len() >= batch {
                run_batch(&mut queue, &mut pending, first_slot, &mut stats)?;
                emit(&mut pending, &mut first_slot, &mut writer, false)?;
            }
        }
    }
    run_batch(&mut queue, &mut pending, first_slot, &mut stats)?;
    emit(&mut pending, &mut first_slot, &mut writer, true)?;
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

/// Read the stats of every source; a missing one means the scan is incomplete.
pub fn read_stats(plan: &Plan) -> Result<Vec<ScanStats>, ScanError> {
    plan.sources
        .iter()
        .map(|s| {
            let path = stats_path(&plan.run_dir, &s.origin);
            crate::util::read_json(&path).map_err(|e| ScanError::Io {
                path: path.clone(),
                source: std::io::Error::new(
                    e.kind(),
                    format!(
                        "{e}; source `{}` is not scanned yet: run `imagenet-hard scan`",
                        s.origin
                    ),
                ),
            })
        })
        .collect()
}
