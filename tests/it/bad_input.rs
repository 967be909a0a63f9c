//! A corpus of bad inputs, generated here, one test per case: each must end
//! in a clear error (naming the file, row or key, and the fix) or a counted
//! skip with its reason, never a panic. The row cases share one build (made
//! once, by whichever of their tests runs first); each error case runs its
//! own.

use crate::fixture::{stderr, Fixture};
use arrow_array::builder::{
    BinaryBuilder, Float64Builder, Int64Builder, StringBuilder, StructBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

fn picture(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 3) as u8, (y * 5) as u8, 90]))
}

fn encode(img: image::DynamicImage, f: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, f).unwrap();
    out.into_inner()
}

fn jpeg() -> Vec<u8> {
    encode(picture(80, 60).into(), image::ImageFormat::Jpeg)
}

fn png_rgb() -> Vec<u8> {
    encode(picture(70, 50).into(), image::ImageFormat::Png)
}

/// A CMYK JPEG, as some ImageNet files are.
fn cmyk_jpeg() -> Vec<u8> {
    let (w, h) = (40usize, 32usize);
    let pixels: Vec<u8> = (0..w * h)
        .flat_map(|i| [(i % 200) as u8, 40, (i / 7 % 250) as u8, 10])
        .collect();
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_CMYK);
    c.set_size(w, h);
    let mut started = c.start_compress(Vec::new()).unwrap();
    started.write_scanlines(&pixels).unwrap();
    started.finish().unwrap()
}

/// An 8-bit palette PNG with a transparency chunk.
fn palette_alpha_png() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, 16, 12);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(vec![255, 0, 0, 0, 255, 0, 0, 0, 255]);
        enc.set_trns(vec![255, 128, 0]);
        let mut w = enc.write_header().unwrap();
        let data: Vec<u8> = (0..16 * 12).map(|i| (i % 3) as u8).collect();
        w.write_image_data(&data).unwrap();
    }
    out
}

fn png16() -> Vec<u8> {
    encode(
        image::DynamicImage::ImageRgb16(image::DynamicImage::from(picture(30, 20)).to_rgb16()),
        image::ImageFormat::Png,
    )
}

/// A PNG whose header declares 100000 x 100000 pixels (a "PNG bomb": a few
/// hundred bytes that would inflate to 10 GB): refused from the header,
/// before any allocation.
fn png_bomb() -> Vec<u8> {
    use std::io::Write as _;
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grey, deflate, no filter, no interlace
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&vec![0u8; 1 << 20]).unwrap();
    let idat = z.finish().unwrap();
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

