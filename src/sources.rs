//! Source records: rows of a source dataset, streamed one row group batch
//! at a time from Hugging Face Parquet files (never the whole dataset in
//! memory). Each row becomes a [`SourceRecord`] or a counted [`Skip`].

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use std::path::{Path, PathBuf};

use crate::labels::NUM_CLASSES;

/// One image of a source, with its ImageNet-1k labels.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecord {
    /// Row number within the source (across all its files), from 0.
    pub row: u64,
    /// The file name stored with the image, when there is one.
    pub path: Option<String>,
    /// Encoded image bytes exactly as stored.
    pub image: Vec<u8>,
    /// ImageNet-1k indices (1 or more).
    pub labels: Vec<i64>,
    /// The `origin` column, for datasets in the ImageNet-Hard schema.
    pub origin: Option<String>,
}

/// A row that could not be used, and why. Counted in stats and the card.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Skip {
    pub row: u64,
    /// Short stable reason, e.g. `corrupt-image`, `missing-label`.
    pub reason: String,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{file}: not a readable Parquet file: {message}")]
    Parquet { file: PathBuf, message: String },
    #[error("{file}: no column `{column}` (columns: {available}); set `{key}` in the manifest's [[source]] table")]
    MissingColumn {
        file: PathBuf,
        column: String,
        available: String,
        key: &'static str,
    },
    #[error("{file}: column `{column}` has type {found}; expected {expected}")]
    ColumnType {
        file: PathBuf,
        column: String,
        found: String,
        expected: &'static str,
    },
}

/// How to read one source's files.
#[derive(Debug, Clone)]
pub struct ParquetSource {
    pub files: Vec<PathBuf>,
    pub image_column: String,
    pub label_column: String,
    /// Also read this string column into [`SourceRecord::origin`].
    pub origin_column: Option<String>,
    pub limit: Option<u64>,
}

pub type RowOutcome = Result<SourceRecord, Skip>;

impl ParquetSource {
    /// Stream every row (up to `limit`) in order.
    pub fn rows(&self) -> SourceRows<'_> {
        SourceRows {
            src: self,
            file_idx: 0,
            reader: None,
            batch: None,
            batch_pos: 0,
            next_row: 0,
        }
    }

    /// Rows the source will yield (from the Parquet footers), capped by `limit`.
    pub fn row_count(&self) -> Option<u64> {
        let mut total = 0u64;
        for file in &self.files {
            let f = std::fs::File::open(file).ok()?;
            let b = ParquetRecordBatchReaderBuilder::try_new(f).ok()?;
            total += b.metadata().file_metadata().num_rows() as u64;
        }
        Some(self.limit.map_or(total, |l| l.min(total)))
    }

    fn open(&self, file: &Path) -> Result<ParquetRecordBatchReader, SourceError> {
        let perr = |e: &dyn std::fmt::Display| SourceError::Parquet {
            file: file.into(),
            message: e.to_string(),
        };
        let f = std::fs::File::open(file).map_err(|e| perr(&e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| perr(&e))?;
        let schema = builder.schema().clone();
        let find = |column: &str, key: &'static str| {
            schema
                .index_of(column)
                .map_err(|_| SourceError::MissingColumn {
                    file: file.into(),
                    column: column.into(),
                    available: schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    key,
                })
        };
        let image_idx = find(&self.image_column, "image_column")?;
        let label_idx = find(&self.label_column, "label_column")?;
        check_image_type(
            file,
            &self.image_column,
            schema.field(image_idx).data_type(),
        )?;
        check_label_type(
            file,
            &self.label_column,
            schema.field(label_idx).data_type(),
        )?;
        let mut roots = vec![image_idx, label_idx];
        if let Some(origin) = &self.origin_column {
            roots.push(find(origin, "origin_column")?);
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        builder
            .with_projection(mask)
            .with_batch_size(64)
            .build()
            .map_err(|e| perr(&e))
    }
}

fn check_image_type(file: &Path, column: &str, dt: &DataType) -> Result<(), SourceError> {
    let ok = match dt {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => true,
        DataType::Struct(fields) => fields.iter().any(|f| {
            f.name() == "bytes"
                && matches!(
                    f.data_type(),
                    DataType::Binary | DataType::LargeBinary | DataType::BinaryView
                )
        }),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(SourceError::ColumnType {
            file: file.into(),
            column: column.into(),
            found: dt.to_string(),
            expected: "struct<bytes: binary, path: string> or binary",
        })
    }
}

fn check_label_type(file: &Path, column: &str, dt: &DataType) -> Result<(), SourceError> {
    let is_int = |d: &DataType| d.is_integer();
    let ok = match dt {
        DataType::List(f) | DataType::LargeList(f) => is_int(f.data_type()),
        d => is_int(d),
    };
    if ok {
        Ok(())
    } else {
        Err(SourceError::ColumnType {
            file: file.into(),
            column: column.into(),
            found: dt.to_string(),
            expected: "an integer or a list of integers (ImageNet-1k indices)",
        })
    }
}

