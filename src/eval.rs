//! Evaluation on a dataset folder in the ImageNet-Hard schema (ours, or the
//! released `taesiri/imagenet-hard` layout): top-1 over all 1000 classes,
//! correct iff the prediction is any of the row's labels (SPEC §2).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::labels::top_k;
use crate::labels::LabelConvention;
use crate::models::{Classifier, EvalPreprocess, ModelError};
use crate::sources::{Container, Source, SourceError};
use crate::zoom::{center_view, decode_rgb, normalise_chw, DecodeLimits};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{dir}: {message}")]
    Layout { dir: PathBuf, message: String },
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    pub tool_version: String,
    pub model: String,
    pub model_provenance: String,
    pub dataset: String,
    pub files: Vec<String>,
    pub preprocess: EvalPreprocess,
    pub overall: Score,
    pub per_origin: BTreeMap<String, Score>,
    pub skipped: BTreeMap<String, u64>,
}

/// Parse `validation-00003-of-00009[-hash].parquet` -> (3, 9).
fn shard_numbers(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("validation-")?.strip_suffix(".parquet")?;
    let mut parts = rest.split('-');
    let index = parts.next()?.parse().ok()?;
    (parts.next()? == "of").then_some(())?;
    let count = parts.next()?.parse().ok()?;
    Some((index, count))
}

/// The validation shards of a dataset folder, as exactly one complete
/// `-of-NNNNN` family (the Hub copy of ImageNet-Hard has stale families
/// beside the current one; the card's `num_examples` picks between them).
pub fn find_shards(dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let layout = |message: String| EvalError::Layout {
        dir: dir.into(),
        message,
    };
    let data = dir.join("data");
    let entries = std::fs::read_dir(&data).map_err(|e| {
        layout(format!(
            "no data/ folder ({e}); expected data/validation-XXXXX-of-YYYYY.parquet"
        ))
    })?;
    let mut families: BTreeMap<usize, BTreeMap<usize, PathBuf>> = BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((index, count)) = shard_numbers(&name) {
            families
                .entry(count)
                .or_default()
                .insert(index, entry.path());
        }
    }
    let complete: Vec<(usize, Vec<PathBuf>)> = families
        .into_iter()
        .filter(|(count, files)| files.len() == *count && files.keys().copied().eq(0..*count))
        .map(|(count, files)| (count, files.into_values().collect()))
        .collect();
    match complete.len() {
        0 => Err(layout(
            "no complete family of data/validation-XXXXX-of-YYYYY.parquet shards".into(),
        )),
        1 => Ok(complete
            .into_iter()
            .next()
            .map(|(_, f)| f)
            .unwrap_or_default()),
        _ => {
            let expected = card_num_examples(dir);
            let rows =
                |files: &[PathBuf]| -> u64 { files.iter().filter_map(|f| parquet_rows(f)).sum() };
            let matching: Vec<_> = complete
                .iter()
                .filter(|(_, f)| Some(rows(f)) == expected)
                .collect();
            match (matching.len(), expected) {
                (1, _) => Ok(matching[0].1.clone()),
                (_, n) => Err(layout(format!(
                    "{} complete shard families (-of-{}) and the card's num_examples ({}) does not single one out; remove the stale files",
                    complete.len(),
                    complete.iter().map(|(c, _)| format!("{c:05}")).collect::<Vec<_>>().join(", -of-"),
                    n.map(|n| n.to_string()).unwrap_or_else(|| "absent".into()),
                ))),
            }
        }
    }
}

fn parquet_rows(file: &Path) -> Option<u64> {
    let f = std::fs::File::open(file).ok()?;
    let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).ok()?;
    Some(b.metadata().file_metadata().num_rows() as u64)
}

