//! `merge`: once every unit is scanned (by however many workers), the
//! stages after the scan: select the hard set, export the shards and the
//! card, write the report. Refuses while units are missing.

use anyhow::Result;

use super::context::{load_context, read_plan};
use super::shared::merge;
use crate::cli::ManifestArg;
use crate::printer::Printer;

pub fn run(arg: ManifestArg, p: Printer) -> Result<()> {
    let ctx = load_context(&arg, p)?;
    let plan = read_plan(&ctx)?;
    merge(&plan, p)
}
