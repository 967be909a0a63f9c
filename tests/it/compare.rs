//! `compare` against a "released" hard set the test builds in the local Hub
//! cache: one image shared byte for byte, one re-encoded with another label,
//! one the run solved, one from outside the run's sources, one that does
//! not decode; and the run keeps one image the release lacks. Every count is
//! checked, then the errors for bad reference input.

use crate::fixture::{ok, stderr, stdout, Fixture, LABELS};
use imagenet_hard::demo::{put_in_hub_cache, synthetic_rows, DEMO_COMMIT};
use imagenet_hard::export::{write_single_shard, HardRow};
use imagenet_hard::hub::RepoKind;
use std::path::{Path, PathBuf};

const RELEASED: &str = "test-org/released-hard";

fn jpeg(img: &image::RgbImage, quality: u8) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(img)
        .unwrap();
    out.into_inner()
}

/// The fixture's run: rows 2, 4, 5 (labels 5, 9, 11) hard; rows 0, 1, 3, 7
/// solved; row 6 does not decode.
fn built() -> Fixture {
    let fx = Fixture::new();
    fx.fill_cache();
    let manifest = fx.write_manifest(DEMO_COMMIT);
    ok(&fx.run(&["build", manifest.to_str().unwrap()], &[]));
    fx
}

/// The released rows: row 2's bytes as they are (label 5: agrees), row 4
/// decoded and saved again as JPEG (label 8: disjoint from our 9), row 0
/// (which always-3 solves), a picture from nowhere, and bytes that are no
/// image. Row 5 of the run is left out.
fn released_rows(fx: &Fixture) -> Vec<HardRow> {
    let rows = synthetic_rows(&LABELS);
    let decoded = image::load_from_memory(&rows[4].image).unwrap().to_rgb8();
    let elsewhere = image::RgbImage::from_fn(90, 70, |x, y| {
        image::Rgb([(x * 3) as u8, 255 - (y * 3) as u8, ((x * y) % 251) as u8])
    });
    let row = |image: Vec<u8>, path: &str, label: i64| HardRow {
        image,
        path: path.into(),
        labels: vec![label],
        origin: "tiny_source".into(),
    };
    let _ = fx;
    vec![
        row(rows[2].image.clone(), "two.jpg", 5),
        row(jpeg(&decoded, 70), "four-again.jpg", 8),
        row(rows[0].image.clone(), "zero.jpg", 3),
        row(jpeg(&elsewhere, 90), "elsewhere.jpg", 5),
        row(b"not an image".to_vec(), "broken.jpg", 5),
    ]
}

