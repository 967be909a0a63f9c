//! `eval` on datasets in the released layout (two complete shard families, a
//! card naming the row count), locally and from a Hub cache, with TTA, the
//! per-sample CSV, the leaderboard CSV and `--merge`.
//!
//! The fixture models answer one class on every input: class 3 gets logit 10,
//! every other class 0. So the top-5 is 3, 0, 1, 2, 4 (ties to the lower
//! index) for every view of every image, and accuracies follow from the
//! labels alone.

use crate::fixture::{ok, stderr, stdout, Fixture};
use imagenet_hard::demo::{put_in_hub_cache, DEMO_COMMIT};
use imagenet_hard::export::{write_single_shard, HardRow};
use imagenet_hard::hub::RepoKind;
use std::path::{Path, PathBuf};
use std::process::Output;

fn png(seed: u8) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 5, y as u8 * 7, seed]))
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

fn row(labels: &[i64], origin: &str, seed: u8) -> HardRow {
    HardRow {
        image: png(seed),
        path: format!("{seed}.png"),
        labels: labels.to_vec(),
        origin: origin.into(),
    }
}

/// The current family's rows, in shard order. With the always-3 model:
/// a: top-1 1/2, top-5 1/2; b: top-1 1/2, top-5 2/2 (label 2 is 4th);
/// c: 1/1, 1/1; all: top-1 3/5, top-5 4/5.
fn current_rows() -> Vec<Vec<HardRow>> {
    vec![
        vec![row(&[3], "a", 10), row(&[1, 3], "b", 11)],
        vec![row(&[5], "a", 12), row(&[2], "b", 13)],
        vec![row(&[3, 9], "c", 14)],
    ]
}

pub const CURRENT_TABLE: [&str; 4] = [
    "| a | 2 | 50.00 | 50.00 |",
    "| b | 2 | 50.00 | 100.00 |",
    "| c | 1 | 100.00 | 100.00 |",
    "| **all** | 5 | 60.00 | 80.00 |",
];

fn card(num_examples: u64) -> Vec<u8> {
    format!(
        "---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  splits:\n  - name: validation\n    num_examples: {num_examples}\n---\n# hard copy\n"
    )
    .into_bytes()
}

/// The released layout: a stale `-of-00002` family (3 rows of origin
/// `old`, all labelled 3) beside the current `-of-00003-<hash>` family
/// (5 rows), and a card saying 5 rows. Paths relative to the dataset root.
pub fn released_files(fx: &Fixture) -> Vec<(String, Vec<u8>)> {
    let shard = |rows: Vec<HardRow>| {
        let tmp = tempfile::tempdir_in(fx.path()).unwrap();
        let written = write_single_shard(tmp.path(), rows, 2).unwrap();
        std::fs::read(written).unwrap()
    };
    let mut files = vec![("README.md".to_string(), card(5))];
    let stale = vec![
        vec![row(&[3], "old", 1), row(&[3], "old", 2)],
        vec![row(&[3], "old", 3)],
    ];
    for (i, rows) in stale.into_iter().enumerate() {
        files.push((
            format!("data/validation-{i:05}-of-00002.parquet"),
            shard(rows),
        ));
    }
    for (i, rows) in current_rows().into_iter().enumerate() {
        files.push((
            format!("data/validation-{i:05}-of-00003-0f1e2d3c4b5a6978.parquet"),
            shard(rows),
        ));
    }
    files
}

