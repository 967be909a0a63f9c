//! The resolved plan: manifest + fetched paths, validated once, logged and
//! written into the run directory. Every later stage reads only the plan.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::fetch::Fetched;
use crate::labels::{ClassSubset, LabelConvention};
use crate::manifest::{Manifest, ScanMode, SelectionRule};
use crate::models::Architecture;
use crate::sources::{sample_rows, Container, Format, Source, SourceError, Wanted};
use crate::units::{images_per_unit, split, Unit};
use crate::zoom::{DecodeLimits, ZoomGrid};

/// Forward passes a unit is sized to when the manifest does not say: about
/// a quarter of an hour on one GPU for the study's six models.
pub(crate) const UNIT_CROPS: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PlanError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(
        "{} holds a run of a different plan (inputs, grid, models or limits changed since); \
         its scan records would not match. Set another build.output_dir in the manifest or delete {}",
        run_dir.display(), run_dir.display()
    )]
    Different { run_dir: PathBuf },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub name: String,
    pub description: Option<String>,
    pub tool_version: String,
    pub run_dir: PathBuf,
    /// sha256 of the lock: names the exact inputs.
    pub lock_hash: String,
    pub grid: ZoomGrid,
    pub decode: DecodeLimits,
    pub selection: SelectionRule,
    /// `[selection] duplicates`.
    #[serde(default)]
    pub duplicates: crate::manifest::DuplicatePolicy,
    #[serde(default)]
    pub scan_mode: ScanMode,
    /// A curate scan's pair order (learned when the plan was made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curate: Option<crate::pair_order::CurateOrder>,
    /// `scan.dtype`: the number format the models computed in.
    #[serde(default)]
    pub scan_dtype: crate::models::Precision,
    pub shard_size_bytes: u64,
    pub row_group_rows: usize,
    pub batch_size: usize,
    /// `build.unit_images` / `build.models_per_unit` as the manifest set them.
    #[serde(default)]
    pub unit_images: Option<u64>,
    #[serde(default)]
    pub models_per_unit: Option<usize>,
    pub sources: Vec<PlannedSource>,
    pub models: Vec<PlannedModel>,
    /// The scan cut into work units (filled by [`Plan::with_units`]).
    #[serde(default)]
    pub units: Vec<Unit>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlannedSource {
    pub origin: String,
    /// `owner/name@commit` for Hub sources, else the local paths.
    pub provenance: String,
    pub files: Vec<PathBuf>,
    pub format: Format,
    pub image_column: String,
    pub label_column: String,
    pub labels: LabelConvention,
    pub class_subset: ClassSubset,
    pub limit: Option<u64>,
    pub terms: Option<String>,
    /// Rows in the source before `limit` (counted when units are planned).
    #[serde(default)]
    pub total_rows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlannedModel {
    pub name: String,
    pub architecture: Architecture,
    pub provenance: String,
    pub weights: PathBuf,
    /// Further files of the model's repo (e.g. `tokenizer.json`) by name.
    pub extra_files: std::collections::BTreeMap<String, PathBuf>,
    pub cache_dir: PathBuf,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl PlannedModel {
    pub fn extras(&self) -> crate::models::Extras {
        crate::models::Extras {
            files: self.extra_files.clone(),
            cache_dir: Some(self.cache_dir.clone()),
        }
    }
}

impl PlannedSource {
    /// The rows `limit` selects, from the counted total.
    pub fn wanted(&self) -> Wanted {
        match self.limit {
            None => Wanted::All,
            Some(n) => sample_rows(self.total_rows, n),
        }
    }

    /// How many rows the scan takes from this source.
    pub(crate) fn selected_count(&self) -> u64 {
        match self.wanted() {
            Wanted::All => self.total_rows,
            Wanted::Rows(r) => r.len() as u64,
        }
    }

    /// The row numbers of positions `[first, end)` of the selected rows.
    pub(crate) fn unit_rows(&self, first: u64, end: u64) -> std::collections::BTreeSet<u64> {
        match self.wanted() {
            Wanted::All => (first..end.min(self.total_rows)).collect(),
            Wanted::Rows(r) => r
                .into_iter()
                .skip(first as usize)
                .take(end.saturating_sub(first) as usize)
                .collect(),
        }
    }

    /// A streaming reader over this source's rows.
    pub fn reader(&self) -> Source {
        let files = self.files.clone();
        let container = match self.format {
            Format::Parquet => Container::Parquet {
                files,
                image_column: self.image_column.clone(),
                label_column: self.label_column.clone(),
                origin_column: None,
            },
            Format::Webdataset => Container::Webdataset { files },
            Format::Archive => Container::Archive { files },
            Format::Folder => Container::Folder {
                root: files.into_iter().next().unwrap_or_default(),
            },
        };
        Source {
            container,
            labels: self.labels,
            limit: self.limit,
        }
    }
}

impl Plan {
    pub fn new(manifest: &Manifest, fetched: &Fetched, limit: Option<u64>) -> Plan {
        let commit_of = |repo: &str| {
            fetched
                .lock
                .repos
                .iter()
                .find(|r| r.id == repo)
                .map(|r| r.commit.clone())
                .unwrap_or_default()
        };
        let sources = manifest
            .sources
            .iter()
            .zip(&fetched.source_files)
            .map(|(s, files)| PlannedSource {
                origin: s.origin.clone(),
                provenance: match &s.hub {
                    Some(h) => format!("{}@{}", h.repo, commit_of(&h.repo)),
                    None => s
                        .path
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                },
                files: files.clone(),
                format: s.format,
                image_column: s.image_column().to_string(),
                label_column: s.label_column().to_string(),
                labels: s.labels,
                class_subset: s.class_subset(),
                limit: match (s.limit, limit) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                terms: s.terms.clone(),
                total_rows: 0,
            })
            .collect();
        let models = manifest
            .models
            .iter()
            .zip(&fetched.model_files)
            .map(|(m, files)| PlannedModel {
                name: m.name.clone(),
                architecture: m.architecture,
                provenance: match &m.hub {
                    Some(h) => format!("{}@{}", h.repo, commit_of(&h.repo)),
                    None => files[0].display().to_string(),
                },
                weights: files[0].clone(),
                extra_files: files[1..]
                    .iter()
                    .map(|p| {
                        (
                            p.file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_default(),
                            p.clone(),
                        )
                    })
                    .collect(),
                cache_dir: fetched.tool_cache.clone(),
                mean: m.mean,
                std: m.std,
            })
            .collect();
        Plan {
            name: manifest.build.name.clone(),
            description: manifest.build.description.clone(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            run_dir: manifest.run_dir(),
            lock_hash: fetched.lock.hash(),
            grid: manifest.zoom.grid(),
            decode: manifest.decode,
            selection: manifest.selection.rule.clone(),
            duplicates: manifest.selection.duplicates,
            curate: None,
            scan_mode: manifest.scan.mode,
            scan_dtype: manifest.scan.dtype,
            shard_size_bytes: manifest.build.shard_size_mb * 1_000_000,
            row_group_rows: manifest.build.row_group_rows,
            batch_size: manifest.build.batch_size,
            sources,
            models,
            units: Vec::new(),
            unit_images: manifest.build.unit_images,
            models_per_unit: manifest.build.models_per_unit,
        }
    }

    /// Count every source's rows and cut the scan into units of about
    /// `UNIT_CROPS` forward passes (or `build.unit_images` images).
    pub(crate) fn with_units(mut self) -> Result<Plan, SourceError> {
        for s in &mut self.sources {
            s.total_rows = s.reader().total_rows()?;
        }
        let rows: Vec<(String, u64)> = self
            .sources
            .iter()
            .map(|s| (s.origin.clone(), s.selected_count()))
            .collect();
        let per_unit = self
            .unit_images
            .unwrap_or_else(|| images_per_unit(UNIT_CROPS, self.grid.len(), self.models.len()));
        let per_group = self.models_per_unit.unwrap_or(self.models.len());
        self.units = split(&rows, self.models.len(), per_unit, per_group);
        Ok(self)
    }

    /// This plan with its units: those of `previous` (the plan already in
    /// the run directory) when it describes the same run, so its finished
    /// units stay valid; else counted and cut afresh. A run directory never
    /// holds two different runs: a different `previous` is an error.
    pub(crate) fn settle(mut self, previous: Option<&Plan>) -> Result<Plan, PlanError> {
        if let Some(old) = previous {
            if !old.same_run_as(&self) {
                return Err(PlanError::Different {
                    run_dir: self.run_dir.clone(),
                });
            }
            // A curate order, like the units, is kept from the first plan
            // (the samples it was learned from may have grown since), so
            // every worker of a run tries the same pairs.
            if old.curate.is_some() {
                self.curate = old.curate.clone();
            }
            if !old.units.is_empty() {
                self.units = old.units.clone();
                for (s, o) in self.sources.iter_mut().zip(&old.sources) {
                    s.total_rows = o.total_rows;
                }
                return Ok(self);
            }
        }
        Ok(self.with_units()?)
    }

    pub fn path(run_dir: &Path) -> PathBuf {
        crate::run_dir::RunDir::of(run_dir).plan()
    }

    pub fn write(&self) -> std::io::Result<()> {
        crate::util::write_json(&Plan::path(&self.run_dir), self)
    }

    pub fn read(run_dir: &Path) -> std::io::Result<Plan> {
        crate::util::read_json(&Plan::path(run_dir))
    }

    /// Whether `other` describes the same run: same inputs (by lock hash),
    /// grid, models, limits and scan settings; where the files sit may
    /// differ. Units and row counts are derived from these, and the
    /// selection settings only read the records: none is compared.
    pub(crate) fn same_run_as(&self, other: &Plan) -> bool {
        let strip = |p: &Plan| {
            let mut p = p.clone();
            p.sources.iter_mut().for_each(|s| s.files.clear());
            p.models.iter_mut().for_each(|m| {
                m.weights = PathBuf::new();
                m.extra_files.values_mut().for_each(|f| *f = PathBuf::new());
                m.cache_dir = PathBuf::new();
            });
            p.tool_version.clear();
            p.units.clear();
            // How the hard set is chosen from the records does not change
            // the records: a new rule or duplicate policy keeps the scan.
            p.selection = SelectionRule::default();
            p.duplicates = Default::default();
            p.sources.iter_mut().for_each(|s| s.total_rows = 0);
            p.curate = None;
            p
        };
        strip(self) == strip(other)
    }

    pub(crate) fn model_names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }
}

impl Plan {
    /// Each model's cost per forward pass, in billions of multiply-adds at
    /// this grid's crop size (the architecture's published count, scaled
    /// by the crop's area).
    pub(crate) fn model_gmacs(&self) -> Vec<f64> {
        self.models
            .iter()
            .map(|m| pass_gmacs(m.architecture, self.grid.crop_size))
            .collect()
    }

    /// Forward passes per model over the counted rows, with their GPU-hours
    /// where `rates` has the model's architecture.
    pub fn cost(
        &self,
        rates: &std::collections::BTreeMap<String, crate::cost::Rate>,
    ) -> Vec<crate::cost::ModelCost> {
        let images: Vec<Option<u64>> = self
            .sources
            .iter()
            .map(|s| Some(s.selected_count()))
            .collect();
        let models: Vec<(String, String)> = self
            .models
            .iter()
            .map(|m| (m.name.clone(), m.architecture.name().to_string()))
            .collect();
        crate::cost::model_costs(&images, self.grid.len(), &models, rates)
    }
}

/// Billions of multiply-adds of one forward pass of `arch` on a `crop` px
/// crop: the published 224 px count scaled by the crop's area.
pub(crate) fn pass_gmacs(arch: crate::models::Architecture, crop: u32) -> f64 {
    arch.spec().gmacs * (crop as f64 / 224.0).powi(2)
}

/// The rows a source is cut to: the smaller of its own limit and the run's.
fn row_limit(own: Option<u64>, run: Option<u64>) -> Option<u64> {
    match (own, run) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The cost of a manifest before anything is fetched: each source's `rows`
/// (cut to its limit) stands for its count.
pub(crate) fn dry_run_cost(
    manifest: &Manifest,
    limit: Option<u64>,
    rates: &std::collections::BTreeMap<String, crate::cost::Rate>,
) -> Vec<crate::cost::ModelCost> {
    let images: Vec<Option<u64>> = manifest
        .sources
        .iter()
        .map(|s| match (s.rows, row_limit(s.limit, limit)) {
            (Some(r), Some(t)) => Some(r.min(t)),
            (r, t) => r.or(t),
        })
        .collect();
    let models: Vec<(String, String)> = manifest
        .models
        .iter()
        .map(|m| (m.name.clone(), m.architecture.name().to_string()))
        .collect();
    crate::cost::model_costs(&images, manifest.zoom.grid().len(), &models, rates)
}

/// What `build --dry-run` shows, as values: every source and model with
/// where it comes from and each file to fetch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DryRun {
    pub manifest: PathBuf,
    pub build: String,
    pub run_dir: PathBuf,
    pub grid: ZoomGrid,
    pub sources: Vec<DrySource>,
    pub models: Vec<DryModel>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DrySource {
    pub origin: String,
    /// "format F, labels L, classes S (N)[, limit ...]".
    pub description: String,
    pub from: Location,
    pub terms: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DryModel {
    pub name: String,
    pub architecture: String,
    pub from: Location,
}

/// Where a source's or model's files come from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Location {
    Hub(HubFetch),
    Url { url: String, sha256: String },
    Local(Vec<PathBuf>),
    Nothing,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HubFetch {
    /// "dataset" or "model".
    pub kind: &'static str,
    pub repo: String,
    pub revision: String,
    pub gated: bool,
    pub files: Vec<FetchFile>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FetchFile {
    /// A named file and its known sha256.
    File {
        path: String,
        sha256: Option<String>,
    },
    /// A pattern and the files the lock lists for it (none before a fetch).
    Pattern {
        pattern: String,
        locked: Vec<crate::fetch::LockedFile>,
    },
}

impl Location {
    /// Files and patterns to fetch.
    fn counts(&self) -> (usize, usize) {
        match self {
            Location::Hub(h) => h.files.iter().fold((0, 0), |(f, p), file| match file {
                FetchFile::File { .. } => (f + 1, p),
                FetchFile::Pattern { locked, .. } => (f + locked.len(), p + 1),
            }),
            Location::Url { .. } => (1, 0),
            Location::Local(_) | Location::Nothing => (0, 0),
        }
    }
}

/// A Hub repository's files as the dry run lists them: patterns matched
/// against the lock where it has the repository at this revision.
fn hub_fetch(
    h: &crate::hub::HubFiles,
    kind: &'static str,
    lock: Option<&crate::fetch::Lock>,
) -> HubFetch {
    let locked = lock.and_then(|l| {
        l.repos
            .iter()
            .find(|r| r.id == h.repo && r.revision == h.revision)
    });
    let files = h
        .files
        .iter()
        .map(|f| {
            if !crate::fetch::is_pattern(f) {
                return FetchFile::File {
                    path: f.clone(),
                    sha256: h.sha256.get(f).cloned(),
                };
            }
            let names: Vec<&str> = locked
                .map(|r| r.files.iter().map(|lf| lf.path.as_str()).collect())
                .unwrap_or_default();
            let matched = match glob::Pattern::new(f) {
                Ok(p) => crate::fetch::matching(&p, &names)
                    .into_iter()
                    .filter_map(|m| locked?.files.iter().find(|lf| lf.path == m).cloned())
                    .collect(),
                Err(_) => Vec::new(),
            };
            FetchFile::Pattern {
                pattern: f.clone(),
                locked: matched,
            }
        })
        .collect();
    HubFetch {
        kind,
        repo: h.repo.clone(),
        revision: h.revision.clone(),
        gated: h.gated,
        files,
    }
}

/// The plan before anything is fetched (`build --dry-run`): each source and
/// model with every file to fetch, pins, gates and limits. Files matched by
/// a pattern are listed from the lock when it has them.
pub(crate) fn dry_run(
    manifest: &Manifest,
    label: &Path,
    lock: Option<&crate::fetch::Lock>,
    limit: Option<u64>,
) -> DryRun {
    let sources = manifest
        .sources
        .iter()
        .map(|s| {
            let subset = s.class_subset();
            DrySource {
                origin: s.origin.clone(),
                description: format!(
                    "format {}, labels {}, classes {} ({}){}",
                    s.format.name(),
                    s.labels.name(),
                    subset.name(),
                    subset.class_count(),
                    row_limit(s.limit, limit)
                        .map(|n| format!(", limit {n} rows spread over the source"))
                        .unwrap_or_default()
                ),
                from: match &s.hub {
                    Some(h) => Location::Hub(hub_fetch(h, "dataset", lock)),
                    None => Location::Local(s.path.clone()),
                },
                terms: s.terms.clone(),
            }
        })
        .collect();
    let models = manifest
        .models
        .iter()
        .map(|m| DryModel {
            name: m.name.clone(),
            architecture: m.architecture.name().to_string(),
            from: match (&m.hub, &m.url, &m.path) {
                (Some(h), _, _) => Location::Hub(hub_fetch(h, "model", lock)),
                (None, Some(u), _) => Location::Url {
                    url: u.url.clone(),
                    sha256: u.sha256.clone(),
                },
                (None, None, Some(p)) => Location::Local(vec![p.clone()]),
                _ => Location::Nothing,
            },
        })
        .collect();
    DryRun {
        manifest: label.to_path_buf(),
        build: manifest.build.name.clone(),
        run_dir: manifest.run_dir(),
        grid: manifest.zoom.grid(),
        sources,
        models,
    }
}

/// `dry_run` as the text `build --dry-run` prints.
pub(crate) fn dry_run_text(
    manifest: &Manifest,
    label: &Path,
    lock: Option<&crate::fetch::Lock>,
    limit: Option<u64>,
) -> String {
    dry_run(manifest, label, lock, limit).to_string()
}

impl std::fmt::Display for HubFetch {
    fn fmt(&self, out: &mut std::fmt::Formatter) -> std::fmt::Result {
        let pinned = crate::hub::is_commit_sha(&self.revision);
        writeln!(
            out,
            "    hub {} {}@{}{}",
            self.kind,
            self.repo,
            self.revision,
            if pinned {
                ""
            } else {
                "  (not a commit: the lock pins what the first fetch resolves)"
            }
        )?;
        if self.gated {
            let prefix = if self.kind == "dataset" {
                "datasets/"
            } else {
                ""
            };
            writeln!(
                out,
                "    gated: accept the terms at https://huggingface.co/{prefix}{} and set HF_TOKEN",
                self.repo
            )?;
        }
        for f in &self.files {
            match f {
                FetchFile::File { path, sha256 } => {
                    let sha = sha256.as_ref().map(|s| format!("  sha256 {s}"));
                    writeln!(out, "      {path}{}", sha.unwrap_or_default())?;
                }
                FetchFile::Pattern { pattern, locked } if locked.is_empty() => writeln!(
                    out,
                    "      {pattern}  (pattern: matched against the repo's files at fetch)"
                )?,
                FetchFile::Pattern { pattern, locked } => {
                    let n = locked.len();
                    writeln!(out, "      {pattern}  (pattern: {n} files in the lock)")?;
                    for lf in locked {
                        writeln!(
                            out,
                            "      {}  {} bytes  sha256 {}",
                            lf.path, lf.size, lf.sha256
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, out: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Location::Hub(h) => write!(out, "{h}"),
            Location::Url { url, sha256 } => writeln!(out, "    url {url}  sha256 {sha256}"),
            Location::Local(paths) => paths
                .iter()
                .try_for_each(|p| writeln!(out, "    local {}", p.display())),
            Location::Nothing => Ok(()),
        }
    }
}

impl std::fmt::Display for DryRun {
    fn fmt(&self, out: &mut std::fmt::Formatter) -> std::fmt::Result {
        let g = &self.grid;
        writeln!(out, "manifest  {}", self.manifest.display())?;
        writeln!(
            out,
            "build     {} -> {}",
            self.build,
            self.run_dir.display()
        )?;
        writeln!(
            out,
            "zoom      {} scales x {}x{} anchors = {} transforms per image, crop {} px",
            g.scales.len(),
            g.anchors,
            g.anchors,
            g.len(),
            g.crop_size
        )?;
        writeln!(out, "sources   {}", self.sources.len())?;
        for s in &self.sources {
            writeln!(out, "  {}  {}", s.origin, s.description)?;
            write!(out, "{}", s.from)?;
            if let Some(t) = &s.terms {
                writeln!(out, "    terms: {t}")?;
            }
        }
        writeln!(out, "models    {}", self.models.len())?;
        for m in &self.models {
            writeln!(out, "  {}  architecture {}", m.name, m.architecture)?;
            write!(out, "{}", m.from)?;
        }
        let origins = self.sources.iter().map(|s| &s.from);
        let (files, patterns) = origins
            .chain(self.models.iter().map(|m| &m.from))
            .map(Location::counts)
            .fold((0, 0), |(f, p), (a, b)| (f + a, p + b));
        let patterns = if patterns > 0 {
            format!(" and {patterns} patterns")
        } else {
            String::new()
        };
        writeln!(
            out,
            "to fetch  {files} files{patterns}; nothing was downloaded (dry run)"
        )
    }
}
