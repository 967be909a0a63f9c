//! Evaluation on a dataset in the ImageNet-Hard schema (ours, or the
//! released `taesiri/imagenet-hard` layout, local or on the Hub): top-1 and
//! top-5 over all 1000 classes, correct iff a prediction is any of the row's
//! labels (SPEC §2), overall and per origin; optionally under a fixed
//! test-time augmentation (SPEC §7).

pub mod augment;
pub mod dataset;
pub mod results;
pub mod tta;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::hub::HubError;
use crate::labels::{top_k, LabelConvention};
use crate::models::{Classifier, EvalPreprocess, ModelError};
use crate::sources::{Container, Source, SourceError};
use crate::zoom::{decode_rgb, normalise_chw, DecodeLimits};
use dataset::Shards;
use results::{PerSampleWriter, Sample};
use tta::{aggregate, Aggregate, Tta};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{dataset}: {message}")]
    Layout { dataset: String, message: String },
    #[error("dataset `{0}`: no such folder, and not an `owner/name` Hub dataset id; give a folder holding data/validation-*.parquet or a Hub id such as taesiri/imagenet-hard")]
    NoDataset(String),
    // The inner errors are shown in the message, not chained, so that
    // `{:#}` does not print them twice.
    #[error(
        "Hub dataset `{repo}` (DATASET is not a local folder, so it was read as a Hub id): {error}"
    )]
    Hub { repo: String, error: Box<HubError> },
    #[error("{file}: {error}")]
    Io {
        file: PathBuf,
        error: std::io::Error,
    },
    #[error("{file}: not an eval result JSON (written by `eval --json`): {message}")]
    Json { file: PathBuf, message: String },
    #[error(
        "{file}: its header `{found}` is not this tool's leaderboard header; give --csv a new file"
    )]
    CsvHeader { file: PathBuf, found: String },
    #[error("{first} and {second} hold results of the same model, dataset, revision, tta and aggregate; merge only one of them")]
    DuplicateResult { first: PathBuf, second: PathBuf },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Score {
    pub images: u64,
    pub top1_correct: u64,
    pub top5_correct: u64,
    pub top1: f64,
    pub top5: f64,
}

impl Score {
    fn add(&mut self, top1: bool, top5: bool) {
        self.images += 1;
        self.top1_correct += top1 as u64;
        self.top5_correct += top5 as u64;
        self.top1 = self.top1_correct as f64 / self.images as f64;
        self.top5 = self.top5_correct as f64 / self.images as f64;
    }
}

/// How a run was made (defaults read results written before it existed).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct EvalConfig {
    pub tta: Tta,
    /// `None` without TTA (one view, nothing to pool).
    pub aggregate: Option<Aggregate>,
    pub limit: Option<u64>,
    /// Crops per forward pass.
    pub batch_size: usize,
    pub views_per_image: usize,
    /// Side of the views fed to the model.
    pub crop_size: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    pub tool_version: String,
    pub model: String,
    pub model_provenance: String,
    /// The folder, or the Hub dataset id.
    pub dataset: String,
    /// The Hub commit read; `null` for a local folder.
    #[serde(default)]
    pub dataset_revision: Option<String>,
    pub files: Vec<String>,
    #[serde(default)]
    pub config: EvalConfig,
    /// The model's own evaluation view (TTA groups build theirs, see `config`).
    pub preprocess: EvalPreprocess,
    pub overall: Score,
    pub per_origin: BTreeMap<String, Score>,
    pub skipped: BTreeMap<String, u64>,
}

/// What to run besides the model and the data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOptions {
    pub tta: Tta,
    pub aggregate: Aggregate,
    /// Crops per forward pass (an image's views may span several passes).
    pub batch_size: usize,
    /// Take N rows spread evenly over the dataset.
    pub limit: Option<u64>,
}

/// An image whose views wait in the batch.
struct Pending {
    id: String,
    origin: String,
    labels: Vec<i64>,
    views: usize,
}

/// Logits of `n` crops, run `batch` crops at a time.
fn logits_in_batches(
    model: &Classifier,
    input: &[f32],
    n: usize,
    size: usize,
    batch: usize,
) -> Result<Vec<f32>, ModelError> {
    let plane = 3 * size * size;
    let mut out = Vec::new();
    for start in (0..n).step_by(batch.max(1)) {
        let count = batch.max(1).min(n - start);
        let chunk = &input[start * plane..(start + count) * plane];
        out.extend(model.logits(chunk, count, size)?);
    }
    Ok(out)
}

