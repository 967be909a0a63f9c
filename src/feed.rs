//! The scan's feed: a source's rows decoded and zoomed on a pool of threads,
//! running ahead of the model, handed on in row order as batches of 8-bit
//! crops. Owns the preprocessing's parallelism and nothing else: no model,
//! no records.
//!
//! Work is cut into one task per (image, scale): decode once (shared by the
//! image's tasks, started one image ahead), resize once, cut the anchors'
//! crops. Tasks are handed out in order and their results put back in
//! order, so what leaves the feed (which crops, in which batch, in which
//! position) does not depend on the number of threads or on their timing.
//! At most `window` tasks are in flight past the oldest unfinished one and
//! at most `ahead` batches wait for the model: memory stays bounded.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use crate::sources::{RowOutcome, Skip, SourceError, SourceRecord};
use crate::zoom::{decode_for_zoom, scale_crops, DecodeLimits, RgbImage, ZoomGrid};

/// How the feed runs.
#[derive(Debug, Clone, Copy)]
pub struct FeedOptions {
    /// Threads that decode and zoom.
    pub threads: usize,
    /// Crops per batch.
    pub batch: usize,
    /// Batches prepared ahead of the model.
    pub ahead: usize,
}

impl FeedOptions {
    pub fn new(threads: usize, batch: usize) -> FeedOptions {
        FeedOptions {
            threads: threads.max(1),
            batch: batch.max(1),
            ahead: 3,
        }
    }
}

/// The threads this process may use: the CPUs of its affinity mask and
/// cgroup quota (a Slurm or Kubernetes allocation), at least 1.
pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A scanned image, announced before its crops.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageMeta {
    /// Images of this feed numbered from 0, in row order.
    pub slot: u64,
    pub row: u64,
    pub path: Option<String>,
    pub labels: Vec<i64>,
    pub image_bytes: u64,
}

/// Crops for the model: `len()` crops of `size x size` RGB pixels (HWC),
/// back to back in `pixels`.
#[derive(Debug, Clone, PartialEq)]
pub struct CropBatch {
    pub size: usize,
    pub pixels: Vec<u8>,
    /// Per crop: the image's slot and the transform's index in the grid.
    pub crops: Vec<(u64, usize)>,
}

impl CropBatch {
    pub fn len(&self) -> usize {
        self.crops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.crops.is_empty()
    }
}

/// What the feed hands on, in row order. Every row read gives exactly one
/// `Skip` or one `Image`; an image's crops come in later batches.
#[derive(Debug)]
pub enum Event {
    Skip(Skip),
    Image(ImageMeta),
    Batch(CropBatch),
}

/// Run `consume` over the events of `rows` zoomed over `grid`. The feed's
/// threads live as long as the call; if `consume` returns early, they stop.
/// A source error ends the events with that error.
pub fn run<R>(
    rows: impl Iterator<Item = Result<RowOutcome, SourceError>> + Send,
    grid: &ZoomGrid,
    decode: DecodeLimits,
    opts: FeedOptions,
    consume: impl FnOnce(&mut dyn Iterator<Item = Result<Event, SourceError>>) -> R,
) -> R {
    let shared = Shared {
        dispenser: Mutex::new(Dispenser::new(rows, grid.scales.len())),
        window: Condvar::new(),
        stop: AtomicBool::new(false),
        grid,
        decode,
        // Enough tasks in flight to keep every thread busy while the oldest
        // one finishes.
        window_tasks: 4 * opts.threads as u64 + 8,
    };
    let (results_tx, results_rx) = mpsc::channel::<(u64, Output)>();
    let (events_tx, events_rx) =
        mpsc::sync_channel::<Result<Event, SourceError>>(opts.ahead.max(1) + 2 * opts.threads + 8);
    std::thread::scope(|scope| {
        for _ in 0..opts.threads.max(1) {
            let tx = results_tx.clone();
            let shared = &shared;
            scope.spawn(move || work(shared, tx));
        }
        drop(results_tx);
        let shared_ref = &shared;
        scope.spawn(move || assemble(shared_ref, results_rx, events_tx, grid, opts));
        let mut events = Events {
            rx: events_rx,
            shared: &shared,
        };
        let out = consume(&mut events);
        // Whether it finished or gave up, let every thread go.
        shared.halt();
        drop(events);
        out
    })
}

