//! Report stage: the paper's analyses of a finished run, from the stored
//! scan records and the selection (no model runs): Table 1 (1-crop, 36-crop
//! and all-transform bounds with the greedy cover), scale groups, positional
//! bias (3x3 heatmaps), and a hard-set summary with a contact sheet.
//! Writes `report/report.md`, `report/report.json` and `report/*.png`.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::analysis::{
    anchor_bounds, anchor_counts, greedy_cover, random_baseline, scale_groups, GroupBound, Hits,
};
use crate::plan::Plan;
use crate::select::{load_source, Relabel, ScannedImage, SelectError, Selection};
use crate::zoom::Transform;

/// Greedy picks behind the "36-crop" bound (protocol §3).
pub(crate) const COVER_PICKS: usize = 36;
/// Hard images shown on the contact sheet.
pub(crate) const SHEET_IMAGES: usize = 24;
/// Label suspects the report lists.
pub(crate) const TOP_SUSPECTS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Select(#[from] SelectError),
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    #[error(transparent)]
    Source(#[from] crate::sources::SourceError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the selection was made with labels from {file} (sha256 {expected}), which now reads differently ({found}); rerun `imagenet-hard select --labels <file>`")]
    LabelsChanged {
        file: String,
        expected: String,
        found: String,
    },
}

/// One (source, model) row of Table 1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Table1Row {
    pub origin: String,
    pub model: String,
    pub images: usize,
    pub one_crop: Option<f64>,
    /// Upper bound with the first `COVER_PICKS` greedy picks (not for a
    /// first-hit scan, which did not try every transform).
    pub cover_bound: Option<f64>,
    pub upper_bound: f64,
    /// Greedy picks needed to reach `upper_bound`.
    pub cover_size: Option<usize>,
    /// The first `COVER_PICKS` picks, as transform names.
    pub cover_picks: Vec<String>,
}

/// The random-guess row of a source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RandomRow {
    pub origin: String,
    pub classes: usize,
    pub one_crop: f64,
    pub cover_bound: f64,
    pub upper_bound: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScaleRow {
    pub origin: String,
    pub model: String,
    pub groups: Vec<GroupBound>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BiasRow {
    pub origin: String,
    pub model: String,
    /// Per-anchor upper bound, `[row][col]`, row 0 = top.
    pub anchor_bounds: Vec<Vec<f64>>,
    /// `anchor_bounds` minus the centre cell.
    pub minus_centre: Vec<Vec<f64>>,
    /// How often each anchor is among the first `COVER_PICKS` greedy picks.
    pub pick_counts: Vec<Vec<usize>>,
    pub png: String,
}

/// Per model, how close it came to the hard set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Closest {
    pub model: String,
    /// Hard images this model solves under some transform (0 under `all-fail`).
    pub solves_hard: usize,
    /// Images outside the hard set that only this model solves, with at most
    /// `analysis::NEAR_MISS_TRANSFORMS` transforms: it alone, and barely, kept them out.
    pub near_misses: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HardSummary {
    pub total: usize,
    pub scanned: usize,
    pub per_origin: BTreeMap<String, usize>,
    /// (ImageNet-1k index, name, hard images with that label), most first.
    pub top_labels: Vec<(i64, String, usize)>,
    pub closest: Vec<Closest>,
    pub contact_sheet: Option<String>,
    /// The hard images whose label most likely is wrong, most suspect first
    /// (at most `TOP_SUSPECTS`).
    #[serde(default)]
    pub suspects: Vec<SuspectRow>,
}

/// One label suspect (`crate::suspects`): a hard image and the other class
/// its models agree on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SuspectRow {
    pub origin: String,
    pub row: u64,
    pub id: String,
    pub labels: Vec<i64>,
    /// The agreed class and its name.
    pub class: i64,
    pub name: String,
    pub score: f64,
    /// Models answering `class` most often, of `of`.
    pub models: usize,
    pub of: usize,
    pub near_synonym: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub name: String,
    pub tool_version: String,
    pub rule: String,
    pub scan_mode: crate::manifest::ScanMode,
    #[serde(default)]
    pub scan_dtype: crate::models::Precision,
    pub transforms: usize,
    pub cover_picks: usize,
    pub table1: Vec<Table1Row>,
    pub random: Vec<RandomRow>,
    pub scale_groups: Vec<ScaleRow>,
    pub bias: Vec<BiasRow>,
    /// Mean share of the centre anchor among the greedy picks (uniform = 1/9).
    pub centre_pick_share: f64,
    pub hard: HardSummary,
    /// A curate scan: per source and model, the images that model solved
    /// first (the pair that stopped the image was its).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first_solvers: Vec<FirstSolverRow>,
}

