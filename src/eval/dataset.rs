//! Which Parquet shards `eval` reads: `data/validation-XXXXX-of-YYYYY[-hash].parquet`
//! in a local folder or a Hub dataset repo. The Hub copy of ImageNet-Hard
//! keeps stale shard families beside the current one; the card's
//! `num_examples` singles out the current one.

use std::path::{Path, PathBuf};

use super::EvalError;
use crate::sources::SourceError;

/// A dataset in the ImageNet-Hard schema that cannot be read, with the fix
/// for someone who pointed `eval` or `compare` at it (not the manifest keys
/// a source's errors name).
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(
        "{file}: no column `{column}` (columns: {available}); a dataset in the ImageNet-Hard \
         schema has image, label (list<int64>) and origin, as `imagenet-hard export` writes it \
         and taesiri/imagenet-hard holds it"
    )]
    Schema {
        file: PathBuf,
        column: String,
        available: String,
    },
    #[error(
        "{file}: not a readable Parquet shard ({message}); check the file, or point at a folder \
         holding data/validation-XXXXX-of-YYYYY.parquet"
    )]
    Shard { file: PathBuf, message: String },
    #[error(transparent)]
    Source(SourceError),
}

impl From<SourceError> for ShardError {
    fn from(e: SourceError) -> ShardError {
        match e {
            SourceError::MissingColumn {
                file,
                column,
                available,
                ..
            } => ShardError::Schema {
                file,
                column,
                available,
            },
            SourceError::Parquet { file, message } => ShardError::Shard { file, message },
            other => ShardError::Source(other),
        }
    }
}
use crate::hub::{is_repo_id, Hub, RepoKind};

/// One complete `-of-YYYYY` family: shards 0..count, all present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Family {
    /// YYYYY, the number of shards.
    pub count: usize,
    /// File names, in shard order.
    pub names: Vec<String>,
}

/// The shards chosen for an evaluation, and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Shards {
    /// The folder, or the Hub repo id.
    pub dataset: String,
    /// The Hub commit the files were read at; `None` for a local folder.
    pub revision: Option<String>,
    /// Local paths to read, in shard order.
    pub files: Vec<PathBuf>,
    /// The files as recorded in results: local paths, or paths in the repo.
    pub names: Vec<String>,
    /// Shard count of the family used.
    pub family: usize,
    /// Rows in the family, when it was counted (several families present).
    pub rows: Option<u64>,
    /// Shard counts of the other complete families, left unread as stale.
    pub stale: Vec<usize>,
}

/// Parse `validation-00003-of-00009[-hash].parquet` -> (3, 9).
fn shard_numbers(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("validation-")?.strip_suffix(".parquet")?;
    let mut parts = rest.split('-');
    let index = parts.next()?.parse().ok()?;
    (parts.next()? == "of").then_some(())?;
    let count = parts.next()?.parse().ok()?;
    Some((index, count))
}

/// The complete shard families among `names` (file names), the one with
/// the most shards first. A shard index present twice (two hashes) makes
/// its family ambiguous, so it is not complete.
pub(crate) fn complete_families<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<Family> {
    use std::collections::BTreeMap;
    let mut by_count: BTreeMap<usize, Vec<(usize, &str)>> = BTreeMap::new();
    for name in names {
        if let Some((index, count)) = shard_numbers(name) {
            by_count.entry(count).or_default().push((index, name));
        }
    }
    let mut out: Vec<Family> = by_count
        .into_iter()
        .filter_map(|(count, mut shards)| {
            shards.sort();
            let indices_ok = shards.iter().map(|(i, _)| *i).eq(0..count);
            indices_ok.then(|| Family {
                count,
                names: shards.into_iter().map(|(_, n)| n.to_string()).collect(),
            })
        })
        .collect();
    out.reverse();
    out
}

/// `num_examples:` from a dataset card's YAML (the first one: the card of
/// a one-split dataset has one).
pub(crate) fn card_num_examples(card: &str) -> Option<u64> {
    card.lines()
        .find_map(|l| l.trim().strip_prefix("num_examples:"))
        .and_then(|v| v.trim().parse().ok())
}

