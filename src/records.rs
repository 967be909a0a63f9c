//! Scan records on disk: one Parquet row per (image, model) with the top-1
//! class under every transform (canonical grid order) and whether it was
//! correct. Later stages (select, report, re-selection with new labels)
//! read these and never re-run a model.

use arrow_array::builder::{
    BooleanBuilder, Int64Builder, ListBuilder, StringBuilder, UInt16Builder, UInt64Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt16Type, UInt64Type};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The outcome of one model on one image over the whole grid.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanRecord {
    pub row: u64,
    pub id: String,
    pub labels: Vec<i64>,
    /// Size of the encoded image; plans the export shards.
    pub image_bytes: u64,
    pub model: String,
    /// Top-1 class per transform, restricted to the source's class subset.
    pub pred: Vec<u16>,
    /// `pred[t]` is one of `labels`.
    pub correct: Vec<bool>,
}

#[derive(Debug, thiserror::Error)]
#[error("scan records {file}: {message}")]
pub struct RecordsError {
    pub file: PathBuf,
    pub message: String,
}

fn schema() -> Arc<Schema> {
    let list = |name: &str, dt: DataType| {
        Field::new(
            name,
            DataType::List(Arc::new(Field::new("item", dt, true))),
            false,
        )
    };
    Arc::new(Schema::new(vec![
        Field::new("row", DataType::UInt64, false),
        Field::new("id", DataType::Utf8, false),
        list("label", DataType::Int64),
        Field::new("image_bytes", DataType::UInt64, false),
        Field::new("model", DataType::Utf8, false),
        list("pred", DataType::UInt16),
        list("correct", DataType::Boolean),
    ]))
}

/// Streams records into a Parquet file; `finish` makes it visible atomically.
pub struct RecordWriter {
    path: PathBuf,
    tmp: PathBuf,
    /// `None` once finished.
    writer: Option<ArrowWriter<std::fs::File>>,
    pending: Vec<ScanRecord>,
}

impl RecordWriter {
    pub fn create(path: &Path) -> Result<RecordWriter, RecordsError> {
        let err = |m: String| RecordsError {
            file: path.into(),
            message: m,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
        }
        let tmp = crate::util::unique_temp(path);
        let file = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .build();
        let writer =
            ArrowWriter::try_new(file, schema(), Some(props)).map_err(|e| err(e.to_string()))?;
        Ok(RecordWriter {
            path: path.into(),
            tmp,
            writer: Some(writer),
            pending: Vec::new(),
        })
    }

    pub fn push(&mut self, rec: ScanRecord) -> Result<(), RecordsError> {
        self.pending.push(rec);
        if self.pending.len() >= 1024 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RecordsError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut row = UInt64Builder::new();
        let mut id = StringBuilder::new();
        let mut label = ListBuilder::new(Int64Builder::new());
        let mut bytes = UInt64Builder::new();
        let mut model = StringBuilder::new();
        let mut pred = ListBuilder::new(UInt16Builder::new());
        let mut correct = ListBuilder::new(BooleanBuilder::new());
        for r in self.pending.drain(..) {
            row.append_value(r.row);
            id.append_value(&r.id);
            label.values().append_slice(&r.labels);
            label.append(true);
            bytes.append_value(r.image_bytes);
            model.append_value(&r.model);
            pred.values().append_slice(&r.pred);
            pred.append(true);
            correct.values().append_slice(&r.correct);
            correct.append(true);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(row.finish()),
            Arc::new(id.finish()),
            Arc::new(label.finish()),
            Arc::new(bytes.finish()),
            Arc::new(model.finish()),
            Arc::new(pred.finish()),
            Arc::new(correct.finish()),
        ];
        let err = |m: String| RecordsError {
            file: self.path.clone(),
            message: m,
        };
        let batch = RecordBatch::try_new(schema(), columns).map_err(|e| err(e.to_string()))?;
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| err("written after it was finished".into()))?;
        writer.write(&batch).map_err(|e| err(e.to_string()))
    }

    /// Write the rest, make it durable, and put the file in place whole.
    /// On any failure (a full disk, say) the temporary file is removed and
    /// nothing appears at the final path.
    pub fn finish(mut self) -> Result<(), RecordsError> {
        let result = self.finish_inner();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result
    }

    fn finish_inner(&mut self) -> Result<(), RecordsError> {
        self.flush()?;
        let err = |m: String| RecordsError {
            file: self.path.clone(),
            message: m,
        };
        let writer = self
            .writer
            .take()
            .ok_or_else(|| err("finished twice".into()))?;
        let file = writer.into_inner().map_err(|e| err(e.to_string()))?;
        file.sync_all().map_err(|e| err(e.to_string()))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| err(e.to_string()))
    }

    /// Drop what was written: the final path is left as it was (as
    /// dropping an unfinished writer does).
    pub(crate) fn abandon(self) {}
}

impl Drop for RecordWriter {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Read every record of a file (records are small: two bytes per transform).
pub fn read_records(path: &Path) -> Result<Vec<ScanRecord>, RecordsError> {
    let err = |m: String| RecordsError {
        file: path.into(),
        message: m,
    };
    let file = std::fs::File::open(path)
        .map_err(|e| err(format!("{e}; run `imagenet-hard scan` first")))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| err(e.to_string()))?;
        let col = |name: &str| -> Result<&ArrayRef, RecordsError> {
            batch
                .column_by_name(name)
                .ok_or_else(|| err(format!("missing column `{name}`")))
        };
        let row = col("row")?.as_primitive::<UInt64Type>();
        let id = col("id")?.as_string::<i32>();
        let label = col("label")?.as_list::<i32>();
        let bytes = col("image_bytes")?.as_primitive::<UInt64Type>();
        let model = col("model")?.as_string::<i32>();
        let pred = col("pred")?.as_list::<i32>();
        let correct = col("correct")?.as_list::<i32>();
        for i in 0..batch.num_rows() {
            out.push(ScanRecord {
                row: row.value(i),
                id: id.value(i).to_string(),
                labels: label.value(i).as_primitive::<Int64Type>().values().to_vec(),
                image_bytes: bytes.value(i),
                model: model.value(i).to_string(),
                pred: pred.value(i).as_primitive::<UInt16Type>().values().to_vec(),
                correct: {
                    let c = correct.value(i);
                    let c = c.as_boolean();
                    (0..c.len()).map(|j| c.value(j)).collect()
                },
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.parquet");
        let recs: Vec<ScanRecord> = (0..3)
            .map(|i| ScanRecord {
                row: i,
                id: format!("src/{i}"),
                labels: vec![i as i64, 7],
                image_bytes: 100 + i,
                model: "m".into(),
                pred: vec![1, 7, 999],
                correct: vec![false, true, false],
            })
            .collect();
        let mut w = RecordWriter::create(&path).unwrap();
        for r in &recs {
            w.push(r.clone()).unwrap();
        }
        assert!(!path.exists(), "visible only after finish");
        w.finish().unwrap();
        assert_eq!(read_records(&path).unwrap(), recs);
    }
}
