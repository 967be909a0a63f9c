//! Source records: the images of a source dataset with their ImageNet-1k
//! labels, streamed from one of four containers (never the whole dataset in
//! memory, never extracted to disk):
//!
//! - Hugging Face Parquet (`parquet.rs`),
//! - WebDataset tar shards, `<key>.jpg|png|webp` + `<key>.cls` (`webdataset.rs`),
//! - a zip, tar or tar.gz archive of class folders (`archive.rs`),
//! - a local folder of class folders (`folder.rs`).
//!
//! A container yields raw rows; the source's [`LabelConvention`] turns each
//! raw label into ImageNet-1k indices. Every row becomes a [`SourceRecord`]
//! or a counted [`Skip`].

mod archive;
mod folder;
mod parquet;
mod webdataset;

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;

use crate::labels::{LabelConvention, RawLabel};

/// One image of a source, with its ImageNet-1k labels.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRecord {
    /// Row number within the source (across all its files), from 0.
    pub row: u64,
    /// The file name stored with the image (archive member, `image.path`).
    pub path: Option<String>,
    /// Encoded image bytes exactly as stored.
    pub image: Vec<u8>,
    /// ImageNet-1k indices (1 or more, sorted).
    pub labels: Vec<i64>,
    /// The `origin` column, for datasets in the ImageNet-Hard schema.
    pub origin: Option<String>,
}

/// A row that could not be used, and why. Counted in stats and the card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skip {
    pub row: u64,
    /// Short stable reason, e.g. `corrupt-image`, `missing-label`.
    pub reason: String,
    pub detail: String,
}

impl Skip {
    fn new(row: u64, reason: &str, detail: impl Into<String>) -> Skip {
        Skip {
            row,
            reason: reason.into(),
            detail: detail.into(),
        }
    }
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
    #[error("{file}: {message}")]
    Archive { file: PathBuf, message: String },
    #[error("the source reader stopped unexpectedly (a bug: please report it with the source that caused it); the rows after it were not read")]
    ReaderDied,
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
}

impl SourceError {
    fn archive(file: &Path, message: impl std::fmt::Display) -> SourceError {
        SourceError::Archive {
            file: file.into(),
            message: message.to_string(),
        }
    }
    fn io(file: &Path, source: std::io::Error) -> SourceError {
        SourceError::Io {
            file: file.into(),
            source,
        }
    }
}

/// How a source's files are packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Hugging Face Parquet: image as struct<bytes, path> or binary.
    #[default]
    Parquet,
    /// WebDataset tar shards: `<key>.jpg|jpeg|png|webp` + `<key>.cls`.
    Webdataset,
    /// zip, tar or tar.gz archives of `<class>/<file>` (sniffed, not by name).
    Archive,
    /// A local folder of `<class>/<file>`.
    Folder,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Webdataset => "webdataset",
            Format::Archive => "archive",
            Format::Folder => "folder",
        }
    }
}

/// A container and where its files are.
#[derive(Debug, Clone)]
pub enum Container {
    Parquet {
        files: Vec<PathBuf>,
        image_column: String,
        label_column: String,
        /// Also read this string column into [`SourceRecord::origin`].
        origin_column: Option<String>,
    },
    Webdataset {
        files: Vec<PathBuf>,
    },
    Archive {
        files: Vec<PathBuf>,
    },
    Folder {
        root: PathBuf,
    },
}

/// One source: a container, its label convention and how many rows to take.
#[derive(Debug, Clone)]
pub struct Source {
    pub container: Container,
    pub labels: LabelConvention,
    /// Take `limit` rows spread evenly over the source (see [`sample_rows`]).
    pub limit: Option<u64>,
}

/// Which rows a container must deliver; it may skip the others cheaply.
#[derive(Debug, Clone)]
pub enum Wanted {
    All,
    Rows(BTreeSet<u64>),
}

impl Wanted {
    pub(crate) fn wants(&self, row: u64) -> bool {
        match self {
            Wanted::All => true,
            Wanted::Rows(rows) => rows.contains(&row),
        }
    }
    /// No row after this one is wanted.
    pub fn last(&self) -> Option<u64> {
        match self {
            Wanted::All => None,
            Wanted::Rows(rows) => Some(rows.last().copied().unwrap_or(0)),
        }
    }
    fn is_empty(&self) -> bool {
        matches!(self, Wanted::Rows(rows) if rows.is_empty())
    }
}

/// `n` rows spread evenly over `total`: row ⌊i·total/n⌋ for i in 0..n. The
/// same rows on every run, covering every part of the source (class folders
/// and sorted shards are not shuffled, so the first `n` would not).
pub(crate) fn sample_rows(total: u64, n: u64) -> Wanted {
    if n >= total {
        return Wanted::All;
    }
    Wanted::Rows(
        (0..n)
            .map(|i| (i as u128 * total as u128 / n as u128) as u64)
            .collect(),
    )
}

