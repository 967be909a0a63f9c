//! Fetch stage: resolve every Hub revision to a commit, download (or find in
//! the cache) every file, hash it, and write or check the lock file.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::hub::HubFiles;
use crate::hub::{sha256_file, Hub, HubError, RepoKind};
use crate::manifest::Manifest;

/// The lock file: what `fetch` resolved, checked by every later run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    #[serde(rename = "repo", default)]
    pub repos: Vec<LockedRepo>,
    #[serde(rename = "url", default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<LockedUrl>,
}

/// A file fetched from a plain URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedUrl {
    pub url: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedRepo {
    pub kind: RepoKind,
    pub id: String,
    pub revision: String,
    pub commit: String,
    #[serde(rename = "file")]
    pub files: Vec<LockedFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lock file {lock}: cannot parse: {message}; delete it and run `imagenet-hard fetch` to recreate it")]
    BadLock { lock: PathBuf, message: String },
    #[error(
        "{what} does not match the lock file {lock}: locked {locked}, found {found}. \
         If the change is intended, delete the lock and run `imagenet-hard fetch`; otherwise re-download the file"
    )]
    Mismatch {
        what: String,
        lock: PathBuf,
        locked: String,
        found: String,
    },
    #[error("{repo}@{commit}: `{pattern}` matches no file{hint}; check `files` in the manifest")]
    NoMatch {
        repo: String,
        commit: String,
        pattern: String,
        hint: String,
    },
    #[error("{repo} `{file}`: sha256 {found} differs from the manifest's pinned {expected}; the download is corrupt or the pin is wrong")]
    PinnedHash {
        repo: String,
        file: String,
        expected: String,
        found: String,
    },
}

/// `found` (a full hex sha256) matches a pinned hash or hash prefix.
fn hash_matches(pinned: &str, found: &str) -> bool {
    pinned.len() >= 8
        && found.len() == 64
        && found
            .to_ascii_lowercase()
            .starts_with(&pinned.to_ascii_lowercase())
}

/// Whether a `files` entry is a glob pattern rather than one path.
pub(crate) fn is_pattern(f: &str) -> bool {
    f.contains(['*', '?', '['])
}

/// The file paths `h.files` names at `commit`: plain paths as they are,
/// patterns matched against the lock's files for this repo when there is a
/// lock entry (no network), else against the repository's file list; each
/// pattern's matches in natural order (`2.tar` before `10.tar`).
fn expand_patterns(
    hub: &Hub,
    kind: RepoKind,
    h: &HubFiles,
    commit: &str,
    locked: Option<&LockedRepo>,
) -> Result<Vec<String>, FetchError> {
    let from_lock: Vec<String> = locked
        .map(|r| r.files.iter().map(|f| f.path.clone()).collect())
        .unwrap_or_default();
    let mut from_hub: Option<Vec<String>> = None;
    let mut out: Vec<String> = Vec::new();
    for f in &h.files {
        if !is_pattern(f) {
            out.push(f.clone());
            continue;
        }
        let pattern = glob::Pattern::new(f).map_err(|e| FetchError::NoMatch {
            repo: h.repo.clone(),
            commit: commit.into(),
            pattern: f.clone(),
            hint: format!(" ({e})"),
        })?;
        let mut matched = matching(&pattern, &from_lock);
        if matched.is_empty() {
            if from_hub.is_none() {
                from_hub = Some(hub.list_files(kind, &h.repo, commit)?);
            }
            matched = matching(&pattern, from_hub.as_deref().unwrap_or_default());
        }
        if matched.is_empty() {
            return Err(FetchError::NoMatch {
                repo: h.repo.clone(),
                commit: commit.into(),
                pattern: f.clone(),
                hint: if hub.config().offline {
                    " in the offline cache (HF_HUB_OFFLINE is set)".into()
                } else {
                    String::new()
                },
            });
        }
        for m in matched {
            if !out.iter().any(|o| o == m) {
                out.push(m.to_string());
            }
        }
    }
    Ok(out)
}

/// The paths `pattern` matches (`*` does not cross `/`), in shard order
/// (`2.tar` before `10.tar`).
pub fn matching<'a, S: AsRef<str>>(pattern: &glob::Pattern, paths: &'a [S]) -> Vec<&'a str> {
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..Default::default()
    };
    let mut out: Vec<&str> = paths
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| pattern.matches_with(p, options))
        .collect();
    out.sort_by(|a, b| crate::sources::natural_cmp(a, b));
    out
}

