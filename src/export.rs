//! Export stage: the hard set as a Hugging Face dataset folder —
//! `data/validation-XXXXX-of-YYYYY.parquet` in the released schema (protocol §8)
//! with the `huggingface` features metadata, and `README.md` (the dataset
//! card) filled from `DATASET_CARD.md`.

use arrow_array::builder::{
    BinaryBuilder, Int64Builder, ListBuilder, StringBuilder, StructBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::labels::class_name;
use crate::plan::Plan;
use crate::scan::ScanStats;
use crate::select::{HardImage, Selection};
use crate::sources::SourceError;

const CARD_TEMPLATE: &str = include_str!("../DATASET_CARD.md");

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("source `{origin}` row {row} was selected but is no longer readable ({reason}); the source changed since the scan: rerun `imagenet-hard scan`")]
    Vanished {
        origin: String,
        row: u64,
        reason: String,
    },
}

/// Where the dataset folder goes inside the run directory.
pub(crate) fn dataset_dir(run_dir: &Path) -> PathBuf {
    crate::run_dir::RunDir::of(run_dir).dataset()
}

/// Shard index of each item so shards hold about equal bytes: with
/// `n = ceil(total / target)` shards, an item goes to
/// `floor(bytes_before_it * n / total)`.
pub(crate) fn plan_shards(sizes: &[u64], target: u64) -> (usize, Vec<usize>) {
    let total: u64 = sizes.iter().sum();
    let n = (total.div_ceil(target.max(1)) as usize).max(1);
    let mut before = 0u64;
    let assign = sizes
        .iter()
        .map(|&s| {
            let shard = if total == 0 {
                0
            } else {
                ((before as u128 * n as u128) / total as u128) as usize
            };
            before += s;
            shard.min(n - 1)
        })
        .collect();
    (n, assign)
}

pub(crate) fn shard_name(index: usize, count: usize) -> String {
    format!("validation-{index:05}-of-{count:05}.parquet")
}

