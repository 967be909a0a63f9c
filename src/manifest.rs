//! The build manifest (TOML): what to scan, with which models, over which
//! zoom grid, and how to select and export. Parsing rejects unknown keys and
//! wrong types with the file, line and key; `validate` checks meaning.

use crate::hub::{HubFiles, UrlFile};
use crate::labels::{ClassSubset, LabelConvention};
use crate::models::Architecture;
use crate::sources::Format;
use crate::zoom::{DecodeLimits, ZoomGrid, IMAGENET_MEAN, IMAGENET_STD};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("manifest {file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("manifest {file}: `{key}`: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
    #[error("manifest {file}: {count} problems:\n{list}")]
    Several {
        file: PathBuf,
        count: usize,
        /// One line per problem: its key and what to do.
        list: String,
    },
}

/// One problem of a manifest: its key and what to do about it.
pub(crate) type Problem = (String, String);

/// A name of letters, digits, '-', '_', '.' or '/'.
fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub build: BuildSection,
    #[serde(default)]
    pub zoom: ZoomSection,
    #[serde(default)]
    pub selection: SelectionSection,
    #[serde(default)]
    pub scan: ScanSection,
    #[serde(default)]
    pub decode: DecodeLimits,
    /// `[[source]]` tables.
    #[serde(rename = "source", default)]
    pub sources: Vec<SourceSpec>,
    /// `[[model]]` tables.
    #[serde(rename = "model", default)]
    pub models: Vec<ModelSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSection {
    /// Name of the build; also the dataset name in the card.
    pub name: String,
    /// Run directory, relative to the current directory. Default `output/<name>`.
    #[serde(default)]
    pub output_dir: Option<PathBuf>,
    /// Target size of one exported shard, in MB (10^6 bytes).
    #[serde(default = "default_shard_size_mb")]
    pub shard_size_mb: u64,
    /// Rows per Parquet row group in exported shards.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// Crops per forward pass.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Text placed in the card's description; says what the build is.
    #[serde(default)]
    pub description: Option<String>,
    /// Images per work unit (default: about a million forward passes).
    #[serde(default)]
    pub unit_images: Option<u64>,
    /// Models per work unit (default: all of them).
    #[serde(default)]
    pub models_per_unit: Option<usize>,
}

fn default_shard_size_mb() -> u64 {
    500
}
fn default_row_group_rows() -> usize {
    100
}
fn default_batch_size() -> usize {
    16
}

/// The zoom grid (protocol §1). Defaults are the paper's 36 scales x 3x3 anchors.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoomSection {
    #[serde(default = "paper_scales")]
    pub scales: Vec<u32>,
    #[serde(default = "default_anchors")]
    pub anchors: u8,
    #[serde(default = "default_crop_size")]
    pub crop_size: u32,
    #[serde(default)]
    pub fill: u8,
}

fn paper_scales() -> Vec<u32> {
    ZoomGrid::paper().scales
}
fn default_anchors() -> u8 {
    3
}
fn default_crop_size() -> u32 {
    224
}

impl Default for ZoomSection {
    fn default() -> Self {
        let g = ZoomGrid::paper();
        ZoomSection {
            scales: g.scales,
            anchors: g.anchors,
            crop_size: g.crop_size,
            fill: g.fill,
        }
    }
}

impl ZoomSection {
    pub fn grid(&self) -> ZoomGrid {
        ZoomGrid {
            scales: self.scales.clone(),
            anchors: self.anchors,
            crop_size: self.crop_size,
            fill: self.fill,
        }
    }
}

/// How transforms are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ScanMode {
    /// Every model under every transform: what the analyses need (default).
    #[default]
    Exhaustive,
    /// For curation: per image and model, stop at the first correct
    /// transform (tried in `analysis::first_hit_order`). Same hard set and
    /// upper bounds, far fewer forward passes; no greedy cover, scale-group
    /// or anchor analyses.
    FirstHit,
    /// For regenerating the hard set fastest: per image, (model, transform)
    /// pairs are tried in an order learned from earlier runs' records and
    /// the models' costs, and every model stops at the first hit of any.
    /// An image no model solves is still tried under every pair, so the
    /// hard set is the exhaustive scan's; only the `all-fail` rule applies.
    Curate,
}