struct Events<'a, I> {
    rx: Receiver<Result<Event, SourceError>>,
    shared: &'a Shared<'a, I>,
}

impl<I> Iterator for Events<'_, I> {
    type Item = Result<Event, SourceError>;
    fn next(&mut self) -> Option<Self::Item> {
        let _ = self.shared;
        self.rx.recv().ok()
    }
}

/// An image's bytes and, once one task has decoded it, its pixels.
struct ImageSlot {
    record: SourceRecord,
    /// Rows that are images, numbered in order (decodable or not).
    slot: u64,
    decoded: OnceLock<Result<Arc<RgbImage>, Skip>>,
}

impl ImageSlot {
    fn pixels(&self, limits: DecodeLimits, grid: &ZoomGrid) -> &Result<Arc<RgbImage>, Skip> {
        self.decoded.get_or_init(|| {
            decode_for_zoom(&self.record.image, limits, grid)
                .map(Arc::new)
                .map_err(|e| Skip {
                    row: self.record.row,
                    reason: e.reason().into(),
                    detail: e.to_string(),
                })
        })
    }
}

enum Task {
    /// Nothing to compute: a skipped row or a source error, passed on in order.
    Pass(Result<Skip, SourceError>),
    /// Decode ahead of the image's zoom tasks (its result stays in the slot).
    Decode(Arc<ImageSlot>),
    Zoom {
        image: Arc<ImageSlot>,
        scale: usize,
    },
}

enum Output {
    Pass(Result<Skip, SourceError>),
    Zoom {
        image: Arc<ImageSlot>,
        scale: usize,
        crops: Result<Vec<RgbImage>, Skip>,
    },
}

/// A row read from the source, waiting to be handed out.
enum Entry {
    Image(Arc<ImageSlot>),
    Pass(Result<Skip, SourceError>),
}

/// Rows read ahead to find the next image to decode early.
const LOOKAHEAD: usize = 8;

/// Hands out tasks in row order: an image's zoom tasks, one per scale, with
/// the next image's decoding slipped in before them.
struct Dispenser<I> {
    rows: I,
    scales: usize,
    /// Rows read but not fully handed out; the front is being handed out.
    queue: VecDeque<Entry>,
    /// Next zoom scale of the front image.
    next_scale: usize,
    /// Sequence number of the next counted task (every task but `Decode`).
    next_seq: u64,
    /// Counted tasks the assembler has put in order.
    assembled: u64,
    next_slot: u64,
    /// Images with slots below this have had their decoding handed out.
    decoding_from: u64,
    ended: bool,
}

impl<I: Iterator<Item = Result<RowOutcome, SourceError>>> Dispenser<I> {
    fn new(rows: I, scales: usize) -> Self {
        Dispenser {
            rows,
            scales: scales.max(1),
            queue: VecDeque::new(),
            next_scale: 0,
            next_seq: 0,
            assembled: 0,
            next_slot: 0,
            decoding_from: 0,
            ended: false,
        }
    }

    /// Read one row into the queue; false when the rows are done.
    fn read(&mut self) -> bool {
        if self.ended {
            return false;
        }
        let entry = match self.rows.next() {
            None => {
                self.ended = true;
                return false;
            }
            Some(Ok(Ok(record))) => {
                let slot = self.next_slot;
                self.next_slot += 1;
                Entry::Image(Arc::new(ImageSlot {
                    record,
                    slot,
                    decoded: OnceLock::new(),
                }))
            }
            Some(Ok(Err(skip))) => Entry::Pass(Ok(skip)),
            Some(Err(e)) => {
                // Nothing after a source error is read.
                self.ended = true;
                Entry::Pass(Err(e))
            }
        };
        self.queue.push_back(entry);
        true
    }