/// One (source, model) count of a curate scan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FirstSolverRow {
    pub origin: String,
    pub model: String,
    /// Images of the source it solved first.
    pub images: usize,
    /// Images of the source scanned.
    pub scanned: usize,
}

pub struct Written {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
}

pub(crate) fn report_dir(run_dir: &Path) -> PathBuf {
    crate::run_dir::RunDir::of(run_dir).report()
}

/// The labels the selection used, read again and checked by hash.
fn selection_labels(selection: &Selection) -> Result<Option<Relabel>, ReportError> {
    let Some(summary) = &selection.relabel else {
        return Ok(None);
    };
    let relabel = Relabel::read(Path::new(&summary.file))?;
    if relabel.sha256 != summary.sha256 {
        return Err(ReportError::LabelsChanged {
            file: summary.file.clone(),
            expected: summary.sha256.clone(),
            found: relabel.sha256,
        });
    }
    Ok(Some(relabel))
}

/// The report's values before anything is drawn or written: the JSON's
/// content and the heatmaps its `bias` rows name.
pub struct Analysis {
    pub report: Report,
    pub heatmaps: Vec<Heatmap>,
}

/// One positional-bias picture: the `report.bias` row it draws (values
/// and file name) and the words around it.
pub struct Heatmap {
    /// Index into `report.bias`.
    pub bias: usize,
    pub title: String,
    pub subtitle: String,
    /// Greedy picks counted in the row's `pick_counts`.
    pub picks: usize,
}

/// Compute every analysis, then write the report folder.
pub fn report(plan: &Plan, selection: &Selection) -> Result<Written, ReportError> {
    let analysis = analyse(plan, selection)?;
    write(plan, selection, &analysis)
}

/// Per-model tables of one run, filled source by source.
#[derive(Default)]
struct Tables {
    table1: Vec<Table1Row>,
    scale_rows: Vec<ScaleRow>,
    bias: Vec<BiasRow>,
    heatmaps: Vec<Heatmap>,
    centre_shares: Vec<f64>,
    first_solvers: Vec<FirstSolverRow>,
}

/// What every model's rows are computed against.
struct Context<'a> {
    plan: &'a Plan,
    models: Vec<String>,
    names: Vec<String>,
    one_crop: Option<usize>,
    /// A first-hit scan stopped at each image's first correct transform:
    /// the bounds hold, the transform-by-transform analyses do not.
    exhaustive: bool,
}

impl Tables {
    /// A curate scan stopped every model at the first hit of any: only who
    /// solved each image first is known (its one correct pair).
    fn add_first_solvers(&mut self, cx: &Context, origin: &str, images: &[ScannedImage]) {
        let mut counts = vec![0usize; cx.models.len()];
        for im in images {
            if let Some(m) = im.correct.iter().position(|c| c.iter().any(|&x| x)) {
                counts[m] += 1;
            }
        }
        for (model, n) in cx.models.iter().zip(counts) {
            self.first_solvers.push(FirstSolverRow {
                origin: origin.to_string(),
                model: model.clone(),
                images: n,
                scanned: images.len(),
            });
        }
    }

