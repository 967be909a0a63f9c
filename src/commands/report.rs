//! `report`: the paper's analyses of a finished run from its stored records.

use anyhow::Result;

use super::context::{load_context, read_plan};
use crate::cli::ManifestArg;
use crate::printer::Printer;

pub fn run(arg: ManifestArg, p: Printer) -> Result<()> {
    let ctx = load_context(&arg, p)?;
    let plan = read_plan(&ctx)?;
    let selection = crate::select::Selection::read(&plan.run_dir)?;
    super::shared::report(&plan, &selection, p)
}
