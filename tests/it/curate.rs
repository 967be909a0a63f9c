//! Curate mode: (model, transform) pairs in a learned order, every model
//! stopping at the first hit of any. The fixture's two models differ in
//! speed (ResNet-18 answering class 3, ResNet-50 answering class 7), so the
//! cost-weighted order puts the cheap one first.

use crate::fixture::{ok, stderr, stdout, Fixture};
use crate::units::dataset_files;
use imagenet_hard::demo::{put_synthetic_model, DEMO_COMMIT};
use imagenet_hard::models::synthetic::Head;
use imagenet_hard::models::Architecture;
use imagenet_hard::scan::NOT_TRIED;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The fixture with "always-7" as a ResNet-50, in `mode`, writing `run`.
fn manifest(fx: &Fixture, mode: &str, run: &str, extra: &str) -> PathBuf {
    let base = std::fs::read_to_string(fx.write_manifest(DEMO_COMMIT)).unwrap();
    let text = base
        .replace("output_dir = \"run\"", &format!("output_dir = \"{run}\""))
        .replace(
            "architecture = \"resnet18\"\nhub = { repo = \"test-org/always-7\"",
            "architecture = \"resnet50\"\nhub = { repo = \"test-org/always-7-r50\"",
        );
    assert!(text.contains("always-7-r50"), "{text}");
    let path = fx.path().join(format!("{run}.toml"));
    std::fs::write(&path, format!("{text}\n[scan]\nmode = \"{mode}\"\n{extra}")).unwrap();
    path
}

fn fixture() -> Fixture {
    let fx = Fixture::new();
    fx.fill_cache();
    put_synthetic_model(
        &fx.cache(),
        "test-org/always-7-r50",
        Architecture::find("resnet50").unwrap(),
        7,
        Head::Always(7),
    )
    .unwrap();
    fx
}

fn shards(run: &Path) -> BTreeMap<String, Vec<u8>> {
    dataset_files(run)
        .into_iter()
        .filter(|(k, _)| k.ends_with(".parquet"))
        .collect()
}

fn tried(run: &Path) -> (usize, u64, Vec<imagenet_hard::records::ScanRecord>) {
    let mut plan = imagenet_hard::plan::Plan::read(run).unwrap();
    plan.run_dir = run.to_path_buf();
    let recs = imagenet_hard::scan::read_source_records(&plan, "tiny-source").unwrap();
    let n = recs
        .iter()
        .map(|r| r.pred.iter().filter(|&&p| p != NOT_TRIED).count())
        .sum();
    let passes = imagenet_hard::scan::read_stats(&plan)
        .unwrap()
        .iter()
        .map(|s| s.forward_passes)
        .sum();
    (n, passes, recs)
}

