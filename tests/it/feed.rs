//! The parallel feed inside a real scan: records are byte-identical for any
//! number of preprocessing threads, and each prediction sits at its
//! transform's index (checked against first-hit, which cuts each view on
//! its own).

use crate::fixture::{ok, stderr, Fixture};
use imagenet_hard::demo::{put_synthetic_model, DEMO_COMMIT};
use imagenet_hard::models::synthetic::Head;
use imagenet_hard::models::Architecture;
use imagenet_hard::records::{read_records, ScanRecord};
use std::path::Path;

/// The fixture's rows under a random-weight ResNet-18 whose answer depends
/// on the pixels, in batches of 5 crops (not a multiple of the 9 anchors).
fn manifest(fx: &Fixture, mode: &str) -> std::path::PathBuf {
    fx.fill_cache();
    put_synthetic_model(
        &fx.cache(),
        "test-org/random",
        Architecture::find("resnet18").unwrap(),
        11,
        Head::Random,
    )
    .unwrap();
    let path = fx.path().join(format!("{mode}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[build]
name = "feed"
output_dir = "{mode}"
batch_size = 5

[zoom]
scales = [32, 64, 96]
crop_size = 32

[scan]
mode = "{mode}"

[[source]]
origin = "tiny-source"
hub = {{ repo = "{}", revision = "{DEMO_COMMIT}", files = ["{}"] }}

[[model]]
name = "random"
architecture = "resnet18"
hub = {{ repo = "test-org/random", revision = "{DEMO_COMMIT}", files = ["model.safetensors"] }}
"#,
            crate::fixture::DATASET,
            crate::fixture::PARQUET
        ),
    )
    .unwrap();
    path
}

fn records(run: &Path) -> (Vec<u8>, Vec<ScanRecord>) {
    let file = run.join("scan/units/u00000.parquet");
    (std::fs::read(&file).unwrap(), read_records(&file).unwrap())
}

#[test]
fn records_do_not_depend_on_the_number_of_threads() {
    let fx = Fixture::new();
    let m = manifest(&fx, "exhaustive");
    let mut runs = Vec::new();
    for threads in ["1", "2", "5"] {
        let _ = std::fs::remove_dir_all(fx.path().join("exhaustive"));
        let out = fx.run(
            &[
                "scan",
                m.to_str().unwrap(),
                "--device",
                "cpu",
                "--threads",
                threads,
            ],
            &[],
        );
        ok(&out);
        assert!(
            stderr(&out).contains(&format!("{threads} preprocessing threads")),
            "{}",
            stderr(&out)
        );
        runs.push(records(&fx.path().join("exhaustive")));
    }
    let (bytes, recs) = &runs[0];
    // 7 decodable rows (row 6 is a corrupt JPEG), 27 transforms each.
    assert_eq!(recs.len(), 7);
    assert!(recs.iter().all(|r| r.pred.len() == 27));
    let classes: std::collections::BTreeSet<u16> =
        recs.iter().flat_map(|r| r.pred.iter().copied()).collect();
    assert!(
        classes.len() > 3,
        "the model's answers depend on the crops: {classes:?}"
    );
    for (threads, (other, _)) in ["2", "5"].iter().zip(&runs[1..]) {
        assert!(other == bytes, "{threads} threads wrote other records");
    }

    // First-hit cuts every view on its own: each prediction it made must
    // equal the exhaustive scan's at the same transform index.
    let fh = manifest(&fx, "first-hit");
    ok(&fx.run(
        &[
            "scan",
            fh.to_str().unwrap(),
            "--device",
            "cpu",
            "--threads",
            "2",
        ],
        &[],
    ));
    let (_, hunted) = records(&fx.path().join("first-hit"));
    assert_eq!(hunted.len(), recs.len());
    let mut compared = 0;
    for (h, r) in hunted.iter().zip(recs) {
        assert_eq!((h.row, &h.model), (r.row, &r.model));
        for (t, (&a, &b)) in h.pred.iter().zip(&r.pred).enumerate() {
            if a != imagenet_hard::scan::NOT_TRIED {
                assert_eq!(a, b, "row {} transform {t}", h.row);
                compared += 1;
            }
        }
    }
    assert!(compared >= 7, "{compared} predictions compared");
}

