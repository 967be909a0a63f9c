//! What users read, held as snapshots (insta): every command's `--help`
//! (walked from clap's own command tree), `models`, the dry run of the
//! paper manifest and a generated dataset card. A change to any of them
//! shows up as a diff to review (`cargo insta review`, or
//! `INSTA_UPDATE=always cargo test` to accept); machine paths are redacted.

use crate::fixture::{ok, stdout, Fixture};
use clap::CommandFactory;
use std::path::Path;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_command_says_what_it_reads_and_writes() {
    let fx = Fixture::new();
    let cli = imagenet_hard::cli::Cli::command();
    let names: Vec<String> = cli
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .filter(|n| n != "help")
        .collect();
    assert!(names.len() >= 14, "{names:?}");
    for name in &names {
        let out = fx.run(&[name.as_str(), "--help"], &[]);
        ok(&out);
        let help = stdout(&out);
        assert!(
            help.contains("Reads") && help.contains("writes"),
            "`{name} --help` must say what it reads and writes:\n{help}"
        );
        insta::assert_snapshot!(format!("help-{name}"), help);
    }
    let top = fx.run(&["--help"], &[]);
    ok(&top);
    for name in &names {
        assert!(
            stdout(&top).contains(&format!("  {name} ")),
            "{name} in the top help"
        );
    }
    insta::assert_snapshot!("help", stdout(&top));
}

#[test]
fn models_listing() {
    let fx = Fixture::new();
    let out = fx.run(&["models"], &[]);
    ok(&out);
    insta::assert_snapshot!("models", stdout(&out));
}

#[test]
fn dry_run_of_the_paper_manifest() {
    let fx = Fixture::new();
    let manifest = repo().join("manifests/imagenet-hard.toml");
    let out = fx.run(
        &["plan", "--dry-run", manifest.to_str().unwrap()],
        &[("HF_HUB_OFFLINE", "1")],
    );
    ok(&out);
    let text = stdout(&out).replace(&repo().display().to_string(), "[repo]");
    insta::assert_snapshot!("dry-run-imagenet-hard", text);
}

#[test]
fn dataset_card_of_the_fixture_build() {
    let fx = Fixture::new();
    fx.fill_cache();
    let m = fx.write_manifest(imagenet_hard::demo::DEMO_COMMIT);
    ok(&fx.run(&["build", m.to_str().unwrap(), "--device", "cpu"], &[]));
    let card = std::fs::read_to_string(fx.path().join("run/dataset/README.md")).unwrap();
    let card = card
        .replace(&fx.path().display().to_string(), "[fixture]")
        .replace(env!("CARGO_PKG_VERSION"), "[version]");
    insta::assert_snapshot!("card-fixture", card);
}