/// Download (or find) a URL file, check it against its pin and the lock.
pub(crate) fn fetch_url(
    hub: &Hub,
    u: &crate::hub::UrlFile,
    existing: Option<&Lock>,
    lock_file: &Path,
) -> Result<(PathBuf, LockedUrl), FetchError> {
    let locked = existing.and_then(|l| l.urls.iter().find(|l| l.url == u.url));
    // A download is checked against the lock's full hash, else the pin.
    let pin = locked.map_or(u.sha256.as_str(), |l| l.sha256.as_str());
    let path = hub.url_file(&u.url, u.file_name(), Some(pin))?;
    let (sha256, size) = sha256_file(&path).map_err(|source| FetchError::Io {
        path: path.clone(),
        source,
    })?;
    if !hash_matches(&u.sha256, &sha256) {
        return Err(FetchError::PinnedHash {
            repo: u.url.clone(),
            file: path.display().to_string(),
            expected: u.sha256.clone(),
            found: sha256,
        });
    }
    if let Some(locked) = locked {
        if locked.sha256 != sha256 || locked.size != size {
            return Err(FetchError::Mismatch {
                what: format!("{} ({})", u.url, path.display()),
                lock: lock_file.into(),
                locked: format!("sha256 {} ({} bytes)", locked.sha256, locked.size),
                found: format!("sha256 {sha256} ({size} bytes)"),
            });
        }
    }
    Ok((
        path,
        LockedUrl {
            url: u.url.clone(),
            size,
            sha256,
        },
    ))
}

/// Local paths of every input, in manifest order.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub source_files: Vec<Vec<PathBuf>>,
    /// Per model: the weights first, then any further files of its repo.
    pub model_files: Vec<Vec<PathBuf>>,
    /// Where derived files (e.g. cached classifier heads, URL downloads) go.
    pub tool_cache: PathBuf,
    pub lock: Lock,
}

impl Lock {
    /// Hex sha256 of the lock's canonical TOML: names the exact inputs of a build.
    pub fn hash(&self) -> String {
        use sha2::Digest;
        let text = toml::to_string(self).unwrap_or_default();
        crate::util::hex(&sha2::Sha256::digest(text.as_bytes()))
    }

    fn find(&self, kind: RepoKind, id: &str, revision: &str) -> Option<&LockedRepo> {
        self.repos
            .iter()
            .find(|r| r.kind == kind && r.id == id && r.revision == revision)
    }
}

/// Where the lock of a manifest lives: beside it, `<stem>.lock`.
pub fn lock_path(manifest_file: &Path) -> PathBuf {
    manifest_file.with_extension("lock")
}

pub(crate) fn read_lock(path: &Path) -> Result<Option<Lock>, FetchError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| FetchError::BadLock {
                lock: path.into(),
                message: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FetchError::Io {
            path: path.into(),
            source,
        }),
    }
}

pub(crate) fn write_lock(path: &Path, lock: &Lock) -> Result<(), FetchError> {
    let text = format!(
        "# Written by `imagenet-hard fetch`: the resolved commit, size and sha256 of every input.\n\
         # Later runs refuse inputs that differ. Commit it beside the manifest.\n\n{}",
        toml::to_string(lock).map_err(|e| FetchError::BadLock { lock: path.into(), message: e.to_string() })?
    );
    crate::util::write_atomic(path, text.as_bytes()).map_err(|source| FetchError::Io {
        path: path.into(),
        source,
    })
}

