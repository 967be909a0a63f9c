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

/// Every long flag of `command` (and `--help` / `--version`).
fn flags_of(command: &clap::Command) -> Vec<String> {
    let mut flags: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    flags.extend(["--help".into(), "--version".into()]);
    flags
}

/// The `--flag` words of `text` (a flag ends at the first character that
/// cannot be part of one).
fn mentioned_flags(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, _) in text.match_indices("--") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '-') {
            continue;
        }
        let name: String = text[i + 2..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        let name = name.trim_end_matches('-');
        if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
            found.push(format!("--{name}"));
        }
    }
    found
}

/// Every `--flag` a command's help mentions exists: on that command, or
/// (when the help points at another command) on some command.
#[test]
fn every_flag_a_help_mentions_exists() {
    let fx = Fixture::new();
    let cli = imagenet_hard::cli::Cli::command();
    // The global flags (`--quiet`) are the top-level command's.
    let all: Vec<String> = cli
        .get_subcommands()
        .chain([&cli])
        .flat_map(flags_of)
        .collect();
    for sub in cli.get_subcommands().filter(|c| c.get_name() != "help") {
        let out = fx.run(&[sub.get_name(), "--help"], &[]);
        ok(&out);
        let own = flags_of(sub);
        for flag in mentioned_flags(&stdout(&out)) {
            assert!(
                own.contains(&flag) || all.contains(&flag),
                "`{} --help` mentions {flag}, which no command has",
                sub.get_name()
            );
        }
    }
}

/// Command lines suggested in the source (`imagenet-hard CMD ... --flag`,
/// in error messages and help) name flags that CMD has.
#[test]
fn suggested_command_lines_use_real_flags() {
    let cli = imagenet_hard::cli::Cli::command();
    let mut checked = 0;
    for entry in walkdir::WalkDir::new(repo().join("src")) {
        let entry = entry.unwrap();
        if entry.path().extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        for (i, _) in text.match_indices("imagenet-hard ") {
            let rest = &text[i + "imagenet-hard ".len()..];
            let line: String = rest
                .chars()
                .take_while(|c| !matches!(c, '`' | '"' | '\n' | ')' | ';'))
                .collect();
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_lowercase())
                .collect();
            let Some(sub) = cli.get_subcommands().find(|c| c.get_name() == name) else {
                continue;
            };
            let own = flags_of(sub);
            for flag in mentioned_flags(&line) {
                assert!(
                    own.contains(&flag),
                    "{}: `imagenet-hard {line}` uses {flag}, which `{name}` does not have",
                    entry.path().display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 5, "only {checked} suggested flags found");
}
