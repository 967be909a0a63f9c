//! The embedded demo, and the generators the tests share with it: the
//! demo's scenes and its trained classifier, synthetic images in several
//! formats, a Parquet source in the Hugging Face layout, and a local Hub
//! cache (`{models,datasets}--org--name/{blobs,refs,snapshots}`) holding
//! them, so the demo runs the real Hub code offline.

use arrow_array::builder::{BinaryBuilder, Int64Builder, StringBuilder, StructBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use parquet::arrow::ArrowWriter;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::hub::{hex, HubConfig, RepoKind};
use crate::models::synthetic::{write_weights, Head};
use crate::models::Architecture;

/// The demo manifest, built into the binary.
pub const DEMO_MANIFEST: &str = include_str!("../manifests/demo.toml");
pub(crate) const DEMO_DATASET: &str = "imagenet-hard/synthetic-demo";
pub(crate) const DEMO_MODEL: &str = "imagenet-hard/demo-shapes-cnn";
/// A random-weight ResNet-18 the demo's cache also holds.
pub(crate) const RESNET_REPO: &str = "imagenet-hard/synthetic-resnet18";
/// Fixed commit id of the demo's generated repos.
pub const DEMO_COMMIT: &str = "5f1f2bd6ea3cfb3a70c4ef8f0dbd1c4b2a65e0c7";

/// One row of a synthetic source.
#[derive(Debug, Clone)]
pub struct SyntheticRow {
    pub image: Vec<u8>,
    pub path: String,
    pub label: i64,
}

/// A smooth, structured picture (gradients, a disc, stripes) of `w x h`.
fn picture(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let (dx, dy) = (fx - 0.5 - 0.1 * (seed % 3) as f32, fy - 0.5);
        let disc = if dx * dx + dy * dy < 0.06 { 90.0 } else { 0.0 };
        let stripe = if ((x + y * (seed % 4 + 1)) / 9).is_multiple_of(2) {
            25.0
        } else {
            0.0
        };
        Rgb([
            (200.0 * fx + disc + stripe).min(255.0) as u8,
            (60.0 + 150.0 * fy + stripe).min(255.0) as u8,
            (40.0 + (seed * 37 % 200) as f32 + disc * 0.5).min(255.0) as u8,
        ])
    })
}

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format)
        .expect("encoding to memory cannot fail");
    out.into_inner()
}

/// Rows with the given labels, cycling through image kinds: RGB JPEG,
/// grey PNG, RGBA PNG, large RGB PNG, small JPEG, 16-bit RGB PNG, and a
/// truncated JPEG that must be skipped as corrupt.
pub fn synthetic_rows(labels: &[i64]) -> Vec<SyntheticRow> {
    labels
        .iter()
        .enumerate()
        .map(|(i, &label)| {
            let seed = i as u32;
            let (image, ext) = match i % 7 {
                0 => (
                    encode(
                        DynamicImage::ImageRgb8(picture(320, 240, seed)),
                        ImageFormat::Jpeg,
                    ),
                    "jpg",
                ),
                1 => (
                    encode(
                        DynamicImage::ImageRgb8(picture(200, 300, seed)).grayscale(),
                        ImageFormat::Png,
                    ),
                    "png",
                ),
                2 => (
                    encode(
                        DynamicImage::ImageRgba8(
                            DynamicImage::ImageRgb8(picture(150, 150, seed)).to_rgba8(),
                        ),
                        ImageFormat::Png,
                    ),
                    "png",
                ),
                3 => (
                    encode(
                        DynamicImage::ImageRgb8(picture(500, 375, seed)),
                        ImageFormat::Png,
                    ),
                    "png",
                ),
                4 => (
                    encode(
                        DynamicImage::ImageRgb8(picture(64, 48, seed)),
                        ImageFormat::Jpeg,
                    ),
                    "jpg",
                ),
                5 => (
                    encode(
                        DynamicImage::ImageRgb16(
                            DynamicImage::ImageRgb8(picture(90, 130, seed)).to_rgb16(),
                        ),
                        ImageFormat::Png,
                    ),
                    "png",
                ),
                _ => {
                    let full = encode(
                        DynamicImage::ImageRgb8(picture(120, 90, seed)),
                        ImageFormat::Jpeg,
                    );
                    (full[..full.len() / 3].to_vec(), "jpg")
                }
            };
            SyntheticRow {
                image,
                path: format!("synthetic_{i:04}.{ext}"),
                label,
            }
        })
        .collect()
}

