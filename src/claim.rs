//! Claims on work units, so that two workers never scan the same unit at
//! once (a Slurm requeue while the first task still runs, two job arrays
//! by mistake, a hung worker replaced by another).
//!
//! A claim is a file `uNNNNN.claim` created exclusively (`O_EXCL`) holding
//! its worker's token; the worker touches it every `heartbeat` while it
//! scans. A claim whose last touch is older than `timeout` belongs to a
//! dead or hung worker and is taken over: moved aside under a unique name
//! (one mover wins), checked to be the stale claim that was judged (else
//! put back), then claimed afresh. A worker whose claim was taken over
//! finds out at its next heartbeat and stops the unit without writing
//! anything. A unit's records are a deterministic function of its inputs,
//! so even a claim race can only waste work: every output is written under
//! a unique temporary name and renamed into place whole.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How long a claim lives without a heartbeat, and how often it beats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClaimTimes {
    pub timeout: Duration,
    pub heartbeat: Duration,
}

impl ClaimTimes {
    /// A claim is stale after `timeout`; it beats four times per timeout,
    /// at least every 10 s.
    pub fn new(timeout: Duration) -> ClaimTimes {
        ClaimTimes {
            timeout,
            heartbeat: (timeout / 4).min(Duration::from_secs(10)),
        }
    }
}

impl Default for ClaimTimes {
    fn default() -> Self {
        ClaimTimes::new(Duration::from_secs(120))
    }
}

/// Another worker's live claim on a unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Busy {
    pub owner: String,
    /// Time since its last heartbeat.
    pub age: Duration,
}

/// What a claim file says, and how old its heartbeat is.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimInfo {
    pub owner: String,
    pub started: Option<SystemTime>,
    /// The timeout its worker runs with.
    pub timeout: Option<Duration>,
    pub age: Duration,
}

impl ClaimInfo {
    /// Live: its heartbeat is younger than its worker's timeout.
    pub fn live(&self) -> bool {
        self.age < self.timeout.unwrap_or(ClaimTimes::default().timeout)
    }
}

/// This process's token: host, process id and start time, unique across a
/// cluster's workers.
pub(crate) fn worker_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "host".into());
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{host}:{}:{nanos:x}", std::process::id())
    })
}

fn this_host() -> Option<String> {
    worker_token().rsplitn(3, ':').nth(2).map(str::to_string)
}

/// Whether a claim's owner is a process of this host that has exited (a
/// worker killed with SIGKILL): its claim is stale at once, without
/// waiting out the timeout. Owners elsewhere are judged by heartbeat only.
fn owner_exited(owner: &str) -> bool {
    // host:pid:start:seq
    let mut parts = owner.rsplitn(4, ':');
    let (Some(_seq), Some(_start), Some(pid), Some(host)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let proc_fs = Path::new("/proc/self").exists();
    proc_fs
        && this_host().as_deref() == Some(host)
        && pid.parse::<u32>().is_ok_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        })
}

/// Read a claim file: its owner line and the age of its last touch.
pub fn read(path: &Path) -> std::io::Result<ClaimInfo> {
    let text = std::fs::read_to_string(path)?;
    let meta = std::fs::metadata(path)?;
    let age = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default();
    let mut lines = text.lines();
    let owner = lines.next().unwrap_or("").to_string();
    let started = lines
        .next()
        .and_then(|l| l.parse::<u64>().ok())
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
    let timeout = lines
        .next()
        .and_then(|l| l.parse::<u64>().ok())
        .map(Duration::from_millis);
    Ok(ClaimInfo {
        owner,
        started,
        timeout,
        age,
    })
}

/// A held claim. It beats on a background thread until dropped; dropping
/// it removes the claim file if it is still ours.
pub(crate) struct Claim {
    path: PathBuf,
    token: String,
    lost: Arc<AtomicBool>,
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    beat: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("path", &self.path)
            .field("token", &self.token)
            .finish()
    }
}

