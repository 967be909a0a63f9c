//! The curate strategy: per image, (model, transform) pairs are tried in
//! the plan's learned order until one is correct, and then no model tries
//! more. An image no pair solves has tried them all: the hard set is the
//! exhaustive scan's. What is recorded does not depend on batching: pairs
//! after an image's first hit are dropped, not recorded; pairs not tried
//! are [`NOT_TRIED`].

use std::collections::VecDeque;

use super::driver::{Scanned, UnitScan, ViewScorer};
use super::ScanError;
use crate::zoom::RgbImage;

/// An image being hunted along the pair order.
struct Hunt {
    scanned: Scanned,
    img: Option<RgbImage>,
    /// Position of the next pair to try.
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

/// Each unfinished image's next few pairs (`batch` crops shared among
/// them), run model by model in batches of at most `batch` crops: per
/// image in `live`, the top-1 class of each pair taken (empty if done).
fn score_round(
    scan: &mut UnitScan,
    scorer: &mut ViewScorer,
    live: &VecDeque<Hunt>,
    order: &[(usize, usize)],
    batch: usize,
) -> Result<Vec<Vec<Option<u16>>>, ScanError> {
    let active: Vec<usize> = (0..live.len()).filter(|&i| !live[i].done).collect();
    let per = batch.div_ceil(active.len().max(1));
    let mut answers: Vec<Vec<Option<u16>>> = vec![Vec::new(); live.len()];
    for &li in &active {
        answers[li] = vec![None; per.min(order.len() - live[li].next)];
    }
    for mi in 0..scan.models.len() {
        let jobs: Vec<(usize, usize, usize)> = active
            .iter()
            .flat_map(|&li| {
                let h = &live[li];
                (0..answers[li].len())
                    .filter(move |&k| order[h.next + k].0 == mi)
                    .map(move |k| (li, k, order[h.next + k].1))
            })
            .collect();
        for chunk in jobs.chunks(batch) {
            // Unfinished images keep their pixels.
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

/// Record each image's answered pairs in order, up to its first hit; an
/// image that hit (or ran out of pairs) is done and drops its pixels.
fn record(live: &mut VecDeque<Hunt>, answers: &[Vec<Option<u16>>], order: &[(usize, usize)]) {
    for (h, answers) in live.iter_mut().zip(answers) {
        for a in answers {
            let Some(top) = *a else { break };
            let (m, t) = order[h.next];
            h.scanned.pred[m][t] = top;
            h.next += 1;
            if h.scanned.labels.contains(&(top as i64)) || h.next >= order.len() {
                h.done = true;
                break;
            }
        }
        if h.done {
            h.img = None;
        }
    }
}

/// Scan the unit; false when it stopped early (its claim was taken over).
pub(super) fn scan(scan: &mut UnitScan, threads: usize) -> Result<bool, ScanError> {
    let order = pair_order(scan)?;
    let batch = scan.plan.batch_size.max(1);
    let mut scorer = ViewScorer::new(threads)?;
    let (unit, source) = (scan.unit, scan.source);
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
        while !exhausted && live.iter().filter(|h| !h.done).count() < batch {
            let Some((scanned, img)) = scan.next_image(&mut rows)? else {
                exhausted = true;
                break;
            };
            live.push_back(Hunt {
                scanned,
                img: Some(img),
                next: 0,
                done: false,
            });
        }
        if live.is_empty() {
            break;
        }
        let answers = score_round(scan, &mut scorer, &live, &order, batch)?;
        record(&mut live, &answers, &order);
        // Records leave in row order.
        while live.front().is_some_and(|h| h.done) {
            let Some(h) = live.pop_front() else { break };
            scan.emit(h.scanned)?;
        }
    }
    Ok(true)
}