enum Label {
    Int(Option<i64>),
    Text(&'static str),
    Float(f64),
}

/// A Parquet source of (name, image bytes, label) rows.
fn parquet(path: &Path, rows: &[(&str, Vec<u8>, Label)], image_column: &str) {
    let fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let label_type = match rows[0].2 {
        Label::Int(_) => DataType::Int64,
        Label::Text(_) => DataType::Utf8,
        Label::Float(_) => DataType::Float64,
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new(image_column, DataType::Struct(fields.clone()), true),
        Field::new("label", label_type.clone(), true),
    ]));
    let mut img = StructBuilder::from_fields(fields, rows.len());
    for (name, bytes, _) in rows {
        img.field_builder::<BinaryBuilder>(0)
            .unwrap()
            .append_value(bytes);
        img.field_builder::<StringBuilder>(1)
            .unwrap()
            .append_value(name);
        img.append(true);
    }
    let label: ArrayRef = match label_type {
        DataType::Int64 => {
            let mut b = Int64Builder::new();
            for (_, _, l) in rows {
                match l {
                    Label::Int(v) => b.append_option(*v),
                    _ => unreachable!("one label type per file"),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Utf8 => {
            let mut b = StringBuilder::new();
            for (_, _, l) in rows {
                if let Label::Text(t) = l {
                    b.append_value(t);
                }
            }
            Arc::new(b.finish())
        }
        _ => {
            let mut b = Float64Builder::new();
            for (_, _, l) in rows {
                if let Label::Float(v) = l {
                    b.append_value(*v);
                }
            }
            Arc::new(b.finish())
        }
    };
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(img.finish()), label]).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn manifest(fx: &Fixture, name: &str, sources: &str, extra: &str) -> String {
    let text = format!(
        r#"
[build]
name = "{name}"
output_dir = "run-{name}"

[zoom]
scales = [64]
crop_size = 64

[decode]
max_side = 32768
max_pixels = 178956970
max_bytes = 200000
{extra}
{sources}

[[model]]
name = "always-3"
architecture = "resnet18"
path = "{}"
"#,
        fx.model_weights(3).display()
    );
    let path = fx.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn assert_no_panic(out: &std::process::Output) {
    let panicked = out.status.code() == Some(101) || stderr(out).contains("panicked");
    assert!(!panicked, "panic:\n{}", stderr(out));
}

fn truncated(bytes: Vec<u8>) -> Vec<u8> {
    bytes[..bytes.len() / 2].to_vec()
}

/// A PNG over `decode.max_bytes` (200,000 in these manifests).
fn big_png() -> Vec<u8> {
    let big = encode(
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(400, 400, |x, y| {
            image::Rgb([(x * 7 + y * 13) as u8, (x * y) as u8, (x ^ y) as u8])
        })),
        image::ImageFormat::Png,
    );
    assert!(big.len() > 200_000, "over decode.max_bytes");
    big
}

/// The rows of the shared build: file name, bytes, label, and the skip
/// reason expected (`None`: the image decodes and is scanned).
fn rows() -> Vec<(&'static str, Vec<u8>, Label, Option<&'static str>)> {
    vec![
        (
            "truncated.jpg",
            truncated(jpeg()),
            Label::Int(Some(1)),
            Some("corrupt-image"),
        ),
        (
            "zero.jpg",
            Vec::new(),
            Label::Int(Some(1)),
            Some("empty-image"),
        ),
        (
            "truncated.png",
            truncated(png_rgb()),
            Label::Int(Some(1)),
            Some("corrupt-image"),
        ),
        (
            "zero.png",
            Vec::new(),
            Label::Int(Some(1)),
            Some("empty-image"),
        ),
        (
            "bomb.png",
            png_bomb(),
            Label::Int(Some(1)),
            Some("too-large"),
        ),
        ("big.png", big_png(), Label::Int(Some(1)), Some("too-large")),
        (
            "text.jpg",
            b"this is a text file, not a JPEG".to_vec(),
            Label::Int(Some(1)),
            Some("unknown-format"),
        ),
        ("cmyk.jpg", cmyk_jpeg(), Label::Int(Some(1)), None),
        ("sixteen.png", png16(), Label::Int(Some(1)), None),
        (
            "palette.png",
            palette_alpha_png(),
            Label::Int(Some(1)),
            None,
        ),
        (
            "range.jpg",
            jpeg(),
            Label::Int(Some(1000)),
            Some("label-out-of-range"),
        ),
        (
            "negative.jpg",
            jpeg(),
            Label::Int(Some(-3)),
            Some("label-out-of-range"),
        ),
        ("null.jpg", jpeg(), Label::Int(None), Some("missing-label")),
        ("good.jpg", jpeg(), Label::Int(Some(3)), None),
    ]
}

/// What the shared build of the row cases recorded.
struct RowsBuild {
    /// Skip reasons by row, of the `rows` source and of the `texts` source.
    skips: BTreeMap<u64, String>,
    text_skips: BTreeMap<u64, String>,
    card: String,
}

/// One build over every row case (and text labels where indices are
/// expected), made once per test process.
fn rows_build() -> &'static RowsBuild {
    static BUILD: OnceLock<RowsBuild> = OnceLock::new();
    BUILD.get_or_init(|| {
        // Kept for the whole test process: the other row tests read it.
        let fx: &'static Fixture = Box::leak(Box::new(Fixture::new()));
        fx.fill_cache();
        let rows: Vec<(&str, Vec<u8>, Label)> =
            rows().into_iter().map(|(n, b, l, _)| (n, b, l)).collect();
        parquet(&fx.path().join("rows.parquet"), &rows, "image");
        parquet(
            &fx.path().join("texts.parquet"),
            &[
                ("a.jpg", jpeg(), Label::Text("abc")),
                ("b.jpg", jpeg(), Label::Text("n01440764")),
                ("c.jpg", jpeg(), Label::Text("7")),
            ],
            "image",
        );
        let sources = "[[source]]\norigin = \"rows\"\npath = [\"rows.parquet\"]\n\n[[source]]\norigin = \"texts\"\npath = [\"texts.parquet\"]\n";
        let m = manifest(fx, "rows", sources, "");
        let out = fx.run(&["build", &m, "--device", "cpu"], &[]);
        assert_no_panic(&out);
        assert!(out.status.success(), "{}", stderr(&out));
        let mut plan = imagenet_hard::plan::Plan::read(&fx.path().join("run-rows")).unwrap();
        plan.run_dir = fx.path().join("run-rows");
        let stats = imagenet_hard::scan::read_stats(&plan).unwrap();
        let by_row = |i: usize| -> BTreeMap<u64, String> {
            stats[i].skips.iter().map(|s| (s.row, s.reason.clone())).collect()
        };
        RowsBuild {
            skips: by_row(0),
            text_skips: by_row(1),
            card: std::fs::read_to_string(fx.path().join("run-rows/dataset/README.md")).unwrap(),
        }
    })
}

