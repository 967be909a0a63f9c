//! `select`: the hard set and the bounds from stored predictions, under the
//! manifest's rule or `--rule`, with revised labels from `--labels`; no
//! model runs. Writes select/ and report/.

use anyhow::Result;

use super::context::{load_context, read_plan};
use super::shared::{report, select};
use crate::cli::SelectArgs;
use crate::printer::Printer;

pub fn run(args: SelectArgs, p: Printer) -> Result<()> {
    let ctx = load_context(&args.manifest, p)?;
    let plan = read_plan(&ctx)?;
    let relabel = match &args.labels {
        Some(file) => Some(crate::select::Relabel::read(file)?),
        None => None,
    };
    let rule = args.rule.as_ref().unwrap_or(&plan.selection);
    let selection = select(&plan, rule, relabel.as_ref(), p)?;
    if let Some(r) = &selection.relabel {
        p.note(format_args!(
            "Labels from {}: {} images relabelled, {} dropped",
            r.file, r.relabelled, r.dropped
        ));
    }
    report(&plan, &selection, p)?;
    p.note("Run `imagenet-hard export` to write the new hard set.");
    Ok(())
}
