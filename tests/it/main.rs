//! One integration-test binary (as ripgrep's `tests/tests.rs`): golden parity
//! with Pillow and PyTorch, and the whole pipeline run offline against a
//! generated Hub cache and a loopback Hub stand-in.

mod architecture;
mod bad_input;
mod compare;
mod curate;
mod demo;
mod eval;
mod feed;
mod fixture;
mod fuzz_smoke;
mod golden;
mod golden_channels_last;
mod golden_clip;
mod golden_effnet;
mod golden_memo;
mod golden_vgg;
mod golden_vit;
mod hub_server;
mod pipeline;
mod report;
mod review;
mod snapshots;
mod sources;
mod units;