/// Iterator over a source's rows; yields `Err(SourceError)` once for a file
/// that cannot be read, then stops.
pub struct SourceRows<'a> {
    src: &'a ParquetSource,
    file_idx: usize,
    reader: Option<ParquetRecordBatchReader>,
    batch: Option<RecordBatch>,
    batch_pos: usize,
    next_row: u64,
}

impl Iterator for SourceRows<'_> {
    type Item = Result<RowOutcome, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.src.limit.is_some_and(|l| self.next_row >= l) {
            return None;
        }
        loop {
            if let Some(batch) = &self.batch {
                if self.batch_pos < batch.num_rows() {
                    let row = self.next_row;
                    let out = row_outcome(self.src, batch, self.batch_pos, row);
                    self.batch_pos += 1;
                    self.next_row += 1;
                    return Some(Ok(out));
                }
                self.batch = None;
            }
            if let Some(reader) = &mut self.reader {
                match reader.next() {
                    Some(Ok(b)) => {
                        self.batch = Some(b);
                        self.batch_pos = 0;
                        continue;
                    }
                    Some(Err(e)) => {
                        let file = self.src.files[self.file_idx - 1].clone();
                        self.file_idx = self.src.files.len();
                        self.reader = None;
                        return Some(Err(SourceError::Parquet {
                            file,
                            message: e.to_string(),
                        }));
                    }
                    None => self.reader = None,
                }
            }
            let file = self.src.files.get(self.file_idx)?;
            self.file_idx += 1;
            match self.src.open(file) {
                Ok(r) => self.reader = Some(r),
                Err(e) => {
                    self.file_idx = self.src.files.len();
                    return Some(Err(e));
                }
            }
        }
    }
}

fn row_outcome(src: &ParquetSource, batch: &RecordBatch, i: usize, row: u64) -> RowOutcome {
    let skip = |reason: &str, detail: String| Skip {
        row,
        reason: reason.into(),
        detail,
    };
    let column = |name: &str| batch.column_by_name(name);
    let (Some(image_col), Some(label_col)) = (column(&src.image_column), column(&src.label_column))
    else {
        return Err(skip(
            "bad-schema",
            "image or label column missing in batch".into(),
        ));
    };
    let origin = src
        .origin_column
        .as_deref()
        .and_then(column)
        .and_then(|c| string_at(c.as_ref(), i));
    let (image, path) = image_at(image_col, i);
    let image = image.ok_or_else(|| skip("missing-image", "image bytes are null".into()))?;
    let labels =
        labels_at(label_col, i).ok_or_else(|| skip("missing-label", "label is null".into()))?;
    if labels.is_empty() {
        return Err(skip("missing-label", "label list is empty".into()));
    }
    if let Some(bad) = labels.iter().find(|&&l| l < 0 || l >= NUM_CLASSES as i64) {
        return Err(skip(
            "label-out-of-range",
            format!("label {bad} is outside 0..{}", NUM_CLASSES - 1),
        ));
    }
    Ok(SourceRecord {
        row,
        path,
        image,
        labels,
        origin,
    })
}

fn string_at(c: &dyn Array, i: usize) -> Option<String> {
    if c.is_null(i) {
        return None;
    }
    match c.data_type() {
        DataType::Utf8 => Some(c.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Some(c.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Some(c.as_string_view().value(i).to_string()),
        _ => None,
    }
}

fn binary_at(col: &dyn Array, i: usize) -> Option<Vec<u8>> {
    if col.is_null(i) {
        return None;
    }
    match col.data_type() {
        DataType::Binary => Some(col.as_binary::<i32>().value(i).to_vec()),
        DataType::LargeBinary => Some(col.as_binary::<i64>().value(i).to_vec()),
        DataType::BinaryView => Some(col.as_binary_view().value(i).to_vec()),
        _ => None,
    }
}

fn image_at(col: &ArrayRef, i: usize) -> (Option<Vec<u8>>, Option<String>) {
    match col.data_type() {
        DataType::Struct(_) => {
            let s = col.as_struct();
            if s.is_null(i) {
                return (None, None);
            }
            let bytes = s
                .column_by_name("bytes")
                .and_then(|c| binary_at(c.as_ref(), i));
            let path = s
                .column_by_name("path")
                .and_then(|c| string_at(c.as_ref(), i));
            (bytes, path)
        }
        _ => (binary_at(col.as_ref(), i), None),
    }
}

fn int_values(col: &dyn Array) -> Option<Vec<Option<i64>>> {
    macro_rules! prim {
        ($t:ty) => {
            Some(
                col.as_primitive::<$t>()
                    .iter()
                    .map(|v| v.and_then(|v| i64::try_from(v).ok()))
                    .collect(),
            )
        };
    }
    match col.data_type() {
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        _ => None,
    }
}

fn labels_at(col: &ArrayRef, i: usize) -> Option<Vec<i64>> {
    if col.is_null(i) {
        return None;
    }
    match col.data_type() {
        DataType::List(_) => int_values(col.as_list::<i32>().value(i).as_ref())?
            .into_iter()
            .collect(),
        DataType::LargeList(_) => int_values(col.as_list::<i64>().value(i).as_ref())?
            .into_iter()
            .collect(),
        _ => int_values(&col.slice(i, 1))?
            .pop()
            .flatten()
            .map(|v| vec![v]),
    }
}
