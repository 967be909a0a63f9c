//! Archives of class folders: zip, tar or tar.gz holding `<...>/<class>/<file>`
//! (as `songweig/imagenet_sketch`'s zip and `vaishaal/ImageNetV2`'s tarballs).
//! The kind is sniffed from the first bytes, not the name (some `.tar.gz`
//! files are plain tars). Every regular file is a row, in archive order;
//! members are streamed, never extracted, and a member whose path could
//! escape the archive (`../`, absolute) is a counted `unsafe-path` skip.

use std::io::{BufReader, Read};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use super::{
    class_folder_row, oversize_skip, read_member, safe_member_path, RawOutcome, Sink, Skip,
    SourceError, Wanted,
};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Zip,
    Tar,
    TarGz,
}

fn sniff(file: &Path) -> Result<Kind, SourceError> {
    let mut f = std::fs::File::open(file).map_err(|e| SourceError::io(file, e))?;
    let mut head = [0u8; 262];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(SourceError::io(file, e)),
        }
    }
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Ok(Kind::Zip)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Kind::TarGz)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Ok(Kind::Tar)
    } else {
        Err(SourceError::archive(
            file,
            "not a zip, tar or tar.gz archive (by its first bytes); \
             for Parquet or WebDataset files set `format` in the [[source]] table",
        ))
    }
}

pub(crate) fn any_compressed(files: &[PathBuf]) -> bool {
    files.iter().any(|f| matches!(sniff(f), Ok(Kind::TarGz)))
}

pub(crate) fn count(files: &[PathBuf]) -> Result<u64, SourceError> {
    let mut total = 0;
    for file in files {
        total += match sniff(file)? {
            Kind::Zip => {
                let zip = open_zip(file)?;
                (0..zip.len())
                    .filter(|&i| !matches!(zip.name_for_index(i), Some(Ok(n)) if n.ends_with('/')))
                    .count() as u64
            }
            kind => {
                walk_tar(file, kind, &Wanted::All, 0, false, &mut |_, _| {
                    ControlFlow::Continue(())
                })?
                .0
            }
        };
    }
    Ok(total)
}

pub(crate) fn visit(
    files: &[PathBuf],
    wanted: &Wanted,
    sink: &mut Sink,
) -> Result<(), SourceError> {
    let mut offset = 0u64;
    for file in files {
        if wanted.last().is_some_and(|last| offset > last) {
            break;
        }
        let (rows, flow) = match sniff(file)? {
            Kind::Zip => visit_zip(file, wanted, offset, sink)?,
            kind => walk_tar(file, kind, wanted, offset, true, sink)?,
        };
        if flow.is_break() {
            break;
        }
        offset += rows;
    }
    Ok(())
}

fn open_zip(file: &Path) -> Result<zip::ZipArchive<BufReader<std::fs::File>>, SourceError> {
    let f = std::fs::File::open(file).map_err(|e| SourceError::io(file, e))?;
    zip::ZipArchive::new(BufReader::new(f))
        .map_err(|e| SourceError::archive(file, format!("not a readable zip: {e}")))
}

/// Rows of one zip (regular files in central-directory order), starting at
/// global row `offset`; only selected members are decompressed.
fn visit_zip(
    file: &Path,
    wanted: &Wanted,
    offset: u64,
    sink: &mut Sink,
) -> Result<(u64, ControlFlow<()>), SourceError> {
    let mut zip = open_zip(file)?;
    let mut row = offset;
    for i in 0..zip.len() {
        let name = match zip.name_for_index(i) {
            Some(Ok(name)) => name.into_owned(),
            Some(Err(e)) => return Err(SourceError::archive(file, format!("member {i}: {e}"))),
            None => continue,
        };
        if name.ends_with('/') {
            continue;
        }
        if wanted.last().is_some_and(|last| row > last) {
            return Ok((row - offset, ControlFlow::Break(())));
        }
        if wanted.wants(row) {
            let outcome = member_row(file, row, Path::new(&name), &name, || {
                let entry = zip
                    .by_index(i)
                    .map_err(|e| SourceError::archive(file, format!("member `{name}`: {e}")))?;
                let declared = entry.size();
                Ok((entry, declared))
            })?;
            if sink(row, outcome).is_break() {
                return Ok((row + 1 - offset, ControlFlow::Break(())));
            }
        }
        row += 1;
    }
    Ok((row - offset, ControlFlow::Continue(())))
}