    /// The next task in order (with its sequence number unless it is a
    /// `Decode`), `None` when the rows are done.
    fn next_task(&mut self) -> Option<(Option<u64>, Task)> {
        if self.queue.is_empty() && !self.read() {
            return None;
        }
        let is_image = |e: &Entry| matches!(e, Entry::Image(_));
        while self.queue.len() < LOOKAHEAD && !self.queue.iter().skip(1).any(is_image) {
            if !self.read() {
                break;
            }
        }
        // The front image and the next one are decoded first, in order.
        let upcoming = self.queue.iter().filter_map(|e| match e {
            Entry::Image(img) => Some(img),
            Entry::Pass(_) => None,
        });
        for img in upcoming.take(2) {
            if img.slot >= self.decoding_from {
                self.decoding_from = img.slot + 1;
                return Some((None, Task::Decode(img.clone())));
            }
        }
        let task = match self.queue.front_mut()? {
            Entry::Pass(_) => match self.queue.pop_front() {
                Some(Entry::Pass(p)) => Task::Pass(p),
                _ => return None,
            },
            Entry::Image(img) => {
                let task = Task::Zoom {
                    image: img.clone(),
                    scale: self.next_scale,
                };
                self.next_scale += 1;
                if self.next_scale >= self.scales {
                    self.next_scale = 0;
                    self.queue.pop_front();
                }
                task
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        Some((Some(seq), task))
    }
}

struct Shared<'a, I> {
    dispenser: Mutex<Dispenser<I>>,
    window: Condvar,
    stop: AtomicBool,
    grid: &'a ZoomGrid,
    decode: DecodeLimits,
    window_tasks: u64,
}

impl<I> Shared<'_, I> {
    fn halt(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _guard = lock(&self.dispenser);
        self.window.notify_all();
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn work<I: Iterator<Item = Result<RowOutcome, SourceError>>>(
    shared: &Shared<'_, I>,
    results: Sender<(u64, Output)>,
) {
    loop {
        let task = {
            let mut d = lock(&shared.dispenser);
            loop {
                if shared.stopped() {
                    return;
                }
                if d.next_seq < d.assembled + shared.window_tasks {
                    break;
                }
                d = shared
                    .window
                    .wait(d)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            d.next_task()
        };
        let Some((seq, task)) = task else { return };
        let output = match task {
            Task::Pass(p) => Output::Pass(p),
            Task::Decode(image) => {
                let _ = image.pixels(shared.decode, shared.grid);
                continue;
            }
            Task::Zoom { image, scale } => {
                let crops = match image.pixels(shared.decode, shared.grid) {
                    Ok(img) => Ok(scale_crops(img, shared.grid.scales[scale], shared.grid)),
                    Err(skip) => Err(skip.clone()),
                };
                Output::Zoom {
                    image,
                    scale,
                    crops,
                }
            }
        };
        let Some(seq) = seq else { continue };
        if results.send((seq, output)).is_err() {
            return;
        }
    }
}

/// Puts task results back in order and packs crops into batches.
fn assemble<I>(
    shared: &Shared<'_, I>,
    results: Receiver<(u64, Output)>,
    events: SyncSender<Result<Event, SourceError>>,
    grid: &ZoomGrid,
    opts: FeedOptions,
) {
    let size = grid.crop_size as usize;
    let crop_bytes = size * size * 3;
    let n_scales = grid.scales.len();
    let new_batch = || CropBatch {
        size,
        pixels: Vec::with_capacity(opts.batch * crop_bytes),
        crops: Vec::with_capacity(opts.batch),
    };
    let mut batch = new_batch();
    let mut waiting: BTreeMap<u64, Output> = BTreeMap::new();
    let mut next = 0u64;
    // Slots number the images that decoded, as the consumer sees them.
    let mut images = 0u64;
    let send = |e: Result<Event, SourceError>| -> bool { events.send(e).is_ok() };
    'outer: while let Ok((seq, out)) = results.recv() {
        waiting.insert(seq, out);
        while let Some(out) = waiting.remove(&next) {
            next += 1;
            let ok = match out {
                Output::Pass(Ok(skip)) => send(Ok(Event::Skip(skip))),
                Output::Pass(Err(e)) => {
                    // The source is unreadable from here on: end with its error.
                    if !batch.is_empty() {
                        let full = std::mem::replace(&mut batch, new_batch());
                        send(Ok(Event::Batch(full)));
                    }
                    send(Err(e));
                    break 'outer;
                }
                Output::Zoom {
                    image,
                    scale,
                    crops,
                } => match crops {
                    Err(skip) => scale > 0 || send(Ok(Event::Skip(skip))),
                    Ok(crops) => {
                        let mut ok = true;
                        if scale == 0 {
                            let r = &image.record;
                            images += 1;
                            ok = send(Ok(Event::Image(ImageMeta {
                                slot: images - 1,
                                row: r.row,
                                path: r.path.clone(),
                                labels: r.labels.clone(),
                                image_bytes: r.image.len() as u64,
                            })));
                        }
                        for (anchor, crop) in crops.into_iter().enumerate() {
                            if !ok {
                                break;
                            }
                            batch.pixels.extend_from_slice(&crop.data);
                            batch.crops.push((images - 1, anchor * n_scales + scale));
                            if batch.len() >= opts.batch {
                                let full = std::mem::replace(&mut batch, new_batch());
                                ok = send(Ok(Event::Batch(full)));
                            }
                        }
                        ok
                    }
                },
            };
            if !ok {
                break 'outer;
            }
        }
        let mut d = lock(&shared.dispenser);
        d.assembled = next;
        shared.window.notify_all();
    }
    if !waiting.is_empty() || shared.stopped() {
        // A worker stopped without finishing its task, or the consumer left.
        shared.halt();
        return;
    }
    if !batch.is_empty() {
        send(Ok(Event::Batch(batch)));
    }
    shared.halt();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(seed: u8, w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 + seed as u32) as u8,
                (y * 5) as u8,
                (x * y + 3 * seed as u32) as u8,
            ])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn rows() -> Vec<Result<RowOutcome, SourceError>> {
        let rec = |row: u64, bytes: Vec<u8>| {
            Ok(Ok(SourceRecord {
                row,
                path: Some(format!("img{row}.png")),
                image: bytes,
                labels: vec![row as i64],
                origin: None,
            }))
        };
        vec![
            rec(0, picture(1, 40, 30)),
            Ok(Err(Skip {
                row: 1,
                reason: "missing-label".into(),
                detail: "no label".into(),
            })),
            rec(2, b"not an image".to_vec()),
            rec(3, picture(2, 23, 61)),
            rec(4, picture(3, 64, 64)),
            Ok(Err(Skip {
                row: 5,
                reason: "missing-label".into(),
                detail: "no label".into(),
            })),
        ]
    }