impl ScanMode {
    pub fn name(self) -> &'static str {
        match self {
            ScanMode::Exhaustive => "exhaustive",
            ScanMode::FirstHit => "first-hit",
            ScanMode::Curate => "curate",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScanSection {
    #[serde(default)]
    pub mode: ScanMode,
    /// Number format the models compute in: `f32` (default), or `bf16`
    /// (CUDA only) / `f16` for a GPU's tensor cores. Rounding can flip a
    /// close call, so the run records it and the card states it.
    #[serde(default)]
    pub dtype: crate::models::Precision,
    /// `curate` mode: run directories of earlier scans (exhaustive ones
    /// teach the most) whose records give each (model, transform) pair's
    /// chance to solve an image; relative to the manifest. Without any, the
    /// order is the fallback: transforms in first-hit order, cheaper models
    /// first.
    #[serde(default)]
    pub curate_from: Vec<PathBuf>,
}

/// Which images are hard (protocol §3). Written as a string: `all-fail`,
/// `at-least:K` or `models:a,b`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SelectionRule {
    /// Hard iff every model fails every transform (our rule, the default).
    #[default]
    AllFail,
    /// Hard iff at least K models fail every transform.
    AtLeast(usize),
    /// Hard iff every named model fails every transform (others ignored).
    Models(Vec<String>),
}

impl std::fmt::Display for SelectionRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SelectionRule::AllFail => write!(f, "all-fail"),
            SelectionRule::AtLeast(k) => write!(f, "at-least:{k}"),
            SelectionRule::Models(m) => write!(f, "models:{}", m.join(",")),
        }
    }
}

impl std::str::FromStr for SelectionRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not a selection rule; use `all-fail`, `at-least:K` (K models fail every \
                 transform) or `models:NAME,NAME` (these models fail every transform)"
            )
        };
        match s.split_once(':') {
            None if s == "all-fail" => Ok(SelectionRule::AllFail),
            Some(("at-least", k)) => match k.parse() {
                Ok(k) if k >= 1 => Ok(SelectionRule::AtLeast(k)),
                _ => Err(bad()),
            },
            Some(("models", names)) => {
                let names: Vec<String> = names
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(String::from)
                    .collect();
                if names.is_empty() {
                    Err(bad())
                } else {
                    Ok(SelectionRule::Models(names))
                }
            }
            _ => Err(bad()),
        }
    }
}

impl SelectionRule {
    /// A plain-words statement of the rule, for the card and reports.
    pub fn describe(&self) -> String {
        match self {
            SelectionRule::AllFail => {
                "an image is hard iff every model fails it under every transform (top-1)".into()
            }
            SelectionRule::AtLeast(k) => format!(
                "an image is hard iff at least {k} of the models fail it under every transform (top-1)"
            ),
            SelectionRule::Models(m) => format!(
                "an image is hard iff each of {} fails it under every transform (top-1); other models are not consulted",
                m.join(", ")
            ),
        }
    }

    /// Check the rule against the build's models.
    pub fn check(&self, models: &[String]) -> Result<(), String> {
        match self {
            SelectionRule::AllFail => Ok(()),
            SelectionRule::AtLeast(k) if *k > models.len() => Err(format!(
                "rule `{self}` asks for {k} models but the build has {}",
                models.len()
            )),
            SelectionRule::AtLeast(_) => Ok(()),
            SelectionRule::Models(names) => match names.iter().find(|n| !models.contains(n)) {
                Some(n) => Err(format!(
                    "rule `{self}` names model `{n}`, which is not in the build ({})",
                    models.join(", ")
                )),
                None => Ok(()),
            },
        }
    }
}

impl Serialize for SelectionRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SelectionRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SelectionSection {
    #[serde(default)]
    pub rule: SelectionRule,
    /// What becomes of a group of near-duplicate images found by `dedupe`.
    #[serde(default)]
    pub duplicates: DuplicatePolicy,
}

