//! Hugging Face Hub access through `hf-hub`, in the cache layout shared with
//! Python's `huggingface_hub` (`<cache>/{models,datasets}--org--name/
//! {refs,blobs,snapshots}`). Adds what the crate leaves out: `HF_HUB_CACHE`,
//! `HF_TOKEN`, `HF_HUB_OFFLINE`, lookup by commit sha, gated-repo messages.

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use sha2::{Digest, Sha256};
use std::io::Read;
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
    pub fn from_env() -> HubConfig {
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
pub fn is_repo_id(s: &str) -> bool {
    s.split('/').count() == 2 && s.split('/').all(|p| !p.is_empty())
}

pub fn is_commit_sha(s: &str) -> bool {
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
    pub fn tool_cache_dir(&self) -> PathBuf {
        self.cfg
            .cache_dir
            .parent()
            .unwrap_or(&self.cfg.cache_dir)
            .join("imagenet-hard")
    }

    /// A file at a plain URL, kept in `<tool cache>/urls/<file_name>`;
    /// downloaded (resuming a `.part` file) unless already there or offline.
    pub fn url_file(&self, url: &str, file_name: &str) -> Result<PathBuf, HubError> {
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
        let io = |path: &Path, source: std::io::Error| HubError::Io {
            path: path.into(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let part = dir.join(format!("{file_name}.part"));
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        let request = ureq::get(url);
        let request = if have > 0 {
            request.header("Range", &format!("bytes={have}-"))
        } else {
            request
        };
        let failed = |message: String| HubError::Request {
            repo: url.into(),
            file: file_name.into(),
            message,
        };
        let response = request.call().map_err(|e| failed(e.to_string()))?;
        // A server that ignores the range sends the whole file again.
        let append = have > 0 && response.status().as_u16() == 206;
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(&part)
            .map_err(|e| io(&part, e))?;
        let mut body = response.into_body().into_reader();
        std::io::copy(&mut body, &mut out).map_err(|e| failed(e.to_string()))?;
        std::fs::rename(&part, &path).map_err(|e| io(&path, e))?;
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
            .with_retries(3)
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
    pub fn cached_commit(&self, kind: RepoKind, repo: &str, revision: &str) -> Option<String> {
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
    pub fn cached_file(
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
    pub fn resolve_commit(
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
        let info = api_repo
            .info()
            .map_err(|e| self.map_error(e, kind, repo, revision, "(repository info)"))?;
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
    pub fn list_files(
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
        let info = api_repo
            .info()
            .map_err(|e| self.map_error(e, kind, repo, commit, "(file list)"))?;
        Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
    }

    /// Path of `file` in the cache, downloading it first unless offline.
    /// Partial downloads (`*.part` blobs) resume where they stopped.
    pub fn file(
        &self,
        kind: RepoKind,
        repo: &str,
        revision: &str,
        file: &str,
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
        let api_repo = self.api()?.repo(Repo::with_revision(
            repo.into(),
            kind.repo_type(),
            commit.clone(),
        ));
        api_repo
            .download(file)
            .map_err(|e| self.map_error(e, kind, repo, &commit, file))
    }

    fn map_error(
        &self,
        e: ApiError,
        kind: RepoKind,
        repo: &str,
        revision: &str,
        file: &str,
    ) -> HubError {
        let status = match &e {
            ApiError::RequestError(inner) => match inner.as_ref() {
                ureq::Error::StatusCode(code) => Some(*code),
                _ => None,
            },
            _ => None,
        };
        match status {
            Some(status @ (401 | 403)) => HubError::Gated {
                repo: repo.into(),
                status,
                endpoint: self.cfg.endpoint.clone(),
                url_prefix: if kind == RepoKind::Dataset {
                    "datasets/"
                } else {
                    ""
                },
            },
            Some(404) => HubError::NotFound {
                repo: repo.into(),
                revision: revision.into(),
                file: file.into(),
            },
            _ => HubError::Request {
                repo: repo.into(),
                file: file.into(),
                message: e.to_string(),
            },
        }
    }
}

/// Hex sha256 and byte size of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hex(&hasher.finalize()), size))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