/// Resolve `h.revision` (or the commit its lock entry pinned), download or
/// find every file, and check each against the manifest's pins and the lock.
pub(crate) fn fetch_hub(
    hub: &Hub,
    kind: RepoKind,
    h: &HubFiles,
    existing: Option<&Lock>,
    lock_file: &Path,
) -> Result<(LockedRepo, Vec<PathBuf>), FetchError> {
    let locked = existing.and_then(|l| l.find(kind, &h.repo, &h.revision));
    // A locked commit pins a moving revision (e.g. `main`) to what was fetched.
    let revision = locked
        .map(|r| r.commit.clone())
        .unwrap_or_else(|| h.revision.clone());
    let commit = hub.resolve_commit(kind, &h.repo, &revision)?;
    let names = expand_patterns(hub, kind, h, &commit, locked)?;
    let mut files = Vec::new();
    let mut paths = Vec::new();
    for f in &names {
        let locked_file = locked.and_then(|r| r.files.iter().find(|lf| &lf.path == f));
        let pin = locked_file
            .map(|lf| lf.sha256.as_str())
            .or(h.sha256.get(f).map(String::as_str));
        let path = hub.file_pinned(kind, &h.repo, &commit, f, pin)?;
        let (sha256, size) = sha256_file(&path).map_err(|source| FetchError::Io {
            path: path.clone(),
            source,
        })?;
        if let Some(expected) = h.sha256.get(f) {
            if !hash_matches(expected, &sha256) {
                return Err(FetchError::PinnedHash {
                    repo: h.repo.clone(),
                    file: f.clone(),
                    expected: expected.clone(),
                    found: sha256,
                });
            }
        }
        if let Some(lf) = locked_file {
            if lf.sha256 != sha256 || lf.size != size {
                return Err(FetchError::Mismatch {
                    what: format!("{} `{}` ({})", h.repo, f, path.display()),
                    lock: lock_file.into(),
                    locked: format!("sha256 {} ({} bytes)", lf.sha256, lf.size),
                    found: format!("sha256 {sha256} ({size} bytes)"),
                });
            }
        }
        files.push(LockedFile {
            path: f.clone(),
            size,
            sha256,
        });
        paths.push(path);
    }
    let entry = LockedRepo {
        kind,
        id: h.repo.clone(),
        revision: h.revision.clone(),
        commit,
        files,
    };
    Ok((entry, paths))
}

/// Resolve and hash every input of `manifest`. With `existing`, every file
/// must match it. Local `path` inputs are used as they are.
pub fn fetch(
    manifest: &Manifest,
    manifest_dir: &Path,
    hub: &Hub,
    existing: Option<&Lock>,
    lock_file: &Path,
) -> Result<Fetched, FetchError> {
    let mut lock = Lock::default();
    let mut get = |kind: RepoKind, h: &HubFiles| -> Result<Vec<PathBuf>, FetchError> {
        let (LockedRepo { commit, files, .. }, paths) =
            fetch_hub(hub, kind, h, existing, lock_file)?;
        // One entry per repo and revision, even when several tables use it.
        let same =
            |r: &&mut LockedRepo| r.kind == kind && r.id == h.repo && r.revision == h.revision;
        match lock.repos.iter_mut().find(same) {
            Some(entry) => {
                for f in files {
                    if !entry.files.contains(&f) {
                        entry.files.push(f);
                    }
                }
            }
            None => lock.repos.push(LockedRepo {
                kind,
                id: h.repo.clone(),
                revision: h.revision.clone(),
                commit,
                files,
            }),
        }
        Ok(paths)
    };
    let mut source_files = Vec::new();
    for s in &manifest.sources {
        source_files.push(match &s.hub {
            Some(h) => get(RepoKind::Dataset, h)?,
            None => s.path.iter().map(|p| manifest_dir.join(p)).collect(),
        });
    }
    let mut model_files = Vec::new();
    let mut urls = Vec::new();
    for m in &manifest.models {
        model_files.push(match (&m.hub, &m.url, &m.path) {
            (Some(h), _, _) => get(RepoKind::Model, h)?,
            (None, Some(u), _) => {
                let (path, locked) = fetch_url(hub, u, existing, lock_file)?;
                urls.push(locked);
                vec![path]
            }
            (None, None, Some(p)) => vec![manifest_dir.join(p)],
            (None, None, None) => {
                return Err(FetchError::Io {
                    path: manifest_dir.into(),
                    source: std::io::Error::other(format!(
                        "model `{}` has neither `hub` nor `path`",
                        m.name
                    )),
                })
            }
        });
    }
    lock.urls = urls;
    Ok(Fetched {
        source_files,
        model_files,
        tool_cache: hub.tool_cache_dir(),
        lock,
    })
}