/// The hard set equals the exhaustive scan's, with and without a sample to
/// learn the order from. By hand: the order tries the cheap model first, so
/// an image labelled 3 takes 1 pass, one labelled 7 takes 2 (ResNet-18's
/// miss, then ResNet-50's hit) and a hard one all 2 x 18: 2 x 1 + 2 x 2 +
/// 3 x 36 = 114 recorded tries against the exhaustive 7 x 36 = 252.
#[test]
fn curate_finds_the_exhaustive_hard_set_trying_far_fewer_pairs() {
    let fx = fixture();
    let ex = manifest(&fx, "exhaustive", "exhaustive", "");
    ok(&fx.run(&["build", ex.to_str().unwrap(), "--device", "cpu"], &[]));
    let reference = shards(&fx.path().join("exhaustive"));
    assert!(!reference.is_empty());
    assert_eq!(tried(&fx.path().join("exhaustive")).0, 252);

    for (run, extra) in [
        ("curate-cold", String::new()),
        (
            "curate-learned",
            "curate_from = [\"exhaustive\"]\n".to_string(),
        ),
    ] {
        let m = manifest(&fx, "curate", run, &extra);
        let out = fx.run(&["build", m.to_str().unwrap(), "--device", "cpu"], &[]);
        ok(&out);
        let dir = fx.path().join(run);
        assert_eq!(shards(&dir), reference, "{run}: same hard set, same shards");
        let (n, passes, recs) = tried(&dir);
        assert_eq!(n, 114, "{run}: recorded tries");
        assert!(
            (114..200).contains(&passes),
            "{run}: {passes} forward passes"
        );
        // Row 0 (label 3): ResNet-18 solved it at the first pair; ResNet-50
        // never ran on it.
        let of = |row: u64, model: &str| {
            recs.iter()
                .find(|r| r.row == row && r.model == model)
                .unwrap()
                .pred
                .iter()
                .filter(|&&p| p != NOT_TRIED)
                .count()
        };
        assert_eq!((of(0, "always-3"), of(0, "always-7")), (1, 0), "{run}");
        assert_eq!((of(1, "always-3"), of(1, "always-7")), (1, 1), "{run}");
        assert_eq!((of(2, "always-3"), of(2, "always-7")), (18, 18), "{run}");
        // The order is in the plan, with where it came from.
        let plan = imagenet_hard::plan::Plan::read(&dir).unwrap();
        let order = plan.curate.expect("a curate plan keeps its order");
        assert_eq!(order.pairs.len(), 36);
        assert_eq!(
            (order.pairs[0].0, order.pairs[1].0),
            (0, 1),
            "cheap model first"
        );
        if run == "curate-learned" {
            assert_eq!(order.sample_images, 7);
            assert!(order.learned_from.contains("exhaustive (7 images)"));
        } else {
            assert!(order.learned_from.contains("no sample"));
        }
        let report = std::fs::read_to_string(dir.join("report/report.md")).unwrap();
        assert!(report.contains("Curate scan"), "{report}");
        assert!(report.contains("Who solved first"), "{report}");
        let card = std::fs::read_to_string(dir.join("dataset/README.md")).unwrap();
        assert!(card.contains("curate scan"), "{card}");
    }

    // A run keeps the order it started with, even once a sample appears.
    let cold = manifest(
        &fx,
        "curate",
        "curate-cold",
        "curate_from = [\"exhaustive\"]\n",
    );
    let out = fx.run(&["plan", cold.to_str().unwrap()], &[]);
    ok(&out);
    assert!(
        stderr(&out).contains("Curate order: the run's own, learned from no sample"),
        "{}",
        stderr(&out)
    );

    // Analyses that need what was not tried are refused, naming the fix.
    let m = fx.path().join("curate-learned.toml");
    let out = fx.run(
        &["select", m.to_str().unwrap(), "--rule", "at-least:1"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("curate scan"), "{}", stderr(&out));
    let review = fx.path().join("review.csv");
    std::fs::write(&review, "origin,row,labels\ntiny-source,4,0\n").unwrap();
    let out = fx.run(
        &[
            "select",
            m.to_str().unwrap(),
            "--labels",
            review.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("exhaustive scan"), "{}", stderr(&out));
}

/// `plan` compares the modes: exhaustive from the counts, first-hit and
/// curate from a sample run's outcomes; without a sample it says what it
/// needs. A curate manifest splitting models over units is refused.
#[test]
fn plan_projects_every_mode_from_a_sample_run() {
    let fx = fixture();
    let ex = manifest(&fx, "exhaustive", "exhaustive", "");
    ok(&fx.run(&["build", ex.to_str().unwrap(), "--device", "cpu"], &[]));
    let m = manifest(&fx, "curate", "curate", "");
    let m = m.to_str().unwrap();
    let out = fx.run(&["plan", m, "--dry-run"], &[]);
    ok(&out);
    assert!(
        stdout(&out).contains("needs a sample: --sample RUN_DIR"),
        "{}",
        stdout(&out)
    );
    let out = fx.run(&["plan", m, "--sample", "exhaustive"], &[]);
    ok(&out);
    let text = stderr(&out);
    let line = |mode: &str| -> Vec<String> {
        text.lines()
            .find(|l| l.starts_with(&format!("{mode}\t")) && l.contains("x\t"))
            .unwrap_or_else(|| panic!("no {mode} row:\n{text}"))
            .split('\t')
            .map(str::to_string)
            .collect()
    };
    // 8 rows x 36 pairs; each expected per image from the 7 sampled.
    assert_eq!(line("exhaustive")[1], "288", "{text}");
    assert_eq!(line("exhaustive")[4], "1.0x");
    // First-hit: 2 x (2 x 1 + 5 x 18) / 7 = 26.3 an image: 1.4x; curate:
    // 114 / 7 = 16.3 an image: 2.2x fewer passes.
    assert_eq!(line("first-hit")[4], "1.4x", "{text}");
    assert_eq!(line("curate")[4], "2.2x", "{text}");
    assert!(line("curate")[6].contains("7 sample images"), "{text}");
    // FLOPs: 7 x 36 passes' worth against 56 of both models and 2 of the
    // cheap one: 2.2x too (the cheap model's hits save a little more).
    assert_eq!(line("curate")[5], "2.2x", "{text}");
    assert!(line("exhaustive")[2].ends_with("FLOP"), "{text}");

    let split = fx.path().join("split.toml");
    let text = std::fs::read_to_string(m)
        .unwrap()
        .replace("batch_size = 8", "batch_size = 8\nmodels_per_unit = 1");
    std::fs::write(&split, text).unwrap();
    let out = fx.run(&["plan", split.to_str().unwrap(), "--dry-run"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("build.models_per_unit"),
        "{}",
        stderr(&out)
    );
}
