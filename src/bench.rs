//! `imagenet-hard bench`: throughput of the scan and of its halves on a
//! folder of images, for `scripts/bench.py` and `scripts/gpu_bench.py` to
//! set beside their PyTorch peers: preprocessing on one thread (decode once,
//! resize once per scale, cut every crop, normalise), the feed on N threads,
//! the model alone (forward passes on batches of crops), and the two
//! together as the scan runs them. Each is run `rounds` times and the
//! median reported.

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::feed::{self, Event, FeedOptions};
use crate::models::{Classifier, ModelError};
use crate::zoom::{
    decode_rgb, normalise_chw, zoom_views, DecodeLimits, ZoomGrid, IMAGENET_MEAN, IMAGENET_STD,
};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Decode(PathBuf, crate::zoom::DecodeError),
    #[error("{0}: no .jpg/.jpeg/.png images")]
    Empty(PathBuf),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Source(String),
}

/// One of the things `bench` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Measure {
    Preprocessing,
    Feed,
    Model,
    EndToEnd,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub images: usize,
    pub crops: usize,
    /// Median over rounds.
    pub seconds: f64,
    pub images_per_s: f64,
    pub crops_per_s: f64,
    pub rounds: Vec<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn throughput(images: usize, crops: usize, rounds: Vec<f64>) -> Throughput {
    let seconds = median(rounds.clone());
    Throughput {
        images,
        crops,
        seconds,
        images_per_s: images as f64 / seconds.max(1e-12),
        crops_per_s: crops as f64 / seconds.max(1e-12),
        rounds,
    }
}

/// The encoded images of a folder, sorted by name.
pub(crate) fn read_images(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, BenchError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| BenchError::Io(dir.into(), e))?;
    for e in entries {
        let p = e.map_err(|e| BenchError::Io(dir.into(), e))?.path();
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        if ["jpg", "jpeg", "png"].contains(&ext.as_str()) {
            let bytes = std::fs::read(&p).map_err(|e| BenchError::Io(p.clone(), e))?;
            out.push((p, bytes));
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(BenchError::Empty(dir.into()));
    }
    Ok(out)
}

