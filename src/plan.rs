//! The resolved plan: manifest + fetched paths, validated once, logged and
//! written into the run directory. Every later stage reads only the plan.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::fetch::Fetched;
use crate::labels::ClassSubset;
use crate::manifest::{Manifest, SelectionRule};
use crate::models::Architecture;
use crate::zoom::{DecodeLimits, ZoomGrid};

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
    pub shard_size_bytes: u64,
    pub row_group_rows: usize,
    pub batch_size: usize,
    pub sources: Vec<PlannedSource>,
    pub models: Vec<PlannedModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlannedSource {
    pub origin: String,
    /// `owner/name@commit` for Hub sources, else the local paths.
    pub provenance: String,
    pub files: Vec<PathBuf>,
    pub image_column: String,
    pub label_column: String,
    pub class_subset: ClassSubset,
    pub limit: Option<u64>,
    pub terms: Option<String>,
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
    /// A streaming reader over this source's rows.
    pub fn reader(&self) -> crate::sources::ParquetSource {
        crate::sources::ParquetSource {
            files: self.files.clone(),
            image_column: self.image_column.clone(),
            label_column: self.label_column.clone(),
            origin_column: None,
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
                image_column: s.image_column.clone(),
                label_column: s.label_column.clone(),
                class_subset: s.class_subset,
                limit: match (s.limit, limit) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                terms: s.terms.clone(),
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
            selection: manifest.selection.rule,
            shard_size_bytes: manifest.build.shard_size_mb * 1_000_000,
            row_group_rows: manifest.build.row_group_rows,
            batch_size: manifest.build.batch_size,
            sources,
            models,
        }
    }

    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join("plan.json")
    }

    pub fn write(&self) -> std::io::Result<()> {
        crate::util::write_json(&Plan::path(&self.run_dir), self)
    }

    pub fn read(run_dir: &Path) -> std::io::Result<Plan> {
        crate::util::read_json(&Plan::path(run_dir))
    }

    /// Whether `other` describes the same run: same inputs (by lock hash),
    /// grid, models, limits and settings; where the files sit may differ.
    pub fn same_run_as(&self, other: &Plan) -> bool {
        let strip = |p: &Plan| {
            let mut p = p.clone();
            p.sources.iter_mut().for_each(|s| s.files.clear());
            p.models.iter_mut().for_each(|m| {
                m.weights = PathBuf::new();
                m.extra_files.values_mut().for_each(|f| *f = PathBuf::new());
                m.cache_dir = PathBuf::new();
            });
            p.tool_version.clear();
            p
        };
        strip(self) == strip(other)
    }

    pub fn model_names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }
}
