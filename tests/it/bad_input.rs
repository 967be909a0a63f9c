//! A corpus of bad inputs, generated here: each must end in a clear error
//! (naming the file, row or key, and the fix) or a counted skip with its
//! reason, never a panic. The test prints the tally for the closing note.

use crate::fixture::{stderr, Fixture};
use arrow_array::builder::{
    BinaryBuilder, Float64Builder, Int64Builder, StringBuilder, StructBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

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

#[derive(Default, Debug)]
struct Tally {
    cases: usize,
    errors: usize,
    skips: usize,
    decoded: usize,
    panics: usize,
}

#[test]
fn every_bad_input_is_an_error_or_a_counted_skip_never_a_panic() {
    let fx = Fixture::new();
    fx.fill_cache();
    let mut tally = Tally::default();
    let no_panic = |out: &std::process::Output, tally: &mut Tally| {
        let panicked = out.status.code() == Some(101) || stderr(out).contains("panicked");
        tally.panics += panicked as usize;
        assert!(!panicked, "panic:\n{}", stderr(out));
    };

    // 1. Rows that must be skipped with a reason, or decoded, in one build.
    let mut truncated_jpeg = jpeg();
    truncated_jpeg.truncate(truncated_jpeg.len() / 2);
    let mut truncated_png = png_rgb();
    truncated_png.truncate(truncated_png.len() / 2);
    let big = encode(
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(400, 400, |x, y| {
            image::Rgb([(x * 7 + y * 13) as u8, (x * y) as u8, (x ^ y) as u8])
        })),
        image::ImageFormat::Png,
    );
    assert!(big.len() > 200_000, "over decode.max_bytes");
    let rows = vec![
        (
            "truncated.jpg",
            truncated_jpeg,
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
            truncated_png,
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
        ("big.png", big, Label::Int(Some(1)), Some("too-large")),
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
    ];
    let want: Vec<Option<&str>> = rows.iter().map(|r| r.3).collect();
    let parquet_rows: Vec<(&str, Vec<u8>, Label)> =
        rows.into_iter().map(|(n, b, l, _)| (n, b, l)).collect();
    parquet(&fx.path().join("rows.parquet"), &parquet_rows, "image");
    // Labels of the wrong type: text where indices are expected.
    parquet(
        &fx.path().join("texts.parquet"),
        &[
            ("a.jpg", jpeg(), Label::Text("abc")),
            ("b.jpg", jpeg(), Label::Text("n01440764")),
            ("c.jpg", jpeg(), Label::Text("7")),
        ],
        "image",
    );
    let sources = r#"
[[source]]
origin = "rows"
path = ["rows.parquet"]

[[source]]
origin = "texts"
path = ["texts.parquet"]
"#;
    let m = manifest(&fx, "rows", sources, "");
    let out = fx.run(&["build", &m, "--device", "cpu"], &[]);
    no_panic(&out, &mut tally);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut plan = imagenet_hard::plan::Plan::read(&fx.path().join("run-rows")).unwrap();
    plan.run_dir = fx.path().join("run-rows");
    let stats = imagenet_hard::scan::read_stats(&plan).unwrap();
    let skips: BTreeMap<u64, String> = stats[0]
        .skips
        .iter()
        .map(|s| (s.row, s.reason.clone()))
        .collect();
    for (row, w) in want.iter().enumerate() {
        tally.cases += 1;
        match w {
            Some(reason) => {
                assert_eq!(
                    skips.get(&(row as u64)).map(String::as_str),
                    Some(*reason),
                    "row {row}"
                );
                tally.skips += 1;
            }
            None => {
                assert!(
                    !skips.contains_key(&(row as u64)),
                    "row {row} should decode: {skips:?}"
                );
                tally.decoded += 1;
            }
        }
    }
    let text_skips: Vec<&str> = stats[1].skips.iter().map(|s| s.reason.as_str()).collect();
    assert_eq!(
        text_skips,
        ["unknown-label", "unknown-label"],
        "`abc` and a wnid are not indices; `7` is"
    );
    tally.cases += 3;
    tally.skips += 2;
    tally.decoded += 1;
    // Every skip is in the card, counted by reason.
    let card = std::fs::read_to_string(fx.path().join("run-rows/dataset/README.md")).unwrap();
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

    // 2. Inputs that must stop with a clear error naming what and how to fix.
    let error_case = |name: &str, manifest_path: String, needles: &[&str], tally: &mut Tally| {
        tally.cases += 1;
        let out = fx.run(
            &["build", &manifest_path, "--device", "cpu"],
            &[("HF_HUB_OFFLINE", "1")],
        );
        no_panic(&out, tally);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: expected an error\n{}",
            stderr(&out)
        );
        for n in needles {
            assert!(
                stderr(&out).contains(n),
                "{name}: no `{n}` in\n{}",
                stderr(&out)
            );
        }
        tally.errors += 1;
    };
    parquet(
        &fx.path().join("schema.parquet"),
        &[("a.jpg", jpeg(), Label::Int(Some(1)))],
        "picture",
    );
    let m = manifest(
        &fx,
        "schema",
        "[[source]]\norigin = \"s\"\npath = [\"schema.parquet\"]\n",
        "",
    );
    error_case(
        "wrong schema",
        m,
        &["schema.parquet", "no column `image`", "image_column"],
        &mut tally,
    );
    parquet(
        &fx.path().join("float.parquet"),
        &[("a.jpg", jpeg(), Label::Float(1.5))],
        "image",
    );
    let m = manifest(
        &fx,
        "float",
        "[[source]]\norigin = \"s\"\npath = [\"float.parquet\"]\n",
        "",
    );
    error_case(
        "float labels",
        m,
        &["float.parquet", "`label`", "Float64"],
        &mut tally,
    );
    std::fs::write(fx.path().join("not.parquet"), b"PAR1 but not really").unwrap();
    let m = manifest(
        &fx,
        "notparquet",
        "[[source]]\norigin = \"s\"\npath = [\"not.parquet\"]\n",
        "",
    );
    error_case("not parquet", m, &["not.parquet", "Parquet"], &mut tally);
    let m = manifest(
        &fx,
        "missing",
        "[[source]]\norigin = \"s\"\npath = [\"gone-00001-of-00002.parquet\"]\n",
        "",
    );
    error_case(
        "missing shard",
        m,
        &["gone-00001-of-00002.parquet", "does not exist"],
        &mut tally,
    );
    let hub_missing = format!(
        "[[source]]\norigin = \"s\"\nhub = {{ repo = \"{}\", revision = \"{}\", files = [\"data/validation-00001-of-00002.parquet\"] }}\n",
        crate::fixture::DATASET,
        imagenet_hard::demo::DEMO_COMMIT
    );
    let m = manifest(&fx, "hubmissing", &hub_missing, "");
    error_case(
        "missing Hub shard",
        m,
        &["data/validation-00001-of-00002.parquet", "HF_HUB_OFFLINE"],
        &mut tally,
    );
    let m = manifest(
        &fx,
        "unknownkey",
        "[[source]]\norigin = \"s\"\npath = [\"rows.parquet\"]\ncolour = \"red\"\n",
        "",
    );
    error_case("unknown key", m, &["unknownkey.toml", "colour"], &mut tally);
    let no_model =
        "[build]\nname = \"nomodel\"\n\n[[source]]\norigin = \"s\"\npath = [\"rows.parquet\"]\n";
    let m = fx.path().join("nomodel.toml");
    std::fs::write(&m, no_model).unwrap();
    error_case(
        "no model",
        m.display().to_string(),
        &["nomodel.toml", "[[model]]"],
        &mut tally,
    );
    // A file whose bytes no longer match the lock.
    let hub_ok = format!(
        "[[source]]\norigin = \"s\"\nhub = {{ repo = \"{}\", revision = \"{}\", files = [\"{}\"] }}\n",
        crate::fixture::DATASET,
        imagenet_hard::demo::DEMO_COMMIT,
        crate::fixture::PARQUET
    );
    let m = manifest(&fx, "locked", &hub_ok, "");
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
    error_case(
        "sha256 differs from the lock",
        m,
        &["locked.lock", "does not match"],
        &mut tally,
    );

    eprintln!(
        "bad-input corpus: {} cases, {} errors, {} skips, {} decoded, {} panics",
        tally.cases, tally.errors, tally.skips, tally.decoded, tally.panics
    );
    assert_eq!(tally.panics, 0);
    assert_eq!(tally.cases, tally.errors + tally.skips + tally.decoded);
}
