//! Every container and every label convention, generated here, offline:
//! a build over all of them must give each image the labels the generator
//! meant (facts from timm's `_info` lists, ObjectNet's mapping and ReaL's
//! `real.json`, written out below), restrict predictions to each source's
//! subset, and count every bad member as a skip.

use crate::fixture::{ok, stderr, stdout, Fixture};
use arrow_array::builder::{BinaryBuilder, Int64Builder, StringBuilder, StructBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema};
use imagenet_hard::demo::{put_in_hub_cache, put_synthetic_model, DEMO_COMMIT};
use imagenet_hard::hub::RepoKind;
use imagenet_hard::labels::{ClassSubset, LabelConvention};
use imagenet_hard::models::synthetic::Head;
use imagenet_hard::models::Architecture;
use imagenet_hard::sources::{Container, Source, SourceError};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A small picture, different per `seed`, encoded as `ext`.
fn image(seed: u32, ext: &str) -> Vec<u8> {
    let img = image::RgbImage::from_fn(48 + seed % 5 * 8, 40 + seed % 3 * 8, |x, y| {
        image::Rgb([
            (x * 5 + seed * 40) as u8,
            (y * 6 + seed * 13) as u8,
            ((x + y) * 3 + seed * 71) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    match ext {
        "webp" => image::codecs::webp::WebPEncoder::new_lossless(&mut out)
            .encode(
                img.as_raw(),
                img.width(),
                img.height(),
                image::ExtendedColorType::Rgb8,
            )
            .unwrap(),
        "png" => img.write_to(&mut out, image::ImageFormat::Png).unwrap(),
        _ => img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap(),
    }
    out.into_inner()
}

/// What a source's label column holds.
enum Labels<'a> {
    Ints(&'a [i64]),
    Texts(&'a [&'a str]),
}

/// A Hugging Face Parquet file: `image` struct<bytes, path> + `label`.
fn parquet_bytes(paths: &[String], labels: Labels) -> Vec<u8> {
    parquet_bytes_with(paths, labels, None)
}

fn parquet_bytes_with(paths: &[String], labels: Labels, group_rows: Option<usize>) -> Vec<u8> {
    let image_fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let label_type = match labels {
        Labels::Ints(_) => DataType::Int64,
        Labels::Texts(_) => DataType::Utf8,
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("image", DataType::Struct(image_fields.clone()), true),
        Field::new("label", label_type, true),
    ]));
    let mut img = StructBuilder::from_fields(image_fields, paths.len());
    for (i, p) in paths.iter().enumerate() {
        img.field_builder::<BinaryBuilder>(0)
            .unwrap()
            .append_value(image(i as u32, "jpg"));
        img.field_builder::<StringBuilder>(1)
            .unwrap()
            .append_value(p);
        img.append(true);
    }
    let label: ArrayRef = match labels {
        Labels::Ints(v) => {
            let mut b = Int64Builder::new();
            v.iter().for_each(|&l| b.append_value(l));
            Arc::new(b.finish())
        }
        Labels::Texts(v) => {
            let mut b = StringBuilder::new();
            v.iter().for_each(|l| b.append_value(l));
            Arc::new(b.finish())
        }
    };
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(img.finish()), label]).unwrap();
    let mut out = Vec::new();
    let props = group_rows.map(|n| {
        parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(n))
            .build()
    });
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema, props).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

