//! `merge`: once every unit is scanned (by however many workers), the
//! stages after the scan: select the hard set, export the shards and the
//! card, write the report. Refuses while units are missing.

use anyhow::Result;

use super::context::{load_context, read_plan};
use super::shared::merge;
use crate::cli::ManifestArg;

pub fn run(arg: ManifestArg) -> Result<()> {
    let ctx = load_context(&arg)?;
    let plan = read_plan(&ctx)?;
    merge(&plan)
}
