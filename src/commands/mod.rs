//! The commands, one file each: a command takes its parsed arguments,
//! resolves them, calls the stages and reports. Data (tables, JSON) goes
//! to stdout; progress and paths to stderr. [`run`] dispatches.

mod bench;
mod build;
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

/// Run one command.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Build(args) => build::run(args),
        Command::Fetch(arg) => fetch::run(arg),
        Command::Scan(args) => scan::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Status(arg) => status::run(arg),
        Command::Merge(arg) => merge::run(arg),
        Command::Select(args) => select::run(args),
        Command::Report(arg) => report::run(arg),
        Command::Review(args) => review::run(args),
        Command::Dedupe(args) => dedupe::run(args),
        Command::Export(arg) => export::run(arg),
        Command::Eval(args) => eval::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Models(args) => models::run(args),
        Command::Zoom(args) => zoom::run(args),
    }
}
