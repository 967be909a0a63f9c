//! `imagenet-hard`: rebuild and curate the ImageNet-Hard benchmark.
//!
//! The pipeline runs one way, a module per stage:
//! manifest -> fetch (hub, download) -> plan (units, cost) -> scan (under
//! claims: sources -> feed (zoom) -> models -> records) -> select (analysis)
//! -> report / export; eval scores models on the exported schema. The
//! commands (`commands/`) wire the stages; `ARCHITECTURE.md` maps them.

pub mod analysis;
pub mod bench;
pub mod claim;
pub mod cli;
pub mod commands;
pub mod compare;
pub mod cost;
pub mod dedupe;
pub mod demo;
pub mod download;
pub mod duplicates;
pub mod eval;
pub mod export;
pub mod feed;
pub mod fetch;
pub mod fuzzing;
pub mod hub;
pub mod labels;
pub mod manifest;
pub mod models;
pub mod pair_order;
pub mod plan;
pub mod plot;
pub mod printer;
pub mod records;
pub mod report;
pub mod review;
pub mod review_csv;
pub mod run_dir;
pub mod scan;
pub mod scenes;
pub mod select;
pub mod sources;
pub mod suspects;
pub mod units;
pub mod util;
pub mod zoom;
