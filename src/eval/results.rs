//! Evaluation results as files: one leaderboard CSV row per run (appended
//! with `--csv`, merged from JSON reports with `--merge`) and one CSV row
//! per image (`--per-sample`).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{EvalError, EvalReport};

/// Columns of a leaderboard row; top1 and top5 in percent.
pub(crate) const LEADERBOARD_HEADER: &str =
    "model,model_provenance,dataset,dataset_revision,tta,aggregate,images,top1,top5,tool_version";

/// Columns of a per-sample row; labels and top5 space-separated.
pub(crate) const PER_SAMPLE_HEADER: &str = "id,origin,labels,prediction,correct,top5";

/// A CSV field, quoted when it holds a comma, quote or line break.
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn join_numbers<T: ToString>(xs: &[T]) -> String {
    xs.iter().map(T::to_string).collect::<Vec<_>>().join(" ")
}

/// The leaderboard row of one report (no trailing newline).
pub(crate) fn leaderboard_row(r: &EvalReport) -> String {
    let fields = [
        r.model.clone(),
        r.model_provenance.clone(),
        r.dataset.clone(),
        r.dataset_revision.clone().unwrap_or_default(),
        r.config.tta.name().to_string(),
        r.config
            .aggregate
            .map(|a| a.name().to_string())
            .unwrap_or_default(),
        r.overall.images.to_string(),
        format!("{:.2}", 100.0 * r.overall.top1),
        format!("{:.2}", 100.0 * r.overall.top5),
        r.tool_version.clone(),
    ];
    fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",")
}

fn io_err(file: &Path) -> impl Fn(std::io::Error) -> EvalError + '_ {
    move |error| EvalError::Io {
        file: file.into(),
        error,
    }
}

/// Append `report`'s row to `file`, writing the header first when the file
/// is new or empty. An existing file must have the same header.
pub(crate) fn append_csv(file: &Path, report: &EvalReport) -> Result<(), EvalError> {
    let existing = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(file)(e)),
    };
    let mut out = String::new();
    match existing.lines().next() {
        None => out.push_str(&format!("{LEADERBOARD_HEADER}\n")),
        Some(first) if first == LEADERBOARD_HEADER => {
            if !existing.ends_with('\n') {
                out.push('\n');
            }
        }
        Some(first) => {
            return Err(EvalError::CsvHeader {
                file: file.into(),
                found: first.to_string(),
            })
        }
    }
    out.push_str(&leaderboard_row(report));
    out.push('\n');
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(io_err(file))?;
    f.write_all(out.as_bytes()).map_err(io_err(file))
}

/// An eval JSON report written by `eval --json`.
fn read_report(file: &Path) -> Result<EvalReport, EvalError> {
    let text = std::fs::read_to_string(file).map_err(io_err(file))?;
    serde_json::from_str(&text).map_err(|e| EvalError::Json {
        file: file.into(),
        message: e.to_string(),
    })
}

/// Read eval JSON reports into a leaderboard: one row per (model, dataset,
/// dataset revision, tta, aggregate), best top-1 first. The same key in two
/// files is an error naming both.
pub fn merge(files: &[PathBuf]) -> Result<String, EvalError> {
    let mut reports: Vec<(PathBuf, EvalReport)> = Vec::new();
    for file in files {
        let report = read_report(file)?;
        let key = |r: &EvalReport| {
            (
                r.model.clone(),
                r.dataset.clone(),
                r.dataset_revision.clone(),
                r.config.tta,
                r.config.aggregate,
            )
        };
        if let Some((first, _)) = reports.iter().find(|(_, r)| key(r) == key(&report)) {
            return Err(EvalError::DuplicateResult {
                first: first.clone(),
                second: file.clone(),
            });
        }
        reports.push((file.clone(), report));
    }
    reports.sort_by(|(_, a), (_, b)| {
        b.overall
            .top1
            .total_cmp(&a.overall.top1)
            .then_with(|| a.model.cmp(&b.model))
            .then_with(|| a.dataset.cmp(&b.dataset))
    });
    let mut out = format!("{LEADERBOARD_HEADER}\n");
    for (_, r) in &reports {
        out.push_str(&leaderboard_row(r));
        out.push('\n');
    }
    Ok(out)
}