    /// Table 1's row of model `mi` on one source and, for an exhaustive
    /// scan, its scale groups and positional bias.
    fn add_model(&mut self, cx: &Context, origin: &str, mi: usize, images: &[ScannedImage]) {
        let grid = &cx.plan.grid;
        let model = &cx.models[mi];
        let hits = Hits::from_rows(
            images.iter().map(|im| im.correct[mi].as_slice()),
            grid.len(),
        );
        let cover = cx.exhaustive.then(|| greedy_cover(&hits));
        self.table1.push(Table1Row {
            origin: origin.to_string(),
            model: model.clone(),
            images: images.len(),
            one_crop: cx.one_crop.map(|t| hits.bound([t])),
            cover_bound: cover.as_ref().map(|c| c.bound_at(COVER_PICKS)),
            upper_bound: hits.upper_bound(),
            cover_size: cover.as_ref().map(|c| c.picks.len()),
            cover_picks: cover
                .iter()
                .flat_map(|c| c.picks.iter().take(COVER_PICKS))
                .map(|&t| cx.names[t].clone())
                .collect(),
        });
        let Some(cover) = cover else { return };
        self.scale_rows.push(ScaleRow {
            origin: origin.to_string(),
            model: model.clone(),
            groups: scale_groups(&hits, grid),
        });
        let bounds = anchor_bounds(&hits, grid);
        let first: Vec<usize> = cover.picks.iter().take(COVER_PICKS).copied().collect();
        let counts = anchor_counts(&first, grid);
        let n = bounds.len();
        let centre = bounds[n / 2][n / 2];
        if !first.is_empty() {
            self.centre_shares
                .push(counts[n / 2][n / 2] as f64 / first.len() as f64);
        }
        let png = format!(
            "bias-{}-{}.png",
            crate::util::file_stem(origin),
            crate::util::file_stem(model)
        );
        self.heatmaps.push(Heatmap {
            bias: self.bias.len(),
            title: format!("{model} on {origin}"),
            subtitle: format!(
                "per-anchor upper bound (rows top to bottom) over {} scales, {} images; first {} greedy picks",
                grid.scales.len(),
                images.len(),
                first.len()
            ),
            picks: first.len(),
        });
        self.bias.push(BiasRow {
            origin: origin.to_string(),
            model: model.clone(),
            minus_centre: bounds
                .iter()
                .map(|r| r.iter().map(|v| v - centre).collect())
                .collect(),
            anchor_bounds: bounds,
            pick_counts: counts,
            png,
        });
    }
}

/// Per model: hard images it solves under some transform, and (exhaustive
/// scans) the images outside the hard set that it alone barely solves.
fn count_closest(
    closest: &mut [Closest],
    images: &[ScannedImage],
    is_hard: impl Fn(u64) -> bool,
    exhaustive: bool,
) {
    for im in images {
        if is_hard(im.row) {
            for (c, row) in closest.iter_mut().zip(&im.correct) {
                c.solves_hard += row.iter().any(|&x| x) as usize;
            }
        } else if exhaustive {
            if let Some(m) = crate::analysis::near_miss_solver(&im.correct) {
                closest[m].near_misses += 1;
            }
        }
    }
}

/// A source's hard images with a label suspect, as report rows beside
/// their suspects (for ranking).
fn suspect_rows(
    images: &[ScannedImage],
    origin: &str,
    is_hard: impl Fn(u64) -> bool,
    models: usize,
) -> Vec<(SuspectRow, crate::suspects::Suspect)> {
    let found = crate::select::source_suspects(images, is_hard);
    found
        .into_iter()
        .map(|(i, s)| {
            let im = &images[i];
            let row = SuspectRow {
                origin: origin.to_string(),
                row: im.row,
                id: im.id.clone(),
                labels: im.labels.clone(),
                class: s.class,
                name: crate::labels::class_name(s.class)
                    .unwrap_or("?")
                    .to_string(),
                score: s.score,
                models: s.models,
                of: models,
                near_synonym: s.near_synonym,
            };
            (row, s)
        })
        .collect()
}