/// A row as the container stores it, before its label is resolved.
#[derive(Debug, Clone, Default)]
pub(crate) struct RawRow {
    pub path: Option<String>,
    pub image: Option<Vec<u8>>,
    pub label: Option<RawLabel>,
    pub origin: Option<String>,
}

pub(crate) type RawOutcome = Result<RawRow, Skip>;

/// The callback a container calls once per selected row, in row order.
pub(crate) type Sink<'a> = dyn FnMut(u64, RawOutcome) -> ControlFlow<()> + 'a;

pub(crate) type RowOutcome = Result<SourceRecord, Skip>;

impl Source {
    /// Rows in the container (before `limit`).
    pub fn total_rows(&self) -> Result<u64, SourceError> {
        match &self.container {
            Container::Parquet { files, .. } => parquet::count(files),
            Container::Webdataset { files } => webdataset::count(files),
            Container::Archive { files } => archive::count(files),
            Container::Folder { root } => folder::count(root),
        }
    }

    /// Rows the source will yield, when that is cheap to know (not for
    /// compressed tar archives): for progress bars.
    pub(crate) fn row_count_hint(&self) -> Option<u64> {
        let total = match &self.container {
            Container::Archive { files } if archive::any_compressed(files) => return None,
            _ => self.total_rows().ok()?,
        };
        Some(self.limit.map_or(total, |l| l.min(total)))
    }

    /// The rows `limit` selects.
    pub fn wanted(&self) -> Result<Wanted, SourceError> {
        match self.limit {
            None => Ok(Wanted::All),
            Some(n) => Ok(sample_rows(self.total_rows()?, n)),
        }
    }

    /// Call `f` for each selected row in order until it breaks.
    pub(crate) fn visit(
        &self,
        wanted: &Wanted,
        f: &mut dyn FnMut(RowOutcome) -> ControlFlow<()>,
    ) -> Result<(), SourceError> {
        if wanted.is_empty() {
            return Ok(());
        }
        let labels = self.labels;
        let mut sink = |row: u64, raw: RawOutcome| {
            debug_assert!(wanted.wants(row));
            f(raw.and_then(|raw| resolve(labels, row, raw)))
        };
        match &self.container {
            Container::Parquet {
                files,
                image_column,
                label_column,
                origin_column,
            } => parquet::visit(
                &parquet::Columns {
                    image: image_column,
                    label: labels.needs_label().then_some(label_column.as_str()),
                    origin: origin_column.as_deref(),
                },
                files,
                wanted,
                &mut sink,
            ),
            Container::Webdataset { files } => webdataset::visit(files, wanted, &mut sink),
            Container::Archive { files } => archive::visit(files, wanted, &mut sink),
            Container::Folder { root } => folder::visit(root, wanted, &mut sink),
        }
    }

    /// Stream the rows `limit` selects, read on a background thread so that
    /// reading overlaps the caller's work.
    pub fn rows(&self) -> Rows {
        self.spawn(None)
    }

    /// Stream only the given rows (e.g. the selected hard images).
    pub fn rows_in(&self, rows: BTreeSet<u64>) -> Rows {
        self.spawn(Some(Wanted::Rows(rows)))
    }

    fn spawn(&self, wanted: Option<Wanted>) -> Rows {
        let (tx, rx) = mpsc::sync_channel(64);
        let source = self.clone();
        let handle = std::thread::spawn(move || {
            let wanted = match wanted.map_or_else(|| source.wanted(), Ok) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let result = source.visit(&wanted, &mut |row| match tx.send(Ok(row)) {
                Ok(()) => ControlFlow::Continue(()),
                // The reader was dropped: stop reading.
                Err(_) => ControlFlow::Break(()),
            });
            if let Err(e) = result {
                let _ = tx.send(Err(e));
            }
        });
        Rows {
            rx,
            handle: Some(handle),
        }
    }
}

/// Rows of a source, read ahead on a background thread. Yields
/// `Err(SourceError)` once for a file that cannot be read, then stops.
pub struct Rows {
    rx: mpsc::Receiver<Result<RowOutcome, SourceError>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Iterator for Rows {
    type Item = Result<RowOutcome, SourceError>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.recv() {
            Ok(item) => Some(item),
            // The reader is done; if it died instead, say so rather than
            // ending the rows early.
            Err(_) => match self.handle.take().map(|h| h.join()) {
                Some(Err(_)) => Some(Err(SourceError::ReaderDied)),
                _ => None,
            },
        }
    }
}

fn resolve(labels: LabelConvention, row: u64, raw: RawRow) -> RowOutcome {
    let image = raw
        .image
        .ok_or_else(|| Skip::new(row, "missing-image", "the row holds no image"))?;
    let resolved = labels
        .resolve(raw.label.as_ref(), raw.path.as_deref())
        .map_err(|e| {
            let at = raw
                .path
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default();
            Skip::new(row, e.reason(), format!("{e}{at}"))
        })?;
    Ok(SourceRecord {
        row,
        path: raw.path,
        image,
        labels: resolved,
        origin: raw.origin,
    })
}