/// Run `once` `rounds` times (at least once), timing each run.
fn timed(
    rounds: usize,
    mut once: impl FnMut() -> Result<(), BenchError>,
) -> Result<Vec<f64>, BenchError> {
    let mut times = Vec::with_capacity(rounds.max(1));
    for _ in 0..rounds.max(1) {
        let start = Instant::now();
        once()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(times)
}

/// Decode every image once and cut all its zoom views, normalised.
pub fn preprocessing(
    images: &[(PathBuf, Vec<u8>)],
    grid: &ZoomGrid,
    rounds: usize,
) -> Result<Throughput, BenchError> {
    let crop = grid.crop_size as usize;
    let mut buf = vec![0f32; 3 * crop * crop];
    let times = timed(rounds, || {
        for (path, bytes) in images {
            let img = decode_rgb(bytes, DecodeLimits::default())
                .map_err(|e| BenchError::Decode(path.clone(), e))?;
            for view in zoom_views(&img, grid) {
                normalise_chw(&view, IMAGENET_MEAN, IMAGENET_STD, &mut buf);
            }
        }
        Ok(())
    })?;
    Ok(throughput(images.len(), images.len() * grid.len(), times))
}

/// The images as a source's rows (labels are not used).
fn as_rows(
    images: &[(PathBuf, Vec<u8>)],
) -> impl Iterator<Item = Result<crate::sources::RowOutcome, crate::sources::SourceError>> + Send + '_
{
    images.iter().enumerate().map(|(i, (path, bytes))| {
        Ok(Ok(crate::sources::SourceRecord {
            row: i as u64,
            path: Some(path.display().to_string()),
            image: bytes.clone(),
            labels: vec![0],
            origin: None,
        }))
    })
}

/// The scan's feed alone on `threads` threads: decode every image once
/// and cut all its zoom views into batches of 8-bit crops.
pub(crate) fn feed_only(
    images: &[(PathBuf, Vec<u8>)],
    grid: &ZoomGrid,
    threads: usize,
    batch: usize,
    rounds: usize,
) -> Result<Throughput, BenchError> {
    let times = timed(rounds, || {
        feed_rounds(images, grid, threads, batch, |_| Ok(()))
    })?;
    Ok(throughput(images.len(), images.len() * grid.len(), times))
}

/// The scan's path end to end without the records: the feed on `threads`
/// threads, crops uploaded as bytes, normalised and classified on the
/// model's device, logits read back one batch behind.
pub fn end_to_end(
    model: &Classifier,
    images: &[(PathBuf, Vec<u8>)],
    grid: &ZoomGrid,
    threads: usize,
    batch: usize,
    rounds: usize,
) -> Result<Throughput, BenchError> {
    let norm = model.normaliser(IMAGENET_MEAN, IMAGENET_STD)?;
    let crop = grid.crop_size as usize;
    let times = timed(rounds, || {
        let mut in_flight = None;
        feed_rounds(images, grid, threads, batch, |b| {
            let x = model.upload(&b.pixels, b.len(), crop)?;
            if let Some(done) = in_flight.replace(model.start(&x, &norm)?) {
                model.finish(done)?;
            }
            Ok(())
        })?;
        if let Some(done) = in_flight {
            model.finish(done)?;
        }
        Ok(())
    })?;
    Ok(throughput(images.len(), images.len() * grid.len(), times))
}

/// One pass of the feed over `images`, each batch handed to `each`.
fn feed_rounds(
    images: &[(PathBuf, Vec<u8>)],
    grid: &ZoomGrid,
    threads: usize,
    batch: usize,
    mut each: impl FnMut(&crate::feed::CropBatch) -> Result<(), BenchError>,
) -> Result<(), BenchError> {
    feed::run(
        as_rows(images),
        grid,
        DecodeLimits::default(),
        FeedOptions::new(threads, batch),
        |events| {
            for e in events {
                if let Event::Batch(b) = e.map_err(|e| BenchError::Source(e.to_string()))? {
                    each(&b)?;
                }
            }
            Ok(())
        },
    )
}

/// The model alone as the scan runs it, `batches` batches of `batch` crops
/// of `crop` px per round: crops already on the device as bytes,
/// normalised there, logits read back one batch behind.
pub fn model_only(
    model: &Classifier,
    batch: usize,
    crop: usize,
    batches: usize,
    rounds: usize,
) -> Result<Throughput, BenchError> {
    let mut rng = crate::models::synthetic::SplitMix64(3);
    let pixels: Vec<u8> = (0..batch * crop * crop * 3)
        .map(|_| (rng.next_u64() >> 56) as u8)
        .collect();
    let x = model.upload(&pixels, batch, crop)?;
    let norm = model.normaliser(IMAGENET_MEAN, IMAGENET_STD)?;
    model.finish(model.start(&x, &norm)?)?; // warm-up
    let times = timed(rounds, || {
        let mut in_flight = None;
        for _ in 0..batches.max(1) {
            if let Some(done) = in_flight.replace(model.start(&x, &norm)?) {
                model.finish(done)?;
            }
        }
        if let Some(done) = in_flight {
            model.finish(done)?;
        }
        Ok(())
    })?;
    let crops = batch * batches.max(1);
    Ok(throughput(crops, crops, times))
}

/// What `bench` times, and how.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub measure: Vec<Measure>,
    /// Threads of the feed.
    pub threads: usize,
    pub batch_size: usize,
    /// Forward passes per round of the model-only measurement.
    pub batches: usize,
    pub rounds: usize,
}

/// Everything `bench` measured; `None` where not asked.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub tool_version: &'static str,
    pub model: String,
    pub architecture: String,
    pub batch_size: usize,
    pub dtype: crate::models::Precision,
    pub device: String,
    /// The kernels the model ran on: `cudnn` (channels-last on a GPU),
    /// `fused` (channels-last on the CPU) or `candle`.
    pub kernels: &'static str,
    pub threads: usize,
    pub preprocessing: Option<Throughput>,
    pub feed_1_thread: Option<Throughput>,
    pub feed: Option<Throughput>,
    /// The feed on `threads` threads over the feed on one.
    pub feed_scaling: Option<f64>,
    pub model_only: Option<Throughput>,
    pub end_to_end: Option<Throughput>,
    /// `--parity`: the logits against other kernels on the same crops.
    pub parity: Option<Parity>,
}

/// How far one model's logits are from another run of the same weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    /// max |ours - theirs| / max |theirs|.
    pub max_rel: f32,
    /// Crops whose top-1 class is the same.
    pub top1_agree: usize,
}

impl Agreement {
    /// Logits `ours` against `theirs`, `classes` per crop. A value that is
    /// not finite makes `max_rel` infinite.
    pub fn of(ours: &[f32], theirs: &[f32], classes: usize) -> Agreement {
        let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        let mut worst = 0f32;
        for (a, b) in ours.iter().zip(theirs) {
            let d = (a - b).abs();
            worst = if d.is_finite() {
                worst.max(d)
            } else {
                f32::INFINITY
            };
        }
        if ours.len() != theirs.len() {
            worst = f32::INFINITY;
        }
        let top1 = |row: &[f32]| {
            (0..row.len())
                .max_by(|&i, &j| row[i].total_cmp(&row[j]))
                .unwrap_or(0)
        };
        let top1_agree = ours
            .chunks(classes.max(1))
            .zip(theirs.chunks(classes.max(1)))
            .filter(|(a, b)| top1(a) == top1(b))
            .count();
        Agreement {
            max_rel: worst / scale,
            top1_agree,
        }
    }
}

