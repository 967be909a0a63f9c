//! Parity with the reference implementations. The expectations are files
//! written by `scripts/golden_zoom.py` (Pillow) and `scripts/golden_resnet.py`
//! (PyTorch); nothing here derives them from the code under test.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use imagenet_hard::models::synthetic::{input, write_weights_with, Head};
use imagenet_hard::models::{var_builder, Architecture, Extras, Net};
use imagenet_hard::zoom::{decode_rgb, zoom_view, DecodeLimits, RgbImage, Transform};
use std::path::{Path, PathBuf};

pub fn golden(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(rel)
}

fn load_png(path: &Path) -> RgbImage {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    decode_rgb(&bytes, DecodeLimits::default()).unwrap()
}

/// Largest per-value difference, and where.
fn max_diff(a: &RgbImage, b: &RgbImage) -> (u8, usize) {
    assert_eq!((a.width, a.height), (b.width, b.height));
    a.data
        .iter()
        .zip(&b.data)
        .enumerate()
        .map(|(i, (x, y))| (x.abs_diff(*y), i))
        .max()
        .unwrap_or((0, 0))
}

#[test]
fn zoom_crops_match_pillow_exactly() {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("zoom/cases.json")).unwrap()).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 14);
    for case in cases {
        let t: Transform = case["transform"].as_str().unwrap().parse().unwrap();
        let pillow_rgb = load_png(&golden(&format!(
            "zoom/{}",
            case["decoded"].as_str().unwrap()
        )));
        let expected = load_png(&golden(&format!("zoom/{}", case["crop"].as_str().unwrap())));
        // Resize + crop alone, from Pillow's own decode.
        let ours = zoom_view(&pillow_rgb, t, 3, 224, 0);
        let (d, at) = max_diff(&ours, &expected);
        assert_eq!(
            d, 0,
            "{} {t}: resize+crop differs from Pillow at byte {at}",
            case["input"]
        );
        // The whole path from the file's bytes (CMYK decodes within 1, see below).
        let input = golden(&format!("zoom/{}", case["input"].as_str().unwrap()));
        if case["mode"] != "CMYK" {
            let ours = zoom_view(&load_png(&input), t, 3, 224, 0);
            let (d, at) = max_diff(&ours, &expected);
            assert_eq!(
                d, 0,
                "{} {t}: decode+zoom differs from Pillow at byte {at}",
                case["input"]
            );
        }
    }
}

/// Share of values that differ by more than 1.
fn share_over_one(a: &RgbImage, b: &RgbImage) -> f64 {
    a.data
        .iter()
        .zip(&b.data)
        .filter(|(x, y)| x.abs_diff(**y) > 1)
        .count() as f64
        / a.data.len() as f64
}

#[test]
fn mode_conversions_match_pillow() {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("zoom/cases.json")).unwrap()).unwrap();
    for case in cases["cases"].as_array().unwrap() {
        let input = golden(&format!("zoom/{}", case["input"].as_str().unwrap()));
        let ours = decode_rgb(&std::fs::read(&input).unwrap(), DecodeLimits::default()).unwrap();
        let pillow = load_png(&golden(&format!(
            "zoom/{}",
            case["decoded"].as_str().unwrap()
        )));
        let (d, at) = max_diff(&ours, &pillow);
        let over = share_over_one(&ours, &pillow);
        eprintln!(
            "{} ({}): max decode difference {d}, {:.2}% of values off by more than 1",
            case["input"],
            case["mode"],
            100.0 * over
        );
        if case["mode"] == "CMYK" {
            // CMYK goes through the `image` crate, whose CMYK->RGB rounds
            // differently from Pillow's by at most 1.
            assert!(
                d <= 1,
                "{}: CMYK decode differs from Pillow by {d} ({:.2}% > 1)",
                case["input"],
                100.0 * over
            );
        } else {
            // PNG modes (L, RGBA, P) and YCbCr/grey JPEG (libjpeg-turbo, as Pillow) are exact.
            assert_eq!(
                d, 0,
                "{}: decode differs from Pillow at byte {at}",
                case["input"]
            );
        }
    }
}

