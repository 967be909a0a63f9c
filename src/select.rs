//! Select stage: from scan records, the hard set (SPEC §3) and the 1-crop
//! and all-transform upper bounds per (model, source). The rule and bounds
//! are pure functions over correctness matrices; `select` does the I/O.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::manifest::SelectionRule;
use crate::plan::Plan;
use crate::records::{read_records, RecordsError};
use crate::scan::records_path;
use crate::zoom::Transform;

/// `correct[model][transform]` for one image.
pub type Correctness = Vec<Vec<bool>>;

/// Whether an image is hard under `rule`.
pub fn is_hard(rule: SelectionRule, correct: &Correctness) -> bool {
    match rule {
        SelectionRule::AllFail => correct.iter().all(|per_t| per_t.iter().all(|&c| !c)),
    }
}

/// Fraction of images with at least one correct transform in `transforms`
/// (all transforms when `None`). Empty input gives 0.
pub fn upper_bound<'a>(
    images: impl IntoIterator<Item = &'a [bool]>,
    transforms: Option<&[usize]>,
) -> f64 {
    let (mut solved, mut n) = (0usize, 0usize);
    for per_t in images {
        n += 1;
        let any = match transforms {
            Some(ts) => ts.iter().any(|&t| per_t.get(t).copied().unwrap_or(false)),
            None => per_t.iter().any(|&c| c),
        };
        solved += any as usize;
    }
    if n == 0 {
        0.0
    } else {
        solved as f64 / n as f64
    }
}

/// One row of the bounds table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BoundRow {
    pub model: String,
    pub origin: String,
    pub images: usize,
    /// Accuracy of `r1c1s256` alone, when the grid has it.
    pub one_crop: Option<f64>,
    /// Accuracy with the best of all transforms.
    pub upper_bound: f64,
    pub transforms: usize,
}

