//! `dedupe`: group near-duplicate images by perceptual hash and write the
//! groups for `select` and `review`.

use anyhow::Result;
use rayon::prelude::*;
use std::collections::BTreeSet;

use super::context::{load_context, read_plan};
use crate::cli::DedupeArgs;
use crate::dedupe::{groups, phash, Duplicates, Member};
use crate::printer::Printer;

pub fn run(args: DedupeArgs, p: Printer) -> Result<()> {
    let ctx = load_context(&args.manifest, p)?;
    let plan = read_plan(&ctx)?;
    let selection = crate::select::Selection::read(&plan.run_dir)?;
    // The images to compare, in source order (the plan's sources, then row).
    let mut images: Vec<(String, u64, String, Vec<u8>)> = Vec::new();
    for source in &plan.sources {
        let rows: BTreeSet<u64> = if args.all {
            crate::select::load_source(&plan, source, None)?
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
    let hashes: Vec<Option<u64>> = images
        .par_iter()
        .map(|(_, _, _, bytes)| {
            crate::zoom::decode_rgb(bytes, plan.decode)
                .ok()
                .map(|img| phash(&img))
        })
        .collect();
    // Images that no longer decode cannot be compared (they were scanned, so
    // this does not happen unless the source changed under the lock).
    let usable: Vec<usize> = (0..images.len()).filter(|&i| hashes[i].is_some()).collect();
    let flat: Vec<u64> = usable.iter().filter_map(|&i| hashes[i]).collect();
    let found = groups(&flat, args.max_distance);
    let dups = Duplicates {
        scope: if args.all { "all" } else { "hard" }.into(),
        max_distance: args.max_distance,
        images: usable.len(),
        groups: found
            .iter()
            .map(|g| {
                g.iter()
                    .map(|&k| {
                        let (origin, row, id, _) = &images[usable[k]];
                        Member {
                            origin: origin.clone(),
                            row: *row,
                            id: id.clone(),
                            phash: format!("{:016x}", flat[k]),
                        }
                    })
                    .collect()
            })
            .collect(),
    };
    let path = Duplicates::path(&plan.run_dir);
    crate::util::write_json(&path, &dups)?;
    p.result_line("group\torigin\trow\tid\tphash");
    for (g, members) in dups.groups.iter().enumerate() {
        for m in members {
            p.result_line(format_args!(
                "{g}\t{}\t{}\t{}\t{}",
                m.origin, m.row, m.id, m.phash
            ));
        }
    }
    let copies: usize = dups.groups.iter().map(|g| g.len() - 1).sum();
    p.note(format_args!(
        "{} image(s) compared, {} group(s) of near-duplicates ({} later copies); wrote {}",
        dups.images,
        dups.groups.len(),
        copies,
        path.display()
    ));
    match plan.duplicates {
        crate::manifest::DuplicatePolicy::KeepFirst => p.note(format_args!(
            "`[selection] duplicates = \"keep-first\"`: run `imagenet-hard select` to drop the later copies, then `export`."
        )),
        crate::manifest::DuplicatePolicy::KeepAll => p.note(format_args!(
            "Every copy stays (`[selection] duplicates = \"keep-all\"`); `review` shows the groups."
        )),
    }
    Ok(())
}
