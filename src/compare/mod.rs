//! `compare`: how close a run's hard set is to a reference hard set, the
//! released ImageNet-Hard (a Hub dataset or a local folder of its shards)
//! or another run directory. Images are matched by content, never by name:
//! equal decoded pixels, else perceptual hashes within a bound (a
//! re-encoded copy); see `matching`. Every scanned image of a run takes
//! part, so an image one side kept and the other solved is named with the
//! model and transform that solved it. Writes `compare/compare.json`,
//! `compare/compare.md` and a contact sheet of the largest disagreements in
//! the run directory.

pub(crate) mod matching;

use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::eval::dataset::{ShardError, Shards};
use crate::plan::Plan;
use crate::select::{load_source, Relabel, SelectError, Selection};
use crate::sources::SourceError;
use crate::zoom::DecodeLimits;
use matching::{pair, published_source, Agreement, MatchKind, Print};

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Select(#[from] SelectError),
    /// The run's own sources (their manifest keys are the fix).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The reference dataset's shards.
    #[error("reading the reference: {0}")]
    Reference(#[from] ShardError),
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What to compare a run with.
pub(crate) enum Reference {
    /// A dataset in the ImageNet-Hard schema: every row is a hard image.
    Dataset(Shards),
    /// Another run directory: its hard set, and its records for the rest.
    Run(Box<(Plan, Selection)>),
}

/// One image as the comparison names it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Image {
    pub origin: String,
    pub row: u64,
    pub id: String,
    pub labels: Vec<i64>,
}

/// What a side did with an image.
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    Hard,
    /// A model solved it: the first in the run's model order, under its
    /// first correct transform in grid order.
    Solved {
        model: String,
        transform: String,
    },
    /// No model solved it, but dedupe left it out of the hard set (or the
    /// hard set was chosen under another rule).
    LeftOut,
}

/// One side's images, what it did with each, and their prints.
struct Side {
    images: Vec<Image>,
    fates: Vec<Fate>,
    prints: Vec<Print>,
    /// Rows that could not be read or decoded, by reason.
    skipped: BTreeMap<String, u64>,
}

/// A model and transform that solved an image.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Solver {
    pub model: String,
    pub transform: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Matched {
    pub run: Image,
    pub reference: Image,
    #[serde(rename = "match")]
    pub kind: MatchKind,
    pub distance: u32,
    pub labels: Agreement,
}

/// An image one side kept as hard and the other did not, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct OneSided {
    pub image: Image,
    pub why: String,
    /// The other side's model and transform that solved it, if one did.
    pub solved_by: Option<Solver>,
}

/// Counts over all images or one source.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct Counts {
    pub run_hard: usize,
    pub reference: usize,
    pub matched: usize,
    pub matched_by_pixels: usize,
    pub matched_perceptually: usize,
    pub only_in_run: usize,
    pub only_in_reference: usize,
    /// Of the matched: how our labels stand to the reference's.
    pub labels: BTreeMap<Agreement, usize>,
}

/// One source's row: the paper's name and count where it is one of the
/// paper's sources.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct SourceRow {
    pub source: String,
    pub published: Option<u64>,
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Comparison {
    pub run: String,
    pub reference: String,
    pub reference_revision: Option<String>,
    pub max_distance: u32,
    pub overall: Counts,
    pub per_source: Vec<SourceRow>,
    pub matched: Vec<Matched>,
    pub only_in_run: Vec<OneSided>,
    pub only_in_reference: Vec<OneSided>,
    /// Reference rows that could not be read or decoded, by reason
    /// (`reference: ...`), and the same for the run (`run: ...`).
    pub skipped: BTreeMap<String, u64>,
}

/// The print of one encoded image: `None` prints when it does not decode.
fn print_of(bytes: &[u8], limits: DecodeLimits, hard: bool) -> Print {
    use sha2::{Digest, Sha256};
    match crate::zoom::decode_rgb(bytes, limits) {
        Ok(img) => {
            let mut h = Sha256::new();
            h.update(img.width.to_le_bytes());
            h.update(img.height.to_le_bytes());
            h.update(&img.data);
            Print {
                pixels: Some(h.finalize().into()),
                phash: Some(crate::dedupe::phash(&img)),
                hard,
            }
        }
        Err(_) => Print {
            pixels: None,
            phash: None,
            hard,
        },
    }
}