/// What `select` does with a group of near-duplicates (`dedupe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DuplicatePolicy {
    /// Every copy stays in the hard set.
    #[default]
    KeepAll,
    /// Only the first copy in source order (the manifest's sources, then row) stays.
    KeepFirst,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Stable name written to the `origin` column, e.g. `imagenet-sketch` or
    /// `imagenet-c/fog/{severity}`.
    pub origin: String,
    /// Files on the Hub (a dataset repository); `files` may hold globs
    /// (`test/*.tar`), resolved against the pinned commit and locked.
    #[serde(default)]
    pub hub: Option<HubFiles>,
    /// Local files, or for `format = "folder"` one folder (relative paths are
    /// relative to the manifest).
    #[serde(default)]
    pub path: Vec<PathBuf>,
    /// `parquet` (default), `webdataset`, `archive` (zip/tar/tar.gz of class
    /// folders) or `folder`.
    #[serde(default)]
    pub format: Format,
    /// Parquet only: the image column (default `image`).
    #[serde(default)]
    pub image_column: Option<String>,
    /// Parquet only: the label column (default `label`).
    #[serde(default)]
    pub label_column: Option<String>,
    /// How labels are written (column, `.cls` member or class folder name).
    #[serde(default)]
    pub labels: LabelConvention,
    /// Classes predictions are restricted to; default follows `labels`
    /// (ImageNet-A/R and ObjectNet indices imply their subset).
    #[serde(default)]
    pub class_subset: Option<ClassSubset>,
    /// ImageNet-C severity 1..=5 put in for `{severity}` in `origin` and
    /// `hub.files` (default 3: the release does not say which it used).
    #[serde(default)]
    pub severity: Option<u8>,
    /// Scan `limit` rows spread evenly over the source (deterministic).
    #[serde(default)]
    pub limit: Option<u64>,
    /// The source's row count where it is known before fetching: only for
    /// `plan --dry-run`'s cost projection (`plan` counts the rows itself).
    #[serde(default)]
    pub rows: Option<u64>,
    /// Terms of use of the source dataset, copied into the card.
    #[serde(default)]
    pub terms: Option<String>,
}

/// ImageNet-C severity used when a source says `{severity}` but sets none.
pub(crate) const DEFAULT_SEVERITY: u8 = 3;

impl SourceSpec {
    pub fn image_column(&self) -> &str {
        self.image_column.as_deref().unwrap_or("image")
    }
    pub fn label_column(&self) -> &str {
        self.label_column.as_deref().unwrap_or("label")
    }
    pub fn class_subset(&self) -> ClassSubset {
        self.class_subset
            .unwrap_or_else(|| self.labels.default_subset())
    }

    /// Put the severity in for `{severity}` placeholders.
    fn expand(&mut self) -> bool {
        let uses = self.origin.contains("{severity}")
            || self
                .hub
                .as_ref()
                .is_some_and(|h| h.files.iter().any(|f| f.contains("{severity}")));
        let sev = self.severity.unwrap_or(DEFAULT_SEVERITY).to_string();
        self.origin = self.origin.replace("{severity}", &sev);
        if let Some(h) = &mut self.hub {
            for f in &mut h.files {
                *f = f.replace("{severity}", &sev);
            }
        }
        uses
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Name used in records and reports, e.g. `resnet50`.
    pub name: String,
    pub architecture: Architecture,
    /// Weights on the Hub: `files[0]` is the weights file, further files
    /// (e.g. `tokenizer.json`) are handed to the architecture.
    #[serde(default)]
    pub hub: Option<HubFiles>,
    /// Or weights at a URL (a PyTorch `.pth`), pinned by sha256.
    #[serde(default)]
    pub url: Option<UrlFile>,
    /// Or a local weights file (relative to the manifest).
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default = "imagenet_mean")]
    pub mean: [f32; 3],
    #[serde(default = "imagenet_std")]
    pub std: [f32; 3],
}

fn imagenet_mean() -> [f32; 3] {
    IMAGENET_MEAN
}
fn imagenet_std() -> [f32; 3] {
    IMAGENET_STD
}

