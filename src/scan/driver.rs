//! One unit's scan, whatever its strategy: its models (as planned and
//! loaded) with their normalisers, the source's class subset, the counts,
//! the progress bar and lines, the records (written one per image and model
//! in row order) and the end (records committed unless the claim was lost).

use rayon::prelude::*;
use std::time::{Duration, Instant};

use super::{unit_records_path, ScanError, ScanStats};
use crate::claim::Claim;
use crate::labels::masked_argmax;
use crate::models::{Classifier, Normaliser};
use crate::plan::{Plan, PlannedModel, PlannedSource};
use crate::records::{RecordWriter, ScanRecord};
use crate::sources::Skip;
use crate::units::Unit;
use crate::zoom::{zoom_view, RgbImage};

/// A unit being scanned.
pub(super) struct UnitScan<'a> {
    pub plan: &'a Plan,
    pub unit: &'a Unit,
    pub source: &'a PlannedSource,
    pub planned: Vec<&'a PlannedModel>,
    pub models: Vec<&'a Classifier>,
    /// Per model: its mean and std as a device-side table.
    pub norms: Vec<Normaliser>,
    /// The source's class subset: predictions are the best class inside it.
    mask: Vec<bool>,
    pub stats: ScanStats,
    writer: RecordWriter,
    bar: indicatif::ProgressBar,
    progress: Progress,
    start: Instant,
    claim: &'a Claim,
}

/// One image's outcome: per model, the top-1 class under every transform.
pub(super) struct Scanned {
    pub row: u64,
    pub id: String,
    pub labels: Vec<i64>,
    pub image_bytes: u64,
    /// `pred[model][transform]`.
    pub pred: Vec<Vec<u16>>,
}

