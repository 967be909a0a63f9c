//! What a scan costs before it runs: forward passes per model (images x
//! transforms), and the GPU-hours they take at measured rates, from `bench`
//! JSON files or from the units a run has finished. Pure arithmetic over
//! counts and rates; `plan` and `status` print it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub(crate) enum CostError {
    #[error("{0}: {1}")]
    Read(PathBuf, String),
    #[error("{0}: not an `imagenet-hard bench` JSON document ({1}); make one with `imagenet-hard bench IMAGES --model synthetic --arch A --device cuda --dtype bf16 --measure model,end-to-end`")]
    NotBench(PathBuf, String),
}

/// Crops per second of one architecture, and where the figure comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    pub crops_per_s: f64,
    pub from: String,
}

/// Rates by architecture from `bench` JSON documents: the end-to-end rate
/// where the document has one (the scan's real pace), else model-only.
/// A later file wins for the same architecture.
pub(crate) fn rates_from_bench(files: &[PathBuf]) -> Result<BTreeMap<String, Rate>, CostError> {
    let mut out = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| CostError::Read(file.clone(), e.to_string()))?;
        let doc: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| CostError::NotBench(file.clone(), e.to_string()))?;
        let (arch, rate) = bench_rate(file, &doc)?;
        out.insert(arch, rate);
    }
    Ok(out)
}

fn bench_rate(file: &Path, doc: &serde_json::Value) -> Result<(String, Rate), CostError> {
    let bad = |m: &str| CostError::NotBench(file.into(), m.into());
    let arch = doc["architecture"]
        .as_str()
        .ok_or_else(|| bad("no `architecture`"))?;
    let (kind, rate) = match doc["end_to_end"]["crops_per_s"].as_f64() {
        Some(r) => ("end to end", r),
        None => (
            "model only",
            doc["model_only"]["crops_per_s"]
                .as_f64()
                .ok_or_else(|| bad("no `model_only.crops_per_s`"))?,
        ),
    };
    if !(rate.is_finite() && rate > 0.0) {
        return Err(bad("its rate is not a positive number"));
    }
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let on = [doc["device"].as_str(), doc["dtype"].as_str()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
    Ok((
        arch.to_string(),
        Rate {
            crops_per_s: rate,
            from: format!("{name} ({kind}, {on})"),
        },
    ))
}

/// One model's share of a scan.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCost {
    pub model: String,
    pub architecture: String,
    /// Forward passes; `None` while a source's row count is unknown.
    pub passes: Option<u64>,
    pub rate: Option<Rate>,
}

impl ModelCost {
    pub fn hours(&self) -> Option<f64> {
        Some(self.passes? as f64 / self.rate.as_ref()?.crops_per_s / 3600.0)
    }
}