/// Prints made a chunk at a time, decoded in parallel, so that only one
/// chunk's encoded bytes are held.
struct Prints<K> {
    limits: DecodeLimits,
    chunk: Vec<(K, Vec<u8>)>,
    done: Vec<(K, Print)>,
}

impl<K: Send + Sync> Prints<K> {
    const CHUNK: usize = 256;

    fn new(limits: DecodeLimits) -> Prints<K> {
        Prints {
            limits,
            chunk: Vec::new(),
            done: Vec::new(),
        }
    }

    fn push(&mut self, key: K, bytes: Vec<u8>, hard: &(impl Fn(&K) -> bool + Sync)) {
        self.chunk.push((key, bytes));
        if self.chunk.len() >= Self::CHUNK {
            self.flush(hard);
        }
    }

    fn flush(&mut self, hard: &(impl Fn(&K) -> bool + Sync)) {
        let limits = self.limits;
        let prints: Vec<Print> = self
            .chunk
            .par_iter()
            .map(|(k, bytes)| print_of(bytes, limits, hard(k)))
            .collect();
        self.done
            .extend(self.chunk.drain(..).map(|(k, _)| k).zip(prints));
    }

    fn finish(mut self, hard: &(impl Fn(&K) -> bool + Sync)) -> Vec<(K, Print)> {
        self.flush(hard);
        self.done
    }
}

/// The key an image counts under: the paper's source name, else its origin.
fn source_key(origin: &str) -> String {
    published_source(origin).map_or_else(|| origin.to_string(), |(name, _)| name.to_string())
}

/// A run's scanned images, each with its fate and print.
fn run_side(plan: &Plan, selection: &Selection) -> Result<Side, CompareError> {
    let models = plan.model_names();
    let names: Vec<String> = plan
        .grid
        .transforms()
        .iter()
        .map(|t| t.to_string())
        .collect();
    let hard: BTreeSet<(&str, u64)> = selection
        .hard
        .iter()
        .map(|h| (h.origin.as_str(), h.row))
        .collect();
    let mut side = Side {
        images: Vec::new(),
        fates: Vec::new(),
        prints: Vec::new(),
        skipped: BTreeMap::new(),
    };
    // The labels the selection was made with: a review may have changed some.
    let relabel = match &selection.relabel {
        Some(r) => Some(Relabel::read(Path::new(&r.file))?),
        None => None,
    };
    for source in &plan.sources {
        let (scanned, _, _) = load_source(plan, source, relabel.as_ref())?;
        let mut fates: BTreeMap<u64, (Image, Fate)> = BTreeMap::new();
        for im in scanned {
            let fate = if hard.contains(&(source.origin.as_str(), im.row)) {
                Fate::Hard
            } else {
                solver(&im.correct, &models, &names).map_or(Fate::LeftOut, |s| Fate::Solved {
                    model: s.model,
                    transform: s.transform,
                })
            };
            let image = Image {
                origin: source.origin.clone(),
                row: im.row,
                id: im.id,
                labels: im.labels,
            };
            fates.insert(im.row, (image, fate));
        }
        let rows: BTreeSet<u64> = fates.keys().copied().collect();
        let is_hard = |row: &u64| fates.get(row).is_some_and(|f| f.1 == Fate::Hard);
        let mut prints = Prints::new(plan.decode);
        for outcome in source.reader().rows_in(rows) {
            match outcome? {
                Ok(rec) => prints.push(rec.row, rec.image, &is_hard),
                Err(skip) => {
                    *side
                        .skipped
                        .entry(format!("run: {}", skip.reason))
                        .or_default() += 1
                }
            }
        }
        for (row, print) in prints.finish(&is_hard) {
            let Some((image, fate)) = fates.remove(&row) else {
                continue;
            };
            if print.pixels.is_none() {
                *side
                    .skipped
                    .entry("run: does not decode".into())
                    .or_default() += 1;
                continue;
            }
            side.images.push(image);
            side.fates.push(fate);
            side.prints.push(print);
        }
        if !fates.is_empty() {
            *side
                .skipped
                .entry("run: scanned, but no longer in its source".into())
                .or_default() += fates.len() as u64;
        }
    }
    Ok(side)
}

