//! The exhaustive strategy: every model under every transform. The feed
//! decodes and zooms ahead on `threads` threads while the models run;
//! batch k+1 is queued on the device before batch k's logits are read back;
//! an image's records leave as soon as all its crops are scored, in row
//! order.

use std::collections::VecDeque;

use super::driver::{Scanned, UnitScan};
use super::ScanError;
use crate::feed::{self, Event, FeedOptions};
use crate::models::Started;

/// An image whose crops are in flight.
struct InFlightImage {
    scanned: Scanned,
    /// Crops not scored yet.
    remaining: usize,
}

/// A batch queued on the device: each model's pending logits, and per crop
/// its image's slot and transform index.
struct QueuedBatch {
    started: Vec<Started>,
    crops: Vec<(u64, usize)>,
}

/// Images waiting for their crops, `first_slot` the slot of the front one.
struct Window {
    images: VecDeque<InFlightImage>,
    first_slot: u64,
}

impl Window {
    fn get(&mut self, slot: u64) -> Option<&mut InFlightImage> {
        self.images.get_mut((slot - self.first_slot) as usize)
    }
}

/// Scan the unit; false when it stopped early (its claim was taken over).
pub(super) fn scan(scan: &mut UnitScan, threads: usize) -> Result<bool, ScanError> {
    let (plan, unit, source) = (scan.plan, scan.unit, scan.source);
    let grid = &plan.grid;
    let crop = grid.crop_size as usize;
    let rows = source
        .reader()
        .rows_in(source.unit_rows(unit.first, unit.end));
    let opts = FeedOptions::new(threads, plan.batch_size);
    let mut window = Window {
        images: VecDeque::new(),
        first_slot: 0,
    };
    feed::run(rows, grid, plan.decode, opts, |events| {
        let mut queued: Option<QueuedBatch> = None;
        for event in events {
            if scan.stopped() {
                return Ok(false);
            }
            match event? {
                Event::Skip(skip) => scan.skip(skip),
                Event::Image(meta) => {
                    let scanned = scan.image(meta.row, meta.path, meta.labels, meta.image_bytes, 0);
                    window.images.push_back(InFlightImage {
                        scanned,
                        remaining: grid.len(),
                    });
                }
                Event::Batch(batch) => {
                    let Some(first) = scan.models.first() else {
                        continue;
                    };
                    let x = first.upload(&batch.pixels, batch.len(), crop)?;
                    let started = scan
                        .models
                        .iter()
                        .zip(&scan.norms)
                        .map(|(m, norm)| m.start(&x, norm))
                        .collect::<Result<Vec<_>, _>>()?;
                    scan.stats.forward_passes += (batch.len() * scan.models.len()) as u64;
                    // The device works on this batch while the last one is read back.
                    let next = QueuedBatch {
                        started,
                        crops: batch.crops,
                    };
                    if let Some(done) = queued.replace(next) {
                        score(scan, &mut window, done)?;
                        emit_finished(scan, &mut window)?;
                    }
                }
            }
        }
        if let Some(done) = queued.take() {
            score(scan, &mut window, done)?;
        }
        emit_finished(scan, &mut window)?;
        Ok(true)
    })
}

/// Read back a finished batch: the top-1 of every crop under every model.
fn score(scan: &UnitScan, window: &mut Window, batch: QueuedBatch) -> Result<(), ScanError> {
    for (mi, (m, started)) in scan.models.iter().zip(batch.started).enumerate() {
        let logits = m.finish(started)?;
        for (k, &(slot, t)) in batch.crops.iter().enumerate() {
            if let Some(image) = window.get(slot) {
                image.scanned.pred[mi][t] = scan.top1(&logits[k * 1000..(k + 1) * 1000]);
            }
        }
    }
    for &(slot, _) in &batch.crops {
        if let Some(image) = window.get(slot) {
            image.remaining -= 1;
        }
    }
    Ok(())
}

/// Write the records of the front images whose crops are all scored.
fn emit_finished(scan: &mut UnitScan, window: &mut Window) -> Result<(), ScanError> {
    while window.images.front().is_some_and(|i| i.remaining == 0) {
        let Some(image) = window.images.pop_front() else {
            break;
        };
        window.first_slot += 1;
        scan.emit(image.scanned)?;
    }
    Ok(())
}
