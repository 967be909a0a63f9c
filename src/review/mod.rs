//! The curation workbench: the hard set (and, if asked, the near misses)
//! served as a local web page for a person to review, one image at a time,
//! with what every model said; each decision goes to the review CSV at once
//! ([`crate::review_csv`]). `select --labels` then applies the review.
//!
//! This file gathers the items from a finished run; `server` serves them.

pub mod server;

use serde::Serialize;
use std::collections::BTreeMap;

use crate::plan::Plan;
use crate::select::{load_source, ScannedImage, SelectError, Selection};
use crate::suspects::Suspect;

/// A class as the page shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Class {
    pub index: i64,
    pub name: String,
}

/// One image to review.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Item {
    pub origin: String,
    pub row: u64,
    pub id: String,
    pub labels: Vec<Class>,
    /// In the hard set (else a near miss: one model solved it, barely).
    pub hard: bool,
    /// Per model: how many transforms it solved (0 everywhere for a hard
    /// image under the default rule).
    pub solved: Vec<usize>,
    /// The near-duplicate group it belongs to, if any (`dedupe`).
    pub group: Option<usize>,
    /// The other class the models agree on, if any (`crate::suspects`);
    /// the page names it from the class list.
    pub suspect: Option<Suspect>,
}

/// What one model said about an item: its answers by frequency over the
/// grid's transforms, and its answer under each transform.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct ModelView {
    pub model: String,
    /// Its answers, most frequent first: class and how many transforms.
    pub answers: Vec<(Class, usize)>,
    /// `pred[t]` in canonical transform order.
    pub pred: Vec<u16>,
    /// The transforms whose answer is one of the labels.
    pub solved: Vec<String>,
}

/// The items of a run and every model's predictions on them.
pub(crate) struct Workbench {
    pub items: Vec<Item>,
    /// Item indices, most suspect label first (`suspects::most_suspect_first`).
    pub suspect_order: Vec<usize>,
    /// `pred[item][model][transform]`.
    pub pred: Vec<Vec<Vec<u16>>>,
    pub models: Vec<String>,
    pub transforms: Vec<String>,
}

fn class(index: i64) -> Class {
    Class {
        index,
        name: crate::labels::class_name(index).unwrap_or("?").to_string(),
    }
}

impl Workbench {
    /// The hard set of `selection`, in source then row order, and with
    /// `near_misses` the images one model alone solves with few transforms.
    /// `groups` maps (origin, row) to a near-duplicate group.
    pub fn load(
        plan: &Plan,
        selection: &Selection,
        near_misses: bool,
        groups: &BTreeMap<(String, u64), usize>,
    ) -> Result<Workbench, SelectError> {
        let hard: std::collections::BTreeSet<(&str, u64)> = selection
            .hard
            .iter()
            .map(|h| (h.origin.as_str(), h.row))
            .collect();
        let mut items = Vec::new();
        let mut pred = Vec::new();
        for source in &plan.sources {
            let (images, _, _) = load_source(plan, source, None)?;
            let origin = source.origin.as_str();
            let wanted = |im: &ScannedImage| {
                hard.contains(&(origin, im.row))
                    || (near_misses && crate::analysis::is_near_miss(&im.correct))
            };
            let rows: std::collections::BTreeSet<u64> = images
                .iter()
                .filter(|im| wanted(im))
                .map(|im| im.row)
                .collect();
            let mut suspects: BTreeMap<u64, Suspect> =
                crate::select::source_suspects(&images, |r| rows.contains(&r))
                    .into_iter()
                    .map(|(i, s)| (images[i].row, s))
                    .collect();
            for im in images {
                if !rows.contains(&im.row) {
                    continue;
                }
                let is_hard = hard.contains(&(origin, im.row));
                let ScannedImage {
                    row,
                    id,
                    labels,
                    pred: p,
                    correct,
                    ..
                } = im;
                items.push(Item {
                    origin: source.origin.clone(),
                    row,
                    id,
                    labels: labels.iter().map(|&l| class(l)).collect(),
                    hard: is_hard,
                    solved: correct
                        .iter()
                        .map(|c| c.iter().filter(|&&x| x).count())
                        .collect(),
                    group: groups.get(&(source.origin.clone(), row)).copied(),
                    suspect: suspects.remove(&row),
                });
                pred.push(p);
            }
        }
        let suspect_order = crate::suspects::most_suspect_first(
            &items
                .iter()
                .map(|it| it.suspect.as_ref())
                .collect::<Vec<_>>(),
        );
        Ok(Workbench {
            items,
            suspect_order,
            pred,
            models: plan.model_names(),
            transforms: plan
                .grid
                .transforms()
                .iter()
                .map(|t| t.to_string())
                .collect(),
        })
    }

    /// What each model said about item `k`.
    pub fn views(&self, k: usize) -> Vec<ModelView> {
        let (Some(item), Some(preds)) = (self.items.get(k), self.pred.get(k)) else {
            return Vec::new();
        };
        let labels: Vec<i64> = item.labels.iter().map(|c| c.index).collect();
        self.models
            .iter()
            .zip(preds)
            .map(|(model, pred)| {
                let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
                for &p in pred {
                    *counts.entry(p).or_default() += 1;
                }
                let mut answers: Vec<(Class, usize)> = counts
                    .into_iter()
                    .filter(|(p, _)| *p != crate::scan::NOT_TRIED)
                    .map(|(p, n)| (class(p as i64), n))
                    .collect();
                answers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.index.cmp(&b.0.index)));
                answers.truncate(8);
                ModelView {
                    model: model.clone(),
                    answers,
                    pred: pred.clone(),
                    solved: pred
                        .iter()
                        .zip(&self.transforms)
                        .filter(|(p, _)| labels.contains(&(**p as i64)))
                        .map(|(_, t)| t.clone())
                        .collect(),
                }
            })
            .collect()
    }
}
