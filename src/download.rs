//! Downloads that survive a flaky network: every request is retried with
//! exponential backoff on a reset connection, a timeout, HTTP 429 or 5xx
//! (bounded, each retry logged with its attempt number); a body that stops
//! early is resumed from where it stopped (`Range`) into a `.part` file; the
//! bytes are checked against the size and hash the server and the manifest
//! promise before they are renamed into the cache, so a wrong file is never
//! cached. One process downloads a given file at a time (a lock file).

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    /// Attempts in all (the first one included).
    pub attempts: u32,
    /// Wait before the second attempt; doubles each time, up to `max`.
    pub base: Duration,
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 8,
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Retry {
    /// The defaults, or `IMAGENET_HARD_FETCH_ATTEMPTS` and
    /// `IMAGENET_HARD_FETCH_BACKOFF_MS` from the environment.
    pub(crate) fn from_env() -> Retry {
        let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let d = Retry::default();
        Retry {
            attempts: var("IMAGENET_HARD_FETCH_ATTEMPTS")
                .map_or(d.attempts, |n| n.clamp(1, 100) as u32),
            base: var("IMAGENET_HARD_FETCH_BACKOFF_MS").map_or(d.base, Duration::from_millis),
            max: d.max,
        }
    }

    /// The wait after failed attempt `n` (1-based): doubling, with up to a
    /// quarter of jitter so that many workers do not retry in step.
    fn wait(&self, n: u32, jitter: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << (n - 1).min(20));
        exp.min(self.max).mul_f64(1.0 + 0.25 * jitter)
    }
}

/// Why one attempt failed.
#[derive(Debug)]
pub enum Failure {
    /// An HTTP status that is not a success; 429 may say when to come back.
    Status(u16, Option<Duration>),
    /// The connection failed, reset or timed out.
    Transport(String),
    /// The body ended before the promised size.
    Short { got: u64, want: u64 },
    /// The bytes are not what the server's own hash promised.
    Corrupt(String),
    /// The bytes are not what the manifest or lock pins: final.
    Pinned(String),
    /// Local disk trouble: final.
    Io(PathBuf, std::io::Error),
}

impl Failure {
    fn retryable(&self) -> bool {
        match self {
            Failure::Status(s, _) => *s == 429 || *s == 408 || (500..600).contains(s),
            Failure::Transport(_) | Failure::Short { .. } | Failure::Corrupt(_) => true,
            Failure::Pinned(_) | Failure::Io(..) => false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(s, _) => write!(f, "HTTP {s}"),
            Failure::Transport(m) => write!(f, "{m}"),
            Failure::Short { got, want } => {
                write!(f, "the body ended after {got} of {want} bytes")
            }
            Failure::Corrupt(m) | Failure::Pinned(m) => write!(f, "{m}"),
            Failure::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl From<ureq::Error> for Failure {
    fn from(e: ureq::Error) -> Failure {
        match e {
            ureq::Error::StatusCode(s) => Failure::Status(s, None),
            other => Failure::Transport(other.to_string()),
        }
    }
}

/// Run `attempt` until it succeeds, fails for good, or the attempts run out.
/// Each retry is logged with what failed and its number; the last failure
/// is returned with the count.
pub(crate) fn retrying<T>(
    what: &str,
    retry: &Retry,
    mut attempt: impl FnMut() -> Result<T, Failure>,
) -> Result<T, (Failure, u32)> {
    let mut n = 1;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if e.retryable() && n < retry.attempts => {
                let wait = match &e {
                    Failure::Status(429, Some(after)) => (*after).min(retry.max),
                    _ => retry.wait(n, jitter()),
                };
                tracing::warn!(
                    "{what}: attempt {n} of {} failed ({e}); retrying in {:.1}s",
                    retry.attempts,
                    wait.as_secs_f64()
                );
                std::thread::sleep(wait);
                n += 1;
            }
            Err(e) => return Err((e, n)),
        }
    }
}

fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos % 1000) as f64 / 1000.0
}

/// What the downloaded bytes must be.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect<'a> {
    /// The size the server announced.
    pub size: Option<u64>,
    /// The server's hash of the file: its sha256 (64 hex, a Hub LFS file's
    /// etag) or its git blob sha1 (40 hex, a Hub file kept in git).
    pub server_hash: Option<&'a str>,
    /// The manifest's or lock's sha256, in full or a prefix of 8+ hex.
    pub pinned_sha256: Option<&'a str>,
}

/// An agent for downloads: connect and first-byte timeouts (a body may
/// take long; a stall ends in a reset or the server's own timeout), HTTP
/// errors as statuses, redirects followed without the token.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .new_agent()
}

/// Download `url` to `dest` through `dest.part` (resumed if present),
/// checked against `expect`. `headers` go with every request (the token).
pub fn download(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, String)],
    dest: &Path,
    expect: &Expect,
    retry: &Retry,
    what: &str,
) -> Result<(), (Failure, u32)> {
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| (Failure::Io(dir.into(), e), 0))?;
    }
    let _lock = FileLock::new(&with_suffix(dest, ".lock")).map_err(|e| (e, 0))?;
    if dest.is_file() {
        return Ok(());
    }
    let part = with_suffix(dest, ".part");
    retrying(what, retry, || {
        fetch_rest(agent, url, headers, &part, expect)?;
        match check(&part, expect) {
            Ok(()) => {}
            Err(e) => {
                // Wrong bytes are never kept, not even to resume from.
                let _ = std::fs::remove_file(&part);
                return Err(e);
            }
        }
        std::fs::rename(&part, dest).map_err(|e| Failure::Io(dest.into(), e))
    })
}

