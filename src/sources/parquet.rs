//! Hugging Face Parquet sources: streamed one record batch at a time, with
//! only the image, label (and origin) columns projected. A set of wanted rows
//! reads only the row groups that hold them.

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection, RowSelector};
use parquet::arrow::ProjectionMask;
use std::path::{Path, PathBuf};

use super::{RawRow, Sink, SourceError, Wanted};
use crate::labels::RawLabel;

/// The columns to read.
pub(crate) struct Columns<'a> {
    pub image: &'a str,
    /// `None` when the label convention does not read a label (ReaL).
    pub label: Option<&'a str>,
    pub origin: Option<&'a str>,
}

fn perr(file: &Path, e: impl std::fmt::Display) -> SourceError {
    SourceError::Parquet {
        file: file.into(),
        message: e.to_string(),
    }
}

fn builder(file: &Path) -> Result<ParquetRecordBatchReaderBuilder<std::fs::File>, SourceError> {
    let f = std::fs::File::open(file).map_err(|e| SourceError::io(file, e))?;
    ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| perr(file, e))
}

/// Rows in all files, from the footers.
pub(crate) fn count(files: &[PathBuf]) -> Result<u64, SourceError> {
    let mut total = 0;
    for file in files {
        total += builder(file)?.metadata().file_metadata().num_rows() as u64;
    }
    Ok(total)
}

pub(crate) fn visit(
    cols: &Columns,
    files: &[PathBuf],
    wanted: &Wanted,
    sink: &mut Sink,
) -> Result<(), SourceError> {
    let mut offset = 0u64; // global row number of this file's first row
    for file in files {
        if wanted.last().is_some_and(|last| offset > last) {
            break;
        }
        let b = builder(file)?;
        let n_rows = b.metadata().file_metadata().num_rows() as u64;
        let schema = b.schema().clone();
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
        let image_idx = find(cols.image, "image_column")?;
        check_image_type(file, cols.image, schema.field(image_idx).data_type())?;
        let mut roots = vec![image_idx];
        if let Some(label) = cols.label {
            let idx = find(label, "label_column")?;
            check_label_type(file, label, schema.field(idx).data_type())?;
            roots.push(idx);
        }
        if let Some(origin) = cols.origin {
            roots.push(find(origin, "origin_column")?);
        }
        let mask = ProjectionMask::roots(b.parquet_schema(), roots);
        // The global rows this file must deliver, and the row groups holding them.
        let here: Vec<u64> = match wanted {
            Wanted::All => (offset..offset + n_rows).collect(),
            Wanted::Rows(rows) => rows.range(offset..offset + n_rows).copied().collect(),
        };
        if here.is_empty() {
            offset += n_rows;
            continue;
        }
        let mut builder = b.with_projection(mask).with_batch_size(64);
        if let Wanted::Rows(_) = wanted {
            let mut groups = Vec::new();
            let mut selectors = Vec::new();
            let mut start = 0u64;
            let mut wi = 0;
            for (g, rg) in builder.metadata().row_groups().iter().enumerate() {
                let len = rg.num_rows() as u64;
                let mut local = Vec::new();
                while wi < here.len() && here[wi] - offset < start + len {
                    local.push(here[wi] - offset - start);
                    wi += 1;
                }
                if !local.is_empty() {
                    groups.push(g);
                    let mut pos = 0;
                    for r in local {
                        if r > pos {
                            selectors.push(RowSelector::skip((r - pos) as usize));
                        }
                        selectors.push(RowSelector::select(1));
                        pos = r + 1;
                    }
                    if len > pos {
                        selectors.push(RowSelector::skip((len - pos) as usize));
                    }
                }
                start += len;
            }
            builder = builder
                .with_row_groups(groups)
                .with_row_selection(RowSelection::from(selectors));
        }
        let reader = builder.build().map_err(|e| perr(file, e))?;
        let mut next = here.into_iter();
        for batch in reader {
            let batch = batch.map_err(|e| perr(file, e))?;
            for i in 0..batch.num_rows() {
                let row = next
                    .next()
                    .ok_or_else(|| perr(file, "more rows than the footer declares"))?;
                if sink(row, Ok(raw_row(cols, &batch, i))).is_break() {
                    return Ok(());
                }
            }
        }
        offset += n_rows;
    }
    Ok(())
}

fn raw_row(cols: &Columns, batch: &RecordBatch, i: usize) -> RawRow {
    let (image, path) = batch
        .column_by_name(cols.image)
        .map(|c| image_at(c, i))
        .unwrap_or((None, None));
    RawRow {
        path,
        image,
        label: cols
            .label
            .and_then(|l| batch.column_by_name(l))
            .and_then(|c| label_at(c, i)),
        origin: cols
            .origin
            .and_then(|o| batch.column_by_name(o))
            .and_then(|c| string_at(c.as_ref(), i)),
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
    let scalar = |d: &DataType| {
        d.is_integer() || matches!(d, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
    };
    let ok = match dt {
        DataType::List(f) | DataType::LargeList(f) => scalar(f.data_type()),
        d => scalar(d),
    };
    if ok {
        Ok(())
    } else {
        Err(SourceError::ColumnType {
            file: file.into(),
            column: column.into(),
            found: dt.to_string(),
            expected: "an integer or string label, or a list of them",
        })
    }
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

/// Integers or strings of one array; `None` if any value is null.
fn raw_values(col: &dyn Array) -> Option<RawLabel> {
    if let Some(ints) = int_values(col) {
        return ints.into_iter().collect::<Option<_>>().map(RawLabel::Ints);
    }
    (0..col.len())
        .map(|i| string_at(col, i))
        .collect::<Option<_>>()
        .map(RawLabel::Texts)
}

fn label_at(col: &ArrayRef, i: usize) -> Option<RawLabel> {
    if col.is_null(i) {
        return None;
    }
    match col.data_type() {
        DataType::List(_) => raw_values(col.as_list::<i32>().value(i).as_ref()),
        DataType::LargeList(_) => raw_values(col.as_list::<i64>().value(i).as_ref()),
        _ => raw_values(col.slice(i, 1).as_ref()),
    }
}
