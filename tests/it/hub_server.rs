//! A small Hub stand-in on loopback: the `/api/.../revision/<rev>` and
//! `/resolve/<rev>/<file>` routes hf-hub uses, with Range support, so the
//! real download, resume and checksum path runs without leaving the machine.

use crate::fixture::{ok, stderr, Fixture, DATASET, PARQUET};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Default)]
struct State {
    /// "datasets/org/name" or "org/name" -> file -> bytes
    repos: HashMap<String, HashMap<String, Vec<u8>>>,
    /// Plain files served at `/files/<name>` (URL model sources).
    files: HashMap<String, Vec<u8>>,
    /// Repos answering 401 to everything.
    gated: Vec<String>,
    /// (method, path, range, authorization) of every request.
    log: Vec<(String, String, Option<String>, Option<String>)>,
    /// Faults served, in order, to the next file-body requests.
    faults: std::collections::VecDeque<Fault>,
    /// Statuses served, in order, to the next metadata and info requests.
    meta_faults: std::collections::VecDeque<u16>,
}

/// A way a download can go wrong.
#[derive(Debug, Clone)]
enum Fault {
    /// Answer with this status and no body.
    Status(u16),
    /// Send the headers and this many bytes of the body, then reset the connection.
    Reset(usize),
    /// Announce and send only this many bytes: a body that ends early but cleanly.
    Truncate(usize),
    /// The whole body with one byte changed.
    Corrupt,
    /// The body in 1 KiB pieces, this many milliseconds apart.
    Slow(u64),
}

/// Close with an RST instead of a FIN, as a dropped connection does.
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: sets SO_LINGER on a socket we own, then drops it.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

