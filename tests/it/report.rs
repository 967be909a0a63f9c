//! The report and re-selection from stored records. The fixture run's scan
//! records are replaced by hand-built ones whose every number (bounds,
//! greedy cover, scale groups, anchors, near misses, hard set under each
//! rule and after a review) is worked out by hand below.

use crate::fixture::{ok, stderr, stdout, Fixture};
use imagenet_hard::records::{read_records, RecordWriter, ScanRecord};
use imagenet_hard::scan::unit_records_path;
use std::path::Path;

/// Grid of the fixture: scales [64, 256] x 3x3 anchors, crop 64; transform
/// index in canonical order (row, column, scale).
fn t(r: usize, c: usize, s: usize) -> usize {
    (r * 3 + c) * 2 + s
}

/// Which transforms each model gets right, by image row (labels of the
/// fixture: row 0 → 3, 1 → 7, 2 → 5, 3 → 3, 4 → 9, 5 → 11, 7 → 7; row 6 is
/// a corrupt image and has no record). Wrong transforms predict class 0.
///
/// always-3: row 0 at t(0,0,64) and t(1,1,256); row 1 at t(0,0,64); row 2 at
/// t(2,2,256); row 7 at t(0,0,64) and t(1,1,256).
/// always-7: row 3 at t(0,2,256).
fn hits(model: &str, row: u64) -> Vec<usize> {
    match (model, row) {
        ("always-3", 0) | ("always-3", 7) => vec![t(0, 0, 0), t(1, 1, 1)],
        ("always-3", 1) => vec![t(0, 0, 0)],
        ("always-3", 2) => vec![t(2, 2, 1)],
        ("always-7", 3) => vec![t(0, 2, 1)],
        _ => vec![],
    }
}