/// The first model (in order) that solves an image and its first correct
/// transform.
fn solver(correct: &[Vec<bool>], models: &[String], names: &[String]) -> Option<Solver> {
    correct.iter().zip(models).find_map(|(row, model)| {
        let t = row.iter().position(|&c| c)?;
        Some(Solver {
            model: model.clone(),
            transform: names.get(t).cloned().unwrap_or_default(),
        })
    })
}

/// A released dataset's rows: all hard.
fn dataset_side(shards: &Shards, limits: DecodeLimits) -> Result<Side, CompareError> {
    let source = crate::eval::shards_source(shards, None);
    let mut skipped = BTreeMap::new();
    let all_hard = |_: &Image| true;
    let mut prints = Prints::new(limits);
    for outcome in source.rows() {
        match outcome.map_err(ShardError::from)? {
            Ok(r) => {
                let image = Image {
                    origin: r.origin.unwrap_or_default(),
                    row: r.row,
                    id: r.path.unwrap_or_else(|| format!("row {}", r.row)),
                    labels: r.labels,
                };
                prints.push(image, r.image, &all_hard);
            }
            Err(skip) => {
                *skipped
                    .entry(format!("reference: {}", skip.reason))
                    .or_default() += 1
            }
        }
    }
    let (images, prints): (Vec<Image>, Vec<Print>) = prints
        .finish(&all_hard)
        .into_iter()
        .filter(|(_, p)| {
            let decodes = p.pixels.is_some();
            if !decodes {
                *skipped
                    .entry("reference: does not decode".into())
                    .or_default() += 1;
            }
            decodes
        })
        .unzip();
    Ok(Side {
        fates: vec![Fate::Hard; images.len()],
        images,
        prints,
        skipped,
    })
}

/// Why an image one side kept is missing from the other's hard set.
fn why(other: Option<&Fate>, other_is_run: bool, released: bool) -> (String, Option<Solver>) {
    let who = if other_is_run { "we" } else { "the reference" };
    match other {
        Some(Fate::Solved { model, transform }) => (
            format!("{who} solved it: {model} at {transform}"),
            Some(Solver {
                model: model.clone(),
                transform: transform.clone(),
            }),
        ),
        Some(Fate::LeftOut) => (
            format!("{who} left it out (dedupe or the selection rule)"),
            None,
        ),
        Some(Fate::Hard) => (format!("{who} kept it too"), None),
        None if other_is_run => ("not in our sources".into(), None),
        None if released => ("not in the reference".into(), None),
        None => ("not in the reference's sources".into(), None),
    }
}

/// Compare `run` (with `plan` and `selection`) with `reference`.
pub(crate) fn compare(
    plan: &Plan,
    selection: &Selection,
    reference: &Reference,
    max_distance: u32,
) -> Result<Comparison, CompareError> {
    let ours = run_side(plan, selection)?;
    let (theirs, name, revision) = match reference {
        Reference::Dataset(shards) => (
            dataset_side(shards, plan.decode)?,
            shards.dataset.clone(),
            shards.revision.clone(),
        ),
        Reference::Run(other) => (
            run_side(&other.0, &other.1)?,
            other.0.run_dir.display().to_string(),
            None,
        ),
    };
    let mut out = Comparison {
        run: plan.run_dir.display().to_string(),
        reference: name,
        reference_revision: revision,
        max_distance,
        overall: Counts::default(),
        per_source: Vec::new(),
        matched: Vec::new(),
        only_in_run: Vec::new(),
        only_in_reference: Vec::new(),
        skipped: ours.skipped.clone(),
    };
    out.skipped.extend(theirs.skipped.clone());
    let sides = Paired {
        pairs: pair(&ours.prints, &theirs.prints, max_distance),
        ours: &ours,
        theirs: &theirs,
        released: matches!(reference, Reference::Dataset(_)),
    };
    let mut per: BTreeMap<String, Counts> = BTreeMap::new();
    sides.place_ours(&mut per, &mut out);
    sides.place_theirs(&mut per, &mut out);
    for (source, counts) in per {
        add(&mut out.overall, &counts);
        out.per_source.push(SourceRow {
            published: published_source(&source).map(|(_, n)| n),
            source,
            counts,
        });
    }
    Ok(out)
}