/// Run `model` (named `model_name`, from `model_provenance`, with its
/// evaluation view `pre`) over `shards`; each scored image also goes to
/// `per_sample`, in dataset order.
pub fn evaluate(
    model: &Classifier,
    model_name: &str,
    model_provenance: &str,
    pre: EvalPreprocess,
    shards: &Shards,
    opts: &EvalOptions,
    mut per_sample: Option<&mut PerSampleWriter>,
) -> Result<EvalReport, EvalError> {
    let source = Source {
        container: Container::Parquet {
            files: shards.files.clone(),
            image_column: "image".into(),
            label_column: "label".into(),
            origin_column: Some("origin".into()),
        },
        labels: LabelConvention::Imagenet1kIndex,
        limit: opts.limit,
    };
    let batch = opts.batch_size.max(1);
    let crop = opts.tta.crop_size(&pre) as usize;
    let mut report = EvalReport {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        model: model_name.into(),
        model_provenance: model_provenance.into(),
        dataset: shards.dataset.clone(),
        dataset_revision: shards.revision.clone(),
        files: shards.names.clone(),
        config: EvalConfig {
            tta: opts.tta,
            aggregate: (opts.tta != Tta::None).then_some(opts.aggregate),
            limit: opts.limit,
            batch_size: batch,
            views_per_image: opts.tta.views_per_image(),
            crop_size: crop as u32,
        },
        preprocess: pre,
        overall: Score::default(),
        per_origin: BTreeMap::new(),
        skipped: BTreeMap::new(),
    };
    let plane = 3 * crop * crop;
    let mut input: Vec<f32> = Vec::with_capacity(batch * plane);
    let mut pending: Vec<Pending> = Vec::new();
    let bar = crate::util::progress(source.row_count_hint().unwrap_or(0), "eval");
    let mut flush = |input: &mut Vec<f32>,
                     pending: &mut Vec<Pending>,
                     report: &mut EvalReport|
     -> Result<(), EvalError> {
        let n: usize = pending.iter().map(|p| p.views).sum();
        if n == 0 {
            return Ok(());
        }
        let logits = logits_in_batches(model, input, n, crop, batch)?;
        let classes = logits.len() / n;
        let mut offset = 0;
        for p in pending.drain(..) {
            let own = &logits[offset * classes..(offset + p.views) * classes];
            offset += p.views;
            // Without TTA the logits rank the classes themselves.
            let scores = if opts.tta == Tta::None {
                own.to_vec()
            } else {
                let views: Vec<&[f32]> = own.chunks_exact(classes).collect();
                aggregate(&views, opts.aggregate)
            };
            let top5 = top_k(&scores, 5);
            let hit1 = top5
                .first()
                .is_some_and(|&c| p.labels.contains(&(c as i64)));
            let hit5 = top5.iter().any(|&c| p.labels.contains(&(c as i64)));
            report.overall.add(hit1, hit5);
            report
                .per_origin
                .entry(p.origin.clone())
                .or_default()
                .add(hit1, hit5);
            if let Some(w) = per_sample.as_deref_mut() {
                w.write(&Sample {
                    id: p.id,
                    origin: p.origin,
                    labels: p.labels,
                    prediction: top5.first().copied().unwrap_or(0),
                    correct: hit1,
                    top5,
                })?;
            }
            bar.inc(1);
        }
        input.clear();
        Ok(())
    };
    for outcome in source.rows() {
        let rec = match outcome? {
            Ok(r) => r,
            Err(skip) => {
                *report.skipped.entry(skip.reason).or_default() += 1;
                continue;
            }
        };
        let img = match decode_rgb(&rec.image, DecodeLimits::default()) {
            Ok(i) => i,
            Err(e) => {
                *report.skipped.entry(e.reason().into()).or_default() += 1;
                continue;
            }
        };
        let views = opts.tta.views(&img, &pre);
        for view in &views {
            let start = input.len();
            input.resize(start + plane, 0.0);
            normalise_chw(view, pre.mean, pre.std, &mut input[start..]);
        }
        let origin = rec.origin.unwrap_or_else(|| "unknown".into());
        pending.push(Pending {
            id: rec
                .path
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| format!("{origin}/{}", rec.row)),
            origin,
            labels: rec.labels,
            views: views.len(),
        });
        if input.len() >= batch * plane {
            flush(&mut input, &mut pending, &mut report)?;
        }
    }
    flush(&mut input, &mut pending, &mut report)?;
    bar.finish_and_clear();
    Ok(report)
}

impl EvalReport {
    /// Human table: overall and per origin, percent.
    pub fn table(&self) -> String {
        let view = match self.config.aggregate {
            Some(how) => format!(
                "tta {}, {} views, aggregate {}",
                self.config.tta.name(),
                self.config.views_per_image,
                how.name()
            ),
            None => "the model's view".into(),
        };
        let revision = self
            .dataset_revision
            .as_ref()
            .map(|r| format!("@{r}"))
            .unwrap_or_default();
        let mut out = format!(
            "model {} on {}{revision} ({view})\n\n| origin | images | top-1 % | top-5 % |\n|---|---:|---:|---:|\n",
            self.model, self.dataset
        );
        for (origin, s) in &self.per_origin {
            out.push_str(&format!(
                "| {origin} | {} | {:.2} | {:.2} |\n",
                s.images,
                100.0 * s.top1,
                100.0 * s.top5
            ));
        }
        let o = &self.overall;
        out.push_str(&format!(
            "| **all** | {} | {:.2} | {:.2} |\n",
            o.images,
            100.0 * o.top1,
            100.0 * o.top5
        ));
        if !self.skipped.is_empty() {
            out.push_str(&format!("\nskipped: {:?}\n", self.skipped));
        }
        out
    }
}