/// Logits parity with a reference written by a `scripts/golden_*.py` script:
/// the JSON names the weight and input seeds, the batch and input size, and
/// holds the reference logits. `build` makes the network under test; its
/// weights come from the shared splitmix64 generator, as on the Python side.
pub fn logits_parity(
    doc: &str,
    build: impl Fn(VarBuilder<'static>) -> candle_core::Result<Net> + Copy,
) {
    let (ours, expected, _) = logits_against_reference(doc, build, DType::F32);
    let worst = relative_gap(&ours, &expected);
    eprintln!("{doc}: max |candle - reference| / max |logit| = {worst:.2e}");
    assert!(
        worst < 1e-4,
        "{doc}: max |candle - reference| / max |logit| = {worst}"
    );
}

/// Our logits with the network computing in `dtype` (weights, input and
/// activations; logits widened back to f32), the reference's (f32), and the
/// batch size.
fn logits_against_reference(
    doc: &str,
    build: impl Fn(VarBuilder<'static>) -> candle_core::Result<Net> + Copy,
    dtype: DType,
) -> (Vec<f32>, Vec<f32>, usize) {
    logits_of_other_net(doc, build, build, dtype)
}

/// [`logits_parity`] for a second implementation of the same network:
/// `weights` (the reference port) names the tensors the generator fills,
/// `net` is the implementation under test, reading those tensors.
pub fn logits_parity_of(
    doc: &str,
    weights: impl Fn(VarBuilder<'static>) -> candle_core::Result<Net> + Copy,
    net: impl Fn(VarBuilder<'static>) -> candle_core::Result<Net> + Copy,
) {
    let (ours, expected, _) = logits_of_other_net(doc, weights, net, DType::F32);
    let worst = relative_gap(&ours, &expected);
    eprintln!("{doc}: max |ours - reference| / max |logit| = {worst:.2e}");
    assert!(
        worst < 1e-4,
        "{doc}: max |ours - reference| / max |logit| = {worst}"
    );
}

fn logits_of_other_net(
    doc: &str,
    weights_of: impl Fn(VarBuilder<'static>) -> candle_core::Result<Net> + Copy,
    build: impl Fn(VarBuilder<'static>) -> candle_core::Result<Net> + Copy,
    dtype: DType,
) -> (Vec<f32>, Vec<f32>, usize) {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden(doc)).unwrap()).unwrap();
    let (batch, size) = (
        doc["batch"].as_u64().unwrap() as usize,
        doc["size"].as_u64().unwrap() as usize,
    );
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.safetensors");
    write_weights_with(
        weights_of,
        doc["weight_seed"].as_u64().unwrap(),
        Head::Random,
        &weights,
    )
    .unwrap();
    let vb = var_builder(&weights, &Device::Cpu).unwrap();
    let net = build(vb.set_dtype(dtype)).unwrap();
    let x = input(doc["input_seed"].as_u64().unwrap(), batch * 3 * size * size);
    let x = Tensor::from_vec(x, (batch, 3, size, size), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let y = net.forward(&x).unwrap();
    assert_eq!(y.dtype(), dtype, "the network computes in {dtype:?}");
    let ours: Vec<f32> = y
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let expected: Vec<f32> = doc["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    assert_eq!(ours.len(), expected.len(), "{}: logits shape", doc["arch"]);
    (ours, expected, batch)
}

/// max |a - b| / max |b|. Every value must be finite: NaN or infinity in
/// either side fails the comparison (a fold with `f32::max` would skip NaN).
fn relative_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    for (name, side) in [("ours", a), ("reference", b)] {
        if let Some(i) = side.iter().position(|v| !v.is_finite()) {
            panic!("{name}[{i}] = {} is not finite", side[i]);
        }
    }
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    worst / scale
}

/// The network in bf16 / f16 against the f32 reference: within `tolerance`
/// of the largest logit, and every row's top-1 class the reference's.
pub fn reduced_precision_parity(
    doc: &str,
    build: impl Fn(VarBuilder<'static>) -> candle_core::Result<Net> + Copy,
    dtype: DType,
    tolerance: f32,
) {
    let (ours, expected, batch) = logits_against_reference(doc, build, dtype);
    let worst = relative_gap(&ours, &expected);
    eprintln!("{doc} in {dtype:?}: max |candle - reference| / max |logit| = {worst:.2e}");
    assert!(
        worst < tolerance,
        "{doc} in {dtype:?}: max |candle - reference| / max |logit| = {worst} (allowed {tolerance})"
    );
    let argmax = |row: &[f32]| {
        (0..row.len())
            .max_by(|&i, &j| row[i].total_cmp(&row[j]))
            .unwrap()
    };
    let per = ours.len() / batch;
    for (i, (a, b)) in ours.chunks(per).zip(expected.chunks(per)).enumerate() {
        assert_eq!(argmax(a), argmax(b), "{doc} in {dtype:?}: top-1 of row {i}");
    }
}

fn registered(name: &str) -> impl Fn(VarBuilder<'static>) -> candle_core::Result<Net> + Copy {
    let arch = Architecture::find(name).unwrap();
    move |vb| (arch.spec().build)(vb, &Extras::default())
}

#[test]
fn resnet18_logits_match_pytorch() {
    logits_parity("resnet/resnet18.json", registered("resnet18"));
}

#[test]
fn resnet50_logits_match_pytorch() {
    logits_parity("resnet/resnet50.json", registered("resnet50"));
}

/// `--dtype f16` (meant for a GPU's tensor cores; bf16 has no CPU
/// convolution in candle, so it is checked on the GPU by
/// `scripts/gpu-check.sh`): weights, activations and the folded BatchNorm
/// in half precision stay within a few parts per thousand of PyTorch's f32.
#[test]
fn resnet50_in_f16_stays_close_to_pytorch_f32() {
    reduced_precision_parity(
        "resnet/resnet50.json",
        registered("resnet50"),
        DType::F16,
        5e-3,
    );
}

#[test]
fn pth_checkpoints_load_tensors_and_refuse_code() {
    use candle_core::DType;
    let ok = golden("pth/tensors.pth");
    let vb = imagenet_hard::models::var_builder(&ok, &Device::Cpu).unwrap();
    let w = vb
        .get_with_hints_dtype((2, 3), "layer.weight", Default::default(), DType::F32)
        .unwrap();
    assert_eq!(
        w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    );
    let bad = golden("pth/code.pth");
    let err = imagenet_hard::models::var_builder(&bad, &Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("__builtin__.print") && err.contains("code.pth") && err.contains("refusing"),
        "{err}"
    );
}

/// The parity check fails on NaN and infinity, which a plain max would skip.
#[test]
fn parity_fails_on_values_that_are_not_finite() {
    assert!(relative_gap(&[1.0, 2.0], &[1.0, 2.0]) == 0.0);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert!(std::panic::catch_unwind(|| relative_gap(&[bad, bad], &[1.0, 2.0])).is_err());
        assert!(std::panic::catch_unwind(|| relative_gap(&[1.0, 2.0], &[1.0, bad])).is_err());
    }
}