/// Both sides and their pairs (`a` ours, `b` theirs).
struct Paired<'a> {
    ours: &'a Side,
    theirs: &'a Side,
    pairs: Vec<matching::Pair>,
    /// The reference is a released dataset (not a run).
    released: bool,
}

impl Paired<'_> {
    /// Count and list the run's hard images: matched with a reference hard
    /// image, or only in the run (and why).
    fn place_ours(&self, per: &mut BTreeMap<String, Counts>, out: &mut Comparison) {
        let (ours, theirs, released) = (self.ours, self.theirs, self.released);
        let partner: BTreeMap<usize, &matching::Pair> =
            self.pairs.iter().map(|p| (p.a, p)).collect();
        for (i, image) in ours.images.iter().enumerate() {
            if ours.fates[i] != Fate::Hard {
                continue;
            }
            let c = per.entry(source_key(&image.origin)).or_default();
            c.run_hard += 1;
            let p = partner.get(&i);
            let other = p.map(|p| &theirs.fates[p.b]);
            match p {
                Some(p) if other == Some(&Fate::Hard) => {
                    let reference = theirs.images[p.b].clone();
                    let agreement = Agreement::of(&image.labels, &reference.labels);
                    c.matched += 1;
                    match p.kind {
                        MatchKind::Pixels => c.matched_by_pixels += 1,
                        MatchKind::Perceptual => c.matched_perceptually += 1,
                    }
                    *c.labels.entry(agreement).or_default() += 1;
                    out.matched.push(Matched {
                        run: image.clone(),
                        reference,
                        kind: p.kind,
                        distance: p.distance,
                        labels: agreement,
                    });
                }
                _ => {
                    c.only_in_run += 1;
                    let (mut why, solved_by) = why(other, false, released);
                    if let Some(p) = p.filter(|p| theirs.images[p.b].labels != image.labels) {
                        why.push_str(&format!(
                            " (its labels: {})",
                            crate::labels::describe(&theirs.images[p.b].labels)
                        ));
                    }
                    out.only_in_run.push(OneSided {
                        image: image.clone(),
                        why,
                        solved_by,
                    });
                }
            }
        }
    }

    /// Count the reference's hard images (under the matched run image's
    /// source, where there is one) and list those only in the reference.
    fn place_theirs(&self, per: &mut BTreeMap<String, Counts>, out: &mut Comparison) {
        let (ours, theirs, released) = (self.ours, self.theirs, self.released);
        let partner: BTreeMap<usize, usize> = self.pairs.iter().map(|p| (p.b, p.a)).collect();
        for (j, image) in theirs.images.iter().enumerate() {
            if theirs.fates[j] != Fate::Hard {
                continue;
            }
            let ours_index = partner.get(&j).copied();
            let key = source_key(ours_index.map_or(&image.origin, |i| &ours.images[i].origin));
            let c = per.entry(key).or_default();
            c.reference += 1;
            let ours_fate = ours_index.map(|i| &ours.fates[i]);
            if ours_fate != Some(&Fate::Hard) {
                c.only_in_reference += 1;
                let (mut why, solved_by) = why(ours_fate, true, released);
                if let Some(i) = ours_index.filter(|&i| ours.images[i].labels != image.labels) {
                    why.push_str(&format!(
                        " (our labels: {})",
                        crate::labels::describe(&ours.images[i].labels)
                    ));
                }
                out.only_in_reference.push(OneSided {
                    image: image.clone(),
                    why,
                    solved_by,
                });
            }
        }
    }
}

fn add(total: &mut Counts, c: &Counts) {
    total.run_hard += c.run_hard;
    total.reference += c.reference;
    total.matched += c.matched;
    total.matched_by_pixels += c.matched_by_pixels;
    total.matched_perceptually += c.matched_perceptually;
    total.only_in_run += c.only_in_run;
    total.only_in_reference += c.only_in_reference;
    for (k, v) in &c.labels {
        *total.labels.entry(*k).or_default() += v;
    }
}

