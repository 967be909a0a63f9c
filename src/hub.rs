//! Hugging Face Hub access through `hf-hub`, in the cache layout shared with
//! Python's `huggingface_hub` (`<cache>/{models,datasets}--org--name/
//! {refs,blobs,snapshots}`). Adds what the crate leaves out: `HF_HUB_CACHE`,
//! `HF_TOKEN`, `HF_HUB_OFFLINE`, lookup by commit sha, gated-repo messages,
//! and downloads that retry, resume and verify ([`crate::download`]).

use crate::download;
pub use crate::util::{hex, sha256_file};
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use std::path::{Path, PathBuf};

/// Kind of Hub repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    fn folder_prefix(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }
    fn repo_type(self) -> RepoType {
        match self {
            RepoKind::Model => RepoType::Model,
            RepoKind::Dataset => RepoType::Dataset,
        }
    }
    fn cli_flag(self) -> &'static str {
        match self {
            RepoKind::Model => "",
            RepoKind::Dataset => " --repo-type dataset",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "HF_HUB_OFFLINE is set and {kind:?} repo `{repo}` file `{file}` at revision `{revision}` is not in the cache {cache}; \
         pre-fetch it on a connected machine (`imagenet-hard fetch <manifest>` or \
         `huggingface-cli download {repo} {file} --revision {revision}{flag}`) and copy the cache, or unset HF_HUB_OFFLINE"
    )]
    NotCached {
        kind: RepoKind,
        repo: String,
        revision: String,
        file: String,
        cache: String,
        flag: &'static str,
    },
    #[error(
        "HF_HUB_OFFLINE is set and revision `{revision}` of `{repo}` is not a full commit sha and has no ref in the cache {cache}; \
         pin the 40-hex commit in the manifest or pre-fetch it"
    )]
    UnresolvedRevision {
        repo: String,
        revision: String,
        cache: String,
    },
    #[error(
        "the Hub refused `{repo}` (HTTP {status}): it is gated or private. Accept its terms at {endpoint}/{url_prefix}{repo} \
         with your account, then set HF_TOKEN to a read token (https://huggingface.co/settings/tokens)"
    )]
    Gated {
        repo: String,
        status: u16,
        endpoint: String,
        url_prefix: &'static str,
    },
    #[error("`{repo}` has no file `{file}` at revision `{revision}` (HTTP 404); check the manifest's `files` and `revision`")]
    NotFound {
        repo: String,
        revision: String,
        file: String,
    },
    #[error("downloading `{file}` from `{repo}` failed: {message}")]
    Request {
        repo: String,
        file: String,
        message: String,
    },
    #[error("HF_HUB_OFFLINE is set and {url} is not downloaded yet; fetch it on a connected machine, or put the file at {path}")]
    UrlNotCached { url: String, path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Files of one Hub repository at a pinned revision.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HubFiles {
    /// `owner/name` on the Hub.
    pub repo: String,
    /// A full 40-hex commit (recommended) or a branch/tag name.
    pub revision: String,
    /// Paths inside the repository.
    pub files: Vec<String>,
    /// Known sha256 per file, checked after download.
    #[serde(default)]
    pub sha256: std::collections::BTreeMap<String, String>,
    /// The repository asks you to accept terms on its page and send
    /// `HF_TOKEN` (e.g. ImageNet-1k).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gated: bool,
}

/// A file at a plain URL (e.g. torchvision's `.pth` weights), pinned by sha256.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UrlFile {
    pub url: String,
    /// The file's sha256, or its first 8 or more hex digits (torchvision's
    /// file names carry the first 8); the lock then records the full hash.
    pub sha256: String,
}

impl UrlFile {
    /// The last path segment of the URL: the name the file is stored under.
    pub fn file_name(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or(&self.url)
    }
}

/// Where and how to reach the Hub, read from the standard environment.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub cache_dir: PathBuf,
    pub endpoint: String,
    pub token: Option<String>,
    pub offline: bool,
}

impl HubConfig {
    /// `HF_HUB_CACHE` (or `HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`,
    /// `$XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub`),
    /// `HF_ENDPOINT`, `HF_TOKEN` (or the token file), `HF_HUB_OFFLINE`.
    pub(crate) fn from_env() -> HubConfig {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = var("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join(".cache"))
                .join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| hf_home.join("token"));
                std::fs::read_to_string(path)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
            });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE")
        });
        HubConfig {
            cache_dir,
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            token,
            offline,
        }
    }
}

