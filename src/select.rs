//! Select stage: from scan records, the hard set (protocol §3) and the 1-crop
//! and all-transform upper bounds per (model, source). The rule and bounds
//! are pure functions over correctness matrices; `select` does the I/O.
//! Re-selection (another rule, or labels revised by a manual review) reads
//! the stored predictions again and never re-runs a model.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::analysis::Hits;
use crate::manifest::SelectionRule;
use crate::plan::{Plan, PlannedSource};
use crate::records::RecordsError;
use crate::scan::{missing_units, unit_records_path};
use crate::zoom::Transform;

/// `correct[model][transform]` for one image.
pub(crate) type Correctness = Vec<Vec<bool>>;

/// Whether an image is hard under `rule`; `models` names the rows of `correct`.
pub(crate) fn is_hard(rule: &SelectionRule, models: &[String], correct: &Correctness) -> bool {
    let fails = |per_t: &Vec<bool>| per_t.iter().all(|&c| !c);
    match rule {
        SelectionRule::AllFail => correct.iter().all(fails),
        SelectionRule::AtLeast(k) => correct.iter().filter(|c| fails(c)).count() >= *k,
        SelectionRule::Models(names) => models
            .iter()
            .zip(correct)
            .filter(|(m, _)| names.contains(m))
            .all(|(_, c)| fails(c)),
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

/// Labels revised after a scan (e.g. by a manual review), by (origin, row).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Relabel {
    pub file: PathBuf,
    pub sha256: String,
    /// An empty list drops the image.
    pub labels: BTreeMap<(String, u64), Vec<i64>>,
}

/// What a relabelling did, kept with the selection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RelabelSummary {
    pub file: String,
    pub sha256: String,
    pub relabelled: usize,
    pub dropped: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Selection {
    pub rule: SelectionRule,
    /// Later copies of near-duplicate groups left out (`duplicates = "keep-first"`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duplicates_dropped: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relabel: Option<RelabelSummary>,
    pub bounds: Vec<BoundRow>,
    pub hard: Vec<HardImage>,
    /// Images scanned per origin (after any review drops).
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
    #[error("{file} line {line}: {message}")]
    LabelsFile {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("selection rule: {0}")]
    Rule(String),
    #[error("{missing} scan unit(s) are not done, the first {first}; finish the scan (`imagenet-hard scan`, or rerun the job array) before selecting; `imagenet-hard status` lists them")]
    Incomplete { missing: usize, first: String },
}

impl Relabel {
    /// Read a CSV with the header `origin,row,labels`; `labels` holds
    /// ImageNet-1k indices separated by spaces, empty to drop the image.
    pub fn read(file: &Path) -> Result<Relabel, SelectError> {
        let bytes = std::fs::read(file).map_err(|source| SelectError::Io {
            path: file.into(),
            source,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        Self::parse(&text, file).map(|mut r| {
            use sha2::Digest;
            r.sha256 = crate::util::hex(&sha2::Sha256::digest(&bytes));
            r
        })
    }

    /// Parse the CSV: `origin,row,labels` first, then optionally a review's
    /// `decision,comment,reviewer` (see [`crate::review_csv`]).
    pub fn parse(text: &str, file: &Path) -> Result<Relabel, SelectError> {
        let reviews = crate::review_csv::parse(text, file).map_err(|e| match e {
            crate::review_csv::ReviewError::Line {
                file,
                line,
                message,
            } => SelectError::LabelsFile {
                file,
                line,
                message,
            },
            other => SelectError::LabelsFile {
                file: file.into(),
                line: 0,
                message: other.to_string(),
            },
        })?;
        Ok(Relabel {
            file: file.into(),
            sha256: String::new(),
            labels: reviews
                .into_iter()
                .map(|r| ((r.origin, r.row), r.labels))
                .collect(),
        })
    }
}

/// An image's first scan record and its predictions per model, as read.
type FirstRecord = (crate::records::ScanRecord, Vec<Option<Vec<u16>>>);

/// One scanned image of a source with every model's predictions.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScannedImage {
    pub row: u64,
    pub id: String,
    pub labels: Vec<i64>,
    pub image_bytes: u64,
    /// `pred[model][transform]`.
    pub pred: Vec<Vec<u16>>,
    /// `correct[model][transform]` against `labels`.
    pub correct: Correctness,
}

/// Read a source's scan records into one entry per image, in row order,
/// with labels revised by `relabel` (correctness recomputed from the stored
/// predictions; images whose revised labels are empty left out). Returns the
/// images and how many were relabelled and dropped.
pub(crate) fn load_source(
    plan: &Plan,
    source: &PlannedSource,
    relabel: Option<&Relabel>,
) -> Result<(Vec<ScannedImage>, usize, usize), SelectError> {
    let models = plan.model_names();
    let file = plan
        .units
        .iter()
        .find(|u| u.origin == source.origin)
        .map(|u| unit_records_path(&plan.run_dir, u))
        .unwrap_or_default();
    let records = crate::scan::read_source_records(plan, &source.origin)?;
    let mut images: BTreeMap<u64, FirstRecord> = BTreeMap::new();
    for rec in records {
        let Some(mi) = models.iter().position(|m| *m == rec.model) else {
            continue;
        };
        let entry = images
            .entry(rec.row)
            .or_insert_with(|| (rec.clone(), vec![None; models.len()]));
        entry.1[mi] = Some(rec.pred);
    }
    let (mut relabelled, mut dropped) = (0, 0);
    let mut out = Vec::with_capacity(images.len());
    for (row, (rec, per_model)) in images {
        let mut labels = rec.labels.clone();
        if let Some(new) = relabel.and_then(|r| r.labels.get(&(source.origin.clone(), row))) {
            if new.is_empty() {
                dropped += 1;
                continue;
            }
            if *new != labels {
                relabelled += 1;
                labels = new.clone();
            }
        }
        let mut pred = Vec::with_capacity(models.len());
        for (m, p) in models.iter().zip(per_model) {
            pred.push(p.ok_or_else(|| SelectError::MissingModel {
                file: file.clone(),
                row,
                model: m.clone(),
            })?);
        }
        let correct = pred
            .iter()
            .map(|p| p.iter().map(|&c| labels.contains(&(c as i64))).collect())
            .collect();
        out.push(ScannedImage {
            row,
            id: rec.id,
            labels,
            image_bytes: rec.image_bytes,
            pred,
            correct,
        });
    }
    Ok((out, relabelled, dropped))
}

/// The label suspects (`suspects::suspect`) among a source's `images`, for
/// those `wanted` says: `(index into images, suspect)` in row order. The
/// candidate classes are the labels any image of the source carries.
pub(crate) fn source_suspects(
    images: &[ScannedImage],
    wanted: impl Fn(u64) -> bool,
) -> Vec<(usize, crate::suspects::Suspect)> {
    let candidates: BTreeSet<i64> = images.iter().flat_map(|im| im.labels.clone()).collect();
    images
        .iter()
        .enumerate()
        .filter(|(_, im)| wanted(im.row))
        .filter_map(|(i, im)| {
            crate::suspects::suspect(&im.labels, &im.pred, &candidates).map(|s| (i, s))
        })
        .collect()
}

/// Compute the hard set and bounds from the run's scan records under
/// `rule`, with labels revised by `relabel` when given.
pub fn select(
    plan: &Plan,
    rule: &SelectionRule,
    relabel: Option<&Relabel>,
) -> Result<Selection, SelectError> {
    let models = plan.model_names();
    rule.check(&models).map_err(SelectError::Rule)?;
    let mode = plan.scan_mode;
    if relabel.is_some() && mode != crate::manifest::ScanMode::Exhaustive {
        return Err(SelectError::Rule(format!(
            "revised labels need an exhaustive scan: this run's {} scan stopped at the first \
             transform correct for the old labels, so what the other transforms predict is unknown; \
             rescan with `[scan] mode = \"exhaustive\"`",
            mode.name()
        )));
    }
    if mode == crate::manifest::ScanMode::Curate && *rule != SelectionRule::AllFail {
        return Err(SelectError::Rule(format!(
            "`{rule}` needs to know which models fail every transform, and a curate scan stops \
             every model at the first hit of any: use all-fail, or rescan with \
             `[scan] mode = \"exhaustive\"` or \"first-hit\""
        )));
    }
    let missing = missing_units(plan);
    if let Some(u) = missing.first() {
        return Err(SelectError::Incomplete {
            missing: missing.len(),
            first: format!("{} ({}, rows {}..{})", u.name(), u.origin, u.first, u.end),
        });
    }
    let one_crop = plan.grid.index_of(Transform::ONE_CROP);
    let mut bounds = Vec::new();
    let mut hard = Vec::new();
    let mut scanned = BTreeMap::new();
    let (mut relabelled, mut dropped) = (0, 0);
    for source in &plan.sources {
        let (images, r, d) = load_source(plan, source, relabel)?;
        relabelled += r;
        dropped += d;
        scanned.insert(source.origin.clone(), images.len());
        // A curate scan's per-model bounds would only count what was tried.
        let bounded = if mode == crate::manifest::ScanMode::Curate {
            &[][..]
        } else {
            &models[..]
        };
        for (mi, m) in bounded.iter().enumerate() {
            let hits = Hits::from_rows(
                images.iter().map(|im| im.correct[mi].as_slice()),
                plan.grid.len(),
            );
            bounds.push(BoundRow {
                model: m.clone(),
                origin: source.origin.clone(),
                images: images.len(),
                one_crop: one_crop.map(|t| hits.bound([t])),
                upper_bound: hits.upper_bound(),
                transforms: plan.grid.len(),
            });
        }
        for im in &images {
            if is_hard(rule, &models, &im.correct) {
                hard.push(HardImage {
                    origin: source.origin.clone(),
                    row: im.row,
                    id: im.id.clone(),
                    labels: im.labels.clone(),
                    image_bytes: im.image_bytes,
                    models: models.clone(),
                    transforms: plan.grid.len(),
                });
            }
        }
    }
    // Near-duplicates found by `dedupe`: under keep-first, the later copies
    // of a group leave the hard set.
    let mut duplicates_dropped = 0;
    if plan.duplicates == crate::manifest::DuplicatePolicy::KeepFirst {
        if let Some(d) = crate::dedupe::Duplicates::read(&plan.run_dir) {
            let later = d.later_copies();
            let before = hard.len();
            hard.retain(|h| !later.contains(&(h.origin.clone(), h.row)));
            duplicates_dropped = before - hard.len();
        }
    }
    Ok(Selection {
        rule: rule.clone(),
        duplicates_dropped,
        relabel: relabel.map(|r| RelabelSummary {
            file: r.file.display().to_string(),
            sha256: r.sha256.clone(),
            relabelled,
            dropped,
        }),
        bounds,
        hard,
        scanned,
    })
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

pub(crate) fn selection_path(run_dir: &Path) -> PathBuf {
    crate::run_dir::RunDir::of(run_dir).selection()
}

impl Selection {
    pub fn write(&self, run_dir: &Path) -> Result<(), SelectError> {
        let path = selection_path(run_dir);
        if let Some(dir) = path.parent() {
            crate::util::remove_stale_temps(dir).map_err(|source| SelectError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        crate::util::write_json(&path, self).map_err(|source| SelectError::Io {
            path: path.clone(),
            source,
        })?;
        let md = crate::run_dir::RunDir::of(run_dir).bounds();
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
    pub(crate) fn bounds_table(&self) -> String {
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
        if self.bounds.is_empty() {
            out.push_str("| (a curate scan gives no per-model bounds) | | | | |\n");
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
    pub(crate) fn hard_per_origin(&self) -> BTreeMap<String, usize> {
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
        let models = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let all_fail = vec![vec![false, false]; 3];
        let one_hit = vec![vec![false, false], vec![false, true], vec![false, false]];
        assert!(is_hard(&SelectionRule::AllFail, &models, &all_fail));
        assert!(!is_hard(&SelectionRule::AllFail, &models, &one_hit));
        // Two of three models fail everything.
        assert!(is_hard(&SelectionRule::AtLeast(2), &models, &one_hit));
        assert!(!is_hard(&SelectionRule::AtLeast(3), &models, &one_hit));
        let ac = SelectionRule::Models(vec!["a".into(), "c".into()]);
        assert!(is_hard(&ac, &models, &one_hit));
        let ab = SelectionRule::Models(vec!["a".into(), "b".into()]);
        assert!(!is_hard(&ab, &models, &one_hit));
    }

    #[test]
    fn rules_parse_and_print() {
        for text in ["all-fail", "at-least:2", "models:resnet18,alexnet"] {
            let rule: SelectionRule = text.parse().unwrap();
            assert_eq!(rule.to_string(), text);
        }
        assert!("at-least:0".parse::<SelectionRule>().is_err());
        assert!("most-fail".parse::<SelectionRule>().is_err());
        assert!("models:".parse::<SelectionRule>().is_err());
        let models = vec!["a".to_string()];
        assert!(SelectionRule::AtLeast(2).check(&models).is_err());
        let err = SelectionRule::Models(vec!["zz".into()])
            .check(&models)
            .unwrap_err();
        assert!(err.contains("zz"), "{err}");
    }

    #[test]
    fn relabel_files_parse_and_name_bad_lines() {
        let f = Path::new("review.csv");
        let r = Relabel::parse("origin,row,labels\nimagenet-a,4,7 3\nobjectnet,2,\n", f).unwrap();
        assert_eq!(r.labels[&("imagenet-a".to_string(), 4)], vec![3, 7]);
        assert_eq!(r.labels[&("objectnet".to_string(), 2)], Vec::<i64>::new());
        let e = Relabel::parse("origin,row,labels\na,1,1000\n", f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("review.csv line 2") && e.contains("1000"), "{e}");
        let e = Relabel::parse("o,r\n", f).unwrap_err().to_string();
        assert!(
            e.contains("line 1") && e.contains("origin,row,labels"),
            "{e}"
        );
        let e = Relabel::parse("origin,row,labels\na,x,1\n", f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = Relabel::parse("origin,row,labels\na,1,1\na,1,2\n", f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("twice"), "{e}");
    }

    #[test]
    fn upper_bounds_count_any_correct_transform() {
        let imgs: Vec<Vec<bool>> = vec![
            vec![true, false, false],
            vec![false, false, true],
            vec![false, false, false],
            vec![false, true, false],
        ];
        let hits = Hits::from_rows(imgs.iter().map(|v| v.as_slice()), 3);
        assert_eq!(hits.upper_bound(), 0.75);
        assert_eq!(hits.bound([0]), 0.25);
        assert_eq!(hits.bound([0, 2]), 0.5);
        assert_eq!(Hits::from_rows(std::iter::empty(), 3).upper_bound(), 0.0);
    }
}
