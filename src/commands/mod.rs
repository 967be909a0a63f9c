//! The commands, one file each: a command takes its parsed arguments,
//! resolves them, calls the stages and reports. Data (tables, JSON) goes
//! to stdout; progress and paths to stderr. [`run`] dispatches.

mod bench;
mod build;
mod compare;
mod context;
mod dedupe;
mod eval;
mod export;
mod fetch;
mod merge;
mod models;
mod plan;
mod predict;
mod report;
mod review;
mod scan;
mod select;
mod shared;
mod status;
mod zoom;

use crate::cli::Command;
use crate::printer::Printer;

/// Run one command, its words going where `p` says.
pub fn run(command: Command, p: Printer) -> anyhow::Result<()> {
    match command {
        Command::Build(args) => build::run(args, p),
        Command::Fetch(arg) => fetch::run(arg, p),
        Command::Scan(args) => scan::run(args, p),
        Command::Plan(args) => plan::run(args, p),
        Command::Status(arg) => status::run(arg, p),
        Command::Merge(arg) => merge::run(arg, p),
        Command::Select(args) => select::run(args, p),
        Command::Report(arg) => report::run(arg, p),
        Command::Review(args) => review::run(args, p),
        Command::Dedupe(args) => dedupe::run(args, p),
        Command::Compare(args) => compare::run(args, p),
        Command::Export(arg) => export::run(arg, p),
        Command::Eval(args) => eval::run(args, p),
        Command::Predict(args) => predict::run(args, p),
        Command::Bench(args) => bench::run(args, p),
        Command::Models(args) => models::run(args, p),
        Command::Zoom(args) => zoom::run(args, p),
    }
}
