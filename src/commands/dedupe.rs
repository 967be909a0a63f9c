//! `dedupe`: group near-duplicate images by perceptual hash and write the
//! groups for `select` and `review`.

use anyhow::Result;

use super::context::{load_context, read_plan};
use crate::cli::DedupeArgs;
use crate::dedupe::Duplicates;
use crate::printer::Printer;

pub fn run(args: DedupeArgs, p: Printer) -> Result<()> {
    let ctx = load_context(&args.manifest, p)?;
    let plan = read_plan(&ctx)?;
    let selection = crate::select::Selection::read(&plan.run_dir)?;
    let dups = crate::duplicates::find(&plan, &selection, args.all, args.max_distance)?;
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