/// Forward passes of every model: every image under every transform.
/// `images[s]` is source s's row count (`None`: not known yet).
pub(crate) fn model_costs(
    images: &[Option<u64>],
    transforms: usize,
    models: &[(String, String)],
    rates: &BTreeMap<String, Rate>,
) -> Vec<ModelCost> {
    let total: Option<u64> = images.iter().copied().sum();
    models
        .iter()
        .map(|(model, arch)| ModelCost {
            model: model.clone(),
            architecture: arch.clone(),
            passes: total.map(|n| n * transforms as u64),
            rate: rates.get(arch).cloned(),
        })
        .collect()
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The cost as a table: one row per model and a total. `bound` marks the
/// passes as an upper bound (a first-hit scan stops early).
pub fn table(costs: &[ModelCost], bound: bool) -> String {
    let mut out = String::new();
    let at_most = if bound { "at most " } else { "" };
    let _ = writeln!(
        out,
        "model\tarchitecture\tforward passes\tcrops/s\tGPU-hours\trate from"
    );
    for c in costs {
        let passes = c
            .passes
            .map(|p| format!("{at_most}{}", thousands(p)))
            .unwrap_or_else(|| "? (rows not counted)".into());
        let (rate, from) = match &c.rate {
            Some(r) => (format!("{:.0}", r.crops_per_s), r.from.clone()),
            None => ("?".into(), "no rate: pass --rates BENCH.json".into()),
        };
        let hours = c
            .hours()
            .map(|h| format!("{h:.2}"))
            .unwrap_or_else(|| "?".into());
        let _ = writeln!(
            out,
            "{}\t{}\t{passes}\t{rate}\t{hours}\t{from}",
            c.model, c.architecture
        );
    }
    let passes: Option<u64> = costs.iter().map(|c| c.passes).sum();
    let hours: Option<f64> = costs.iter().map(ModelCost::hours).sum();
    let _ = writeln!(
        out,
        "total\t\t{}\t\t{}\t{}",
        passes
            .map(|p| format!("{at_most}{}", thousands(p)))
            .unwrap_or_else(|| "?".into()),
        hours
            .map(|h| format!("{h:.2}"))
            .unwrap_or_else(|| "?".into()),
        if hours.is_some() {
            "one GPU, models one after the other"
        } else {
            "needs every model's rate and every source's rows"
        }
    );
    out
}

/// `3.2 PFLOP`, `540 GFLOP`: three significant digits at most.
fn flops(x: f64) -> String {
    let units = ["", "k", "M", "G", "T", "P", "E", "Z"];
    let mut v = x.max(0.0);
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {}FLOP", units[u])
}

/// One scan mode's projected cost per image (`None`: no sample to project
/// it from) and what the figure rests on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ModeRow {
    pub mode: &'static str,
    pub per_image: Option<crate::pair_order::ModeCost>,
    pub basis: String,
}

/// The scan modes side by side over `images` images: forward passes,
/// FLOPs (two per multiply-add of each model's pass, `gmacs[m]`),
/// GPU-hours where every model's architecture (`archs[m]`) has a rate,
/// and each mode's saving against the first row (exhaustive).
pub(crate) fn mode_table(
    images: Option<u64>,
    rows: &[ModeRow],
    archs: &[String],
    rates: &BTreeMap<String, Rate>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mode\tforward passes\tFLOPs\tGPU-hours\tpasses saved\tFLOPs saved\tfrom"
    );
    let base = rows.first().and_then(|r| r.per_image.clone());
    for row in rows {
        let Some(c) = &row.per_image else {
            let _ = writeln!(out, "{}\t?\t?\t?\t\t\t{}", row.mode, row.basis);
            continue;
        };
        let (passes, tflop, hours) = match images {
            Some(n) => {
                let n = n as f64;
                let hours: Option<f64> = c
                    .per_model
                    .iter()
                    .zip(archs)
                    .map(|(p, a)| Some(p * n / rates.get(a)?.crops_per_s / 3600.0))
                    .sum();
                (
                    thousands((c.passes_per_image * n).round() as u64),
                    flops(2e9 * c.cost_per_image * n),
                    hours.map_or("?".into(), |h| format!("{h:.2}")),
                )
            }
            None => ("?".into(), "?".into(), "?".into()),
        };
        let saved = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.1}x", a / b)
            } else {
                "-".into()
            }
        };
        let (sp, sf) = match &base {
            Some(b) => (
                saved(b.passes_per_image, c.passes_per_image),
                saved(b.cost_per_image, c.cost_per_image),
            ),
            None => (String::new(), String::new()),
        };
        let _ = writeln!(
            out,
            "{}\t{passes}\t{tflop}\t{hours}\t{sp}\t{sf}\t{}",
            row.mode, row.basis
        );
    }
    out
}

/// A unit's size and, once done, what it took.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UnitProgress {
    pub id: usize,
    /// Its models, by name, in plan order.
    pub models: Vec<String>,
    /// Images x transforms x models.
    pub passes: u64,
    /// `(forward passes, seconds)` of the finished unit.
    pub done: Option<(u64, f64)>,
}

