//! The first-hit strategy (curation): per image and model, transforms are
//! tried in [`crate::analysis::first_hit_order`] until one is correct (or
//! all fail). What is recorded does not depend on how crops were batched:
//! predictions after an image's first hit are dropped, not recorded; the
//! transforms not tried are [`NOT_TRIED`].

use std::collections::VecDeque;

use super::driver::{UnitScan, ViewScorer};
use super::hunt::{self, Hunt, Strategy};
use super::ScanError;
use crate::zoom::RgbImage;

/// In a first-hit scan, the prediction of a transform that was not tried.
pub const NOT_TRIED: u16 = u16::MAX;

/// Every model walks the same transform order, each on its own.
struct FirstHit {
    order: Vec<usize>,
    models: usize,
}

/// Per model: how far along the order it is, and whether it is done.
struct Progress {
    next: Vec<usize>,
    done: Vec<bool>,
}

impl Strategy for FirstHit {
    type State = Progress;

    fn start(&self) -> Progress {
        Progress {
            next: vec![0; self.models],
            done: vec![false; self.models],
        }
    }

    fn settled(&self, p: &Progress) -> bool {
        p.done.iter().all(|&d| d)
    }

    fn round(
        &self,
        scan: &mut UnitScan,
        scorer: &mut ViewScorer,
        live: &mut VecDeque<Hunt<Progress>>,
        batch: usize,
    ) -> Result<(), ScanError> {
        let order = &self.order;
        for mi in 0..self.models {
            let active: Vec<usize> = (0..live.len())
                .filter(|&i| !live[i].state.done[mi])
                .collect();
            if active.is_empty() {
                continue;
            }
            // Each active image gets the next few transforms of its order.
            let per = batch.div_ceil(active.len());
            let mut jobs: Vec<(usize, usize)> = Vec::with_capacity(batch);
            let mut views: Vec<(&RgbImage, usize)> = Vec::with_capacity(batch);
            for &li in &active {
                // Unsettled images keep their pixels.
                let Some(img) = live[li].img.as_ref() else {
                    continue;
                };
                for k in 0..per {
                    let pos = live[li].state.next[mi] + k;
                    if pos < order.len() && jobs.len() < batch {
                        jobs.push((li, order[pos]));
                        views.push((img, order[pos]));
                    }
                }
            }
            let tops = scorer.top1(scan, mi, &views)?;
            drop(views);
            for (&(li, t), top) in jobs.iter().zip(tops) {
                let h = &mut live[li];
                if h.state.done[mi] {
                    continue; // hit earlier in this batch: later tries are not recorded
                }
                h.scanned.pred[mi][t] = top;
                h.state.next[mi] += 1;
                if h.scanned.labels.contains(&(top as i64)) || h.state.next[mi] >= order.len() {
                    h.state.done[mi] = true;
                }
            }
        }
        Ok(())
    }
}

/// Scan the unit; false when it stopped early (its claim was taken over).
pub(super) fn scan(scan: &mut UnitScan, threads: usize) -> Result<bool, ScanError> {
    let strategy = FirstHit {
        order: crate::analysis::first_hit_order(&scan.plan.grid),
        models: scan.models.len(),
    };
    hunt::run(scan, threads, &strategy)
}
