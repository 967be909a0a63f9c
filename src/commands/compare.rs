//! `compare`: a run's hard set against a reference (the released dataset,
//! a folder of its shards, or another run directory), matched by content;
//! writes RUN/compare/ and prints the per-source table.

use anyhow::{Context as _, Result};
use std::path::Path;

use crate::cli::CompareArgs;
use crate::compare::{compare, write, Reference};
use crate::hub::{Hub, HubConfig};
use crate::plan::Plan;
use crate::printer::Printer;
use crate::run_dir::RunDir;
use crate::select::Selection;

pub fn run(args: CompareArgs, p: Printer) -> Result<()> {
    let (plan, selection) = read_run(&args.run)?;
    let reference = reference(&args.reference, &args.revision)?;
    p.note(format_args!(
        "Comparing {} with {}: decoding and hashing every scanned image of both sides",
        args.run.display(),
        args.reference
    ));
    let cmp = compare(&plan, &selection, &reference, args.max_distance)?;
    let files = write(
        &cmp,
        &plan,
        &reference,
        &RunDir::of(&plan.run_dir).compare(),
    )?;
    if args.json {
        p.json(&cmp)?;
    } else {
        p.result(cmp.markdown());
    }
    for f in files {
        p.note(format_args!("Wrote {}", f.display()));
    }
    Ok(())
}

/// A run directory's plan (read from `dir`, wherever it was written) and
/// its selection.
fn read_run(dir: &Path) -> Result<(Plan, Selection)> {
    let mut plan = Plan::read(dir).with_context(|| {
        format!(
            "{}: not a run directory (no readable plan.json); give the run's output \
             directory, e.g. output/demo, after `imagenet-hard build` or `select`",
            dir.display()
        )
    })?;
    plan.run_dir = dir.to_path_buf();
    let selection = Selection::read(dir)?;
    Ok((plan, selection))
}

/// REFERENCE as given: a run directory (it holds plan.json), else a
/// dataset folder or Hub dataset id read at `revision`.
fn reference(arg: &str, revision: &str) -> Result<Reference> {
    let path = Path::new(arg);
    if RunDir::of(path).plan().exists() {
        return Ok(Reference::Run(Box::new(read_run(path)?)));
    }
    let hub = Hub::new(HubConfig::from_env());
    let shards = crate::eval::dataset::resolve(arg, &hub, revision)
        .with_context(|| format!("reference {arg}"))?;
    Ok(Reference::Dataset(shards))
}