/// The 20 labels most hard images carry: (index, name, images), most first.
fn top_labels(selection: &Selection) -> Vec<(i64, String, usize)> {
    let mut label_counts: BTreeMap<i64, usize> = BTreeMap::new();
    for h in &selection.hard {
        for &l in &h.labels {
            *label_counts.entry(l).or_default() += 1;
        }
    }
    let mut top: Vec<(i64, String, usize)> = label_counts
        .into_iter()
        .map(|(l, n)| {
            (
                l,
                crate::labels::class_name(l).unwrap_or("?").to_string(),
                n,
            )
        })
        .collect();
    top.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    top.truncate(20);
    top
}

/// Every analysis of the run as values, from the stored records (nothing
/// is written).
pub fn analyse(plan: &Plan, selection: &Selection) -> Result<Analysis, ReportError> {
    let relabel = selection_labels(selection)?;
    let grid = &plan.grid;
    let cx = Context {
        plan,
        models: plan.model_names(),
        names: grid.transforms().iter().map(Transform::to_string).collect(),
        one_crop: grid.index_of(Transform::ONE_CROP),
        exhaustive: plan.scan_mode == crate::manifest::ScanMode::Exhaustive,
    };
    let curate = plan.scan_mode == crate::manifest::ScanMode::Curate;
    let hard_rows: BTreeSet<(&str, u64)> = selection
        .hard
        .iter()
        .map(|h| (h.origin.as_str(), h.row))
        .collect();
    let mut tables = Tables::default();
    let mut random = Vec::new();
    let mut closest: Vec<Closest> = cx
        .models
        .iter()
        .map(|m| Closest {
            model: m.clone(),
            solves_hard: 0,
            near_misses: 0,
        })
        .collect();
    let mut suspects = Vec::new();
    for source in &plan.sources {
        let (images, _, _) = load_source(plan, source, relabel.as_ref())?;
        let classes = source.class_subset.class_count();
        random.push(RandomRow {
            origin: source.origin.clone(),
            classes,
            one_crop: random_baseline(1, classes),
            cover_bound: random_baseline(COVER_PICKS.min(grid.len()), classes),
            upper_bound: random_baseline(grid.len(), classes),
        });
        if curate {
            tables.add_first_solvers(&cx, &source.origin, &images);
            continue;
        }
        for mi in 0..cx.models.len() {
            tables.add_model(&cx, &source.origin, mi, &images);
        }
        let origin = source.origin.as_str();
        let is_hard = |row| hard_rows.contains(&(origin, row));
        count_closest(&mut closest, &images, is_hard, cx.exhaustive);
        suspects.extend(suspect_rows(&images, origin, is_hard, cx.models.len()));
    }
    let order = crate::suspects::most_suspect_first(
        &suspects.iter().map(|(_, s)| Some(s)).collect::<Vec<_>>(),
    );
    let suspects: Vec<SuspectRow> = order
        .into_iter()
        .take(TOP_SUSPECTS)
        .map(|i| suspects[i].0.clone())
        .collect();
    let shares = &tables.centre_shares;
    let report = Report {
        name: plan.name.clone(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        rule: selection.rule.describe(),
        scan_mode: plan.scan_mode,
        scan_dtype: plan.scan_dtype,
        transforms: grid.len(),
        cover_picks: COVER_PICKS,
        table1: tables.table1,
        random,
        scale_groups: tables.scale_rows,
        bias: tables.bias,
        centre_pick_share: if shares.is_empty() {
            0.0
        } else {
            shares.iter().sum::<f64>() / shares.len() as f64
        },
        hard: HardSummary {
            total: selection.hard.len(),
            scanned: selection.scanned.values().sum(),
            per_origin: selection.hard_per_origin(),
            top_labels: top_labels(selection),
            closest,
            contact_sheet: (!selection.hard.is_empty()).then(|| CONTACT_SHEET.to_string()),
            suspects,
        },
        first_solvers: tables.first_solvers,
    };
    Ok(Analysis {
        report,
        heatmaps: tables.heatmaps,
    })
}

/// The contact sheet's file name in the report folder.
const CONTACT_SHEET: &str = "hard-contact-sheet.png";

/// Draw the analysis' pictures and write `report.json` and `report.md`.
pub fn write(
    plan: &Plan,
    selection: &Selection,
    analysis: &Analysis,
) -> Result<Written, ReportError> {
    let dir = report_dir(&plan.run_dir);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io { path, source }
    };
    std::fs::create_dir_all(&dir)
        .and_then(|()| crate::util::remove_stale_temps(&dir).map(drop))
        .map_err(io(&dir))?;
    let mut files = Vec::new();
    for h in &analysis.heatmaps {
        let row = &analysis.report.bias[h.bias];
        let path = dir.join(&row.png);
        let (bounds, counts) = (&row.anchor_bounds, &row.pick_counts);
        crate::plot::bias_heatmap(&path, &h.title, &h.subtitle, bounds, counts, h.picks)?;
        files.push(path);
    }
    if let Some(name) = &analysis.report.hard.contact_sheet {
        write_contact_sheet(plan, selection, &dir.join(name))?;
        files.push(dir.join(name));
    }
    let json = dir.join("report.json");
    crate::util::write_json(&json, &analysis.report).map_err(io(&json))?;
    let md = dir.join("report.md");
    let text = analysis.report.markdown(plan);
    crate::util::write_atomic(&md, text.as_bytes()).map_err(io(&md))?;
    files.push(json);
    files.push(md);
    Ok(Written { dir, files })
}

