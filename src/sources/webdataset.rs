//! WebDataset tar shards (as the `clip-benchmark/wds_*` repositories): a
//! sample is the run of consecutive members sharing a key, the member path
//! up to the first `.` of its file name (`s0000000.jpg` + `s0000000.cls`).
//! The image is the first member with an image extension; the label is the
//! text of the `.cls` member. Members are read straight from the tar; only
//! the selected samples' data is read.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use super::{
    is_image_extension, read_member, safe_member_path, RawRow, Sink, Skip, SourceError, Wanted,
};
use crate::labels::RawLabel;

/// `key` and `extension` of a member path (`a/s01.seg.png` → `a/s01`, `seg.png`).
fn split_key(path: &str) -> (&str, &str) {
    let name_at = path.rfind('/').map_or(0, |i| i + 1);
    match path[name_at..].find('.') {
        Some(dot) => (&path[..name_at + dot], &path[name_at + dot + 1..]),
        None => (path, ""),
    }
}

/// One sample being gathered.
struct Sample {
    key: String,
    row: u64,
    image: Option<(String, Vec<u8>)>,
    cls: Option<String>,
    unsafe_path: Option<String>,
    /// A member over the size limit.
    oversize: Option<String>,
}

impl Sample {
    fn finish(self) -> Result<RawRow, Skip> {
        if let Some(p) = self.unsafe_path {
            return Err(Skip::new(
                self.row,
                "unsafe-path",
                format!("member `{p}` points outside the archive"),
            ));
        }
        if let Some(p) = self.oversize {
            return Err(super::oversize_skip(self.row, &p));
        }
        let Some((path, image)) = self.image else {
            return Err(Skip::new(
                self.row,
                "missing-image",
                format!(
                    "sample `{}` has no .jpg, .jpeg, .png or .webp member",
                    self.key
                ),
            ));
        };
        Ok(RawRow {
            path: Some(path),
            image: Some(image),
            label: self
                .cls
                .map(|t| RawLabel::Texts(vec![t.trim().to_string()])),
            origin: None,
        })
    }
}

fn open(file: &Path) -> Result<tar::Archive<std::fs::File>, SourceError> {
    let f = std::fs::File::open(file).map_err(|e| SourceError::io(file, e))?;
    Ok(tar::Archive::new(f))
}

fn tar_err(file: &Path, e: std::io::Error) -> SourceError {
    SourceError::archive(file, format!("not a readable tar shard: {e}"))
}

/// Walk the shards, calling `f(row, sample_complete)` per sample; the
/// closure decides whether member data is read via `wanted`.
fn walk(
    files: &[PathBuf],
    wanted: &Wanted,
    read_data: bool,
    sink: &mut Sink,
) -> Result<u64, SourceError> {
    let mut row = 0u64;
    for file in files {
        let mut archive = open(file)?;
        let mut current: Option<Sample> = None;
        let entries = archive.entries_with_seek().map_err(|e| tar_err(file, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| tar_err(file, e))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let raw_path = entry.path().map_err(|e| tar_err(file, e))?.into_owned();
            let safe = safe_member_path(&raw_path);
            let shown = safe
                .clone()
                .unwrap_or_else(|| raw_path.to_string_lossy().into_owned());
            let (key, ext) = split_key(&shown);
            let (key, ext) = (key.to_string(), ext.to_ascii_lowercase());
            if let Some(done) = current.take_if(|s| s.key != key) {
                if emit(done, wanted, read_data, sink).is_break() {
                    return Ok(row);
                }
                row += 1;
                if wanted.last().is_some_and(|last| row > last) {
                    return Ok(row);
                }
            }
            let sample = current.get_or_insert_with(|| Sample {
                key: key.clone(),
                row,
                image: None,
                cls: None,
                unsafe_path: None,
                oversize: None,
            });
            if safe.is_none() {
                sample.unsafe_path.get_or_insert(shown.clone());
                continue;
            }
            if !(read_data && wanted.wants(row)) {
                continue;
            }
            let declared = entry.size();
            let mut read = |what: &str| -> Result<Option<Vec<u8>>, SourceError> {
                read_member(&mut entry, declared).map_err(|e| {
                    SourceError::archive(file, format!("cannot read {what} member `{shown}`: {e}"))
                })
            };
            if ext == "cls" {
                match read("label")? {
                    Some(bytes) => sample.cls = Some(String::from_utf8_lossy(&bytes).into_owned()),
                    None => sample.oversize = Some(shown.clone()),
                }
            } else if sample.image.is_none() && is_image_extension(&ext) {
                match read("image")? {
                    Some(bytes) => sample.image = Some((shown.clone(), bytes)),
                    None => sample.oversize = Some(shown.clone()),
                }
            }
        }
        if let Some(done) = current.take() {
            if emit(done, wanted, read_data, sink).is_break() {
                return Ok(row);
            }
            row += 1;
        }
    }
    Ok(row)
}

fn emit(s: Sample, wanted: &Wanted, read_data: bool, sink: &mut Sink) -> ControlFlow<()> {
    if !read_data || !wanted.wants(s.row) {
        return ControlFlow::Continue(());
    }
    let row = s.row;
    sink(row, s.finish())
}

pub(crate) fn count(files: &[PathBuf]) -> Result<u64, SourceError> {
    walk(files, &Wanted::All, false, &mut |_, _| {
        ControlFlow::Continue(())
    })
}

pub(crate) fn visit(
    files: &[PathBuf],
    wanted: &Wanted,
    sink: &mut Sink,
) -> Result<(), SourceError> {
    walk(files, wanted, true, sink).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_end_at_the_first_dot_of_the_file_name() {
        assert_eq!(split_key("s0000000.jpg"), ("s0000000", "jpg"));
        assert_eq!(split_key("a.b/s01.seg.png"), ("a.b/s01", "seg.png"));
        assert_eq!(split_key("noext"), ("noext", ""));
    }
}