/// The released schema: image struct<bytes, path>, label list<int64>,
/// origin string, english_label list<string>; the Arrow schema carries the
/// `huggingface` features (pyarrow, and so `datasets`, read them from there).
pub fn hard_schema() -> Arc<Schema> {
    let image_fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let list = |dt: DataType| DataType::List(Arc::new(Field::new("item", dt, true)));
    let fields = vec![
        Field::new("image", DataType::Struct(image_fields), true),
        Field::new("label", list(DataType::Int64), true),
        Field::new("origin", DataType::Utf8, true),
        Field::new("english_label", list(DataType::Utf8), true),
    ];
    let metadata: std::collections::HashMap<String, String> =
        [("huggingface".to_string(), features_metadata())]
            .into_iter()
            .collect();
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// The `huggingface` key-value metadata that makes `datasets` decode `image`.
pub fn features_metadata() -> String {
    serde_json::json!({
        "info": {
            "features": {
                "image": {"_type": "Image"},
                "label": {"feature": {"dtype": "int64", "_type": "Value"}, "_type": "Sequence"},
                "origin": {"dtype": "string", "_type": "Value"},
                "english_label": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"}
            }
        }
    })
    .to_string()
}

/// One exported row.
pub struct HardRow {
    pub image: Vec<u8>,
    pub path: String,
    pub labels: Vec<i64>,
    pub origin: String,
}

fn build_batch(rows: &[HardRow]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let schema = hard_schema();
    let DataType::Struct(image_fields) = schema.field(0).data_type().clone() else {
        unreachable!("image is a struct")
    };
    let mut image = StructBuilder::from_fields(image_fields, rows.len());
    let mut label = ListBuilder::new(Int64Builder::new());
    let mut origin = StringBuilder::new();
    let mut english = ListBuilder::new(StringBuilder::new());
    for r in rows {
        image
            .field_builder::<BinaryBuilder>(0)
            .expect("bytes field")
            .append_value(&r.image);
        image
            .field_builder::<StringBuilder>(1)
            .expect("path field")
            .append_value(&r.path);
        image.append(true);
        label.values().append_slice(&r.labels);
        label.append(true);
        origin.append_value(&r.origin);
        for &l in &r.labels {
            english
                .values()
                .append_value(class_name(l).unwrap_or("unknown"));
        }
        english.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(image.finish()),
        Arc::new(label.finish()),
        Arc::new(origin.finish()),
        Arc::new(english.finish()),
    ];
    RecordBatch::try_new(schema, columns)
}

/// Writes shards one after another, `row_group_rows` rows per row group.
struct ShardWriter {
    dir: PathBuf,
    count: usize,
    row_group_rows: usize,
    current: Option<(usize, PathBuf, ArrowWriter<std::fs::File>)>,
    buffer: Vec<HardRow>,
    written: Vec<PathBuf>,
}

impl ShardWriter {
    fn err(path: &Path, e: impl std::fmt::Display) -> ExportError {
        ExportError::Write {
            path: path.into(),
            message: e.to_string(),
        }
    }

    fn push(&mut self, shard: usize, row: HardRow) -> Result<(), ExportError> {
        if self.current.as_ref().is_some_and(|(i, _, _)| *i != shard) {
            self.close()?;
        }
        if self.current.is_none() {
            let path = self.dir.join(shard_name(shard, self.count));
            let tmp = crate::util::temp_sibling(&path);
            let file = std::fs::File::create(&tmp).map_err(|e| Self::err(&tmp, e))?;
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_max_row_group_row_count(Some(self.row_group_rows))
                .set_key_value_metadata(Some(vec![KeyValue::new(
                    "huggingface".into(),
                    features_metadata(),
                )]))
                .build();
            let writer = ArrowWriter::try_new(file, hard_schema(), Some(props))
                .map_err(|e| Self::err(&tmp, e))?;
            self.current = Some((shard, path, writer));
        }
        self.buffer.push(row);
        if self.buffer.len() >= self.row_group_rows {
            self.flush_group()?;
        }
        Ok(())
    }

    fn flush_group(&mut self) -> Result<(), ExportError> {
        let Some((_, path, writer)) = self.current.as_mut() else {
            return Ok(());
        };
        if self.buffer.is_empty() {
            return Ok(());
        }
        let batch = build_batch(&self.buffer).map_err(|e| Self::err(path, e))?;
        writer.write(&batch).map_err(|e| Self::err(path, e))?;
        writer.flush().map_err(|e| Self::err(path, e))?;
        self.buffer.clear();
        Ok(())
    }

    fn close(&mut self) -> Result<(), ExportError> {
        self.flush_group()?;
        if let Some((_, path, writer)) = self.current.take() {
            writer.close().map_err(|e| Self::err(&path, e))?;
            std::fs::rename(crate::util::temp_sibling(&path), &path)
                .map_err(|e| Self::err(&path, e))?;
            self.written.push(path);
        }
        Ok(())
    }
}

fn image_extension(bytes: &[u8]) -> &'static str {
    match bytes {
        [0xFF, 0xD8, ..] => "jpg",
        [0x89, b'P', b'N', b'G', ..] => "png",
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => "webp",
        _ => "bin",
    }
}

/// Write `rows` as the single shard `validation-00000-of-00001.parquet` in
/// `dir/data/` (for hand-made datasets in the released schema).
pub fn write_single_shard(
    dir: &Path,
    rows: Vec<HardRow>,
    row_group_rows: usize,
) -> Result<PathBuf, ExportError> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).map_err(|e| ShardWriter::err(&data, e))?;
    let mut writer = ShardWriter {
        dir: data,
        count: 1,
        row_group_rows,
        current: None,
        buffer: Vec::new(),
        written: Vec::new(),
    };
    for row in rows {
        writer.push(0, row)?;
    }
    writer.close()?;
    Ok(writer.written.remove(0))
}

/// Summary of an export, for the card and the terminal.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportSummary {
    pub dir: PathBuf,
    pub shards: Vec<PathBuf>,
    pub rows: usize,
    pub per_origin: BTreeMap<String, usize>,
    pub download_size: u64,
}

/// The hard images in export order: source order, then row.
fn export_order<'a>(plan: &Plan, selection: &'a Selection) -> Vec<&'a HardImage> {
    let order: BTreeMap<&str, usize> = plan
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| (s.origin.as_str(), i))
        .collect();
    let mut hard: Vec<&HardImage> = selection.hard.iter().collect();
    hard.sort_by_key(|h| {
        (
            order.get(h.origin.as_str()).copied().unwrap_or(usize::MAX),
            h.row,
        )
    });
    hard
}

/// An empty `data/` folder under `dir`: a previous export is replaced
/// whole (stale shard families must not coexist), and a writer killed
/// mid-card left its temporary beside the card.
fn fresh_data_dir(dir: &Path) -> Result<PathBuf, ExportError> {
    let data = dir.join("data");
    crate::util::remove_stale_temps(dir).map_err(|e| ShardWriter::err(dir, e))?;
    if data.exists() {
        std::fs::remove_dir_all(&data).map_err(|e| ShardWriter::err(&data, e))?;
    }
    std::fs::create_dir_all(&data).map_err(|e| ShardWriter::err(&data, e))?;
    Ok(data)
}

