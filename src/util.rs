//! Small helpers shared by the stages: atomic files, temporary names,
//! hashes, the progress bar, and a seeded generator.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Write `bytes` to `path` through a temporary sibling of its own and a
/// rename, so a reader (or a rerun after a kill) never sees a half-written
/// file, and two writers never write into each other's file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = unique_temp(path);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// `dir/.name.<worker>.<n>.tmp` beside `path`: a temporary name no other
/// writer (thread, process or host) uses.
pub(crate) fn unique_temp(path: &Path) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let worker = crate::claim::worker_token().replace(':', "-");
    path.with_file_name(format!(".{name}.{worker}.{n}.tmp"))
}

/// Remove the temporary files ([`unique_temp`] names) a killed writer left
/// in `dir`; the outputs there are rewritten whole by the caller. Returns
/// how many it removed.
pub(crate) fn remove_stale_temps(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") && e.file_type()?.is_file() {
            std::fs::remove_file(e.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// `dir/.name.tmp` beside `path`.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Pretty JSON, written atomically.
pub(crate) fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<T> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
}

/// A file-name-safe form of an origin such as `imagenet-c/fog/3`.
pub fn file_stem(origin: &str) -> String {
    origin.replace('/', "__")
}

/// A progress bar on a terminal; hidden under a scheduler or a pipe.
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
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

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// mimalloc's `mi_option_purge_delay`: its place in `mi_option_e`
/// (`mimalloc.h`, the same in mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tell mimalloc (the binary's allocator) to keep freed memory instead of
/// returning it to the kernel after a delay (1 s by default in mimalloc v3,
/// the version built here). Each layer of a ResNet frees an output of tens
/// of MB that the next layer asks for again moments later; returned pages
/// come back page-faulted and cleared by the kernel (30,715 minor faults
/// against 1,069 in a 12 s ResNet-50 `bench`, about 6% of its time, the
/// same peak RSS). The heap stays at its high mark, which the bounded scan
/// keeps flat. `MIMALLOC_PURGE_DELAY` in the environment still decides
/// when set.
pub fn keep_freed_memory() {
    keep_freed_memory_unless(std::env::var_os("MIMALLOC_PURGE_DELAY").is_some());
}

/// [`keep_freed_memory`] when the environment has not set the delay.
fn keep_freed_memory_unless(environment_decides: bool) {
    if !environment_decides {
        // SAFETY: sets one of mimalloc's integer options; -1 = never purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// splitmix64 stream.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 bits, exact in f32.
    pub(crate) fn next_unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporaries_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let card = dir.path().join("README.md");
        std::fs::write(&card, "card").unwrap();
        std::fs::write(unique_temp(&card), "half a card").unwrap();
        std::fs::write(dir.path().join(".gitattributes"), "kept").unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 1);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".gitattributes", "README.md"]);
        assert_eq!(remove_stale_temps(&dir.path().join("absent")).unwrap(), 0);
    }

    /// The option numbers are mimalloc's: 15 holds the purge delay (v3's
    /// default 1000 ms) and 18 the OS tag (default 100), as `mi_option_e`
    /// lays them out; keeping freed memory sets the delay to -1 (never),
    /// unless the environment decides.
    #[test]
    fn purge_delay_is_the_option_we_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads and sets integer options; this is the only test
        // that touches them.
        let read = || unsafe {
            (
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY + 3),
            )
        };
        assert_eq!(read(), (1000, 100));
        keep_freed_memory_unless(true);
        assert_eq!(read(), (1000, 100), "the environment's delay is left alone");
        keep_freed_memory_unless(false);
        assert_eq!(read(), (-1, 100), "freed memory is kept");
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
    }
}
