//! The dedupe stage over a run: read the hard images (or, with `all`, every
//! scanned image) again from the sources, hash them (`dedupe::phash`) and
//! group those within a Hamming distance (`dedupe::groups`), in source
//! order. Images that no longer decode cannot be compared and are left out
//! of the count (they were scanned, so this happens only when a source
//! changed under the lock).

use rayon::prelude::*;
use std::collections::BTreeSet;

use crate::dedupe::{groups, phash, Duplicates, Member};
use crate::plan::Plan;
use crate::select::{SelectError, Selection};
use crate::sources::SourceError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DuplicatesError {
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// One image to compare: origin, row, id (path or `origin/row`), bytes.
type Candidate = (String, u64, String, Vec<u8>);

/// The images to compare, in source order (the plan's sources, then row).
fn candidates(
    plan: &Plan,
    selection: &Selection,
    all: bool,
) -> Result<Vec<Candidate>, DuplicatesError> {
    let mut images = Vec::new();
    for source in &plan.sources {
        let rows: BTreeSet<u64> = if all {
            crate::select::load_source(plan, source, None)?
                .0
                .iter()
                .map(|im| im.row)
                .collect()
        } else {
            selection
                .hard
                .iter()
                .filter(|h| h.origin == source.origin)
                .map(|h| h.row)
                .collect()
        };
        if rows.is_empty() {
            continue;
        }
        for outcome in source.reader().rows_in(rows) {
            if let Ok(rec) = outcome? {
                let id = rec
                    .path
                    .clone()
                    .unwrap_or_else(|| format!("{}/{}", source.origin, rec.row));
                images.push((source.origin.clone(), rec.row, id, rec.image));
            }
        }
    }
    Ok(images)
}

/// Group the run's near-duplicates: the hard set's, or (`all`) every
/// scanned image's.
pub(crate) fn find(
    plan: &Plan,
    selection: &Selection,
    all: bool,
    max_distance: u32,
) -> Result<Duplicates, DuplicatesError> {
    let images = candidates(plan, selection, all)?;
    let hashes: Vec<Option<u64>> = images
        .par_iter()
        .map(|(_, _, _, bytes)| {
            crate::zoom::decode_rgb(bytes, plan.decode)
                .ok()
                .map(|img| phash(&img))
        })
        .collect();
    let usable: Vec<usize> = (0..images.len()).filter(|&i| hashes[i].is_some()).collect();
    let flat: Vec<u64> = usable.iter().filter_map(|&i| hashes[i]).collect();
    let found = groups(&flat, max_distance);
    let member = |k: usize| {
        let (origin, row, id, _) = &images[usable[k]];
        Member {
            origin: origin.clone(),
            row: *row,
            id: id.clone(),
            phash: format!("{:016x}", flat[k]),
        }
    };
    Ok(Duplicates {
        scope: if all { "all" } else { "hard" }.into(),
        max_distance,
        images: usable.len(),
        groups: found
            .iter()
            .map(|g| g.iter().map(|&k| member(k)).collect())
            .collect(),
    })
}