fn card_num_examples(dir: &Path) -> Option<u64> {
    let card = std::fs::read_to_string(dir.join("README.md")).ok()?;
    card.lines()
        .find_map(|l| l.trim().strip_prefix("num_examples:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Run `model` over the shards; `limit` caps the rows read.
pub fn evaluate(
    model: &Classifier,
    model_name: &str,
    model_provenance: &str,
    pre: EvalPreprocess,
    dir: &Path,
    batch_size: usize,
    limit: Option<u64>,
) -> Result<EvalReport, EvalError> {
    let files = find_shards(dir)?;
    let source = Source {
        container: Container::Parquet {
            files: files.clone(),
            image_column: "image".into(),
            label_column: "label".into(),
            origin_column: Some("origin".into()),
        },
        labels: LabelConvention::Imagenet1kIndex,
        limit,
    };
    let mut report = EvalReport {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        model: model_name.into(),
        model_provenance: model_provenance.into(),
        dataset: dir.display().to_string(),
        files: files.iter().map(|f| f.display().to_string()).collect(),
        preprocess: pre,
        overall: Score::default(),
        per_origin: BTreeMap::new(),
        skipped: BTreeMap::new(),
    };
    let crop = pre.crop as usize;
    let plane = 3 * crop * crop;
    let mut input: Vec<f32> = Vec::with_capacity(batch_size * plane);
    let mut meta: Vec<(Vec<i64>, String)> = Vec::new();
    let bar = crate::util::progress(source.row_count_hint().unwrap_or(0), "eval");
    let flush = |input: &mut Vec<f32>,
                 meta: &mut Vec<(Vec<i64>, String)>,
                 report: &mut EvalReport|
     -> Result<(), EvalError> {
        if meta.is_empty() {
            return Ok(());
        }
        let logits = model.logits(input, meta.len(), crop)?;
        for (k, (labels, origin)) in meta.drain(..).enumerate() {
            let top5 = top_k(&logits[k * 1000..(k + 1) * 1000], 5);
            let hit1 = labels.contains(&(top5[0] as i64));
            let hit5 = top5.iter().any(|p| labels.contains(&(*p as i64)));
            report.overall.add(hit1, hit5);
            report.per_origin.entry(origin).or_default().add(hit1, hit5);
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
        let view = center_view(&img, pre.resize, pre.crop, pre.interpolation);
        let start = input.len();
        input.resize(start + plane, 0.0);
        normalise_chw(&view, pre.mean, pre.std, &mut input[start..]);
        meta.push((rec.labels, rec.origin.unwrap_or_else(|| "unknown".into())));
        if meta.len() >= batch_size {
            flush(&mut input, &mut meta, &mut report)?;
        }
    }
    flush(&mut input, &mut meta, &mut report)?;
    bar.finish_and_clear();
    Ok(report)
}

impl EvalReport {
    /// Human table: overall and per origin, percent.
    pub fn table(&self) -> String {
        let mut out = format!(
            "model {} on {}\n\n| origin | images | top-1 % | top-5 % |\n|---|---:|---:|---:|\n",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_parse_with_and_without_hash() {
        assert_eq!(
            shard_numbers("validation-00002-of-00009.parquet"),
            Some((2, 9))
        );
        assert_eq!(
            shard_numbers("validation-00000-of-00005-36efe923955f51bb.parquet"),
            Some((0, 5))
        );
        assert_eq!(shard_numbers("train-00000-of-00001.parquet"), None);
    }

    #[test]
    fn one_complete_family_is_chosen_over_a_partial_one() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        for name in [
            "validation-00000-of-00002.parquet",
            "validation-00001-of-00002.parquet",
            "validation-00000-of-00003-ab.parquet",
        ] {
            std::fs::write(data.join(name), b"").unwrap();
        }
        let files = find_shards(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        assert!(files[0].ends_with("validation-00000-of-00002.parquet"));
        std::fs::remove_file(data.join("validation-00001-of-00002.parquet")).unwrap();
        assert!(find_shards(dir.path()).is_err());
    }
}
