//! Evaluation on a dataset in the ImageNet-Hard schema (ours, or the
//! released `taesiri/imagenet-hard` layout, local or on the Hub): top-1 and
//! top-5 over all 1000 classes, correct iff a prediction is any of the row's
//! labels (protocol §2), overall and per origin; optionally under a fixed
//! test-time augmentation (protocol §7).

pub mod augment;
pub mod dataset;
pub mod results;
pub mod tta;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::hub::HubError;
use crate::labels::{top_k, ClassSubset, LabelConvention};
use crate::models::adapt::{AdaptResNet, MemoStep};
use crate::models::{Classifier, EvalPreprocess, ModelError};
use crate::sources::{Container, Source, SourceError};
use crate::zoom::{decode_rgb, normalise_chw, DecodeLimits};
use augment::MemoViews;
use dataset::Shards;
use results::{PerSampleWriter, Sample};
use std::time::Instant;
use tta::{aggregate, Aggregate, Tta};

impl From<SourceError> for EvalError {
    fn from(e: SourceError) -> EvalError {
        EvalError::Shards(e.into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The dataset's shards: their errors name the schema, not manifest keys.
    #[error(transparent)]
    Shards(#[from] dataset::ShardError),
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
    #[error("{0}")]
    Setup(String),
    #[error("{first} and {second} hold results of the same model, dataset, revision, tta and aggregate; merge only one of them")]
    DuplicateResult { first: PathBuf, second: PathBuf },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct Score {
    pub images: u64,
    pub top1_correct: u64,
    pub top5_correct: u64,
    pub top1: f64,
    pub top5: f64,
    /// Wall-clock seconds spent on these images (decode, views, model; a
    /// batch's model time is shared out by views).
    pub seconds: f64,
    pub seconds_per_image: f64,
}

impl Score {
    fn add(&mut self, top1: bool, top5: bool, seconds: f64) {
        self.images += 1;
        self.top1_correct += top1 as u64;
        self.top5_correct += top5 as u64;
        self.seconds += seconds;
        self.top1 = self.top1_correct as f64 / self.images as f64;
        self.top5 = self.top5_correct as f64 / self.images as f64;
        self.seconds_per_image = self.seconds / self.images as f64;
    }
}

/// How a run was made (defaults read results written before it existed).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub(crate) struct EvalConfig {
    pub tta: Tta,
    /// `None` without TTA (one view, nothing to pool).
    pub aggregate: Option<Aggregate>,
    pub limit: Option<u64>,
    /// Crops per forward pass.
    pub batch_size: usize,
    pub views_per_image: usize,
    /// Side of the views fed to the model.
    pub crop_size: u32,
    /// MEMO's settings; `None` for the other modes.
    pub memo: Option<MemoConfig>,
    /// Whether predictions (and MEMO's loss) were restricted to the class
    /// subset of the row's origin (protocol §2's zoom-study rule).
    pub subset_by_origin: bool,
    /// The number format the model computed in (`--dtype`).
    pub precision: crate::models::Precision,
}

/// How a MEMO run adapts (protocol §7).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub(crate) struct MemoConfig {
    /// Random views per image.
    pub views: usize,
    pub seed: u64,
    pub prior_strength: f64,
    pub lr: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct EvalReport {
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
pub(crate) struct EvalOptions {
    pub tta: Tta,
    pub aggregate: Aggregate,
    /// Crops per forward pass (an image's views may span several passes).
    pub batch_size: usize,
    /// Take N rows spread evenly over the dataset.
    pub limit: Option<u64>,
    /// Restrict predictions to the class subset of the row's origin.
    pub subset_by_origin: bool,
}

/// What scores the images: a fixed classifier, or (MEMO) a ResNet adapted
/// per image.
#[derive(Clone, Copy)]
pub(crate) enum Predictor<'a> {
    Fixed(&'a Classifier),
    Memo {
        net: &'a AdaptResNet,
        config: MemoConfig,
    },
}

/// An image whose views wait in the batch.
struct Pending {
    id: String,
    origin: String,
    labels: Vec<i64>,
    views: usize,
    /// Seconds spent before the model (decode, views).
    seconds: f64,
}

/// The class subset an origin's images are scored over with
/// `--subset-by-origin`: ImageNet-A, ImageNet-R and ObjectNet by name
/// (`imagenet-a`, `imagenet_a`, any case), all 1000 classes otherwise.
pub(crate) fn origin_subset(origin: &str) -> ClassSubset {
    let name = origin.to_ascii_lowercase().replace('_', "-");
    [
        ClassSubset::ImagenetA,
        ClassSubset::ImagenetR,
        ClassSubset::Objectnet,
    ]
    .into_iter()
    .find(|s| s.name() == name)
    .unwrap_or(ClassSubset::Imagenet1k)
}

/// Scores outside `subset` pushed below every class inside it.
fn restrict(mut scores: Vec<f32>, subset: ClassSubset) -> Vec<f32> {
    if subset != ClassSubset::Imagenet1k {
        for (s, keep) in scores.iter_mut().zip(subset.mask()) {
            if !keep {
                *s = f32::NEG_INFINITY;
            }
        }
    }
    scores
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

/// The MEMO settings a predictor and options call for, or why they do not
/// fit: an adaptable model needs a MEMO view set and a MEMO-sized crop, and
/// a MEMO view set needs an adaptable model.
fn memo_setup(
    predictor: &Predictor,
    opts: &EvalOptions,
    crop: usize,
) -> Result<Option<MemoConfig>, EvalError> {
    match predictor {
        Predictor::Memo { config, .. } => {
            if !opts.tta.is_memo() {
                return Err(EvalError::Setup(format!(
                    "an adaptable model needs --tta memo-zoom or memo-augmix, not {}",
                    opts.tta.name()
                )));
            }
            if crop != augment::VIEW_SIZE as usize {
                return Err(EvalError::Setup(format!(
                    "MEMO predicts a {0}x{0} crop, but the model's view is {crop}x{crop}",
                    augment::VIEW_SIZE
                )));
            }
            Ok(Some(*config))
        }
        Predictor::Fixed(_) if opts.tta.is_memo() => Err(EvalError::Setup(format!(
            "--tta {} adapts the model per image; it needs a ResNet loaded for adaptation",
            opts.tta.name()
        ))),
        Predictor::Fixed(_) => Ok(None),
    }
}

/// The shards read as a source: the image, label and origin columns.
pub(crate) fn shards_source(shards: &Shards, limit: Option<u64>) -> Source {
    Source {
        container: Container::Parquet {
            files: shards.files.clone(),
            image_column: "image".into(),
            label_column: "label".into(),
            origin_column: Some("origin".into()),
        },
        labels: LabelConvention::Imagenet1kIndex,
        limit,
    }
}

/// One evaluation in progress: the report so far, the crops waiting for a
/// forward pass and their images.
struct Run<'a, 'w> {
    report: EvalReport,
    per_sample: Option<&'w mut PerSampleWriter>,
    opts: &'a EvalOptions,
    pre: EvalPreprocess,
    crop: usize,
    batch: usize,
    /// Views are pooled into one score (TTA other than none and MEMO).
    pools: bool,
    input: Vec<f32>,
    pending: Vec<Pending>,
    bar: indicatif::ProgressBar,
}

impl Run<'_, '_> {
    fn plane(&self) -> usize {
        3 * self.crop * self.crop
    }

    /// The classes an origin's images are scored over.
    fn subset_of(&self, origin: &str) -> ClassSubset {
        if self.opts.subset_by_origin {
            origin_subset(origin)
        } else {
            ClassSubset::Imagenet1k
        }
    }

    /// Score one image from its class scores.
    fn record(&mut self, p: Pending, scores: Vec<f32>, seconds: f64) -> Result<(), EvalError> {
        let top5 = top_k(&restrict(scores, self.subset_of(&p.origin)), 5);
        let hit1 = top5
            .first()
            .is_some_and(|&c| p.labels.contains(&(c as i64)));
        let hit5 = top5.iter().any(|&c| p.labels.contains(&(c as i64)));
        self.report.overall.add(hit1, hit5, seconds);
        self.report
            .per_origin
            .entry(p.origin.clone())
            .or_default()
            .add(hit1, hit5, seconds);
        self.bar.inc(1);
        match self.per_sample.as_deref_mut() {
            Some(w) => w.write(&Sample {
                id: p.id,
                origin: p.origin,
                labels: p.labels,
                prediction: top5.first().copied().unwrap_or(0),
                correct: hit1,
                top5,
            }),
            None => Ok(()),
        }
    }

    /// Queue an image's views; run the model once a batch is full.
    fn push(
        &mut self,
        model: &Classifier,
        mut p: Pending,
        views: &[crate::zoom::RgbImage],
        started: Instant,
    ) -> Result<(), EvalError> {
        let plane = self.plane();
        for view in views {
            let start = self.input.len();
            self.input.resize(start + plane, 0.0);
            normalise_chw(view, self.pre.mean, self.pre.std, &mut self.input[start..]);
        }
        p.views = views.len();
        p.seconds = started.elapsed().as_secs_f64();
        self.pending.push(p);
        if self.input.len() >= self.batch * plane {
            self.flush(model)?;
        }
        Ok(())
    }

    /// Run the model on the queued views and score their images.
    fn flush(&mut self, model: &Classifier) -> Result<(), EvalError> {
        let n: usize = self.pending.iter().map(|p| p.views).sum();
        if n == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let logits = logits_in_batches(model, &self.input, n, self.crop, self.batch)?;
        let per_view = started.elapsed().as_secs_f64() / n as f64;
        let classes = logits.len() / n;
        let mut offset = 0;
        for p in std::mem::take(&mut self.pending) {
            let own = &logits[offset * classes..(offset + p.views) * classes];
            offset += p.views;
            // Without TTA the logits rank the classes themselves.
            let scores = if self.pools {
                let views: Vec<&[f32]> = own.chunks_exact(classes).collect();
                aggregate(&views, self.opts.aggregate)
            } else {
                own.to_vec()
            };
            let seconds = p.seconds + per_view * p.views as f64;
            self.record(p, scores, seconds)?;
        }
        self.input.clear();
        Ok(())
    }

    /// One MEMO episode: adapt on the image's augmented views, predict its
    /// test view, score it.
    #[allow(clippy::too_many_arguments)]
    fn memo(
        &mut self,
        net: &AdaptResNet,
        cfg: MemoConfig,
        img: &crate::zoom::RgbImage,
        test_view: &crate::zoom::RgbImage,
        index: usize,
        mut p: Pending,
        started: Instant,
    ) -> Result<(), EvalError> {
        let kind = match self.opts.tta {
            Tta::MemoAugmix => MemoViews::AugMix,
            _ => MemoViews::Zoom,
        };
        let (mean, std) = (self.pre.mean, self.pre.std);
        let mut rng = augment::Rng::for_image(cfg.seed, index as u64);
        let views = augment::memo_views(kind, img, cfg.views, &mut rng, mean, std);
        let mut test = vec![0f32; self.plane()];
        normalise_chw(test_view, mean, std, &mut test);
        let classes: Option<Vec<u32>> = match self.subset_of(&p.origin) {
            ClassSubset::Imagenet1k => None,
            s => Some(s.indices().into_iter().map(|i| i as u32).collect()),
        };
        let step = MemoStep {
            prior_strength: cfg.prior_strength,
            lr: cfg.lr,
        };
        let episode = net.memo_episode(&views, &test, self.crop, classes.as_deref(), step)?;
        p.views = 1;
        let seconds = started.elapsed().as_secs_f64();
        self.record(p, episode.logits, seconds)
    }
}

/// The report's header and empty scores for one evaluation.
fn empty_report(
    (model_name, model_provenance): (&str, &str),
    pre: EvalPreprocess,
    shards: &Shards,
    config: EvalConfig,
) -> EvalReport {
    EvalReport {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        model: model_name.into(),
        model_provenance: model_provenance.into(),
        dataset: shards.dataset.clone(),
        dataset_revision: shards.revision.clone(),
        files: shards.names.clone(),
        config,
        preprocess: pre,
        overall: Score::default(),
        per_origin: BTreeMap::new(),
        skipped: BTreeMap::new(),
    }
}

/// Run `predictor` (named `model_name`, from `model_provenance`, with its
/// evaluation view `pre`) over `shards`; each scored image also goes to
/// `per_sample`, in dataset order.
pub(crate) fn evaluate(
    predictor: Predictor,
    model_name: &str,
    model_provenance: &str,
    pre: EvalPreprocess,
    shards: &Shards,
    opts: &EvalOptions,
    per_sample: Option<&mut PerSampleWriter>,
) -> Result<EvalReport, EvalError> {
    let source = shards_source(shards, opts.limit);
    let batch = opts.batch_size.max(1);
    let crop = opts.tta.crop_size(&pre) as usize;
    let memo = memo_setup(&predictor, opts, crop)?;
    let pools = opts.tta != Tta::None && !opts.tta.is_memo();
    let config = EvalConfig {
        tta: opts.tta,
        aggregate: pools.then_some(opts.aggregate),
        limit: opts.limit,
        batch_size: batch,
        views_per_image: memo.map_or(opts.tta.views_per_image(), |m| m.views),
        crop_size: crop as u32,
        memo,
        subset_by_origin: opts.subset_by_origin,
        precision: match &predictor {
            Predictor::Fixed(c) => c.precision(),
            Predictor::Memo { .. } => crate::models::Precision::F32,
        },
    };
    let report = empty_report((model_name, model_provenance), pre, shards, config);
    let mut run = Run {
        report,
        per_sample,
        opts,
        pre,
        crop,
        batch,
        pools,
        input: Vec::with_capacity(batch * 3 * crop * crop),
        pending: Vec::new(),
        bar: crate::util::progress(source.row_count_hint().unwrap_or(0), "eval"),
    };
    for (index, outcome) in source.rows().enumerate() {
        let started = Instant::now();
        let rec = match outcome? {
            Ok(r) => r,
            Err(skip) => {
                *run.report.skipped.entry(skip.reason).or_default() += 1;
                continue;
            }
        };
        let img = match decode_rgb(&rec.image, DecodeLimits::default()) {
            Ok(i) => i,
            Err(e) => {
                *run.report.skipped.entry(e.reason().into()).or_default() += 1;
                continue;
            }
        };
        let origin = rec.origin.unwrap_or_else(|| "unknown".into());
        let p = Pending {
            id: rec
                .path
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| format!("{origin}/{}", rec.row)),
            origin,
            labels: rec.labels,
            views: 0,
            seconds: 0.0,
        };
        let test_view = opts.tta.views(&img, &pre);
        match predictor {
            Predictor::Memo { net, config } => {
                run.memo(net, config, &img, &test_view[0], index, p, started)?
            }
            Predictor::Fixed(model) => run.push(model, p, &test_view, started)?,
        }
    }
    if let Predictor::Fixed(model) = predictor {
        run.flush(model)?;
    }
    run.bar.finish_and_clear();
    Ok(run.report)
}

impl EvalReport {
    /// Human table: overall and per origin, percent.
    pub fn table(&self) -> String {
        let view = match (self.config.memo, self.config.aggregate) {
            (Some(m), _) => format!(
                "{}: one SGD step (lr {}) per image on {} views, BatchNorm prior {}, then the model's view",
                self.config.tta.name(),
                m.lr,
                m.views,
                m.prior_strength
            ),
            (None, Some(how)) => format!(
                "tta {}, {} views, aggregate {}",
                self.config.tta.name(),
                self.config.views_per_image,
                how.name()
            ),
            (None, None) => "the model's view".into(),
        };
        let view = match self.config.precision {
            crate::models::Precision::F32 => view,
            p => format!("{view}, in {p}"),
        };
        let revision = self
            .dataset_revision
            .as_ref()
            .map(|r| format!("@{r}"))
            .unwrap_or_default();
        let mut out = format!(
            "model {} on {}{revision} ({view})\n\n| origin | images | top-1 % | top-5 % | s/image |\n|---|---:|---:|---:|---:|\n",
            self.model, self.dataset
        );
        let line = |name: &str, s: &Score| {
            format!(
                "| {name} | {} | {:.2} | {:.2} | {:.3} |\n",
                s.images,
                100.0 * s.top1,
                100.0 * s.top5,
                s.seconds_per_image
            )
        };
        for (origin, s) in &self.per_origin {
            out.push_str(&line(origin, s));
        }
        out.push_str(&line("**all**", &self.overall));
        if !self.skipped.is_empty() {
            out.push_str(&format!("\nskipped: {:?}\n", self.skipped));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_name_their_class_subset() {
        assert_eq!(origin_subset("imagenet-a"), ClassSubset::ImagenetA);
        assert_eq!(origin_subset("ImageNet_R"), ClassSubset::ImagenetR);
        assert_eq!(origin_subset("objectnet"), ClassSubset::Objectnet);
        assert_eq!(origin_subset("imagenet-sketch"), ClassSubset::Imagenet1k);
        assert_eq!(origin_subset("imagenet-a-ish"), ClassSubset::Imagenet1k);
    }

    #[test]
    fn restricting_keeps_the_best_class_inside_the_subset() {
        // Class 0 is not an ImageNet-A class; class 6 (the first one) is.
        let mut scores = vec![0.0f32; 1000];
        scores[0] = 9.0;
        scores[6] = 1.0;
        assert_eq!(
            top_k(&restrict(scores.clone(), ClassSubset::Imagenet1k), 1),
            [0]
        );
        let only_a = restrict(scores, ClassSubset::ImagenetA);
        assert_eq!(top_k(&only_a, 1), [6]);
        assert_eq!(only_a[0], f32::NEG_INFINITY);
    }
}
