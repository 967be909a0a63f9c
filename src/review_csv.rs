//! Review decisions on disk: one CSV row per reviewed image,
//! `origin,row,labels,decision,comment,reviewer`. `labels` (ImageNet-1k
//! indices separated by spaces) is what `select --labels` reads: the
//! image's labels after the review, empty when it is dropped. Every change
//! rewrites the whole file atomically, so a reviewer's work survives a
//! closed tab or a killed server, and a restart reads back where it stopped.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a reviewer decided about one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// In the hard set with its labels.
    Keep,
    /// Out of the hard set (wrong label, not a photo, a duplicate...).
    Drop,
    /// In the hard set with other labels.
    Relabel,
    /// Undecided: for a second look (kept with its labels until then).
    Flag,
}

impl Decision {
    pub fn name(self) -> &'static str {
        match self {
            Decision::Keep => "keep",
            Decision::Drop => "drop",
            Decision::Relabel => "relabel",
            Decision::Flag => "flag",
        }
    }

    fn parse(s: &str) -> Option<Decision> {
        match s.trim() {
            "keep" => Some(Decision::Keep),
            "drop" => Some(Decision::Drop),
            "relabel" => Some(Decision::Relabel),
            "flag" => Some(Decision::Flag),
            _ => None,
        }
    }
}

/// One reviewed image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    pub origin: String,
    pub row: u64,
    /// The labels after the review; empty for a drop.
    pub labels: Vec<i64>,
    pub decision: Decision,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub reviewer: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("{file} line {line}: {message}")]
    Line {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The columns, in order; the first three are what `select --labels` needs.
pub(crate) const HEADER: [&str; 6] = ["origin", "row", "labels", "decision", "comment", "reviewer"];

/// Parse a review (or plain relabelling) CSV. The header must start with
/// `origin,row,labels`; `decision`, `comment` and `reviewer` may follow (a
/// file without `decision` reads as keeps and drops by its labels).
pub fn parse(text: &str, file: &Path) -> Result<Vec<Review>, ReviewError> {
    let err = |line: usize, message: String| ReviewError::Line {
        file: file.into(),
        line,
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| err(1, e.to_string()))?
        .iter()
        .map(str::to_string)
        .collect();
    if header.len() < 3 || header[..3] != ["origin", "row", "labels"] {
        return Err(err(
            1,
            "the first line must be the header `origin,row,labels` (then optionally `decision,comment,reviewer`)".into(),
        ));
    }
    let col = |name: &str| header.iter().position(|h| h == name);
    let (decision_col, comment_col, reviewer_col) =
        (col("decision"), col("comment"), col("reviewer"));
    let mut out = Vec::new();
    let mut seen = BTreeMap::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.map_err(|e| err(line, e.to_string()))?;
        if record.iter().all(|f| f.is_empty()) {
            continue;
        }
        let field = |k: Option<usize>| k.and_then(|k| record.get(k)).unwrap_or("").to_string();
        let origin = field(Some(0));
        let row_text = field(Some(1));
        let row: u64 = row_text
            .parse()
            .map_err(|_| err(line, format!("row `{row_text}` is not a row number")))?;
        let mut labels = Vec::new();
        for v in field(Some(2)).split_whitespace() {
            match v.parse::<i64>() {
                Ok(l) if (0..crate::labels::NUM_CLASSES as i64).contains(&l) => labels.push(l),
                _ => {
                    return Err(err(
                        line,
                        format!("label `{v}` is not an ImageNet-1k index 0..999"),
                    ))
                }
            }
        }
        labels.sort_unstable();
        labels.dedup();
        let decision = match decision_col {
            None => {
                if labels.is_empty() {
                    Decision::Drop
                } else {
                    Decision::Keep
                }
            }
            Some(_) => {
                let d = field(decision_col);
                Decision::parse(&d).ok_or_else(|| {
                    err(
                        line,
                        format!("decision `{d}` is not one of keep, drop, relabel, flag"),
                    )
                })?
            }
        };
        if (decision == Decision::Drop) != labels.is_empty() {
            return Err(err(
                line,
                "a drop has no labels, and only a drop: give the labels or decide `drop`".into(),
            ));
        }
        if let Some(first) = seen.insert((origin.clone(), row), line) {
            return Err(err(
                line,
                format!("`{origin}` row {row} is listed twice (first on line {first})"),
            ));
        }
        out.push(Review {
            origin,
            row,
            labels,
            decision,
            comment: field(comment_col),
            reviewer: field(reviewer_col),
        });
    }
    Ok(out)
}