fn family_list(families: &[Family]) -> String {
    families
        .iter()
        .map(|f| format!("-of-{:05}", f.count))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A family opened for reading: its local files and their row count
/// (`None` if a footer could not be read).
type Opened = (Vec<PathBuf>, Option<u64>);

/// Pick the family to read. One complete family is used as it is; among
/// several, the first (most shards first) whose row count equals the card's
/// `num_examples`. `open` makes a family's files local (a Hub download)
/// and counts its rows; it is called only as far as needed.
fn choose(
    dataset: &str,
    families: Vec<Family>,
    expected: Option<u64>,
    mut open: impl FnMut(&Family) -> Result<Opened, EvalError>,
) -> Result<(Family, Opened, Vec<usize>), EvalError> {
    let layout = |message: String| EvalError::Layout {
        dataset: dataset.into(),
        message,
    };
    if let [only] = families.as_slice() {
        let opened = open(only)?;
        return Ok((only.clone(), opened, Vec::new()));
    }
    if families.is_empty() {
        return Err(layout(
            "no complete family of data/validation-XXXXX-of-YYYYY.parquet shards; \
             check that every shard 00000..YYYYY-1 of one family is there"
                .into(),
        ));
    }
    let Some(expected) = expected else {
        return Err(layout(format!(
            "{} complete shard families ({}) and no `num_examples:` in README.md to choose between them; \
             remove the stale files or add the card",
            families.len(),
            family_list(&families)
        )));
    };
    let mut counted = Vec::new();
    for (k, family) in families.iter().enumerate() {
        let opened = open(family)?;
        if opened.1 == Some(expected) {
            let stale = families
                .iter()
                .filter(|f| f.count != family.count)
                .map(|f| f.count)
                .collect();
            return Ok((families[k].clone(), opened, stale));
        }
        counted.push(format!(
            "-of-{:05}: {}",
            family.count,
            opened
                .1
                .map_or_else(|| "unreadable".to_string(), |n| format!("{n} rows"))
        ));
    }
    Err(layout(format!(
        "no complete shard family has the card's num_examples ({expected}) rows ({}); \
         remove the stale files or fix README.md",
        counted.join(", ")
    )))
}

fn parquet_rows(file: &Path) -> Option<u64> {
    let f = std::fs::File::open(file).ok()?;
    let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).ok()?;
    Some(b.metadata().file_metadata().num_rows() as u64)
}

fn count_rows(files: &[PathBuf]) -> Option<u64> {
    files.iter().map(|f| parquet_rows(f)).sum()
}

/// The shards of a local dataset folder (`DIR/data/`, card `DIR/README.md`).
pub(crate) fn local_shards(dir: &Path) -> Result<Shards, EvalError> {
    let dataset = dir.display().to_string();
    let data = dir.join("data");
    let entries = std::fs::read_dir(&data).map_err(|e| EvalError::Layout {
        dataset: dataset.clone(),
        message: format!("no data/ folder ({e}); expected data/validation-XXXXX-of-YYYYY.parquet"),
    })?;
    let names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let families = complete_families(names.iter().map(String::as_str));
    let expected = std::fs::read_to_string(dir.join("README.md"))
        .ok()
        .and_then(|card| card_num_examples(&card));
    let (family, (files, rows), stale) = choose(&dataset, families, expected, |f| {
        let files: Vec<PathBuf> = f.names.iter().map(|n| data.join(n)).collect();
        let rows = count_rows(&files);
        Ok((files, rows))
    })?;
    Ok(Shards {
        dataset,
        revision: None,
        names: files.iter().map(|f| f.display().to_string()).collect(),
        files,
        family: family.count,
        rows: (!stale.is_empty()).then_some(rows).flatten(),
        stale,
    })
}

/// The shards of Hub dataset `repo` at `revision`: resolve the commit, list
/// its files, read the card, download one family at a time (most shards
/// first) until one matches. Works offline from a filled cache
/// (`HF_HUB_OFFLINE=1`).
pub(crate) fn hub_shards(hub: &Hub, repo: &str, revision: &str) -> Result<Shards, EvalError> {
    let hub_err = |error| EvalError::Hub {
        repo: repo.into(),
        error: Box::new(error),
    };
    let commit = hub
        .resolve_commit(RepoKind::Dataset, repo, revision)
        .map_err(hub_err)?;
    let listed = hub
        .list_files(RepoKind::Dataset, repo, &commit)
        .map_err(hub_err)?;
    let names: Vec<&str> = listed
        .iter()
        .filter_map(|p| p.strip_prefix("data/"))
        .filter(|n| !n.contains('/'))
        .collect();
    let families = complete_families(names);
    let expected = if families.len() > 1 && listed.iter().any(|p| p == "README.md") {
        let card = hub
            .file(RepoKind::Dataset, repo, &commit, "README.md")
            .map_err(hub_err)?;
        let text = std::fs::read_to_string(&card).map_err(|error| EvalError::Io {
            file: card.clone(),
            error,
        })?;
        card_num_examples(&text)
    } else {
        None
    };
    let dataset = format!("{repo}@{commit}");
    let (family, (files, rows), stale) = choose(&dataset, families, expected, |f| {
        let mut files = Vec::with_capacity(f.names.len());
        for name in &f.names {
            let path = format!("data/{name}");
            files.push(
                hub.file(RepoKind::Dataset, repo, &commit, &path)
                    .map_err(hub_err)?,
            );
        }
        let rows = count_rows(&files);
        Ok((files, rows))
    })?;
    Ok(Shards {
        dataset: repo.into(),
        revision: Some(commit),
        names: family.names.iter().map(|n| format!("data/{n}")).collect(),
        files,
        family: family.count,
        rows: (!stale.is_empty()).then_some(rows).flatten(),
        stale,
    })
}