/// Copy one source's hard rows (`hard`, in row order, each with its shard
/// in `shards`) from the source into the writer; every wanted row must
/// still be there.
fn copy_source_rows(
    source: &crate::plan::PlannedSource,
    hard: &[&HardImage],
    shards: &[usize],
    writer: &mut ShardWriter,
) -> Result<(), ExportError> {
    let wanted: BTreeSet<u64> = hard.iter().map(|h| h.row).collect();
    let vanished = |row: u64, reason: String| ExportError::Vanished {
        origin: source.origin.clone(),
        row,
        reason,
    };
    let mut found = BTreeSet::new();
    for outcome in source.reader().rows_in(wanted.clone()) {
        let rec = match outcome? {
            Ok(rec) if wanted.contains(&rec.row) => rec,
            Err(skip) if wanted.contains(&skip.row) => return Err(vanished(skip.row, skip.reason)),
            _ => continue,
        };
        let next = found.len();
        let path = rec.path.clone().unwrap_or_else(|| {
            format!(
                "{}_{:08}.{}",
                crate::util::file_stem(&source.origin),
                rec.row,
                image_extension(&rec.image)
            )
        });
        // Labels come from the selection, so a re-labelled selection exports its labels.
        let row = HardRow {
            image: rec.image,
            path,
            labels: hard[next].labels.clone(),
            origin: source.origin.clone(),
        };
        writer.push(shards[next], row)?;
        found.insert(rec.row);
        if found.len() == wanted.len() {
            break;
        }
    }
    match wanted.difference(&found).next() {
        Some(missing) => Err(vanished(*missing, "row not found".into())),
        None => Ok(()),
    }
}

/// Write the hard set of `selection` (sorted by source order, then row).
pub fn export(
    plan: &Plan,
    selection: &Selection,
    stats: &[ScanStats],
) -> Result<ExportSummary, ExportError> {
    let dir = dataset_dir(&plan.run_dir);
    let data = fresh_data_dir(&dir)?;
    let hard = export_order(plan, selection);
    let sizes: Vec<u64> = hard.iter().map(|h| h.image_bytes).collect();
    let (count, assign) = plan_shards(&sizes, plan.shard_size_bytes);
    let mut writer = ShardWriter {
        dir: data,
        count,
        row_group_rows: plan.row_group_rows,
        current: None,
        buffer: Vec::new(),
        written: Vec::new(),
    };
    let mut next = 0usize;
    for source in &plan.sources {
        let n = hard[next..]
            .iter()
            .take_while(|h| h.origin == source.origin)
            .count();
        if n > 0 {
            let range = next..next + n;
            copy_source_rows(source, &hard[range.clone()], &assign[range], &mut writer)?;
        }
        next += n;
    }
    writer.close()?;
    let shards = writer.written;
    let download_size = shards
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let summary = ExportSummary {
        dir: dir.clone(),
        shards,
        rows: hard.len(),
        per_origin: selection.hard_per_origin(),
        download_size,
    };
    let card = render_card(plan, selection, stats, &summary);
    let card_path = dir.join("README.md");
    crate::util::write_atomic(&card_path, card.as_bytes())
        .map_err(|e| ShardWriter::err(&card_path, e))?;
    Ok(summary)
}

