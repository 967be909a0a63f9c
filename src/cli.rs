//! Command-line arguments (clap). Parsing only: `commands` does the work.

use clap::{Args, Parser, Subcommand};

/// A count that must be at least 1 (as a manifest's `batch_size` must).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
use std::path::PathBuf;

use crate::eval::tta::{Aggregate, Tta};
use crate::models::{DeviceChoice, Kernels, Precision};

#[derive(Debug, Parser)]
#[command(
    name = "imagenet-hard",
    version,
    about = "Rebuild and curate the ImageNet-Hard benchmark: scan source images under the paper's exhaustive zoom grid, keep those every model fails, export them as Hub-layout Parquet shards.",
    after_help = "Without a manifest, pipeline commands run the built-in synthetic demo (offline).\nEnvironment: HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_HUB_OFFLINE=1, HF_ENDPOINT, RUST_LOG."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Print results only: no progress, paths or hints on stderr (errors
    /// still are).
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Args, Clone)]
pub struct ManifestArg {
    /// Build manifest (TOML). Omit it to use the built-in synthetic demo.
    pub manifest: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    /// Scan N rows of each source, spread evenly over it (the same rows on
    /// every run).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Print the plan (every source, model and file to fetch) and stop:
    /// nothing is downloaded or scanned.
    #[arg(long)]
    pub dry_run: bool,
    /// Where models run: auto, cpu, cuda (= cuda:0) or cuda:N.
    #[arg(long, default_value_t = DeviceChoice::Auto, value_name = "DEVICE")]
    pub device: DeviceChoice,
    /// Kernels: candle's, fused (the channels-last plans: on a GPU cuDNN,
    /// cuBLASLt and ours, loading libcudnn.so.9, see docs/gpu.md; on the CPU
    /// our fused kernels), or auto (per model, what was measured faster).
    #[arg(long, value_enum, default_value_t = Kernels::Auto)]
    pub kernels: Kernels,
    /// Threads that decode and zoom images ahead of the model (default:
    /// the CPUs this process may use, as its affinity mask and cgroup
    /// quota allow). Records are the same for any number.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// A unit's claim whose worker has not shown a heartbeat for this long
    /// (or whose process on this host has exited) is taken over.
    #[arg(long, value_name = "SECONDS", default_value_t = 120.0)]
    pub claim_timeout: f64,
    /// When stderr is not a terminal (a scheduler's log), print a progress
    /// line per unit this often: images done, crops/s, time left.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub progress_every: f64,
}

#[derive(Debug, Args, Clone)]
pub struct ScanArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Run only this unit of the existing plan.
    #[arg(long, value_name = "K")]
    pub unit: Option<usize>,
    /// With --num-shards: run units I, I+N, I+2N, ... of the existing plan
    /// (default: SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN).
    #[arg(long, value_name = "I")]
    pub shard_index: Option<usize>,
    /// The number of workers sharing the units (default: SLURM_ARRAY_TASK_COUNT).
    #[arg(long, value_name = "N")]
    pub num_shards: Option<usize>,
}