fn rewrite_records(run: &Path) {
    let plan = imagenet_hard::plan::Plan::read(run).unwrap();
    assert_eq!(plan.units.len(), 1, "the fixture is one unit");
    let path = unit_records_path(run, &plan.units[0]);
    let old = read_records(&path).unwrap();
    assert_eq!(old.len(), 14, "7 images x 2 models");
    let mut w = RecordWriter::create(&path).unwrap();
    for r in old {
        let good = hits(&r.model, r.row);
        let pred: Vec<u16> = (0..18)
            .map(|i| {
                if good.contains(&i) {
                    r.labels[0] as u16
                } else {
                    0
                }
            })
            .collect();
        let correct = pred.iter().map(|&p| p as i64 == r.labels[0]).collect();
        w.push(ScanRecord { pred, correct, ..r }).unwrap();
    }
    w.finish().unwrap();
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn close(v: &serde_json::Value, want: f64) -> bool {
    (v.as_f64().unwrap() - want).abs() < 1e-12
}

#[test]
fn report_and_reselection_match_the_hand_worked_numbers() {
    let fx = Fixture::new();
    fx.fill_cache();
    let manifest = fx.write_manifest(imagenet_hard::demo::DEMO_COMMIT);
    let m = manifest.to_str().unwrap();
    ok(&fx.run(&["build", m], &[]));
    let run = fx.path().join("run");
    // Build already wrote a report for the real (trivial) records.
    assert!(run.join("report/report.md").is_file());
    rewrite_records(&run);

    let out = fx.run(&["select", m], &[]);
    ok(&out);
    // `--quiet` keeps the results (stdout) and drops the notes (stderr).
    assert!(!out.stderr.is_empty(), "select says where it wrote");
    let quiet = fx.run(&["--quiet", "select", m], &[]);
    ok(&quiet);
    assert_eq!(stdout(&quiet), stdout(&out));
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "");
    // always-3: 1-crop rows {0, 7} = 2/7, upper bound {0, 1, 2, 7} = 4/7.
    assert!(
        stdout(&out).contains("| always-3 | tiny-source | 7 | 28.57 | 57.14 (18) |"),
        "{}",
        stdout(&out)
    );
    let sel = json(&run.join("select/selection.json"));
    let hard: Vec<u64> = sel["hard"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["row"].as_u64().unwrap())
        .collect();
    assert_eq!(hard, vec![4, 5], "every model fails rows 4 and 5 only");

    let report = json(&run.join("report/report.json"));
    let row = |model: &str| {
        report["table1"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == model)
            .unwrap()
            .clone()
    };
    let a = row("always-3");
    // Greedy: t(0,0,64) solves 3 (rows 0, 1, 7), then t(2,2,256) adds row 2,
    // then nothing adds: cover size 2.
    assert!(close(&a["one_crop"], 2.0 / 7.0));
    assert!(close(&a["cover_bound"], 4.0 / 7.0));
    assert!(close(&a["upper_bound"], 4.0 / 7.0));
    assert_eq!(a["cover_size"], 2);
    assert_eq!(a["cover_picks"], serde_json::json!(["r0c0s64", "r2c2s256"]));
    let b = row("always-7");
    assert!(close(&b["upper_bound"], 1.0 / 7.0));
    assert!(close(&b["one_crop"], 0.0));
    assert_eq!(b["cover_picks"], serde_json::json!(["r0c2s256"]));
    // Random row: k guesses over 1000 classes.
    assert!(close(&report["random"][0]["upper_bound"], 18.0 / 1000.0));
    // Scale groups (crop 64): none below, 64 = crop, 256 above.
    let groups = &report["scale_groups"][0]["groups"];
    assert_eq!(report["scale_groups"][0]["model"], "always-3");
    assert_eq!(groups[0]["transforms"], 0);
    assert!(close(&groups[1]["upper_bound"], 3.0 / 7.0)); // rows 0, 1, 7
    assert!(close(&groups[1]["only"], 1.0 / 7.0)); // row 1
    assert!(close(&groups[2]["upper_bound"], 3.0 / 7.0)); // rows 0, 2, 7
    assert!(close(&groups[2]["only"], 1.0 / 7.0)); // row 2
                                                   // Anchors of always-3: top-left 3/7, centre 2/7, bottom-right 1/7.
    let bias = &report["bias"][0];
    assert_eq!(bias["model"], "always-3");
    let cell = |r: usize, c: usize| bias["anchor_bounds"][r][c].clone();
    assert!(close(&cell(0, 0), 3.0 / 7.0));
    assert!(close(&cell(1, 1), 2.0 / 7.0));
    assert!(close(&cell(2, 2), 1.0 / 7.0));
    assert!(close(&cell(0, 1), 0.0));
    assert!(close(&bias["minus_centre"][0][0], 1.0 / 7.0));
    assert_eq!(
        bias["pick_counts"],
        serde_json::json!([[1, 0, 0], [0, 0, 0], [0, 0, 1]])
    );
    // Centre share among picks: always-3 0 of 2, always-7 0 of 1.
    assert!(close(&report["centre_pick_share"], 0.0));
    // Near misses: always-3 alone solves rows 0, 1, 2, 7 with <= 3 transforms;
    // always-7 alone solves row 3.
    assert_eq!(
        report["hard"]["closest"],
        serde_json::json!([
            {"model": "always-3", "solves_hard": 0, "near_misses": 4},
            {"model": "always-7", "solves_hard": 0, "near_misses": 1}
        ])
    );
    assert_eq!(report["hard"]["total"], 2);
    // Every picture opens: one heatmap per (source, model), a contact sheet.
    for name in [
        "bias-tiny-source-always-3.png",
        "bias-tiny-source-always-7.png",
        "hard-contact-sheet.png",
    ] {
        let img = image::open(run.join("report").join(name))
            .unwrap()
            .to_rgb8();
        assert!(img.width() > 300 && img.height() > 200, "{name}");
    }
    // The heatmap's top-left cell (3/7, the maximum) is darker than its top-middle (0).
    let heat = image::open(run.join("report/bias-tiny-source-always-3.png"))
        .unwrap()
        .to_rgb8();
    // The grid sits below the (wrapped) titles: 3 cells of 150 px and a 40 px margin.
    let top = heat.height() - 40 - 3 * 150;
    let (tl, tm) = (heat.get_pixel(25, top + 5), heat.get_pixel(175, top + 5));
    assert!(tl[0] < tm[0] && tl[1] < tm[1], "{tl:?} vs {tm:?}");
    // The analysis is a value: computed again in-process it equals the JSON
    // written, names the heatmaps drawn, and writes nothing itself.
    // (The plan names its run directory as the binary saw it, relative to
    // the fixture.)
    let mut plan = imagenet_hard::plan::Plan::read(&run).unwrap();
    plan.run_dir = run.clone();
    let selection = imagenet_hard::select::Selection::read(&run).unwrap();
    std::fs::remove_dir_all(run.join("report")).unwrap();
    let analysis = imagenet_hard::report::analyse(&plan, &selection).unwrap();
    assert!(
        !run.join("report").exists(),
        "analyse wrote the report folder"
    );
    assert_eq!(serde_json::to_value(&analysis.report).unwrap(), report);
    let drawn: Vec<&str> = analysis
        .heatmaps
        .iter()
        .map(|h| analysis.report.bias[h.bias].png.as_str())
        .collect();
    assert_eq!(
        drawn,
        [
            "bias-tiny-source-always-3.png",
            "bias-tiny-source-always-7.png"
        ]
    );
    assert_eq!(analysis.heatmaps[0].picks, 2);
    imagenet_hard::report::write(&plan, &selection, &analysis).unwrap();
    assert_eq!(json(&run.join("report/report.json")), report);
    let md = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    for needle in [
        "## Table 1",
        "| always-3 | 7 | 28.57 | 57.14 | 57.14 | 2 |",
        "| random (1000 classes) | | 0.10 | 1.80 | 1.80 | |",
        "## Scale groups",
        "## Positional bias",
        "![](bias-tiny-source-always-3.png)",
        "| 42.86 (+14.29); 1 picks |",
        "## Hard set",
        "![hard images](hard-contact-sheet.png)",
    ] {
        assert!(md.contains(needle), "no `{needle}` in\n{md}");
    }

    // Other rules, from the same records, no model run.
    let hard_count = |args: &[&str]| {
        let out = fx.run(args, &[]);
        ok(&out);
        json(&run.join("select/selection.json"))["hard"]
            .as_array()
            .unwrap()
            .len()
    };
    // at-least:1 — some model fails everything: always-3 fails rows 3, 4, 5,
    // always-7 every row but 3: all 7.
    assert_eq!(hard_count(&["select", m, "--rule", "at-least:1"]), 7);
    assert_eq!(hard_count(&["select", m, "--rule", "models:always-7"]), 6);
    let report = json(&run.join("report/report.json"));
    assert!(report["rule"].as_str().unwrap().contains("always-7"));
    // Under models:always-7, always-3 solves the hard rows 0, 1, 2 and 7.
    assert_eq!(report["hard"]["closest"][0]["solves_hard"], 4);

    let out = fx.run(&["select", m, "--rule", "models:nobody"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nobody"), "{}", stderr(&out));

    // A review: row 4 is really class 0 (what every wrong transform
    // predicted), row 5 is dropped. Nothing is hard any more.
    let review = fx.path().join("review.csv");
    std::fs::write(
        &review,
        "origin,row,labels\ntiny-source,4,0\ntiny-source,5,\n",
    )
    .unwrap();
    let out = fx.run(&["select", m, "--labels", review.to_str().unwrap()], &[]);
    ok(&out);
    assert!(
        stderr(&out).contains("1 images relabelled, 1 dropped"),
        "{}",
        stderr(&out)
    );
    let sel = json(&run.join("select/selection.json"));
    assert_eq!(sel["hard"].as_array().unwrap().len(), 0);
    assert_eq!(sel["scanned"]["tiny-source"], 6);
    // A labels file with a bad line is refused with its line number.
    std::fs::write(&review, "origin,row,labels\ntiny-source,4,1200\n").unwrap();
    let out = fx.run(&["select", m, "--labels", review.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("review.csv line 2"),
        "{}",
        stderr(&out)
    );
}