/// Fill `DATASET_CARD.md`'s `{{placeholders}}`.
pub(crate) fn render_card(
    plan: &Plan,
    selection: &Selection,
    stats: &[ScanStats],
    summary: &ExportSummary,
) -> String {
    let num_bytes: u64 = selection.hard.iter().map(|h| h.image_bytes).sum();
    let size_category = match summary.rows {
        0..=999 => "n<1K",
        1000..=9_999 => "1K<n<10K",
        10_000..=99_999 => "10K<n<100K",
        _ => "100K<n<1M",
    };
    let origin_table = plan
        .sources
        .iter()
        .map(|s| {
            format!(
                "| `{}` | {} | {} {} | {} ({}) | {} |",
                s.origin,
                s.provenance,
                s.format.name(),
                s.labels.name(),
                s.class_subset.name(),
                s.class_subset.class_count(),
                summary.per_origin.get(&s.origin).copied().unwrap_or(0)
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let models = plan
        .models
        .iter()
        .map(|m| {
            format!(
                "  - `{}`: {} weights `{}`",
                m.name,
                m.architecture.name(),
                m.provenance
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let grid = format!(
        "{} transforms = {} scales ({}) x {}x{} anchors, {}px crops, fill {}",
        plan.grid.len(),
        plan.grid.scales.len(),
        plan.grid
            .scales
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        plan.grid.anchors,
        plan.grid.anchors,
        plan.grid.crop_size,
        plan.grid.fill
    );
    let skips = skips_table(stats);
    let terms = terms_list(plan);
    let rule = card_rule(plan, selection);
    let values: [(&str, String); 15] = [
        ("pretty_name", plan.name.clone()),
        ("size_category", size_category.into()),
        ("num_bytes", num_bytes.to_string()),
        ("num_examples", summary.rows.to_string()),
        ("download_size", summary.download_size.to_string()),
        (
            "description",
            plan.description
                .clone()
                .unwrap_or_else(|| format!("The `{}` build of ImageNet-Hard.", plan.name)),
        ),
        ("tool_version", plan.tool_version.clone()),
        ("num_shards", summary.shards.len().to_string()),
        ("origin_table", origin_table),
        ("rule", rule),
        ("models", models),
        ("grid", grid),
        ("lock_hash", plan.lock_hash.clone()),
        ("skips", skips),
        ("terms", terms),
    ];
    let mut card = CARD_TEMPLATE.to_string();
    for (k, v) in values {
        card = card.replace(&format!("{{{{{k}}}}}"), &v);
    }
    card
}

/// The card's table of rows the scan skipped, per origin and reason.
fn skips_table(stats: &[ScanStats]) -> String {
    let mut skip_lines = Vec::new();
    for s in stats {
        for (reason, n) in &s.skipped {
            skip_lines.push(format!("| {} | {} | {} |", s.origin, reason, n));
        }
    }
    if skip_lines.is_empty() {
        "None: every row was scanned.".to_string()
    } else {
        format!(
            "| origin | reason | rows |\n|---|---|---:|\n{}",
            skip_lines.join("\n")
        )
    }
}

/// The card's list of each source's terms.
fn terms_list(plan: &Plan) -> String {
    plan.sources
        .iter()
        .map(|s| {
            format!(
                "- `{}` ({}): {}",
                s.origin,
                s.provenance,
                s.terms
                    .as_deref()
                    .unwrap_or("see the source dataset's own card")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The selection rule as the card states it: the scan mode, precision,
/// relabelling and near-duplicates that shaped it.
fn card_rule(plan: &Plan, selection: &Selection) -> String {
    let mut rule = selection.rule.describe();
    match plan.scan_mode {
        crate::manifest::ScanMode::FirstHit => rule.push_str(
            " (first-hit scan: each model stopped at its first correct transform, in a fixed order)",
        ),
        crate::manifest::ScanMode::Curate => rule.push_str(
            " (curate scan: (model, transform) pairs tried in a learned order, every model stopping at the first hit of any; an image no pair solves was tried under all of them)",
        ),
        crate::manifest::ScanMode::Exhaustive => {}
    }
    if plan.scan_dtype != crate::models::Precision::F32 {
        rule.push_str(&format!(" (models computed in {})", plan.scan_dtype));
    }
    if let Some(r) = &selection.relabel {
        rule.push_str(&format!(
            "; labels revised from `{}` (sha256 {}): {} images relabelled, {} dropped",
            r.file, r.sha256, r.relabelled, r.dropped
        ));
    }
    if selection.duplicates_dropped > 0 {
        rule.push_str(&format!(
            "; {} later copies of near-duplicate images left out (first copy in source order kept)",
            selection.duplicates_dropped
        ));
    }
    rule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_bytes_about_evenly_and_in_order() {
        let (n, a) = plan_shards(&[10; 10], 30);
        assert_eq!(n, 4);
        assert_eq!(a, vec![0, 0, 0, 1, 1, 2, 2, 2, 3, 3]);
        let (n, a) = plan_shards(&[5, 5], 1000);
        assert_eq!((n, a), (1, vec![0, 0]));
        let (n, a) = plan_shards(&[], 10);
        assert_eq!((n, a), (1, vec![]));
    }

    #[test]
    fn shard_names_follow_the_hub_layout() {
        assert_eq!(shard_name(3, 12), "validation-00003-of-00012.parquet");
    }

    #[test]
    fn extension_is_sniffed() {
        assert_eq!(image_extension(&[0xFF, 0xD8, 0xFF]), "jpg");
        assert_eq!(image_extension(b"\x89PNG\r\n"), "png");
        assert_eq!(image_extension(b"GIF8"), "bin");
    }
}
