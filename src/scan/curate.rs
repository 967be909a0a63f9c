//! The curate strategy: per image, (model, transform) pairs are tried in
//! the plan's learned order until one is correct, and then no model tries
//! more. An image no pair solves has tried them all: the hard set is the
//! exhaustive scan's. What is recorded does not depend on batching: pairs
//! after an image's first hit are dropped, not recorded; pairs not tried
//! are [`NOT_TRIED`].

use std::collections::VecDeque;

use super::driver::{UnitScan, ViewScorer};
use super::hunt::{self, Hunt, Strategy};
use super::ScanError;
use crate::zoom::RgbImage;

/// All models share one walk along the plan's (model, transform) pairs.
struct Curate {
    /// The pairs, models numbered within the unit.
    order: Vec<(usize, usize)>,
}

/// Position of the image's next pair, and whether it hit (or ran out).
struct Progress {
    next: usize,
    done: bool,
}

/// The plan's (model, transform) pairs over the unit's models (a curate
/// unit holds them all), models numbered within the unit.
fn pair_order(scan: &UnitScan) -> Result<Vec<(usize, usize)>, ScanError> {
    let order: Vec<(usize, usize)> = scan
        .plan
        .curate
        .as_ref()
        .map(|c| c.pairs.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|&(m, t)| {
            let local = scan.unit.models.iter().position(|&u| u == m as usize)?;
            Some((local, t as usize))
        })
        .collect();
    if order.is_empty() {
        return Err(ScanError::Plan(
            "the plan has no curate order: make the plan again with `imagenet-hard plan`".into(),
        ));
    }
    Ok(order)
}

impl Curate {
    /// Each unsettled image's next few pairs (`batch` crops shared among
    /// them), run model by model in batches of at most `batch` crops: per
    /// image in `live`, the top-1 class of each pair taken (empty if done).
    fn answers(
        &self,
        scan: &mut UnitScan,
        scorer: &mut ViewScorer,
        live: &VecDeque<Hunt<Progress>>,
        batch: usize,
    ) -> Result<Vec<Vec<Option<u16>>>, ScanError> {
        let order = &self.order;
        let active: Vec<usize> = (0..live.len()).filter(|&i| !live[i].state.done).collect();
        let per = batch.div_ceil(active.len().max(1));
        let mut answers: Vec<Vec<Option<u16>>> = vec![Vec::new(); live.len()];
        for &li in &active {
            answers[li] = vec![None; per.min(order.len() - live[li].state.next)];
        }
        for mi in 0..scan.models.len() {
            let jobs: Vec<(usize, usize, usize)> = active
                .iter()
                .flat_map(|&li| {
                    let next = live[li].state.next;
                    (0..answers[li].len())
                        .filter(move |&k| order[next + k].0 == mi)
                        .map(move |k| (li, k, order[next + k].1))
                })
                .collect();
            for chunk in jobs.chunks(batch) {
                // Unsettled images keep their pixels.
                let views: Vec<(&RgbImage, usize)> = chunk
                    .iter()
                    .filter_map(|&(li, _, t)| live[li].img.as_ref().map(|img| (img, t)))
                    .collect();
                if views.len() != chunk.len() {
                    return Err(ScanError::Plan(
                        "an unfinished image lost its pixels".into(),
                    ));
                }
                let tops = scorer.top1(scan, mi, &views)?;
                for (&(li, k, _), top) in chunk.iter().zip(tops) {
                    answers[li][k] = Some(top);
                }
            }
        }
        Ok(answers)
    }
}

impl Strategy for Curate {
    type State = Progress;

    fn start(&self) -> Progress {
        Progress {
            next: 0,
            done: false,
        }
    }

    fn settled(&self, p: &Progress) -> bool {
        p.done
    }

    /// Record each image's answered pairs in order, up to its first hit.
    fn round(
        &self,
        scan: &mut UnitScan,
        scorer: &mut ViewScorer,
        live: &mut VecDeque<Hunt<Progress>>,
        batch: usize,
    ) -> Result<(), ScanError> {
        let answers = self.answers(scan, scorer, live, batch)?;
        for (h, answers) in live.iter_mut().zip(&answers) {
            for a in answers {
                let Some(top) = *a else { break };
                let (m, t) = self.order[h.state.next];
                h.scanned.pred[m][t] = top;
                h.state.next += 1;
                if h.scanned.labels.contains(&(top as i64)) || h.state.next >= self.order.len() {
                    h.state.done = true;
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Scan the unit; false when it stopped early (its claim was taken over).
pub(super) fn scan(scan: &mut UnitScan, threads: usize) -> Result<bool, ScanError> {
    let strategy = Curate {
        order: pair_order(scan)?,
    };
    hunt::run(scan, threads, &strategy)
}