/// Write rows as a Hugging Face Parquet file: `image` struct<bytes, path>, `label` int64.
pub fn write_source_parquet(path: &Path, rows: &[SyntheticRow]) -> std::io::Result<()> {
    let image_fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let schema = Arc::new(Schema::new(vec![
        Field::new("image", DataType::Struct(image_fields.clone()), true),
        Field::new("label", DataType::Int64, true),
    ]));
    let mut image = StructBuilder::from_fields(image_fields, rows.len());
    let mut label = Int64Builder::new();
    for r in rows {
        image
            .field_builder::<BinaryBuilder>(0)
            .expect("bytes")
            .append_value(&r.image);
        image
            .field_builder::<StringBuilder>(1)
            .expect("path")
            .append_value(&r.path);
        image.append(true);
        label.append_value(r.label);
    }
    let columns: Vec<ArrayRef> = vec![Arc::new(image.finish()), Arc::new(label.finish())];
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(std::io::Error::other)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut w = ArrowWriter::try_new(std::fs::File::create(path)?, schema, None)
        .map_err(std::io::Error::other)?;
    w.write(&batch).map_err(std::io::Error::other)?;
    w.close().map_err(std::io::Error::other)?;
    Ok(())
}

/// Put files into a Hub cache the way `huggingface_hub` does: content in
/// `blobs/<sha256>`, relative symlinks in `snapshots/<commit>/`, `refs/main`.
pub fn put_in_hub_cache(
    cache_dir: &Path,
    kind: RepoKind,
    repo: &str,
    commit: &str,
    files: &[(&str, &[u8])],
) -> std::io::Result<Vec<PathBuf>> {
    use sha2::Digest;
    let prefix = match kind {
        RepoKind::Model => "models",
        RepoKind::Dataset => "datasets",
    };
    let root = cache_dir.join(format!("{prefix}--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(root.join("blobs"))?;
    std::fs::create_dir_all(root.join("refs"))?;
    std::fs::write(root.join("refs").join("main"), commit)?;
    let mut out = Vec::new();
    for (name, bytes) in files {
        let sha = hex(&sha2::Sha256::digest(bytes));
        std::fs::write(root.join("blobs").join(&sha), bytes)?;
        let link = root.join("snapshots").join(commit).join(name);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let depth = name.matches('/').count() + 2;
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(&sha);
        let _ = std::fs::remove_file(&link);
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &link)?;
        #[cfg(not(unix))]
        std::fs::write(&link, bytes)?;
        out.push(link);
    }
    Ok(out)
}

/// Generate a model's weights and place them in a Hub cache as `model.safetensors`.
pub fn put_synthetic_model(
    cache_dir: &Path,
    repo: &str,
    arch: Architecture,
    seed: u64,
    head: Head,
) -> anyhow::Result<PathBuf> {
    let tmp = tempfile_path(cache_dir, "weights");
    write_weights(arch, seed, head, &tmp)?;
    let bytes = std::fs::read(&tmp)?;
    std::fs::remove_file(&tmp)?;
    let config = serde_json::json!({"architecture": arch.name(), "num_classes": 1000}).to_string();
    let paths = put_in_hub_cache(
        cache_dir,
        RepoKind::Model,
        repo,
        DEMO_COMMIT,
        &[
            ("model.safetensors", &bytes),
            ("config.json", config.as_bytes()),
        ],
    )?;
    Ok(paths[0].clone())
}

fn tempfile_path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!(".{stem}.{}.tmp", std::process::id()))
}

/// Scenes in the demo's source.
pub(crate) const DEMO_SCENES: u64 = 96;

/// The demo's planted labelling slips, as (row, label given): every third
/// of the scenes whose object is at least 30 px and in plain view carries
/// the label of another class, two places on in the class list. The
/// paper's hard set held such mislabelled images (its release was cleaned
/// by hand); the demo's label suspects should find these first.
pub fn planted_slips() -> Vec<(u64, i64)> {
    use crate::scenes::{scene, CLASSES};
    (0..DEMO_SCENES)
        .map(|i| (i, scene(i)))
        .filter(|(_, s)| s.size >= 30.0 && !s.occluded)
        .step_by(3)
        .filter_map(|(i, s)| {
            let at = CLASSES.iter().position(|c| c.0 == s.label)?;
            Some((i, CLASSES[(at + 2) % CLASSES.len()].0))
        })
        .collect()
}

/// The demo's scenes as JPEG rows (quality 90), labelled with their
/// object's class but for the planted slips.
pub(crate) fn demo_rows(n: u64) -> Vec<SyntheticRow> {
    let slips: std::collections::BTreeMap<u64, i64> = planted_slips().into_iter().collect();
    (0..n)
        .map(|i| {
            let scene = crate::scenes::scene(i);
            let mut out = Cursor::new(Vec::new());
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                .encode_image(&scene.image)
                .expect("encoding to memory cannot fail");
            SyntheticRow {
                image: out.into_inner(),
                path: format!("scene_{i:04}.jpg"),
                label: slips.get(&i).copied().unwrap_or(scene.label),
            }
        })
        .collect()
}

