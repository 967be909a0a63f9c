//! The loop the first-hit and curate modes share: keep `batch` unsettled
//! images in flight, let the mode's [`Strategy`] score their next views and
//! record the answers, and send each record out once its image is settled,
//! in row order. A strategy says only which views to score next and when
//! an image is settled. (The exhaustive mode scores every view of every
//! image, so it streams them through the feed's pipeline instead, where
//! decoding, zooming and the models overlap: `exhaustive.rs`.)

use std::collections::VecDeque;

use super::driver::{Scanned, UnitScan, ViewScorer};
use super::ScanError;
use crate::zoom::RgbImage;

/// An image being scanned, with what its strategy tracks.
pub(super) struct Hunt<S> {
    pub(super) scanned: Scanned,
    /// The pixels, dropped once the image is settled.
    pub(super) img: Option<RgbImage>,
    pub(super) state: S,
}

/// What a mode decides; [`run`] does the rest.
pub(super) trait Strategy {
    /// Per image: how far along it is.
    type State;
    /// A new image's state.
    fn start(&self) -> Self::State;
    /// Whether the image's record is final.
    fn settled(&self, state: &Self::State) -> bool;
    /// Score the next views of the unsettled images in `live` (at most
    /// `batch` crops per forward pass) and record the answers in their
    /// `scanned.pred` and states.
    fn round(
        &self,
        scan: &mut UnitScan,
        scorer: &mut ViewScorer,
        live: &mut VecDeque<Hunt<Self::State>>,
        batch: usize,
    ) -> Result<(), ScanError>;
}

/// Scan the unit under `strategy`; false when it stopped early (its claim
/// was taken over).
pub(super) fn run<S: Strategy>(
    scan: &mut UnitScan,
    threads: usize,
    strategy: &S,
) -> Result<bool, ScanError> {
    let batch = scan.plan.batch_size.max(1);
    let mut scorer = ViewScorer::new(threads)?;
    let (unit, source) = (scan.unit, scan.source);
    let mut rows = source
        .reader()
        .rows_in(source.unit_rows(unit.first, unit.end));
    let mut live: VecDeque<Hunt<S::State>> = VecDeque::new();
    let mut exhausted = false;
    loop {
        if scan.stopped() {
            return Ok(false);
        }
        // Keep `batch` unsettled images in flight.
        while !exhausted && live.iter().filter(|h| !strategy.settled(&h.state)).count() < batch {
            let Some((scanned, img)) = scan.next_image(&mut rows)? else {
                exhausted = true;
                break;
            };
            live.push_back(Hunt {
                scanned,
                img: Some(img),
                state: strategy.start(),
            });
        }
        if live.is_empty() {
            break;
        }
        strategy.round(scan, &mut scorer, &mut live, batch)?;
        for h in live.iter_mut().filter(|h| strategy.settled(&h.state)) {
            h.img = None;
        }
        // Records leave in row order.
        while live.front().is_some_and(|h| strategy.settled(&h.state)) {
            let Some(h) = live.pop_front() else { break };
            scan.emit(h.scanned)?;
        }
    }
    Ok(true)
}