/// `plan` counts forward passes per model and, given `bench` JSON files,
/// the GPU-hours; before anything is fetched it works from the manifest's
/// `rows`; `status` projects the rest of a run from its finished units.
#[test]
fn plan_prints_the_cost_of_a_manifest() {
    let fx = Fixture::new();
    let bench = |arch: &str, model_only: f64, e2e: Option<f64>| {
        let path = fx.path().join(format!("{arch}.json"));
        let doc = serde_json::json!({"architecture": arch, "device": "cuda:0", "dtype": "bf16",
            "model_only": {"crops_per_s": model_only},
            "end_to_end": e2e.map(|r| serde_json::json!({"crops_per_s": r}))});
        std::fs::write(&path, doc.to_string()).unwrap();
        path.display().to_string()
    };
    let (r50, r18) = (
        bench("resnet50", 20_000.0, Some(16_000.0)),
        bench("resnet18", 42_000.0, None),
    );
    let paper =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/imagenet-hard.toml");
    let out = fx.run(
        &[
            "plan",
            "--dry-run",
            paper.to_str().unwrap(),
            "--rates",
            &r50,
            &r18,
        ],
        &[("HF_HUB_OFFLINE", "1")],
    );
    ok(&out);
    let text = crate::fixture::stdout(&out);
    // 466,963 published rows x 324 transforms per model.
    let passes = 466_963u64 * 324;
    let hours50 = passes as f64 / 16_000.0 / 3600.0;
    assert!(
        text.contains(&format!(
            "resnet50\tresnet50\t151,296,012\t16000\t{hours50:.2}\tresnet50.json (end to end, cuda:0, bf16)"
        )),
        "{text}"
    );
    assert!(
        text.contains("resnet18\tresnet18\t151,296,012\t42000\t"),
        "{text}"
    );
    assert!(
        text.contains("vgg16\tvgg16\t151,296,012\t?\t?\tno rate"),
        "{text}"
    );
    assert!(!fx.cache().exists(), "a dry run fetched nothing");

    // The fixture: counted rows (8) x 18 transforms, one line per model.
    fx.fill_cache();
    let m = fx.write_manifest(DEMO_COMMIT);
    let m = m.to_str().unwrap();
    let out = fx.run(&["plan", m], &[]);
    ok(&out);
    let err = stderr(&out);
    assert!(err.contains("always-3\tresnet18\t144\t?\t?"), "{err}");
    assert!(err.contains("total\t\t288\t\t?"), "{err}");
    ok(&fx.run(&["scan", m, "--device", "cpu"], &[]));
    let status = crate::fixture::stdout(&fx.run(&["status", m], &[]));
    assert!(status.contains("1 of 1 units done in "), "{status}");
    assert!(status.contains("nothing left"), "{status}");
}

/// `[decode] max_zoom_bytes`: an image whose zoom would need more memory is
/// a counted `too-large-after-zoom` skip, named with its row, not a crash.
#[test]
fn an_image_over_the_zoom_budget_is_a_counted_skip() {
    let fx = Fixture::new();
    let m = manifest(&fx, "exhaustive");
    let text = std::fs::read_to_string(&m).unwrap();
    // The fixture's pictures decode to about 100 KB; their zoom needs more.
    std::fs::write(
        &m,
        format!(
            "{text}\n[decode]\nmax_side = 32768\nmax_pixels = 178956970\nmax_zoom_bytes = 200000\n"
        ),
    )
    .unwrap();
    let out = fx.run(&["scan", m.to_str().unwrap(), "--device", "cpu"], &[]);
    ok(&out);
    let stats: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fx.path().join("exhaustive/scan/units/u00000.stats.json"))
            .unwrap(),
    )
    .unwrap();
    let over = stats["skipped"]["too-large-after-zoom"]
        .as_u64()
        .unwrap_or(0);
    let scanned = stats["images_scanned"].as_u64().unwrap();
    assert!(over > 0, "{stats}");
    assert_eq!(
        over + scanned + 1,
        8,
        "every row is scanned or counted: {stats}"
    );
    let detail = stats["skips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["reason"] == "too-large-after-zoom")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("decode.max_zoom_bytes"), "{detail}");
}

/// Under a scheduler stderr is no terminal: a unit says how far it is in
/// plain lines (here at every step), and `status` gives each done unit's
/// time and rate.
#[test]
fn a_unit_reports_progress_in_plain_lines() {
    let fx = Fixture::new();
    let m = manifest(&fx, "exhaustive");
    let m = m.to_str().unwrap();
    let out = fx.run(
        &["scan", m, "--device", "cpu", "--progress-every", "0"],
        &[],
    );
    ok(&out);
    let err = stderr(&out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("u00000 tiny-source: ") && l.contains(" images, "))
        .collect();
    assert!(lines.len() >= 3, "{err}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("/8 images, ") && l.contains(" crops/s, ") && l.contains(" left")),
        "{err}"
    );
    let quiet = fx.run(&["scan", m, "--device", "cpu"], &[]);
    assert!(
        !stderr(&quiet).contains(" images, "),
        "done units print no progress"
    );
    let status = crate::fixture::stdout(&fx.run(&["status", m], &[]));
    assert!(
        status.contains("\tdone in ") && status.contains(" crops/s)"),
        "{status}"
    );
}