/// Put the demo's trained classifier in the cache, training it unless the
/// cache holds weights from the same recipe. Prints the held-out accuracy.
fn put_demo_classifier(cache_dir: &Path, p: crate::printer::Printer) -> anyhow::Result<()> {
    use crate::models::shapes::{train, TrainConfig};
    let cfg = TrainConfig::DEMO;
    let recipe = format!("{cfg:?}");
    let snapshot = cache_dir
        .join(format!("models--{}", DEMO_MODEL.replace('/', "--")))
        .join("snapshots")
        .join(DEMO_COMMIT);
    let trained: Option<serde_json::Value> =
        std::fs::read_to_string(snapshot.join("training.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
    if let Some(t) = trained.filter(|t| t["recipe"] == recipe.as_str()) {
        if snapshot.join("model.safetensors").exists() {
            p.note(format_args!(
                "Demo classifier: trained earlier ({}), held-out accuracy {:.1}%",
                snapshot.join("training.json").display(),
                100.0 * t["held_out_accuracy"].as_f64().unwrap_or(0.0)
            ));
            return Ok(());
        }
    }
    p.note(format_args!(
        "Training the demo classifier (shapes_cnn, {} steps of {} generated {}px canvases)...",
        cfg.steps, cfg.batch, cfg.side
    ));
    let started = std::time::Instant::now();
    let data = crate::models::shapes::TrainingData {
        classes: crate::scenes::training_classes(),
        canvas: &crate::scenes::training_canvas,
    };
    let (tensors, report) = train(cfg, &data, |step, loss| {
        tracing::info!("training step {step}: loss {loss:.3}");
    })?;
    p.note(format_args!(
        "Demo classifier: loss {:.2} -> {:.2}; held-out accuracy {:.1}% on {} new canvases (7 labels, chance 14%), {:.0} s",
        report.first_loss,
        report.last_loss,
        100.0 * report.held_out_accuracy,
        report.held_out,
        started.elapsed().as_secs_f64()
    ));
    let tmp = tempfile_path(cache_dir, "demo-classifier");
    std::fs::create_dir_all(cache_dir)?;
    candle_core::safetensors::save(&tensors, &tmp)?;
    let bytes = std::fs::read(&tmp)?;
    std::fs::remove_file(&tmp)?;
    let config = serde_json::json!({"architecture": "shapes_cnn", "num_classes": 1000}).to_string();
    let training = serde_json::to_string_pretty(&serde_json::json!({
        "recipe": recipe,
        "steps": report.steps,
        "first_loss": report.first_loss,
        "last_loss": report.last_loss,
        "held_out": report.held_out,
        "held_out_accuracy": report.held_out_accuracy,
    }))?;
    put_in_hub_cache(
        cache_dir,
        RepoKind::Model,
        DEMO_MODEL,
        DEMO_COMMIT,
        &[
            ("model.safetensors", &bytes),
            ("config.json", config.as_bytes()),
            ("training.json", training.as_bytes()),
        ],
    )?;
    Ok(())
}

/// Create the demo's Hub cache under `run_dir/hub` and return a config that
/// reads only from it (offline): the generated scenes, the trained
/// classifier, and a random-weight ResNet-18 (`imagenet-hard/synthetic-resnet18`)
/// for trying `predict`, `eval` and MEMO offline.
pub(crate) fn prepare_demo(
    run_dir: &Path,
    p: crate::printer::Printer,
) -> anyhow::Result<HubConfig> {
    let cache_dir = crate::run_dir::RunDir::of(run_dir).demo_hub();
    let rows = demo_rows(DEMO_SCENES);
    let parquet = tempfile_path(&cache_dir, "demo-source");
    write_source_parquet(&parquet, &rows)?;
    let bytes = std::fs::read(&parquet)?;
    std::fs::remove_file(&parquet)?;
    put_in_hub_cache(
        &cache_dir,
        RepoKind::Dataset,
        DEMO_DATASET,
        DEMO_COMMIT,
        &[("data/validation-00000-of-00001.parquet", &bytes)],
    )?;
    put_demo_classifier(&cache_dir, p)?;
    let resnet = cache_dir
        .join(format!("models--{}", RESNET_REPO.replace('/', "--")))
        .join("snapshots")
        .join(DEMO_COMMIT)
        .join("model.safetensors");
    if !resnet.exists() {
        put_synthetic_model(
            &cache_dir,
            RESNET_REPO,
            Architecture::find("resnet18").expect("registered"),
            2023,
            Head::Random,
        )?;
    }
    Ok(HubConfig {
        cache_dir,
        endpoint: "http://127.0.0.1:9".into(),
        token: None,
        offline: true,
    })
}