/// Thumbnails of up to `SHEET_IMAGES` hard images spread over the hard set,
/// read again from the sources.
fn write_contact_sheet(plan: &Plan, selection: &Selection, path: &Path) -> Result<(), ReportError> {
    let n = selection.hard.len();
    let take = n.min(SHEET_IMAGES);
    let picked: Vec<&crate::select::HardImage> =
        (0..take).map(|i| &selection.hard[i * n / take]).collect();
    let mut tiles = Vec::new();
    for source in &plan.sources {
        let rows: BTreeSet<u64> = picked
            .iter()
            .filter(|h| h.origin == source.origin)
            .map(|h| h.row)
            .collect();
        if rows.is_empty() {
            continue;
        }
        for outcome in source.reader().rows_in(rows) {
            let Ok(rec) = outcome? else { continue };
            let Some(h) = picked
                .iter()
                .find(|h| h.origin == source.origin && h.row == rec.row)
            else {
                continue;
            };
            let Some(img) = crate::zoom::decode_rgb(&rec.image, plan.decode)
                .ok()
                .and_then(|d| image::RgbImage::from_raw(d.width, d.height, d.data))
            else {
                continue;
            };
            let thumb = crate::plot::thumbnail(&img);
            let names: Vec<&str> = h
                .labels
                .iter()
                .filter_map(|&l| crate::labels::class_name(l))
                .collect();
            let mut caption = format!("{} #{}", source.origin, h.row);
            caption.push('\n');
            caption.push_str(&truncate(&names.join(", "), 26));
            tiles.push((thumb, caption));
        }
    }
    crate::plot::contact_sheet(
        path,
        &format!(
            "{} of {} hard images (labels: english_label)",
            tiles.len(),
            n
        ),
        &tiles,
    )?;
    Ok(())
}

pub(crate) fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

fn pct(v: f64) -> String {
    format!("{:.2}", 100.0 * v)
}

