//! A local folder of class folders, `<root>/<class>/<file>` (how ImageNet
//! usually sits on disk). Every file under the root is a row, in sorted path
//! order, so rows are numbered the same on every machine.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use super::{class_folder_row, Sink, SourceError, Wanted};

fn files(root: &Path) -> Result<Vec<(PathBuf, String)>, SourceError> {
    if !root.is_dir() {
        return Err(SourceError::io(
            root,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
        ));
    }
    let mut out = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by(|a, b| a.file_name().cmp(b.file_name()));
    for entry in walker {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            SourceError::io(&path, std::io::Error::other(e.to_string()))
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap_or(entry.path())
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        out.push((entry.into_path(), rel));
    }
    Ok(out)
}

pub(crate) fn count(root: &Path) -> Result<u64, SourceError> {
    Ok(files(root)?.len() as u64)
}

pub(crate) fn visit(root: &Path, wanted: &Wanted, sink: &mut Sink) -> Result<(), SourceError> {
    for (row, (path, rel)) in files(root)?.into_iter().enumerate() {
        let row = row as u64;
        if wanted.last().is_some_and(|last| row > last) {
            break;
        }
        if !wanted.wants(row) {
            continue;
        }
        let outcome = match class_folder_row(row, &rel) {
            Ok(mut raw) => {
                raw.image = Some(std::fs::read(&path).map_err(|e| SourceError::io(&path, e))?);
                Ok(raw)
            }
            Err(skip) => Err(skip),
        };
        if let ControlFlow::Break(()) = sink(row, outcome) {
            break;
        }
    }
    Ok(())
}