    fn grid() -> ZoomGrid {
        ZoomGrid {
            scales: vec![10, 32, 48],
            anchors: 3,
            crop_size: 16,
            fill: 0,
        }
    }

    /// Everything the feed hands on, flattened to comparable values.
    fn drain(
        threads: usize,
        batch: usize,
        input: Vec<Result<RowOutcome, SourceError>>,
    ) -> Vec<String> {
        run(
            input.into_iter(),
            &grid(),
            DecodeLimits::default(),
            FeedOptions::new(threads, batch),
            |events| {
                events
                    .map(|e| match e {
                        Ok(Event::Skip(s)) => format!("skip {} {}", s.row, s.reason),
                        Ok(Event::Image(m)) => format!("image {} row {}", m.slot, m.row),
                        Ok(Event::Batch(b)) => format!(
                            "batch {:?} {:x}",
                            b.crops,
                            b.pixels
                                .iter()
                                .fold(0u64, |h, &v| h.wrapping_mul(31).wrapping_add(v as u64))
                        ),
                        Err(e) => format!("error {e}"),
                    })
                    .collect()
            },
        )
    }

    #[test]
    fn events_are_the_same_for_any_thread_count() {
        let one = drain(1, 5, rows());
        assert_eq!(
            one.iter().filter(|e| e.starts_with("image")).count(),
            3,
            "{one:#?}"
        );
        let images: Vec<&String> = one.iter().filter(|e| e.starts_with("image")).collect();
        assert_eq!(
            images,
            ["image 0 row 0", "image 1 row 3", "image 2 row 4"],
            "slots number the decoded images"
        );
        let skips: Vec<&String> = one.iter().filter(|e| e.starts_with("skip")).collect();
        assert_eq!(
            skips,
            [
                "skip 1 missing-label",
                "skip 2 unknown-format",
                "skip 5 missing-label"
            ],
            "skips in row order"
        );
        // 3 images x 3 scales x 9 anchors = 81 crops in batches of 5.
        let crops: usize = one
            .iter()
            .filter(|e| e.starts_with("batch"))
            .map(|e| e.matches('(').count())
            .sum();
        assert_eq!(crops, 81);
        for threads in [2, 3, 7] {
            assert_eq!(drain(threads, 5, rows()), one, "{threads} threads");
        }
    }