impl Manifest {
    /// Read, parse and validate a manifest file.
    pub fn load(file: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(file).map_err(|source| ManifestError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        let manifest = Self::parse(&text, file)?;
        manifest.validate(file)?;
        Ok(manifest)
    }

    /// Parse TOML text; `file` only names the origin in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Manifest, ManifestError> {
        let mut m: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            file: file.to_path_buf(),
            message: e.to_string(),
        })?;
        for (i, s) in m.sources.iter_mut().enumerate() {
            let given = s.severity;
            if !s.expand() && given.is_some() {
                return Err(ManifestError::Invalid {
                    file: file.to_path_buf(),
                    key: format!("source[{i}].severity"),
                    message: "is used only through `{severity}` in `origin` or `hub.files`; \
                              put the placeholder there or drop the key"
                        .into(),
                });
            }
            if given.is_some_and(|v| !(1..=5).contains(&v)) {
                return Err(ManifestError::Invalid {
                    file: file.to_path_buf(),
                    key: format!("source[{i}].severity"),
                    message: "ImageNet-C severities are 1 to 5".into(),
                });
            }
        }
        Ok(m)
    }

    /// Checks that need more than types: every key that is wrong is named.
    /// Every problem of the manifest at once, each naming its key: a
    /// manifest with three mistakes takes one run to fix, not three.
    pub(crate) fn validate(&self, file: &Path) -> Result<(), ManifestError> {
        let base = file.parent().unwrap_or(Path::new("."));
        let mut problems = self.problems(base).into_iter();
        let Some((key, message)) = problems.next() else {
            return Ok(());
        };
        let rest: Vec<Problem> = problems.collect();
        if rest.is_empty() {
            return Err(ManifestError::Invalid {
                file: file.to_path_buf(),
                key,
                message,
            });
        }
        let mut all = vec![(key, message)];
        all.extend(rest);
        Err(ManifestError::Several {
            file: file.to_path_buf(),
            count: all.len(),
            list: all
                .iter()
                .map(|(k, m)| format!("  `{k}`: {m}"))
                .collect::<Vec<_>>()
                .join("\n"),
        })
    }

    /// Every problem, as (key, message), in the manifest's order; local
    /// paths are taken relative to `base`.
    pub(crate) fn problems(&self, base: &Path) -> Vec<Problem> {
        let mut out = Vec::new();
        self.build_problems(&mut out);
        self.zoom_problems(&mut out);
        self.source_problems(base, &mut out);
        self.model_problems(base, &mut out);
        out
    }

    fn build_problems(&self, out: &mut Vec<Problem>) {
        let mut bad = |key: &str, message: &str| out.push((key.into(), message.into()));
        if !name_ok(&self.build.name) || self.build.name.contains('/') {
            bad("build.name", "use letters, digits, '-', '_' or '.'");
        }
        if self.build.shard_size_mb == 0
            || self.build.row_group_rows == 0
            || self.build.batch_size == 0
            || self.build.unit_images == Some(0)
            || self.build.models_per_unit == Some(0)
        {
            bad(
                "build",
                "shard_size_mb, row_group_rows, batch_size, unit_images and models_per_unit must be at least 1",
            );
        }
        if self.scan.mode == ScanMode::Curate
            && self
                .build
                .models_per_unit
                .is_some_and(|n| n < self.models.len())
        {
            bad(
                "build.models_per_unit",
                "a curate scan stops every model at the first hit of any, so a unit must hold every model: drop models_per_unit",
            );
        }
        if self.scan.mode == ScanMode::Curate && self.selection.rule != SelectionRule::AllFail {
            bad(
                "selection.rule",
                "a curate scan only tells which images no model solves: use the rule all-fail, or scan with mode = \"exhaustive\" or \"first-hit\"",
            );
        }
        let model_names: Vec<String> = self.models.iter().map(|m| m.name.clone()).collect();
        if let Err(m) = self.selection.rule.check(&model_names) {
            out.push(("selection.rule".into(), m));
        }
    }

    fn zoom_problems(&self, out: &mut Vec<Problem>) {
        let mut bad = |key: &str, message: &str| out.push((key.into(), message.into()));
        let z = &self.zoom;
        if z.scales.is_empty() || z.scales.contains(&0) {
            bad("zoom.scales", "give at least one scale, all above 0");
        } else if z.scales.windows(2).any(|w| w[0] >= w[1]) {
            bad(
                "zoom.scales",
                "list the scales in ascending order without repeats",
            );
        }
        if z.anchors == 0 || z.crop_size == 0 {
            bad("zoom", "anchors and crop_size must be at least 1");
        }
    }

    fn source_problems(&self, base: &Path, out: &mut Vec<Problem>) {
        if self.sources.is_empty() {
            out.push(("source".into(), "add at least one [[source]] table".into()));
        }
        let mut origins = BTreeSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let mut bad =
                |k: &str, message: String| out.push((format!("source[{i}].{k}"), message));
            if !name_ok(&s.origin) {
                bad("origin", "use letters, digits, '-', '_', '.' or '/'".into());
            } else if !origins.insert(s.origin.as_str()) {
                bad("origin", format!("`{}` is used by two sources", s.origin));
            }
            if s.format != Format::Parquet && (s.image_column.is_some() || s.label_column.is_some())
            {
                bad(
                    "image_column",
                    "image_column and label_column apply to Parquet sources only; \
                     other formats take the label from the `.cls` member or the class folder"
                        .into(),
                );
            }
            if s.format == Format::Folder && (s.hub.is_some() || s.path.len() != 1) {
                bad(
                    "path",
                    "a `folder` source names exactly one local folder in `path`".into(),
                );
                continue;
            }
            match (&s.hub, s.path.is_empty()) {
                (Some(h), true) => {
                    if let Err(p) = check_hub(h, &format!("source[{i}].hub")) {
                        out.push(p);
                    }
                }
                (None, false) => {
                    let (want, is) = if s.format == Format::Folder {
                        ("folder", Path::is_dir as fn(&Path) -> bool)
                    } else {
                        ("file", Path::is_file as fn(&Path) -> bool)
                    };
                    for p in &s.path {
                        let full = base.join(p);
                        if !is(&full) {
                            bad(
                                "path",
                                format!("{} does not exist or is not a {want}", full.display()),
                            );
                        }
                    }
                }
                _ => bad("hub", "give exactly one of `hub` or `path`".into()),
            }
        }
    }

    fn model_problems(&self, base: &Path, out: &mut Vec<Problem>) {
        if self.models.is_empty() {
            out.push(("model".into(), "add at least one [[model]] table".into()));
        }
        let mut names = BTreeSet::new();
        for (i, m) in self.models.iter().enumerate() {
            let key = |k: &str| format!("model[{i}].{k}");
            let mut bad = |k: &str, message: String| out.push((key(k), message));
            if !name_ok(&m.name) || m.name.contains('/') {
                bad("name", "use letters, digits, '-', '_' or '.'".into());
            } else if !names.insert(m.name.as_str()) {
                bad("name", format!("`{}` is used by two models", m.name));
            }
            if m.std.iter().any(|&s| s <= 0.0) {
                bad("std", "every std must be above 0".into());
            }
            let checked = match (&m.hub, &m.url, &m.path) {
                (Some(h), None, None) => check_hub(h, &key("hub")),
                (None, Some(u), None) => check_url(u, &key("url")),
                (None, None, Some(p)) => {
                    let full = base.join(p);
                    if full.is_file() {
                        Ok(())
                    } else {
                        Err((key("path"), format!("{} does not exist", full.display())))
                    }
                }
                _ => Err((
                    key("hub"),
                    "give exactly one of `hub`, `url` or `path`".into(),
                )),
            };
            if let Err(p) = checked {
                out.push(p);
            }
        }
    }

    /// The run directory: `build.output_dir`, else `output/<name>`.
    pub fn run_dir(&self) -> PathBuf {
        self.build
            .output_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("output").join(&self.build.name))
    }
}