/// DATASET as given on the command line: an existing folder, else a Hub
/// dataset id `owner/name` read at `revision`.
pub fn resolve(dataset: &str, hub: &Hub, revision: &str) -> Result<Shards, EvalError> {
    let path = Path::new(dataset);
    if path.exists() {
        return local_shards(path);
    }
    if !is_repo_id(dataset) {
        return Err(EvalError::NoDataset(dataset.into()));
    }
    hub_shards(hub, dataset, revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_parse_with_and_without_hash() {
        assert_eq!(
            shard_numbers("validation-00002-of-00009.parquet"),
            Some((2, 9))
        );
        assert_eq!(
            shard_numbers("validation-00000-of-00005-36efe923955f51bb.parquet"),
            Some((0, 5))
        );
        assert_eq!(shard_numbers("train-00000-of-00001.parquet"), None);
    }

    #[test]
    fn families_are_complete_and_most_shards_first() {
        let names = [
            "validation-00000-of-00002.parquet",
            "validation-00001-of-00002.parquet",
            "validation-00002-of-00003-ab.parquet",
            "validation-00000-of-00003-ab.parquet",
            "validation-00001-of-00003-cd.parquet",
            // Incomplete: shard 1 missing.
            "validation-00000-of-00004.parquet",
            "validation-00002-of-00004.parquet",
            "validation-00003-of-00004.parquet",
            "README.md",
        ];
        let f = complete_families(names);
        assert_eq!(f.iter().map(|f| f.count).collect::<Vec<_>>(), vec![3, 2]);
        assert_eq!(
            f[0].names,
            vec![
                "validation-00000-of-00003-ab.parquet",
                "validation-00001-of-00003-cd.parquet",
                "validation-00002-of-00003-ab.parquet"
            ]
        );
        // Shard 1 twice (two hashes): ambiguous, not complete.
        let twice = [
            "validation-00000-of-00002-a.parquet",
            "validation-00001-of-00002-a.parquet",
            "validation-00001-of-00002-b.parquet",
        ];
        assert!(complete_families(twice).is_empty());
    }

    #[test]
    fn card_count_is_read_from_the_yaml() {
        let card = "---\ndataset_info:\n  splits:\n  - name: validation\n    num_bytes: 9\n    num_examples: 10980\n---\n";
        assert_eq!(card_num_examples(card), Some(10980));
        assert_eq!(card_num_examples("no yaml"), None);
    }

    fn fam(count: usize) -> Family {
        Family {
            count,
            names: (0..count).map(|i| format!("s{i}")).collect(),
        }
    }

    #[test]
    fn the_card_count_picks_among_families_opening_only_what_is_needed() {
        let rows = |f: &Family| -> Option<u64> { Some(if f.count == 3 { 5 } else { 3 }) };
        let mut opened = Vec::new();
        let (chosen, (_, n), stale) = choose("d", vec![fam(3), fam(2)], Some(3), |f| {
            opened.push(f.count);
            Ok((Vec::new(), rows(f)))
        })
        .unwrap();
        assert_eq!((chosen.count, n, stale), (2, Some(3), vec![3]));
        assert_eq!(opened, vec![3, 2]);

        let mut opened = Vec::new();
        let (chosen, _, stale) = choose("d", vec![fam(3), fam(2)], Some(5), |f| {
            opened.push(f.count);
            Ok((Vec::new(), rows(f)))
        })
        .unwrap();
        assert_eq!((chosen.count, stale, opened), (3, vec![2], vec![3]));

        let err = choose("d", vec![fam(3), fam(2)], Some(4), |f| {
            Ok((Vec::new(), rows(f)))
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("num_examples (4)") && err.contains("-of-00003: 5 rows"),
            "{err}"
        );
        let err = choose("d", vec![fam(3), fam(2)], None, |_| unreachable!())
            .unwrap_err()
            .to_string();
        assert!(err.contains("-of-00003, -of-00002"), "{err}");
    }

    #[test]
    fn one_complete_family_is_chosen_over_a_partial_one() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        for name in [
            "validation-00000-of-00002.parquet",
            "validation-00001-of-00002.parquet",
            "validation-00000-of-00003-ab.parquet",
        ] {
            std::fs::write(data.join(name), b"").unwrap();
        }
        let shards = local_shards(dir.path()).unwrap();
        assert_eq!(shards.files.len(), 2);
        assert!(shards.files[0].ends_with("validation-00000-of-00002.parquet"));
        assert_eq!((shards.family, shards.stale.len()), (2, 0));
        std::fs::remove_file(data.join("validation-00001-of-00002.parquet")).unwrap();
        let err = local_shards(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no complete family"), "{err}");
    }

    #[test]
    fn a_name_that_is_neither_folder_nor_repo_id_is_refused() {
        let hub = Hub::new(crate::hub::HubConfig {
            cache_dir: "/nonexistent".into(),
            endpoint: "http://127.0.0.1:9".into(),
            token: None,
            offline: true,
        });
        let err = resolve("no-such-folder", &hub, "main")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no-such-folder") && err.contains("owner/name"),
            "{err}"
        );
    }
}