/// Row `row` of the shared build is skipped with `want`, or decodes (`None`).
fn row_case(row: usize) {
    let (name, _, _, want) = rows().swap_remove(row);
    let got = rows_build().skips.get(&(row as u64)).map(String::as_str);
    assert_eq!(got, want, "row {row} ({name})");
}

macro_rules! row_cases {
    ($($test:ident: $row:expr,)*) => {$(
        #[test]
        fn $test() {
            row_case($row);
        }
    )*};
}

row_cases! {
    a_truncated_jpeg_is_a_corrupt_image: 0,
    a_zero_byte_jpeg_is_empty: 1,
    a_truncated_png_is_a_corrupt_image: 2,
    a_zero_byte_png_is_empty: 3,
    a_png_bomb_is_refused_from_its_header: 4,
    an_image_over_max_bytes_is_too_large: 5,
    a_text_file_named_jpg_is_an_unknown_format: 6,
    a_cmyk_jpeg_decodes: 7,
    a_16_bit_png_decodes: 8,
    a_palette_png_with_alpha_decodes: 9,
    a_label_past_999_is_out_of_range: 10,
    a_negative_label_is_out_of_range: 11,
    a_null_label_is_missing: 12,
    a_good_row_is_scanned: 13,
}

#[test]
fn text_labels_where_indices_are_expected_are_unknown_labels() {
    let skips: Vec<(u64, &str)> = rows_build()
        .text_skips
        .iter()
        .map(|(r, s)| (*r, s.as_str()))
        .collect();
    // `abc` and a wnid are not indices; `7` is.
    assert_eq!(skips, [(0, "unknown-label"), (1, "unknown-label")]);
}

#[test]
fn the_card_counts_every_skip_reason() {
    let card = &rows_build().card;
    for reason in [
        "corrupt-image",
        "empty-image",
        "too-large",
        "unknown-format",
        "label-out-of-range",
        "missing-label",
        "unknown-label",
    ] {
        assert!(card.contains(reason), "card lacks {reason}:\n{card}");
    }
}