fn check_url(u: &UrlFile, key: &str) -> Result<(), (String, String)> {
    if !(u.url.starts_with("https://") || u.url.starts_with("http://")) || u.file_name().is_empty()
    {
        return Err((
            format!("{key}.url"),
            format!("`{}` is not an http(s) URL of a file", u.url),
        ));
    }
    if u.sha256.len() < 8 || u.sha256.len() > 64 || !u.sha256.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err((
            format!("{key}.sha256"),
            "give the sha256 (64 hex digits) or at least its first 8".into(),
        ));
    }
    Ok(())
}

fn check_hub(h: &HubFiles, key: &str) -> Result<(), (String, String)> {
    if !crate::hub::is_repo_id(&h.repo) {
        return Err((
            format!("{key}.repo"),
            format!("`{}` is not an `owner/name` repository id", h.repo),
        ));
    }
    if h.revision.is_empty() {
        return Err((
            format!("{key}.revision"),
            "pin a revision (a full commit sha is best)".into(),
        ));
    }
    if h.files.is_empty() {
        return Err((format!("{key}.files"), "list at least one file".into()));
    }
    for f in &h.files {
        if let Err(e) = glob::Pattern::new(f) {
            return Err((
                format!("{key}.files"),
                format!("`{f}` is not a valid pattern: {e}"),
            ));
        }
    }
    for (f, sha) in &h.sha256 {
        if !h.files.contains(f) {
            return Err((
                format!("{key}.sha256.{f}"),
                "names a file not in `files`".into(),
            ));
        }
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err((format!("{key}.sha256.{f}"), "expected 64 hex digits".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[build]
name = "t"

[[source]]
origin = "imagenet-val"
hub = { repo = "org/data", revision = "0123456789012345678901234567890123456789", files = ["a.parquet"] }

[[model]]
name = "resnet18"
architecture = "resnet18"
hub = { repo = "timm/resnet18.tv_in1k", revision = "main", files = ["model.safetensors"] }
"#;

    fn check(text: &str) -> Result<Manifest, ManifestError> {
        let m = Manifest::parse(text, Path::new("m.toml"))?;
        m.validate(Path::new("m.toml"))?;
        Ok(m)
    }

    /// Three mistakes, one run: every problem is named at once.
    #[test]
    fn every_problem_is_named_in_one_run() {
        let text = MINIMAL
            .replace("name = \"t\"", "name = \"t\"\nbatch_size = 0")
            .replace(
                "architecture = \"resnet18\"\nhub = { repo = \"timm/resnet18.tv_in1k\", revision = \"main\", files = [\"model.safetensors\"] }",
                "architecture = \"resnet18\"\nstd = [0.2, 0.0, 0.2]\npath = \"no-such-weights.safetensors\"",
            );
        let e = check(&text).unwrap_err().to_string();
        assert!(e.contains("3 problems"), "{e}");
        for key in ["`build`", "`model[0].std`", "`model[0].path`"] {
            assert!(e.contains(key), "{key} missing from:\n{e}");
        }
        assert!(
            e.contains("no-such-weights.safetensors does not exist"),
            "{e}"
        );
        // One mistake keeps the one-line form.
        let one = check(&MINIMAL.replace("name = \"t\"", "name = \"t\"\nbatch_size = 0"))
            .unwrap_err()
            .to_string();
        assert!(one.starts_with("manifest m.toml: `build`:"), "{one}");
    }

    #[test]
    fn defaults_are_the_paper_protocol() {
        let m = check(MINIMAL).unwrap();
        assert_eq!(m.zoom.grid(), ZoomGrid::paper());
        assert_eq!(m.build.shard_size_mb, 500);
        assert_eq!(m.build.row_group_rows, 100);
        assert_eq!(m.models[0].mean, IMAGENET_MEAN);
        assert_eq!(m.run_dir(), PathBuf::from("output/t"));
    }

    #[test]
    fn unknown_keys_name_the_file_and_key() {
        let err = check(&MINIMAL.replace("name = \"t\"", "name = \"t\"\nshards = 3"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("m.toml") && err.contains("shards"), "{err}");
        let err = check(&MINIMAL.replace("origin =", "orign ="))
            .unwrap_err()
            .to_string();
        assert!(err.contains("orign"), "{err}");
    }

    #[test]
    fn wrong_types_are_reported() {
        let err = check(&MINIMAL.replace("name = \"t\"", "name = \"t\"\nbatch_size = \"big\""))
            .unwrap_err();
        assert!(err.to_string().contains("batch_size"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let err = check(&MINIMAL.replace("files = [\"a.parquet\"]", "files = []"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("source[0].hub.files"), "{err}");
        let err = check(&format!("{MINIMAL}\n[zoom]\nscales = [256, 128]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("zoom.scales"), "{err}");
        let err = check(&MINIMAL.replace(
            "hub = { repo = \"org/data\"",
            "path = [\"missing.parquet\"]\nhub = { repo = \"org/data\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("source[0].hub") && err.contains("exactly one"),
            "{err}"
        );
        let err =
            check(&MINIMAL.replace("architecture = \"resnet18\"", "architecture = \"resnet7\""))
                .unwrap_err()
                .to_string();
        assert!(err.contains("resnet7"), "{err}");
    }

    #[test]
    fn every_shipped_manifest_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 2, "manifests/ holds the demo and the example");
    }

    #[test]
    fn missing_local_files_are_named() {
        let text = MINIMAL.replace(
            "hub = { repo = \"org/data\", revision = \"0123456789012345678901234567890123456789\", files = [\"a.parquet\"] }",
            "path = [\"nowhere.parquet\"]",
        );
        let err = check(&text).unwrap_err().to_string();
        assert!(
            err.contains("source[0].path") && err.contains("nowhere.parquet"),
            "{err}"
        );
    }
}