/// An image kept in the hard set, with what was tried on it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HardImage {
    pub origin: String,
    pub row: u64,
    pub id: String,
    pub labels: Vec<i64>,
    pub image_bytes: u64,
    pub models: Vec<String>,
    pub transforms: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Selection {
    pub rule: SelectionRule,
    pub bounds: Vec<BoundRow>,
    pub hard: Vec<HardImage>,
    /// Images scanned per origin.
    pub scanned: BTreeMap<String, usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error("scan records {file}: image row {row} has no record for model `{model}`; the scan is incomplete, rerun `imagenet-hard scan`")]
    MissingModel {
        file: PathBuf,
        row: u64,
        model: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An image's first scan record and its correctness per model, as read.
type FirstRecord = (crate::records::ScanRecord, Vec<Option<Vec<bool>>>);

/// Compute the hard set and bounds from the run's scan records.
pub fn select(plan: &Plan) -> Result<Selection, SelectError> {
    let models = plan.model_names();
    let one_crop = plan.grid.index_of(Transform::ONE_CROP);
    let mut bounds = Vec::new();
    let mut hard = Vec::new();
    let mut scanned = BTreeMap::new();
    for source in &plan.sources {
        let file = records_path(&plan.run_dir, &source.origin);
        // row -> (first record, correctness per model)
        let mut images: BTreeMap<u64, FirstRecord> = BTreeMap::new();
        for rec in read_records(&file)? {
            let Some(mi) = models.iter().position(|m| *m == rec.model) else {
                continue;
            };
            let entry = images
                .entry(rec.row)
                .or_insert_with(|| (rec.clone(), vec![None; models.len()]));
            entry.1[mi] = Some(rec.correct);
        }
        let mut matrix: Vec<(crate::records::ScanRecord, Correctness)> =
            Vec::with_capacity(images.len());
        for (row, (rec, per_model)) in images {
            let mut correct = Vec::with_capacity(models.len());
            for (m, c) in models.iter().zip(per_model) {
                correct.push(c.ok_or_else(|| SelectError::MissingModel {
                    file: file.clone(),
                    row,
                    model: m.clone(),
                })?);
            }
            matrix.push((rec, correct));
        }
        scanned.insert(source.origin.clone(), matrix.len());
        for (mi, m) in models.iter().enumerate() {
            let per_image = || matrix.iter().map(|(_, c)| c[mi].as_slice());
            bounds.push(BoundRow {
                model: m.clone(),
                origin: source.origin.clone(),
                images: matrix.len(),
                one_crop: one_crop.map(|t| upper_bound(per_image(), Some(&[t]))),
                upper_bound: upper_bound(per_image(), None),
                transforms: plan.grid.len(),
            });
        }
        for (rec, correct) in &matrix {
            if is_hard(plan.selection, correct) {
                hard.push(HardImage {
                    origin: source.origin.clone(),
                    row: rec.row,
                    id: rec.id.clone(),
                    labels: rec.labels.clone(),
                    image_bytes: rec.image_bytes,
                    models: models.clone(),
                    transforms: plan.grid.len(),
                });
            }
        }
    }
    Ok(Selection {
        rule: plan.selection,
        bounds,
        hard,
        scanned,
    })
}

pub fn selection_path(run_dir: &Path) -> PathBuf {
    run_dir.join("select").join("selection.json")
}

impl Selection {
    pub fn write(&self, run_dir: &Path) -> Result<(), SelectError> {
        let path = selection_path(run_dir);
        crate::util::write_json(&path, self).map_err(|source| SelectError::Io {
            path: path.clone(),
            source,
        })?;
        let md = run_dir.join("select").join("bounds.md");
        crate::util::write_atomic(&md, self.bounds_table().as_bytes())
            .map_err(|source| SelectError::Io { path: md, source })
    }

    pub fn read(run_dir: &Path) -> Result<Selection, SelectError> {
        let path = selection_path(run_dir);
        crate::util::read_json(&path).map_err(|e| SelectError::Io {
            path: path.clone(),
            source: std::io::Error::new(e.kind(), format!("{e}; run `imagenet-hard select` first")),
        })
    }

    /// Markdown table: one row per (model, source), accuracies in percent.
    pub fn bounds_table(&self) -> String {
        let mut out = String::from("| model | source | images | 1-crop (r1c1s256) % | upper bound % (transforms) |\n|---|---|---:|---:|---:|\n");
        for b in &self.bounds {
            let one = b
                .one_crop
                .map(|v| format!("{:.2}", 100.0 * v))
                .unwrap_or_else(|| "n/a".into());
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.2} ({}) |\n",
                b.model,
                b.origin,
                b.images,
                one,
                100.0 * b.upper_bound,
                b.transforms
            ));
        }
        let total: usize = self.scanned.values().sum();
        out.push_str(&format!(
            "\nhard: {} of {} scanned images\n",
            self.hard.len(),
            total
        ));
        out
    }

    /// Hard images per origin.
    pub fn hard_per_origin(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for h in &self.hard {
            *counts.entry(h.origin.clone()).or_default() += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_is_hard_only_if_every_model_fails_every_transform() {
        let all_fail = vec![vec![false, false], vec![false, false]];
        let one_hit = vec![vec![false, false], vec![false, true]];
        assert!(is_hard(SelectionRule::AllFail, &all_fail));
        assert!(!is_hard(SelectionRule::AllFail, &one_hit));
    }

    #[test]
    fn upper_bounds_count_any_correct_transform() {
        let imgs: Vec<Vec<bool>> = vec![
            vec![true, false, false],
            vec![false, false, true],
            vec![false, false, false],
            vec![false, true, false],
        ];
        let it = || imgs.iter().map(|v| v.as_slice());
        assert_eq!(upper_bound(it(), None), 0.75);
        assert_eq!(upper_bound(it(), Some(&[0])), 0.25);
        assert_eq!(upper_bound(it(), Some(&[0, 2])), 0.5);
        assert_eq!(upper_bound(std::iter::empty(), None), 0.0);
    }
}