/// A class-folder member as a row: refused unread when its path could
/// escape or it is not an image, else opened with `open` and read (up to
/// the member size limit).
fn member_row<R: Read>(
    file: &Path,
    row: u64,
    path: &Path,
    shown: &str,
    open: impl FnOnce() -> Result<(R, u64), SourceError>,
) -> Result<RawOutcome, SourceError> {
    let Some(member) = safe_member_path(path) else {
        return Ok(Err(unsafe_skip(row, shown)));
    };
    let mut raw = match class_folder_row(row, &member) {
        Ok(raw) => raw,
        Err(skip) => return Ok(Err(skip)),
    };
    let (reader, declared) = open()?;
    match read_member(reader, declared)
        .map_err(|e| SourceError::archive(file, format!("cannot read member `{shown}`: {e}")))?
    {
        Some(buf) => {
            raw.image = Some(buf);
            Ok(Ok(raw))
        }
        None => Ok(Err(oversize_skip(row, shown))),
    }
}

fn unsafe_skip(row: u64, name: &str) -> Skip {
    Skip::new(
        row,
        "unsafe-path",
        format!("member `{name}` points outside the archive; it is not read"),
    )
}

/// Rows of one tar or tar.gz. With `read_data` false only headers are
/// walked (counting); data of unselected members is skipped.
fn walk_tar(
    file: &Path,
    kind: Kind,
    wanted: &Wanted,
    offset: u64,
    read_data: bool,
    sink: &mut Sink,
) -> Result<(u64, ControlFlow<()>), SourceError> {
    let f = std::fs::File::open(file).map_err(|e| SourceError::io(file, e))?;
    match kind {
        Kind::TarGz => {
            let gz = flate2::read::GzDecoder::new(BufReader::new(f));
            let mut archive = tar::Archive::new(gz);
            let entries = archive.entries().map_err(|e| tar_err(file, e))?;
            tar_rows(file, entries, wanted, offset, read_data, sink)
        }
        _ => {
            let mut archive = tar::Archive::new(f);
            let entries = archive.entries_with_seek().map_err(|e| tar_err(file, e))?;
            tar_rows(file, entries, wanted, offset, read_data, sink)
        }
    }
}

fn tar_err(file: &Path, e: std::io::Error) -> SourceError {
    SourceError::archive(file, format!("not a readable tar archive: {e}"))
}

fn tar_rows<R: Read>(
    file: &Path,
    entries: tar::Entries<'_, R>,
    wanted: &Wanted,
    offset: u64,
    read_data: bool,
    sink: &mut Sink,
) -> Result<(u64, ControlFlow<()>), SourceError> {
    let mut row = offset;
    for entry in entries {
        let mut entry = entry.map_err(|e| tar_err(file, e))?;
        let kind = entry.header().entry_type();
        if kind.is_dir()
            || kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            continue;
        }
        if read_data && wanted.last().is_some_and(|last| row > last) {
            return Ok((row - offset, ControlFlow::Break(())));
        }
        if read_data && wanted.wants(row) {
            let raw_path = entry.path().map_err(|e| tar_err(file, e))?.into_owned();
            let shown = raw_path.to_string_lossy().into_owned();
            let outcome = if !kind.is_file() {
                Err(Skip::new(
                    row,
                    "not-a-file",
                    format!("member `{shown}` is a link or device, not an image file"),
                ))
            } else {
                let declared = entry.size();
                member_row(file, row, &raw_path, &shown, || Ok((&mut entry, declared)))?
            };
            if sink(row, outcome).is_break() {
                return Ok((row + 1 - offset, ControlFlow::Break(())));
            }
        }
        row += 1;
    }
    Ok((row - offset, ControlFlow::Continue(())))
}