/// A model named on the command line, resolved to weights on disk.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedModel {
    pub name: String,
    pub architecture: crate::models::Architecture,
    pub weights: PathBuf,
    pub extras: crate::models::Extras,
    pub eval: crate::models::EvalPreprocess,
    pub provenance: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ModelRefError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("--model {0}: a local weights file needs --arch (one of: {1})")]
    NeedArch(String, String),
    #[error("unknown architecture `{0}`; known: {1}")]
    UnknownArch(String, String),
    #[error("--model {0}: not a registry name ({1}), not an existing file, and not an `owner/name` Hub repo id")]
    Unknown(String, String),
    #[error("{file}: {message}")]
    Config { file: PathBuf, message: String },
}

/// Resolve `--model`: a registry name, a local safetensors file (with
/// `arch`), or a Hub repo id whose `config.json` names the architecture
/// (timm `architecture`, transformers `architectures`) and, for timm, the
/// preprocessing (`pretrained_cfg`).
pub(crate) fn resolve_model(
    model: &str,
    arch: Option<&str>,
    revision: &str,
    hub: &Hub,
) -> Result<ResolvedModel, ModelRefError> {
    if let Some(entry) = crate::models::lookup(model) {
        return registry_model(&entry, hub);
    }
    let local = Path::new(model);
    if local.is_file() {
        let a = arch.ok_or_else(|| {
            ModelRefError::NeedArch(model.into(), crate::models::Architecture::known())
        })?;
        return local_model(local, parse_arch(a)?);
    }
    if !crate::hub::is_repo_id(model) {
        let names = crate::models::registry()
            .iter()
            .map(|e| e.name)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ModelRefError::Unknown(model.into(), names));
    }
    hub_model(model, arch, revision, hub)
}

fn parse_arch(a: &str) -> Result<crate::models::Architecture, ModelRefError> {
    crate::models::Architecture::find(a)
        .ok_or_else(|| ModelRefError::UnknownArch(a.into(), crate::models::Architecture::known()))
}

/// A registry entry's weights and extra files, fetched at its pin.
fn registry_model(
    entry: &crate::models::RegistryEntry,
    hub: &Hub,
) -> Result<ResolvedModel, ModelRefError> {
    use crate::models::WeightSource;
    let (weights, files, provenance) = match &entry.source {
        WeightSource::Hub(h) => {
            let (LockedRepo { commit, .. }, mut paths) =
                fetch_hub(hub, RepoKind::Model, h, None, Path::new("-"))?;
            let weights = paths.remove(0);
            (weights, paths, format!("{}@{}", h.repo, commit))
        }
        WeightSource::Url(u) => (
            fetch_url(hub, u, None, Path::new("-"))?.0,
            Vec::new(),
            u.url.clone(),
        ),
    };
    let files = files
        .into_iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            (name.unwrap_or_default(), p)
        })
        .collect();
    Ok(ResolvedModel {
        name: entry.name.into(),
        architecture: entry.architecture,
        weights,
        extras: crate::models::Extras {
            files,
            cache_dir: Some(hub.tool_cache_dir()),
        },
        eval: entry.eval,
        provenance,
    })
}

/// A local weights file; the files its architecture needs besides the
/// weights (a tokenizer, a config) are taken from the weights' folder.
fn local_model(
    local: &Path,
    architecture: crate::models::Architecture,
) -> Result<ResolvedModel, ModelRefError> {
    let folder = local.parent().unwrap_or(Path::new("."));
    let files = architecture
        .spec()
        .extra_files
        .iter()
        .map(|f| (f.to_string(), folder.join(f)))
        .filter(|(_, p)| p.is_file())
        .collect();
    Ok(ResolvedModel {
        name: local
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| local.display().to_string()),
        architecture,
        weights: local.into(),
        extras: crate::models::Extras {
            files,
            cache_dir: None,
        },
        eval: crate::models::EvalPreprocess::TORCHVISION,
        provenance: local.display().to_string(),
    })
}