/// Members larger than this are not read whole (a zip or tar bomb, or not
/// an image): the row is skipped as `too-large`.
pub(crate) const MAX_MEMBER_BYTES: u64 = 256 << 20;

/// Read a member up to [`MAX_MEMBER_BYTES`]; `None` when it is larger.
pub(crate) fn read_member(
    r: impl std::io::Read,
    declared: u64,
) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let mut buf = Vec::with_capacity(declared.min(1 << 24) as usize);
    r.take(MAX_MEMBER_BYTES + 1).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= MAX_MEMBER_BYTES).then_some(buf))
}

fn oversize_skip(row: u64, member: &str) -> Skip {
    Skip::new(
        row,
        "too-large",
        format!(
            "member `{member}` is over {} MiB; it is not read",
            MAX_MEMBER_BYTES >> 20
        ),
    )
}

/// File extensions read as images (case-insensitive).
pub(crate) const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

fn is_image_extension(ext: &str) -> bool {
    IMAGE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext))
}

/// A member path inside an archive as plain relative components joined by
/// `/`, or `None` when it could escape the folder it is read into
/// (`..`, an absolute path, a drive prefix).
pub(crate) fn safe_member_path(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_string()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// A class-folder member `<...>/<class>/<file>`: check it is an image and
/// take the class from its folder.
pub(crate) fn class_folder_row(row: u64, member: &str) -> Result<RawRow, Skip> {
    let (dir, file) = member.rsplit_once('/').unwrap_or(("", member));
    let ext = file.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    if !is_image_extension(ext) {
        return Err(Skip::new(
            row,
            "not-an-image",
            format!(
                "`{member}` is not an image file (expected .{})",
                IMAGE_EXTENSIONS.join(", .")
            ),
        ));
    }
    let class = dir.rsplit('/').next().unwrap_or("");
    Ok(RawRow {
        path: Some(member.to_string()),
        image: None,
        label: (!class.is_empty()).then(|| RawLabel::Texts(vec![class.to_string()])),
        origin: None,
    })
}

/// Sort paths the way people number shards: digit runs compare as numbers
/// (`2.tar` before `10.tar`).
pub(crate) fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for ((da, sa), (db, sb)) in ca.iter().zip(&cb) {
        let ord = if *da && *db {
            let (ta, tb) = (sa.trim_start_matches('0'), sb.trim_start_matches('0'));
            ta.len()
                .cmp(&tb.len())
                .then(ta.cmp(tb))
                .then(sa.len().cmp(&sb.len()))
        } else {
            sa.cmp(sb)
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_spread_and_stable() {
        let Wanted::Rows(rows) = sample_rows(10, 3) else {
            panic!("expected a sample")
        };
        assert_eq!(rows.into_iter().collect::<Vec<_>>(), vec![0, 3, 6]);
        assert!(matches!(sample_rows(5, 5), Wanted::All));
        assert!(matches!(sample_rows(5, 9), Wanted::All));
        let Wanted::Rows(rows) = sample_rows(1_000_000, 300) else {
            panic!()
        };
        assert_eq!(rows.len(), 300);
        assert!(*rows.last().unwrap() > 990_000);
    }

    #[test]
    fn member_paths_cannot_escape() {
        assert_eq!(
            safe_member_path(Path::new("./sketch/n01440764/a.JPEG")).as_deref(),
            Some("sketch/n01440764/a.JPEG")
        );
        assert_eq!(safe_member_path(Path::new("../evil.jpg")), None);
        assert_eq!(safe_member_path(Path::new("a/../../evil.jpg")), None);
        assert_eq!(safe_member_path(Path::new("/etc/passwd")), None);
        assert_eq!(safe_member_path(Path::new(".")), None);
    }

    #[test]
    fn class_folders_give_the_label_and_refuse_other_files() {
        let row = class_folder_row(4, "v2-format-val/17/abc.jpeg").unwrap();
        assert_eq!(row.label, Some(RawLabel::Texts(vec!["17".into()])));
        let skip = class_folder_row(5, "n01440764/notes.txt").unwrap_err();
        assert_eq!((skip.row, skip.reason.as_str()), (5, "not-an-image"));
        assert!(skip.detail.contains("notes.txt"));
        assert_eq!(class_folder_row(6, "top.png").unwrap().label, None);
    }

    #[test]
    fn shards_sort_by_number() {
        let mut v = vec!["test/10.tar", "test/2.tar", "test/1.tar", "test/0.tar"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["test/0.tar", "test/1.tar", "test/2.tar", "test/10.tar"]);
        assert!(natural_cmp("a-00002", "a-00010").is_lt());
    }
}