/// The CSV text of `reviews`, sorted by origin and row.
pub(crate) fn to_csv(reviews: &[Review]) -> Result<String, ReviewError> {
    let mut sorted: Vec<&Review> = reviews.iter().collect();
    sorted.sort_by(|a, b| (&a.origin, a.row).cmp(&(&b.origin, b.row)));
    let mut w = csv::Writer::from_writer(Vec::new());
    let bad = |e: csv::Error| ReviewError::Invalid(e.to_string());
    w.write_record(HEADER).map_err(bad)?;
    for r in sorted {
        let labels = r
            .labels
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        w.write_record([
            r.origin.as_str(),
            &r.row.to_string(),
            &labels,
            r.decision.name(),
            &r.comment,
            &r.reviewer,
        ])
        .map_err(bad)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| ReviewError::Invalid(e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| ReviewError::Invalid(e.to_string()))
}

/// A review file: read once, rewritten whole (atomically) on every change.
#[derive(Debug)]
pub(crate) struct ReviewFile {
    path: PathBuf,
    reviews: BTreeMap<(String, u64), Review>,
}

impl ReviewFile {
    /// The decisions in `path` so far (none if it does not exist yet).
    pub fn open(path: &Path) -> Result<ReviewFile, ReviewError> {
        let reviews = match std::fs::read_to_string(path) {
            Ok(text) => parse(&text, path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(ReviewError::Io {
                    file: path.into(),
                    source,
                })
            }
        };
        Ok(ReviewFile {
            path: path.into(),
            reviews: reviews
                .into_iter()
                .map(|r| ((r.origin.clone(), r.row), r))
                .collect(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, origin: &str, row: u64) -> Option<&Review> {
        self.reviews.get(&(origin.to_string(), row))
    }

    pub fn all(&self) -> impl Iterator<Item = &Review> {
        self.reviews.values()
    }

    /// Record (or replace) one decision and write the file before returning.
    pub fn set(&mut self, review: Review) -> Result<(), ReviewError> {
        if (review.decision == Decision::Drop) != review.labels.is_empty() {
            return Err(ReviewError::Invalid(
                "a drop has no labels, and every other decision has some".into(),
            ));
        }
        let key = (review.origin.clone(), review.row);
        let old = self.reviews.insert(key.clone(), review);
        let all: Vec<Review> = self.reviews.values().cloned().collect();
        let written = to_csv(&all).and_then(|text| {
            crate::util::write_atomic(&self.path, text.as_bytes()).map_err(|source| {
                ReviewError::Io {
                    file: self.path.clone(),
                    source,
                }
            })
        });
        if written.is_err() {
            // Nothing is recorded that is not on disk.
            match old {
                Some(o) => self.reviews.insert(key, o),
                None => self.reviews.remove(&key),
            };
        }
        written
    }
}

/// Reviewers disagreeing on one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub origin: String,
    pub row: u64,
    /// Each file's decision: (file, decision, labels).
    pub views: Vec<(String, Decision, Vec<i64>)>,
}

/// Merge several reviewers' files. Where they agree (same decision and
/// labels) the row is taken as is; where only one reviewed an image, its
/// row; where they disagree, the row becomes a `flag` keeping the first
/// file's labels (or the image's, for a first-file drop, taken from any
/// non-drop) with the disagreement in its comment, and is reported.
pub fn merge(files: &[(String, Vec<Review>)]) -> (Vec<Review>, Vec<Conflict>) {
    let mut by_image: BTreeMap<(String, u64), Vec<(&str, &Review)>> = BTreeMap::new();
    for (name, reviews) in files {
        for r in reviews {
            by_image
                .entry((r.origin.clone(), r.row))
                .or_default()
                .push((name.as_str(), r));
        }
    }
    let mut merged = Vec::new();
    let mut conflicts = Vec::new();
    for ((origin, row), views) in by_image {
        let first = views[0].1;
        let agree = views
            .iter()
            .all(|(_, r)| r.decision == first.decision && r.labels == first.labels);
        if agree {
            let mut r = first.clone();
            r.reviewer = views
                .iter()
                .map(|(_, r)| r.reviewer.as_str())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            merged.push(r);
            continue;
        }
        let labels = views
            .iter()
            .map(|(_, r)| &r.labels)
            .find(|l| !l.is_empty())
            .cloned()
            .unwrap_or_default();
        let said: Vec<String> = views
            .iter()
            .map(|(f, r)| {
                let who: &str = if r.reviewer.is_empty() {
                    f
                } else {
                    &r.reviewer
                };
                format!("{who}: {} {:?}", r.decision.name(), r.labels)
            })
            .collect();
        if labels.is_empty() {
            // Everyone dropped it, but with different words: a drop.
            let mut r = first.clone();
            r.comment = format!("reviewers: {}", said.join("; "));
            merged.push(r);
            continue;
        }
        merged.push(Review {
            origin: origin.clone(),
            row,
            labels,
            decision: Decision::Flag,
            comment: format!("conflict: {}", said.join("; ")),
            reviewer: String::new(),
        });
        conflicts.push(Conflict {
            origin,
            row,
            views: views
                .iter()
                .map(|(f, r)| (f.to_string(), r.decision, r.labels.clone()))
                .collect(),
        });
    }
    (merged, conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(origin: &str, row: u64, labels: &[i64], decision: Decision) -> Review {
        Review {
            origin: origin.into(),
            row,
            labels: labels.to_vec(),
            decision,
            comment: String::new(),
            reviewer: "a".into(),
        }
    }

    #[test]
    fn a_file_round_trips_with_commas_and_quotes_in_comments() {
        let mut r = review("imagenet-a", 7, &[308, 1], Decision::Relabel);
        r.comment = "a fly, \"not\" a bee".into();
        let text = to_csv(&[r.clone(), review("sketch", 2, &[], Decision::Drop)]).unwrap();
        assert!(text.starts_with("origin,row,labels,decision,comment,reviewer\n"));
        let back = parse(&text, Path::new("r.csv")).unwrap();
        r.labels = vec![1, 308];
        assert_eq!(back, vec![r, review("sketch", 2, &[], Decision::Drop)]);
    }

    #[test]
    fn a_plain_relabelling_file_still_reads() {
        let back = parse("origin,row,labels\ns,3,5 9\ns,4,\n", Path::new("l.csv")).unwrap();
        assert_eq!(back[0].decision, Decision::Keep);
        assert_eq!(back[1].decision, Decision::Drop);
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, needle) in [
            ("origin,labels\n", "header"),
            ("origin,row,labels\ns,x,1\n", "line 2: row `x`"),
            ("origin,row,labels\ns,1,1000\n", "line 2: label `1000`"),
            (
                "origin,row,labels,decision\ns,1,3,maybe\n",
                "decision `maybe`",
            ),
            (
                "origin,row,labels,decision\ns,1,,keep\n",
                "a drop has no labels",
            ),
            (
                "origin,row,labels\ns,1,3\ns,1,4\n",
                "line 3: `s` row 1 is listed twice (first on line 2)",
            ),
        ] {
            let e = parse(text, Path::new("r.csv")).unwrap_err().to_string();
            assert!(e.contains("r.csv") && e.contains(needle), "{e}");
        }
    }

    #[test]
    fn every_decision_is_on_disk_when_set_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("review.csv");
        let mut f = ReviewFile::open(&path).unwrap();
        f.set(review("s", 1, &[3], Decision::Keep)).unwrap();
        f.set(review("s", 2, &[], Decision::Drop)).unwrap();
        f.set(review("s", 1, &[4], Decision::Relabel)).unwrap();
        let again = ReviewFile::open(&path).unwrap();
        assert_eq!(again.all().count(), 2);
        assert_eq!(again.get("s", 1).unwrap().labels, vec![4]);
        assert!(f.set(review("s", 3, &[], Decision::Keep)).is_err());
        assert!(ReviewFile::open(&path).unwrap().get("s", 3).is_none());
    }

    #[test]
    fn merging_flags_and_reports_disagreements() {
        let a = vec![
            review("s", 1, &[3], Decision::Keep),
            review("s", 2, &[], Decision::Drop),
            review("s", 4, &[7], Decision::Relabel),
        ];
        let mut b = vec![
            review("s", 1, &[3], Decision::Keep),
            review("s", 2, &[5], Decision::Keep),
            review("s", 3, &[1], Decision::Keep),
        ];
        b.iter_mut().for_each(|r| r.reviewer = "b".into());
        let (merged, conflicts) = merge(&[("a.csv".into(), a), ("b.csv".into(), b)]);
        assert_eq!(merged.len(), 4);
        assert_eq!(merged[0].reviewer, "a b", "agreement keeps both names");
        assert_eq!(merged[1].decision, Decision::Flag);
        assert_eq!(merged[1].labels, vec![5]);
        assert!(merged[1].comment.contains("a: drop") && merged[1].comment.contains("b: keep"));
        assert_eq!(conflicts.len(), 1);
        assert_eq!((conflicts[0].origin.as_str(), conflicts[0].row), ("s", 2));
        assert_eq!(merged[2].row, 3);
        assert_eq!(merged[3].decision, Decision::Relabel);
    }
}