impl Comparison {
    /// The comparison as Markdown: the counts per source beside the
    /// paper's, then the disagreements.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# Compare: {} against {}{}\n\nImages matched by content: equal decoded pixels, else \
             perceptual hashes at most {} bits apart. `published`: the paper's count for the \
             source (its final 10,980 images).\n\n",
            self.run,
            self.reference,
            self.reference_revision
                .as_ref()
                .map(|r| format!(" @ {r}"))
                .unwrap_or_default(),
            self.max_distance
        );
        out.push_str(
            "| source | published | reference | run (hard) | matched | by pixels | perceptual \
             | only in run | only in reference | labels exact | other labels |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let row = |name: &str, published: Option<u64>, c: &Counts| {
            let exact = c.labels.get(&Agreement::Exact).copied().unwrap_or(0);
            format!(
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {exact} | {} |\n",
                published.map_or_else(|| "-".to_string(), |n| n.to_string()),
                c.reference,
                c.run_hard,
                c.matched,
                c.matched_by_pixels,
                c.matched_perceptually,
                c.only_in_run,
                c.only_in_reference,
                c.matched - exact,
            )
        };
        for s in &self.per_source {
            out.push_str(&row(&s.source, s.published, &s.counts));
        }
        // The paper's total only where every source is one of the paper's.
        let published: Option<u64> = self.per_source.iter().map(|s| s.published).sum();
        out.push_str(&row("**all**", published, &self.overall));
        out.push_str("\nLabels of the matched images (ours against the reference's):\n\n");
        for (k, n) in &self.overall.labels {
            out.push_str(&format!("- {}: {n}\n", k.name()));
        }
        out.push_str(&self.disagreements_markdown());
        if !self.skipped.is_empty() {
            out.push_str("\n## Not compared\n\n");
            for (reason, n) in &self.skipped {
                out.push_str(&format!("- {reason}: {n}\n"));
            }
        }
        out
    }

    /// The matched images whose labels differ, and each side's one-sided
    /// images with why, as Markdown tables.
    fn disagreements_markdown(&self) -> String {
        let mut out = String::new();
        let names = crate::labels::describe;
        let disagreeing: Vec<&Matched> = self
            .matched
            .iter()
            .filter(|m| m.labels != Agreement::Exact)
            .collect();
        if !disagreeing.is_empty() {
            out.push_str("\n## Matched, labels differ\n\n| run image | our labels | reference image | its labels | agreement | match |\n|---|---|---|---|---|---|\n");
            for m in disagreeing {
                out.push_str(&format!(
                    "| {} ({} #{}) | {} | {} | {} | {} | {} |\n",
                    m.run.id,
                    m.run.origin,
                    m.run.row,
                    names(&m.run.labels),
                    m.reference.id,
                    names(&m.reference.labels),
                    m.labels.name(),
                    match m.kind {
                        MatchKind::Pixels => "pixels".to_string(),
                        MatchKind::Perceptual => format!("perceptual, {} bits", m.distance),
                    }
                ));
            }
        }
        for (title, list) in [
            ("Only in the run", &self.only_in_run),
            ("Only in the reference", &self.only_in_reference),
        ] {
            if list.is_empty() {
                continue;
            }
            out.push_str(&format!(
                "\n## {title}\n\n| image | labels | why |\n|---|---|---|\n"
            ));
            for o in list {
                out.push_str(&format!(
                    "| {} ({} #{}) | {} | {} |\n",
                    o.image.id,
                    o.image.origin,
                    o.image.row,
                    names(&o.image.labels),
                    o.why
                ));
            }
        }
        out
    }
}

/// The contact sheet's file name in `compare/`.
pub(crate) const CONTACT_SHEET: &str = "disagreements.png";