/// `path` with `suffix` added to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// One attempt: ask for the bytes `part` does not have yet and append them.
fn fetch_rest(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, String)],
    part: &Path,
    expect: &Expect,
) -> Result<(), Failure> {
    let io = |e| Failure::Io(part.into(), e);
    let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if expect.size.is_some_and(|size| have > size) {
        have = 0;
    }
    if expect.size == Some(have) && have > 0 {
        return Ok(());
    }
    let mut request = agent.get(url);
    for (k, v) in headers {
        request = request.header(*k, v);
    }
    if have > 0 {
        request = request.header("Range", &format!("bytes={have}-"));
    }
    let response = request.call()?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        let after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Err(Failure::Status(status, after));
    }
    // A server that ignores the range sends the whole file again.
    let append = have > 0 && status == 206;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(part)
        .map_err(io)?;
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            // What arrived stays in the part file for the next attempt.
            Err(e) => {
                out.flush().map_err(io)?;
                return Err(Failure::Transport(e.to_string()));
            }
        };
        out.write_all(&buf[..n]).map_err(io)?;
    }
    out.sync_all().map_err(io)?;
    let got = out.metadata().map_err(io)?.len();
    match expect.size {
        Some(want) if got < want => Err(Failure::Short { got, want }),
        _ => Ok(()),
    }
}

/// The complete part file against what it must be.
fn check(part: &Path, expect: &Expect) -> Result<(), Failure> {
    let io = |e| Failure::Io(part.into(), e);
    let size = std::fs::metadata(part).map_err(io)?.len();
    if let Some(want) = expect.size {
        if size != want {
            return Err(Failure::Corrupt(format!(
                "{size} bytes arrived where {want} were announced"
            )));
        }
    }
    let mut f = std::fs::File::open(part).map_err(io)?;
    let mut sha256 = Sha256::new();
    let mut sha1 = sha1::Sha1::new();
    sha1.update(format!("blob {size}\0").as_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        sha256.update(&buf[..n]);
        sha1.update(&buf[..n]);
    }
    let sha256 = crate::util::hex(&sha256.finalize());
    let git = crate::util::hex(&sha1.finalize());
    if let Some(h) = expect.server_hash.map(str::to_ascii_lowercase) {
        let (found, kind) = match h.len() {
            64 => (&sha256, "sha256"),
            40 => (&git, "git blob sha1"),
            _ => (&h, "etag"),
        };
        if *found != h {
            return Err(Failure::Corrupt(format!(
                "the bytes' {kind} is {found}, the server's is {h}"
            )));
        }
    }
    if let Some(pin) = expect.pinned_sha256 {
        let pin = pin.to_ascii_lowercase();
        if pin.len() < 8 || !sha256.starts_with(&pin) {
            return Err(Failure::Pinned(format!(
                "sha256 {sha256} differs from the pinned {pin}; the pin is wrong or the file changed upstream"
            )));
        }
    }
    Ok(())
}

/// An exclusive `flock` on a lock file, released when dropped.
struct FileLock(std::fs::File);

impl FileLock {
    fn new(path: &Path) -> Result<FileLock, Failure> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Failure::Io(path.into(), e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own for the lock's life.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Failure::Io(path.into(), std::io::Error::last_os_error()));
        }
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: unlocks the descriptor locked in `new`.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_some_jitter() {
        let r = Retry {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_millis(700),
        };
        assert_eq!(r.wait(1, 0.0), Duration::from_millis(100));
        assert_eq!(r.wait(3, 0.0), Duration::from_millis(400));
        assert_eq!(r.wait(5, 0.0), Duration::from_millis(700));
        assert_eq!(r.wait(2, 1.0), Duration::from_millis(250));
    }

    #[test]
    fn retries_stop_at_final_failures_and_at_the_budget() {
        let r = Retry {
            attempts: 3,
            base: Duration::from_millis(1),
            max: Duration::from_millis(1),
        };
        let mut calls = 0;
        let out: Result<(), _> = retrying("x", &r, || {
            calls += 1;
            Err(Failure::Status(503, None))
        });
        assert_eq!((out.unwrap_err().1, calls), (3, 3));
        let mut calls = 0;
        let out: Result<(), _> = retrying("x", &r, || {
            calls += 1;
            Err(Failure::Status(404, None))
        });
        assert_eq!((out.unwrap_err().1, calls), (1, 1), "404 is final");
        let mut calls = 0;
        let out = retrying("x", &r, || {
            calls += 1;
            if calls < 3 {
                Err(Failure::Short { got: 1, want: 2 })
            } else {
                Ok(7)
            }
        });
        assert_eq!(out.unwrap(), 7);
    }

    #[test]
    fn wrong_bytes_are_refused_by_any_hash() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("x.part");
        std::fs::write(&part, b"hello").unwrap();
        let sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        // git hash-object of "hello" (no newline).
        let git = "b6fc4c620b67d95f953a5c1c1230aaab5db5a1b0";
        let ok = |e: Expect| check(&part, &e).is_ok();
        assert!(ok(Expect {
            size: Some(5),
            server_hash: Some(sha),
            pinned_sha256: Some(&sha[..8])
        }));
        assert!(ok(Expect {
            server_hash: Some(git),
            ..Default::default()
        }));
        assert!(!ok(Expect {
            size: Some(6),
            ..Default::default()
        }));
        assert!(!ok(Expect {
            server_hash: Some(&git.replace('b', "c")),
            ..Default::default()
        }));
        let pinned = check(
            &part,
            &Expect {
                pinned_sha256: Some("deadbeef"),
                ..Default::default()
            },
        );
        assert!(
            matches!(pinned, Err(Failure::Pinned(m)) if m.contains("deadbeef") && m.contains(sha))
        );
    }
}