impl Report {
    /// The report as Markdown.
    pub(crate) fn markdown(&self, plan: &Plan) -> String {
        let k = COVER_PICKS.min(self.transforms);
        let mut out = format!(
            "# Report: {}\n\nWritten by imagenet-hard {} from the stored scan records. \
             Rule: {}. Grid: {} transforms ({} scales x {}x{} anchors, {} px crops).\n\n",
            self.name,
            self.tool_version,
            self.rule,
            self.transforms,
            plan.grid.scales.len(),
            plan.grid.anchors,
            plan.grid.anchors,
            plan.grid.crop_size
        );
        if self.scan_dtype != crate::models::Precision::F32 {
            out.push_str(&format!(
                "Models computed in **{}** (`scan.dtype`).\n\n",
                self.scan_dtype
            ));
        }
        if self.scan_mode == crate::manifest::ScanMode::FirstHit {
            out.push_str(
                "**First-hit scan**: each model stopped at its first correct transform, so the \
                 1-crop and all-transform bounds and the hard set are exact, but the greedy \
                 cover, scale groups and positional bias need an exhaustive scan and are left \
                 out.\n\n",
            );
        }
        if self.scan_mode == crate::manifest::ScanMode::Curate {
            out.push_str(&self.curate_section(plan));
        } else {
            self.bound_sections(plan, k, &mut out);
        }
        out.push_str(&self.hard_section());
        out
    }