/// Write compare.json, compare.md and (when there is a disagreement) the
/// contact sheet into `dir`; returns the files written.
pub(crate) fn write(
    cmp: &Comparison,
    plan: &Plan,
    reference: &Reference,
    dir: &Path,
) -> Result<Vec<PathBuf>, CompareError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CompareError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let json = dir.join("compare.json");
    crate::util::write_json(&json, cmp).map_err(io(&json))?;
    let md = dir.join("compare.md");
    let mut text = cmp.markdown();
    let sheet = dir.join(CONTACT_SHEET);
    let tiles = disagreement_tiles(cmp, plan, reference)?;
    if !tiles.is_empty() {
        crate::plot::contact_sheet(
            &sheet,
            &format!(
                "{} largest disagreements (labels differ, then only in the reference, then only in the run)",
                tiles.len()
            ),
            &tiles,
        )?;
        text.push_str(&format!(
            "\n![the largest disagreements]({CONTACT_SHEET})\n"
        ));
    }
    crate::util::write_atomic(&md, text.as_bytes()).map_err(io(&md))?;
    let mut files = vec![json, md];
    if !tiles.is_empty() {
        files.push(sheet);
    }
    Ok(files)
}

/// Tiles shown on the contact sheet.
const SHEET_TILES: usize = 24;

/// The largest disagreements, as thumbnails: matched with other labels
/// (disjoint first), then images only the reference kept, then only the run.
fn disagreement_tiles(
    cmp: &Comparison,
    plan: &Plan,
    reference: &Reference,
) -> Result<Vec<(image::RgbImage, String)>, CompareError> {
    let short = |labels: &[i64]| {
        let n: Vec<&str> = labels
            .iter()
            .filter_map(|&l| crate::labels::class_name(l))
            .collect();
        crate::report::truncate(&n.join(", "), 22)
    };
    // (side is run, image, caption)
    let mut picked: Vec<(bool, &Image, String)> = Vec::new();
    let mut matched: Vec<&Matched> = cmp
        .matched
        .iter()
        .filter(|m| m.labels != Agreement::Exact)
        .collect();
    matched.sort_by_key(|m| std::cmp::Reverse(m.labels));
    for m in matched {
        picked.push((
            true,
            &m.run,
            format!(
                "ours: {}\nref: {}",
                short(&m.run.labels),
                short(&m.reference.labels)
            ),
        ));
    }
    for o in &cmp.only_in_reference {
        picked.push((
            false,
            &o.image,
            format!("only ref: {}\n{}", short(&o.image.labels), o.why),
        ));
    }
    for o in &cmp.only_in_run {
        picked.push((
            true,
            &o.image,
            format!("only ours: {}\n{}", short(&o.image.labels), o.why),
        ));
    }
    picked.truncate(SHEET_TILES);
    let mut tiles = Vec::new();
    for (is_run, image, caption) in picked {
        let bytes = match (is_run, reference) {
            (true, _) => image_bytes(plan, image)?,
            (false, Reference::Run(other)) => image_bytes(&other.0, image)?,
            (false, Reference::Dataset(shards)) => dataset_bytes(shards, image.row)?,
        };
        let Some(img) = bytes
            .and_then(|b| crate::zoom::decode_rgb(&b, plan.decode).ok())
            .and_then(|d| image::RgbImage::from_raw(d.width, d.height, d.data))
        else {
            continue;
        };
        tiles.push((crate::plot::thumbnail(&img), caption));
    }
    Ok(tiles)
}

/// A run's image, read again from its source.
fn image_bytes(plan: &Plan, image: &Image) -> Result<Option<Vec<u8>>, CompareError> {
    let Some(source) = plan.sources.iter().find(|s| s.origin == image.origin) else {
        return Ok(None);
    };
    let mut rows = source.reader().rows_in([image.row].into());
    Ok(rows
        .next()
        .transpose()?
        .and_then(Result::ok)
        .map(|r| r.image))
}

/// A reference dataset's row, read again.
fn dataset_bytes(shards: &Shards, row: u64) -> Result<Option<Vec<u8>>, CompareError> {
    let mut rows = crate::eval::shards_source(shards, None).rows_in([row].into());
    Ok(rows
        .next()
        .transpose()
        .map_err(ShardError::from)?
        .and_then(Result::ok)
        .map(|r| r.image))
}
