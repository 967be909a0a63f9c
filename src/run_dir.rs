//! The run directory: every path a build writes under `output_dir`, named
//! here and nowhere else. Stages ask [`RunDir`] for a path; none joins a
//! run-directory name itself (a test checks).
//!
//! ```text
//! RUN/
//!   plan.json                 the resolved plan (plan)
//!   hub/, demo.lock           the demo's Hub cache and its lock (demo)
//!   scan/units/               per work unit (scan):
//!     uNNNNN.parquet            its records, written whole
//!     uNNNNN.stats.json         its stats: present iff the unit is done
//!     uNNNNN.error.txt          the error of its last failed attempt
//!     uNNNNN.claim              the claim of the worker scanning it
//!   select/                   the hard set (select, dedupe):
//!     selection.json, bounds.md, duplicates.json
//!   dataset/                  the Hub-layout shards and card (export)
//!   report/                   the paper's analyses (report)
//!   review/review.csv         the reviewers' decisions (review)
//!   compare/                  against a reference hard set (compare):
//!     compare.json, compare.md, disagreements.png
//! ```

use std::path::{Path, PathBuf};

/// A run directory's layout, over its root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunDir<'a> {
    root: &'a Path,
}

impl<'a> RunDir<'a> {
    pub fn of(root: &'a Path) -> RunDir<'a> {
        RunDir { root }
    }

    /// `plan.json`.
    pub fn plan(&self) -> PathBuf {
        self.root.join("plan.json")
    }

    /// `hub/`: the demo's Hub cache.
    pub(crate) fn demo_hub(&self) -> PathBuf {
        self.root.join("hub")
    }

    /// `demo.lock`: the demo's fetch lock.
    pub(crate) fn demo_lock(&self) -> PathBuf {
        self.root.join("demo.lock")
    }

    /// `scan/units/`.
    pub fn units(&self) -> PathBuf {
        self.root.join("scan").join("units")
    }

    /// A unit's records.
    pub(crate) fn unit_records(&self, unit: &str) -> PathBuf {
        self.units().join(format!("{unit}.parquet"))
    }

    /// A unit's stats: present iff the unit is done.
    pub(crate) fn unit_stats(&self, unit: &str) -> PathBuf {
        self.units().join(format!("{unit}.stats.json"))
    }

    /// The error of a unit's last failed attempt.
    pub(crate) fn unit_error(&self, unit: &str) -> PathBuf {
        self.units().join(format!("{unit}.error.txt"))
    }

    /// A unit's claim, held by the worker scanning it.
    pub(crate) fn unit_claim(&self, unit: &str) -> PathBuf {
        self.units().join(format!("{unit}.claim"))
    }

    /// `select/`.
    pub fn select(&self) -> PathBuf {
        self.root.join("select")
    }

    /// `select/selection.json`.
    pub fn selection(&self) -> PathBuf {
        self.select().join("selection.json")
    }

    /// `select/bounds.md`.
    pub fn bounds(&self) -> PathBuf {
        self.select().join("bounds.md")
    }

    /// `select/duplicates.json`.
    pub fn duplicates(&self) -> PathBuf {
        self.select().join("duplicates.json")
    }

    /// `dataset/`.
    pub fn dataset(&self) -> PathBuf {
        self.root.join("dataset")
    }

    /// `report/`.
    pub fn report(&self) -> PathBuf {
        self.root.join("report")
    }

    /// `compare/`: a comparison with a reference hard set.
    pub(crate) fn compare(&self) -> PathBuf {
        self.root.join("compare")
    }

    /// `review/review.csv`: the default review file.
    pub(crate) fn review_file(&self) -> PathBuf {
        self.root.join("review").join("review.csv")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_the_documented_one() {
        let r = RunDir::of(Path::new("RUN"));
        let s = |p: PathBuf| p.to_string_lossy().into_owned();
        assert_eq!(s(r.plan()), "RUN/plan.json");
        assert_eq!(s(r.unit_records("u00003")), "RUN/scan/units/u00003.parquet");
        assert_eq!(
            s(r.unit_stats("u00003")),
            "RUN/scan/units/u00003.stats.json"
        );
        assert_eq!(s(r.unit_error("u00003")), "RUN/scan/units/u00003.error.txt");
        assert_eq!(s(r.unit_claim("u00003")), "RUN/scan/units/u00003.claim");
        assert_eq!(s(r.selection()), "RUN/select/selection.json");
        assert_eq!(s(r.bounds()), "RUN/select/bounds.md");
        assert_eq!(s(r.duplicates()), "RUN/select/duplicates.json");
        assert_eq!(s(r.dataset()), "RUN/dataset");
        assert_eq!(s(r.report()), "RUN/report");
        assert_eq!(s(r.review_file()), "RUN/review/review.csv");
        assert_eq!(s(r.compare()), "RUN/compare");
        assert_eq!(s(r.demo_hub()), "RUN/hub");
        assert_eq!(s(r.demo_lock()), "RUN/demo.lock");
    }

    /// No module joins a run-directory name itself.
    #[test]
    fn only_this_module_names_the_layout() {
        let names = [
            "join(\"scan\")",
            "join(\"units\")",
            "join(\"select\")",
            "join(\"dataset\")",
            "join(\"report\")",
            "join(\"review\")",
            "join(\"plan.json\")",
            "join(\"demo.lock\")",
            "join(\"selection.json\")",
            "join(\"duplicates.json\")",
        ];
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = Vec::new();
        for entry in walkdir::WalkDir::new(&src) {
            let entry = entry.unwrap();
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("run_dir.rs") {
                continue;
            }
            let text = std::fs::read_to_string(path).unwrap();
            for name in names {
                if text.contains(name) {
                    offenders.push(format!("{}: {name}", path.display()));
                }
            }
        }
        assert!(offenders.is_empty(), "use RunDir: {offenders:#?}");
    }
}