#[derive(Debug, Args, Clone)]
pub struct PlanArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// `imagenet-hard bench` JSON files (one per architecture, from the
    /// GPU the scan will run on): the cost table then gives GPU-hours.
    #[arg(long, value_name = "BENCH.json", num_args = 1..)]
    pub rates: Vec<PathBuf>,
    /// Run directories of earlier scans (exhaustive ones show the most)
    /// to project the first-hit and curate modes from; default: the
    /// manifest's `scan.curate_from`.
    #[arg(long, value_name = "RUN_DIR", num_args = 1..)]
    pub sample: Vec<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct SelectArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    /// Selection rule: all-fail (every model fails every transform),
    /// at-least:K (K models fail every transform), or models:A,B (these
    /// models fail every transform). Default: the manifest's.
    #[arg(long, value_name = "RULE")]
    pub rule: Option<crate::manifest::SelectionRule>,
    /// Revised labels (e.g. after a manual review): a CSV with the header
    /// `origin,row,labels`, labels as space-separated ImageNet-1k indices,
    /// empty to drop the image.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// A registry name (resnet18, resnet50), a Hub repo id whose config.json
    /// names a known architecture (e.g. timm/resnet50.tv_in1k), or a local
    /// .safetensors file (then give --arch).
    #[arg(long, short)]
    pub model: String,
    /// Architecture of a local weights file.
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// Hub revision for a repo id given to --model.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Where the model runs: auto, cpu, cuda (= cuda:0) or cuda:N.
    #[arg(long, default_value_t = DeviceChoice::Auto, value_name = "DEVICE")]
    pub device: DeviceChoice,
    /// Kernels: candle's, fused (the channels-last plans: on a GPU cuDNN,
    /// cuBLASLt and ours, loading libcudnn.so.9, see docs/gpu.md; on the CPU
    /// our fused kernels), or auto (per model, what was measured faster).
    #[arg(long, value_enum, default_value_t = Kernels::Auto)]
    pub kernels: Kernels,
    /// Number format the model computes in: bf16 (CUDA only) and f16 use a
    /// GPU's tensor cores (weights are read and BatchNorm folded in f32,
    /// then rounded); f16 on the CPU is slower than f32.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Dataset folder (e.g. output/demo/dataset) or Hub dataset id owner/name.
    #[arg(required_unless_present_any = ["merge", "compare"], requires = "model")]
    pub dataset: Option<String>,
    #[command(flatten)]
    pub model: Option<ModelArgs>,
    /// Hub revision (branch, tag or commit) of a Hub DATASET.
    #[arg(long, value_name = "REV", default_value = "main")]
    pub dataset_revision: String,
    /// Test-time augmentation (docs/protocol.md §7): the paper-grid views with scale
    /// above, below or at 224 (9 anchors each, 224 px crops), or
    /// torchvision's five / ten crops after the model's resize.
    #[arg(long, value_enum, default_value_t = Tta::None)]
    pub tta: Tta,
    /// How the views' softmax outputs are pooled: max (class of the single
    /// most confident view) or mean (argmax of the averaged softmax).
    #[arg(long, value_enum, requires = "tta", value_name = "HOW")]
    pub aggregate: Option<Aggregate>,
    /// Evaluate N rows spread evenly over the dataset.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// MEMO (--tta memo-zoom | memo-augmix): random views per image.
    #[arg(long, value_name = "B", default_value_t = 16)]
    pub views: usize,
    /// MEMO: seed of the random views (image i always gets the same views).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Score ImageNet-A, ImageNet-R and ObjectNet rows (by their origin)
    /// over their own class subset, as the zoom study does (docs/protocol.md §2); MEMO's
    /// loss then uses the subset too. Default: all 1000 classes, the
    /// ImageNet-Hard rule.
    #[arg(long)]
    pub subset_by_origin: bool,
    /// Crops per forward pass (at least 1).
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    pub batch_size: usize,
    /// Write the results (config, model, dataset revision, metrics) as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Append the leaderboard row to this CSV (header written when new).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Write one CSV row per image: id,origin,labels,prediction,correct,top5.
    #[arg(long, value_name = "FILE")]
    pub per_sample: Option<PathBuf>,
    /// Merge these eval JSON files into a leaderboard CSV on stdout, best
    /// top-1 first; nothing is evaluated.
    #[arg(
        long,
        value_name = "JSON",
        num_args = 1..,
        conflicts_with_all = ["dataset", "ModelArgs", "json", "csv", "per_sample", "tta", "aggregate", "limit", "compare"]
    )]
    pub merge: Vec<PathBuf>,
    /// Print eval JSON files side by side (top-1 % and seconds per image,
    /// overall and per origin), e.g. a baseline and two MEMO runs; nothing
    /// is evaluated.
    #[arg(
        long,
        value_name = "JSON",
        num_args = 1..,
        conflicts_with_all = ["dataset", "ModelArgs", "json", "csv", "per_sample", "tta", "aggregate", "limit"]
    )]
    pub compare: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    pub image: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Classify this zoom view (e.g. r1c1s256) instead of the model's
    /// standard resize-256 / centre-crop-224 view.
    #[arg(long, value_name = "rRcCsS")]
    pub transform: Option<String>,
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Print JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Folder of images.
    pub images: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Crops per forward pass (at least 1).
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    pub batch_size: usize,
    /// Forward passes per round in the model-only measurement.
    #[arg(long, default_value_t = 4)]
    pub batches: usize,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Threads of the feed (default: every CPU this process may use).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// What to time (comma-separated): preprocessing (one thread,
    /// normalised on the host), feed (on 1 and on --threads threads),
    /// model (forward passes alone), end-to-end (every image's crops
    /// through the feed and the model, as `scan` runs them).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "preprocessing,feed,model"
    )]
    pub measure: Vec<crate::bench::Measure>,
    /// Also compare the model's logits on the same generated crops with
    /// the CPU's (candle kernels, f32) and, on the cuDNN path, with
    /// candle's kernels on the same device: the "parity" field of the JSON.
    #[arg(long)]
    pub parity: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    /// Print JSON on stdout instead of a table: per unit its id, origin,
    /// rows, models, state and detail, and the run's projection.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ZoomArgs {
    pub image: PathBuf,
    /// Transform name r<row>c<col>s<scale>, e.g. r0c2s448.
    #[arg(long, short)]
    pub transform: String,
    /// Output PNG file.
    #[arg(long, short)]
    pub output: PathBuf,
    #[arg(long, default_value_t = 224)]
    pub crop_size: u32,
}