    #[test]
    fn crops_are_the_zoom_views_in_image_then_scale_order() {
        let g = grid();
        let events = run(
            rows().into_iter(),
            &g,
            DecodeLimits::default(),
            FeedOptions::new(3, 4),
            |events| events.collect::<Result<Vec<_>, _>>().unwrap(),
        );
        let img = crate::zoom::decode_rgb(&picture(1, 40, 30), DecodeLimits::default()).unwrap();
        let views = crate::zoom::zoom_views(&img, &g);
        let mut seen = 0;
        for e in &events {
            if let Event::Batch(b) = e {
                for (k, &(slot, t)) in b.crops.iter().enumerate() {
                    if slot == 0 {
                        let bytes = 16 * 16 * 3;
                        assert_eq!(b.pixels[k * bytes..(k + 1) * bytes], views[t].data[..]);
                        seen += 1;
                    }
                }
            }
        }
        assert_eq!(seen, 27);
        // The image is announced before its first batch.
        let first_image = events
            .iter()
            .position(|e| matches!(e, Event::Image(_)))
            .unwrap();
        let first_batch = events
            .iter()
            .position(|e| matches!(e, Event::Batch(_)))
            .unwrap();
        assert!(first_image < first_batch);
    }

    #[test]
    fn a_source_error_ends_the_events() {
        let mut input = rows();
        input.insert(4, Err(SourceError::ReaderDied));
        for threads in [1, 4] {
            let out = drain(threads, 5, input.iter().map(clone_row).collect());
            assert!(out.last().unwrap().starts_with("error"), "{out:#?}");
            assert!(!out.iter().any(|e| e.contains("row 4")), "{out:#?}");
            assert_eq!(out.iter().filter(|e| e.starts_with("image")).count(), 2);
        }
    }

    #[test]
    fn a_consumer_that_stops_early_lets_the_feed_go() {
        let many: Vec<_> = (0..40).flat_map(|_| rows()).collect();
        let first = run(
            many.into_iter(),
            &grid(),
            DecodeLimits::default(),
            FeedOptions::new(4, 3),
            |events| events.take(3).count(),
        );
        assert_eq!(first, 3);
    }

    fn clone_row(r: &Result<RowOutcome, SourceError>) -> Result<RowOutcome, SourceError> {
        match r {
            Ok(Ok(rec)) => Ok(Ok(rec.clone())),
            Ok(Err(s)) => Ok(Err(s.clone())),
            Err(_) => Err(SourceError::ReaderDied),
        }
    }
}