/// A build that must stop with exit 1 and an error holding every needle
/// (what is wrong, where, and how to fix it).
fn error_case(fx: &Fixture, manifest_path: &str, needles: &[&str]) {
    let out = fx.run(
        &["build", manifest_path, "--device", "cpu"],
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert_no_panic(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected an error\n{}",
        stderr(&out)
    );
    for n in needles {
        assert!(stderr(&out).contains(n), "no `{n}` in\n{}", stderr(&out));
    }
}

/// A fixture with the models, and one local Parquet source `file` made of
/// `rows` with its image column named `image_column`.
fn one_source(
    name: &str,
    file: &str,
    rows: &[(&str, Vec<u8>, Label)],
    image_column: &str,
) -> (Fixture, String) {
    let fx = Fixture::new();
    fx.fill_cache();
    if !rows.is_empty() {
        parquet(&fx.path().join(file), rows, image_column);
    }
    let m = manifest(
        &fx,
        name,
        &format!("[[source]]\norigin = \"s\"\npath = [\"{file}\"]\n"),
        "",
    );
    (fx, m)
}

#[test]
fn a_parquet_without_the_image_column_names_the_setting() {
    let (fx, m) = one_source(
        "schema",
        "schema.parquet",
        &[("a.jpg", jpeg(), Label::Int(Some(1)))],
        "picture",
    );
    error_case(
        &fx,
        &m,
        &["schema.parquet", "no column `image`", "image_column"],
    );
}

#[test]
fn float_labels_are_refused_with_their_type() {
    let (fx, m) = one_source(
        "float",
        "float.parquet",
        &[("a.jpg", jpeg(), Label::Float(1.5))],
        "image",
    );
    error_case(&fx, &m, &["float.parquet", "`label`", "Float64"]);
}

#[test]
fn a_file_that_is_not_parquet_is_named() {
    let (fx, m) = one_source("notparquet", "not.parquet", &[], "image");
    std::fs::write(fx.path().join("not.parquet"), b"PAR1 but not really").unwrap();
    error_case(&fx, &m, &["not.parquet", "Parquet"]);
}

#[test]
fn a_missing_local_shard_is_named() {
    let (fx, m) = one_source("missing", "gone-00001-of-00002.parquet", &[], "image");
    error_case(&fx, &m, &["gone-00001-of-00002.parquet", "does not exist"]);
}

/// A manifest over the fixture's Hub dataset, asking for `file`.
fn hub_source(fx: &Fixture, name: &str, file: &str) -> String {
    let source = format!(
        "[[source]]\norigin = \"s\"\nhub = {{ repo = \"{}\", revision = \"{}\", files = [\"{file}\"] }}\n",
        crate::fixture::DATASET,
        imagenet_hard::demo::DEMO_COMMIT,
    );
    manifest(fx, name, &source, "")
}

#[test]
fn a_hub_shard_missing_offline_says_how_to_get_it() {
    let fx = Fixture::new();
    fx.fill_cache();
    let m = hub_source(&fx, "hubmissing", "data/validation-00001-of-00002.parquet");
    error_case(
        &fx,
        &m,
        &["data/validation-00001-of-00002.parquet", "HF_HUB_OFFLINE"],
    );
}

#[test]
fn an_unknown_manifest_key_is_named() {
    let fx = Fixture::new();
    fx.fill_cache();
    let m = manifest(
        &fx,
        "unknownkey",
        "[[source]]\norigin = \"s\"\npath = [\"rows.parquet\"]\ncolour = \"red\"\n",
        "",
    );
    error_case(&fx, &m, &["unknownkey.toml", "colour"]);
}

#[test]
fn a_manifest_without_a_model_says_so() {
    let fx = Fixture::new();
    let m = fx.path().join("nomodel.toml");
    std::fs::write(
        &m,
        "[build]\nname = \"nomodel\"\n\n[[source]]\norigin = \"s\"\npath = [\"rows.parquet\"]\n",
    )
    .unwrap();
    error_case(
        &fx,
        &m.display().to_string(),
        &["nomodel.toml", "[[model]]"],
    );
}

#[test]
fn a_file_that_no_longer_matches_the_lock_is_refused() {
    let fx = Fixture::new();
    fx.fill_cache();
    let m = hub_source(&fx, "locked", crate::fixture::PARQUET);
    let out = fx.run(&["fetch", &m], &[("HF_HUB_OFFLINE", "1")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lock = fx.path().join("locked.lock");
    let text = std::fs::read_to_string(&lock).unwrap();
    let sha = text
        .split("sha256 = \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    std::fs::write(&lock, text.replace(&sha, &"f".repeat(64))).unwrap();
    error_case(&fx, &m, &["locked.lock", "does not match"]);
}

/// A batch of no crops is refused on the command line as in a manifest.
#[test]
fn a_batch_size_of_zero_is_refused_everywhere() {
    let fx = Fixture::new();
    for args in [
        &[
            "eval",
            "output/none",
            "--model",
            "resnet18",
            "--batch-size",
            "0",
        ][..],
        &[
            "bench",
            "output/none",
            "--model",
            "synthetic",
            "--batch-size",
            "0",
        ][..],
    ] {
        let out = fx.run(args, &[]);
        assert!(!out.status.success(), "{args:?}");
        let e = stderr(&out);
        assert!(
            e.contains("--batch-size") && e.contains("must be at least 1"),
            "{args:?}: {e}"
        );
    }
}