/// A Hub repo whose `config.json` names the architecture (unless `arch`
/// does) and, for timm, the preprocessing.
fn hub_model(
    model: &str,
    arch: Option<&str>,
    revision: &str,
    hub: &Hub,
) -> Result<ResolvedModel, ModelRefError> {
    let commit = hub.resolve_commit(RepoKind::Model, model, revision)?;
    let config_path = hub.file(RepoKind::Model, model, &commit, "config.json")?;
    let cfg_err = |message: String| ModelRefError::Config {
        file: config_path.clone(),
        message,
    };
    let text = std::fs::read_to_string(&config_path).map_err(|e| cfg_err(e.to_string()))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| cfg_err(e.to_string()))?;
    let arch_name = match arch {
        Some(a) => a.to_string(),
        None => config["architecture"]
            .as_str()
            .or_else(|| config["architectures"][0].as_str())
            .ok_or_else(|| cfg_err("names no `architecture`; pass --arch".into()))?
            .to_string(),
    };
    let architecture = parse_arch(&arch_name)?;
    let weights = hub.file(RepoKind::Model, model, &commit, "model.safetensors")?;
    let mut files = std::collections::BTreeMap::new();
    for f in architecture.spec().extra_files {
        files.insert(f.to_string(), hub.file(RepoKind::Model, model, &commit, f)?);
    }
    Ok(ResolvedModel {
        name: model.into(),
        architecture,
        weights,
        extras: crate::models::Extras {
            files,
            cache_dir: Some(hub.tool_cache_dir()),
        },
        eval: eval_from_timm_config(&config["pretrained_cfg"]),
        provenance: format!("{model}@{commit}"),
    })
}

/// timm's `pretrained_cfg`: crop = input_size[1], resize = floor(crop / crop_pct).
fn eval_from_timm_config(cfg: &serde_json::Value) -> crate::models::EvalPreprocess {
    use crate::models::EvalPreprocess;
    use crate::zoom::Interpolation;
    let mut pre = EvalPreprocess::TORCHVISION;
    if let Some(crop) = cfg["input_size"][1].as_u64() {
        pre.crop = crop as u32;
        pre.resize = crop as u32;
    }
    let crop_pct = cfg["crop_pct"].as_f64().unwrap_or(0.875);
    pre.resize = (pre.crop as f64 / crop_pct).floor() as u32;
    if cfg["interpolation"].as_str() == Some("bicubic") {
        pre.interpolation = Interpolation::Bicubic;
    }
    let triple = |v: &serde_json::Value| -> Option<[f32; 3]> {
        let a = v.as_array()?;
        Some([
            a.first()?.as_f64()? as f32,
            a.get(1)?.as_f64()? as f32,
            a.get(2)?.as_f64()? as f32,
        ])
    };
    if let Some(m) = triple(&cfg["mean"]) {
        pre.mean = m;
    }
    if let Some(s) = triple(&cfg["std"]) {
        pre.std = s;
    }
    pre
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bench --model synthetic --arch clip_vit_large_patch14`'s path with a
    /// small image tower: the files beside the weights are found, the
    /// zero-shot head is made, and crops get 1000 finite logits.
    #[test]
    fn a_generated_clip_classifies_from_a_local_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut vision = crate::models::clip::vit_large_patch14().vision_config;
        vision.embed_dim = 32;
        vision.intermediate_size = 64;
        vision.num_hidden_layers = 1;
        vision.num_attention_heads = 2;
        let weights = crate::models::synthetic::write_clip_for_bench(
            dir.path(),
            "clip.safetensors",
            3,
            &vision,
        )
        .unwrap();
        let hub = crate::hub::Hub::new(crate::hub::HubConfig {
            cache_dir: dir.path().join("cache"),
            ..crate::hub::HubConfig::from_env()
        });
        let resolved = resolve_model(
            weights.to_str().unwrap(),
            Some("clip_vit_large_patch14"),
            "main",
            &hub,
        )
        .unwrap();
        assert_eq!(
            resolved.extras.files.keys().collect::<Vec<_>>(),
            ["config.json", "tokenizer.json"]
        );
        let rt = crate::models::Runtime::new(crate::models::DeviceChoice::Cpu).unwrap();
        let model = crate::models::Classifier::load(
            resolved.architecture,
            &resolved.weights,
            &resolved.extras,
            &rt,
        )
        .unwrap();
        let logits = model
            .logits(
                &crate::models::synthetic::input(1, 2 * 3 * 224 * 224),
                2,
                224,
            )
            .unwrap();
        assert_eq!(logits.len(), 2000);
        assert!(logits.iter().all(|v| v.is_finite()));
        assert!(
            logits[..1000] != logits[1000..],
            "crops differ, so do logits"
        );
    }
}