fn shard_bytes(fx: &Fixture, rows: Vec<HardRow>) -> Vec<u8> {
    let tmp = tempfile::tempdir_in(fx.path()).unwrap();
    std::fs::read(write_single_shard(tmp.path(), rows, 1).unwrap()).unwrap()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn compare_against_a_released_set_counts_what_was_planted() {
    let fx = built();
    let shard = shard_bytes(&fx, released_rows(&fx));
    put_in_hub_cache(
        &fx.cache(),
        RepoKind::Dataset,
        RELEASED,
        DEMO_COMMIT,
        &[("data/validation-00000-of-00001.parquet", &shard)],
    )
    .unwrap();
    let out = fx.run(&["compare", "run", RELEASED], &[("HF_HUB_OFFLINE", "1")]);
    ok(&out);
    let cmp = json(&fx.path().join("run/compare/compare.json"));
    let overall = &cmp["overall"];
    let count = |k: &str| overall[k].as_u64().unwrap();
    assert_eq!(
        [
            count("run_hard"),
            count("reference"),
            count("matched"),
            count("matched_by_pixels"),
            count("matched_perceptually"),
            count("only_in_run"),
            count("only_in_reference"),
        ],
        [3, 4, 2, 1, 1, 1, 2],
        "{overall}"
    );
    assert_eq!(
        overall["labels"],
        serde_json::json!({"exact": 1, "disjoint": 1})
    );
    assert_eq!(cmp["skipped"]["reference: does not decode"], 1);
    assert_eq!(cmp["reference_revision"], DEMO_COMMIT);
    // Which image went where, and why.
    let matched = cmp["matched"].as_array().unwrap();
    let by_row = |r: u64| {
        matched
            .iter()
            .find(|m| m["run"]["row"] == r)
            .unwrap_or_else(|| panic!("row {r} unmatched: {cmp}"))
    };
    assert_eq!(by_row(2)["match"], "pixels");
    assert_eq!(by_row(2)["labels"], "exact");
    assert_eq!(by_row(4)["match"], "perceptual");
    assert_eq!(by_row(4)["labels"], "disjoint");
    assert_eq!(by_row(4)["reference"]["id"], "four-again.jpg");
    let only_run = &cmp["only_in_run"][0];
    assert_eq!(
        (&only_run["image"]["row"], &only_run["why"]),
        (
            &serde_json::json!(5),
            &serde_json::json!("not in the reference")
        )
    );
    let only_ref: Vec<(String, String)> = cmp["only_in_reference"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["image"]["id"].as_str().unwrap().to_string(),
                o["why"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(only_ref[0].0, "zero.jpg");
    assert!(
        only_ref[0].1.starts_with("we solved it: always-3 at r"),
        "{only_ref:?}"
    );
    assert_eq!(
        cmp["only_in_reference"][0]["solved_by"]["model"],
        "always-3"
    );
    assert_eq!(
        only_ref[1],
        (
            "elsewhere.jpg".to_string(),
            "not in our sources".to_string()
        )
    );
    // The table on stdout, the Markdown and the contact sheet.
    let table = stdout(&out);
    assert!(
        table.contains("| **all** | - | 4 | 3 | 2 | 1 | 1 | 1 | 2 | 1 | 1 |"),
        "{table}"
    );
    let md = std::fs::read_to_string(fx.path().join("run/compare/compare.md")).unwrap();
    assert!(md.contains("## Matched, labels differ") && md.contains("not in our sources"));
    assert!(fx.path().join("run/compare/disagreements.png").exists());
}

#[test]
fn compare_with_another_run_names_what_solved_the_difference() {
    // The run as built is the reference; the run itself is then reviewed:
    // row 5 (hard, label 11) relabelled to class 3, which always-3 solves.
    let fx = built();
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(fx.path().join("run"))
        .arg(fx.path().join("run-as-built"))
        .status()
        .unwrap();
    assert!(cp.success());
    let review = fx.path().join("review.csv");
    std::fs::write(
        &review,
        "origin,row,labels,decision,comment,reviewer\ntiny-source,5,3,relabel,,t\n",
    )
    .unwrap();
    let manifest = fx.path().join("fixture.toml");
    ok(&fx.run(
        &[
            "select",
            manifest.to_str().unwrap(),
            "--labels",
            review.to_str().unwrap(),
        ],
        &[],
    ));
    let out = fx.run(&["compare", "run", "run-as-built"], &[]);
    ok(&out);
    let cmp = json(&fx.path().join("run/compare/compare.json"));
    let overall = &cmp["overall"];
    assert_eq!(
        (&overall["matched"], &overall["only_in_run"]),
        (&serde_json::json!(2), &serde_json::json!(0)),
        "{cmp}"
    );
    let only = &cmp["only_in_reference"][0];
    assert_eq!(only["image"]["row"], 5, "{cmp}");
    assert!(
        only["why"]
            .as_str()
            .unwrap()
            .starts_with("we solved it: always-3 at r"),
        "{only}"
    );
    // And the other way round: the reference solved it.
    let out = fx.run(&["compare", "run-as-built", "run"], &[]);
    ok(&out);
    let cmp = json(&fx.path().join("run-as-built/compare/compare.json"));
    let only = &cmp["only_in_run"][0];
    assert!(
        only["why"]
            .as_str()
            .unwrap()
            .starts_with("the reference solved it: always-3 at r"),
        "{only}"
    );
}

fn folder_with(fx: &Fixture, name: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let dir = fx.path().join(name);
    for (path, bytes) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    dir
}

#[test]
fn bad_references_get_errors_that_name_the_file_and_the_fix() {
    let fx = built();
    let run = |reference: &str, extra: &[&str]| {
        let mut args = vec!["compare", "run", reference];
        args.extend_from_slice(extra);
        let out = fx.run(&args, &[("HF_HUB_OFFLINE", "1")]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        stderr(&out)
    };
    // A shard without the `origin` column (a plain source, not a hard set).
    let plain = fx.dataset_bytes();
    folder_with(
        &fx,
        "no-origin",
        &[("data/validation-00000-of-00001.parquet", plain)],
    );
    let err = run("no-origin", &[]);
    assert!(
        err.contains("validation-00000-of-00001.parquet")
            && err.contains("no column `origin`")
            && err.contains("ImageNet-Hard schema"),
        "{err}"
    );
    // `eval` reads the same schema and says the same.
    let weights = fx.model_weights(3);
    let out = fx.run(
        &[
            "eval",
            "no-origin",
            "--model",
            weights.to_str().unwrap(),
            "--arch",
            "resnet18",
        ],
        &[],
    );
    let err = stderr(&out);
    assert!(
        err.contains("no column `origin`") && err.contains("ImageNet-Hard schema"),
        "{err}"
    );
    // Files named as shards that are not Parquet.
    folder_with(
        &fx,
        "not-parquet",
        &[("data/validation-00000-of-00001.parquet", b"hello".to_vec())],
    );
    let err = run("not-parquet", &[]);
    assert!(
        err.contains("not-parquet/data/validation-00000-of-00001.parquet")
            && err.contains("not a readable Parquet shard"),
        "{err}"
    );
    // A folder of other files.
    folder_with(&fx, "other-files", &[("data/notes.txt", b"x".to_vec())]);
    let err = run("other-files", &[]);
    assert!(
        err.contains("other-files") && err.contains("validation-XXXXX-of-YYYYY"),
        "{err}"
    );
    // A revision that does not resolve (offline, not in the cache).
    let shard = shard_bytes(&fx, released_rows(&fx));
    put_in_hub_cache(
        &fx.cache(),
        RepoKind::Dataset,
        RELEASED,
        DEMO_COMMIT,
        &[("data/validation-00000-of-00001.parquet", &shard)],
    )
    .unwrap();
    let err = run(RELEASED, &["--revision", "v9-does-not-exist"]);
    assert!(
        err.contains(RELEASED) && err.contains("v9-does-not-exist"),
        "{err}"
    );
    // RUN that is not a run directory.
    let out = fx.run(&["compare", "no-such-run", RELEASED], &[]);
    assert!(
        stderr(&out).contains("no-such-run: not a run directory"),
        "{}",
        stderr(&out)
    );
}
