//! Work units: a scan fanned out unit by unit (flags, Slurm and Kubernetes
//! indices from the environment), killed with SIGKILL at any moment and
//! rerun, must end in the same bytes as one uninterrupted process.

use crate::fixture::{ok, stderr, stdout, Fixture};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The fixture manifest cut into one-image, one-model units (8 rows x 2
/// models = 16 units).
pub fn unit_manifest(fx: &Fixture) -> PathBuf {
    fx.fill_cache();
    let path = fx.write_manifest(imagenet_hard::demo::DEMO_COMMIT);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "batch_size = 8",
            "batch_size = 8\nunit_images = 1\nmodels_per_unit = 1",
        ),
    )
    .unwrap();
    path
}

/// Every file under `dir/dataset`, by relative path.
pub fn dataset_files(run: &Path) -> BTreeMap<String, Vec<u8>> {
    let root = run.join("dataset");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(&root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The dataset of one uninterrupted single-process build of the fixture,
/// built once for every test that compares against it.
pub fn reference_dataset() -> BTreeMap<String, Vec<u8>> {
    static REFERENCE: std::sync::OnceLock<BTreeMap<String, Vec<u8>>> = std::sync::OnceLock::new();
    REFERENCE.get_or_init(build_reference_dataset).clone()
}

fn build_reference_dataset() -> BTreeMap<String, Vec<u8>> {
    let fx = Fixture::new();
    fx.fill_cache();
    let m = fx.write_manifest(imagenet_hard::demo::DEMO_COMMIT);
    ok(&fx.run(&["build", m.to_str().unwrap(), "--device", "cpu"], &[]));
    let files = dataset_files(&fx.path().join("run"));
    assert!(files.keys().any(|k| k.ends_with(".parquet")) && files.contains_key("README.md"));
    files
}

#[test]
fn units_fan_out_over_workers_and_merge_to_the_same_bytes() {
    let reference = reference_dataset();
    let fx = Fixture::new();
    let manifest = unit_manifest(&fx);
    let m = manifest.to_str().unwrap();
    let out = fx.run(&["plan", m], &[]);
    ok(&out);
    let units: Vec<String> = stdout(&out).lines().skip(1).map(String::from).collect();
    assert_eq!(units.len(), 16, "{}", stdout(&out));
    assert!(
        units[0].starts_with("u00000\ttiny-source\t0..1\t1\talways-3"),
        "{}",
        units[0]
    );
    assert!(
        units[15].starts_with("u00015\ttiny-source\t7..8\t1\talways-7"),
        "{}",
        units[15]
    );

    // Nothing is merged while units are missing; the refusal names them.
    let out = fx.run(&["merge", m], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("16 scan unit(s) are not done") && stderr(&out).contains("u00000"),
        "{}",
        stderr(&out)
    );

    let cpu = ["--device", "cpu"];
    let scan = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["scan", m];
        args.extend_from_slice(extra);
        args.extend_from_slice(&cpu);
        let out = fx.run(&args, env);
        ok(&out);
        out
    };
    // A unit whose input broke fails visibly; the failure is recorded, and a
    // rerun after the fix completes it.
    let snapshot = fx
        .cache()
        .join("datasets--test-org--tiny-source/snapshots")
        .join(imagenet_hard::demo::DEMO_COMMIT)
        .join(crate::fixture::PARQUET);
    let blob = std::fs::canonicalize(&snapshot).unwrap();
    let good = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, b"not parquet any more").unwrap();
    let out = fx.run(&["scan", m, "--unit", "0", "--device", "cpu"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let status = stdout(&fx.run(&["status", m], &[]));
    assert!(
        status.contains("u00000\ttiny-source\t0..1\talways-3\tfailed: ")
            && status.contains("not a readable Parquet file")
            && status.contains("16 units: 0 done, 0 running, 15 pending, 1 failed"),
        "{status}"
    );
    std::fs::write(&blob, good).unwrap();
    scan(&["--unit", "0"], &[]);
    // Four Slurm array tasks of a 4-task array starting at 10: units i, i+4, ...
    let out = scan(
        &[],
        &[
            ("SLURM_ARRAY_TASK_ID", "11"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "10"),
        ],
    );
    assert!(stderr(&out).contains("4 of 16 unit(s)"), "{}", stderr(&out));
    scan(&["--shard-index", "2", "--num-shards", "4"], &[]);
    let status = fx.run(&["status", m], &[]);
    ok(&status);
    let text = stdout(&status);
    // Done: 0, then 1 5 9 13 (shard 1), then 2 6 10 14 (shard 2).
    assert!(
        text.contains("16 units: 9 done, 0 running, 7 pending, 0 failed"),
        "{text}"
    );
    assert!(
        text.contains("u00005\ttiny-source\t2..3\talways-7\tdone"),
        "{text}"
    );
    assert!(
        text.contains("u00003\ttiny-source\t1..2\talways-7\tpending"),
        "{text}"
    );
    // `--json`: the same states as one document.
    let json = fx.run(&["status", m, "--json"], &[]);
    ok(&json);
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    let units = v["units"].as_array().unwrap();
    assert_eq!(units.len(), 16);
    let states = |s: &str| units.iter().filter(|u| u["state"] == s).count();
    assert_eq!((states("done"), states("pending")), (9, 7));
    assert_eq!(units[5]["unit"], "u00005");
    assert_eq!(
        (units[5]["first"].as_u64(), units[5]["end"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(units[5]["models"], serde_json::json!(["always-7"]));
    assert!(units[5]["detail"].as_str().unwrap().starts_with("done"));
    assert_eq!(v["progress"]["units_done"], 9);
    // A Kubernetes Indexed Job pod runs the unit of its index.
    scan(&[], &[("JOB_COMPLETION_INDEX", "3")]);
    scan(&["--shard-index", "0", "--num-shards", "2"], &[]);
    scan(&["--shard-index", "1", "--num-shards", "2"], &[]);
    let out = fx.run(&["scan", m, "--unit", "16"], &[]);
    assert!(!out.status.success() && stderr(&out).contains("unit 16 does not exist"));
    ok(&fx.run(&["merge", m], &[]));
    assert_eq!(
        dataset_files(&fx.path().join("run")),
        reference,
        "a fanned-out scan must export the same bytes"
    );
}

#[test]
fn kill_9_at_any_moment_then_rerun_gives_identical_shards() {
    let reference = reference_dataset();
    let fx = Fixture::new();
    let manifest = unit_manifest(&fx);
    let m = manifest.to_str().unwrap();
    let run = fx.path().join("run");
    // Kill a build at points spread over its whole length (scans, unit
    // renames, the merge), each time on a fresh run directory, and rerun.
    let done = |run: &Path| {
        std::fs::read_dir(run.join("scan/units"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".stats.json"))
                    .count()
            })
            .unwrap_or(0)
    };
    // Kill points by progress, not by clock (the machine's speed varies):
    // as soon as the first claim appears, after some units, during the merge.
    type Stage = (&'static str, fn(&Path, usize) -> bool);
    let stages: [Stage; 8] = [
        ("first claim", |run, _| {
            std::fs::read_dir(run.join("scan/units")).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".claim"))
            })
        }),
        ("1 unit", |_, done| done >= 1),
        ("3 units", |_, done| done >= 3),
        ("6 units", |_, done| done >= 6),
        ("9 units", |_, done| done >= 9),
        ("12 units", |_, done| done >= 12),
        ("15 units", |_, done| done >= 15),
        ("selecting", |run, _| run.join("select").exists()),
    ];
    let mut landed = Vec::new();
    for (stage, reached) in stages {
        let _ = std::fs::remove_dir_all(&run);
        let mut child = fx
            .command(&["build", m, "--device", "cpu"], &[])
            .spawn()
            .unwrap();
        let killed = loop {
            if child.try_wait().unwrap().is_some() {
                break false; // finished before the stage was seen
            }
            if reached(&run, done(&run)) {
                let _ = child.kill(); // SIGKILL
                break true;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        use std::os::unix::process::ExitStatusExt;
        // Killed while it ran (not after it had finished on its own).
        if killed && child.wait().unwrap().signal() == Some(9) {
            landed.push((stage, done(&run)));
        }
        // Whatever the kill cut, the rerun ends in the reference bytes.
        ok(&fx.run(&["build", m, "--device", "cpu"], &[]));
        assert_eq!(dataset_files(&run), reference, "after a kill at {stage}");
    }
    eprintln!("kills that landed (stage, units done): {landed:?}");
    assert!(landed.len() >= 6, "most kills land mid-run: {landed:?}");
    assert!(
        landed.iter().any(|&(_, d)| d > 0 && d < 16),
        "some kill fell between units: {landed:?}"
    );
    // A kill between writing the card's temporary and renaming it (a moment
    // too short to hit on purpose): the rerun clears the leftover.
    std::fs::write(run.join("dataset/.README.md.host-1-1.0.tmp"), "half a card").unwrap();
    let out = fx.run(&["build", m, "--device", "cpu"], &[]);
    ok(&out);
    assert_eq!(dataset_files(&run), reference);
    // Nothing doubled, nothing lost: one record per (image, model).
    let mut plan = imagenet_hard::plan::Plan::read(&run).unwrap();
    plan.run_dir = run.clone();
    let recs = imagenet_hard::scan::read_source_records(&plan, "tiny-source").unwrap();
    let mut seen: Vec<(u64, String)> = recs.iter().map(|r| (r.row, r.model.clone())).collect();
    seen.sort();
    let n = seen.len();
    seen.dedup();
    assert_eq!(
        (n, seen.len()),
        (14, 14),
        "7 images x 2 models, no duplicates"
    );
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(run.join("scan/units"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The shipped Slurm scripts on a real (single-node) Slurm: the fixture
/// build as a 4-task job array plus the dependent merge job must export the
/// single-process bytes. Needs a running Slurm (`scripts/slurm/local-cluster.sh
/// start`, as `.ci/run` does); run with `cargo test -- --ignored slurm`.
#[test]
#[ignore = "needs a running Slurm: scripts/slurm/local-cluster.sh start"]
fn slurm_job_array_and_merge_match_the_single_process_run() {
    let sinfo = std::process::Command::new("sinfo")
        .args(["-h", "-o", "%T"])
        .output()
        .expect("sinfo not found: start Slurm with scripts/slurm/local-cluster.sh start");
    assert!(
        sinfo.status.success() && !sinfo.stdout.is_empty(),
        "Slurm is not answering: {}",
        String::from_utf8_lossy(&sinfo.stderr)
    );
    let reference = reference_dataset();
    let fx = Fixture::new();
    let manifest = unit_manifest(&fx);
    let submit = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm/submit.sh");
    // The same clean Hub environment as the other tests, plus the binary.
    let env_cmd = fx.command(&[], &[("DEVICE", "cpu")]);
    let bin = env_cmd.get_program().to_owned();
    let mut cmd = std::process::Command::new(&submit);
    for (k, v) in env_cmd.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    // Two workers per task, as on a node with two GPUs (here on the CPU).
    let out = cmd
        .env("IMAGENET_HARD", &bin)
        .env("WORKERS_PER_TASK", "2")
        .env("SBATCH_ARGS", "--cpus-per-task=2")
        .args([manifest.to_str().unwrap(), "4", "--wait"])
        .current_dir(fx.path())
        .output()
        .unwrap();
    let logs: String = std::fs::read_dir(fx.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| {
            format!(
                "== {}\n{}",
                e.file_name().to_string_lossy(),
                std::fs::read_to_string(e.path()).unwrap_or_default()
            )
        })
        .collect();
    assert!(
        out.status.success(),
        "submit.sh failed: {}\n{}\n{logs}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        logs.matches("imagenet-hard-scan-").count() >= 4,
        "expected 4 array task logs:\n{logs}"
    );
    assert!(
        logs.contains("[worker 1] Scanning on cpu (f32, 1 preprocessing threads)"),
        "expected the second worker's lines:\n{logs}"
    );
    let status = fx.run(&["status", manifest.to_str().unwrap()], &[]);
    assert!(
        stdout(&status).contains("16 units: 16 done"),
        "{}",
        stdout(&status)
    );
    assert_eq!(dataset_files(&fx.path().join("run")), reference);
}

/// First-hit mode: each model stops at its first correct transform. The
/// hard set and the shards equal the exhaustive scan's; the fixture's
/// "always 3" and "always 7" models each solve two of the seven images at
/// the first try, so 2 x (2 x 1 + 5 x 18) = 184 forward passes instead of
/// 2 x 7 x 18 = 252.
#[test]
fn first_hit_finds_the_same_hard_set_with_fewer_forward_passes() {
    let reference = reference_dataset();
    let fx = Fixture::new();
    fx.fill_cache();
    let manifest = fx.write_manifest(imagenet_hard::demo::DEMO_COMMIT);
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{text}\n[scan]\nmode = \"first-hit\"\n")).unwrap();
    let m = manifest.to_str().unwrap();
    ok(&fx.run(&["build", m, "--device", "cpu"], &[]));
    let run = fx.path().join("run");
    let data = |files: &BTreeMap<String, Vec<u8>>| -> BTreeMap<String, Vec<u8>> {
        files
            .iter()
            .filter(|(k, _)| k.ends_with(".parquet"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(
        data(&dataset_files(&run)),
        data(&reference),
        "same hard images, same shards"
    );
    let mut plan = imagenet_hard::plan::Plan::read(&run).unwrap();
    plan.run_dir = run.clone();
    // Recorded tries: exactly the hand count, whatever the batching. The
    // forward passes can be a few more (a batch may hold tries past a hit,
    // which are dropped), never near exhaustive.
    let recs = imagenet_hard::scan::read_source_records(&plan, "tiny-source").unwrap();
    let tried: usize = recs
        .iter()
        .map(|r| {
            r.pred
                .iter()
                .filter(|&&p| p != imagenet_hard::scan::NOT_TRIED)
                .count()
        })
        .sum();
    assert_eq!(tried, 184);
    let stats = imagenet_hard::scan::read_stats(&plan).unwrap();
    assert!(
        (184..200).contains(&stats[0].forward_passes),
        "{} forward passes",
        stats[0].forward_passes
    );
    // Untried transforms are marked, and never counted correct.
    let r0 = recs
        .iter()
        .find(|r| r.row == 0 && r.model == "always-3")
        .unwrap();
    assert_eq!(
        r0.pred
            .iter()
            .filter(|&&p| p != imagenet_hard::scan::NOT_TRIED)
            .count(),
        1
    );
    let report = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    assert!(report.contains("First-hit scan"), "{report}");
    let card = std::fs::read_to_string(run.join("dataset/README.md")).unwrap();
    assert!(card.contains("first-hit scan"), "{card}");
    // Revised labels would need the transforms it did not try.
    let review = fx.path().join("review.csv");
    std::fs::write(&review, "origin,row,labels\ntiny-source,4,0\n").unwrap();
    let out = fx.run(&["select", m, "--labels", review.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("exhaustive scan"), "{}", stderr(&out));
}

/// `scan.dtype = "f16"`: the fixture's models keep their answers in half
/// precision, so the shards equal the f32 build's; the plan, the report and
/// the card record the precision, a run of another precision is not mixed
/// into it, and bf16 on the CPU is refused naming the manifest key.
#[test]
fn scan_dtype_is_recorded_and_never_mixed() {
    let reference = reference_dataset();
    let fx = Fixture::new();
    fx.fill_cache();
    let manifest = fx.write_manifest(imagenet_hard::demo::DEMO_COMMIT);
    let text = std::fs::read_to_string(&manifest).unwrap();
    let with_dtype = |dtype: &str| {
        std::fs::write(&manifest, format!("{text}\n[scan]\ndtype = \"{dtype}\"\n")).unwrap()
    };
    let m = manifest.to_str().unwrap();
    with_dtype("f16");
    ok(&fx.run(&["build", m, "--device", "cpu"], &[]));
    let run = fx.path().join("run");
    let shards = |files: BTreeMap<String, Vec<u8>>| -> Vec<Vec<u8>> {
        files
            .into_iter()
            .filter(|(k, _)| k.ends_with(".parquet"))
            .map(|(_, v)| v)
            .collect()
    };
    assert_eq!(shards(dataset_files(&run)), shards(reference));
    let plan = imagenet_hard::plan::Plan::read(&run).unwrap();
    assert_eq!(plan.scan_dtype, imagenet_hard::models::Precision::F16);
    let report = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    assert!(report.contains("Models computed in **f16**"), "{report}");
    let card = std::fs::read_to_string(run.join("dataset/README.md")).unwrap();
    assert!(card.contains("(models computed in f16)"), "{card}");

    with_dtype("f32");
    let out = fx.run(&["scan", m, "--device", "cpu"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("holds a run of a different plan"),
        "{}",
        stderr(&out)
    );

    std::fs::remove_dir_all(&run).unwrap();
    with_dtype("bf16");
    let out = fx.run(&["scan", m, "--device", "cpu"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("scan.dtype = \"bf16\"") && stderr(&out).contains("CUDA only"),
        "{}",
        stderr(&out)
    );
}

/// `scripts/slurm/build.sbatch` as an array task runs it, without Slurm:
/// two tasks of two workers each (as on nodes with two GPUs; here on the
/// CPU) share the units, and the merged shards are the single process's.
#[test]
fn an_array_task_runs_one_worker_per_gpu() {
    let reference = reference_dataset();
    let fx = Fixture::new();
    let manifest = unit_manifest(&fx);
    let m = manifest.to_str().unwrap();
    ok(&fx.run(&["plan", m], &[]));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm/build.sbatch");
    let bin = env!("CARGO_BIN_EXE_imagenet-hard");
    let mut logs = String::new();
    for task in ["0", "1"] {
        let cmd = fx.command(&[], &[]);
        let out = std::process::Command::new("bash")
            .arg(&script)
            .envs(
                cmd.get_envs()
                    .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
            )
            .env_remove("HF_TOKEN")
            .env("MANIFEST", m)
            .env("IMAGENET_HARD", bin)
            .env("DEVICE", "cpu")
            .env("WORKERS_PER_TASK", "2")
            .env("SLURM_CPUS_PER_TASK", "4")
            .env("SLURM_ARRAY_TASK_ID", task)
            .env("SLURM_ARRAY_TASK_MIN", "0")
            .env("SLURM_ARRAY_TASK_COUNT", "2")
            .current_dir(cmd.get_current_dir().unwrap())
            .output()
            .unwrap();
        ok(&out);
        logs.push_str(&stderr(&out));
    }
    assert!(
        logs.contains("task 0 of 2: 2 worker(s), 2 preprocessing thread(s) each"),
        "{logs}"
    );
    for worker in 0..2 {
        assert!(
            logs.contains(&format!(
                "[worker {worker}] Scanning on cpu (f32, 2 preprocessing threads): 4 of 16 unit(s)"
            )),
            "{logs}"
        );
    }
    let status = stdout(&fx.run(&["status", m], &[]));
    assert!(status.contains("16 units: 16 done"), "{status}");
    ok(&fx.run(&["merge", m], &[]));
    assert_eq!(dataset_files(&fx.path().join("run")), reference);
}

/// Several workers race over the same units, round after round, with
/// SIGKILL mixed in: no worker exits with an error, no unit is scanned by
/// two workers at once, and the merged shards are the single process's.
#[test]
fn racing_workers_never_corrupt_or_double_a_unit() {
    let reference = reference_dataset();
    let fx = Fixture::new();
    let manifest = unit_manifest(&fx);
    let m = manifest.to_str().unwrap();
    ok(&fx.run(&["plan", m], &[]));
    let units_dir = fx.path().join("run/scan/units");
    let (rounds, workers) = (6, 4);
    let (mut scans, mut doubled, mut kills, mut errors, mut left) = (0, 0, 0, 0, 0);
    for round in 0..rounds {
        let _ = std::fs::remove_dir_all(&units_dir);
        let mut children: Vec<_> = (0..workers)
            .map(|_| {
                fx.command(
                    &[
                        "scan",
                        m,
                        "--device",
                        "cpu",
                        "--shard-index",
                        "0",
                        "--num-shards",
                        "1",
                        "--threads",
                        "1",
                    ],
                    &[],
                )
                .spawn()
                .unwrap()
            })
            .collect();
        // Every other round, one worker is killed part-way: once a few
        // units are done (by progress, not by clock), if it still runs.
        let killed = (round % 2 == 1)
            .then(|| loop {
                if children[0].try_wait().unwrap().is_some() {
                    break None;
                }
                let done = std::fs::read_dir(&units_dir).map_or(0, |d| {
                    d.flatten()
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".stats.json"))
                        .count()
                });
                if done > round {
                    let _ = children[0].kill();
                    kills += 1;
                    break Some(0);
                }
                std::thread::sleep(Duration::from_millis(2));
            })
            .flatten();
        let mut scanned_now: BTreeMap<String, usize> = BTreeMap::new();
        for (i, child) in children.into_iter().enumerate() {
            let out = child.wait_with_output().unwrap();
            if Some(i) == killed {
                use std::os::unix::process::ExitStatusExt;
                // The kill landed while the worker was still running.
                assert_eq!(
                    out.status.signal(),
                    Some(9),
                    "round {round}: {}",
                    stderr(&out)
                );
                continue;
            }
            if !out.status.success() {
                errors += 1;
                eprintln!("{}", stderr(&out));
            }
            left += stderr(&out).matches("; left to it").count();
            for line in stderr(&out).lines() {
                // "  u00003 tiny-source: 1 images scanned, ..."
                if let Some(rest) = line.trim_start().strip_prefix('u') {
                    if line.contains("images scanned") {
                        *scanned_now.entry(format!("u{}", &rest[..5])).or_default() += 1;
                    }
                }
            }
        }
        scans += scanned_now.values().sum::<usize>();
        doubled += scanned_now.values().filter(|&&n| n > 1).count();
        // Whatever a killed worker left, one more worker completes the run.
        let out = fx.run(
            &[
                "scan",
                m,
                "--device",
                "cpu",
                "--shard-index",
                "0",
                "--num-shards",
                "1",
            ],
            &[],
        );
        ok(&out);
        let status = stdout(&fx.run(&["status", m], &[]));
        assert!(
            status.contains("16 units: 16 done"),
            "round {round}: {status}"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&units_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp") || n.ends_with(".claim") || n.contains("stale"))
            .collect();
        assert!(leftovers.is_empty(), "round {round}: {leftovers:?}");
        ok(&fx.run(&["merge", m], &[]));
        assert_eq!(
            dataset_files(&fx.path().join("run")),
            reference,
            "round {round}"
        );
    }
    eprintln!(
        "race: {rounds} rounds x {workers} workers, {kills} killed, {scans} unit scans by surviving workers, {left} units left to a live claim's holder, {doubled} units scanned twice in a round, {errors} error exits"
    );
    assert_eq!((doubled, errors), (0, 0));
    assert!(left > 0, "workers met each other's claims");
    assert!(kills >= 2, "kills landed mid-run in {kills} rounds");
    assert!(scans >= 16 * (rounds - kills), "{scans} scans");
}

/// A disk that fills up (a 2 KB file-size limit stands in for it) fails
/// the unit cleanly: an error naming the file, no unit marked done, no
/// partial records; with room again the rerun gives the reference bytes.
#[test]
fn a_full_disk_fails_the_unit_and_marks_nothing_done() {
    let reference = reference_dataset();
    let fx = Fixture::new();
    fx.fill_cache();
    let m = fx.write_manifest(imagenet_hard::demo::DEMO_COMMIT);
    let m = m.to_str().unwrap();
    ok(&fx.run(&["plan", m], &[]));
    let bin = env!("CARGO_BIN_EXE_imagenet-hard");
    let cmd = fx.command(&[], &[]);
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -f 2; exec '{bin}' scan '{m}' --device cpu --shard-index 0 --num-shards 1"
        ))
        .envs(
            cmd.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .current_dir(fx.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("u00000.parquet") && stderr(&out).contains("too large"),
        "{}",
        stderr(&out)
    );
    let units = fx.path().join("run/scan/units");
    let names: Vec<String> = std::fs::read_dir(&units)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".stats.json") || n.ends_with(".parquet") || n.ends_with(".tmp")),
        "nothing done, nothing partial: {names:?}"
    );
    let status = stdout(&fx.run(&["status", m], &[]));
    assert!(
        status.contains("failed: scan records") && status.contains("0 done"),
        "{status}"
    );
    ok(&fx.run(&["build", m, "--device", "cpu"], &[]));
    assert_eq!(dataset_files(&fx.path().join("run")), reference);
}
