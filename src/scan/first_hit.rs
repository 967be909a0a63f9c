//! The first-hit strategy (curation): per image and model, transforms are
//! tried in [`crate::analysis::first_hit_order`] until one is correct (or
//! all fail). What is recorded does not depend on how crops were batched:
//! predictions after an image's first hit are dropped, not recorded; the
//! transforms not tried are [`NOT_TRIED`].

use std::collections::VecDeque;

use super::driver::{Scanned, UnitScan, ViewScorer};
use super::ScanError;
use crate::zoom::RgbImage;

/// In a first-hit scan, the prediction of a transform that was not tried.
pub const NOT_TRIED: u16 = u16::MAX;

/// An image hunted by each model until it hits.
struct Hunt {
    scanned: Scanned,
    /// Dropped once every model is done.
    img: Option<RgbImage>,
    /// Per model: how far along the order it is.
    next: Vec<usize>,
    done: Vec<bool>,
}

impl Hunt {
    fn finished(&self) -> bool {
        self.done.iter().all(|&d| d)
    }
}

/// Scan the unit; false when it stopped early (its claim was taken over).
pub(super) fn scan(scan: &mut UnitScan, threads: usize) -> Result<bool, ScanError> {
    let (plan, unit, source) = (scan.plan, scan.unit, scan.source);
    let grid = &plan.grid;
    let order = crate::analysis::first_hit_order(grid);
    let batch = plan.batch_size.max(1);
    let n_models = scan.models.len();
    let mut scorer = ViewScorer::new(threads)?;
    let mut rows = source
        .reader()
        .rows_in(source.unit_rows(unit.first, unit.end));
    let mut live: VecDeque<Hunt> = VecDeque::new();
    let mut exhausted = false;
    loop {
        if scan.stopped() {
            return Ok(false);
        }
        // Keep `batch` unfinished images in flight.
        while !exhausted && live.iter().filter(|h| !h.finished()).count() < batch {
            let Some((scanned, img)) = scan.next_image(&mut rows)? else {
                exhausted = true;
                break;
            };
            live.push_back(Hunt {
                scanned,
                img: Some(img),
                next: vec![0; n_models],
                done: vec![false; n_models],
            });
        }
        if live.is_empty() {
            break;
        }
        for mi in 0..n_models {
            let active: Vec<usize> = (0..live.len()).filter(|&i| !live[i].done[mi]).collect();
            if active.is_empty() {
                continue;
            }
            // Each active image gets the next few transforms of its order.
            let per = batch.div_ceil(active.len());
            let mut jobs: Vec<(usize, usize)> = Vec::with_capacity(batch);
            let mut views: Vec<(&RgbImage, usize)> = Vec::with_capacity(batch);
            for &li in &active {
                // Unfinished images keep their pixels.
                let Some(img) = live[li].img.as_ref() else {
                    continue;
                };
                for k in 0..per {
                    let pos = live[li].next[mi] + k;
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
                if h.done[mi] {
                    continue; // hit earlier in this batch: later tries are not recorded
                }
                h.scanned.pred[mi][t] = top;
                h.next[mi] += 1;
                if h.scanned.labels.contains(&(top as i64)) || h.next[mi] >= order.len() {
                    h.done[mi] = true;
                }
            }
        }
        for h in live.iter_mut().filter(|h| h.finished()) {
            h.img = None;
        }
        // Records leave in row order.
        while live.front().is_some_and(Hunt::finished) {
            let Some(h) = live.pop_front() else { break };
            scan.emit(h.scanned)?;
        }
    }
    Ok(true)
}