fn write_folder(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// The fixture model answering `class`, as a local file named for it.
fn weights(fx: &Fixture, class: usize) -> PathBuf {
    let path = fx.path().join(format!("always-{class}.safetensors"));
    if !path.exists() {
        std::fs::copy(fx.model_weights(class), &path).unwrap();
    }
    path
}

/// `eval DATASET --model always-<class> <extra>` on the CPU.
pub fn eval(
    fx: &Fixture,
    dataset: &str,
    class: usize,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Output {
    let w = weights(fx, class);
    let mut args = vec![
        "eval",
        dataset,
        "--model",
        w.to_str().unwrap(),
        "--arch",
        "resnet18",
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    fx.run(&args, env)
}

pub fn assert_table(out: &Output, lines: &[&str]) {
    ok(out);
    let table = stdout(out);
    for line in lines {
        // Each row ends with the seconds per image, which vary run to run.
        assert!(
            table.lines().any(|l| l.starts_with(line)),
            "no `{line}` in\n{table}"
        );
    }
}

fn released_folder(fx: &Fixture) -> PathBuf {
    let dir = fx.path().join("released");
    write_folder(&dir, &released_files(fx));
    dir
}

#[test]
fn released_layout_uses_the_family_the_card_counts() {
    let fx = Fixture::new();
    fx.fill_cache();
    let dir = released_folder(&fx);
    let d = dir.to_str().unwrap();

    let out = eval(&fx, d, 3, &[], &[]);
    assert_table(&out, &CURRENT_TABLE);
    assert!(!stdout(&out).contains("| old |"), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("-of-00003 shard family (5 rows")
            && err.contains("-of-00002 left unread as stale"),
        "{err}"
    );

    // A card counting 3 rows picks the other family.
    std::fs::write(dir.join("README.md"), card(3)).unwrap();
    let out = eval(&fx, d, 3, &[], &[]);
    assert_table(
        &out,
        &[
            "| old | 3 | 100.00 | 100.00 |",
            "| **all** | 3 | 100.00 | 100.00 |",
        ],
    );

    // A card matching neither is an error that names the counts found.
    std::fs::write(dir.join("README.md"), card(4)).unwrap();
    let out = eval(&fx, d, 3, &[], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("num_examples (4)")
            && err.contains("-of-00003: 5 rows")
            && err.contains("-of-00002: 3 rows"),
        "{err}"
    );
}

#[test]
fn hub_dataset_is_read_from_the_cache_offline() {
    let fx = Fixture::new();
    fx.fill_cache();
    let files = released_files(&fx);
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    put_in_hub_cache(
        &fx.cache(),
        RepoKind::Dataset,
        "test-org/hard-copy",
        DEMO_COMMIT,
        &refs,
    )
    .unwrap();
    let offline = [("HF_HUB_OFFLINE", "1")];
    let json = fx.path().join("hub.json");
    let out = eval(
        &fx,
        "test-org/hard-copy",
        3,
        &[
            "--dataset-revision",
            DEMO_COMMIT,
            "--json",
            json.to_str().unwrap(),
        ],
        &offline,
    );
    assert_table(&out, &CURRENT_TABLE);
    assert!(stderr(&out).contains("stale"), "{}", stderr(&out));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["dataset"], "test-org/hard-copy");
    assert_eq!(report["dataset_revision"], DEMO_COMMIT);
    assert_eq!(
        report["files"],
        serde_json::json!([
            "data/validation-00000-of-00003-0f1e2d3c4b5a6978.parquet",
            "data/validation-00001-of-00003-0f1e2d3c4b5a6978.parquet",
            "data/validation-00002-of-00003-0f1e2d3c4b5a6978.parquet"
        ])
    );
    assert_eq!(report["config"]["tta"], "none");
    assert_eq!(report["config"]["aggregate"], serde_json::Value::Null);
    assert_eq!(report["per_origin"]["b"]["top5_correct"], 2);

    // The default revision `main` resolves through the cached ref.
    let out = eval(&fx, "test-org/hard-copy", 3, &[], &offline);
    assert_table(&out, &CURRENT_TABLE);

    // A repo the cache lacks: the error names it and the offline setting.
    let out = eval(&fx, "test-org/not-cached", 3, &[], &offline);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("test-org/not-cached") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

#[test]
fn per_sample_csv_and_merge_build_a_leaderboard() {
    let fx = Fixture::new();
    fx.fill_cache();
    let dir = released_folder(&fx);
    let d = dir.to_str().unwrap();
    let p = |name: &str| fx.path().join(name).to_str().unwrap().to_string();
    let (samples, board, a, b) = (p("samples.csv"), p("board.csv"), p("a.json"), p("b.json"));

    let out = eval(
        &fx,
        d,
        3,
        &["--per-sample", &samples, "--csv", &board, "--json", &a],
        &[],
    );
    ok(&out);
    assert_eq!(
        std::fs::read_to_string(&samples).unwrap(),
        "id,origin,labels,prediction,correct,top5\n\
         10.png,a,3,3,true,3 0 1 2 4\n\
         11.png,b,1 3,3,true,3 0 1 2 4\n\
         12.png,a,5,3,false,3 0 1 2 4\n\
         13.png,b,2,3,false,3 0 1 2 4\n\
         14.png,c,3 9,3,true,3 0 1 2 4\n"
    );
    // The always-7 model: no label 7, so top-1 0/5; its top-5 is 7, 0, 1, 2, 3,
    // which holds a label of every row but the one labelled 5: 4/5.
    ok(&eval(&fx, d, 7, &["--csv", &board, "--json", &b], &[]));

    let csv = std::fs::read_to_string(&board).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert_eq!(
        lines[0],
        "model,model_provenance,dataset,dataset_revision,tta,aggregate,images,top1,top5,tool_version"
    );
    let fields = |line: &str| -> Vec<String> { line.split(',').map(String::from).collect() };
    let version = env!("CARGO_PKG_VERSION");
    let r3 = fields(lines[1]);
    assert_eq!(r3[0], "always-3");
    assert_eq!(r3[2], d);
    assert_eq!(r3[3..], ["", "none", "", "5", "60.00", "80.00", version]);
    let r7 = fields(lines[2]);
    assert_eq!(
        (r7[0].as_str(), r7[7].as_str(), r7[8].as_str()),
        ("always-7", "0.00", "80.00")
    );

    // Merged best first, whatever the order given.
    let out = fx.run(&["eval", "--merge", &b, &a], &[]);
    ok(&out);
    let merged = stdout(&out);
    let rows: Vec<&str> = merged.lines().collect();
    assert_eq!(rows, vec![lines[0], lines[1], lines[2]], "{merged}");

    // The same result twice, and a file that is not a result, are refused by name.
    let out = fx.run(&["eval", "--merge", &a, &b, &a], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("a.json and") && stderr(&out).contains("same model"),
        "{}",
        stderr(&out)
    );
    let out = fx.run(&["eval", "--merge", &a, &samples], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("samples.csv: not an eval result JSON"),
        "{}",
        stderr(&out)
    );

    // A CSV with a foreign header is not appended to.
    let out = eval(&fx, d, 3, &["--csv", &samples], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("give --csv a new file"),
        "{}",
        stderr(&out)
    );

    // --aggregate without --tta, and --merge with a dataset, are usage errors.
    assert_eq!(
        eval(&fx, d, 3, &["--aggregate", "max"], &[]).status.code(),
        Some(2)
    );
    assert_eq!(
        fx.run(&["eval", d, "--merge", &a], &[]).status.code(),
        Some(2)
    );
}

#[test]
fn crop_and_zoom_tta_keep_the_always_3_accuracy() {
    let fx = Fixture::new();
    fx.fill_cache();
    let dir = released_folder(&fx);
    let d = dir.to_str().unwrap();
    for (tta, how, views) in [("5crop", "max", 5), ("zoom-224", "mean", 9)] {
        let json = fx.path().join(format!("{tta}.json"));
        let out = eval(
            &fx,
            d,
            3,
            &[
                "--tta",
                tta,
                "--aggregate",
                how,
                "--batch-size",
                "16",
                "--json",
                json.to_str().unwrap(),
            ],
            &[],
        );
        assert_table(&out, &CURRENT_TABLE);
        let head = format!("(tta {tta}, {views} views, aggregate {how})");
        assert!(stdout(&out).contains(&head), "{}", stdout(&out));
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(report["config"]["tta"], tta);
        assert_eq!(report["config"]["aggregate"], how);
        assert_eq!(report["config"]["views_per_image"], views);
        assert_eq!(report["config"]["crop_size"], 224);
    }
}

/// MEMO (both view kinds) on the current family. The always-3 model's
/// answer is a bias of 10 on class 3 with a zero classifier weight; one SGD
/// step at lr 2.5e-4 cannot overturn that margin, so the accuracies equal
/// the baseline's, and what is checked is that the adaptation runs end to
/// end, is recorded, is reproducible and compares side by side.
#[test]
fn memo_adapts_per_image_and_compares_with_the_baseline() {
    let fx = Fixture::new();
    fx.fill_cache();
    let dir = released_folder(&fx);
    let d = dir.to_str().unwrap();
    let json = |name: &str| fx.path().join(name).to_str().unwrap().to_string();
    let (base, zoom, augmix) = (json("base.json"), json("zoom.json"), json("augmix.json"));
    let out = eval(&fx, d, 3, &["--json", &base], &[]);
    assert_table(&out, &CURRENT_TABLE);
    for (tta, file) in [("memo-zoom", &zoom), ("memo-augmix", &augmix)] {
        let args = ["--tta", tta, "--views", "2", "--seed", "5", "--json", file];
        let out = eval(&fx, d, 3, &args, &[]);
        assert_table(&out, &CURRENT_TABLE);
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let memo = &report["config"]["memo"];
        assert_eq!(memo["views"], 2, "{report}");
        assert_eq!(memo["seed"], 5);
        assert_eq!(memo["prior_strength"], 16.0);
        assert_eq!(memo["lr"], 2.5e-4);
        assert_eq!(report["config"]["tta"], tta);
        assert!(report["overall"]["seconds_per_image"].as_f64().unwrap() > 0.0);
    }

    let out = fx.run(&["eval", "--compare", &base, &augmix, &zoom], &[]);
    ok(&out);
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0]
            .starts_with("| origin | images | none top-1 % | none s/image | memo-augmix top-1 % |"),
        "{table}"
    );
    let cells = |line: &str| -> Vec<String> {
        line.split('|')
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect()
    };
    let all = cells(lines.iter().find(|l| l.starts_with("| **all**")).unwrap());
    assert_eq!(all[..3], ["**all**", "5", "60.00"]);
    assert_eq!(
        (all[4].as_str(), all[6].as_str()),
        ("60.00", "60.00"),
        "{table}"
    );
    let b = cells(lines.iter().find(|l| l.starts_with("| b |")).unwrap());
    assert_eq!((b[1].as_str(), b[2].as_str()), ("2", "50.00"));

    // MEMO needs a BatchNorm ResNet; the error says which.
    let w = weights(&fx, 3);
    let out = fx.run(
        &[
            "eval",
            d,
            "--model",
            w.to_str().unwrap(),
            "--arch",
            "vgg16",
            "--tta",
            "memo-zoom",
            "--device",
            "cpu",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("MEMO adapts BatchNorm ResNets (resnet18, resnet50)"),
        "{}",
        stderr(&out)
    );
}

/// `--dtype f16`: the model computes in half precision (the always-3 answer
/// survives the rounding), the report and the table say so; bf16 on the CPU
/// and MEMO in reduced precision are refused with the way out.
#[test]
fn reduced_precision_is_recorded_and_refused_where_it_cannot_run() {
    let fx = Fixture::new();
    fx.fill_cache();
    let dir = released_folder(&fx);
    let d = dir.to_str().unwrap();
    let json = fx.path().join("f16.json");
    let out = eval(
        &fx,
        d,
        3,
        &["--dtype", "f16", "--json", json.to_str().unwrap()],
        &[],
    );
    assert_table(&out, &CURRENT_TABLE);
    assert!(
        stdout(&out).contains("(the model's view, in f16)"),
        "{}",
        stdout(&out)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["config"]["precision"], "f16", "{report}");

    let out = eval(&fx, d, 3, &["--dtype", "bf16"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bf16 runs on CUDA only") && stderr(&out).contains("--device cuda"),
        "{}",
        stderr(&out)
    );
    let out = eval(&fx, d, 3, &["--dtype", "f16", "--tta", "memo-zoom"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("adapts the weights in f32")
            && stderr(&out).contains("drop --dtype f16"),
        "{}",
        stderr(&out)
    );
}