/// Eval JSON reports side by side: one row per origin (and `all`), for
/// each report its top-1 % and seconds per image. Columns are named by the
/// report's TTA (and aggregate), in the order given.
pub fn compare(files: &[PathBuf]) -> Result<String, EvalError> {
    let mut reports = Vec::new();
    for file in files {
        let report = read_report(file)?;
        reports.push(report);
    }
    let name = |r: &EvalReport| match r.config.aggregate {
        Some(a) => format!("{} {}", r.config.tta.name(), a.name()),
        None => r.config.tta.name().to_string(),
    };
    let mut out = String::from("| origin | images |");
    let mut rule = String::from("|---|---:|");
    for r in &reports {
        out.push_str(&format!(" {} top-1 % | {} s/image |", name(r), name(r)));
        rule.push_str("---:|---:|");
    }
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    let mut origins: Vec<&String> = reports.iter().flat_map(|r| r.per_origin.keys()).collect();
    origins.sort();
    origins.dedup();
    let row = |label: &str, pick: &dyn Fn(&EvalReport) -> Option<super::Score>| {
        // One count when every report scored the same images, else each.
        let mut counts: Vec<String> = reports
            .iter()
            .map(|r| pick(r).map_or("-".into(), |s| s.images.to_string()))
            .collect();
        counts.dedup();
        let mut line = format!("| {label} | {} |", counts.join(" / "));
        for r in &reports {
            match pick(r) {
                Some(s) => line.push_str(&format!(
                    " {:.2} | {:.3} |",
                    100.0 * s.top1,
                    s.seconds_per_image
                )),
                None => line.push_str(" - | - |"),
            }
        }
        line + "\n"
    };
    for origin in origins {
        out.push_str(&row(origin, &|r| r.per_origin.get(origin).cloned()));
    }
    out.push_str(&row("**all**", &|r| Some(r.overall.clone())));
    Ok(out)
}

/// One image's outcome.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    /// `image.path`, or `<origin>/<row>` when the row has none.
    pub id: String,
    pub origin: String,
    pub labels: Vec<i64>,
    /// Top-1 class.
    pub prediction: usize,
    pub correct: bool,
    pub top5: Vec<usize>,
}

impl Sample {
    /// The CSV row (no trailing newline).
    pub(crate) fn csv_row(&self) -> String {
        [
            csv_field(&self.id),
            csv_field(&self.origin),
            join_numbers(&self.labels),
            self.prediction.to_string(),
            self.correct.to_string(),
            join_numbers(&self.top5),
        ]
        .join(",")
    }
}

/// `--per-sample FILE`: rows written as images are scored, in dataset order.
pub(crate) struct PerSampleWriter {
    file: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
}

impl PerSampleWriter {
    pub fn create(file: &Path) -> Result<PerSampleWriter, EvalError> {
        if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let f = std::fs::File::create(file).map_err(io_err(file))?;
        let mut w = PerSampleWriter {
            file: file.into(),
            out: std::io::BufWriter::new(f),
        };
        writeln!(w.out, "{PER_SAMPLE_HEADER}").map_err(io_err(file))?;
        Ok(w)
    }

    pub fn write(&mut self, sample: &Sample) -> Result<(), EvalError> {
        writeln!(self.out, "{}", sample.csv_row()).map_err(io_err(&self.file))
    }

    pub fn finish(mut self) -> Result<(), EvalError> {
        self.out.flush().map_err(io_err(&self.file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_or_quotes_are_quoted() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn sample_rows_space_separate_lists() {
        let s = Sample {
            id: "x,1.png".into(),
            origin: "imagenet-a".into(),
            labels: vec![3, 7],
            prediction: 7,
            correct: true,
            top5: vec![7, 3, 0, 1, 2],
        };
        assert_eq!(s.csv_row(), "\"x,1.png\",imagenet-a,3 7,7,true,7 3 0 1 2");
    }
}