/// Where a fanned-out run stands, projected from its finished units.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub(crate) struct RunProjection {
    pub units_done: usize,
    pub units: usize,
    pub seconds_spent: f64,
    /// Seconds the pending units will take at their model groups' measured
    /// rates; `None` while a pending unit's group has no finished unit.
    pub seconds_left: Option<f64>,
}

/// Project the rest of a run from the measured rate (forward passes per
/// second) of each group of models over its finished units.
pub(crate) fn project_run(units: &[UnitProgress]) -> RunProjection {
    let mut rate: BTreeMap<&[String], (u64, f64)> = BTreeMap::new();
    for u in units {
        if let Some((p, s)) = u.done {
            let e = rate.entry(u.models.as_slice()).or_default();
            e.0 += p;
            e.1 += s;
        }
    }
    let mut left = Some(0.0);
    for u in units.iter().filter(|u| u.done.is_none()) {
        let per_s = rate
            .get(u.models.as_slice())
            .filter(|(p, s)| *p > 0 && *s > 0.0)
            .map(|(p, s)| *p as f64 / s);
        left = match (left, per_s) {
            (Some(l), Some(r)) => Some(l + u.passes as f64 / r),
            _ => None,
        };
    }
    RunProjection {
        units_done: units.iter().filter(|u| u.done.is_some()).count(),
        units: units.len(),
        seconds_spent: units.iter().filter_map(|u| u.done.map(|d| d.1)).sum(),
        seconds_left: left,
    }
}