impl Claim {
    /// Whether another worker has taken this claim over.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst) || !self.still_ours()
    }

    /// The heartbeat's finding alone (no file read): cheap to ask often.
    pub(crate) fn taken_over(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    fn still_ours(&self) -> bool {
        read(&self.path).is_ok_and(|c| c.owner == self.token)
    }

    /// The token this claim was made with (unique per claim).
    #[cfg(test)]
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        {
            let (flag, cv) = &*self.stop;
            *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        }
        if let Some(t) = self.beat.take() {
            let _ = t.join();
        }
        if self.still_ours() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Try to claim `path`. `Ok(Err(busy))` when another worker's live claim
/// holds it; a stale one is taken over.
pub(crate) fn acquire(path: &Path, times: ClaimTimes) -> std::io::Result<Result<Claim, Busy>> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let token = format!("{}:{}", worker_token(), SEQ.fetch_add(1, Ordering::SeqCst));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    for _ in 0..8 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(mut f) => {
                let started = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                f.write_all(
                    format!("{token}\n{started}\n{}\n", times.timeout.as_millis()).as_bytes(),
                )?;
                f.sync_all()?;
                return Ok(Ok(start(path, token, times)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let held = match read(path) {
            Ok(c) => c,
            // Released between our try and our read: try again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let live = if held.owner.is_empty() {
            // Being written right now (or its writer died at once).
            held.age < times.timeout
        } else {
            held.age < times.timeout && !owner_exited(&held.owner)
        };
        if live {
            return Ok(Err(Busy {
                owner: held.owner,
                age: held.age,
            }));
        }
        // Stale: move it aside; of several movers, one wins.
        let aside = path.with_extension(format!("claim.stale-{token}"));
        match std::fs::rename(path, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        let moved = read(&aside).ok();
        if moved.as_ref().map(|c| &c.owner) != Some(&held.owner) {
            // We moved a fresh claim made since our look: put it back
            // unless yet another worker holds the unit now.
            let _ = std::fs::hard_link(&aside, path);
            let _ = std::fs::remove_file(&aside);
            let now = moved.map(|c| c.owner).unwrap_or_default();
            return Ok(Err(Busy {
                owner: now,
                age: Duration::ZERO,
            }));
        }
        let _ = std::fs::remove_file(&aside);
        tracing::warn!(
            "{}: taking over the claim of {} ({})",
            path.display(),
            held.owner,
            if held.age >= times.timeout {
                format!("no heartbeat for {:.0}s", held.age.as_secs_f64())
            } else {
                "its process on this host has exited".into()
            }
        );
    }
    let held = read(path).ok();
    Ok(Err(Busy {
        owner: held.as_ref().map(|c| c.owner.clone()).unwrap_or_default(),
        age: held.map(|c| c.age).unwrap_or_default(),
    }))
}

/// Remove the claim at `path` if its worker is gone (no heartbeat for the
/// timeout, or its process on this host has exited): a worker killed after
/// finishing its unit but before letting go of it leaves such a claim on a
/// done unit. A live claim is left alone.
pub(crate) fn clear_if_stale(path: &Path, times: ClaimTimes) {
    if let Ok(c) = read(path) {
        let timeout = c.timeout.unwrap_or(times.timeout);
        if c.age >= timeout || owner_exited(&c.owner) {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn start(path: &Path, token: String, times: ClaimTimes) -> Claim {
    let lost = Arc::new(AtomicBool::new(false));
    let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let beat = {
        let (path, token, lost, stop) = (
            path.to_path_buf(),
            token.clone(),
            lost.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || loop {
            let (flag, cv) = &*stop;
            let guard = flag.lock().unwrap_or_else(|p| p.into_inner());
            let (guard, _) = cv
                .wait_timeout_while(guard, times.heartbeat, |stopped| !*stopped)
                .unwrap_or_else(|p| p.into_inner());
            if *guard {
                return;
            }
            drop(guard);
            match read(&path) {
                Ok(c) if c.owner == token => {
                    // Touch: the heartbeat is the file's modification time.
                    let touched = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .and_then(|f| f.set_modified(SystemTime::now()));
                    if let Err(e) = touched {
                        tracing::warn!("{}: heartbeat failed: {e}", path.display());
                    }
                }
                _ => {
                    tracing::warn!(
                        "{}: this worker's claim was taken over; the unit is left to the new owner",
                        path.display()
                    );
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        })
    };
    Claim {
        path: path.into(),
        token,
        lost,
        stop,
        beat: Some(beat),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(ms: u64) -> ClaimTimes {
        ClaimTimes {
            timeout: Duration::from_millis(ms),
            heartbeat: Duration::from_millis(ms / 4),
        }
    }

    #[test]
    fn a_live_claim_keeps_others_out_and_is_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u00001.claim");
        // Generous times, so a busy test machine cannot starve the heartbeat.
        let claim = acquire(&path, times(1500)).unwrap().unwrap();
        // Heartbeats keep it live past its timeout.
        std::thread::sleep(Duration::from_millis(2200));
        let busy = acquire(&path, times(1500)).unwrap().unwrap_err();
        assert_eq!(busy.owner, claim.token());
        assert!(busy.age < Duration::from_millis(1500), "{busy:?}");
        assert!(!claim.lost());
        drop(claim);
        assert!(!path.exists());
        assert!(acquire(&path, times(1500)).unwrap().is_ok());
    }

    #[test]
    fn a_stale_claim_is_taken_over_and_its_owner_learns_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u00002.claim");
        // A dead worker's claim: an old file nobody touches.
        std::fs::write(&path, "dead-worker\n0\n").unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let claim = acquire(&path, times(1000)).unwrap().unwrap();
        assert_eq!(read(&path).unwrap().owner, claim.token());
        // A hung worker that wakes up after being replaced finds out.
        let hung = acquire(&dir.path().join("u00003.claim"), times(200))
            .unwrap()
            .unwrap();
        std::fs::write(dir.path().join("u00003.claim"), "replacement\n0\n").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(hung.lost());
        drop(hung);
        assert_eq!(
            read(&dir.path().join("u00003.claim")).unwrap().owner,
            "replacement",
            "a lost claim is not removed on drop"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("stale"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_claim_of_an_exited_process_on_this_host_is_stale_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u00004.claim");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let host = this_host().unwrap();
        std::fs::write(&path, format!("{host}:{pid}:1f:0\n0\n")).unwrap();
        assert!(owner_exited(&format!("{host}:{pid}:1f:0")));
        assert!(!owner_exited(&format!(
            "{host}:{}:1f:0",
            std::process::id()
        )));
        assert!(!owner_exited(&format!("elsewhere:{pid}:1f:0")));
        assert!(acquire(&path, times(60_000)).unwrap().is_ok());
    }

    #[test]
    fn only_a_stale_claim_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("u00005.claim");
        let claim = acquire(&live, times(60_000)).unwrap().unwrap();
        clear_if_stale(&live, times(60_000));
        assert!(live.exists(), "a live claim stays");
        drop(claim);
        let dead = dir.path().join("u00006.claim");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        std::fs::write(&dead, format!("{}:{pid}:1f:0\n0\n", this_host().unwrap())).unwrap();
        clear_if_stale(&dead, times(60_000));
        assert!(!dead.exists(), "a killed worker's claim goes");
    }

    #[test]
    fn of_many_racing_threads_exactly_one_holds_a_unit() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20 {
            let path = dir.path().join(format!("u{round:05}.claim"));
            if round % 2 == 1 {
                // Half the rounds race over a stale claim.
                std::fs::write(&path, "dead\n0\n").unwrap();
                std::fs::File::options()
                    .append(true)
                    .open(&path)
                    .unwrap()
                    .set_modified(SystemTime::now() - Duration::from_secs(30))
                    .unwrap();
            }
            let barrier = std::sync::Barrier::new(8);
            let held: Vec<bool> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            let c = acquire(&path, times(5000)).unwrap();
                            // Hold it while the others try.
                            std::thread::sleep(Duration::from_millis(50));
                            let got = c.is_ok();
                            drop(c);
                            got
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(
                held.iter().filter(|&&h| h).count(),
                1,
                "round {round}: {held:?}"
            );
        }
    }
}