    /// What a curate scan can say, and what it cannot.
    fn curate_section(&self, plan: &Plan) -> String {
        let mut out = String::from(
            "**Curate scan**: (model, transform) pairs were tried in a learned order and every \
             model stopped at the first hit of any, so the hard set is exact but no model was \
             run on every transform. Not given: Table 1 (1-crop, greedy-cover and all-transform \
             bounds per model), scale groups and positional bias; scan exhaustively for them.\n\n",
        );
        if let Some(c) = &plan.curate {
            out.push_str(&format!(
                "Order learned from {} ({} sample images), {} pairs.\n\n",
                c.learned_from,
                c.sample_images,
                c.pairs.len()
            ));
        }
        out.push_str("## Who solved first\n\nPer source, the images each model solved first (the pair that stopped the image was its).\n\n| source | model | solved first | scanned |\n|---|---|---:|---:|\n");
        for r in &self.first_solvers {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                r.origin, r.model, r.images, r.scanned
            ));
        }
        out.push('\n');
        out
    }

    /// Table 1, scale groups and positional bias.
    fn bound_sections(&self, plan: &Plan, k: usize, out: &mut String) {
        out.push_str(&format!(
            "## Table 1: accuracy with 1, {k} (greedy) and {} (all) crops (%)\n\n\
             1-crop is `r1c1s256`. The {k}-crop bound takes the first {k} transforms of a greedy \
             set cover: each step adds the transform that solves the most images not yet solved, \
             ties going to the earliest transform in canonical order (anchor row, then column, \
             then scale, ascending). \"cover\" is how many greedy picks reach the all-transform \
             bound. The random row is k guesses over the source's classes, capped at 100.\n\n",
            self.transforms
        ));
        for source in &plan.sources {
            out.push_str(&format!(
                "### {}\n\n| model | images | 1-crop | {k}-crop (greedy) | {}-crop (all) | cover |\n|---|---:|---:|---:|---:|---:|\n",
                source.origin, self.transforms
            ));
            for r in self.table1.iter().filter(|r| r.origin == source.origin) {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    r.model,
                    r.images,
                    r.one_crop.map(pct).unwrap_or_else(|| "n/a".into()),
                    r.cover_bound.map(pct).unwrap_or_else(|| "n/a".into()),
                    pct(r.upper_bound),
                    r.cover_size
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "n/a".into())
                ));
            }
            if let Some(r) = self.random.iter().find(|r| r.origin == source.origin) {
                out.push_str(&format!(
                    "| random ({} classes) | | {} | {} | {} | |\n",
                    r.classes,
                    pct(r.one_crop),
                    pct(r.cover_bound),
                    pct(r.upper_bound)
                ));
            }
            out.push('\n');
        }
        out.push_str(
            "## Scale groups (%)\n\nUpper bound using only zoom-out (S < crop), only S = crop, \
             only zoom-in (S > crop), and the share of all images solved by that group alone.\n\n\
             | source | model | zoom-out | S = crop | zoom-in | only zoom-out | only S = crop | only zoom-in |\n\
             |---|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.scale_groups {
            let g = |i: usize| r.groups.get(i);
            let ub = |i: usize| g(i).map(|x| pct(x.upper_bound)).unwrap_or_default();
            let only = |i: usize| g(i).map(|x| pct(x.only)).unwrap_or_default();
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.origin,
                r.model,
                ub(0),
                ub(1),
                ub(2),
                only(0),
                only(1),
                only(2)
            ));
        }
        out.push_str(&format!(
            "\n## Positional bias\n\nPer-anchor upper bound (%, row 0 = top): the share of images \
             some scale at that anchor solves; in brackets the difference to the centre. Below \
             each, how often each anchor is among the first {k} greedy picks. Mean share of the \
             centre among the picks: {:.2}% (uniform: {:.2}%).\n\n",
            100.0 * self.centre_pick_share,
            100.0 / (plan.grid.anchors as f64).powi(2)
        ));
        for b in &self.bias {
            out.push_str(&format!(
                "### {} on {}\n\n![]({})\n\n",
                b.model, b.origin, b.png
            ));
            let n = b.anchor_bounds.len();
            out.push_str(&format!("|{}\n|{}\n", " |".repeat(n), "---|".repeat(n)));
            for (r, row) in b.anchor_bounds.iter().enumerate() {
                let cells: Vec<String> = row
                    .iter()
                    .enumerate()
                    .map(|(c, &v)| {
                        format!(
                            "{} ({:+.2}); {} picks",
                            pct(v),
                            100.0 * b.minus_centre[r][c],
                            b.pick_counts[r][c]
                        )
                    })
                    .collect();
                out.push_str(&format!("| {} |\n", cells.join(" | ")));
            }
            out.push('\n');
        }
    }

    /// Counts of the hard set, its labels, which models came closest, the
    /// label suspects.
    fn hard_section(&self) -> String {
        let mut out = String::new();
        let h = &self.hard;
        out.push_str(&format!(
            "## Hard set\n\n{} of {} scanned images are hard.\n\n| origin | hard |\n|---|---:|\n",
            h.total, h.scanned
        ));
        for (o, n) in &h.per_origin {
            out.push_str(&format!("| {o} | {n} |\n"));
        }
        out.push_str("\nMost frequent labels among the hard images:\n\n| label | name | images |\n|---:|---|---:|\n");
        for (l, name, n) in &h.top_labels {
            out.push_str(&format!("| {l} | {name} | {n} |\n"));
        }
        out.push_str(&format!(
            "\nWhich models came closest: `solves hard` counts hard images a model solves under \
             some transform (0 for every model under `all-fail`); `near misses` counts images \
             outside the hard set that only this model solves, with at most {} \
             transforms.\n\n| model | solves hard | near misses |\n|---|---:|---:|\n",
            crate::analysis::NEAR_MISS_TRANSFORMS
        ));
        for c in &h.closest {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                c.model, c.solves_hard, c.near_misses
            ));
        }
        if let Some(sheet) = &h.contact_sheet {
            out.push_str(&format!("\n![hard images]({sheet})\n"));
        }
        out.push_str(&suspects_section(&h.suspects));
        out
    }
}

/// The label suspects as Markdown: what to check first in a review.
fn suspects_section(rows: &[SuspectRow]) -> String {
    let mut out = String::from(
        "\n## Label suspects\n\nHard images whose label most likely is wrong: the models keep \
         answering one other class (of those the source uses as labels). Score: the mean share \
         of each model's answers naming it, times the share of models answering it most often \
         (1 = every model, every transform). `review` shows them first with \
         `most suspect first`; a near-synonym (same WordNet parent) suggests adding the class \
         rather than replacing the label.\n\n",
    );
    if rows.is_empty() {
        out.push_str("No hard image has one.\n");
        return out;
    }
    out.push_str("| image | labels | models agree on | score | models | near-synonym |\n|---|---|---|---:|---:|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} ({} #{}) | {} | {} {} | {:.2} | {} of {} | {} |\n",
            r.id,
            r.origin,
            r.row,
            crate::labels::describe(&r.labels),
            r.class,
            r.name,
            r.score,
            r.models,
            r.of,
            if r.near_synonym { "yes" } else { "" }
        ));
    }
    out
}