impl<'a> UnitScan<'a> {
    pub fn new(
        plan: &'a Plan,
        unit: &'a Unit,
        loaded: &'a [Option<Classifier>],
        claim: &'a Claim,
        (progress_every, printer): (Duration, crate::printer::Printer),
    ) -> Result<UnitScan<'a>, ScanError> {
        let source = &plan.sources[unit.source];
        let planned: Vec<&PlannedModel> = unit.models.iter().map(|&i| &plan.models[i]).collect();
        let models: Vec<&Classifier> = unit
            .models
            .iter()
            .filter_map(|&i| loaded.get(i).and_then(Option::as_ref))
            .collect();
        let norms = models
            .iter()
            .zip(&planned)
            .map(|(m, pm)| m.normaliser(pm.mean, pm.std))
            .collect::<Result<Vec<_>, _>>()?;
        let label = format!("{} {}", unit.name(), source.origin);
        Ok(UnitScan {
            plan,
            unit,
            source,
            norms,
            mask: source.class_subset.mask(),
            stats: ScanStats {
                origin: source.origin.clone(),
                units: vec![unit.id],
                models: planned.iter().map(|m| m.name.clone()).collect(),
                transforms: plan.grid.len(),
                ..Default::default()
            },
            planned,
            models,
            writer: RecordWriter::create(&unit_records_path(&plan.run_dir, unit))?,
            bar: printer.progress(unit.images(), &label),
            progress: Progress::new(label, unit.images(), progress_every, printer),
            start: Instant::now(),
            claim,
        })
    }

    /// Whether to stop: another worker has taken the unit over. Also says
    /// how far the unit is, on the log's schedule.
    pub fn stopped(&mut self) -> bool {
        self.progress
            .tick(self.stats.rows_read, self.stats.forward_passes);
        self.claim.taken_over()
    }

    fn row_read(&mut self) {
        self.stats.rows_read += 1;
        self.bar.set_position(self.stats.rows_read);
    }

    /// A row read and not scanned, counted with its reason.
    pub fn skip(&mut self, skip: Skip) {
        self.row_read();
        tracing::warn!(
            "{} row {}: skipped ({}): {}",
            self.stats.origin,
            skip.row,
            skip.reason,
            skip.detail
        );
        *self.stats.skipped.entry(skip.reason.clone()).or_default() += 1;
        self.stats.skips.push(skip);
    }

    /// A row read and scanned: its outcome, every prediction `fill` until made.
    pub fn image(
        &mut self,
        row: u64,
        path: Option<String>,
        labels: Vec<i64>,
        image_bytes: u64,
        fill: u16,
    ) -> Scanned {
        self.row_read();
        self.stats.images_scanned += 1;
        Scanned {
            row,
            id: path.unwrap_or_else(|| format!("{}/{}", self.source.origin, row)),
            labels,
            image_bytes,
            pred: vec![vec![fill; self.plan.grid.len()]; self.models.len()],
        }
    }

    /// The next image of `rows` that reads and decodes, as a fresh
    /// [`Scanned`] with every transform `NOT_TRIED`, and its pixels; rows
    /// that fail become counted skips. `None` at the end of the rows.
    pub(crate) fn next_image(
        &mut self,
        rows: &mut crate::sources::Rows,
    ) -> Result<Option<(Scanned, crate::zoom::RgbImage)>, ScanError> {
        for outcome in rows.by_ref() {
            let rec = match outcome? {
                Ok(rec) => rec,
                Err(skip) => {
                    self.skip(skip);
                    continue;
                }
            };
            match crate::zoom::decode_for_zoom(&rec.image, self.plan.decode, &self.plan.grid) {
                Ok(img) => {
                    let bytes = rec.image.len() as u64;
                    let scanned =
                        self.image(rec.row, rec.path, rec.labels, bytes, super::NOT_TRIED);
                    return Ok(Some((scanned, img)));
                }
                Err(e) => self.skip(Skip {
                    row: rec.row,
                    reason: e.reason().into(),
                    detail: e.to_string(),
                }),
            }
        }
        Ok(None)
    }

    /// The top-1 class of one crop's logits inside the source's subset.
    pub fn top1(&self, logits: &[f32]) -> u16 {
        masked_argmax(logits, &self.mask).unwrap_or(0) as u16
    }

    /// Write an image's records, one per model. A transform is correct when
    /// its prediction is one of the labels (a prediction not made never is).
    pub(crate) fn emit(&mut self, s: Scanned) -> Result<(), ScanError> {
        for (m, pred) in self.planned.iter().zip(s.pred) {
            let correct = pred
                .iter()
                .map(|&c| s.labels.contains(&(c as i64)))
                .collect();
            self.writer.push(ScanRecord {
                row: s.row,
                id: s.id.clone(),
                labels: s.labels.clone(),
                image_bytes: s.image_bytes,
                model: m.name.clone(),
                pred,
                correct,
            })?;
        }
        Ok(())
    }

    /// Put the records in place (unless the scan stopped, or the claim was
    /// lost meanwhile: then nothing is written) and give the unit's stats.
    pub fn finish(self, completed: bool) -> Result<Option<ScanStats>, ScanError> {
        self.bar.finish_and_clear();
        if !completed || self.claim.lost() {
            self.writer.abandon();
            return Ok(None);
        }
        self.writer.finish()?;
        let mut stats = self.stats;
        stats.seconds = self.start.elapsed().as_secs_f64();
        Ok(Some(stats))
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
    fn new(
        label: String,
        total: u64,
        every: Duration,
        printer: crate::printer::Printer,
    ) -> Progress {
        use std::io::IsTerminal;
        let now = Instant::now();
        Progress {
            label,
            total,
            every,
            start: now,
            last: now,
            enabled: !std::io::stderr().is_terminal() && !printer.is_quiet(),
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

/// Scores zoom views cut on demand, as the first-hit and curate strategies
/// need them: the views are cut on a thread pool, go to the model as one
/// batch, and come back as each crop's top-1.
pub(crate) struct ViewScorer {
    pool: rayon::ThreadPool,
    pixels: Vec<u8>,
}

impl ViewScorer {
    pub fn new(threads: usize) -> Result<ViewScorer, ScanError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
            .map_err(|e| ScanError::Threads(e.to_string()))?;
        Ok(ViewScorer {
            pool,
            pixels: Vec::new(),
        })
    }

    /// Model `mi`'s top-1 on each `(image, transform index)` view, in order;
    /// counts the forward passes.
    pub fn top1(
        &mut self,
        scan: &mut UnitScan,
        mi: usize,
        views: &[(&RgbImage, usize)],
    ) -> Result<Vec<u16>, ScanError> {
        if views.is_empty() {
            return Ok(Vec::new());
        }
        let grid = &scan.plan.grid;
        let transforms = grid.transforms();
        let cut: Vec<RgbImage> = self.pool.install(|| {
            views
                .par_iter()
                .map(|&(img, t)| {
                    zoom_view(img, transforms[t], grid.anchors, grid.crop_size, grid.fill)
                })
                .collect()
        });
        self.pixels.clear();
        for v in &cut {
            self.pixels.extend_from_slice(&v.data);
        }
        let model = scan.models[mi];
        let x = model.upload(&self.pixels, views.len(), grid.crop_size as usize)?;
        let logits = model.finish(model.start(&x, &scan.norms[mi])?)?;
        scan.stats.forward_passes += views.len() as u64;
        Ok((0..views.len())
            .map(|k| scan.top1(&logits[k * 1000..(k + 1) * 1000]))
            .collect())
    }
}
