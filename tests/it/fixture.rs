//! A temp-dir fixture (as ripgrep's `tests/util.rs::Dir`): a local Hub cache
//! with a small generated dataset and two small models whose answers are
//! known without running them, a manifest, and a way to run the binary.

use imagenet_hard::demo::{
    put_in_hub_cache, put_synthetic_model, synthetic_rows, write_source_parquet, DEMO_COMMIT,
};
use imagenet_hard::hub::RepoKind;
use imagenet_hard::models::synthetic::Head;
use imagenet_hard::models::Architecture;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const DATASET: &str = "test-org/tiny-source";
pub const PARQUET: &str = "data/validation-00000-of-00001.parquet";
/// Row 6 is a truncated JPEG (skipped as corrupt). The two models answer
/// class 3 and class 7 on every input, so rows labelled 3 or 7 are solved
/// and rows 2, 4, 5 (labels 5, 9, 11) are hard.
pub const LABELS: [i64; 8] = [3, 7, 5, 3, 9, 11, 3, 7];
pub const HARD_LABELS: [i64; 3] = [5, 9, 11];

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn cache(&self) -> PathBuf {
        self.path().join("hub-cache")
    }

    /// The dataset's Parquet bytes.
    pub fn dataset_bytes(&self) -> Vec<u8> {
        let p = self.path().join("src.parquet");
        write_source_parquet(&p, &synthetic_rows(&LABELS)).unwrap();
        std::fs::read(p).unwrap()
    }

    /// Fill the local Hub cache with the dataset and both models.
    pub fn fill_cache(&self) {
        put_in_hub_cache(
            &self.cache(),
            RepoKind::Dataset,
            DATASET,
            DEMO_COMMIT,
            &[(PARQUET, &self.dataset_bytes())],
        )
        .unwrap();
        for class in [3, 7] {
            let repo = format!("test-org/always-{class}");
            put_synthetic_model(
                &self.cache(),
                &repo,
                Architecture::find("resnet18").unwrap(),
                class as u64,
                Head::Always(class),
            )
            .unwrap();
        }
    }

    /// The cached weights of the fixture model answering `class`.
    pub fn model_weights(&self, class: usize) -> PathBuf {
        self.cache()
            .join(format!("models--test-org--always-{class}/snapshots"))
            .join(DEMO_COMMIT)
            .join("model.safetensors")
    }

    /// A manifest over the fixture repos: 2 scales (one is 256 for the
    /// 1-crop view) x 3x3 anchors, 64 px crops to keep CPU time small.
    pub fn write_manifest(&self, revision: &str) -> PathBuf {
        let text = format!(
            r#"
[build]
name = "fixture"
output_dir = "run"
shard_size_mb = 1
batch_size = 8

[zoom]
scales = [64, 256]
crop_size = 64

[[source]]
origin = "tiny-source"
hub = {{ repo = "{DATASET}", revision = "{revision}", files = ["{PARQUET}"] }}
terms = "test fixture terms"

[[model]]
name = "always-3"
architecture = "resnet18"
hub = {{ repo = "test-org/always-3", revision = "{revision}", files = ["model.safetensors"] }}

[[model]]
name = "always-7"
architecture = "resnet18"
hub = {{ repo = "test-org/always-7", revision = "{revision}", files = ["model.safetensors"] }}
"#
        );
        let path = self.path().join("fixture.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Run the binary in the fixture dir with a clean Hub environment.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(args, env).output().unwrap()
    }

    /// The command `run` runs, to spawn (and kill) it yourself.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagenet-hard"));
        cmd.args(args).current_dir(self.path());
        for k in [
            "HF_HOME",
            "HF_HUB_CACHE",
            "HUGGINGFACE_HUB_CACHE",
            "HF_TOKEN",
            "HF_HUB_OFFLINE",
            "HF_ENDPOINT",
            "RUST_LOG",
            "SLURM_ARRAY_TASK_ID",
            "SLURM_ARRAY_TASK_COUNT",
            "SLURM_ARRAY_TASK_MIN",
            "JOB_COMPLETION_INDEX",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("HF_HUB_CACHE", self.cache())
            .env("HOME", self.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Assert success, showing stderr otherwise.
pub fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}