/// `bench --parity`: one batch of generated crops through the model, the
/// CPU in f32 with candle's kernels, and (on the cuDNN path) candle's
/// kernels on the same device.
#[derive(Debug, Clone, Serialize)]
pub struct Parity {
    pub crops: usize,
    pub against_cpu_f32: Agreement,
    pub against_candle: Option<Agreement>,
}

/// Run `crops` generated 224 px crops (seeded bytes) through `model`, the
/// CPU reference `cpu` and, if given, `candle` on the model's device.
pub fn parity(
    model: &Classifier,
    cpu: &Classifier,
    candle: Option<&Classifier>,
    crops: usize,
) -> Result<Parity, ModelError> {
    const SIZE: usize = 224;
    let mut rng = crate::util::SplitMix64(2024);
    let pixels: Vec<u8> = (0..crops * SIZE * SIZE * 3)
        .map(|_| (rng.next_u64() >> 56) as u8)
        .collect();
    let logits = |c: &Classifier| -> Result<Vec<f32>, ModelError> {
        let norm = c.normaliser(crate::zoom::IMAGENET_MEAN, crate::zoom::IMAGENET_STD)?;
        let x = c.upload(&pixels, crops, SIZE)?;
        c.finish(c.start(&x, &norm)?)
    };
    let ours = logits(model)?;
    let classes = ours.len() / crops.max(1);
    Ok(Parity {
        crops,
        against_cpu_f32: Agreement::of(&ours, &logits(cpu)?, classes),
        against_candle: match candle {
            Some(c) => Some(Agreement::of(&ours, &logits(c)?, classes)),
            None => None,
        },
    })
}

/// Time what `opts` names for `model` (called `name`) on `images`.
pub fn run(
    model: &Classifier,
    name: &str,
    images: &[(PathBuf, Vec<u8>)],
    opts: &BenchOptions,
) -> Result<BenchReport, BenchError> {
    let grid = ZoomGrid::paper();
    let on = |m: Measure| opts.measure.contains(&m);
    let (threads, batch, rounds) = (opts.threads, opts.batch_size, opts.rounds);
    let preprocessing = on(Measure::Preprocessing)
        .then(|| preprocessing(images, &grid, rounds))
        .transpose()?;
    let (feed_1_thread, feed) = if on(Measure::Feed) {
        (
            Some(feed_only(images, &grid, 1, batch, rounds)?),
            Some(feed_only(images, &grid, threads, batch, rounds)?),
        )
    } else {
        (None, None)
    };
    let crop = grid.crop_size as usize;
    let model_only = on(Measure::Model)
        .then(|| model_only(model, batch, crop, opts.batches, rounds))
        .transpose()?;
    let end_to_end = on(Measure::EndToEnd)
        .then(|| end_to_end(model, images, &grid, threads, batch, rounds))
        .transpose()?;
    let feed_scaling = match (&feed, &feed_1_thread) {
        (Some(n), Some(one)) => Some(n.crops_per_s / one.crops_per_s.max(1e-12)),
        _ => None,
    };
    Ok(BenchReport {
        tool_version: env!("CARGO_PKG_VERSION"),
        model: name.to_string(),
        architecture: model.architecture().name().to_string(),
        batch_size: batch,
        dtype: model.precision(),
        device: model.device_name().to_string(),
        kernels: model.kernels_name(),
        threads,
        preprocessing,
        feed_1_thread,
        feed,
        feed_scaling,
        model_only,
        end_to_end,
        parity: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_rounds() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        let t = throughput(2, 648, vec![2.0, 4.0, 3.0]);
        assert_eq!(
            (t.seconds, t.images_per_s, t.crops_per_s),
            (3.0, 2.0 / 3.0, 216.0)
        );
    }

    #[test]
    fn agreement_is_relative_to_the_reference_and_counts_top1() {
        // Two crops of three classes; the second crop's top-1 moves.
        let theirs = [1.0, 4.0, -2.0, 0.5, 0.4, 0.0];
        let ours = [1.1, 4.0, -2.0, 0.3, 0.45, 0.0];
        let a = Agreement::of(&ours, &theirs, 3);
        assert!((a.max_rel - 0.2 / 4.0).abs() < 1e-6, "{a:?}");
        assert_eq!(a.top1_agree, 1);
        let nan = [f32::NAN, 4.0, -2.0, 0.5, 0.4, 0.0];
        assert!(Agreement::of(&nan, &theirs, 3).max_rel.is_infinite());
        assert!(Agreement::of(&ours[..3], &theirs, 3).max_rel.is_infinite());
        assert_eq!(Agreement::of(&theirs, &theirs, 3).max_rel, 0.0);
    }
}