struct HubStandIn {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl HubStandIn {
    fn start(state: State) -> HubStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        HubStandIn { port, state }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn serve(mut stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned();
    let auth = headers.get("authorization").cloned();
    let mut st = state.lock().unwrap();
    st.log.push((method, path.clone(), range.clone(), auth));
    let path = path.split('?').next().unwrap_or("").to_string();
    if st.gated.iter().any(|g| path.contains(g.as_str())) {
        return respond(
            &mut stream,
            "401 Unauthorized",
            &[],
            b"{\"error\":\"gated\"}",
        );
    }
    let body_request = path.contains("/resolve/") && range.as_deref() != Some("bytes=0-0");
    if !body_request {
        if let Some(status) = st.meta_faults.pop_front() {
            return respond(&mut stream, &format!("{status} Fault"), &[], b"");
        }
    }
    let fault = if body_request {
        st.faults.pop_front()
    } else {
        None
    };
    // /api/{models|datasets}/<org>/<name>/revision/<rev>
    if let Some(rest) = path.strip_prefix("/api/") {
        let (kind, rest) = rest.split_once('/').unwrap_or(("", ""));
        let id = rest.split("/revision/").next().unwrap_or("");
        let key = if kind == "datasets" {
            format!("datasets/{id}")
        } else {
            id.to_string()
        };
        return match st.repos.get(&key) {
            Some(files) => {
                let siblings: Vec<_> = files
                    .keys()
                    .map(|f| serde_json::json!({"rfilename": f}))
                    .collect();
                let body =
                    serde_json::json!({"id": id, "sha": COMMIT, "siblings": siblings}).to_string();
                respond(
                    &mut stream,
                    "200 OK",
                    &[("Content-Type".into(), "application/json".into())],
                    body.as_bytes(),
                )
            }
            None => respond(&mut stream, "404 Not Found", &[], b"{}"),
        };
    }
    let plain = path
        .strip_prefix("/files/")
        .and_then(|name| st.files.get(name))
        .cloned();
    if let Some(bytes) = plain {
        drop(st);
        let start: usize = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
            .unwrap_or(0);
        let headers = vec![(
            "Content-Range".to_string(),
            format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len()),
        )];
        let status = if start > 0 {
            "206 Partial Content"
        } else {
            "200 OK"
        };
        return respond(&mut stream, status, &headers, &bytes[start..]);
    }
    // /[datasets/]<org>/<name>/resolve/<rev>/<file>
    let Some((repo, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return respond(&mut stream, "404 Not Found", &[], b"");
    };
    let file = rest.split_once('/').map(|(_, f)| f).unwrap_or("");
    let Some(bytes) = st.repos.get(repo).and_then(|f| f.get(file)).cloned() else {
        return respond(&mut stream, "404 Not Found", &[], b"");
    };
    drop(st);
    use sha2::Digest;
    let sha = imagenet_hard::hub::hex(&sha2::Sha256::digest(&bytes));
    let start: usize = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let end = match range
        .as_deref()
        .and_then(|r| r.split('-').nth(1))
        .and_then(|e| e.parse::<usize>().ok())
    {
        Some(e) => e.min(bytes.len() - 1),
        None => bytes.len() - 1,
    };
    let headers = vec![
        ("ETag".to_string(), format!("\"{sha}\"")),
        ("X-Linked-Etag".to_string(), format!("\"{sha}\"")),
        ("X-Repo-Commit".to_string(), COMMIT.to_string()),
        (
            "Content-Range".to_string(),
            format!("bytes {start}-{end}/{}", bytes.len()),
        ),
        ("Accept-Ranges".to_string(), "bytes".to_string()),
    ];
    let body = &bytes[start..=end];
    match fault {
        None => respond(&mut stream, "206 Partial Content", &headers, body),
        Some(Fault::Status(status)) => respond(&mut stream, &format!("{status} Fault"), &[], b""),
        Some(Fault::Reset(n)) => {
            let mut head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in &headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body[..n.min(body.len())]);
            let _ = stream.flush();
            std::thread::sleep(std::time::Duration::from_millis(20));
            reset(stream);
        }
        Some(Fault::Truncate(n)) => respond(
            &mut stream,
            "206 Partial Content",
            &headers,
            &body[..n.min(body.len())],
        ),
        Some(Fault::Corrupt) => {
            let mut bad = body.to_vec();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x55;
            respond(&mut stream, "206 Partial Content", &headers, &bad)
        }
        Some(Fault::Slow(ms)) => {
            let mut head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in &headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            for piece in body.chunks(1024) {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                if stream.write_all(piece).is_err() {
                    return;
                }
            }
        }
    }
}

fn fixture_hub(fx: &Fixture) -> State {
    let mut state = State::default();
    state.repos.insert(
        format!("datasets/{DATASET}"),
        [(PARQUET.to_string(), fx.dataset_bytes())]
            .into_iter()
            .collect(),
    );
    // Models come from a cache filled beside, then served from its blobs.
    let staging = Fixture::new();
    staging.fill_cache();
    for class in [3, 7] {
        let snap = staging
            .cache()
            .join(format!("models--test-org--always-{class}/snapshots"))
            .join(imagenet_hard::demo::DEMO_COMMIT);
        let files = ["model.safetensors", "config.json"]
            .iter()
            .map(|f| (f.to_string(), std::fs::read(snap.join(f)).unwrap()))
            .collect();
        state
            .repos
            .insert(format!("test-org/always-{class}"), files);
    }
    state
}

#[test]
fn fetch_downloads_resumes_and_locks_through_a_loopback_hub() {
    let fx = Fixture::new();
    let hub = HubStandIn::start(fixture_hub(&fx));
    let manifest = fx.write_manifest("main");
    // A partial download left by an interrupted run: the first half of the blob.
    let data = fx.dataset_bytes();
    use sha2::Digest;
    let sha = imagenet_hard::hub::hex(&sha2::Sha256::digest(&data));
    let blobs = fx.cache().join("datasets--test-org--tiny-source/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let half = data.len() / 2;
    std::fs::write(blobs.join(format!("{sha}.part")), &data[..half]).unwrap();

    let out = fx.run(
        &["fetch", manifest.to_str().unwrap()],
        &[
            ("HF_ENDPOINT", &hub.endpoint()),
            ("HF_TOKEN", "hf_test_token"),
        ],
    );
    ok(&out);
    let fetched = std::fs::read(
        fx.cache()
            .join("datasets--test-org--tiny-source/snapshots")
            .join(COMMIT)
            .join(PARQUET),
    )
    .unwrap();
    assert_eq!(fetched, data, "resumed download reassembles the file");
    assert_eq!(
        std::fs::read_to_string(fx.cache().join("datasets--test-org--tiny-source/refs/main"))
            .unwrap()
            .trim(),
        COMMIT
    );
    let log = &hub.state.lock().unwrap().log;
    let resumed = format!("bytes={half}-");
    assert!(
        log.iter()
            .any(|(_, p, r, _)| p.contains("tiny-source/resolve/")
                && r.as_deref() == Some(resumed.as_str())),
        "{log:?}"
    );
    assert!(
        log.iter()
            .all(|(_, _, _, a)| a.as_deref() == Some("Bearer hf_test_token")),
        "HF_TOKEN is sent: {log:?}"
    );

    let lock: imagenet_hard::fetch::Lock =
        toml::from_str(&std::fs::read_to_string(fx.path().join("fixture.lock")).unwrap()).unwrap();
    let repo = lock.repos.iter().find(|r| r.id == DATASET).unwrap();
    assert_eq!(
        (repo.commit.as_str(), repo.revision.as_str()),
        (COMMIT, "main")
    );
    assert_eq!(repo.files[0].sha256, sha);
    assert_eq!(repo.files[0].size, data.len() as u64);

    // The same cache then serves an offline run, by the ref Python would read.
    let offline = fx.run(
        &["fetch", manifest.to_str().unwrap()],
        &[("HF_HUB_OFFLINE", "1")],
    );
    ok(&offline);
}

#[test]
fn eval_downloads_only_the_shard_family_the_card_counts() {
    let fx = Fixture::new();
    let mut state = fixture_hub(&fx);
    state.repos.insert(
        "datasets/test-org/hard-copy".into(),
        crate::eval::released_files(&fx).into_iter().collect(),
    );
    let hub = HubStandIn::start(state);
    fx.fill_cache();
    let out = crate::eval::eval(
        &fx,
        "test-org/hard-copy",
        3,
        &[],
        &[("HF_ENDPOINT", &hub.endpoint())],
    );
    crate::eval::assert_table(&out, &crate::eval::CURRENT_TABLE);
    assert!(stderr(&out).contains(&format!("test-org/hard-copy@{COMMIT}")));
    let log = hub.state.lock().unwrap().log.clone();
    let got = |part: &str| log.iter().any(|(_, path, _, _)| path.contains(part));
    // The card, then the family with most shards, which matches: the stale
    // family is never downloaded.
    assert!(
        got("/resolve/") && got("README.md") && got("-of-00003-"),
        "{log:?}"
    );
    assert!(!got("-of-00002"), "{log:?}");
}

#[test]
fn gated_repos_say_how_to_get_access() {
    let fx = Fixture::new();
    let mut state = fixture_hub(&fx);
    state.gated.push(DATASET.to_string());
    let hub = HubStandIn::start(state);
    let manifest = fx.write_manifest("main");
    let out = fx.run(
        &["fetch", manifest.to_str().unwrap()],
        &[("HF_ENDPOINT", &hub.endpoint())],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("HTTP 401")
            && err.contains("HF_TOKEN")
            && err.contains(&format!("datasets/{DATASET}")),
        "{err}"
    );
}

#[test]
fn url_models_download_resume_pin_and_lock() {
    let fx = Fixture::new();
    fx.fill_cache();
    let pth = std::fs::read(crate::golden::golden("pth/tensors.pth")).unwrap();
    use sha2::Digest;
    let sha = imagenet_hard::hub::hex(&sha2::Sha256::digest(&pth));
    let mut state = State::default();
    state.files.insert("weights-1234.pth".into(), pth.clone());
    let hub = HubStandIn::start(state);
    let manifest = fx.write_manifest(imagenet_hard::demo::DEMO_COMMIT);
    let url = format!("{}/files/weights-1234.pth", hub.endpoint());
    let with_url = |pin: &str| {
        let text = std::fs::read_to_string(&manifest).unwrap();
        let start = text
            .find("hub = { repo = \"test-org/always-7\"")
            .or_else(|| text.find("url = { url"))
            .unwrap();
        let end = start + text[start..].find('\n').unwrap();
        let replaced = format!(
            "{}url = {{ url = \"{url}\", sha256 = \"{pin}\" }}{}",
            &text[..start],
            &text[end..]
        );
        std::fs::write(&manifest, replaced).unwrap();
    };
    with_url(&sha[..8]);
    // Half of the file is already there from an interrupted download.
    let urls = fx.path().join("imagenet-hard/urls");
    std::fs::create_dir_all(&urls).unwrap();
    std::fs::write(urls.join("weights-1234.pth.part"), &pth[..pth.len() / 2]).unwrap();
    let out = fx.run(&["fetch", manifest.to_str().unwrap()], &[]);
    ok(&out);
    assert_eq!(std::fs::read(urls.join("weights-1234.pth")).unwrap(), pth);
    let log = &hub.state.lock().unwrap().log;
    assert!(
        log.iter().any(|(_, p, r, _)| p.starts_with("/files/")
            && r.as_deref() == Some(format!("bytes={}-", pth.len() / 2).as_str())),
        "{log:?}"
    );
    let lock: imagenet_hard::fetch::Lock =
        toml::from_str(&std::fs::read_to_string(fx.path().join("fixture.lock")).unwrap()).unwrap();
    assert_eq!(lock.urls.len(), 1);
    assert_eq!(
        (lock.urls[0].sha256.as_str(), lock.urls[0].size),
        (sha.as_str(), pth.len() as u64)
    );
    // Offline, the downloaded file serves; a wrong pin is refused.
    ok(&fx.run(
        &["fetch", manifest.to_str().unwrap()],
        &[("HF_HUB_OFFLINE", "1")],
    ));
    with_url("deadbeef");
    let bad = fx.run(
        &["fetch", manifest.to_str().unwrap()],
        &[("HF_HUB_OFFLINE", "1")],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("deadbeef") && stderr(&bad).contains(&sha),
        "{}",
        stderr(&bad)
    );
}

/// HF_TOKEN is sent to the Hub and nowhere else: not in logs (even at
/// trace level), errors, the lock, the plan, stats, records, report or card.
#[test]
fn the_token_never_appears_in_logs_errors_or_outputs() {
    const CANARY: &str = "hf_CANARY_never_print_me_1234567890";
    let fx = Fixture::new();
    let mut state = fixture_hub(&fx);
    state.gated.push("test-org/always-7".to_string());
    let hub = HubStandIn::start(state);
    let manifest = fx.write_manifest("main");
    let env = [
        ("HF_ENDPOINT", hub.endpoint()),
        ("HF_TOKEN", CANARY.to_string()),
        ("RUST_LOG", "trace".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // A refused (gated) download: the error must not echo the token.
    let refused = fx.run(
        &["build", manifest.to_str().unwrap(), "--device", "cpu"],
        &env,
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("HTTP 401"),
        "{}",
        stderr(&refused)
    );
    // A full build once access is granted.
    hub.state.lock().unwrap().gated.clear();
    let built = fx.run(
        &["build", manifest.to_str().unwrap(), "--device", "cpu"],
        &env,
    );
    ok(&built);
    assert!(
        hub.state
            .lock()
            .unwrap()
            .log
            .iter()
            .any(|(_, _, _, a)| a.as_deref() == Some(format!("Bearer {CANARY}").as_str())),
        "the token is sent to the Hub"
    );
    for out in [&refused, &built] {
        for text in [crate::fixture::stdout(out), stderr(out)] {
            assert!(!text.contains(CANARY), "token printed:\n{text}");
        }
    }
    // Every file the run wrote (run dir, lock, cache) is free of it.
    let mut stack = vec![fx.path().to_path_buf()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                files += 1;
                assert!(
                    !bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
                    "token written to {}",
                    p.display()
                );
            }
        }
    }
    assert!(files > 10, "checked {files} files");
}

/// The stand-in misbehaves as networks do: 503 and 429 on the metadata,
/// then a 500, a connection reset mid-body, a body that ends early, a
/// corrupted body and a slow one on the data. `fetch` retries with backoff,
/// logs each attempt, resumes the reset and short bodies where they
/// stopped, throws the corrupt bytes away, and ends with the right file.
#[test]
fn fetch_rides_out_resets_truncation_throttling_and_a_slow_server() {
    let fx = Fixture::new();
    let data = fx.dataset_bytes();
    let mut state = fixture_hub(&fx);
    state.meta_faults.extend([503, 429]);
    state.faults.extend([
        Fault::Status(500),
        Fault::Reset(data.len() / 3),
        Fault::Truncate(data.len() / 4),
        Fault::Corrupt,
        Fault::Slow(2),
    ]);
    let hub = HubStandIn::start(state);
    let manifest = fx.write_manifest("main");
    let out = fx.run(
        &["fetch", manifest.to_str().unwrap()],
        &[
            ("HF_ENDPOINT", &hub.endpoint()),
            ("IMAGENET_HARD_FETCH_BACKOFF_MS", "10"),
        ],
    );
    ok(&out);
    let err = stderr(&out);
    for needle in [
        "attempt 1 of 8 failed (HTTP 503)",
        "attempt 2 of 8 failed (HTTP 429)",
        "failed (HTTP 500)",
        "failed (the body ended after",
        "the server's is",
    ] {
        assert!(err.contains(needle), "no `{needle}` in:\n{err}");
    }
    let fetched = std::fs::read(
        fx.cache()
            .join("datasets--test-org--tiny-source/snapshots")
            .join(COMMIT)
            .join(PARQUET),
    )
    .unwrap();
    assert_eq!(fetched, data);
    // After the reset and the short body, the next requests resumed.
    let log = hub.state.lock().unwrap().log.clone();
    let resumed: Vec<&String> = log
        .iter()
        .filter(|(_, p, _, _)| p.contains("tiny-source/resolve/"))
        .filter_map(|(_, _, r, _)| r.as_ref())
        .filter(|r| r.as_str() != "bytes=0-0" && r.as_str() != "bytes=0-")
        .collect();
    assert!(resumed.len() >= 2, "{log:?}");
    let blobs = fx.cache().join("datasets--test-org--tiny-source/blobs");
    let parts: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(parts.is_empty(), "{parts:?}");
}

/// A file that keeps arriving wrong is given up after the attempts run out
/// with an error that says so, and nothing is cached; once the network
/// behaves, the same command succeeds.
#[test]
fn a_download_that_keeps_failing_caches_nothing() {
    let fx = Fixture::new();
    let mut state = fixture_hub(&fx);
    state.faults.extend(std::iter::repeat_n(Fault::Corrupt, 3));
    let hub = HubStandIn::start(state);
    let manifest = fx.write_manifest("main");
    let env = [
        ("HF_ENDPOINT", hub.endpoint()),
        ("IMAGENET_HARD_FETCH_BACKOFF_MS", "10".into()),
        ("IMAGENET_HARD_FETCH_ATTEMPTS", "3".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = fx.run(&["fetch", manifest.to_str().unwrap()], &env);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(PARQUET) && err.contains("after 3 attempt(s); nothing was cached"),
        "{err}"
    );
    let repo = fx.cache().join("datasets--test-org--tiny-source");
    let cached: Vec<_> = walkdir::WalkDir::new(&repo)
        .into_iter()
        .flatten()
        .filter(|e| {
            e.path_is_symlink()
                || (e.file_type().is_file()
                    && e.path().to_string_lossy().contains("blobs/")
                    && !e.file_name().to_string_lossy().ends_with(".lock"))
        })
        .map(|e| e.path().display().to_string())
        .collect();
    assert!(cached.is_empty(), "{cached:?}");
    assert!(!fx.path().join("fixture.lock").exists());
    ok(&fx.run(&["fetch", manifest.to_str().unwrap()], &env));
}