/// `1h 02m`, `3m 05s`, `12s`.
pub(crate) fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        s if s >= 3600 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_table_scales_per_image_costs_and_compares_with_exhaustive() {
        use crate::pair_order::ModeCost;
        let rates: BTreeMap<String, Rate> = [
            ("a".to_string(), rate(100.0)),
            ("b".to_string(), rate(50.0)),
        ]
        .into();
        let archs = ["a".to_string(), "b".to_string()];
        let row = |mode, per_model: [f64; 2]| ModeRow {
            mode,
            per_image: Some(ModeCost {
                passes_per_image: per_model.iter().sum(),
                // Model a: 1 GMAC a pass, b: 3.
                cost_per_image: per_model[0] + 3.0 * per_model[1],
                per_model: per_model.to_vec(),
            }),
            basis: format!("{mode} basis"),
        };
        let rows = [
            row("exhaustive", [10.0, 10.0]),
            row("curate", [1.0, 0.5]),
            ModeRow {
                mode: "first-hit",
                per_image: None,
                basis: "no sample".into(),
            },
        ];
        let t = mode_table(Some(3600), &rows, &archs, &rates);
        // 3,600 images x 20 passes; 2 x 40 GMAC x 3,600 = 288 TFLOP; hours
        // 36,000 / 100 / 3600 + 36,000 / 50 / 3600 = 0.1 + 0.2.
        assert!(
            t.contains("exhaustive\t72,000\t288 TFLOP\t0.30\t1.0x\t1.0x\texhaustive basis"),
            "{t}"
        );
        // 1.5 passes and 2.5 GMAC an image: 13.3x fewer passes, 16.0x
        // fewer FLOPs.
        assert!(
            t.contains("curate\t5,400\t18.0 TFLOP\t0.02\t13.3x\t16.0x\tcurate basis"),
            "{t}"
        );
        assert!(t.contains("first-hit\t?\t?\t?\t\t\tno sample"), "{t}");
        // Unknown rows: no totals; a model without a rate: no hours.
        assert!(mode_table(None, &rows, &archs, &rates).contains("curate\t?\t?\t?\t13.3x"));
        let one: BTreeMap<String, Rate> = [("a".to_string(), rate(100.0))].into();
        assert!(mode_table(Some(1), &rows, &archs, &one).contains("curate\t2\t5.00 GFLOP\t?\t"));
    }

    fn rate(r: f64) -> Rate {
        Rate {
            crops_per_s: r,
            from: "test".into(),
        }
    }

    #[test]
    fn passes_are_images_times_transforms_and_hours_follow_the_rate() {
        let rates: BTreeMap<String, Rate> = [("resnet50".to_string(), rate(18_000.0))].into();
        let models = [
            ("resnet50".to_string(), "resnet50".to_string()),
            ("vgg16".to_string(), "vgg16".to_string()),
        ];
        let costs = model_costs(&[Some(50_000), Some(10_000)], 324, &models, &rates);
        assert_eq!(costs[0].passes, Some(60_000 * 324));
        assert!((costs[0].hours().unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(costs[1].hours(), None, "no rate for vgg16");
        let t = table(&costs, false);
        assert!(
            t.contains("resnet50\tresnet50\t19,440,000\t18000\t0.30\ttest"),
            "{t}"
        );
        assert!(t.contains("total\t\t38,880,000\t\t?"), "{t}");
        let unknown = model_costs(&[Some(5), None], 324, &models, &rates);
        assert_eq!(unknown[0].passes, None);
        assert!(table(&unknown, true).contains("? (rows not counted)"));
        let bound = table(&costs[..1], true);
        assert!(
            bound.contains("at most 19,440,000")
                && bound.contains("total\t\tat most 19,440,000\t\t0.30"),
            "{bound}"
        );
    }

    #[test]
    fn bench_documents_give_end_to_end_rates_first() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        std::fs::write(&a, r#"{"architecture": "resnet18", "device": "cuda:0", "dtype": "bf16", "model_only": {"crops_per_s": 40000.0}, "end_to_end": {"crops_per_s": 30000.0}}"#).unwrap();
        let b = dir.path().join("b.json");
        std::fs::write(&b, r#"{"architecture": "vgg16", "model_only": {"crops_per_s": 9000.0}, "end_to_end": null}"#).unwrap();
        let rates = rates_from_bench(&[a.clone(), b]).unwrap();
        assert_eq!(rates["resnet18"].crops_per_s, 30000.0);
        assert_eq!(rates["resnet18"].from, "a.json (end to end, cuda:0, bf16)");
        assert_eq!(rates["vgg16"].crops_per_s, 9000.0);
        let c = dir.path().join("c.json");
        std::fs::write(&c, r#"{"model_only": {"crops_per_s": 1}}"#).unwrap();
        let e = rates_from_bench(&[c]).unwrap_err().to_string();
        assert!(
            e.contains("c.json") && e.contains("architecture") && e.contains("imagenet-hard bench"),
            "{e}"
        );
        let e = rates_from_bench(&[dir.path().join("missing.json")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.json"), "{e}");
    }

    #[test]
    fn a_run_is_projected_from_its_finished_units_per_model_group() {
        let unit = |id, models: &[&str], passes, done| UnitProgress {
            id,
            models: models.iter().map(|m| m.to_string()).collect(),
            passes,
            done,
        };
        let units = [
            unit(0, &["a"], 1000, Some((1000, 10.0))),
            unit(1, &["b"], 1000, Some((1000, 40.0))),
            unit(2, &["a"], 500, None),
            unit(3, &["b"], 2000, None),
        ];
        let p = project_run(&units);
        assert_eq!((p.units_done, p.units), (2, 4));
        assert_eq!(p.seconds_spent, 50.0);
        // a: 100 passes/s -> 5 s; b: 25 passes/s -> 80 s.
        assert_eq!(p.seconds_left, Some(85.0));
        let unmeasured = project_run(&[unit(0, &["a"], 10, None)]);
        assert_eq!(unmeasured.seconds_left, None);
        assert_eq!(duration(3725.0), "1h 02m");
        assert_eq!(duration(185.0), "3m 05s");
        assert_eq!(duration(12.4), "12s");
    }
}