/// A tar of `(member path, bytes)`, optionally gzipped.
fn tar_bytes(members: &[(String, Vec<u8>)], gzip: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    let raw = b.into_inner().unwrap();
    if !gzip {
        return raw;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

fn zip_bytes(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    w.add_directory("sketch/", opts).unwrap();
    for (path, data) in members {
        w.start_file(path.as_str(), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// The generator's truth for one source: id → ImageNet-1k labels, and the
/// skips it planted.
struct Expect {
    origin: &'static str,
    labels: BTreeMap<String, Vec<i64>>,
    skips: BTreeMap<&'static str, u64>,
    subset: ClassSubset,
}

impl Expect {
    fn new(origin: &'static str, subset: ClassSubset) -> Expect {
        Expect {
            origin,
            labels: BTreeMap::new(),
            skips: BTreeMap::new(),
            subset,
        }
    }
    fn image(&mut self, id: &str, labels: &[i64]) {
        self.labels.insert(id.into(), labels.to_vec());
    }
    fn skip(&mut self, reason: &'static str) {
        *self.skips.entry(reason).or_default() += 1;
    }
}

const ORG: &str = "test-org";

/// Write every source (Hub cache and local files) and the manifest; return
/// the manifest and the truth.
fn mixed_sources(fx: &Fixture) -> (PathBuf, Vec<Expect>) {
    let cache = fx.cache();
    let put = |repo: &str, files: &[(&str, &[u8])]| {
        put_in_hub_cache(
            &cache,
            RepoKind::Dataset,
            &format!("{ORG}/{repo}"),
            DEMO_COMMIT,
            files,
        )
        .unwrap();
    };
    let mut truth = Vec::new();

    // ImageNet val in Parquet, file names carry the validation number.
    // real.json: 1 → [], 2 → [970, 795], 3 → [230, 231], 4 → [809].
    let paths: Vec<String> = (1..=4)
        .map(|n| format!("ILSVRC2012_val_{n:08}.JPEG"))
        .collect();
    let original = [65, 970, 230, 810];
    std::fs::write(
        fx.path().join("val.parquet"),
        parquet_bytes(&paths, Labels::Ints(&original)),
    )
    .unwrap();
    let mut real = Expect::new("imagenet-real", ClassSubset::Imagenet1k);
    real.skip("empty-real-label");
    real.image(&paths[1], &[795, 970]);
    real.image(&paths[2], &[230, 231]);
    real.image(&paths[3], &[809]);
    truth.push(real);
    let mut in_real = Expect::new("imagenet-in-real", ClassSubset::Imagenet1k);
    in_real.image(&paths[0], &[65]);
    in_real.image(&paths[1], &[795, 970]);
    in_real.image(&paths[2], &[230, 231]);
    in_real.image(&paths[3], &[809, 810]);
    truth.push(in_real);

    // wnid strings in a Parquet column (as axiong/imagenet-r), one unknown.
    let wnids = ["n01443537", "n01484850", "n99999999", "n01443537"];
    let paths: Vec<String> = (0..4).map(|i| format!("r_{i}.jpg")).collect();
    put(
        "wnid-parquet",
        &[(
            "test/test-00000-of-00001.parquet",
            &parquet_bytes(&paths, Labels::Texts(&wnids)),
        )],
    );
    let mut r = Expect::new("imagenet-r", ClassSubset::ImagenetR);
    r.image(&paths[0], &[1]);
    r.image(&paths[1], &[2]);
    r.skip("unknown-label");
    r.image(&paths[3], &[1]);
    truth.push(r);

    // WebDataset shards, ImageNet-A's 0..199 (0 → 6, 1 → 11, 199 → 988), one
    // sample without `.cls`, one webp, split over two shards found by pattern.
    let cls = |v: &str| v.as_bytes().to_vec();
    let shard0 = tar_bytes(
        &[
            ("s0000000.jpg".into(), image(1, "jpg")),
            ("s0000000.cls".into(), cls("0")),
            ("s0000001.webp".into(), image(2, "webp")),
            ("s0000001.cls".into(), cls("199\n")),
            ("s0000002.jpg".into(), image(3, "jpg")),
        ],
        false,
    );
    let shard1 = tar_bytes(
        &[
            ("s0000003.cls".into(), cls("1")),
            ("s0000003.png".into(), image(4, "png")),
        ],
        false,
    );
    put(
        "wds-a",
        &[
            ("test/0.tar", &shard0),
            ("test/1.tar", &shard1),
            ("classnames.txt", b"x\n"),
        ],
    );
    let mut a = Expect::new("imagenet-a", ClassSubset::ImagenetA);
    a.image("s0000000.jpg", &[6]);
    a.image("s0000001.webp", &[988]);
    a.skip("missing-label");
    a.image("s0000003.png", &[11]);
    truth.push(a);

    // ObjectNet WebDataset: 0 → 409 (alarm clock), 2 → 954 (banana), 112 → 909 (wok).
    let shard = tar_bytes(
        &[
            ("s0000000.png".into(), image(5, "png")),
            ("s0000000.cls".into(), cls("0")),
            ("s0000001.png".into(), image(6, "png")),
            ("s0000001.cls".into(), cls("2")),
            ("s0000002.png".into(), image(7, "png")),
            ("s0000002.cls".into(), cls("112")),
        ],
        false,
    );
    put("wds-objectnet", &[("test/0.tar", &shard)]);
    let mut o = Expect::new("objectnet", ClassSubset::Objectnet);
    o.image("s0000000.png", &[409]);
    o.image("s0000001.png", &[954]);
    o.image("s0000002.png", &[909]);
    truth.push(o);

    // ImageNet-R's 0..199 in WebDataset (0 → 1 goldfish, 199 → 988).
    let shard = tar_bytes(
        &[
            ("r/s0.jpeg".into(), image(16, "jpg")),
            ("r/s0.cls".into(), cls("199")),
            ("r/s1.jpeg".into(), image(17, "jpg")),
            ("r/s1.cls".into(), cls("0")),
        ],
        false,
    );
    put("wds-r", &[("test/0.tar", &shard)]);
    let mut rw = Expect::new("imagenet-r-wds", ClassSubset::ImagenetR);
    rw.image("r/s0.jpeg", &[988]);
    rw.image("r/s1.jpeg", &[1]);
    truth.push(rw);

    // A zip of wnid folders (as ImageNet-Sketch), with a `../` member and a
    // text file. n01440764 → 0, n15075141 → 999.
    let zip = zip_bytes(&[
        ("sketch/n01440764/sketch_1.JPEG".into(), image(8, "jpg")),
        ("../evil.jpg".into(), image(9, "jpg")),
        ("sketch/README.txt".into(), b"not an image".to_vec()),
        ("sketch/n15075141/sketch_2.JPEG".into(), image(10, "jpg")),
    ]);
    std::fs::write(fx.path().join("sketch.zip"), zip).unwrap();
    let mut sk = Expect::new("imagenet-sketch", ClassSubset::Imagenet1k);
    sk.image("sketch/n01440764/sketch_1.JPEG", &[0]);
    sk.skip("unsafe-path");
    sk.skip("not-an-image");
    sk.image("sketch/n15075141/sketch_2.JPEG", &[999]);
    truth.push(sk);

    // A gzipped tar of index folders (as ImageNet-V2), plus a plain tar named
    // `.tar.gz` (sniffed, not trusted by name).
    let top = "imagenetv2-matched-frequency-format-val";
    let v2 = tar_bytes(
        &[
            (format!("{top}/0/a1.jpeg"), image(11, "jpg")),
            (format!("{top}/417/b2.jpeg"), image(12, "jpg")),
            (format!("{top}/notes.md"), b"# notes".to_vec()),
        ],
        true,
    );
    let v2_plain = tar_bytes(&[(format!("{top}/999/c3.jpeg"), image(13, "jpg"))], false);
    put(
        "v2",
        &[
            ("matched-frequency.tar.gz", &v2),
            ("plain.tar.gz", &v2_plain),
        ],
    );
    let mut v = Expect::new("imagenet-v2", ClassSubset::Imagenet1k);
    v.image(&format!("{top}/0/a1.jpeg"), &[0]);
    v.image(&format!("{top}/417/b2.jpeg"), &[417]);
    v.skip("not-an-image");
    v.image(&format!("{top}/999/c3.jpeg"), &[999]);
    truth.push(v);

    // A local folder of wnid folders scored over ImageNet-R's classes.
    let root = fx.path().join("local-r");
    for (wnid, file, seed) in [("n01443537", "x.jpg", 14), ("n01484850", "y.png", 15)] {
        std::fs::create_dir_all(root.join(wnid)).unwrap();
        let ext = file.rsplit('.').next().unwrap();
        std::fs::write(root.join(wnid).join(file), image(seed, ext)).unwrap();
    }
    std::fs::write(root.join("n01443537").join("Thumbs.db"), b"junk").unwrap();
    let mut lr = Expect::new("imagenet-r-folder", ClassSubset::ImagenetR);
    lr.image("n01443537/x.jpg", &[1]);
    lr.skip("not-an-image");
    lr.image("n01484850/y.png", &[2]);
    truth.push(lr);

    // ImageNet-C laid out as data/<corruption>/severity_<n>/*.parquet.
    let paths: Vec<String> = (0..2).map(|i| format!("fog_{i}.JPEG")).collect();
    let c = parquet_bytes(&paths, Labels::Ints(&[5, 600]));
    let decoy = parquet_bytes(&paths, Labels::Ints(&[1, 1]));
    put(
        "imagenet-c",
        &[
            ("data/fog/severity_2/data-00000.parquet", &c),
            ("data/fog/severity_3/data-00000.parquet", &decoy),
        ],
    );
    let mut ic = Expect::new("imagenet-c/fog/2", ClassSubset::Imagenet1k);
    ic.image(&paths[0], &[5]);
    ic.image(&paths[1], &[600]);
    truth.push(ic);

    put_synthetic_model(
        &cache,
        "test-org/random",
        Architecture::find("resnet18").unwrap(),
        11,
        Head::Random,
    )
    .unwrap();

    let hub = |repo: &str, files: &str| {
        format!(
            "hub = {{ repo = \"{ORG}/{repo}\", revision = \"{DEMO_COMMIT}\", files = {files} }}"
        )
    };
    let manifest = format!(
        r#"
[build]
name = "mixed"
output_dir = "run"
batch_size = 16

[zoom]
scales = [64, 256]
crop_size = 64

[[source]]
origin = "imagenet-real"
path = ["val.parquet"]
labels = "real"

[[source]]
origin = "imagenet-in-real"
path = ["val.parquet"]
labels = "imagenet-real"

[[source]]
origin = "imagenet-r"
{}
label_column = "label"
labels = "wnid"
class_subset = "imagenet-r"

[[source]]
origin = "imagenet-a"
format = "webdataset"
{}
labels = "imagenet-a-index"

[[source]]
origin = "objectnet"
format = "webdataset"
{}
labels = "objectnet-index"

[[source]]
origin = "imagenet-r-wds"
format = "webdataset"
{}
labels = "imagenet-r-index"

[[source]]
origin = "imagenet-sketch"
format = "archive"
path = ["sketch.zip"]
labels = "wnid"

[[source]]
origin = "imagenet-v2"
format = "archive"
{}

[[source]]
origin = "imagenet-r-folder"
format = "folder"
path = ["local-r"]
labels = "wnid"
class_subset = "imagenet-r"

[[source]]
origin = "imagenet-c/fog/{{severity}}"
severity = 2
{}

[[model]]
name = "random"
architecture = "resnet18"
hub = {{ repo = "test-org/random", revision = "{DEMO_COMMIT}", files = ["model.safetensors"] }}
"#,
        hub("wnid-parquet", r#"["test/*.parquet"]"#),
        hub("wds-a", r#"["test/*.tar"]"#),
        hub("wds-objectnet", r#"["test/0.tar"]"#),
        hub("wds-r", r#"["test/0.tar"]"#),
        hub("v2", r#"["matched-frequency.tar.gz", "plain.tar.gz"]"#),
        hub(
            "imagenet-c",
            r#"["data/fog/severity_{severity}/*.parquet"]"#
        ),
    );
    let path = fx.path().join("mixed.toml");
    std::fs::write(&path, manifest).unwrap();
    (path, truth)
}

#[test]
fn every_container_and_label_convention_gives_the_generators_labels() {
    let fx = Fixture::new();
    let (manifest, truth) = mixed_sources(&fx);
    let offline = [("HF_HUB_OFFLINE", "1")];
    let out = fx.run(&["build", manifest.to_str().unwrap()], &offline);
    ok(&out);
    let run = fx.path().join("run");
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("plan.json")).unwrap()).unwrap();
    let mut typed = imagenet_hard::plan::Plan::read(&run).unwrap();
    typed.run_dir = run.clone(); // the plan names it relative to the fixture dir
    let stats = imagenet_hard::scan::read_stats(&typed).unwrap();
    for t in &truth {
        let planned = plan["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["origin"] == t.origin)
            .unwrap_or_else(|| panic!("{} not in the plan", t.origin));
        assert_eq!(
            planned["class_subset"],
            serde_json::to_value(t.subset).unwrap(),
            "{}",
            t.origin
        );
        let records = imagenet_hard::scan::read_source_records(&typed, t.origin).unwrap();
        let got: BTreeMap<String, Vec<i64>> = records
            .iter()
            .map(|r| (r.id.clone(), r.labels.clone()))
            .collect();
        assert_eq!(got, t.labels, "{}: labels per image", t.origin);
        // Predictions never leave the source's subset.
        let allowed = t.subset.mask();
        let preds: Vec<u16> = records.iter().flat_map(|r| r.pred.clone()).collect();
        assert_eq!(preds.len(), t.labels.len() * 18, "{}", t.origin);
        assert!(
            preds.iter().all(|&p| allowed[p as usize]),
            "{}: a prediction outside {:?}",
            t.origin,
            t.subset
        );
        let skipped = &stats.iter().find(|s| s.origin == t.origin).unwrap().skipped;
        let want: BTreeMap<String, u64> =
            t.skips.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        assert_eq!(*skipped, want, "{}: skips", t.origin);
    }
    // The random head is not confined: on 1000-class sources it reaches
    // classes outside the 200 of ImageNet-A, so the restriction is per source.
    let a_mask = ClassSubset::ImagenetA.mask();
    let wide: Vec<u16> = ["imagenet-sketch", "imagenet-v2", "imagenet-in-real"]
        .iter()
        .flat_map(|o| {
            imagenet_hard::scan::read_source_records(&typed, o)
                .unwrap()
                .into_iter()
                .flat_map(|r| r.pred)
        })
        .collect();
    assert!(wide.iter().any(|&p| !a_mask[p as usize]));
    // Patterns were resolved offline and pinned in the lock, in shard order.
    let lock = std::fs::read_to_string(fx.path().join("mixed.lock")).unwrap();
    let a0 = lock.find("path = \"test/0.tar\"").unwrap();
    let a1 = lock.find("path = \"test/1.tar\"").unwrap();
    assert!(a0 < a1, "{lock}");
    assert!(lock.contains("data/fog/severity_2/data-00000.parquet"));
    assert!(!lock.contains("severity_3"), "{lock}");
    // The export names each origin as the manifest does.
    let card = std::fs::read_to_string(run.join("dataset/README.md")).unwrap();
    assert!(card.contains("imagenet-c/fog/2"), "{card}");

    // A limit takes rows spread over the source, the same on every run.
    let out = fx.run(
        &[
            "build",
            manifest.to_str().unwrap(),
            "--dry-run",
            "--limit",
            "2",
        ],
        &offline,
    );
    ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains("test/0.tar  ") && text.contains("test/1.tar  "),
        "{text}"
    );
    assert!(text.contains("limit 2 rows spread"), "{text}");
}

fn source(container: Container, labels: LabelConvention, limit: Option<u64>) -> Source {
    Source {
        container,
        labels,
        limit,
    }
}

/// Row number and labels, or the skip reason.
type Outcome = (u64, Result<Vec<i64>, String>);

fn collect(s: &Source) -> Result<Vec<Outcome>, SourceError> {
    s.rows()
        .map(|r| {
            r.map(|o| match o {
                Ok(rec) => (rec.row, Ok(rec.labels)),
                Err(skip) => (skip.row, Err(skip.reason)),
            })
        })
        .collect()
}

#[test]
fn limits_sample_rows_evenly_in_every_container() {
    let dir = tempfile::tempdir().unwrap();
    let members: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (format!("top/{i}/img_{i}.jpg"), image(i, "jpg")))
        .collect();
    let tgz = dir.path().join("a.tar.gz");
    std::fs::write(&tgz, tar_bytes(&members, true)).unwrap();
    let s = source(
        Container::Archive { files: vec![tgz] },
        LabelConvention::Imagenet1kIndex,
        Some(3),
    );
    let rows = collect(&s).unwrap();
    assert_eq!(
        rows,
        vec![(0, Ok(vec![0])), (3, Ok(vec![3])), (6, Ok(vec![6]))]
    );
    assert_eq!(s.total_rows().unwrap(), 10);
    // Rows by number (as export asks for the hard ones), across two shards.
    let wds = |range: std::ops::Range<u32>| {
        tar_bytes(
            &range
                .flat_map(|i| {
                    [
                        (format!("k{i:03}.jpg"), image(i, "jpg")),
                        (format!("k{i:03}.cls"), i.to_string().into_bytes()),
                    ]
                })
                .collect::<Vec<_>>(),
            false,
        )
    };
    let (t0, t1) = (dir.path().join("0.tar"), dir.path().join("1.tar"));
    std::fs::write(&t0, wds(0..4)).unwrap();
    std::fs::write(&t1, wds(4..9)).unwrap();
    let s = source(
        Container::Webdataset {
            files: vec![t0, t1],
        },
        LabelConvention::Imagenet1kIndex,
        None,
    );
    assert_eq!(s.total_rows().unwrap(), 9);
    let picked: Vec<(u64, Vec<i64>)> = s
        .rows_in([1, 5, 8].into())
        .map(|r| r.unwrap().unwrap())
        .map(|rec| (rec.row, rec.labels))
        .collect();
    assert_eq!(picked, vec![(1, vec![1]), (5, vec![5]), (8, vec![8])]);

    // Parquet: two files of row groups of 3; only the groups holding wanted rows are read.
    let write = |name: &str, labels: &[i64]| {
        let paths: Vec<String> = labels.iter().map(|l| format!("p{l}.jpg")).collect();
        let file =
            std::fs::File::open(write_parquet_grouped(dir.path(), name, &paths, labels)).unwrap();
        let meta = parquet::file::reader::SerializedFileReader::new(file).unwrap();
        use parquet::file::reader::FileReader;
        assert!(meta.metadata().num_row_groups() >= 3);
        dir.path().join(name)
    };
    let files = vec![
        write("a.parquet", &[0, 1, 2, 3, 4, 5, 6]),
        write("b.parquet", &[7, 8, 9, 10, 11, 12, 13]),
    ];
    let mut s = source(
        Container::Parquet {
            files,
            image_column: "image".into(),
            label_column: "label".into(),
            origin_column: None,
        },
        LabelConvention::Imagenet1kIndex,
        Some(4),
    );
    assert_eq!(
        collect(&s).unwrap(),
        vec![
            (0, Ok(vec![0])),
            (3, Ok(vec![3])),
            (7, Ok(vec![7])),
            (10, Ok(vec![10]))
        ]
    );
    s.limit = None;
    let picked: Vec<u64> = s
        .rows_in([2, 6, 7, 13].into())
        .map(|r| r.unwrap().unwrap().row)
        .collect();
    assert_eq!(picked, vec![2, 6, 7, 13]);
}

/// A Parquet source file with row groups of 3 rows.
fn write_parquet_grouped(dir: &Path, name: &str, paths: &[String], labels: &[i64]) -> PathBuf {
    let bytes = parquet_bytes_with(paths, Labels::Ints(labels), Some(3));
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn unreadable_containers_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("shard.tar");
    std::fs::write(&junk, b"this is not an archive at all").unwrap();
    let err = |c: Container| {
        collect(&source(c, LabelConvention::Imagenet1kIndex, None))
            .unwrap_err()
            .to_string()
    };
    let e = err(Container::Archive {
        files: vec![junk.clone()],
    });
    assert!(
        e.contains("shard.tar") && e.contains("not a zip, tar or tar.gz"),
        "{e}"
    );
    let e = err(Container::Webdataset {
        files: vec![junk.clone()],
    });
    assert!(e.contains("shard.tar"), "{e}");
    let e = err(Container::Parquet {
        files: vec![junk.clone()],
        image_column: "image".into(),
        label_column: "label".into(),
        origin_column: None,
    });
    assert!(e.contains("shard.tar") && e.contains("Parquet"), "{e}");
    let e = err(Container::Folder {
        root: dir.path().join("nowhere"),
    });
    assert!(e.contains("nowhere"), "{e}");
    // A truncated gzip stops with the file named, after the rows before it.
    let members: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("c/{i}/x{i}.jpg"), image(i, "jpg")))
        .collect();
    let gz = tar_bytes(&members, true);
    let cut = dir.path().join("cut.tar.gz");
    std::fs::write(&cut, &gz[..gz.len() * 2 / 3]).unwrap();
    let s = source(
        Container::Archive { files: vec![cut] },
        LabelConvention::Imagenet1kIndex,
        None,
    );
    let results: Vec<_> = s.rows().collect();
    let last = results.last().unwrap().as_ref().unwrap_err().to_string();
    assert!(last.contains("cut.tar.gz"), "{last}");
    assert!(results.len() >= 2, "rows before the cut are delivered");
}

#[test]
fn the_shipped_manifests_print_their_plan_without_fetching() {
    let fx = Fixture::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    for name in ["imagenet-hard.toml", "imagenet-hard-mini.toml"] {
        let m = root.join(name);
        let out = fx.run(
            &["build", "--dry-run", m.to_str().unwrap()],
            &[("HF_HUB_OFFLINE", "1")],
        );
        ok(&out);
        let text = stdout(&out);
        assert!(text.contains("nothing was downloaded"), "{name}: {text}");
        assert!(!fx.cache().exists(), "{name}: a dry run touched the cache");
        for needle in [
            "imagenet-sketch",
            "imagenet-a",
            "imagenet-r",
            "objectnet",
            "imagenet-v2",
            "imagenet-c/fog/3",
            "resnet18",
        ] {
            assert!(text.contains(needle), "{name}: no {needle} in\n{text}");
        }
        assert!(stderr(&out).is_empty() || !stderr(&out).contains("error"));
    }
    let full = fx.run(
        &[
            "build",
            "--dry-run",
            root.join("imagenet-hard.toml").to_str().unwrap(),
        ],
        &[],
    );
    let text = stdout(&full);
    for needle in [
        "gated: accept the terms at https://huggingface.co/datasets/ILSVRC/imagenet-1k",
        "labels real",
        "imagenet-c/zoom_blur/3",
        "imagenet-c/impulse_noise/3",
        "imagenet-c/snow/3",
        "imagenet-c/frost/3",
        "imagenet-c/brightness/3",
        "alexnet",
        "vgg16",
        "resnet50",
        "vit_b_32",
        "clip",
    ] {
        assert!(text.contains(needle), "no `{needle}` in\n{text}");
    }
}
