//! `export`: the hard set as a Hugging Face dataset folder (shards + card).

use anyhow::Result;

use super::context::{load_context, read_plan};
use crate::cli::ManifestArg;
use crate::printer::Printer;

pub fn run(arg: ManifestArg, p: Printer) -> Result<()> {
    let ctx = load_context(&arg, p)?;
    let plan = read_plan(&ctx)?;
    let selection = crate::select::Selection::read(&plan.run_dir)?;
    super::shared::export(&plan, &selection, p)
}