/// A Hub client over one cache directory.
pub struct Hub {
    cfg: HubConfig,
    api: std::sync::OnceLock<Api>,
}

/// `owner/name`: two non-empty parts.
pub(crate) fn is_repo_id(s: &str) -> bool {
    s.split('/').count() == 2 && s.split('/').all(|p| !p.is_empty())
}

pub(crate) fn is_commit_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Hub {
    pub fn new(cfg: HubConfig) -> Hub {
        Hub {
            cfg,
            api: std::sync::OnceLock::new(),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// A folder beside the Hub cache for this tool's own downloads and
    /// derived files (`<cache>/../imagenet-hard`).
    pub(crate) fn tool_cache_dir(&self) -> PathBuf {
        self.cfg
            .cache_dir
            .parent()
            .unwrap_or(&self.cfg.cache_dir)
            .join("imagenet-hard")
    }

    /// A file at a plain URL, kept in `<tool cache>/urls/<file_name>`;
    /// downloaded (resuming a `.part` file, retried, checked against `pin`,
    /// a sha256 or its 8+ hex prefix) unless already there or offline.
    pub(crate) fn url_file(
        &self,
        url: &str,
        file_name: &str,
        pin: Option<&str>,
    ) -> Result<PathBuf, HubError> {
        let dir = self.tool_cache_dir().join("urls");
        let path = dir.join(file_name);
        if path.is_file() {
            return Ok(path);
        }
        if self.cfg.offline {
            return Err(HubError::UrlNotCached {
                url: url.into(),
                path,
            });
        }
        let expect = download::Expect {
            pinned_sha256: pin,
            ..Default::default()
        };
        download::download(
            &download::agent(),
            url,
            &[("User-Agent", user_agent())],
            &path,
            &expect,
            &download::Retry::from_env(),
            url,
        )
        .map_err(|(failure, attempts)| HubError::Request {
            repo: url.into(),
            file: file_name.into(),
            message: format!("{failure} (after {attempts} attempt(s))"),
        })?;
        Ok(path)
    }

    fn repo_dir(&self, kind: RepoKind, repo: &str) -> PathBuf {
        self.cfg.cache_dir.join(format!(
            "{}--{}",
            kind.folder_prefix(),
            repo.replace('/', "--")
        ))
    }

    fn api(&self) -> Result<&Api, HubError> {
        if let Some(api) = self.api.get() {
            return Ok(api);
        }
        let api = ApiBuilder::new()
            .with_cache_dir(self.cfg.cache_dir.clone())
            .with_endpoint(self.cfg.endpoint.clone())
            .with_token(self.cfg.token.clone())
            .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .build()
            .map_err(|e| HubError::Request {
                repo: String::new(),
                file: String::new(),
                message: e.to_string(),
            })?;
        Ok(self.api.get_or_init(|| api))
    }

    /// The commit a revision names in the cache: itself if it is a sha, else
    /// the content of `refs/<revision>`.
    pub(crate) fn cached_commit(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: &str,
    ) -> Option<String> {
        if is_commit_sha(revision) {
            return Some(revision.to_ascii_lowercase());
        }
        let refs = self.repo_dir(kind, repo).join("refs").join(revision);
        std::fs::read_to_string(refs)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| is_commit_sha(s))
    }

    /// A file already in the cache (`snapshots/<commit>/<file>`), no network.
    pub(crate) fn cached_file(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: &str,
        file: &str,
    ) -> Option<PathBuf> {
        let commit = self.cached_commit(kind, repo, revision)?;
        let path = self
            .repo_dir(kind, repo)
            .join("snapshots")
            .join(commit)
            .join(file);
        path.is_file().then_some(path)
    }

    /// Resolve a revision to its full commit sha (the Hub's `info` route when
    /// online and the revision is not already a sha).
    pub(crate) fn resolve_commit(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: &str,
    ) -> Result<String, HubError> {
        if is_commit_sha(revision) {
            return Ok(revision.to_ascii_lowercase());
        }
        if self.cfg.offline {
            return self.cached_commit(kind, repo, revision).ok_or_else(|| {
                HubError::UnresolvedRevision {
                    repo: repo.into(),
                    revision: revision.into(),
                    cache: self.cfg.cache_dir.display().to_string(),
                }
            });
        }
        let api_repo = self.api()?.repo(Repo::with_revision(
            repo.into(),
            kind.repo_type(),
            revision.into(),
        ));
        let info = download::retrying(
            &format!("{repo}@{revision} (repository info)"),
            &download::Retry::from_env(),
            || api_repo.info().map_err(api_failure),
        )
        .map_err(|(f, n)| self.failure(f, n, kind, repo, revision, "(repository info)"))?;
        // Record the named ref as Python does, so offline runs resolve it.
        let refs = self.repo_dir(kind, repo).join("refs").join(revision);
        if let Some(parent) = refs.parent() {
            std::fs::create_dir_all(parent).map_err(|source| HubError::Io {
                path: parent.into(),
                source,
            })?;
        }
        std::fs::write(&refs, &info.sha).map_err(|source| HubError::Io { path: refs, source })?;
        Ok(info.sha)
    }

    /// Every file path in the repository at `commit`: the Hub's file list
    /// when online, the cached snapshot's files when offline.
    pub(crate) fn list_files(
        &self,
        kind: RepoKind,
        repo: &str,
        commit: &str,
    ) -> Result<Vec<String>, HubError> {
        if self.cfg.offline {
            let snapshot = self.repo_dir(kind, repo).join("snapshots").join(commit);
            let mut files = Vec::new();
            for entry in walkdir::WalkDir::new(&snapshot).follow_links(true) {
                let entry = entry.map_err(|e| HubError::Io {
                    path: snapshot.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                if entry.file_type().is_file() {
                    if let Ok(rel) = entry.path().strip_prefix(&snapshot) {
                        let parts: Vec<_> = rel
                            .components()
                            .map(|c| c.as_os_str().to_string_lossy())
                            .collect();
                        files.push(parts.join("/"));
                    }
                }
            }
            return Ok(files);
        }
        let api_repo = self.api()?.repo(Repo::with_revision(
            repo.into(),
            kind.repo_type(),
            commit.into(),
        ));
        let info = download::retrying(
            &format!("{repo}@{commit} (file list)"),
            &download::Retry::from_env(),
            || api_repo.info().map_err(api_failure),
        )
        .map_err(|(f, n)| self.failure(f, n, kind, repo, commit, "(file list)"))?;
        Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
    }

    /// Path of `file` in the cache, downloading it first unless offline.
    pub fn file(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: &str,
        file: &str,
    ) -> Result<PathBuf, HubError> {
        self.file_pinned(kind, repo, revision, file, None)
    }

    /// [`Hub::file`], a download also checked against `pin` (a sha256 or
    /// its 8+ hex prefix) before it enters the cache. Downloads go to
    /// `blobs/<etag>.part` (resumed where an earlier attempt or run
    /// stopped), are retried on network faults, and are checked against
    /// the size and hash the Hub announced; the snapshot then links to the
    /// blob, as Python's `huggingface_hub` lays it out.
    pub(crate) fn file_pinned(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: &str,
        file: &str,
        pin: Option<&str>,
    ) -> Result<PathBuf, HubError> {
        if let Some(path) = self.cached_file(kind, repo, revision, file) {
            return Ok(path);
        }
        if self.cfg.offline {
            return Err(HubError::NotCached {
                kind,
                repo: repo.into(),
                revision: revision.into(),
                file: file.into(),
                cache: self.cfg.cache_dir.display().to_string(),
                flag: kind.cli_flag(),
            });
        }
        let commit = self.resolve_commit(kind, repo, revision)?;
        let api = self.api()?;
        let hf_repo = Repo::with_revision(repo.into(), kind.repo_type(), commit.clone());
        let url = api.repo(hf_repo.clone()).url(file);
        let retry = download::Retry::from_env();
        let what = format!("{repo} `{file}`");
        let fail = |(f, n): (download::Failure, u32)| self.failure(f, n, kind, repo, &commit, file);
        let meta = download::retrying(&format!("{what} (metadata)"), &retry, || {
            api.metadata(&url).map_err(api_failure)
        })
        .map_err(fail)?;
        let cache = hf_hub::Cache::new(self.cfg.cache_dir.clone()).repo(hf_repo);
        let blob = cache.blob_path(meta.etag());
        let mut headers = vec![("User-Agent", user_agent())];
        if let Some(token) = &self.cfg.token {
            headers.push(("Authorization", format!("Bearer {token}")));
        }
        let expect = download::Expect {
            size: Some(meta.size() as u64),
            server_hash: Some(meta.etag()),
            pinned_sha256: pin,
        };
        download::download(
            &download::agent(),
            &url,
            &headers,
            &blob,
            &expect,
            &retry,
            &what,
        )
        .map_err(fail)?;
        let pointer = cache.pointer_path(meta.commit_hash()).join(file);
        let io = |path: &Path, source| HubError::Io {
            path: path.into(),
            source,
        };
        if let Some(dir) = pointer.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        if !pointer.is_file() {
            let _ = std::fs::remove_file(&pointer);
            link_relative(&blob, &pointer).map_err(|e| io(&pointer, e))?;
        }
        cache
            .create_ref(meta.commit_hash())
            .map_err(|e| io(&self.repo_dir(kind, repo), e))?;
        Ok(pointer)
    }

    /// The error for a download that failed for good.
    fn failure(
        &self,
        failure: download::Failure,
        attempts: u32,
        kind: RepoKind,
        repo: &str,
        revision: &str,
        file: &str,
    ) -> HubError {
        match failure {
            download::Failure::Status(status @ (401 | 403), _) => HubError::Gated {
                repo: repo.into(),
                status,
                endpoint: self.cfg.endpoint.clone(),
                url_prefix: if kind == RepoKind::Dataset {
                    "datasets/"
                } else {
                    ""
                },
            },
            download::Failure::Status(404, _) => HubError::NotFound {
                repo: repo.into(),
                revision: revision.into(),
                file: file.into(),
            },
            download::Failure::Io(path, source) => HubError::Io { path, source },
            other => HubError::Request {
                repo: repo.into(),
                file: file.into(),
                message: format!("{other} (after {attempts} attempt(s); nothing was cached)"),
            },
        }
    }
}

/// An hf-hub error as a download attempt's failure.
fn api_failure(e: ApiError) -> download::Failure {
    match e {
        ApiError::RequestError(inner) => match *inner {
            ureq::Error::StatusCode(status) => download::Failure::Status(status, None),
            other => download::Failure::Transport(other.to_string()),
        },
        other => download::Failure::Transport(other.to_string()),
    }
}

fn user_agent() -> String {
    format!("imagenet-hard/{}", env!("CARGO_PKG_VERSION"))
}

/// `link` made a symbolic link to `target` by a relative path (as
/// `huggingface_hub` links snapshots to blobs), so the cache can move.
fn link_relative(target: &Path, link: &Path) -> std::io::Result<()> {
    let from = link.parent().unwrap_or(Path::new("."));
    let common = from
        .components()
        .zip(target.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut rel = PathBuf::new();
    for _ in from.components().skip(common) {
        rel.push("..");
    }
    for c in target.components().skip(common) {
        rel.push(c);
    }
    std::os::unix::fs::symlink(rel, link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_at(dir: &Path) -> Hub {
        Hub::new(HubConfig {
            cache_dir: dir.into(),
            endpoint: "http://127.0.0.1:9".into(),
            token: None,
            offline: true,
        })
    }

    #[test]
    fn finds_files_by_sha_and_by_ref_in_the_python_layout() {
        let dir = tempfile::tempdir().unwrap();
        let sha = "a".repeat(40);
        let snap = dir
            .path()
            .join("datasets--org--data/snapshots")
            .join(&sha)
            .join("data");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("x.parquet"), b"x").unwrap();
        std::fs::create_dir_all(dir.path().join("datasets--org--data/refs")).unwrap();
        std::fs::write(dir.path().join("datasets--org--data/refs/main"), &sha).unwrap();
        let hub = hub_at(dir.path());
        assert!(hub
            .cached_file(RepoKind::Dataset, "org/data", &sha, "data/x.parquet")
            .is_some());
        assert!(hub
            .cached_file(RepoKind::Dataset, "org/data", "main", "data/x.parquet")
            .is_some());
        assert!(hub
            .cached_file(RepoKind::Model, "org/data", "main", "data/x.parquet")
            .is_none());
        let err = hub
            .file(RepoKind::Dataset, "org/data", "main", "data/y.parquet")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("HF_HUB_OFFLINE")
                && err.contains("data/y.parquet")
                && err.contains("--repo-type dataset"),
            "{err}"
        );
        let err = hub
            .resolve_commit(RepoKind::Dataset, "org/data", "v2")
            .unwrap_err()
            .to_string();
        assert!(err.contains("v2"), "{err}");
    }

    #[test]
    fn sha256_of_a_known_string() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let (sha, size) = sha256_file(&p).unwrap();
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(size, 3);
    }
}