#[derive(Debug, Args)]
pub struct ReviewArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    /// Also review the near misses: images outside the hard set that one
    /// model alone solves, with at most 3 transforms.
    #[arg(long)]
    pub near_misses: bool,
    /// Port on 127.0.0.1 (default: any free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// The review CSV the decisions go to (default: <run dir>/review/review.csv).
    #[arg(long, value_name = "CSV")]
    pub file: Option<PathBuf>,
    /// The reviewer's name, written with each decision (default: $USER).
    #[arg(long)]
    pub reviewer: Option<String>,
    /// Merge these reviewers' CSV files into --output instead of serving:
    /// agreements are kept, disagreements become flags and are reported.
    #[arg(long, value_name = "CSV", num_args = 2.., requires = "output")]
    pub merge: Vec<PathBuf>,
    /// The merged CSV (with --merge).
    #[arg(long, short, value_name = "CSV")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DedupeArgs {
    #[command(flatten)]
    pub manifest: ManifestArg,
    /// Compare every scanned image, not only the hard set.
    #[arg(long)]
    pub all: bool,
    /// Images whose 64-bit perceptual hashes differ in at most this many
    /// bits are copies.
    #[arg(long, default_value_t = crate::dedupe::DEFAULT_MAX_DISTANCE)]
    pub max_distance: u32,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The run directory to compare (e.g. output/demo): its plan.json,
    /// scan/ and select/.
    pub run: PathBuf,
    /// The reference hard set: a Hub dataset id (e.g. taesiri/imagenet-hard),
    /// a folder holding data/validation-XXXXX-of-YYYYY.parquet, or another
    /// run directory.
    pub reference: String,
    /// Hub revision of a dataset REFERENCE (branch, tag or commit).
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Images whose 64-bit perceptual hashes differ in at most this many
    /// bits match (a re-encoded copy), when their pixels differ.
    #[arg(long, default_value_t = crate::dedupe::DEFAULT_MAX_DISTANCE)]
    pub max_distance: u32,
    /// Print compare.json on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The main job: fetch, scan, select and export in one go.
    ///
    /// Reads the manifest and its inputs (Hub cache or local files); writes
    /// the run directory (`output/<name>/` unless `build.output_dir` says
    /// otherwise): plan.json, scan/, select/, dataset/ (data/*.parquet and
    /// README.md), and the lock file beside the manifest.
    Build(RunArgs),
    /// Resolve every Hub revision, download every input, write the lock.
    ///
    /// Reads the manifest; writes files into the Hub cache and
    /// `<manifest>.lock` beside the manifest (commit, size and sha256 of each
    /// file). An existing lock is verified instead; a mismatch is an error.
    Fetch(ManifestArg),
    /// Run every model over every transform of every image, unit by unit.
    ///
    /// Reads the manifest, lock and inputs; writes scan/units/uNNNNN.parquet
    /// (one record per image and model) and then uNNNNN.stats.json. A unit
    /// with stats is done and is skipped on rerun. With --unit, --shard-index
    /// or a scheduler's index (SLURM_ARRAY_TASK_ID/COUNT, JOB_COMPLETION_INDEX)
    /// it runs only those units of the existing plan (`imagenet-hard plan`).
    Scan(ScanArgs),
    /// Fetch the inputs, count the rows and cut the scan into work units.
    ///
    /// Reads the manifest and its inputs; writes plan.json (with the units)
    /// into the run directory and the lock; prints one line per unit
    /// (id, origin, rows, models) on stdout, and on stderr the forward
    /// passes per model and, with --rates, the GPU-hours they take. With
    /// --dry-run, nothing is fetched: the plan and its cost (from the
    /// sources' `rows`) go to stdout.
    Plan(PlanArgs),
    /// Which units are done, pending or failed.
    ///
    /// Reads plan.json and scan/units/ (stats, claims, errors); writes one
    /// line per unit to stdout (done with its time and rate, running with its
    /// worker and heartbeat, pending, or failed with the error), a summary
    /// and the time left at the finished units' pace (with --json: one JSON
    /// document of the same). Exits 0 whatever the state.
    Status(StatusArgs),
    /// Select, export and report once every unit is done.
    ///
    /// Reads plan.json, scan/ and the sources; writes select/, dataset/ and
    /// report/. Refuses, naming them, while units are missing.
    Merge(ManifestArg),
    /// Compute the hard set and the 1-crop / all-transform upper bounds.
    ///
    /// Reads plan.json and scan/ (and --labels); writes select/selection.json,
    /// select/bounds.md and report/, and prints the bounds table on stdout.
    /// With --rule or --labels the hard set is recomputed from the stored
    /// predictions in seconds; no model runs.
    Select(SelectArgs),
    /// Review the hard set in a browser: keep, drop, relabel, flag.
    ///
    /// Reads plan.json, select/selection.json, scan/, select/duplicates.json
    /// (if `dedupe` ran) and the sources; serves a page on 127.0.0.1 only and
    /// writes its URL, with a random token, to stdout; writes each decision at
    /// once to the review CSV (--file), which `select --labels` reads. A
    /// restart resumes where the review stopped. With --merge, reads several
    /// review CSVs and writes one (--output), reporting conflicts on stdout.
    Review(ReviewArgs),
    /// Group near-duplicate images of the hard set (or of every scanned image).
    ///
    /// Reads plan.json, select/selection.json and the sources; writes
    /// select/duplicates.json (the groups, by perceptual hash) and a summary
    /// to stdout. Under `[selection] duplicates = "keep-first"` the next
    /// `select` keeps only the first copy of each group.
    Dedupe(DedupeArgs),
    /// How close a run's hard set is to a reference hard set.
    ///
    /// Matches images by content (equal decoded pixels, else perceptual
    /// hashes within --max-distance), never by name. Reads RUN's plan.json,
    /// scan/, select/ and sources, and REFERENCE (the released dataset, a
    /// folder of its shards, or another run); writes RUN/compare/compare.json,
    /// compare.md and disagreements.png, and prints the per-source table
    /// (matched, only in the run, only in the reference, label agreement)
    /// beside the paper's published counts.
    Compare(CompareArgs),
    /// The paper's analyses of a finished run, from the stored records.
    ///
    /// Reads plan.json, scan/, select/ and the sources (for the contact sheet);
    /// writes report/report.md, report/report.json and report/*.png: Table 1
    /// (1-, 36- and all-transform bounds, greedy cover), scale groups,
    /// positional-bias heatmaps, and a hard-set summary.
    Report(ManifestArg),
    /// Write the hard set as a Hugging Face dataset folder.
    ///
    /// Reads plan.json, select/ and the sources; writes
    /// dataset/data/validation-XXXXX-of-YYYYY.parquet and dataset/README.md.
    Export(ManifestArg),
    /// Score a model on a dataset in the ImageNet-Hard schema, or merge results.
    ///
    /// Reads DATASET: a folder holding data/validation-XXXXX-of-YYYYY.parquet
    /// and README.md, or a Hub dataset id (e.g. taesiri/imagenet-hard) read at
    /// --dataset-revision. Of several complete shard families, the one whose
    /// row count equals the card's num_examples is used. Prints top-1/top-5
    /// (any-label) overall and per origin on stdout, and writes the --json,
    /// --csv and --per-sample files. With --merge, reads eval JSON files
    /// instead and prints a leaderboard CSV (top1/top5 in percent, best first).
    Eval(EvalArgs),
    /// Top-5 classes of one model on one image file.
    ///
    /// Reads IMAGE (JPEG or PNG) and the model's weights; writes the top
    /// classes (index, name, probability) to stdout, as JSON with --json.
    Predict(PredictArgs),
    /// Throughput of preprocessing, of the model alone and of both together.
    ///
    /// Reads the images of IMAGES (a folder of .jpg/.png) and the model's
    /// weights; writes JSON on stdout: preprocessing on one thread (decode,
    /// every zoom view, normalise), the feed on 1 and on --threads threads,
    /// model-only (forward passes) and, with --measure end-to-end, the scan's path;
    /// medians over --rounds. `--model synthetic --arch A` generates weights.
    Bench(BenchArgs),
    /// List the registered models and the architectures the tool can build.
    ///
    /// Reads nothing; writes to stdout one line per registered model (name,
    /// architecture, weight source, evaluation view), then the architectures
    /// with the Hub config names they answer to; --json for machines.
    Models(ModelsArgs),
    /// Write one zoom transform of an image as a PNG: what the model sees.
    ///
    /// Reads IMAGE (JPEG or PNG); writes the 224x224 crop (before
    /// normalisation) to --output.
    Zoom(ZoomArgs),
}
