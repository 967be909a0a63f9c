//! The whole pipeline, offline, through the binary.

use crate::fixture::{ok, stderr, stdout, Fixture, HARD_LABELS};
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use imagenet_hard::export::{features_metadata, hard_schema, write_single_shard, HardRow};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn read_shard(
    path: &std::path::Path,
) -> (
    arrow_schema::SchemaRef,
    Vec<arrow_array::RecordBatch>,
    parquet::file::metadata::ParquetMetaData,
) {
    let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap()).unwrap();
    let meta = b.metadata().as_ref().clone();
    let schema = b.schema().clone();
    let batches = b.build().unwrap().map(|r| r.unwrap()).collect();
    (schema, batches, meta)
}

#[test]
fn build_offline_writes_the_hard_set_shards_and_card() {
    let fx = Fixture::new();
    fx.fill_cache();
    let manifest = fx.write_manifest("main");
    let out = fx.run(
        &["build", manifest.to_str().unwrap(), "--device", "cpu"],
        &[("HF_HUB_OFFLINE", "1")],
    );
    ok(&out);
    let run = fx.path().join("run");

    // Bounds: each model solves exactly the decodable rows labelled with its class (2 of 7).
    let sel: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("select/selection.json")).unwrap())
            .unwrap();
    for b in sel["bounds"].as_array().unwrap() {
        assert_eq!(b["images"], 7, "{b}");
        let expect = 2.0 / 7.0;
        assert!(
            (b["upper_bound"].as_f64().unwrap() - expect).abs() < 1e-12,
            "{b}"
        );
        assert!(
            (b["one_crop"].as_f64().unwrap() - expect).abs() < 1e-12,
            "{b}"
        );
    }
    assert!(
        stdout(&out).contains("| always-3 | tiny-source | 7 | 28.57 | 28.57 (18) |"),
        "{}",
        stdout(&out)
    );

    // Shards: exact released schema, huggingface metadata, the hard rows.
    let shard = run.join("dataset/data/validation-00000-of-00001.parquet");
    let (schema, batches, meta) = read_shard(&shard);
    assert_eq!(schema.fields(), hard_schema().fields());
    assert_eq!(
        schema.metadata().get("huggingface"),
        Some(&features_metadata()),
        "pyarrow reads features from the Arrow schema"
    );
    let kv = meta.file_metadata().key_value_metadata().unwrap();
    let hf = kv.iter().find(|k| k.key == "huggingface").unwrap();
    assert_eq!(hf.value.as_deref(), Some(features_metadata().as_str()));
    assert!(meta.row_groups().iter().all(|rg| rg.num_rows() <= 100));
    let batch = arrow_select_concat(&batches);
    assert_eq!(batch.num_rows(), 3);
    let labels: Vec<i64> = (0..3)
        .map(|i| {
            batch
                .column(1)
                .as_list::<i32>()
                .value(i)
                .as_primitive::<Int64Type>()
                .value(0)
        })
        .collect();
    assert_eq!(labels, HARD_LABELS);
    let origins = batch.column(2).as_string::<i32>();
    assert!((0..3).all(|i| origins.value(i) == "tiny-source"));
    let english = batch.column(3).as_list::<i32>();
    assert_eq!(english.value(0).as_string::<i32>().value(0), "electric ray"); // class 5
    let images = batch.column(0).as_struct();
    let bytes = images.column_by_name("bytes").unwrap().as_binary::<i32>();
    assert!(
        image::load_from_memory(bytes.value(0)).is_ok(),
        "stored bytes are the original encoded image"
    );
    assert_eq!(
        images
            .column_by_name("path")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "synthetic_0002.png"
    );

    // Card: valid front matter and the build's facts.
    let card = std::fs::read_to_string(run.join("dataset/README.md")).unwrap();
    let front = card
        .strip_prefix("---\n")
        .unwrap()
        .split("\n---\n")
        .next()
        .unwrap();
    for needle in [
        "license: mit",
        "- image-classification",
        "dtype: image",
        "sequence: int64",
        "num_examples: 3",
        "path: data/validation-*",
        "name: validation",
    ] {
        assert!(
            front.contains(needle),
            "front matter lacks `{needle}`:\n{front}"
        );
    }
    assert!(!card.contains("{{"), "unfilled placeholder:\n{card}");
    assert!(
        card.contains(&format!(
            "| `tiny-source` | test-org/tiny-source@{} | parquet imagenet1k-index | imagenet1k (1000) | 3 |", imagenet_hard::demo::DEMO_COMMIT
        )),
        "{card}"
    );
    assert!(
        card.contains("| tiny-source | corrupt-image | 1 |"),
        "{card}"
    );
    assert!(card.contains("test fixture terms"));
    let lock = std::fs::read_to_string(fx.path().join("fixture.lock")).unwrap();
    let lock: imagenet_hard::fetch::Lock = toml::from_str(&lock).unwrap();
    assert!(card.contains(&lock.hash()));
    assert_eq!(lock.repos.len(), 3);

    // Stats record the skip with its reason.
    let stats: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("scan/units/u00000.stats.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stats["rows_read"], 8);
    assert_eq!(stats["skipped"]["corrupt-image"], 1);
    assert_eq!(stats["skips"][0]["row"], 6);

    // A rerun resumes: nothing is scanned again, and the shard is byte-identical.
    let before = std::fs::read(&shard).unwrap();
    let records = run.join("scan/units/u00000.parquet");
    let records_time = std::fs::metadata(&records).unwrap().modified().unwrap();
    let again = fx.run(
        &["build", manifest.to_str().unwrap(), "--device", "cpu"],
        &[("HF_HUB_OFFLINE", "1")],
    );
    ok(&again);
    assert!(
        stderr(&again).contains("u00000 tiny-source: already done"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::metadata(&records).unwrap().modified().unwrap(),
        records_time
    );
    assert_eq!(std::fs::read(&shard).unwrap(), before);

    // A changed grid in the same run directory is refused, not mixed in.
    let original = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        original.replace("scales = [64, 256]", "scales = [64, 128, 256]"),
    )
    .unwrap();
    let mixed = fx.run(
        &["scan", manifest.to_str().unwrap(), "--device", "cpu"],
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert_eq!(mixed.status.code(), Some(1));
    assert!(
        stderr(&mixed).contains("different plan"),
        "{}",
        stderr(&mixed)
    );
    std::fs::write(&manifest, original).unwrap();

    // Tampering with the lock is refused, naming the lock and the file.
    let lock_path = fx.path().join("fixture.lock");
    let text = std::fs::read_to_string(&lock_path).unwrap();
    let first_sha = text
        .split("sha256 = \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    std::fs::write(&lock_path, text.replacen(first_sha, &"0".repeat(64), 1)).unwrap();
    let bad = fx.run(
        &["fetch", manifest.to_str().unwrap()],
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert_eq!(bad.status.code(), Some(1));
    let err = stderr(&bad);
    assert!(
        err.contains("fixture.lock") && err.contains("does not match"),
        "{err}"
    );

    // Eval on our own export: the always-3 model gets none of the hard set right.
    let weights = fx.model_weights(3);
    let json = fx.path().join("eval.json");
    let ev = fx.run(
        &[
            "eval",
            run.join("dataset").to_str().unwrap(),
            "--model",
            weights.to_str().unwrap(),
            "--arch",
            "resnet18",
            "--device",
            "cpu",
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    );
    ok(&ev);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["overall"]["images"], 3);
    assert_eq!(report["overall"]["top1_correct"], 0);
}

fn arrow_select_concat(batches: &[arrow_array::RecordBatch]) -> arrow_array::RecordBatch {
    assert_eq!(batches.len(), 1, "fixture output fits one batch");
    batches[0].clone()
}

#[test]
fn offline_miss_names_the_repo_file_and_how_to_prefetch() {
    let fx = Fixture::new();
    let manifest = fx.write_manifest("main");
    let out = fx.run(
        &["build", manifest.to_str().unwrap()],
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("HF_HUB_OFFLINE")
            && err.contains("test-org/tiny-source")
            && err.contains("pin the 40-hex commit"),
        "{err}"
    );
    let pinned = fx.write_manifest(imagenet_hard::demo::DEMO_COMMIT);
    let err = stderr(&fx.run(
        &["fetch", pinned.to_str().unwrap()],
        &[("HF_HUB_OFFLINE", "1")],
    ));
    assert!(
        err.contains("data/validation-00000-of-00001.parquet")
            && err.contains("huggingface-cli download"),
        "{err}"
    );
}

#[test]
fn hf_home_locates_the_cache_when_hf_hub_cache_is_unset() {
    let fx = Fixture::new();
    fx.fill_cache();
    let home = fx.path().join("hf-home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::rename(fx.cache(), home.join("hub")).unwrap();
    let manifest = fx.write_manifest("main");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_imagenet-hard"));
    cmd.args(["fetch", manifest.to_str().unwrap()])
        .current_dir(fx.path());
    for k in [
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_ENDPOINT",
        "HF_TOKEN",
    ] {
        cmd.env_remove(k);
    }
    let out = cmd
        .env("HF_HOME", &home)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    ok(&out);
    assert!(
        stdout(&out).contains("test-org/tiny-source@"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn manifest_errors_name_the_file_and_the_key() {
    let fx = Fixture::new();
    let manifest = fx.write_manifest("main");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("batch_size = 8", "batch_size = 8\nbatchsize = 9");
    std::fs::write(&manifest, text).unwrap();
    let out = fx.run(&["build", manifest.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("fixture.toml") && err.contains("batchsize"),
        "{err}"
    );
    let usage = fx.run(&["build", "--no-such-flag"], &[]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn eval_scores_any_label_per_origin() {
    let fx = Fixture::new();
    fx.fill_cache();
    let img = |seed: u8| {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 5, y as u8 * 7, seed]))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    };
    let row = |labels: Vec<i64>, origin: &str, seed| HardRow {
        image: img(seed),
        path: format!("{seed}.png"),
        labels,
        origin: origin.into(),
    };
    let dir = fx.path().join("hand");
    write_single_shard(
        &dir,
        vec![
            row(vec![3], "a", 1),
            row(vec![1, 3], "b", 2),
            row(vec![5], "a", 3),
        ],
        2,
    )
    .unwrap();
    let weights = fx.model_weights(3);
    let out = fx.run(
        &[
            "eval",
            dir.to_str().unwrap(),
            "--model",
            weights.to_str().unwrap(),
            "--arch",
            "resnet18",
            "--device",
            "cpu",
        ],
        &[],
    );
    ok(&out);
    let table = stdout(&out);
    assert!(table.contains("| a | 2 | 50.00 |"), "{table}");
    assert!(table.contains("| b | 1 | 100.00 |"), "{table}");
    assert!(table.contains("| **all** | 3 | 66.67 |"), "{table}");
}

#[test]
fn zoom_and_predict_work_on_image_files() {
    let fx = Fixture::new();
    fx.fill_cache();
    let photo = fx.path().join("photo.jpg");
    image::RgbImage::from_fn(300, 200, |x, y| image::Rgb([x as u8, y as u8, 100]))
        .save(&photo)
        .unwrap();
    let view = fx.path().join("view.png");
    ok(&fx.run(
        &[
            "zoom",
            photo.to_str().unwrap(),
            "--transform",
            "r0c2s448",
            "-o",
            view.to_str().unwrap(),
        ],
        &[],
    ));
    let png = image::open(&view).unwrap();
    assert_eq!((png.width(), png.height()), (224, 224));
    let bad = fx.run(
        &[
            "zoom",
            photo.to_str().unwrap(),
            "--transform",
            "r3c0s10",
            "-o",
            view.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(bad.status.code(), Some(1));

    let weights = fx.model_weights(7);
    let out = fx.run(
        &[
            "predict",
            photo.to_str().unwrap(),
            "--model",
            weights.to_str().unwrap(),
            "--arch",
            "resnet18",
            "--device",
            "cpu",
            "--json",
        ],
        &[],
    );
    ok(&out);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let top = doc["top"].as_array().unwrap();
    assert_eq!(top.len(), 5);
    assert_eq!(top[0]["index"], 7);
    assert_eq!(top[0]["name"], "cock");
    // A Hub repo id resolves through its config.json (offline, from the cache).
    let by_id = fx.run(
        &[
            "predict",
            photo.to_str().unwrap(),
            "--model",
            "test-org/always-7",
            "--device",
            "cpu",
        ],
        &[("HF_HUB_OFFLINE", "1")],
    );
    ok(&by_id);
    assert!(
        stdout(&by_id).lines().nth(1).unwrap().starts_with("1\t7\t"),
        "{}",
        stdout(&by_id)
    );
    let text = fx.path().join("notes.jpg");
    std::fs::write(&text, "not an image").unwrap();
    let err = fx.run(
        &[
            "predict",
            text.to_str().unwrap(),
            "--model",
            weights.to_str().unwrap(),
            "--arch",
            "resnet18",
        ],
        &[],
    );
    assert_eq!(err.status.code(), Some(1));
    assert!(stderr(&err).contains("notes.jpg"), "{}", stderr(&err));
}

/// Every registered architecture, with generated weights whose head always
/// answers class 3, runs inside `build` (zoom scan, select, export), `predict`
/// (in f32 and f16) and `eval` (resolved by Hub repo id through its
/// config.json).
#[test]
fn every_architecture_runs_in_build_and_predict() {
    use imagenet_hard::demo::put_synthetic_model;
    use imagenet_hard::models::synthetic::Head;
    use imagenet_hard::models::Architecture;
    let fx = Fixture::new();
    fx.fill_cache();
    let mut models = String::new();
    let archs: Vec<Architecture> = Architecture::all()
        .filter(|a| a.spec().extra_files.is_empty())
        .collect();
    for (i, arch) in archs.iter().enumerate() {
        let repo = format!("test-org/any-{}", arch.name());
        put_synthetic_model(&fx.cache(), &repo, *arch, 100 + i as u64, Head::Always(3)).unwrap();
        models.push_str(&format!(
            "\n[[model]]\nname = \"{0}\"\narchitecture = \"{0}\"\nhub = {{ repo = \"{repo}\", revision = \"main\", files = [\"model.safetensors\"] }}\n",
            arch.name()
        ));
    }
    let manifest = fx.path().join("all.toml");
    let text = format!(
        "[build]\nname = \"all\"\noutput_dir = \"all\"\n\n[zoom]\nscales = [256]\nanchors = 1\n\n[[source]]\norigin = \"tiny\"\nlimit = 2\nhub = {{ repo = \"{}\", revision = \"main\", files = [\"{}\"] }}\n{models}",
        crate::fixture::DATASET,
        crate::fixture::PARQUET
    );
    std::fs::write(&manifest, text).unwrap();
    let out = fx.run(
        &["build", manifest.to_str().unwrap(), "--device", "cpu"],
        &[("HF_HUB_OFFLINE", "1")],
    );
    ok(&out);
    let sel: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.path().join("all/select/selection.json")).unwrap(),
    )
    .unwrap();
    let bounds = sel["bounds"].as_array().unwrap();
    assert_eq!(bounds.len(), archs.len());
    for b in bounds {
        // Rows 0 and 1 are labelled 3 and 7: every model solves exactly row 0.
        assert_eq!(
            (b["images"].as_u64(), b["upper_bound"].as_f64()),
            (Some(2), Some(0.5)),
            "{b}"
        );
    }
    let photo = fx.path().join("photo.png");
    image::RgbImage::from_fn(96, 80, |x, y| image::Rgb([x as u8, y as u8, 60]))
        .save(&photo)
        .unwrap();
    for arch in &archs {
        let repo = format!("test-org/any-{}", arch.name());
        // In f32 and in half precision (weights, BatchNorm folding, activations).
        for dtype in ["f32", "f16"] {
            let out = fx.run(
                &[
                    "predict",
                    photo.to_str().unwrap(),
                    "--model",
                    &repo,
                    "--device",
                    "cpu",
                    "--dtype",
                    dtype,
                    "--json",
                ],
                &[("HF_HUB_OFFLINE", "1")],
            );
            ok(&out);
            let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
            assert_eq!(
                doc["top"][0]["index"],
                3,
                "{} in {dtype}: {doc}",
                arch.name()
            );
            assert_eq!(doc["top"].as_array().unwrap().len(), 5);
        }
        // And `eval` on the exported hard set (row 1, labelled 7): none right.
        let dataset = fx.path().join("all/dataset");
        let out = fx.run(
            &[
                "eval",
                dataset.to_str().unwrap(),
                "--model",
                &repo,
                "--device",
                "cpu",
            ],
            &[("HF_HUB_OFFLINE", "1")],
        );
        ok(&out);
        assert!(
            stdout(&out).contains("| **all** | 1 | 0.00 |"),
            "{}: {}",
            arch.name(),
            stdout(&out)
        );
    }
}

/// CLIP zero-shot through the CLI: a tiny CLIP repo (config.json sizing the
/// towers, the test tokenizer, generated weights) resolved by repo id in
/// `predict` and `eval`, and named in a manifest for `build`. The
/// 1000-class head is made once, then read from the tool cache.
#[test]
fn clip_runs_in_build_predict_and_eval() {
    use candle_transformers::models::clip::text_model::ClipTextTransformer;
    use imagenet_hard::demo::{put_in_hub_cache, DEMO_COMMIT};
    use imagenet_hard::hub::RepoKind;
    use imagenet_hard::models::clip::{config_from_json, ImageEncoder};
    use imagenet_hard::models::synthetic::{write_weights_with, Head};
    let fx = Fixture::new();
    fx.fill_cache();
    let config = serde_json::json!({
        "architectures": ["CLIPModel"],
        "projection_dim": 24,
        "text_config": {"vocab_size": 1514, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "max_position_embeddings": 77, "hidden_act": "quick_gelu"},
        "vision_config": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "image_size": 224, "patch_size": 14, "hidden_act": "quick_gelu"},
    });
    let cfg = config_from_json(
        &config["text_config"],
        &config["vision_config"],
        &config["projection_dim"],
    )
    .unwrap();
    let weights = fx.path().join("clip.safetensors");
    let build =
        |vb: candle_nn::VarBuilder<'static>| -> candle_core::Result<imagenet_hard::models::Net> {
            ClipTextTransformer::new(vb.pp("text_model"), &cfg.text_config)?;
            let t = &cfg.text_config;
            candle_nn::linear_no_bias(t.embed_dim, t.projection_dim, vb.pp("text_projection"))?;
            Ok(Box::new(ImageEncoder::new(vb, &cfg.vision_config)?))
        };
    write_weights_with(build, 5, Head::Random, &weights).unwrap();
    let tokenizer = std::fs::read(crate::golden::golden("clip/tokenizer.json")).unwrap();
    let (model_bytes, config_bytes) = (
        std::fs::read(&weights).unwrap(),
        config.to_string().into_bytes(),
    );
    let files: [(&str, &[u8]); 3] = [
        ("model.safetensors", &model_bytes),
        ("tokenizer.json", &tokenizer),
        ("config.json", &config_bytes),
    ];
    put_in_hub_cache(
        &fx.cache(),
        RepoKind::Model,
        "test-org/tiny-clip",
        DEMO_COMMIT,
        &files,
    )
    .unwrap();

    let photo = fx.path().join("photo.png");
    image::RgbImage::from_fn(96, 80, |x, y| image::Rgb([x as u8, y as u8, 60]))
        .save(&photo)
        .unwrap();
    let predict = |dtype: &str| {
        fx.run(
            &[
                "predict",
                photo.to_str().unwrap(),
                "--model",
                "test-org/tiny-clip",
                "--device",
                "cpu",
                "--dtype",
                dtype,
                "--json",
            ],
            &[("HF_HUB_OFFLINE", "1")],
        )
    };
    let out = predict("f32");
    ok(&out);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc["top"].as_array().unwrap().len(), 5, "{doc}");
    let heads = fx.path().join("imagenet-hard/clip-heads");
    let cached: Vec<_> = std::fs::read_dir(&heads).unwrap().collect();
    assert_eq!(cached.len(), 1, "one head cached");
    let again = predict("f32");
    ok(&again);
    assert_eq!(
        stdout(&again),
        stdout(&out),
        "the cached head gives the same answer"
    );
    assert_eq!(std::fs::read_dir(&heads).unwrap().count(), 1);
    // In f16, with a head of its own made in f16.
    let out = predict("f16");
    ok(&out);
    let half: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(half["top"].as_array().unwrap().len(), 5, "{half}");
    assert_eq!(std::fs::read_dir(&heads).unwrap().count(), 2);

    let manifest = fx.path().join("clip.toml");
    std::fs::write(
        &manifest,
        format!(
            "[build]\nname = \"clip\"\noutput_dir = \"clip\"\n\n[zoom]\nscales = [256]\nanchors = 1\n\n[[source]]\norigin = \"tiny\"\nlimit = 2\nhub = {{ repo = \"{}\", revision = \"main\", files = [\"{}\"] }}\n\n[[model]]\nname = \"tiny-clip\"\narchitecture = \"clip_vit_large_patch14\"\nhub = {{ repo = \"test-org/tiny-clip\", revision = \"main\", files = [\"model.safetensors\", \"tokenizer.json\", \"config.json\"] }}\n",
            crate::fixture::DATASET,
            crate::fixture::PARQUET
        ),
    )
    .unwrap();
    ok(&fx.run(
        &["build", manifest.to_str().unwrap(), "--device", "cpu"],
        &[("HF_HUB_OFFLINE", "1")],
    ));
    let sel: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.path().join("clip/select/selection.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(sel["bounds"][0]["images"], 2);
    let eval = fx.run(
        &[
            "eval",
            fx.path().join("clip/dataset").to_str().unwrap(),
            "--model",
            "test-org/tiny-clip",
            "--device",
            "cpu",
        ],
        &[("HF_HUB_OFFLINE", "1")],
    );
    ok(&eval);
    assert!(stdout(&eval).contains("| **all** |"), "{}", stdout(&eval));
}

/// `bench --model synthetic`: generated weights in a temporary folder that is
/// gone afterwards; the JSON has both throughputs, the device and the dtype.
#[test]
fn bench_reports_throughput_and_leaves_no_files_behind() {
    let fx = Fixture::new();
    let images = fx.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8, y as u8, 90]))
        .save(images.join("a.png"))
        .unwrap();
    let tmp = fx.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = fx.run(
        &[
            "bench",
            images.to_str().unwrap(),
            "--model",
            "synthetic",
            "--arch",
            "resnet18",
            "--device",
            "cpu",
            "--batch-size",
            "2",
            "--batches",
            "1",
            "--rounds",
            "1",
            "--threads",
            "2",
            "--measure",
            "preprocessing,feed,model,end-to-end",
        ],
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    ok(&out);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc["preprocessing"]["crops"], 324, "{doc}");
    assert_eq!(doc["model_only"]["crops"], 2, "{doc}");
    assert!(doc["model_only"]["crops_per_s"].as_f64().unwrap() > 0.0);
    for part in ["feed_1_thread", "feed", "end_to_end"] {
        assert_eq!(doc[part]["crops"], 324, "{part}: {doc}");
    }
    assert_eq!(doc["threads"], 2);
    assert!(doc["feed_scaling"].as_f64().unwrap() > 0.0);
    // Only what --measure names is timed.
    let out = fx.run(
        &[
            "bench",
            images.to_str().unwrap(),
            "--model",
            "synthetic",
            "--arch",
            "resnet18",
            "--device",
            "cpu",
            "--batch-size",
            "2",
            "--batches",
            "1",
            "--rounds",
            "1",
            "--measure",
            "model",
        ],
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    ok(&out);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc["model_only"]["crops"], 2, "{doc}");
    for part in ["preprocessing", "feed", "end_to_end", "feed_scaling"] {
        assert!(doc[part].is_null(), "{part}: {doc}");
    }
    assert_eq!(
        (doc["device"].as_str(), doc["dtype"].as_str()),
        (Some("cpu"), Some("f32"))
    );
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "left behind in TMPDIR: {left:?}");
}
